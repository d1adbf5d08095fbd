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

import sys
import types

from .detector import (DetectionResult, DetectorConfig, OnlineDetector, Verdict, change_points, detect,
                       prepare_batches)
from .evaluate import (batch_truth, eval_table, evaluate_trace, pooled, rolling_median_baseline,
                       ruptures_raw_baseline, score)
from .model import WorkloadModel, holdout_split, leave_group_out, workload_groups

__all__ = ["DetectionResult", "DetectorConfig", "OnlineDetector", "Verdict", "WorkloadModel", "batch_truth",
           "change_points", "detect", "eval_table", "evaluate_trace", "holdout_split", "leave_group_out",
           "pooled", "prepare_batches", "rolling_median_baseline", "ruptures_raw_baseline", "score",
           "workload_groups"]


class _CallableModule(types.ModuleType):
    """`prismkit.detect(...)` works even once this subpackage shadows the function on `prismkit`."""

    def __call__(self, *args, **kwargs) -> DetectionResult:
        return detect(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
