"""How much a scenario slows the server, measured side by side.

    python -m prismkit.inject.measure --pid PID SCENARIO [-p KEY=VALUE ...] [--windows 3] [--window-s 3]

Drives the server with a steady closed-loop load (fixed prompt and output
lengths, so that the batches are the same with and without the fault) and
alternates normal and fault windows: normal, fault, normal, fault, ...,
normal. With --record (root and BPF) the recorder captures every batch;
without it only the client-side token rate is measured. Reported:

* ``tok_s``: tokens per second delivered (client chunk time stamps) in the
  normal and in the fault windows; ``drop`` is the median over the fault
  windows of 1 - (its rate / the mean rate of the normal windows on either
  side of it);
* ``decode``: the per-batch slowdown the detector sees: the decode batches
  (llama_decode calls) of each fault window against the median normal batch
  of the same size (n_seqs) in the normal windows on either side;
  per fault window, ``slowdown_median`` is the median batch's ratio - 1 and
  ``slowdown_total`` (the windows' total batch time / the expected time) - 1;
  ``frac_slowed_20pct`` is the fraction of fault batches that took >= 1.2x
  the expected time (``frac_slowed_20pct_normal``: the same for the normal
  batches, the noise floor); each is the median over the fault windows;
* ``steps_s``: decode batches per second.

Fault windows count from the label's ``effective_start_ns`` (helpers
running) to its end; normal windows exclude the ``settle_s`` (0.5 s) after
each fault window (after-effects).
Alternation is what makes this usable on a busy machine: a neighbour's
load changes both kinds of windows alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import PrismError


def _in(ts: np.ndarray, windows: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(len(ts), dtype=bool)
    for a, b in windows:
        mask |= (ts >= a) & (ts < b)
    return mask


def measure(pid: int, scenario: str, params: dict | None = None, windows: int = 3, window_s: float = 3.0,
            url: str | None = None, record: bool = True, concurrency: int = 4, prompt: int = 32,
            output: int = 64, settle_s: float = 0.5, log=None) -> dict:
    """Alternate `windows` normal and fault windows of `window_s` under a closed loop; see the module doc."""
    with tempfile.TemporaryDirectory(prefix="prism-measure-") as tmp:
        return _measure(Path(tmp) / "t.pftrace", pid, scenario, params, windows, window_s, url, record,
                        concurrency, prompt, output, settle_s, log)


def _measure(trace_path: Path, pid: int, scenario: str, params: dict | None, windows: int, window_s: float,
             url: str | None, record: bool, concurrency: int, prompt: int, output: int, settle_s: float,
             log) -> dict:
    from ..load import closed_loop, parse_length_dist, run_load
    from . import make_scenario
    from .base import Stop, Target, close_guard, run_window

    target = Target.from_pid(pid, url=url)
    url = target.resolve_url()
    labels: list[dict] = []
    stop = Stop()
    errors: list[BaseException] = []
    t_begin = time.monotonic_ns()

    def injector() -> None:
        try:
            for _ in range(windows):
                if stop.wait(window_s):
                    return
                sc = make_scenario(scenario, target, params or {})
                lab = run_window(sc, window_s, stop)
                if lab:
                    labels.append(lab)
                    if log:
                        log(f"fault window {len(labels)}/{windows} done")
            stop.wait(window_s)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    rec = None
    if record:
        from recorders.engine import Recorder
        from recorders.packs.llama_cpp import LlamaCppPack

        # Batches are all this needs: the engine pack alone keeps the recorder's own cost low.
        rec = Recorder(pid, trace_path, packs=[LlamaCppPack()], verbose=False).start_background()
    first_slice = (2 * windows + 1) * window_s
    specs = closed_loop(200_000, parse_length_dist(f"fixed:{prompt}"), parse_length_dist(f"fixed:{output}"))
    thread = threading.Thread(target=injector, daemon=True)
    t0 = time.monotonic_ns()
    thread.start()
    try:
        res = _load_until(url, specs, concurrency, thread, first_slice)
    finally:
        stop.set("done")
        thread.join()
        close_guard()
        summary = rec.join() if rec is not None else None
    if errors:
        raise errors[0]
    # Fault windows from when the interference was in full force (helpers started) to its end.
    fault = [(lab["params"].get("effective_start_ns", lab["start_ns"]), lab["end_ns"]) for lab in labels]
    chunk_ts = np.array(sorted(t for r in res.results if r.status in ("ok", "cancelled") for t in r.chunk_ts_ns))
    bounds = [t0, *[x for w in fault for x in w], int(chunk_ts[-1]) if len(chunk_ts) else time.monotonic_ns()]
    normal = [(bounds[i] + (int(settle_s * 1e9) if i else 0), bounds[i + 1]) for i in range(0, len(bounds), 2)]
    out: dict = {"scenario": scenario, "params": labels[0]["params"] if labels else params, "windows": windows,
                 "window_s": window_s, "load": f"closed c={concurrency} prompt={prompt} output={output}",
                 "wall_s": round((time.monotonic_ns() - t_begin) / 1e9, 1)}
    # Each fault window against the mean of the normal windows on either side of it.
    rate = lambda ts, w: ((ts >= w[0]) & (ts < w[1])).sum() / max((w[1] - w[0]) / 1e9, 1e-9)  # noqa: E731
    drops = []
    for i, fw in enumerate(fault):
        ref = (rate(chunk_ts, normal[i]) + rate(chunk_ts, normal[i + 1])) / 2
        drops.append(1 - rate(chunk_ts, fw) / ref if ref else float("nan"))
    out["tok_s"] = {"normal": round(_in(chunk_ts, normal).sum() / _span(normal), 1),
                    "fault": round(_in(chunk_ts, fault).sum() / _span(fault), 1),
                    "drop": round(float(np.nanmedian(drops)), 3), "drop_per_window": [round(x, 3) for x in drops]}
    if summary is not None:
        from ..trace import load_trace

        b = load_trace(trace_path).batches
        d = b[b["phase"] == "decode"]
        ts = d["ts"].to_numpy(dtype=np.int64)
        total, med, frac, frac_normal, n_f = [], [], [], [], 0
        for i, fw in enumerate(fault):
            # Like with like: each fault batch against the normal batches of its size next to it.
            near = d[_in(ts, [normal[i], normal[i + 1]])]
            ref = near.groupby("n_seqs")["dur"].median()
            f = d[_in(ts, [fw]) & d["n_seqs"].isin(ref.index).to_numpy()]
            if len(f) and len(near):
                expected = ref.loc[f["n_seqs"]].to_numpy()
                ratio = f["dur"].to_numpy() / expected
                total.append(float(f["dur"].sum() / expected.sum()) - 1)
                med.append(float(np.median(ratio)) - 1)
                frac.append(float((ratio >= 1.2).mean()))
                frac_normal.append(float((near["dur"].to_numpy() / ref.loc[near["n_seqs"]].to_numpy() >= 1.2).mean()))
                n_f += len(f)
        n = d[_in(ts, normal)]
        if total:
            out["decode"] = {"normal_median_ms": round(float(n["dur"].median()) / 1e6, 3),
                             "fault_median_ms": round(float(d[_in(ts, fault)]["dur"].median()) / 1e6, 3),
                             "slowdown_median": round(float(np.median(med)), 3),
                             "slowdown_total": round(float(np.median(total)), 3),
                             "slowdown_total_per_window": [round(x, 3) for x in total],
                             "frac_slowed_20pct": round(float(np.median(frac)), 3),
                             "frac_slowed_20pct_normal": round(float(np.median(frac_normal)), 3),
                             "normal_n": int(len(n)), "fault_n": n_f}
            out["steps_s"] = {"normal": round(len(n) / _span(normal), 1),
                              "fault": round(int(_in(ts, fault).sum()) / _span(fault), 1)}
    return out


def _span(windows: list[tuple[int, int]]) -> float:
    return max(sum(b - a for a, b in windows) / 1e9, 1e-9)


def _load_until(url: str, specs, concurrency: int, thread: threading.Thread, first_slice: float):
    """Closed-loop load in this (main) thread until the injector thread is done."""
    from ..load import run_load

    # run_load stops at its duration: one long slice, then short ones until the injector finishes.
    results: list = []
    res = None
    slice_s = first_slice
    while res is None or thread.is_alive():
        n = 20_000 if res is None else 4_000
        res = run_load(url, specs[len(results):len(results) + n], concurrency=concurrency, duration_s=slice_s,
                       progress=False)
        slice_s = 1.0
        results.extend(res.results)
        if res.interrupted:
            break
    assert res is not None
    res.results = results
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prismkit.inject.measure", description=__doc__.split("\n")[0])
    p.add_argument("scenario")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("-p", "--param", action="append", default=[])
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--window-s", type=float, default=3.0)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("-c", "--concurrency", type=int, default=4)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--output", type=int, default=64)
    args = p.parse_args(argv)
    params = dict(item.split("=", 1) for item in args.param)
    try:
        out = measure(args.pid, args.scenario, params, args.windows, args.window_s, record=not args.no_record,
                      concurrency=args.concurrency, prompt=args.prompt, output=args.output)
    except PrismError as err:
        print(f"measure: error: {err}", file=sys.stderr)
        return 2
    out["params"] = {k: v for k, v in (out["params"] or {}).items() if k not in ("pauses", "helper_pids")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
