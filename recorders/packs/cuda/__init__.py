"""CUDA probe pack: engine steps (launches, graph replays, copies, syncs) from libcudart/libcuda (see pack.py)."""
from .core import GpuCore
from .pack import CudaPack

PACK = CudaPack

__all__ = ["PACK", "CudaPack", "GpuCore"]
