"""Python context pack: frames and attributes of the live interpreter at each GPU engine step (see pack.py)."""
from .pack import AttrSpec, PythonPack

PACK = PythonPack

__all__ = ["AttrSpec", "PACK", "PythonPack"]
