"""HIP probe pack: engine steps from libamdhip64 (ROCm), the CUDA pack's shape (see pack.py)."""
from .pack import HipPack

PACK = HipPack

__all__ = ["HipPack", "PACK"]
