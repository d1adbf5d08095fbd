"""The recorder against the real llama.cpp server, with real eBPF probes."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prismkit.load import closed_loop, parse_length_dist, run_load
from prismkit.target.server import LlamaServer, http_get
from prismkit.trace import load_trace
from recorders.engine import Recorder
from recorders.packs.base import ProbePack

from conftest import REPO, free_port, require

PRISM = str(REPO / ".venv" / "bin" / "prism")
pytestmark = [pytest.mark.server, pytest.mark.bpf]


def server_counters(url: str) -> dict[str, float]:
    _, body = http_get(f"{url}/metrics")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for sample in fam.samples:
            out[sample.name.split(":")[-1]] = sample.value
    return out


def small_load(url: str, n: int = 24, prompt: str = "uniform:8:200", output: str = "uniform:4:40", seed: int = 1):
    specs = closed_loop(n, parse_length_dist(prompt), parse_length_dist(output), seed=seed)
    return run_load(url, specs, concurrency=4, progress=False).frame()


def test_every_decode_is_a_batch_with_exact_token_counts(server, bpf_ok, tmp_path):
    out = tmp_path / "t.pftrace"
    rec = Recorder(server.pid, out, verbose=False).start_background()
    before = server_counters(server.url)
    client = small_load(server.url)
    after = server_counters(server.url)
    summary = rec.join()
    assert summary.stop_reason == "requested"
    assert (client["status"] == "ok").all()

    trace = load_trace(out)
    b = trace.batches
    n_decode = after["n_decode_total"] - before["n_decode_total"]
    assert n_decode > 0
    assert len(b) == n_decode, "every llama_decode call is one batch"
    # Prompt tokens: server's counter, load generator's, and the recorder's prefill tokens agree.
    server_prompt = after["prompt_tokens_total"] - before["prompt_tokens_total"]
    assert b["n_prefill_tokens"].sum() == server_prompt == client["prompt_tokens"].sum()
    # Generated tokens: one per sampled output.
    server_gen = after["tokens_predicted_total"] - before["tokens_predicted_total"]
    assert b["n_outputs"].sum() == server_gen == client["output_tokens"].sum()
    # Each request decodes (output - 1) tokens after its prefill produced the first.
    assert b["n_decode_tokens"].sum() == (client["output_tokens"] - 1).sum()
    assert (b["n_tokens"] == b["n_prefill_tokens"] + b["n_decode_tokens"]).all()
    assert b["n_seqs"].between(1, 4).all()
    assert set(b["phase"]) <= {"prefill", "decode", "mixed"}
    assert (b["kv_tokens"] >= b["n_tokens"]).all()
    assert (b["dur"] > 0).all()
    # Inner stages nest inside batches.
    stages = trace.slices[trace.slices["category"] == "stage"]
    gc = stages[stages["name"] == "graph_compute"]
    assert len(gc) >= len(b)
    assert (gc["depth"] == 1).all()
    # Stage calls under --min-stage-us (default 10) are counted and timed in the kernel, not
    # written: detokenizing a token takes 1-2 us. Every generated token is detokenized and
    # every output sampled (each, on a fast host, may be under 10 us).
    md = trace.metadata
    detok = md.get("events.stage.detokenize", 0) + md.get("events.stage.detokenize.short", 0)
    assert detok >= server_gen
    assert md.get("events.stage.sample", 0) + md.get("events.stage.sample.short", 0) >= server_gen
    assert (stages.loc[stages["name"].isin(["detokenize", "synchronize", "sample"]), "dur"] >= 10_000).all()
    short = trace.slices[trace.slices["name"] == "llama_cpp.short_stages"]
    assert len(short) == 1
    sargs = short["args"].iloc[0]
    assert sargs["detokenize.calls"] == md.get("events.stage.detokenize.short", 0) > 0
    assert 0 < sargs["detokenize.total_ns"] < sargs["detokenize.calls"] * 10_000
    # Their time reaches the batches: each decode carries its thread's short calls since the
    # previous decode (and inside it). All but those after the last decode are carried.
    for name in ("detokenize", "synchronize", "sample"):
        total = sargs.get(f"{name}.total_ns", 0)
        carried = sum(b[c].fillna(0).sum() for c in (f"gap_short_ns.{name}", f"short_ns.{name}") if c in b)
        assert carried <= total, name
        if name == "detokenize":
            assert carried >= 0.8 * total
    assert "gap_short_end" in b
    seq = b.sort_values(["tid", "ts"])
    prev_end = (seq["ts"] + seq["dur"]).groupby(seq["tid"]).shift(1)
    has = seq["gap_short_end"].notna() & prev_end.notna()
    assert has.sum() > 0
    # the gap's calls ended after the thread's previous decode returned and before this one
    assert (seq.loc[has, "gap_short_end"] > prev_end[has]).all()
    assert (seq.loc[has, "gap_short_end"] <= seq.loc[has, "ts"]).all()
    assert trace.metadata["lost_events"] == 0


def _record_cli(pid: int, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([PRISM, "record", "--pid", str(pid), "-o", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_attach(proc: subprocess.Popen, out: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.stat().st_size > 0:
            time.sleep(0.3)
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    raise AssertionError("recorder did not start writing")


@pytest.mark.parametrize("sig,reason", [(signal.SIGINT, "sigint"), (signal.SIGTERM, "sigterm")])
def test_signal_leaves_valid_trace(server, bpf_ok, tmp_path, sig, reason):
    out = tmp_path / "sig.pftrace"
    proc = _record_cli(server.pid, out)
    _wait_for_attach(proc, out)
    small_load(server.url, n=8)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    trace = load_trace(out)
    assert trace.metadata["stop_reason"] == reason
    assert len(trace.batches) > 0
    assert trace.metadata["lost_events"] == 0


def _decode_entry_bytes(pid: int) -> tuple[bytes, bytes]:
    """The first 16 bytes of llama_decode as the target's memory holds them, and as its library
    file does: they differ only while a uprobe's breakpoint is in place."""
    from recorders.elf import find_symbol
    from recorders.packs.python.interp import _load_bias, read_memory
    from recorders.target import TargetProcess

    path = TargetProcess.from_pid(pid).library("libllama")
    sym = find_symbol(path, "llama_decode")
    live = read_memory(pid, _load_bias(pid, path) + sym.vaddr, 16)
    with open(path, "rb") as f:
        f.seek(sym.file_offset)
        return live, f.read(16)


def _wait_for_bytes(out: Path, marker: bytes, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while marker not in out.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, f"no {marker!r} in the trace"
        time.sleep(0.1)


def test_pause_detaches_every_probe_and_resume_attaches_them_again(server, bpf_ok, tmp_path):
    """SIGUSR1 detaches the probes: no breakpoint stays in the engine, and nothing the server
    does meanwhile is recorded. SIGUSR2 attaches them again. The trace marks the gap, and no
    scheduler interval spans it."""
    out = tmp_path / "paused.pftrace"
    proc = _record_cli(server.pid, out)
    _wait_for_attach(proc, out)
    live, on_disk = _decode_entry_bytes(server.pid)
    assert live != on_disk, "attached: llama_decode holds the uprobe's breakpoint"
    c0 = server_counters(server.url)
    small_load(server.url, n=8, seed=1)
    c1 = server_counters(server.url)
    proc.send_signal(signal.SIGUSR1)
    _wait_for_bytes(out, b"prismkit.paused", proc)
    live, on_disk = _decode_entry_bytes(server.pid)
    assert live == on_disk, "paused: the engine's code is as in its file"
    small_load(server.url, n=8, seed=2)
    c2 = server_counters(server.url)
    proc.send_signal(signal.SIGUSR2)
    _wait_for_bytes(out, b"prismkit.resumed", proc)
    assert _decode_entry_bytes(server.pid)[0] != on_disk
    small_load(server.url, n=8, seed=3)
    c3 = server_counters(server.url)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "paused:" in err and "resumed:" in err and "NOT re-attached" not in err

    trace = load_trace(out)
    md = trace.metadata
    assert md["pauses"] == 1 and md["lost_events"] == 0
    s = trace.slices
    t_pause = int(s.loc[s["name"] == "prismkit.paused", "ts"].iloc[0])
    t_resume = int(s.loc[s["name"] == "prismkit.resumed", "ts"].iloc[0])
    assert md["paused_ns"] == t_resume - t_pause > 0
    b = trace.batches
    decodes = lambda a, z: z["n_decode_total"] - a["n_decode_total"]  # noqa: E731
    assert decodes(c1, c2) > 0
    assert not b["ts"].between(t_pause, t_resume).any(), "nothing recorded while paused"
    assert (b["ts"] < t_pause).sum() == decodes(c0, c1)
    assert (b["ts"] > t_resume).sum() == decodes(c2, c3), "every decode after the resume is a batch"
    sched = trace.sched
    assert len(sched) > 0
    assert not ((sched["ts"] < t_pause) & (sched["ts"] + sched["dur"] > t_resume)).any()
    req = trace.requests
    # the 16 completions and the 3 reads of /metrics made while attached (not the one made while paused)
    assert len(req) == 16 + 3 and not req["ts_arrival"].between(t_pause, t_resume).any()


def test_target_exit_leaves_valid_trace(bpf_ok, tmp_path):
    from prismkit.target.build import server_binary

    require(server_binary().exists(), "llama-server is not built")
    srv = LlamaServer(model="tiny", port=free_port(), name=f"exit-{os.getpid()}")
    info = srv.start()
    out = tmp_path / "exit.pftrace"
    rec = Recorder(info.pid, out, verbose=False).start_background()
    small_load(info.url, n=8)
    srv.stop()
    rec._thread.join(timeout=30)
    assert rec.summary is not None and rec.summary.stop_reason == "target_exit"
    trace = load_trace(out)
    assert trace.metadata["stop_reason"] == "target_exit"
    assert len(trace.batches) > 0


class _SlowConsumer(ProbePack):
    """Not a probe: a live observer that takes 50 ms per batch, so the consumer falls behind."""

    name = "slow_consumer"

    def start(self, bpf, ctx) -> None:
        ctx.live_observers.append(lambda batch: time.sleep(0.05))


def test_full_buffer_counts_lost_events(server, bpf_ok, tmp_path):
    from recorders.packs import default_packs

    out = tmp_path / "lost.pftrace"
    # One page of ring buffer and a consumer that falls behind: the load overflows it.
    rec = Recorder(server.pid, out, ringbuf_pages=1, packs=default_packs() + [_SlowConsumer()],
                   verbose=False).start_background()
    before = server_counters(server.url)
    small_load(server.url, n=40, prompt="fixed:16", output="fixed:32")
    after = server_counters(server.url)
    summary = rec.join()
    n_decode = after["n_decode_total"] - before["n_decode_total"]
    trace = load_trace(out)
    assert trace.metadata["lost_events"] == sum(summary.lost.values())
    lost = trace.metadata["lost_events.llama_events"]
    assert lost > 0
    assert lost == summary.lost["llama_events"]
    assert len(trace.batches) < n_decode
    # What was lost is accounted for: recorded batches plus lost events cover every decode.
    assert len(trace.batches) + lost >= n_decode


def _cli_error(*args: str, **kw) -> str:
    proc = subprocess.run([PRISM, *args], capture_output=True, text=True, timeout=60, **kw)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_error_no_such_pid(tmp_path):
    assert "no such process" in _cli_error("record", "--pid", "999999", "-o", str(tmp_path / "x.pftrace"))


def test_error_pid_without_engine(bpf_ok, tmp_path):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        msg = _cli_error("record", "--pid", str(proc.pid), "-o", str(tmp_path / "x.pftrace"))
        assert "no known engine library" in msg and "libllama" in msg
    finally:
        proc.kill()


def test_error_not_root(tmp_path):
    require(os.geteuid() == 0, "needs root to drop to another user")
    require(Path("/usr/bin/setpriv").exists(), "setpriv (util-linux) is missing")
    # The venv's interpreter lives under /root, out of an unprivileged user's reach:
    # run the same CLI module with Debian's python3 (the root check comes first).
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/usr/bin/python3", "-m", "prismkit.cli", "record", "--pid", "1", "-o", "/tmp/x.pftrace"],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO),
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "needs root" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_error_symbol_missing_in_build(bpf_ok, tmp_path):
    """A process that maps a libllama without llama_decode: one clear line, no trace of a crash."""
    (tmp_path / "lib.c").write_text("int llama_backend_init_fake(void) { return 42; }\n")
    (tmp_path / "main.c").write_text(
        "#include <unistd.h>\nint llama_backend_init_fake(void);\n"
        "int main(void) { if (llama_backend_init_fake() != 42) return 1; sleep(60); return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libllama.so"), str(tmp_path / "lib.c")], check=True)
    subprocess.run(["gcc", "-o", str(tmp_path / "fake-server"), str(tmp_path / "main.c"), f"-L{tmp_path}", "-lllama",
                    f"-Wl,-rpath,{tmp_path}"], check=True)
    proc = subprocess.Popen([str(tmp_path / "fake-server")])
    try:
        time.sleep(0.3)
        msg = _cli_error("record", "--pid", str(proc.pid), "-o", str(tmp_path / "x.pftrace"))
        assert "llama_decode" in msg and "not found" in msg
    finally:
        proc.kill()
