"""`prism explain TRACE` and `prism eval rca TRACES...` (registered in prismkit/cli.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PrismError


def add_explain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", type=Path)
    p.add_argument("--labels", type=Path, default=None,
                   help="explain these labelled fault windows (default: the anomalies prismkit.detect finds)")
    p.add_argument("--top", type=int, default=3, help="causes to print per anomaly")
    p.add_argument("--csv", type=Path, default=None, help="also write the anomaly x cause table here")


def add_eval_rca_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="+", type=Path, help="labelled recordings (.pftrace)")
    p.add_argument("--labels", type=Path, nargs="*", default=None,
                   help="labels JSONL, one per trace (default: each trace's stem + .labels.jsonl)")
    p.add_argument("--per-anomaly", action="store_true", help="also print every anomaly's ranking")
    p.add_argument("--min-slowdown", type=float, default=1.2,
                   help="score only fault windows whose median batch latency rose at least this much over the "
                        "baseline (default 1.2; 0 scores every window)")


def _load_anomalies(trace, labels: Path | None):
    if labels is not None:
        return None, labels
    try:
        from ..detect import detect
    except ImportError:
        raise PrismError("no --labels given and prismkit.detect is not available") from None
    res = detect(trace)
    return res.anomalies, None


def cmd_explain(args: argparse.Namespace) -> int:
    from ..trace import load_trace
    from .explain import explain

    if not args.trace.exists():
        raise PrismError(f"no such trace: {args.trace}")
    trace = load_trace(args.trace)
    anomalies, labels = _load_anomalies(trace, args.labels)
    if anomalies is not None and len(anomalies) == 0:
        print("no anomalies found: nothing to explain")
        return 0
    res = explain(trace, anomalies=anomalies, labels=labels)
    print_explanation(res, top=args.top)
    if args.csv:
        res.causes.to_csv(args.csv, index=False)
        print(f"causes: {args.csv}")
    return 0


def print_explanation(res, top: int = 3) -> None:
    an = res.anomalies
    t0 = int(res.features["ts"].min()) if len(res.features) else 0
    for aid, a in an.iterrows():
        c = res.causes[res.causes["anomaly_id"] == aid].sort_values("rank").head(top)
        n_b = int(c["n_batches"].iloc[0]) if len(c) else 0
        slow = c["slowdown"].iloc[0] if len(c) and "slowdown" in c else float("nan")
        extra = f", labelled {a['scenario']}" if "scenario" in a and isinstance(a.get("scenario"), str) else ""
        print(f"anomaly {aid}: {(a['start'] - t0) / 1e9:.2f}s..{(a['end'] - t0) / 1e9:.2f}s into the trace "
              f"(ts {int(a['start'])}..{int(a['end'])}), {n_b} batches, median slowdown x{slow:.2f}{extra}")
        for r in c.itertuples():
            print(f"  {r.rank}. {r.cause:<16} share {r.share:4.0%}  {r.ms:8.2f} ms  confidence {r.confidence:.2f}")
            print(f"       {r.evidence}")
    t = res.timing
    print(f"explained {len(an)} anomalies in {t['total_s']:.2f}s ({t['per_anomaly_total_s']:.3f}s per anomaly, "
          f"features {t['features_s']:.2f}s, model {t['fit_s']:.2f}s)")


def cmd_eval_rca(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_rca

    labels = args.labels or None
    if labels and len(labels) not in (1, len(args.traces)):
        raise PrismError("--labels takes one file, or one per trace")
    if labels and len(labels) == 1:
        labels = labels[0]
    for t in args.traces:
        if not t.exists():
            raise PrismError(f"no such trace: {t}")
    per, summ = evaluate_rca(args.traces, labels, min_slowdown=args.min_slowdown)
    if per.empty:
        print("no fault labels in these recordings")
        return 1
    if args.per_anomaly:
        print(per[["trace", "anomaly_id", "scenario", "n_batches", "slowdown", "scored", "top1", "ranked",
                   "confidence"]].to_string(index=False))
    print(summ.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0
