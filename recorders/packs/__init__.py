"""Probe packs. A pack is data plus small BPF programs; add a pack, not an engine change."""
from __future__ import annotations

import importlib
from typing import Iterable

from .base import AttachReport, ProbePack, Uprobe


def default_packs(opt_in: Iterable[str] = ()) -> list[ProbePack]:
    """The packs `prism record` loads: each decides whether it applies to the target. Packs
    whose `on_by_default` is False (their measured cost, see each pack) only when named in
    `opt_in`; all_packs() lists every one."""
    wanted = set(opt_in)
    return [p for p in all_packs() if getattr(p, "on_by_default", True) or p.name in wanted]


def all_packs() -> list[ProbePack]:
    """Every probe pack of this installation."""
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


__all__ = ["AttachReport", "ProbePack", "Uprobe", "all_packs", "default_packs"]
