from .pack import LlamaCppPack

__all__ = ["LlamaCppPack"]
