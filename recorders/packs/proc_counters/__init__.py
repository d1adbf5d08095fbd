"""proc_counters pack: per-thread CPU, RSS, faults, PSI, cgroup throttling from /proc (see pack.py)."""
from .pack import ProcCountersPack

PACK = ProcCountersPack

__all__ = ["PACK", "ProcCountersPack"]
