"""syscalls pack: per-syscall counts and time of the target's threads (see pack.py)."""
from .pack import SyscallsPack

PACK = SyscallsPack

__all__ = ["PACK", "SyscallsPack"]
