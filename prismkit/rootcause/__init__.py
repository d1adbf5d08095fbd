"""Root cause of latency anomalies: per-batch system features, a LightGBM latency
model and SHAP attribution mapped to causes (see explain.py).

    from prismkit import explain, load_trace
    res = explain(load_trace("x.pftrace"), labels="x.labels.jsonl")   # or anomalies=detect(...).anomalies
    res.top            # the top cause of each anomaly, with evidence and confidence
"""
from __future__ import annotations

import importlib

# Imported on first use: `prism`'s argument parser imports rootcause.cli, and
# must not pull in pandas, LightGBM and SHAP to do so.
_LAZY = {
    "evaluate_rca": ".evaluate",
    "CAUSES": ".explain", "Explanation": ".explain", "explain": ".explain",
    "FEATURE_GROUPS": ".features", "batch_features": ".features", "preemptors": ".features",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prismkit.rootcause' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
