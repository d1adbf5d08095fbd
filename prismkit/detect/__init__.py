"""Workload model and anomaly detection: is a latency change the workload, or an anomaly?

    from prismkit import WorkloadModel, detect, load_trace
    model = WorkloadModel().fit(load_trace("baseline.pftrace"))   # normal recording
    model.save("model.json")
    res = detect(load_trace("later.pftrace"), model)
    res.anomalies          # start, end, n_batches, slowdown, confidence, ...
    res.workload_shifts    # the workload changed and latency followed (never anomalies)
    res.change_points      # ruptures on the residual and on the expected latency
    res.batches            # per batch: expected, ratio, limit, exceed, flag, anomaly_id

model.py (WorkloadModel), detector.py (OnlineDetector, detect), evaluate.py
(ground truth from labels, scores, baselines), scenarios.py (the labelled
sample recordings). ``prismkit.detect`` is both this package and, called, the
``detect`` function.
"""
from __future__ import annotations

import importlib
import sys
import types

# Imported on first use: `prism`'s argument parser imports detect.cli, and must
# not pull in pandas and LightGBM (nor fail without them) to do so.
_LAZY = {
    **dict.fromkeys(["DetectionResult", "DetectorConfig", "OnlineDetector", "Verdict", "change_points", "detect",
                     "prepare_batches"], ".detector"),
    **dict.fromkeys(["batch_truth", "eval_table", "evaluate_trace", "pooled", "rolling_median_baseline",
                     "ruptures_raw_baseline", "same_workload_ratio", "score"], ".evaluate"),
    **dict.fromkeys(["WorkloadModel", "holdout_split", "leave_group_out", "workload_groups"], ".model"),
}
__all__ = sorted(_LAZY)


class _CallableModule(types.ModuleType):
    """`prismkit.detect(...)` works even once this subpackage shadows the function on `prismkit`."""

    def __call__(self, *args, **kwargs):
        return self.detect(*args, **kwargs)

    def __getattr__(self, name: str):
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, self.__name__), name)
        setattr(self, name, value)
        return value


sys.modules[__name__].__class__ = _CallableModule
