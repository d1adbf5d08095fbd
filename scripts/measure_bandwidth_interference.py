"""Does a memory-bandwidth hog on *another* CPU slow the server's compute? A controlled A/B, no recorder.

A llama-server (1 compute thread, all its threads pinned to CPU --server-cpu) decodes fixed-length
completions (one request at a time) while the other CPU (--other-cpu) is, in turn: idle; running a busy
loop (takes no memory bandwidth, but displaces other processes onto the server's CPU); running a
STREAM-copy worker (numpy copies of two --mb MiB buffers, what `prism inject memory_bandwidth
-p cpus=others` runs). Per request: decode tokens/s (the server's own timings), the server's on-CPU ns
per token and its run-queue wait per token (sum over its threads of /proc/PID/task/*/schedstat).
Conditions alternate in rounds so that slow drifts of the machine hit all of them alike.

    .venv/bin/python scripts/measure_bandwidth_interference.py [--model demo] [--rounds 8] [--mb 512]

A bandwidth effect shows as on-CPU per token up under 'stream' and not under 'spin' (the busy loop
displaces other work exactly as the streamer does, so what differs is the memory traffic).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import statistics as st
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from prismkit.target.build import ensure_llama_server  # noqa: E402
from prismkit.target.model import ensure_model  # noqa: E402


def schedstat(pid: int) -> tuple[int, int]:
    on = wait = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            a, b, _ = open(f).read().split()
        except (OSError, ValueError):
            continue
        on, wait = on + int(a), wait + int(b)
    return on, wait


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo", help="tiny, demo or a GGUF path")
    ap.add_argument("--port", type=int, default=8600)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--other-cpu", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6, help="requests per condition per round")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--mb", type=int, default=512, help="streamer buffer size (MiB, x2)")
    ap.add_argument("--json", default=None, help="write every request's figures here")
    a = ap.parse_args()
    model = ensure_model(a.model) if a.model in ("tiny", "demo") else a.model
    log = open(f"/tmp/measure_bandwidth_{a.port}.log", "w")
    srv = subprocess.Popen([str(ensure_llama_server()), "-m", str(model), "--port", str(a.port), "-t", "1",
                            "-np", "1", "-c", "2048", "--no-webui"], stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True, preexec_fn=lambda: os.sched_setaffinity(0, [a.server_cpu]))
    pin = f"import os; os.sched_setaffinity(0, [{a.other_cpu}])\n"
    helpers = {"idle": None,
               "spin": [sys.executable, "-c", pin + "while True: pass"],
               "stream": [sys.executable, "-c", pin + f"import numpy as np; s = np.ones({a.mb} << 17); "
                          "d = np.empty_like(s)\nwhile True: np.copyto(d, s); np.copyto(s, d)"]}

    def post(body: dict) -> dict:
        r = urllib.request.Request(f"http://127.0.0.1:{a.port}/completion", json.dumps(body).encode(),
                                   {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(r, timeout=120).read())

    res: dict[str, list[dict]] = {c: [] for c in helpers}
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{a.port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        post({"prompt": "warm up", "n_predict": 8})
        for r in range(a.rounds):
            for cond, cmd in helpers.items():
                h = subprocess.Popen(cmd) if cmd else None
                time.sleep(1.5)   # the streamer's buffers are touched before the first request
                try:
                    for k in range(a.requests):
                        (c0, w0) = schedstat(srv.pid)
                        out = post({"prompt": f"round {r} request {k} tell me a story", "n_predict": a.tokens,
                                    "ignore_eos": True, "cache_prompt": False})
                        (c1, w1) = schedstat(srv.pid)
                        tm = out["timings"]
                        n = tm["predicted_n"] + tm["prompt_n"]
                        res[cond].append(dict(round=r, tps=tm["predicted_per_second"], oncpu_ms_tok=(c1 - c0) / n / 1e6,
                                              runq_ms_tok=(w1 - w0) / n / 1e6))
                finally:
                    if h:
                        h.kill()
                        h.wait()
    finally:
        os.killpg(srv.pid, signal.SIGTERM)
        srv.wait()
    idle = st.median(x["oncpu_ms_tok"] for x in res["idle"])
    print(f"model {os.path.basename(str(model))}, {a.tokens} tokens/request, streamer 2x{a.mb} MiB, "
          f"{a.rounds} rounds x {a.requests} requests")
    print(f"{'cond':7s} {'tok/s':>7s} {'on-CPU ms/tok':>14s} {'vs idle':>8s} {'p90':>6s} {'runq ms/tok':>12s}  per-round on-CPU means")
    for cond, rows in res.items():
        v = [x["oncpu_ms_tok"] for x in rows]
        med = st.median(v)
        per_round = [st.mean(x["oncpu_ms_tok"] for x in rows if x["round"] == r) for r in range(a.rounds)]
        print(f"{cond:7s} {st.median(x['tps'] for x in rows):7.1f} {med:14.3f} {100 * (med / idle - 1):+7.1f}% "
              f"{sorted(v)[int(0.9 * (len(v) - 1))]:6.2f} {st.median(x['runq_ms_tok'] for x in rows):12.2f}  "
              + " ".join(f"{x:.2f}" for x in per_round))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
