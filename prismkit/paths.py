"""Where prismkit keeps its caches and outputs."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Slow-to-make artefacts (llama-server build, GGUF models) live here.

    Outside the checkout so that a fresh clone on the same machine reuses them;
    override with PRISM_CACHE.
    """
    root = Path(os.environ.get("PRISM_CACHE", Path.home() / ".cache" / "prismkit"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def state_dir() -> Path:
    """Run-time state (pid files, server logs) of targets started by prism."""
    d = cache_dir() / "run"
    d.mkdir(parents=True, exist_ok=True)
    return d
