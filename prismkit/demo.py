"""`prism demo` / `make demo`: the main job end to end on the bundled default.

Build and start the bundled llama.cpp server (random-weight ~140M llama),
record it with eBPF while driving about a minute of load (steady closed loop,
then bursty open loop), analyse the recording, and print where the results are.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from .errors import PrismError
from .load import closed_loop, open_loop, parse_length_dist, run_load
from .load.runner import add_latency_columns, latency_summary, write_results_csv
from .target.server import LlamaServer


def _say(msg: str) -> None:
    print(f"\033[1m[demo]\033[0m {msg}", flush=True)


def run_demo(model: str = "demo", duration_s: float = 60.0, port: int = 8090, out_dir: Path = Path("out")) -> int:
    from recorders.engine import Recorder

    from .preflight import check_all

    check_all()
    out_dir.mkdir(parents=True, exist_ok=True)
    trace_path = out_dir / "trace.pftrace"
    load_csv = out_dir / "load.csv"
    srv = LlamaServer(model=model, port=port, name="demo")
    if srv.load_state() is not None:
        srv.stop()
    _say(f"starting llama-server with the '{model}' model on 127.0.0.1:{port}")
    info = srv.start()
    try:
        # Sized for the ~140M demo model on 2 cores: about half its capacity on average,
        # so the bursts queue up and drain again.
        prompt, output = parse_length_dist("uniform:16:96"), parse_length_dist("uniform:8:48")
        _say("warming up (the first requests after start are several times slower)")
        run_load(info.url, closed_loop(4, prompt, output, seed=99), concurrency=4, progress=False)

        _say(f"recording PID {info.pid} with eBPF into {trace_path}")
        rec = Recorder(info.pid, trace_path, verbose=False).start_background()
        t0 = time.monotonic()
        half = duration_s / 2
        _say(f"phase 1: steady closed-loop load, concurrency 4, {half:.0f}s")
        steady = run_load(info.url, closed_loop(100_000, prompt, output, seed=1), concurrency=4, duration_s=half)
        _say(f"phase 2: bursty open-loop load (0.6 req/s, Gamma arrivals with CV^2 = 4), {half:.0f}s")
        bursty = run_load(info.url, open_loop(0.6, half, prompt, output, burstiness=4.0, seed=2), max_in_flight=64)
        summary = rec.join()
        _say(f"recorded {time.monotonic() - t0:.0f}s: " + ", ".join(f"{k} {v}" for k, v in summary.events.items())
             + f"; lost events {sum(summary.lost.values())}")
        results = steady.results + bursty.results
        for i, r in enumerate(results):
            r.req_id = i
        write_results_csv(results, load_csv)
        from .online.demo import run_online_demo  # phase 3: online, alert on an injected fault

        run_online_demo(info.pid, info.url, trace_path, out_dir, say=_say)
    finally:
        srv.stop()
        _say("server stopped")

    client = add_latency_columns(pd.read_csv(load_csv))
    print()
    print("Client-side latency (ms), from the load generator:")
    print(latency_summary(client).round(1).to_string())
    _print_trace_summary(trace_path, out_dir)
    print()
    print("Results:")
    print(f"  trace      {trace_path}   -> open in https://ui.perfetto.dev (Open trace file)")
    print(f"  load       {load_csv}      (client-side ground truth, one row per request)")
    report = out_dir / "report.html"
    if report.exists():
        print(f"  report     {report}")
    print("  notebooks  notebooks/  (jupyter lab notebooks/01_breakdown.ipynb)")
    return 0


def _print_trace_summary(trace_path: Path, out_dir: Path) -> None:
    from .analysis.report import write_report
    from .trace import load_trace

    try:
        trace = load_trace(trace_path)
    except PrismError as err:
        print(f"[demo] could not read the trace back: {err}", file=sys.stderr)
        return
    b = trace.batches
    if b.empty:
        print("[demo] the trace has no batches", file=sys.stderr)
        return
    print()
    print(f"Server-side, from the eBPF trace: {len(b)} batches (llama_decode calls)")
    by_phase = b.groupby("phase").agg(batches=("dur", "size"), tokens=("n_tokens", "sum"),
                                      p50_ms=("dur", lambda d: d.quantile(0.5) / 1e6),
                                      p99_ms=("dur", lambda d: d.quantile(0.99) / 1e6))
    print(by_phase.round(2).to_string())
    write_report(trace, out_dir / "report.html")
