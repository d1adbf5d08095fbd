"""Breakdown analyzers on a real recording of the real server."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from prismkit.analysis import BatchBreakdown, RequestBreakdown
from prismkit.analysis.breakdown import STAGE_COLUMNS
from prismkit.analysis.requests import PARTS
from prismkit.load import closed_loop, open_loop, parse_length_dist, run_load
from prismkit.trace import load_trace
from recorders.engine import Recorder

from conftest import REPO

pytestmark = [pytest.mark.server, pytest.mark.bpf]  # (the fixtures enforce them)


@pytest.fixture(scope="module")
def recording(server, bpf_ok, tmp_path_factory):
    """A real recording: steady closed-loop load, then a burst of open-loop arrivals."""
    out = tmp_path_factory.mktemp("breakdown") / "rec.pftrace"
    rec = Recorder(server.pid, out, verbose=False).start_background()
    prompt, output = parse_length_dist("uniform:8:160"), parse_length_dist("uniform:4:48")
    steady = run_load(server.url, closed_loop(24, prompt, output, seed=5), concurrency=4, progress=False)
    bursty = run_load(server.url, open_loop(20.0, 1.5, prompt, output, burstiness=4.0, seed=6), progress=False)
    rec.join()
    client = [*steady.results, *bursty.results]
    return load_trace(out), client


@pytest.mark.parametrize("scope", ["step", "batch"])
def test_stages_sum_to_each_batch(recording, scope):
    trace, _ = recording
    df = BatchBreakdown(trace, scope=scope).per_batch()
    assert len(df) == len(trace.batches) > 0
    total = df[STAGE_COLUMNS].sum(axis=1)
    assert (np.abs(total - df["window_ns"]) <= 0.01 * df["window_ns"]).all()
    assert (df[STAGE_COLUMNS] >= 0).all().all()
    if scope == "batch":
        assert (df["window_ns"] == df["dur"]).all()
        # Inside llama_decode the thread computes the graph or is off the CPU; the rest
        # (batch preparation) is small, however loaded the machine is.
        busy = df["graph_compute_ns"] + df["offcpu_preempted_ns"] + df["offcpu_blocked_ns"]
        assert busy.sum() > 0.5 * df["window_ns"].sum()
        assert (df["graph_compute_ns"] > 0).mean() > 0.9
    else:
        assert (df["window_ns"] >= df["dur"]).all()
        assert df["sample_ns"].sum() > 0 and df["detokenize_ns"].sum() > 0


def test_request_decomposition_sums_to_e2e(recording):
    trace, client = recording
    per_req = RequestBreakdown(trace).per_request()
    assert len(per_req) == len(client)
    done = per_req.dropna(subset=["queue_ns"])
    assert len(done) >= 0.9 * len(per_req), "most requests map to the batches that served them"
    total = done[PARTS].sum(axis=1)
    assert (np.abs(total - done["e2e"]) <= 0.01 * done["e2e"]).all()
    assert (done[PARTS] >= 0).all().all()
    # each request's decode batches: one per generated token after the first
    assert (done["n_batches"] >= 1).all()
    n_out = np.array([r.output_tokens for r in client])
    assert done["n_batches"].sum() >= (n_out - 1).sum() * 0.9


def test_summaries_and_slo(recording):
    trace, client = recording
    bd = BatchBreakdown(trace)
    assert bd.shares().sum() == pytest.approx(1.0)
    phases = bd.by_phase()
    assert phases["batches"].sum() == len(trace.batches)
    sizes = bd.by_batch_size()
    assert sizes["batches"].sum() == len(trace.batches)
    assert sizes["tokens"].sum() == trace.batches["n_tokens"].sum()
    rb = RequestBreakdown(trace)
    dist = rb.distributions()
    assert dist.loc["TTFT", "n"] == len(client)
    ttft = np.sort(trace.requests["ttft"].to_numpy() / 1e6)
    slo = rb.slo_attainment(ttft_ms=float(np.median(ttft)))
    assert slo.iloc[0]["attainment"] == pytest.approx((ttft <= np.median(ttft)).mean())


def test_prism_analyze_writes_report(recording, tmp_path):
    trace, _ = recording
    report = tmp_path / "report.html"
    proc = subprocess.run([str(REPO / ".venv/bin/prism"), "analyze", trace.metadata["path"], "-o", str(report),
                           "--slo-ttft", "100", "--slo-tpot", "20"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Batch latency percentiles" in proc.stdout and "SLO attainment" in proc.stdout
    html = report.read_text()
    assert html.count("<img src=\"data:image/png;base64,") >= 3
    assert "Request waterfall" in html


def test_prism_analyze_on_the_sample_trace(tmp_path):
    sample = REPO / "sample_traces" / "demo_steady_bursty.pftrace"
    report = tmp_path / "sample.html"
    proc = subprocess.run([str(REPO / ".venv/bin/prism"), "analyze", str(sample), "-o", str(report)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Batch latency percentiles" in proc.stdout and "Where request time goes" in proc.stdout
    assert report.read_text().count("data:image/png;base64,") >= 3
