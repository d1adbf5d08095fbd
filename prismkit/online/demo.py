"""The online part of `prism demo`: watch the live server, inject one fault, print the alert and its cause."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_online_demo(pid: int, url: str, trace_path: Path, out_dir: Path, say=print, fault_s: float = 3.0) -> dict:
    from prismkit.detect.model import WorkloadModel
    from prismkit.trace import load_trace

    from .alerts import JsonlSink, TerminalSink
    from .watch import WatchConfig, Watcher

    model_path = out_dir / "baseline.model.json"
    say(f"online: fitting the baseline workload model on the recording ({trace_path})")
    WorkloadModel(n_estimators=150).fit(load_trace(trace_path).batches).save(model_path)
    alerts = out_dir / "alerts.jsonl"
    alerts.write_text("")
    cfg = WatchConfig(pid=pid, output=out_dir / "watch.pftrace", model=model_path, alerts_jsonl=alerts,
                      nice=-10, verbose=False, rca=True)
    w = Watcher(cfg, sinks=[TerminalSink(lambda s: print(s, flush=True)), JsonlSink(alerts)])
    load = subprocess.Popen([sys.executable, "-m", "prismkit.cli", "load", "--url", url, "-c", "2", "--duration", "30",
                             "--prompt", "uniform:16:96", "--output", "uniform:8:48", "--quiet", "-o",
                             str(out_dir / "watch.load.csv")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        w.start()
        say(f"online: `prism watch` on PID {pid} with the baseline; steady load, then a fault")
        time.sleep(5)
        say(f"online: injecting a stall (SIGSTOP 100 ms every 300 ms) for {fault_s:g}s")
        subprocess.run([sys.executable, "-m", "prismkit.cli", "inject", "stall", "--pid", str(pid), "--duration",
                        str(fault_s), "-p", "pause_ms=100", "-p", "period_ms=300", "--labels",
                        str(out_dir / "watch.labels.jsonl"), "--quiet"], check=False)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 8 and (w.alerts.active is not None or not w.alerts.episodes):
            w.poll()
            time.sleep(0.2)
        t0 = time.monotonic()   # root cause analysis runs off the alert path: give it a few seconds
        while time.monotonic() - t0 < 12 and w.alerts.episodes and not any(
                c.get("source") == "prismkit.rootcause" for e in w.alerts.episodes for c in e.get("causes") or []):
            w.poll()
            time.sleep(0.2)
    finally:
        load.terminate()
        load.wait()
        summary = w.stop("requested")
    eps = summary["episodes"]
    say(f"online: watched {summary['batches']} batches, {summary['requests']} requests; "
        f"{len(eps)} alert episode(s)")
    try:  # the episode that overlaps the injected fault (others are the shared machine's noise)
        lab = json.loads((out_dir / "watch.labels.jsonl").read_text().splitlines()[-1])
        hit = [e for e in eps if e["start_ns"] <= lab["end_ns"] and e["end_ns"] >= lab["start_ns"]]
    except (OSError, IndexError, ValueError):
        hit = []
    eps = hit or eps
    if eps:
        e = eps[0]
        first = next(d for d in map(json.loads, alerts.read_text().splitlines())
                     if d["event"] == "opened" and d["alert_id"] == e["alert_id"])
        say(f"online: alert {e['alert_id']}: batches {e['observed_ms']:.1f} ms vs expected {e['expected_ms']:.1f} ms "
            f"(x{e['slowdown']:.1f}) for {e['duration_ms']:.0f} ms; alert written "
            f"{(first['alert_path_ms'] or {}).get('to_alert', 0) + (first['alert_path_ms'] or {}).get('to_observer', 0):.2f}"
            f" ms after the slow batch ended")
        for c in (e.get("causes") or [])[:3]:
            say(f"online:   cause {c['cause']}: {c.get('evidence', '')}")
    else:
        say("online: no alert was raised (the fault did not slow the batches beyond the control limits)")
    lat = summary["alert_latency_ms"]
    for name, v in lat.items():
        say(f"online: alert path to {name}: p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms")
    say(f"online: alerts in {alerts}, watch trace in {summary['traces'][0]}")
    return summary
