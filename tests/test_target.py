"""The observed target: the real llama-server on the tiny random model, its control, its errors, set-up.

Everything here runs the real binary (no mocks): the server's own usage counts
are the judge of the prompt and output lengths the load generator asks for.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, free_port, require
from prismkit.errors import PrismError
from prismkit.load import closed_loop, parse_length_dist, run_load
from prismkit.load.client import completion_body, make_prompt
from prismkit.load.workload import RequestSpec
from prismkit.paths import state_dir
from prismkit.target.build import server_binary
from prismkit.target.model import SPECS, ensure_model
from prismkit.target.server import LlamaServer, attach_existing, health, pid_listening_on, port_in_use

PRISM = REPO / ".venv" / "bin" / "prism"


_names: list[str] = []


def unique_name(tag: str) -> str:
    """A server name of this test alone (its log and state file are removed afterwards)."""
    name = f"pytest-{tag}-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    _names.append(name)
    return name


@pytest.fixture(autouse=True)
def _remove_server_logs():
    yield
    while _names:
        name = _names.pop()
        for suffix in (".log", ".json"):
            (state_dir() / f"server-{name}{suffix}").unlink(missing_ok=True)


def gone(pid: int) -> bool:
    """The process has exited (a zombie that an orphan's new parent has not reaped yet counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def need_binary() -> None:
    require(server_binary().exists(), "llama-server is not built (run `make target`)")


def prism(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(PRISM), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {proc.stderr!r}"
    assert lines[0].startswith("prism target: error: "), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def post_json(url: str, body: dict, timeout: float = 60.0) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.status == 200
        return resp.read()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def sse_events(raw: bytes) -> list[dict | str]:
    out: list[dict | str] = []
    for line in raw.decode().splitlines():
        if line.startswith("data:"):
            payload = line[5:].strip()
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


@pytest.fixture
def bad_gguf_files(tmp_path) -> dict[str, Path]:
    text = tmp_path / "model.gguf"
    text.write_text("this is not a model\n")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    zipfile = tmp_path / "weights.bin"
    zipfile.write_bytes(b"PK\x03\x04" + bytes(100))
    return {"text": text, "empty": empty, "zip": zipfile}


# --------------------------------------------------------------------------------------------
# The bundled model


def test_tiny_model_is_a_gguf():
    path = ensure_model("tiny")
    assert path.is_file() and path.read_bytes()[:4] == b"GGUF"
    assert path.stat().st_size > SPECS["tiny"].n_params() * 2 * 0.9  # f16 weights are really there
    with pytest.raises(PrismError, match="unknown bundled model"):
        ensure_model("huge")


# --------------------------------------------------------------------------------------------
# Clear errors from LlamaServer.start (library)


def test_missing_gguf(tmp_path):
    for model in (tmp_path / "missing.gguf", tmp_path, "no-such-model"):
        srv = LlamaServer(model=model, port=free_port(), name=unique_name("missing"))
        with pytest.raises(PrismError, match="GGUF model not found") as exc:
            srv.start(timeout=5)
        assert str(Path(model).name) in str(exc.value)
        assert not srv.state_file.exists()


@pytest.mark.parametrize("kind", ["text", "empty", "zip"])
def test_not_a_gguf(bad_gguf_files, kind):
    path = bad_gguf_files[kind]
    srv = LlamaServer(model=path, port=free_port(), name=unique_name("notgguf"))
    with pytest.raises(PrismError, match="not a GGUF file") as exc:
        srv.start(timeout=5)
    assert str(path) in str(exc.value)
    assert srv._proc is None  # rejected before anything was started


def test_port_already_in_use():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        srv = LlamaServer(model="tiny", port=port, name=unique_name("port"))
        with pytest.raises(PrismError, match=f"port {port} .*already in use"):
            srv.start(timeout=5)
        assert srv._proc is None
    assert not port_in_use("127.0.0.1", port)


def test_server_that_exits_at_once():
    need_binary()
    srv = LlamaServer(model="tiny", port=free_port(), name=unique_name("exits"),
                      extra_args=["--no-such-llama-option"])
    t0 = time.monotonic()
    with pytest.raises(PrismError, match="exited with code") as exc:
        srv.start(timeout=60)
    assert time.monotonic() - t0 < 10  # noticed at once, not after the timeout
    assert "--no-such-llama-option" in str(exc.value)  # the log's last lines say why
    assert "\n" not in str(exc.value)
    assert not srv.state_file.exists()


def test_corrupt_gguf_server_exits(tmp_path):
    """A file with the GGUF magic that llama.cpp cannot load: the server dies, we say so."""
    need_binary()
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(ensure_model("tiny").read_bytes()[:4096])
    srv = LlamaServer(model=bad, port=free_port(), name=unique_name("corrupt"))
    with pytest.raises(PrismError, match="exited with code"):
        srv.start(timeout=60)
    assert not srv.state_file.exists()


def test_server_that_does_not_come_up_in_time():
    need_binary()
    port = free_port()
    srv = LlamaServer(model="tiny", port=port, name=unique_name("timeout"))
    with pytest.raises(PrismError, match="did not become healthy within") as exc:
        srv.start(timeout=0.05)
    assert srv.name in str(exc.value)  # the message points at the log
    assert srv._proc is not None and srv._proc.poll() is not None  # and the server was not left behind
    assert not srv.state_file.exists()
    assert not health(f"http://127.0.0.1:{port}")


def test_start_and_stop(tmp_path):
    """The library life cycle: healthy after start, state file written, nothing left after stop."""
    need_binary()
    port = free_port()
    srv = LlamaServer(model="tiny", port=port, n_parallel=2, ctx_size=1024, threads=1, name=unique_name("life"))
    with srv as info:
        assert info.port == port and info.url == f"http://127.0.0.1:{port}"
        assert health(info.url)
        assert pid_listening_on(port) == info.pid
        state = json.loads(srv.state_file.read_text())
        assert state["pid"] == info.pid and state["port"] == port and state["n_parallel"] == 2
        assert get_json(f"{info.url}/props")["total_slots"] == 2
        assert LlamaServer(name=srv.name).load_state().pid == info.pid  # found again by name
    assert gone(info.pid)
    assert not srv.state_file.exists()
    assert not port_in_use("127.0.0.1", port)


# --------------------------------------------------------------------------------------------
# The same errors through `prism target start`: one line, non-zero exit, no traceback


def test_cli_missing_gguf(tmp_path):
    proc = prism("target", "start", "--name", unique_name("cli"), "--port", str(free_port()),
                 "--model", str(tmp_path / "nope.gguf"))
    assert_one_line_error(proc, "GGUF model not found", "nope.gguf")
    assert proc.returncode == 2


def test_cli_not_a_gguf(bad_gguf_files):
    proc = prism("target", "start", "--name", unique_name("cli"), "--port", str(free_port()),
                 "--model", str(bad_gguf_files["text"]))
    assert_one_line_error(proc, "not a GGUF file", str(bad_gguf_files["text"]))


def test_cli_port_in_use():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        proc = prism("target", "start", "--name", unique_name("cli"), "--port", str(port))
    assert_one_line_error(proc, f"port {port}", "already in use")


def test_cli_server_exits():
    need_binary()
    proc = prism("target", "start", "--name", unique_name("cli"), "--port", str(free_port()),
                 "--", "--no-such-llama-option")
    assert_one_line_error(proc, "exited with code", "--no-such-llama-option")


def test_cli_server_timeout():
    need_binary()
    name = unique_name("cli")
    proc = prism("target", "start", "--name", name, "--port", str(free_port()), "--timeout", "0.05")
    assert_one_line_error(proc, "did not become healthy")
    status = prism("target", "status", "--name", name)
    assert status.returncode == 1 and "not running" in status.stdout


def test_cli_start_status_stop():
    need_binary()
    name, port = unique_name("clilife"), free_port()
    try:
        proc = prism("target", "start", "--name", name, "--port", str(port), "-np", "2", "--threads", "1")
        assert proc.returncode == 0, proc.stderr
        assert f"healthy at http://127.0.0.1:{port}" in proc.stdout
        info = LlamaServer(name=name).load_state()
        assert info is not None and info.port == port
        # The server outlives the command that started it.
        assert health(info.url) and pid_listening_on(port) == info.pid
        assert Path(f"/proc/{info.pid}/exe").resolve() == server_binary().resolve()
        status = prism("target", "status", "--name", name)
        assert status.returncode == 0 and f"pid {info.pid}" in status.stdout and "healthy" in status.stdout
        again = prism("target", "start", "--name", name, "--port", str(free_port()))
        assert_one_line_error(again, "already running", str(info.pid))
        stop = prism("target", "stop", "--name", name)
        assert stop.returncode == 0 and f"stopped llama-server pid {info.pid}" in stop.stdout
        assert gone(info.pid)
        assert not port_in_use("127.0.0.1", port)
        status = prism("target", "status", "--name", name)
        assert status.returncode == 1 and "not running" in status.stdout
        stop = prism("target", "stop", "--name", name)  # stopping twice is harmless
        assert stop.returncode == 0 and "not running" in stop.stdout
    finally:
        LlamaServer(name=name).stop()


def test_cli_start_on_given_cpus():
    """--cpus pins every thread of the server (like taskset -c); one compute thread per CPU by default."""
    need_binary()
    cpu = sorted(os.sched_getaffinity(0))[-1]
    name, port = unique_name("clicpus"), free_port()
    try:
        proc = prism("target", "start", "--name", name, "--port", str(port), "-np", "1", "--cpus", str(cpu))
        assert proc.returncode == 0, proc.stderr
        info = LlamaServer(name=name).load_state()
        tids = os.listdir(f"/proc/{info.pid}/task")
        assert tids and all(os.sched_getaffinity(int(t)) == {cpu} for t in tids)
        assert info.cmdline[info.cmdline.index("-t") + 1] == "1"
    finally:
        LlamaServer(name=name).stop()
    bad = prism("target", "start", "--name", unique_name("clicpus"), "--port", str(free_port()), "--cpus", "0-x")
    assert_one_line_error(bad, "bad CPU list")
    bad = prism("target", "start", "--name", unique_name("clicpus"), "--port", str(free_port()), "--cpus", "4096")
    assert_one_line_error(bad, "not available")


# --------------------------------------------------------------------------------------------
# The running server (session fixture)


@pytest.mark.server
def test_server_process(server):
    assert health(server.url)
    assert pid_listening_on(server.port) == server.pid
    assert attach_existing(server.url).pid == server.pid
    props = get_json(f"{server.url}/props")
    assert props["total_slots"] == 4
    assert Path(props["model_path"]) == ensure_model("tiny")
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
        assert b"llamacpp:prompt_tokens_total" in resp.read()
    # Engine libraries are separate shared objects (where the uprobes attach).
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    for lib in ("libllama.so", "libggml-base.so", "libggml-cpu.so"):
        assert f"/{lib}" in maps, lib
    with pytest.raises(PrismError, match="no healthy llama-server"):
        attach_existing(f"http://127.0.0.1:{free_port()}")


@pytest.mark.server
def test_prompts_tokenize_to_exact_lengths(server):
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 100, 1000):
        prompt = make_prompt(n, rng)
        tokens = json.loads(post_json(f"{server.url}/tokenize", {"content": prompt, "add_special": True}))["tokens"]
        assert len(tokens) == n
        assert tokens[0] == 1  # BOS


@pytest.mark.server
@pytest.mark.parametrize("prompt_tokens,output_tokens", [(2, 1), (9, 2), (64, 17), (700, 150)])
def test_streamed_completion_usage(server, prompt_tokens, output_tokens):
    """The stream itself (read without our client) reports exactly the asked-for lengths."""
    prompt = make_prompt(prompt_tokens, np.random.default_rng(prompt_tokens))
    raw = post_json(f"{server.url}/v1/completions",
                    json.loads(completion_body(prompt, output_tokens, cache_prompt=False)))
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    usage = [e["usage"] for e in events[:-1] if e.get("usage")]
    assert len(usage) == 1
    assert usage[0]["prompt_tokens"] == prompt_tokens
    assert usage[0]["completion_tokens"] == output_tokens
    finish = [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c.get("finish_reason")]
    assert finish == ["length"]  # ran to max_tokens: EOS was never sampled
    assert events[-2]["timings"]["predicted_n"] == output_tokens


@pytest.mark.server
def test_run_load_exact_lengths(server, tmp_path):
    """run_load gets exactly the requested prompt and output lengths from the server, at once."""
    lengths = [(2, 1), (3, 2), (17, 5), (128, 64), (40, 200), (600, 33), (5, 300), (1000, 8)]
    specs = [RequestSpec(None, p, o) for p, o in lengths]
    rng = np.random.default_rng(5)
    out_dist = parse_length_dist("uniform:1:120")
    prompt_dist = parse_length_dist("lognormal:60:1.0", lo=2, hi=1500)
    specs += [RequestSpec(None, prompt_dist(rng), out_dist(rng)) for _ in range(12)]
    out = tmp_path / "lengths.csv"
    res = run_load(server.url, specs, concurrency=4, out_csv=out, progress=False)
    df = res.frame()
    assert len(df) == len(specs) and (df["status"] == "ok").all(), df[["status", "error"]]
    assert list(df["prompt_tokens"]) == [s.prompt_tokens for s in specs]
    assert list(df["output_tokens"]) == [s.output_tokens for s in specs]
    # One streamed chunk per token (plus at most the closing usage chunk).
    assert ((df["n_chunks"] >= df["output_tokens"]) & (df["n_chunks"] <= df["output_tokens"] + 1)).all()
    assert (df["ttft_ms"] > 0).all() and (df["e2e_ms"] >= df["ttft_ms"]).all()
    assert (df.loc[df["output_tokens"] > 1, "tpot_ms"] > 0).all()
    assert out.exists()


@pytest.mark.server
def test_one_token_prompt_is_refused_clearly(server):
    """The bundled vocabulary needs BOS and one word: a 1-token prompt is a clear error, not a lie in the CSV."""
    with pytest.raises(PrismError, match="at least 2 tokens"):
        run_load(server.url, [RequestSpec(None, 1, 4)], progress=False)
    res = run_load(server.url, [RequestSpec(None, 2, 4)], progress=False)
    assert res.results[0].status == "ok"
    assert res.results[0].prompt_tokens == 2


@pytest.mark.server
def test_closed_loop_uses_all_slots(server):
    """-np 4 and 4 clients: the server runs the 4 sequences concurrently (continuous batching)."""
    # Long outputs: the tiny model makes 64 tokens in ~2 ms, less than the clients' start-up stagger
    # (one first request was sent 19 ms after the others, when another had already finished).
    specs = closed_loop(8, parse_length_dist("fixed:16"), parse_length_dist("fixed:1024"), seed=1)
    df = run_load(server.url, specs, concurrency=4, progress=False).frame()
    assert (df["status"] == "ok").all()
    # The most requests generating at once (between first token and end; an end sorts before a start
    # at the same time): 4 when the server runs all its slots together, 1 if it served them in turn.
    edges = sorted([(t, 1) for t in df["t_first_token_ns"]] + [(t, -1) for t in df["t_end_ns"]])
    assert max(itertools.accumulate(d for _t, d in edges)) == 4


# --------------------------------------------------------------------------------------------
# Set-up


def test_setup_second_run_is_a_noop():
    require(os.geteuid() == 0, "scripts/setup.sh needs root")
    require(shutil.which("dpkg-query") is not None, "scripts/setup.sh is for Debian")

    def run() -> tuple[subprocess.CompletedProcess, float]:
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True, timeout=900)
        return proc, time.monotonic() - t0

    proc, took = run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if "installing" in proc.stdout.lower() or "creating" in proc.stdout.lower():
        proc, took = run()  # the first run did the work: now the second must not
        assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "installing" not in out.lower() and "creating .venv" not in out and "linked " not in out, out
    assert took < 30, f"second set-up run took {took:.1f}s"
    assert "[preflight] ok" in out
