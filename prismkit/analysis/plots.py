"""Matplotlib figures for the breakdown: each function returns a Figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .breakdown import LABELS, STAGE_COLUMNS
from .requests import PARTS

STAGE_COLORS = {
    "offcpu_preempted": "#d62728", "offcpu_blocked": "#ff9896", "tokenize": "#9467bd", "sample": "#2ca02c",
    "detokenize": "#98df8a", "graph_compute": "#1f77b4", "synchronize": "#aec7e8", "other": "#c7c7c7",
}
PART_COLORS = {"queue_ns": "#ff7f0e", "prefill_ns": "#1f77b4", "decode_ns": "#2ca02c", "stall_ns": "#d62728",
               "streaming_ns": "#9467bd"}


def stage_breakdown_over_time(per_batch: pd.DataFrame, bins: int = 60) -> plt.Figure:
    """Stacked share of engine-step time by stage, in time bins (batches binned by start)."""
    fig, ax = plt.subplots(figsize=(10, 3.6))
    if per_batch.empty:
        ax.set_title("no batches")
        return fig
    t0 = per_batch["ts"].min()
    t = (per_batch["ts"] - t0) / 1e9
    edges = np.linspace(0, max(t.max(), 1e-3), bins + 1)
    width = edges[1] - edges[0]
    idx = np.clip(np.digitize(t, edges) - 1, 0, bins - 1)
    names = LABELS + ["other"]
    stacked = np.zeros((len(names), bins))
    for i, name in enumerate(names):
        stacked[i] = np.bincount(idx, weights=per_batch[f"{name}_ns"].to_numpy(float), minlength=bins)
    total = stacked.sum(axis=0)
    stacked = np.divide(stacked, total, out=np.zeros_like(stacked), where=total > 0) * 100
    ax.stackplot(edges[:-1] + width / 2, stacked, labels=names, colors=[STAGE_COLORS[n] for n in names])
    ax.set_xlabel("time since start of recording (s)")
    ax.set_ylabel("share of step time (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Where engine-step time goes, over time")
    ax.legend(loc="upper left", fontsize=7, ncol=4)
    fig.tight_layout()
    return fig


def latency_vs_workload(per_batch: pd.DataFrame) -> plt.Figure:
    """Batch latency against n_tokens and against kv_tokens, coloured by phase."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    colors = {"prefill": "#1f77b4", "decode": "#2ca02c", "mixed": "#ff7f0e"}
    for ax, col in zip(axes, ("n_tokens", "kv_tokens")):
        for phase, grp in per_batch.groupby("phase"):
            ax.scatter(grp[col], grp["dur"] / 1e6, s=6, alpha=0.5, label=phase, color=colors.get(phase))
        ax.set_xlabel(col)
        ax.set_xscale("symlog")
        ax.set_yscale("log")
    axes[0].set_ylabel("llama_decode latency (ms)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Batch latency against workload")
    fig.tight_layout()
    return fig


def request_waterfall(per_request: pd.DataFrame, max_requests: int = 60) -> plt.Figure:
    """One bar per request: queue, prefill, decode, stalls, streaming (from its arrival)."""
    r = per_request.dropna(subset=["queue_ns"]).head(max_requests)
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.16 * len(r) + 1)))
    if r.empty:
        ax.set_title("no requests with batch decomposition")
        return fig
    t0 = r["ts_arrival"].min()
    y = np.arange(len(r))
    left = (r["ts_arrival"] - t0).to_numpy(float) / 1e6
    for part in PARTS:
        width = r[part].to_numpy(float) / 1e6
        ax.barh(y, width, left=left, color=PART_COLORS[part], label=part.replace("_ns", ""), height=0.8)
        left = left + width
    ax.set_yticks(y)
    ax.set_yticklabels([str(int(v)) for v in r["req_id"]], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the first request's arrival")
    ax.set_ylabel("request")
    ax.legend(fontsize=7, ncol=5, loc="lower right")
    ax.set_title("Request waterfall")
    fig.tight_layout()
    return fig


def percentiles_table(table: pd.DataFrame, title: str = "Percentiles (ms)") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 0.4 + 0.3 * (len(table) + 1)))
    ax.axis("off")
    cells = table.round(3).astype(str).to_numpy()
    tbl = ax.table(cellText=cells, rowLabels=[str(i) for i in table.index], colLabels=list(table.columns),
                   loc="center")
    tbl.scale(1, 1.2)
    ax.set_title(title)
    return fig


__all__ = ["stage_breakdown_over_time", "latency_vs_workload", "request_waterfall", "percentiles_table",
           "STAGE_COLUMNS"]
