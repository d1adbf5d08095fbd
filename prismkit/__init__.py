"""prismkit: where every millisecond of LLM inference latency goes, from the outside.

Data flow (see DESIGN.md): eBPF recorders (``recorders/``) write Perfetto
traces; ``load_trace`` reads them into pandas; analyzers break latency down,
model the workload, detect anomalies and explain them.
"""
from __future__ import annotations

import importlib

from .errors import PrismError

__version__ = "0.1.0"

# Public names, imported on first use so that `prism` starts fast and its
# first checks (root, arguments) run before pandas and numpy are loaded.
_LAZY = {
    "load_trace": "prismkit.trace",
    "Trace": "prismkit.trace",
    "BatchBreakdown": "prismkit.analysis",
    "RequestBreakdown": "prismkit.analysis",
    "explain": "prismkit.rootcause",
    "WorkloadModel": "prismkit.detect",
    "OnlineDetector": "prismkit.detect",
    "DetectorConfig": "prismkit.detect",
    "detect": "prismkit.detect",
}
__all__ = ["PrismError", "__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prismkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
