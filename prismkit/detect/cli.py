"""`prism eval`: score the detector (and the workload model) on labelled recordings.

    prism eval detect TRACE [TRACE ...] [--labels FILE] [--model M | --baseline TRACE]
    prism eval model BASELINE [--split blocks] [--test-frac 0.3] [--save M]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import PrismError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("detect", help="precision/recall/F1, lag and false alarms of the detector and two baselines")
    d.add_argument("traces", nargs="+", type=Path, help="recorded traces (.pftrace)")
    d.add_argument("--labels", type=Path, default=None,
                   help="labels JSONL (default: each trace's stem with .jsonl, e.g. x.pftrace -> x.jsonl)")
    d.add_argument("--model", type=Path, default=None, help="a saved WorkloadModel (prism eval model --save)")
    d.add_argument("--baseline", type=Path, default=None, help="fit the model on this normal recording")
    d.add_argument("--k", type=float, default=None, help="control limit: mean + k sigma (default 3)")
    d.add_argument("--m", type=int, default=None, help="persistence: m of ...")
    d.add_argument("--n", type=int, default=None, help="... the last n batches (default 3 of 4)")
    d.add_argument("--min-slowdown", type=float, default=None,
                   help="also score only faults whose batches slowed by at least this ratio (e.g. 1.2)")
    d.add_argument("--json", action="store_true", help="print the scores as JSON")
    m = sub.add_parser("model", help="fit a workload model on a normal recording; held-out errors by group")
    m.add_argument("baseline", type=Path)
    m.add_argument("--split", choices=["blocks", "time", "random"], default="blocks",
                   help="held-out batches: every 3rd block of 50 (default), the last part, or random")
    m.add_argument("--test-frac", type=float, default=0.3)
    m.add_argument("--leave-group-out", action="store_true", help="also fit without each workload group, test on it")
    m.add_argument("--save", type=Path, default=None, help="save the model fitted on the whole recording here")


def _labels_for(trace: Path, given: Path | None) -> Path:
    path = given or trace.with_suffix(".jsonl")
    if not path.exists():
        raise PrismError(f"no labels for {trace}: {path} does not exist (pass --labels)")
    return path


def _model(args, first_trace: Path):
    from .model import WorkloadModel

    if args.model:
        if not args.model.exists():
            raise PrismError(f"model {args.model} does not exist")
        return WorkloadModel.load(args.model), f"model {args.model}"
    base = args.baseline
    if base is None:
        cand = first_trace.parent / "detect_baseline.pftrace"
        if cand.exists() and cand.resolve() != first_trace.resolve():
            base = cand
    if base is None:
        return None, "model fitted on the first 30% of each trace (no --model/--baseline)"
    from ..trace import load_trace

    return WorkloadModel().fit(load_trace(base)), f"model fitted on {base}"


def _fmt(df) -> str:
    import pandas as pd

    out = df.copy()
    for c in out.columns:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out.round(3).to_string()


def cmd(args: argparse.Namespace) -> int:
    if args.what == "model":
        return _cmd_model(args)
    return _cmd_detect(args)


def _cmd_detect(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..trace import load_trace
    from .detector import DetectorConfig
    from .evaluate import eval_table, evaluate_trace, pooled
    from .scenarios import read_labels

    if args.labels and len(args.traces) > 1:
        raise PrismError("--labels goes with one trace; with several, each trace's .jsonl is used")
    for t in args.traces:
        if not t.exists():
            raise PrismError(f"trace {t} does not exist")
    model, how = _model(args, args.traces[0])
    over = {k: getattr(args, k) for k in ("k", "m", "n") if getattr(args, k) is not None}
    config = DetectorConfig().replace(**over)
    per, per_min, report = [], [], {}
    for t in args.traces:
        labels = read_labels(_labels_for(t, args.labels))
        trace = load_trace(t)
        s = evaluate_trace(trace, labels, model, config)
        per.append(s)
        res = s.pop("_result")
        if args.min_slowdown:
            s2 = evaluate_trace(trace, labels, model, config, min_slowdown=args.min_slowdown)
            s2.pop("_result")
            per_min.append(s2)
        report[str(t)] = {"scores": {k: {kk: vv for kk, vv in v.items()} for k, v in s.items()},
                          "anomalies": len(res.anomalies), "workload_shifts": len(res.workload_shifts),
                          "shifts": res.workload_shifts}
    if args.json:
        out = {t: {"scores": r["scores"], "anomalies": r["anomalies"], "workload_shifts": r["workload_shifts"]}
               for t, r in report.items()}
        out["_pooled"] = pooled(per).to_dict(orient="index")
        print(json.dumps(out, default=lambda o: o.item() if hasattr(o, "item") else str(o), indent=1))
        return 0
    print(f"detector: {how}; config k={config.k} k_in={config.k_in} m={config.m} n={config.n} "
          f"k_severe={config.k_severe}")
    for (t, r), s in zip(report.items(), per):
        print(f"\n== {t}: {r['anomalies']} anomalies, {r['workload_shifts']} workload shifts")
        print(_fmt(eval_table(s)))
        lab = pd.DataFrame(s["model"]["per_label"])
        if len(lab):
            print("faults (model):")
            print(_fmt(lab.set_index(["label", "scenario"])))
        if r["workload_shifts"]:
            sh = r["shifts"]
            cols = [c for c in ["idx", "expected_change", "observed_change", "explained", "n_seqs_before",
                                "n_seqs_after", "kv_tokens_before", "kv_tokens_after"] if c in sh.columns]
            print("workload shifts (model):")
            print(_fmt(sh[cols]))
    if len(per) > 1:
        print(f"\n== pooled over {len(per)} traces")
        print(_fmt(pooled(per)))
    if per_min:
        print(f"\n== pooled, faults with median slowdown >= {args.min_slowdown} only")
        print(_fmt(pooled(per_min)))
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from ..trace import load_trace
    from .model import WorkloadModel, holdout_split, leave_group_out

    if not args.baseline.exists():
        raise PrismError(f"trace {args.baseline} does not exist")
    b = load_trace(args.baseline).batches
    if len(b) < 40:
        raise PrismError(f"{args.baseline} has {len(b)} batches; need at least 40")
    train, test = holdout_split(b, args.test_frac, args.split)
    m = WorkloadModel().fit(train)
    print(f"workload model: trained on {len(train)} batches, held out {len(test)} ({args.split} split); "
          f"features {m.features_}")
    print(_fmt(m.evaluate(test)))
    if args.leave_group_out:
        print("\nleave one workload group out (fit on the others, test on it):")
        print(_fmt(leave_group_out(b)))
    if args.save:
        full = WorkloadModel().fit(b)
        full.save(args.save)
        print(f"\nsaved the model fitted on all {len(b)} batches: {args.save}")
    return 0
