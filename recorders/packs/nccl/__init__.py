"""NCCL/RCCL probe pack: collectives per engine step, rank and world size (see pack.py)."""
from .pack import NcclPack

PACK = NcclPack

__all__ = ["NcclPack", "PACK"]
