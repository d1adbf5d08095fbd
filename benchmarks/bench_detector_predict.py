"""One-row predictions of the workload model: LightGBM's fast path vs the flat forest.

    .venv/bin/python -m benchmarks.bench_detector_predict [--rows 400] [--thrash-mb 64]

prism watch predicts each batch on the recorder's thread, woken on a CPU the server has just
used, so the model's trees are rarely in cache. This fits the workload model on
sample_traces/detect_baseline.pftrace, then times one row at a time (thread CPU time, median
and mean) side by side in one run:

- LightGBM's single-row fast path (LGBM_BoosterPredictForMatSingleRowFast);
- the flat forest (prismkit/detect/_forest.c), the detector's default where it was built;
- the whole of WorkloadModel.predict_one (features, trees, base model): its Python path, and
  the default (forest.row_model: all of it in one C call, where the native part is built);

each warm (rows back to back) and cold (a --thrash-mb buffer swept between rows, which
evicts the trees as the server's matrix work does). Prints the ratios. No asserts: the
tests check that the forest's predictions equal LightGBM's bit for bit.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _time_rows(fn, rows: list, thrash: np.ndarray | None) -> tuple[float, float]:
    """(median, mean) thread CPU time of fn(row) in microseconds."""
    took = []
    for r in rows:
        if thrash is not None:
            thrash.sum()
        t0 = time.thread_time_ns()
        fn(r)
        took.append(time.thread_time_ns() - t0)
    return float(np.median(took)) / 1e3, float(np.mean(took)) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--thrash-mb", type=int, default=64)
    args = ap.parse_args()

    from prismkit.detect import WorkloadModel
    from prismkit.detect.forest import _SingleRowPredictor, compile_forest
    from prismkit.trace import load_trace

    batches = load_trace(REPO / "sample_traces" / "detect_baseline.pftrace").batches
    model = WorkloadModel().fit(batches)
    n = len(model.features_)
    records = batches.sort_values("ts").head(args.rows).to_dict("records")
    values = [[model._row_values(r)[0][f] for f in model.features_] for r in records]
    lgbm = _SingleRowPredictor(model.booster_, n)
    forest = compile_forest(model.booster_, n)
    print(f"model: {model.booster_.num_trees()} trees, {n} features; {len(values)} rows of "
          f"{Path('sample_traces/detect_baseline.pftrace')}")
    if forest is None:
        print("the flat forest is not available (native part not built, or the model not supported)")
    thrash = np.ones((args.thrash_mb << 20) // 8)
    for label, sweep in (("warm", None), (f"cold ({args.thrash_mb} MB swept between rows)", thrash)):
        print(f"\n{label}: thread CPU per row, median / mean")
        base = _time_rows(lgbm, values, sweep)
        print(f"  LightGBM fast path     {base[0]:7.1f} / {base[1]:7.1f} us")
        if forest is not None:
            flat = _time_rows(forest.predict, values, sweep)
            print(f"  flat forest            {flat[0]:7.1f} / {flat[1]:7.1f} us   "
                  f"{base[0] / flat[0]:.1f}x faster (median)")
        py = _time_rows(model._predict_one_py, records, sweep)
        print(f"  predict_one in Python  {py[0]:7.1f} / {py[1]:7.1f} us   (features, trees, base)")
        whole = _time_rows(model.predict_one, records, sweep)
        print(f"  predict_one (default)  {whole[0]:7.1f} / {whole[1]:7.1f} us   "
              f"{py[0] / whole[0]:.1f}x faster (median)"
              + ("" if model._row_model() is not None else "   (no native RowModel: the Python path)"))


if __name__ == "__main__":
    main()
