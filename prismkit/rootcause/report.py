"""Root-cause section of the HTML report (prismkit.analysis.report.write_report)."""
from __future__ import annotations

import html



def root_cause_html(trace, anomalies=None, labels=None, top: int = 3) -> str:
    """An HTML section with the ranked causes of each anomaly; '' when there are none (or on failure)."""
    try:
        from .explain import explain

        if anomalies is None and labels is None:
            from ..detect import detect

            anomalies = detect(trace).anomalies
        if anomalies is not None and len(anomalies) == 0:
            return ""
        res = explain(trace, anomalies=anomalies, labels=labels)
    except Exception as err:  # noqa: BLE001 - the rest of the report must still be written
        return f"<h2>Root causes</h2><p>root-cause analysis failed: {html.escape(str(err))}</p>"
    if res.causes.empty:
        return ""
    t0 = int(res.features["ts"].min()) if len(res.features) else 0
    c = res.causes[res.causes["rank"] <= top].copy()
    c["window"] = [f"{(s - t0) / 1e9:.2f}s..{(e - t0) / 1e9:.2f}s" for s, e in zip(c["start"], c["end"])]
    c["perfetto ts (ns)"] = [f"{s}..{e}" for s, e in zip(c["start"], c["end"])]
    cols = ["anomaly_id", "window", "n_batches", "slowdown", "rank", "cause", "share", "ms", "confidence", "evidence",
            "perfetto ts (ns)"]
    table = c[[x for x in cols if x in c]].to_html(index=False, float_format=lambda v: f"{v:.2f}",
                                                   classes="rca", escape=True)
    t = res.timing
    return ("<h2>Root causes</h2><p>LightGBM latency model over per-batch workload and system features, "
            "explained with SHAP (anomalous batches against the baseline), mapped to causes. "
            f"{len(res.anomalies)} anomalies, {t['per_anomaly_total_s']:.2f}s per anomaly.</p>"
            "<style>table.rca td{text-align:left;max-width:600px}</style>" + table)


