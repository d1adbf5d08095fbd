"""Root cause of latency anomalies: per-batch system features, a LightGBM latency
model and SHAP attribution mapped to causes (see explain.py).

    from prismkit import explain, load_trace
    res = explain(load_trace("x.pftrace"), labels="x.labels.jsonl")   # or anomalies=detect(...).anomalies
    res.top            # the top cause of each anomaly, with evidence and confidence
"""
from .evaluate import evaluate_rca
from .explain import CAUSES, Explanation, explain
from .features import FEATURE_GROUPS, batch_features, preemptors

__all__ = ["CAUSES", "FEATURE_GROUPS", "Explanation", "batch_features", "evaluate_rca", "explain", "preemptors"]
