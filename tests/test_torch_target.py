"""A real PyTorch target: prismkit/target/torch_server.py (transformers LlamaForCausalLM, random
weights written locally, CPU, continuous batching) recorded by `prism record` with exact step
boundaries (sys.monitoring, --py-step) and the batch size from the step's arguments.

Needs the environment `make torch-env` builds (make test builds it; in CI its absence fails).
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from prismkit.paths import cache_dir
from prismkit.trace import load_trace

from conftest import REPO, require

pytestmark = [pytest.mark.bpf]
PORT = 18312
SERVER = REPO / "prismkit" / "target" / "torch_server.py"


def post(max_tokens: int, prompt: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}/v1/completions",
                                 data=json.dumps({"prompt": prompt, "max_tokens": max_tokens}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def health() -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def torch_server():
    python = cache_dir() / "torch-py312" / "bin" / "python"
    require(python.exists(), f"{python} is missing: run `make torch-env`")
    proc = subprocess.Popen([str(python), str(SERVER), "--port", str(PORT)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        ready = json.loads(proc.stdout.readline() or "{}")
        assert ready.get("ready") == proc.pid, "torch_server did not start"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_torch_server_recorded_with_exact_steps(bpf_ok, torch_server, tmp_path):
    require(subprocess.run(["which", "gdb"], capture_output=True).returncode == 0, "gdb is needed")
    out = tmp_path / "torch.pftrace"
    rec = subprocess.Popen(
        [sys.executable, "-m", "prismkit.cli", "record", "--pid", str(torch_server.pid), "--duration", "60",
         "-o", str(out), "--py-step", "Engine.step", "--py-step-arg", "n_seqs=len(batch)",
         "--py-step-arg", "n_tokens=n_tokens", "--py-step-arg", "n_prefill_tokens=n_prefill_tokens",
         "--py-step-arg", "n_decode_tokens=n_decode_tokens", "--py-function", "LlamaForCausalLM.forward"],
        cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    for line in rec.stderr:
        lines.append(line)
        if "recording PID" in line:
            break
    else:
        pytest.fail("prism record did not start: " + "".join(lines[-5:]))
    threading.Thread(target=lambda: [None for _ in rec.stderr], daemon=True).start()
    steps_before = health()["steps"]
    plan = [(12, "hello world"), (7, "a"), (9, "the quick brown fox"), (5, "xyz")]
    results = [None] * len(plan)

    def client(i):
        results[i] = post(*plan[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(plan))]
    for i, t in enumerate(threads):
        t.start()
        time.sleep(0.05 * i)
    for t in threads:
        t.join(120)
    steps = health()["steps"] - steps_before
    time.sleep(0.5)
    rec.send_signal(2)  # Ctrl-C: the recording ends, monitoring is switched off
    assert rec.wait(timeout=60) == 0
    assert [r["usage"]["completion_tokens"] for r in results] == [n for n, _ in plan]
    trace = load_trace(out)
    b = trace.batches.sort_values("ts")
    assert len(b) == steps, "one batch per engine step"
    assert (b["name"] == "Engine.step").all()
    assert b["n_seqs"].sum() == sum(n for n, _ in plan), "every generated token in exactly one step"
    assert b["n_seqs"].max() >= 2, "continuous batching: steps with several sequences"
    assert (b["n_tokens"] == b["n_prefill_tokens"] + b["n_decode_tokens"]).all()
    assert set(b["phase"]) <= {"prefill", "decode", "mixed"} and "decode" in set(b["phase"])
    assert (b["dur"] > 0).all() and (b["ts"].diff().dropna() > 0).all()
    ends = b["ts"] + b["dur"]
    assert (ends.to_numpy()[:-1] <= b["ts"].to_numpy()[1:]).all(), "steps never overlap"
    s = trace.slices
    fw = s[s["name"] == "LlamaForCausalLM.forward"].sort_values("ts")
    assert len(fw) == len(b), "one forward per step"
    assert ((fw["ts"].to_numpy() > b["ts"].to_numpy())
            & (fw["ts"].to_numpy() + fw["dur"].to_numpy() < ends.to_numpy())).all(), "the forward inside its step"
    assert len(trace.requests) == len(plan) + 2  # and the two /health calls
    stats = s[s["name"] == "prismkit.stats"].iloc[0]["args"]
    assert stats["events.pymonitor_removed"] == 1 and stats["lost_events"] == 0
    assert post(3, "still serving")["usage"]["completion_tokens"] == 3
