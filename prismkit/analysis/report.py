"""`prism analyze`: a terminal summary and a self-contained HTML report."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from . import plots
from .breakdown import BatchBreakdown
from .requests import RequestBreakdown


def _fig_to_img(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def summary_tables(trace, slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None) -> dict[str, pd.DataFrame]:
    """The tables `prism analyze` prints, by title."""
    bd = BatchBreakdown(trace)
    rb = RequestBreakdown(trace)
    tables = {
        "Batch latency percentiles (engine step, ms)": bd.percentiles(),
        "By phase (engine step, ms)": bd.by_phase(),
        "Stages by phase (mean ms per batch)": bd.stages_by_phase(),
        "By batch size": bd.by_batch_size(),
        "Share of engine-step time by stage": bd.shares().rename("share").to_frame(),
    }
    if not trace.requests.empty:
        tables["Request latency (server side, ms)"] = rb.distributions()
        per_req = rb.per_request()
        parts = per_req[["queue_ns", "prefill_ns", "decode_ns", "stall_ns", "streaming_ns", "e2e"]].dropna()
        if not parts.empty:
            means = parts.mean() / 1e6
            means.index = [c.removesuffix("_ns") for c in means.index]
            means.index.name = "part"
            tables["Where request time goes (mean ms)"] = means.rename("mean_ms").to_frame()
        if slo_ttft_ms is not None or slo_tpot_ms is not None:
            tables["SLO attainment"] = rb.slo_attainment(slo_ttft_ms, slo_tpot_ms)
    return tables


def print_summary(trace, slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    meta = trace.metadata
    console.print(f"[bold]{meta.get('path', '')}[/bold]: {len(trace.batches)} batches, {len(trace.requests)} requests, "
                  f"{meta.get('duration_ns', 0) / 1e9:.1f}s recorded, lost events {meta.get('lost_events', 0)}")
    for title, df in summary_tables(trace, slo_ttft_ms, slo_tpot_ms).items():
        if df is None or df.empty:
            continue
        table = Table(title=title, title_justify="left")
        table.add_column(str(df.index.name or ""))
        for c in df.columns:
            table.add_column(str(c), justify="right")
        for idx, row in df.iterrows():  # noqa: B007
            table.add_row(str(idx), *[_fmt(v) for v in row])
        console.print(table)


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_report(trace, path: str | Path, slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None,
                 anomalies=None, labels=None) -> Path:
    """A self-contained HTML report (tables and plots inline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bd = BatchBreakdown(trace)
    rb = RequestBreakdown(trace)
    per_batch = bd.per_batch()
    parts = [f"<h1>prismkit report</h1><p>{html.escape(str(trace.metadata.get('path', '')))} — "
             f"{len(trace.batches)} batches, {len(trace.requests)} requests, "
             f"lost events {trace.metadata.get('lost_events', 0)}</p>"]
    cmd = trace.metadata.get("target_cmdline")
    if cmd:
        parts.append(f"<p><code>{html.escape(cmd)}</code></p>")
    for title, df in summary_tables(trace, slo_ttft_ms, slo_tpot_ms).items():
        if df is not None and not df.empty:
            parts.append(f"<h2>{html.escape(title)}</h2>" + df.to_html(float_format=lambda v: f"{v:.3f}"))
    parts.append("<h2>Stage breakdown over time</h2>" + _fig_to_img(plots.stage_breakdown_over_time(per_batch)))
    parts.append("<h2>Latency against workload</h2>" + _fig_to_img(plots.latency_vs_workload(per_batch)))
    if not trace.requests.empty:
        parts.append("<h2>Request waterfall</h2>" + _fig_to_img(plots.request_waterfall(rb.per_request())))
    from ..rootcause.report import root_cause_html  # anomalies: given, from labels, else prismkit.detect

    parts.append(root_cause_html(trace, anomalies, labels))
    style = ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>prismkit report</title>{style}"
                    f"</head><body>{''.join(parts)}</body></html>")
    return path
