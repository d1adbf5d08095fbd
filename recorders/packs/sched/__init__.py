"""sched pack: scheduler tracepoints for the target's threads (see pack.py)."""
from .pack import SchedPack

PACK = SchedPack

__all__ = ["PACK", "SchedPack"]
