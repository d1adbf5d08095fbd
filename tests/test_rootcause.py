"""Root cause (prismkit.explain): the top cause of labelled injected faults, evidence, timing, CLI.

Two sources of ground truth:
- the labelled sample recordings sample_traces/rca_<scenario>[_N].pftrace (+ .labels.jsonl),
  one per fault scenario, recorded from the demo server with `prism inject`;
- a fresh short recording of the test server with a real cpu_contention window and
  a real stall window injected by `prism inject --schedule` (needs root, BPF, the server).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require

SAMPLES = REPO / "sample_traces"
FAULTS = ["cpu_contention", "cpu_throttle", "memory_bandwidth", "memory_pressure", "stall", "io_contention"]


def sample_sets() -> list[Path]:
    return sorted(p for p in SAMPLES.glob("rca_*.pftrace") if p.with_suffix(".labels.jsonl").exists())


@pytest.fixture(scope="module")
def sample_results():
    """Explain every labelled sample recording once: {path: (Explanation, labels)}."""
    from prismkit import load_trace
    from prismkit.inject.labels import read_labels
    from prismkit.rootcause import explain

    out = {}
    for p in sample_sets():
        lab = read_labels(p.with_suffix(".labels.jsonl"))
        out[p] = (explain(load_trace(p), labels=lab), lab)
    return out


def test_samples_cover_the_fault_scenarios():
    scen = {p.name[len("rca_"):].split(".")[0].rstrip("_0123456789") for p in sample_sets()}
    assert {"cpu_contention", "stall"} <= scen, scen
    assert set(FAULTS) <= scen, f"missing sample recordings: {set(FAULTS) - scen}"


MIN_SLOWDOWN = 1.2   # a labelled window whose batches did not slow has no anomaly to explain (busy machine)


@pytest.mark.parametrize("scenario", [pytest.param(s, marks=pytest.mark.xfail(
    reason="without PMU counters, streaming workers that take CPU but do not slow the server's on-CPU compute "
           "look like cpu_contention (sample set 2)", strict=False)) if s == "memory_bandwidth" else s
    for s in FAULTS])
def test_top_cause_on_samples(sample_results, scenario):
    hits1, hits3, n = 0, 0, 0
    for p, (res, lab) in sample_results.items():
        for aid, a in res.anomalies.iterrows():
            if a["scenario"] != scenario:
                continue
            c = res.causes[res.causes["anomaly_id"] == aid].sort_values("rank")
            assert len(c) >= 1 and c["evidence"].iloc[0], "a ranked cause with evidence"
            assert c["confidence"].between(0, 1).all()
            if c["slowdown"].iloc[0] < MIN_SLOWDOWN:
                continue
            n += 1
            hits1 += int(c["cause"].iloc[0] == scenario)
            hits3 += int(scenario in list(c["cause"].head(3)))
    assert n > 0, f"no labelled {scenario} sample window with a slowdown"
    print(f"{scenario}: top-1 {hits1}/{n}, top-3 {hits3}/{n}")
    assert hits1 / n >= 0.6, f"{scenario}: top-1 {hits1}/{n}"
    assert hits3 / n >= 0.8, f"{scenario}: top-3 {hits3}/{n}"


def test_overall_accuracy_on_samples(sample_results):
    hits1, hits3, n = 0, 0, 0
    for p, (res, lab) in sample_results.items():
        for aid, a in res.anomalies.iterrows():
            c = res.causes[res.causes["anomaly_id"] == aid].sort_values("rank")
            if c["slowdown"].iloc[0] < MIN_SLOWDOWN:
                continue
            n += 1
            hits1 += int(c["cause"].iloc[0] == a["scenario"])
            hits3 += int(a["scenario"] in list(c["cause"].head(3)))
    print(f"overall: top-1 {hits1}/{n}, top-3 {hits3}/{n}")
    assert n >= 10 and hits1 / n >= 0.7 and hits3 / n >= 0.85


def test_cpu_contention_evidence_names_the_competitor(sample_results):
    """Among the windows, the injected busy workers (helper_pids) are named as top preemptors."""
    named, n = 0, 0
    for p, (res, lab) in sample_results.items():
        for aid, a in res.anomalies.iterrows():
            if a["scenario"] != "cpu_contention":
                continue
            c = res.causes[(res.causes["anomaly_id"] == aid) & (res.causes["cause"] == "cpu_contention")]
            if c.empty:
                continue
            n += 1
            ev = c["evidence"].iloc[0]
            assert "top preemptors" in ev and "held the CPU" in ev
            helpers = lab.iloc[aid]["params"].get("helper_pids", [])
            named += any(f"pid {h})" in ev for h in helpers)
    assert n and named >= 1, "the injected competing processes are never named"


def test_time_per_explanation(sample_results):
    """Under a second per anomaly (features + model + SHAP + rules, amortised over the trace's anomalies)."""
    per = [res.timing["per_anomaly_total_s"] for res, _ in sample_results.values()]
    shap_only = [t for res, _ in sample_results.values() for t in res.timing["per_anomaly_s"]]
    print(f"per anomaly: median {np.median(per):.3f}s max {max(per):.3f}s; SHAP+rules only max {max(shap_only):.3f}s")
    assert np.median(per) < 1.0
    assert max(shap_only) < 1.0


def test_features_are_consistent():
    """Off-CPU split and interval arithmetic: sums match a direct per-window computation."""
    from prismkit import load_trace
    from prismkit.rootcause.features import batch_features, interval_overlap

    starts = np.array([0, 5, 20]); ends = np.array([10, 8, 30])
    got = interval_overlap(starts, ends, np.array([0, 6, 25, 40]), np.array([10, 21, 26, 50]))
    assert list(got) == [13, 4 + 2 + 1, 1, 0]
    p = SAMPLES / "rca_stall.pftrace"
    f = batch_features(load_trace(p))
    assert len(f) > 20
    for c in ("preempted_other_ns", "main_blocked_ns", "runq_wait_ns", "major_faults_per_s", "psi_cpu",
              "psi_memory", "psi_io", "throttled_share", "io_syscall_share", "n_threads"):
        assert c in f and np.isfinite(f[c]).all(), c
    # the batch thread's own off-CPU time (BatchBreakdown) never exceeds the step window
    assert (f["offcpu_preempted_ns"] + f["offcpu_blocked_ns"] <= f["latency_ns"] + 1).all()


def test_prism_explain_prints():
    p = SAMPLES / "rca_stall.pftrace"
    r = subprocess.run([sys.executable, "-m", "prismkit.cli", "explain", str(p), "--labels",
                        str(p.with_suffix(".labels.jsonl"))], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "anomaly 0" in r.stdout and "1. stall" in r.stdout and "per anomaly" in r.stdout


def test_prism_eval_rca_prints():
    ps = [str(SAMPLES / f"rca_{s}.pftrace") for s in ("cpu_contention", "stall")]
    r = subprocess.run([sys.executable, "-m", "prismkit.cli", "eval", "rca", *ps], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "top1" in r.stdout and "overall" in r.stdout


# -- a fresh recording with real injected faults --------------------------------

@pytest.fixture(scope="module")
def fresh(server, bpf_ok, tmp_path_factory):
    """~13 s recording of the test server under closed-loop load; cpu_contention then stall injected."""
    from prismkit.load import closed_loop, parse_length_dist, run_load
    from prismkit.trace import load_trace
    from recorders.engine import Recorder

    d = tmp_path_factory.mktemp("rootcause")
    out, labels, sched = d / "fresh.pftrace", d / "fresh.labels.jsonl", d / "schedule.json"
    sched.write_text(json.dumps([
        {"scenario": "cpu_contention", "start_s": 1.5, "duration_s": 3, "params": {"workers": 4, "nice": -5}},
        {"scenario": "stall", "start_s": 7.0, "duration_s": 3, "params": {"pause_ms": 80, "period_ms": 200}}]))
    rec = Recorder(server.pid, out, sample_interval_s=0.1, verbose=False)
    rec.start_background()
    load = subprocess.Popen([sys.executable, "-m", "prismkit.cli", "load", "--url", server.url, "-c", "4",
                             "--duration", "13", "--prompt", "fixed:32", "--output", "fixed:48", "--quiet",
                             "-o", str(d / "load.csv")], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        r = subprocess.run([sys.executable, "-m", "prismkit.cli", "inject", "--pid", str(server.pid), "--schedule",
                            str(sched), "--labels", str(labels), "--quiet"], capture_output=True, text=True,
                           cwd=REPO, timeout=90)
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)
    finally:
        load.terminate()
        load.wait(timeout=30)
        rec.join(timeout=60)
    return load_trace(out), labels


@pytest.mark.xfail(strict=False, reason="issue 6 open: on a loaded 2-core machine an injected fault can leave no "
                   "slowdown, and the fresh ranking does not always put the injected cause in the top 3")
def test_fresh_recording_top_causes(fresh):
    from prismkit.inject.labels import read_labels
    from prismkit.rootcause import explain

    trace, labels = fresh
    lab = read_labels(labels)
    assert list(lab["scenario"]) == ["cpu_contention", "stall"]
    t0 = time.perf_counter()
    res = explain(trace, labels=lab)
    per = (time.perf_counter() - t0) / len(lab)
    print(res.causes[["anomaly_id", "rank", "cause", "share", "confidence", "evidence"]].to_string())
    print(f"{per:.3f}s per anomaly; {len(res.features)} batches; timing {res.timing}")
    ranked = {aid: list(g.sort_values("rank")["cause"]) for aid, g in res.causes.groupby("anomaly_id")}
    f = res.features
    base = f.loc[f["baseline"], "latency_ns"].mean()
    slow = {aid: f.loc[f["anomaly_id"] == aid, "latency_ns"].mean() / base for aid in res.anomalies.index}
    assert all(v >= 1.2 for v in slow.values()), \
        f"an injected fault left no slowdown (mean batch latency) on this shared, loaded machine: {slow}"
    # The test machine is shared: other load can dwarf an injected fault, so the fresh recording asserts
    # the injected cause among the first three (the labelled samples assert top-1 accuracy)
    assert "cpu_contention" in ranked[0][:3], res.causes.to_string()
    assert "stall" in ranked[1][:3], res.causes.to_string()
    c = res.causes[(res.causes["anomaly_id"] == 0) & (res.causes["cause"] == "cpu_contention")]
    assert "top preemptors" in c["evidence"].iloc[0]
    assert res.timing["per_anomaly_total_s"] < 2.0   # (per: also the first lightgbm/shap import)


def test_online_rca_runs_in_a_process_of_its_own():
    """`prism watch --rca`: the root-cause analysis of an alert runs in a worker process (on a thread
    of the watcher it held the GIL in C code for ~150 ms and delayed the next alert by as much), is
    sent the baseline model once, ranks the labelled fault first, reports a failure as one error
    and stays up, and ends with close()."""
    import os

    from prismkit import load_trace
    from prismkit.detect import WorkloadModel
    from prismkit.inject.labels import read_labels
    from prismkit.online.causes import make_cause_fn

    path = SAMPLES / "rca_stall.pftrace"
    labels = read_labels(path.with_suffix(".labels.jsonl"))
    batches = load_trace(path).batches
    model = WorkloadModel().fit(batches[batches["ts"] < labels["start_ns"].min()])
    fn = make_cause_fn(lambda: path, rca=True, model_fn=lambda: model, wait_s=0)
    worker = fn.worker
    try:
        pid = worker.pid
        assert pid is not None and pid != os.getpid()
        for fault in labels.itertuples():
            causes = fn({"pid": os.getpid(), "start_ns": int(fault.start_ns), "end_ns": int(fault.end_ns)})
            ranked = [c for c in causes if c["source"] == "prismkit.rootcause"]
            assert ranked and ranked[0]["cause"] == fault.scenario, causes
            assert worker._sent is model and worker.pid == pid
        with pytest.raises(RuntimeError, match="no_such"):
            worker.causes(SAMPLES / "no_such.pftrace", 0, 1)
        assert worker.pid == pid
    finally:
        fn.close()
    assert worker.pid is None
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
