"""Exact Python function boundaries, opt-in (CPython 3.12+ sys.monitoring switched on in the running
process; see pack.py, inject.py and docs/python-monitor.md). Not among the default packs."""
from .inject import disable, enable
from .pack import PyMonitorPack, StepArg

__all__ = ["PyMonitorPack", "StepArg", "disable", "enable"]
