"""The process being recorded: its libraries, threads and command line, from /proc."""
from __future__ import annotations

import os
import select
from dataclasses import dataclass, field
from pathlib import Path

from prismkit.errors import PrismError


@dataclass
class TargetProcess:
    pid: int
    cmdline: list[str] = field(default_factory=list)
    comm: str = ""
    libraries: dict[str, str] = field(default_factory=dict)  # soname stem -> path as mapped
    _pidfd: int | None = field(default=None, init=False, repr=False, compare=False)  # opened by alive()

    @classmethod
    def from_pid(cls, pid: int) -> "TargetProcess":
        proc = Path(f"/proc/{pid}")
        if pid <= 0 or not proc.exists():
            raise PrismError(f"no such process: PID {pid}")
        try:
            cmdline = [c.decode(errors="replace") for c in (proc / "cmdline").read_bytes().split(b"\0") if c]
            comm = (proc / "comm").read_text().strip()
            maps = (proc / "maps").read_text()
        except PermissionError:
            raise PrismError(f"cannot read /proc/{pid} (not root?)") from None
        except OSError:
            raise PrismError(f"process {pid} exited") from None
        t = cls(pid=pid, cmdline=cmdline, comm=comm)
        exe = os.readlink(proc / "exe") if (proc / "exe").exists() else ""
        for line in maps.splitlines():
            parts = line.split(None, 5)
            if len(parts) < 6 or "x" not in parts[1]:
                continue
            path = parts[5].strip()
            if path.endswith(" (deleted)") or not path.startswith("/"):
                continue
            name = os.path.basename(path)
            if path == exe:
                t.libraries.setdefault("exe", path)
            stem = name.split(".so")[0] if ".so" in name else name
            t.libraries.setdefault(stem, path)
        return t

    def library(self, stem: str) -> str | None:
        """Path of the mapped library whose file name starts with `stem` (e.g. 'libllama')."""
        if stem in self.libraries:
            return self.libraries[stem]
        return None

    def alive(self) -> bool:
        """False once the process has exited (a zombie counts as exited). Asked every poll
        interval: a pidfd turns readable when the process exits, so this is one poll()
        without a /proc read (falls back to /proc/PID/stat where pidfds are missing)."""
        if self._pidfd is None:
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):
                self._pidfd = -1
        if self._pidfd >= 0:
            return not select.select([self._pidfd], [], [], 0)[0]
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")

    def close(self) -> None:
        """Release the pidfd alive() opened (the recording is over)."""
        if self._pidfd is not None and self._pidfd >= 0:
            os.close(self._pidfd)
        self._pidfd = None

    def threads(self) -> dict[int, str]:
        out = {}
        try:
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                try:
                    out[int(task.name)] = (task / "comm").read_text().strip()
                except OSError:
                    continue
        except OSError:
            pass
        return out

    def thread_name(self, tid: int) -> str:
        try:
            return Path(f"/proc/{self.pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            return f"thread {tid}"
