"""Cheap periodic reads of /proc and /sys files: each file is opened once and re-read
with pread at offset 0 (the kernel regenerates it), one syscall per read instead of
the six of open/fstat/ioctl/read/read/close. The recorder reads a few dozen of them
every second for as long as it runs, on the CPUs the server needs."""
from __future__ import annotations

import os


class ProcFiles:
    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> str | None:
        """The file's text, or None if it cannot be read (gone: a thread that exited)."""
        fd = self._fds.get(path)
        try:
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(fd, 65536, 0)
        except OSError:
            self.forget(path)
            return None
        return data.decode(errors="replace")

    def forget(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def forget_prefix(self, prefix: str, keep: set[str]) -> None:
        """Close the files under prefix not named in keep (threads that exited)."""
        for path in [p for p in self._fds if p.startswith(prefix) and p not in keep]:
            self.forget(path)

    def close(self) -> None:
        for path in list(self._fds):
            self.forget(path)
