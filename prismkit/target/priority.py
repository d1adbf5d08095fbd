"""CPU weight of a process: its session's autogroup nice where it has one, else its threads' nice.

Debian (like most distributions) schedules each session as one group (autogroup):
a thread's own nice then only weighs against its session's other threads. These
helpers give a process (a server being isolated, a CPU hog, the watcher, its
root-cause worker) the weight asked for whichever way the host schedules it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path


def _tids(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def autogroup_nice(pid: int) -> int | None:
    """The nice of pid's autogroup, or None where it has none.

    /proc/PID/autogroup is empty for a process in the root group: one whose
    session never called setsid() since init (a CI runner started straight
    from PID 1, say), or any process where autogroup is compiled out.
    """
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()
    except OSError:
        return None
    m = re.search(r"\bnice\s+(-?\d+)", text)
    return int(m.group(1)) if m else None


def set_autogroup_nice(pid: int, nice: int) -> bool:
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(int(nice)))
        return True
    except OSError:
        return False


def set_cpu_weight(pid: int, nice: int) -> Callable[[], None] | None:
    """Give pid the CPU weight of `nice`; returns the undo, or None when it could not be set.

    Where pid's session has an autogroup (Debian's default) the weight is the
    autogroup's, which covers the whole session (the shell that started pid
    too: callers must undo). Where it has none (see autogroup_nice) it is the
    nice of each of pid's threads; threads that pid starts later inherit the
    nice of the thread that starts them.
    """
    before = autogroup_nice(pid)
    if before is not None and set_autogroup_nice(pid, nice):
        return lambda: set_autogroup_nice(pid, before)
    return set_threads_nice(pid, nice)


def set_threads_nice(pid: int, nice: int) -> Callable[[], None] | None:
    """Set the nice of each of pid's threads; returns the undo, or None when none could be set."""
    saved: dict[int, int] = {}
    for tid in _tids(pid):
        try:
            prio = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, int(nice))
            saved[tid] = prio
        except OSError:
            pass
    if not saved:
        return None

    def undo() -> None:
        for tid, prio in saved.items():
            try:
                os.setpriority(os.PRIO_PROCESS, tid, prio)
            except OSError:
                pass

    return undo
