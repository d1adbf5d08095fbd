"""The guard: a watchdog process that undoes an injection if the injector dies.

The injector cleans up after itself on normal exit, errors, Ctrl-C and
SIGTERM (``try/finally`` around every scenario). That is not enough for
SIGKILL or a crash of the Python interpreter: a server left SIGSTOPped, or
left inside a CPU-quota cgroup, would be worse than no tool at all. So before
the injector changes anything outside its own processes it *registers the
undo action* with this guard, a small process in its own session that reads
JSON lines on its stdin:

    {"id": 1, "op": "cont", "pid": 123, "start": 456}      SIGCONT a process
    {"id": 2, "op": "kill", "pid": 124, "start": 789}      SIGKILL a helper
    {"id": 3, "op": "cgroup", "dir": "...", "dest": "...", "tids": {...}, "v2": false}
    {"id": 4, "op": "unlink", "path": "..."}
    {"forget": 3}                                          the injector undid it itself
    {"done": true}                                         clean exit: do nothing

When stdin reaches end-of-file without ``done`` (the injector died), or the
guard gets SIGTERM/SIGHUP, it runs every action still registered, newest
first, and exits. Every action is idempotent and checks the process start
time, so a recycled PID is never signalled. SIGINT is ignored: a Ctrl-C in the
terminal is the injector's to handle.

Its argument is the injector's PID (to tell whose guard it is).
This module imports nothing heavy: it starts in ~50 ms.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def proc_start_time(pid: int) -> int | None:
    """The process start time (clock ticks since boot, /proc/PID/stat field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def same_process(pid: int, start: int | None) -> bool:
    return start is not None and proc_start_time(pid) == start


def signal_if_same(pid: int, start: int | None, sig: int) -> bool:
    """Send `sig` to `pid` only if it is still the process that started at `start`."""
    if not same_process(pid, start):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _write(path: str | Path, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


def cgroup_evacuate(cg_dir: str | Path, dest: str | Path, tids: dict[str, str] | None = None,
                    v2: bool = False, timeout: float = 5.0) -> bool:
    """Move every task out of `cg_dir` (back where it came from) and remove the cgroup.

    cgroup v1: each thread goes back to its own original cgroup (`tids` maps a
    TID to that cgroup's directory; threads born inside go to `dest`). cgroup v2:
    whole processes go to `dest`. Returns True once the directory is gone.
    """
    cg_dir = Path(cg_dir)
    tids = tids or {}
    deadline = time.monotonic() + timeout
    while cg_dir.exists():
        listing = cg_dir / ("cgroup.procs" if v2 else "tasks")
        try:
            members = [ln.strip() for ln in listing.read_text().split() if ln.strip()]
        except OSError:
            members = []
        for tid in members:
            target = Path(tids.get(tid, str(dest)))
            if not _write(target / ("cgroup.procs" if v2 else "tasks"), tid):
                _write(Path(dest) / ("cgroup.procs" if v2 else "tasks"), tid)
        try:
            cg_dir.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
    return True


def undo(op: dict) -> None:
    """Run one registered undo action (idempotent, never raises)."""
    try:
        kind = op.get("op")
        if kind == "cont":
            signal_if_same(int(op["pid"]), op.get("start"), signal.SIGCONT)
        elif kind == "kill":
            signal_if_same(int(op["pid"]), op.get("start"), signal.SIGKILL)
        elif kind == "cgroup":
            cgroup_evacuate(op["dir"], op["dest"], op.get("tids"), bool(op.get("v2")))
        elif kind == "unlink":
            Path(op["path"]).unlink(missing_ok=True)
        elif kind == "write":
            _write(op["path"], str(op["value"]))
    except Exception:  # the guard must get through its whole list
        pass


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ops: dict[int, dict] = {}
    state = {"done": False}

    def run_all(*_a) -> None:
        if not state["done"]:
            state["done"] = True
            for key in sorted(ops, reverse=True):
                undo(ops[key])
        os._exit(0)

    signal.signal(signal.SIGTERM, run_all)
    signal.signal(signal.SIGHUP, run_all)
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("done"):
            return 0
        if "forget" in msg:
            ops.pop(int(msg["forget"]), None)
        elif "id" in msg:
            ops[int(msg["id"])] = msg
    run_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
