"""The load generator: arrival processes, length distributions, Azure replay, the runner, `prism load`.

The generator checks (no server) are exact or statistical with fixed seeds; the
runner checks drive the real llama-server of the `server` fixture and judge it
by what the server itself reports (usage) and by the client's time stamps.
"""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, free_port
from prismkit.errors import PrismError
from prismkit.load import azure_replay, closed_loop, open_loop, parse_length_dist, run_load
from prismkit.load.workload import RequestSpec

PRISM = REPO / ".venv" / "bin" / "prism"

# The per-request CSV that `prism load` writes: the client-side ground truth.
CSV_COLUMNS = [
    "req_id", "t_send_ns", "t_first_token_ns", "t_end_ns", "requested_prompt_tokens",
    "requested_output_tokens", "prompt_tokens", "output_tokens", "n_chunks", "bytes_out",
    "status", "error", "wall_send_s",
]


def prism(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(PRISM), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "COLUMNS": "200"})


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A non-zero exit with exactly one line on stderr that names the problem; no traceback."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {proc.stderr!r}"
    assert "error" in lines[0].lower(), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def max_overlap(df: pd.DataFrame) -> int:
    """Largest number of requests in flight at once, from [t_send_ns, t_end_ns)."""
    events = [(t, 1) for t in df["t_send_ns"]] + [(t, -1) for t in df["t_end_ns"]]
    events.sort(key=lambda e: (e[0], e[1]))  # an end at t comes before a start at t
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def cv(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.std() / x.mean())


# --------------------------------------------------------------------------------------------
# Length distributions


def test_length_dist_fixed_and_clipping():
    rng = np.random.default_rng(0)
    assert {parse_length_dist("fixed:17")(rng) for _ in range(10)} == {17}
    assert parse_length_dist("fixed:0")(rng) == 1  # lo = 1 by default
    assert parse_length_dist("fixed:-4")(rng) == 1
    assert parse_length_dist("fixed:5000", hi=300)(rng) == 300  # --max-prompt/--max-output caps
    assert parse_length_dist("fixed:3", lo=8)(rng) == 8


def test_length_dist_uniform_covers_inclusive_range():
    rng = np.random.default_rng(1)
    d = parse_length_dist("uniform:16:20")
    vals = [d(rng) for _ in range(2000)]
    assert set(vals) == {16, 17, 18, 19, 20}
    assert all(isinstance(v, int) for v in vals)
    counts = np.bincount(vals)[16:]
    assert counts.min() > 300  # each of 5 values ~400 times
    capped = parse_length_dist("uniform:10:1000", hi=50)
    assert max(capped(rng) for _ in range(500)) == 50


def test_length_dist_lognormal_and_normal_moments():
    rng = np.random.default_rng(2)
    logn = [parse_length_dist("lognormal:200:0.5")(rng) for _ in range(20000)]
    assert abs(np.median(logn) - 200) < 6
    assert abs(np.std(np.log(logn)) - 0.5) < 0.02
    norm = [parse_length_dist("normal:100:10")(rng) for _ in range(20000)]
    assert abs(np.mean(norm) - 100) < 0.5
    assert abs(np.std(norm) - 10) < 0.5
    assert min(parse_length_dist("normal:2:50")(rng) for _ in range(500)) == 1  # never below 1


@pytest.mark.parametrize("spec", [
    "", "fixed", "fixed:", "fixed:a", "fixed:1:2", "uniform:5", "uniform:1:2:3", "lognormal:100",
    "normal:1", "gauss:1:2", "poisson:3", "FIXED:3", "uniform:x:y", "fixed:1e",
])
def test_length_dist_bad_specs(spec):
    with pytest.raises(PrismError, match="bad length distribution"):
        parse_length_dist(spec)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("spec", ["uniform:10:5", "normal:5:-1", "lognormal:-5:1", "lognormal:100:-1"])
def test_length_dist_impossible_parameters(spec):
    with pytest.raises(PrismError):
        d = parse_length_dist(spec)
        d(np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# Arrival processes (no server)


def test_closed_loop_specs():
    specs = closed_loop(50, parse_length_dist("uniform:10:20"), parse_length_dist("fixed:7"), seed=3)
    assert len(specs) == 50
    assert all(s.arrival_s is None for s in specs)
    assert all(10 <= s.prompt_tokens <= 20 and s.output_tokens == 7 for s in specs)
    again = closed_loop(50, parse_length_dist("uniform:10:20"), parse_length_dist("fixed:7"), seed=3)
    assert again == specs  # seeded: reproducible
    other = closed_loop(50, parse_length_dist("uniform:10:20"), parse_length_dist("fixed:7"), seed=4)
    assert other != specs


def test_open_loop_poisson_properties():
    rate, dur = 50.0, 200.0
    specs = open_loop(rate, dur, parse_length_dist("fixed:8"), parse_length_dist("fixed:4"), seed=7)
    t = np.array([s.arrival_s for s in specs])
    n_exp = rate * dur
    assert abs(len(t) - n_exp) < 4 * np.sqrt(n_exp)  # Poisson count: sd = sqrt(10000) = 100
    assert np.all(np.diff(t) > 0) and t[0] > 0 and t[-1] < dur
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert abs(gaps.mean() - 1 / rate) < 0.03 / rate
    assert 0.95 < cv(gaps) < 1.05  # exponential gaps: CV = 1
    # Counts in 1 s bins are Poisson(rate): variance ~ mean (index of dispersion ~ 1).
    counts = np.bincount(t.astype(int), minlength=int(dur))
    assert 0.8 < counts.var() / counts.mean() < 1.2
    assert all(s.prompt_tokens == 8 and s.output_tokens == 4 for s in specs)
    assert open_loop(rate, dur, parse_length_dist("fixed:8"), parse_length_dist("fixed:4"), seed=7) == specs


@pytest.mark.parametrize("burstiness", [4.0, 9.0])
def test_open_loop_bursty_properties(burstiness):
    rate, dur = 50.0, 200.0
    specs = open_loop(rate, dur, parse_length_dist("fixed:8"), parse_length_dist("fixed:4"),
                      burstiness=burstiness, seed=11)
    t = np.array([s.arrival_s for s in specs])
    gaps = np.diff(np.concatenate([[0.0], t]))
    # Same mean rate as Poisson (count sd ~ sqrt(rate * dur * burstiness))...
    assert abs(len(t) - rate * dur) < 5 * np.sqrt(rate * dur * burstiness)
    # ...but gaps with CV^2 = burstiness: bursts and lulls.
    assert abs(cv(gaps) ** 2 - burstiness) < 0.25 * burstiness
    assert cv(gaps) > 1.7
    counts = np.bincount(t.astype(int), minlength=int(dur))
    assert counts.var() / counts.mean() > 2.0  # over-dispersed compared with Poisson


def test_open_loop_low_burstiness_is_regular():
    specs = open_loop(50.0, 100.0, parse_length_dist("fixed:8"), parse_length_dist("fixed:4"),
                      burstiness=0.25, seed=1)
    gaps = np.diff([0.0] + [s.arrival_s for s in specs])
    assert abs(cv(gaps) - 0.5) < 0.05


@pytest.mark.parametrize("kwargs", [dict(rate=0, duration_s=10), dict(rate=-1, duration_s=10),
                                    dict(rate=5, duration_s=0), dict(rate=5, duration_s=10, burstiness=0),
                                    dict(rate=5, duration_s=10, burstiness=-2)])
def test_open_loop_bad_parameters(kwargs):
    with pytest.raises(PrismError):
        open_loop(prompt=parse_length_dist("fixed:8"), output=parse_length_dist("fixed:4"), **kwargs)


# --------------------------------------------------------------------------------------------
# Azure trace replay

BASE = datetime(2023, 11, 16, 18, 15, 46)
TICK = 1e-7  # Azure time stamps have 7 fractional digits (100 ns)


def azure_stamp(ticks: int) -> str:
    """TIMESTAMP text for BASE + ticks * 100 ns, as in the Azure LLM inference traces."""
    whole, frac = divmod(ticks, 10_000_000)
    return f"{BASE + timedelta(seconds=whole):%Y-%m-%d %H:%M:%S}.{frac:07d}"


def write_azure(path: Path, rows: list[tuple[int, int, int]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for ticks, ctx, gen in rows:
            w.writerow([azure_stamp(ticks), ctx, gen])
    return path


def synthetic_rows(n: int = 400, seed: int = 5) -> list[tuple[int, int, int]]:
    """Irregular arrivals (mean gap 0.15 s) starting at 18:15:46.6805900, crossing a minute."""
    rng = np.random.default_rng(seed)
    gaps = np.maximum(1, np.round(rng.exponential(0.15, n) / TICK)).astype(int)
    ticks = 6_805_900 + np.concatenate([[0], np.cumsum(gaps[1:])])
    ctx = rng.integers(20, 4000, n)
    gen = rng.integers(0, 600, n)
    # No lengths that a token scale of 0.037 or 0.1 would put exactly on .5 (rounding ties).
    ctx[(ctx % 500 == 0) | (ctx % 10 == 5)] += 1
    gen[(gen % 500 == 0) | (gen % 10 == 5)] += 1
    gen[::37] = 0  # Azure has some zero-output rows
    return [(int(t), int(c), int(g)) for t, c, g in zip(ticks, ctx, gen)]


def expected_window(rows, start_s, dur_s, time_scale):
    t0 = rows[0][0] + round(start_s / TICK)
    end = t0 + round(dur_s / TICK) if dur_s is not None else None
    return [((t - t0) * TICK * time_scale, c, g) for t, c, g in rows
            if t >= t0 and (end is None or t < end)]


def half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def test_azure_timestamp_format_is_the_real_one(tmp_path):
    assert azure_stamp(6_805_900) == "2023-11-16 18:15:46.6805900"
    path = write_azure(tmp_path / "t.csv", [(6_805_900, 100, 10), (6_805_900 + 12_345_678, 200, 20)])
    specs = azure_replay(path)
    assert [s.arrival_s for s in specs] == pytest.approx([0.0, 1.2345678], abs=1e-6)


@pytest.mark.parametrize("start_s,dur_s,time_scale", [(0.0, None, 1.0), (10.0, 20.0, 0.5),
                                                      (7.3, 12.9, 2.0), (25.0, 5.0, 0.1)])
def test_azure_window_selection_and_scaling(tmp_path, start_s, dur_s, time_scale):
    rows = synthetic_rows()
    path = write_azure(tmp_path / "azure.csv", rows)
    exp = expected_window(rows, start_s, dur_s, time_scale)
    specs = azure_replay(path, time_scale=time_scale, start_offset_s=start_s, duration_s=dur_s)
    assert len(exp) > 20
    assert len(specs) == len(exp)  # exact, not merely within 1%
    assert [s.arrival_s for s in specs] == pytest.approx([e[0] for e in exp], abs=1e-5)
    assert [s.prompt_tokens for s in specs] == [max(1, c) for _, c, _ in exp]
    assert [s.output_tokens for s in specs] == [max(1, g) for _, _, g in exp]
    if dur_s is not None:
        assert specs[-1].arrival_s < dur_s * time_scale
        # The rate over the window is the trace's rate, stretched by the time scale.
        assert len(specs) / (dur_s * time_scale) == pytest.approx(len(exp) / dur_s / time_scale)


def test_azure_window_boundaries_are_half_open(tmp_path):
    # Rows exactly at start_offset and at start_offset + duration (100 ns precision).
    s = 10_000_000
    rows = [(6_805_900 + k * s // 2, 100 + k, 10) for k in range(0, 41)]  # one every 0.5 s for 20 s
    path = write_azure(tmp_path / "edges.csv", rows)
    specs = azure_replay(path, start_offset_s=5.0, duration_s=5.0)
    # 5.0, 5.5, ..., 9.5 are in; 10.0 is out.
    assert [sp.prompt_tokens for sp in specs] == [100 + k for k in range(10, 20)]
    assert specs[0].arrival_s == pytest.approx(0.0, abs=1e-6)


def test_azure_token_scale_and_caps(tmp_path):
    rows = synthetic_rows(seed=9)
    path = write_azure(tmp_path / "azure.csv", rows)
    scale = 0.037  # no ties at .5 for these integers
    specs = azure_replay(path, token_scale=scale, max_prompt=90, max_output=12)
    assert len(specs) == len(rows)
    exp_p = [min(90, max(2, half_up(c * scale))) for _, c, _ in rows]  # prompts: BOS + a word at least
    exp_o = [min(12, max(1, half_up(g * scale))) for _, _, g in rows]
    assert [s.prompt_tokens for s in specs] == exp_p
    assert [s.output_tokens for s in specs] == exp_o
    assert max(exp_p) == 90 and min(exp_p) < 90 and max(exp_o) == 12 and min(exp_o) == 1
    # Larger than 1 works too, and arrivals do not depend on token_scale.
    big = azure_replay(path, token_scale=2.0)
    assert [s.prompt_tokens for s in big] == [max(2, 2 * c) for _, c, _ in rows]
    assert [s.arrival_s for s in big] == [s.arrival_s for s in specs]


def test_azure_errors(tmp_path):
    with pytest.raises(PrismError, match="cannot read trace"):
        azure_replay(tmp_path / "missing.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,prompt,output\n2023-11-16 18:15:46.6805900,10,10\n")
    with pytest.raises(PrismError, match="not an Azure LLM trace"):
        azure_replay(wrong)
    empty = tmp_path / "empty.csv"
    empty.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(PrismError, match="no requests"):
        azure_replay(empty)
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,10\n"
                   "yesterday,10,10\n")
    with pytest.raises(PrismError, match=r"bad\.csv:3"):
        azure_replay(bad)
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,ten,10\n")
    with pytest.raises(PrismError, match=r"bad\.csv:2"):
        azure_replay(bad)
    good = write_azure(tmp_path / "good.csv", synthetic_rows(20))
    for kw in (dict(time_scale=0), dict(time_scale=-1), dict(token_scale=0)):
        with pytest.raises(PrismError, match="must be > 0"):
            azure_replay(good, **kw)
    assert azure_replay(good, start_offset_s=1e6) == []  # a window past the end selects nothing


# --------------------------------------------------------------------------------------------
# The runner against the real server


def assert_sent_as_specified(df: pd.DataFrame, specs: list[RequestSpec]) -> None:
    assert len(df) == len(specs)
    assert list(df["req_id"]) == list(range(len(specs)))
    assert (df["status"] == "ok").all(), df[df["status"] != "ok"][["status", "error"]]
    # What the server reports (usage in the stream) is exactly what was asked for.
    assert list(df["prompt_tokens"]) == [s.prompt_tokens for s in specs]
    assert list(df["output_tokens"]) == [s.output_tokens for s in specs]
    assert list(df["requested_prompt_tokens"]) == [s.prompt_tokens for s in specs]
    assert list(df["requested_output_tokens"]) == [s.output_tokens for s in specs]
    assert (df["t_send_ns"] < df["t_first_token_ns"]).all()
    assert (df["t_first_token_ns"] <= df["t_end_ns"]).all()


def assert_sends_follow_arrivals(df: pd.DataFrame, specs: list[RequestSpec], tol_s: float = 0.05) -> None:
    """Each request is sent at its (scaled) arrival offset: within tol_s, allowing a rare scheduling hiccup
    of this shared 2-core machine (at most 5% of sends, never more than 4 * tol_s)."""
    arrivals = np.array([s.arrival_s for s in specs])
    sends = (df["t_send_ns"].to_numpy() - df["t_send_ns"].iloc[0]) / 1e9
    lag = sends - (arrivals - arrivals[0])
    lag -= np.median(lag)  # the offset of the whole schedule (when the first send happened) is free
    late = np.abs(lag) > tol_s
    msg = f"send times off the schedule by up to {np.abs(lag).max() * 1e3:.1f} ms ({late.sum()} of {len(lag)} > {tol_s * 1e3:.0f} ms)"
    assert late.mean() <= 0.05 and np.abs(lag).max() < 4 * tol_s, msg


@pytest.mark.server
def test_azure_replay_against_server(server, tmp_path):
    rows = synthetic_rows(seed=21)
    path = write_azure(tmp_path / "azure.csv", rows)
    start_s, dur_s, time_scale = 12.0, 8.0, 0.25  # 8 s of trace in 2 s
    specs = azure_replay(path, time_scale=time_scale, start_offset_s=start_s, duration_s=dur_s,
                         token_scale=0.1, max_prompt=48, max_output=8)
    exp = expected_window(rows, start_s, dur_s, time_scale)
    assert len(specs) == len(exp) > 30
    assert min(s.prompt_tokens for s in specs) >= 2  # see test_one_token_prompt in test_target.py
    assert max(s.prompt_tokens for s in specs) == 48 and max(s.output_tokens for s in specs) == 8
    out = tmp_path / "replay.csv"
    res = run_load(server.url, specs, out_csv=out, progress=False)
    assert not res.interrupted
    df = pd.read_csv(out)
    assert_sent_as_specified(df, specs)
    assert_sends_follow_arrivals(df, specs)
    assert res.wall_s >= specs[-1].arrival_s - 0.01  # the schedule was not compressed


@pytest.mark.server
@pytest.mark.parametrize("concurrency,n", [(1, 6), (3, 18)])
def test_closed_loop_concurrency_bound(server, concurrency, n):
    specs = closed_loop(n, parse_length_dist("uniform:24:64"), parse_length_dist("fixed:24"), seed=concurrency)
    res = run_load(server.url, specs, concurrency=concurrency, progress=False)
    df = res.frame()
    assert_sent_as_specified(df, specs)  # -n requests: all sent, all complete
    assert max_overlap(df) == concurrency  # never more than C in flight, and C is reached
    if concurrency == 1:  # one worker: each request is sent after the previous one ended
        d = df.sort_values("t_send_ns")
        assert (d["t_send_ns"].to_numpy()[1:] >= d["t_end_ns"].to_numpy()[:-1]).all()


@pytest.mark.server
def test_closed_loop_above_server_slots(server):
    """The client bound holds even when the server queues (C=6 > -np 4)."""
    specs = closed_loop(18, parse_length_dist("fixed:32"), parse_length_dist("fixed:16"), seed=2)
    df = run_load(server.url, specs, concurrency=6, progress=False).frame()
    assert_sent_as_specified(df, specs)
    assert max_overlap(df) == 6


@pytest.mark.server
def test_open_loop_poisson_against_server(server):
    rate, dur = 20.0, 3.0
    specs = open_loop(rate, dur, parse_length_dist("uniform:8:48"), parse_length_dist("uniform:1:8"), seed=42)
    assert abs(len(specs) - rate * dur) < 3 * np.sqrt(rate * dur)
    res = run_load(server.url, specs, progress=False)
    df = res.frame()
    assert_sent_as_specified(df, specs)
    assert_sends_follow_arrivals(df, specs)
    gaps = np.diff(np.sort(df["t_send_ns"].to_numpy())) / 1e9
    assert 0.6 < cv(gaps) < 1.4
    assert max_overlap(df) <= len(specs)


@pytest.mark.server
def test_bursty_against_server(server):
    specs = open_loop(20.0, 3.0, parse_length_dist("fixed:16"), parse_length_dist("fixed:4"),
                      burstiness=6.0, seed=3)
    df = run_load(server.url, specs, progress=False).frame()
    assert_sent_as_specified(df, specs)
    assert_sends_follow_arrivals(df, specs)
    gaps = np.diff(np.sort(df["t_send_ns"].to_numpy())) / 1e9
    assert cv(gaps) > 1.5


@pytest.mark.server
def test_run_load_duration_limit(server):
    specs = closed_loop(10_000, parse_length_dist("fixed:16"), parse_length_dist("fixed:32"))
    t0 = time.monotonic()
    res = run_load(server.url, specs, concurrency=2, duration_s=1.0, progress=False)
    assert time.monotonic() - t0 < 3.0
    df = res.frame()
    assert 2 <= len(df) < len(specs)
    assert (df["status"] == "ok").all()  # in-flight requests at the deadline are finished
    assert (df["t_send_ns"] - df["t_send_ns"].min()).max() < 1.1e9


def test_run_load_bad_arguments():
    specs = closed_loop(2, parse_length_dist("fixed:8"), parse_length_dist("fixed:2"))
    for url in ("localhost:8080", "http://127.0.0.1", "nonsense"):
        with pytest.raises(PrismError, match="bad server URL"):
            run_load(url, specs, progress=False)
    with pytest.raises(PrismError, match="no requests"):
        run_load("http://127.0.0.1:9", [], progress=False)


def test_run_load_unreachable_server_is_a_clear_error():
    specs = closed_loop(3, parse_length_dist("fixed:8"), parse_length_dist("fixed:2"))
    with pytest.raises(PrismError, match="cannot connect to http://127.0.0.1"):
        run_load(f"http://127.0.0.1:{free_port()}", specs, progress=False)


# --------------------------------------------------------------------------------------------
# `prism load`


@pytest.mark.server
def test_cli_load_writes_csv(server, tmp_path):
    out = tmp_path / "sub" / "load.csv"
    proc = prism("load", "--url", server.url, "-c", "2", "-n", "6", "--prompt", "fixed:20",
                 "--output", "uniform:3:9", "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "6 requests sent, 6 ok" in proc.stdout
    for metric in ("TTFT", "TPOT", "E2E"):
        assert metric in proc.stdout
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header == CSV_COLUMNS
    df = pd.read_csv(out)
    assert len(df) == 6 and (df["status"] == "ok").all()
    assert (df["prompt_tokens"] == 20).all()
    assert (df["output_tokens"] == df["requested_output_tokens"]).all()
    assert df["output_tokens"].between(3, 9).all()
    # CLOCK_MONOTONIC ns: comparable with this process's time.monotonic_ns().
    now = time.monotonic_ns()
    assert ((now - df["t_end_ns"]) > 0).all() and ((now - df["t_send_ns"]) < 60e9).all()
    assert (df["wall_send_s"] - time.time()).abs().max() < 60


@pytest.mark.server
def test_cli_load_azure(server, tmp_path):
    path = write_azure(tmp_path / "azure.csv", synthetic_rows(seed=8))
    out = tmp_path / "azure-load.csv"
    proc = prism("load", "--url", server.url, "--mode", "azure", "--trace", str(path), "--start-offset", "3",
                 "--duration", "4", "--time-scale", "0.25", "--token-scale", "0.01", "--max-prompt", "32",
                 "--max-output", "4", "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    specs = azure_replay(path, 0.25, 3.0, 4.0, 0.01, 32, 4)
    df = pd.read_csv(out)
    assert_sent_as_specified(df, specs)


@pytest.mark.parametrize("args,needle", [
    (["--url", "nonsense", "-n", "2"], "bad server URL"),
    (["--url", "http://127.0.0.1:9", "--prompt", "bogus:1"], "bad length distribution"),
    (["--url", "http://127.0.0.1:9", "--output", "fixed:x"], "bad length distribution"),
    (["--url", "http://127.0.0.1:9", "--mode", "azure"], "--trace"),
    (["--url", "http://127.0.0.1:9", "--mode", "azure", "--trace", "/nonexistent/azure.csv"], "cannot read trace"),
    (["--url", "http://127.0.0.1:9", "--mode", "poisson", "--rate", "0", "--duration", "1"], "rate"),
    (["--url", "http://127.0.0.1:9", "--mode", "bursty", "--burstiness", "0", "--duration", "1"], "burstiness"),
])
def test_cli_load_bad_arguments(tmp_path, args, needle):
    proc = prism("load", *args, "-o", str(tmp_path / "x.csv"), "--quiet")
    assert_one_line_error(proc, needle)
    assert proc.returncode == 2


def test_cli_load_argparse_errors(tmp_path):
    for args in (["-n", "abc"], ["--mode", "nope"], ["--rate"], ["--no-such-option"]):
        proc = prism("load", *args, "-o", str(tmp_path / "x.csv"))
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        assert re.match(r"prism( load)?: error: ", proc.stderr.strip().splitlines()[-1]), proc.stderr


def test_cli_load_azure_bad_trace(tmp_path):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    proc = prism("load", "--url", "http://127.0.0.1:9", "--mode", "azure", "--trace", str(wrong),
                 "-o", str(tmp_path / "x.csv"), "--quiet")
    assert_one_line_error(proc, "not an Azure LLM trace")


def test_cli_load_unreachable_url(tmp_path):
    proc = prism("load", "--url", f"http://127.0.0.1:{free_port()}", "-n", "3", "-o", str(tmp_path / "x.csv"),
                 "--quiet")
    assert_one_line_error(proc, "127.0.0.1")


@pytest.mark.server
@pytest.mark.parametrize("args", [["-c", "0"], ["-c", "-2"], ["-n", "0"], ["--prompt", "uniform:10:5"],
                                  ["--output", "normal:5:-1"]])
def test_cli_load_impossible_values(server, tmp_path, args):
    proc = prism("load", "--url", server.url, "--prompt", "fixed:4", "--output", "fixed:2", *args,
                 "-o", str(tmp_path / "x.csv"), "--quiet")
    assert_one_line_error(proc)


@pytest.mark.server
def test_cli_load_ctrl_c_keeps_completed_requests(server, tmp_path):
    out = tmp_path / "long.csv"
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([str(PRISM), "load", "--url", server.url, "-c", "2", "-n", "3000",
                                 "--prompt", "fixed:16", "--output", "fixed:48", "-o", str(out)],
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    try:
        # Wait until the load is running (the progress line appears), then let it run ~2 s.
        deadline = time.monotonic() + 20
        while "[load]" not in err_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, err_path.read_text()
            time.sleep(0.05)
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err_path.read_text()
    assert proc.returncode == 130, stderr
    assert "(interrupted)" in stdout
    df = pd.read_csv(out)
    assert list(df.columns) == CSV_COLUMNS
    ok = df[df["status"] == "ok"]
    assert len(ok) >= 4, df["status"].value_counts()
    assert len(df) < 3000
    assert set(df["status"]) <= {"ok", "cancelled"}
    assert (df["status"] == "cancelled").sum() <= 2  # at most the requests in flight
    assert (ok["output_tokens"] == 48).all() and (ok["prompt_tokens"] == 16).all()
    assert f"{len(df)} requests sent, {len(ok)} ok" in stdout
    assert "Traceback" not in stderr, stderr
