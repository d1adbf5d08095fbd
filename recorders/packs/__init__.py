"""Probe packs. A pack is data plus small BPF programs; add a pack, not an engine change."""
from __future__ import annotations

import importlib

from .base import AttachReport, ProbePack, Uprobe


def default_packs() -> list[ProbePack]:
    """The packs `prism record` loads: each decides whether it applies to the target."""
    from .llama_cpp import LlamaCppPack

    packs: list[ProbePack] = [LlamaCppPack()]
    for optional in ("sched", "http", "syscalls", "proc_counters", "cuda", "hip", "nccl", "python"):
        try:
            module = importlib.import_module(f"{__name__}.{optional}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{optional}":
                raise
            continue  # pack not present in this installation
        packs.append(module.PACK())
    return packs


__all__ = ["AttachReport", "ProbePack", "Uprobe", "default_packs"]
