"""Accuracy of the root-cause ranking on labelled recordings (`prism eval rca`).

Each fault label window is one anomaly to explain; its scenario is the true
cause. Top-1: the first-ranked cause is the scenario; top-3: it is among the
first three.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd


def labels_path(trace: Path, given: Path | None = None) -> Path:
    """The labels of a trace: `given`, else TRACE stem + .labels.jsonl, else stem + .jsonl."""
    if given is not None:
        return Path(given)
    trace = Path(trace)
    for cand in (trace.with_suffix(".labels.jsonl"), trace.with_suffix(".jsonl")):
        if cand.exists():
            return cand
    return trace.with_suffix(".labels.jsonl")


def evaluate_rca(traces, labels=None, min_slowdown: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-anomaly rows, per-scenario summary with top1/top3 and an 'overall' row).

    min_slowdown: score only fault windows whose batches actually slowed (median batch latency in
    the window / median outside the windows at least this); the others are listed with
    scored=False. On a machine shared with other load, an injected fault can leave no anomaly
    (the neighbours slow the baseline as much), and there is then nothing to explain."""
    from ..inject.labels import read_labels
    from ..trace import load_trace
    from .explain import explain
    import lightgbm  # noqa: F401 - imported before timing: the first import costs seconds
    import shap  # noqa: F401

    rows = []
    for i, tp in enumerate(traces):
        given = labels[i] if isinstance(labels, (list, tuple)) else labels
        lab = read_labels(labels_path(tp, given))
        lab = lab[lab["kind"] == "fault"].reset_index(drop=True)
        if lab.empty:
            continue
        tr = load_trace(tp)
        t0 = time.perf_counter()
        res = explain(tr, labels=lab)
        dt = (time.perf_counter() - t0) / len(lab)
        for aid, a in res.anomalies.iterrows():
            c = res.causes[res.causes["anomaly_id"] == aid].sort_values("rank")
            ranked = list(c["cause"])
            top = c.iloc[0] if len(c) else None
            slow = float(top["slowdown"]) if top is not None and "slowdown" in top else 0.0
            rows.append(dict(trace=str(tp), anomaly_id=aid, scenario=a["scenario"], slowdown=slow,
                             scored=bool(slow >= min_slowdown and top is not None and top["n_batches"] > 0),
                             n_batches=int(top["n_batches"])
                             if top is not None else 0, top1=ranked[0] if ranked else "unknown",
                             ranked=",".join(ranked), hit1=bool(ranked[:1] == [a["scenario"]]),
                             hit3=a["scenario"] in ranked[:3], confidence=float(top["confidence"]) if top is not None
                             else 0.0, s_per_anomaly=dt))
    per = pd.DataFrame(rows)
    if per.empty:
        return per, pd.DataFrame(columns=["n", "top1", "top3", "s_per_anomaly"])
    sc = per[per["scored"]]
    summ = sc.groupby("scenario").agg(n=("hit1", "size"), top1=("hit1", "mean"), top3=("hit3", "mean"),
                                      s_per_anomaly=("s_per_anomaly", "mean"))
    summ["skipped"] = per[~per["scored"]].groupby("scenario").size().reindex(summ.index).fillna(0).astype(int)
    summ.loc["overall"] = [len(sc), sc["hit1"].mean(), sc["hit3"].mean(), sc["s_per_anomaly"].mean(),
                           int((~per["scored"]).sum())]
    return per, summ
