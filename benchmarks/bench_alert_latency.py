"""Alert-path latency of `prism watch` on a live server with injected faults.

    .venv/bin/python -m benchmarks.bench_alert_latency [--rounds 12] [--contention-rounds 4]

Starts the bundled llama.cpp server (`--model demo`, the embedded default, ~20 ms
decode steps; or `tiny`: sub-millisecond steps, over 1,000 batches/s, the stress
case), drives closed-loop load,
watches it in-process (recorder + OnlineDetector + sinks: JSON lines, webhook
to a local HTTP server in another process, terminal, Prometheus), learns a baseline during the
warm-up, then injects faults with `prism inject` (single stalls, SIGSTOP of
`--pause-ms`, and cpu_contention windows). For every alert episode opened, the
alert path is measured from the end of the batch that raised it (its
uretprobe timestamp ts_end, CLOCK_MONOTONIC) to the alert leaving each sink
(time.monotonic_ns() right after the write / POST returned). Also reports the
detection lag (start of the first flagged batch to the alarm), the watcher's
CPU use and the server's throughput with and without the watcher.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


class Receiver:
    """A local webhook endpoint in a process of its own (as a real receiver would be): records
    each POSTed alert and when it arrived (CLOCK_MONOTONIC, comparable across processes)."""

    def __init__(self, out: Path) -> None:
        self.path = out / "webhook_received.jsonl"
        self.path.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(self.path)], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{port}/alert"

    @property
    def got(self) -> list[tuple[int, dict]]:
        if not self.path.exists():
            return []
        rows = [line.split(" ", 1) for line in self.path.read_text().splitlines() if line]
        return [(int(t), json.loads(body)) for t, body in rows]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


RECEIVER = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
out = open(sys.argv[1], "a", buffering=1)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as Alertmanager-style receivers do
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        t = time.monotonic_ns()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        out.write(f"{t} {body.decode()}\n")
    def log_message(self, *a):
        pass
httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inject(pid: int, scenario: str, duration: float, params: dict, labels: Path) -> None:
    cmd = [sys.executable, "-m", "prismkit.cli", "inject", scenario, "--pid", str(pid), "--duration", str(duration),
           "--labels", str(labels), "--quiet"] + [a for k, v in params.items() for a in ("-p", f"{k}={v}")]
    subprocess.run(cmd, check=True, cwd=REPO)


def _load(url: str, seconds: float, seed: int, out: Path) -> float:
    """Closed-loop load (concurrency 2) in a subprocess (the load generator wants a main thread); tokens/s."""
    import pandas as pd

    csv = out / f"load-{seed}.csv"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "prismkit.cli", "load", "--url", url, "-c", "2", "--duration", str(seconds),
                    "--prompt", "uniform:16:96", "--output", "uniform:8:48", "--seed", str(seed), "--quiet",
                    "-o", str(csv)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    try:
        df = pd.read_csv(csv)
        return float(df.loc[df["status"] == "ok", "output_tokens"].sum()) / max(wall, 1e-9)
    except Exception:
        return float("nan")


def q(a, p):
    return float(np.percentile(a, p)) if len(a) else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "tiny"])
    ap.add_argument("--rounds", type=int, default=12, help="single-stall rounds")
    ap.add_argument("--contention-rounds", type=int, default=3, help="cpu_contention rounds")
    ap.add_argument("--pause-ms", type=float, default=150.0)
    ap.add_argument("--warmup", type=float, default=12.0)
    ap.add_argument("--resolve-after", type=float, default=0.3,
                    help="seconds without anomaly that end an episode (short: more episodes to measure)")
    ap.add_argument("--nice", type=int, default=-15, help="autogroup nice of the watcher (None: leave)")
    ap.add_argument("--live-priority", type=int, default=0,
                    help="SCHED_FIFO priority of the recorder's batch consumer and the webhook sender (0: normal)")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "bench_alert")
    ap.add_argument("--poll-ms", type=int, default=None, help="the watch's drain period (default: prism watch's)")
    ap.add_argument("--pid", type=int, default=None, help="watch this running server instead of starting one")
    ap.add_argument("--url", default=None)
    args = ap.parse_args(argv)

    from prismkit.online import WatchConfig, Watcher
    from prismkit.online.alerts import JsonlSink, TerminalSink, WebhookSink
    from prismkit.target.server import LlamaServer

    args.out.mkdir(parents=True, exist_ok=True)
    srv = None
    if args.pid is None:
        srv = LlamaServer(model=args.model, port=_free_port(), n_parallel=4, threads=1 if args.model == "tiny" else None,
                          name=f"bench-alert-{os.getpid()}")
        info = srv.start()
        pid, url = info.pid, info.url
    else:
        pid, url = args.pid, args.url
    rx = Receiver(args.out)
    labels = args.out / "labels.jsonl"
    labels.unlink(missing_ok=True)
    try:
        _load(url, 3, 0, args.out)  # warm the server up
        tok_unwatched = _load(url, 8, 1, args.out)
        sinks = [JsonlSink(args.out / "alerts.jsonl"), WebhookSink(rx.url, rt_priority=args.live_priority or None),
                 TerminalSink(lambda s: print(s, file=sys.stderr, flush=True))]
        (args.out / "alerts.jsonl").write_text("")
        cfg = WatchConfig(pid=pid, output=args.out / "watch.pftrace", warmup_s=args.warmup, prometheus_port=0,
                          nice=args.nice, verbose=True, resolve_after_s=args.resolve_after,
                          live_rt_priority=args.live_priority or None, poll_ms=args.poll_ms or WatchConfig.poll_ms)
        w = Watcher(cfg, sinks=sinks)
        stop = threading.Event()
        loads = []

        def drive():
            i = 2
            while not stop.is_set():
                loads.append(_load(url, 5, i, args.out))
                i += 1

        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        w.start()
        lt = threading.Thread(target=drive, daemon=True)
        lt.start()
        w._say = lambda m, _say=w._say: None if m.startswith(("warming", "fitting")) else _say(m)
        while w.state != "watching":
            if time.monotonic() - t0 > args.warmup + 120:
                raise SystemExit("baseline never fitted")
            w.poll()
            time.sleep(0.2)
        time.sleep(3)
        n_watch0 = len(loads)
        for r in range(args.rounds):
            _inject(pid, "stall", 0.5, {"pause_ms": args.pause_ms, "period_ms": 5000}, labels)
            time.sleep(3.5)
            w.poll()
        for r in range(args.contention_rounds):
            _inject(pid, "cpu_contention", 3.0, {}, labels)
            time.sleep(4)
            w.poll()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.monotonic() - t0
        stop.set()
        lt.join(15)
        watched = loads[n_watch0:] or loads
        tok_watched = float(np.nanmean(watched)) if watched else float("nan")
        summary = w.stop("duration")
        time.sleep(0.5)
    finally:
        got = rx.got
        rx.close()
        if srv is not None:
            srv.stop()

    print()
    print(f"model {args.model}; alert episodes: {len(summary['episodes'])} (rounds: {args.rounds} stall, {args.contention_rounds} "
          f"cpu_contention); batches {summary['batches']}, lost events {sum(summary['lost_events'].values())}")
    print("alert path, end of the alarm batch (uretprobe ts_end) -> alert out of the sink (ms):")
    print(f"  {'sink':<10} {'n':>4} {'p50':>8} {'p99':>8} {'max':>8}")
    res = {}
    for s in sinks:
        ms = s.latencies_ms("opened")
        res[s.name] = {"n": len(ms), "p50_ms": q(ms, 50), "p99_ms": q(ms, 99), "max_ms": max(ms) if ms else None}
        print(f"  {s.name:<10} {len(ms):>4} {q(ms, 50):>8.2f} {q(ms, 99):>8.2f} {max(ms) if ms else float('nan'):>8.2f}")
    rx_ms = [(t - d["alarm_ns"]) / 1e6 for t, d in got if d.get("event") == "opened"]
    print(f"  {'(received)':<10} {len(rx_ms):>4} {q(rx_ms, 50):>8.2f} {q(rx_ms, 99):>8.2f}   webhook receiver's clock")
    lag = [(d["alarm_ns"] - d["start_ns"]) / 1e6 for _t, d in got if d.get("event") == "opened"]
    print(f"detection lag (start of the first flagged batch -> alarm): p50 {q(lag, 50):.1f} ms, p99 {q(lag, 99):.1f} ms")
    print(f"detector thread per batch: p50 {summary['detector_ms_p50']:.3f} ms, p99 {summary['detector_ms_p99']:.3f} ms")
    cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
    print(f"watcher process CPU while watching (recorder + detector + sinks; load and receiver run apart): {cpu:.2f} CPU")
    print(f"server throughput: {tok_unwatched:.1f} tok/s unwatched, {tok_watched:.1f} tok/s watched "
          f"(includes fault windows)")
    (args.out / "result.json").write_text(json.dumps({"sinks": res, "received": rx_ms, "lag_ms": lag,
                                                      "summary": summary, "cpu": cpu,
                                                      "tok_s": [tok_unwatched, tok_watched]}, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
