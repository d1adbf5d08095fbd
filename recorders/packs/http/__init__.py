"""http pack: per-request timings (TTFT, TPOT, E2E) from the server's socket syscalls."""
from .pack import HttpPack

PACK = HttpPack

__all__ = ["PACK", "HttpPack"]
