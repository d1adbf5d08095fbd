"""Workload model and detector on real recordings.

The sample traces (sample_traces/detect_*.pftrace, made by
``python -m prismkit.detect.scenarios``) are real recordings of the demo model
with real injected faults and workload steps; one more recording is made here,
of the test server under load with a fault injected by prismkit.inject.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require
from prismkit.detect import (DetectorConfig, OnlineDetector, WorkloadModel, detect, evaluate_trace,
                             holdout_split)
from prismkit.detect.model import leave_group_out, ubatch_sizes
from prismkit.detect.scenarios import read_labels
from prismkit.trace import load_trace

SAMPLES = REPO / "sample_traces"
PRISM = str(REPO / ".venv" / "bin" / "prism")


def sample(name: str) -> Path:
    path = SAMPLES / f"detect_{name}.pftrace"
    require(path.exists(), f"{path} is missing (python -m prismkit.detect.scenarios)")
    return path


@pytest.fixture(scope="module")
def baseline():
    return load_trace(sample("baseline")).batches


@pytest.fixture(scope="module")
def model(baseline):
    return WorkloadModel().fit(baseline)


@pytest.fixture(scope="module")
def traces():
    return {n: (load_trace(sample(n)).batches, read_labels(sample(n).with_suffix(".jsonl")))
            for n in ("cpu_contention", "stall", "workload_concurrency", "workload_prompts")}


# -- the workload model ---------------------------------------------------------------------------

def test_model_mape_on_held_out_batches(baseline):
    train, test = holdout_split(baseline, 0.3, "blocks")
    m = WorkloadModel().fit(train)
    ev = m.evaluate(test)
    overall = ev.loc["all"]
    assert overall["n"] == len(test)
    assert overall["mape"] < 0.08, ev
    assert overall["within_10pct"] > 0.85, ev
    # every phase x size group with enough batches is predicted without bias
    big = ev[(ev["n"] >= 50) & (ev.index != "all")]
    assert len(big) >= 3
    assert ((big["median_ratio"] - 1).abs() < 0.08).all(), ev
    # a prefill of ~1000 tokens is ~50x a one-sequence decode, and the model knows
    dec = test[(test["phase"] == "decode") & (test["n_seqs"] == 1)]
    pre = test[test["n_tokens"] > 400]
    assert len(dec) and len(pre)
    assert np.median(m.predict(pre)) > 20 * np.median(m.predict(dec))


def test_model_extrapolates_to_held_out_workload_groups(baseline):
    """Issue 5: fitted without a whole workload group (phase x batch-size bin), the model predicts it.

    Measured here on the real baseline recording: each group with enough batches is held out in turn.
    """
    t = leave_group_out(baseline)
    groups = t.drop(index="all")
    assert len(groups) >= 3 and {"decode/1", "decode/2", "decode/3-4"} <= set(groups.index), t
    assert t.loc["all", "mape"] <= 0.05, t
    assert ((groups["median_ratio"] - 1).abs() < 0.05).all(), t
    assert (groups["mape"] < 0.08).all(), t


def test_ubatch_sizes_follow_llama_cpp_split():
    # slots {0, 2, 3} decoding: consecutive sequence ids only -> passes of 1 and 2 tokens
    assert ubatch_sizes(3, 3, 0, 3, seq_mask=0b1101, prefill_mask=0) == (1, 2)
    assert ubatch_sizes(4, 4, 0, 4, seq_mask=0b1111, prefill_mask=0) == (4,)
    # a prompt beside decoding sequences: one token of each, then the rest of the prompt (the server
    # queues decode tokens first, so a prompt in slot 0 does not follow slot 3's id)
    assert ubatch_sizes(21, 4, 18, 3, seq_mask=0b1111, prefill_mask=0b1000) == (4, 17)
    assert ubatch_sizes(21, 4, 18, 3, seq_mask=0b1111, prefill_mask=0b0001) == (3, 18)
    # a long prompt alone: n_ubatch tokens a pass; without composition columns: one sequence
    assert ubatch_sizes(1200, 1, 1200, 0, seq_mask=1, prefill_mask=1) == (512, 512, 176)
    assert ubatch_sizes(700) == (512, 188)
    assert ubatch_sizes(0) == ()


def test_model_serves_later_recordings(model, traces):
    """Fitted on the baseline recording, it predicts the normal batches of the other recordings."""
    for name, (b, labels) in traces.items():
        normal = b.copy()
        for _, lab in labels[labels["kind"] == "fault"].iterrows():
            normal = normal[(normal["ts"] + normal["dur"] < lab["start_ns"]) | (normal["ts"] > lab["end_ns"])]
        ev = model.evaluate(normal, by=None).loc["all"]
        assert ev["mape"] < 0.10, (name, ev)
        assert abs(ev["median_ratio"] - 1) < 0.08, (name, ev)


def test_model_with_a_subset_of_columns(baseline):
    train, test = holdout_split(baseline, 0.3, "blocks")
    m = WorkloadModel(columns=["n_tokens", "kv_tokens"]).fit(train[["ts", "dur", "n_tokens", "kv_tokens"]])
    assert m.features_ == ["n_tokens", "kv_tokens", "tokens_x_ctx"]
    assert m.evaluate(test[["ts", "dur", "n_tokens", "kv_tokens"]], by=None).loc["all", "mape"] < 0.15
    with pytest.raises(ValueError, match="lack workload columns"):
        m.predict(test[["ts", "dur", "n_tokens"]])


def test_save_load_round_trips_predictions_exactly(model, traces, tmp_path):
    b = traces["stall"][0]
    path = model.save(tmp_path / "model.json")
    back = WorkloadModel.load(path)
    assert np.array_equal(back.predict(b), model.predict(b))
    assert back.calibration_ == model.calibration_
    rows = b.head(50).to_dict("records")
    assert [back.predict_one(r) for r in rows] == list(model.predict(b.head(50)))


def test_flat_forest_predicts_exactly_as_lightgbm(model, traces):
    """The online detector's one-row path (prismkit/detect/_forest.c) holds LightGBM's trees in one
    flat array: the same predictions bit for bit, on real rows and on rows built to take every
    kind of branch (thresholds and the floats next to them, NaN, zero, -0.0, a denormal)."""
    from prismkit.detect import forest

    if forest._forest is None:
        require(False, "the native forest (prismkit/detect/_forest.c) was not built: run scripts/setup.sh")
    f = forest.compile_forest(model.booster_, len(model.features_))
    assert f is not None and f.n_trees == model.booster_.num_trees()
    X = model.features(traces["stall"][0]).to_numpy(dtype=np.float64)
    probes = forest.probe_rows(model.booster_.dump_model(), X.shape[1], n=2000, seed=1)
    assert np.isnan(probes).any() and (probes == 0).any()
    for rows in (X, probes):
        want = model.booster_.predict(rows, num_threads=1)
        assert np.array_equal([f.predict(r) for r in rows.tolist()], want, equal_nan=True)
    with pytest.raises(ValueError, match="13 features|values"):
        f.predict([1.0, 2.0])


@pytest.mark.parametrize("columns", [None, ["n_tokens", "n_seqs", "n_prefill_tokens", "n_decode_tokens", "kv_tokens"],
                                     ["n_tokens", "kv_tokens", "seq_mask", "n_seqs"]])
def test_native_predict_one_equals_predict(traces, columns):
    """predict_one's C path (forest.row_model: features, support weight, cost base) gives predict's
    floats bit for bit: on real batches, with and without the history feature, with the phase as a
    column or derived from the token counts, and on batches with missing, NaN or odd values,
    where it must agree with the Python path."""
    from prismkit.detect import forest

    if forest._forest is None:
        require(False, "the native forest (prismkit/detect/_forest.c) was not built: run scripts/setup.sh")
    b = traces["stall"][0].sort_values("ts")
    for history in (False, True):
        m = WorkloadModel(columns=columns, history=history).fit(b)
        fast = forest.row_model(m)
        assert fast is not None, m.features_
        rows = b.to_dict("records")
        prev = float("nan")
        for r in rows:
            r["prev_n_tokens"], prev = prev, float(r["n_tokens"])
        want = m.predict(b.assign(prev_n_tokens=[r["prev_n_tokens"] for r in rows]))
        assert [fast.predict(r) for r in rows] == list(want)
        assert [fast.predict(r, r["prev_n_tokens"]) for r in rows[:50]] == list(want[:50])
        odd = [{}, {"n_tokens": None, "kv_tokens": float("nan")}, {**rows[0], "phase": "warmup", "seq_mask": float("nan")},
               {**rows[1], "n_tokens": 0, "n_seqs": 0}, {**rows[2], "kv_tokens": "many", "n_tokens": np.int64(300)},
               {**rows[3], "n_prefill_tokens": 5, "n_decode_tokens": 3, "n_tokens": 8, "phase": None}]
        for r in odd:
            got, py = fast.predict(r), m._predict_one_py(r)
            assert got == py or (got != got and py != py), (r, got, py)
        assert m.predict_one(rows[5]) == want[5] and m._row_model_cache[2] > 0   # (checked against Python)
    with pytest.raises(TypeError):
        fast.predict(rows[0].items())


def test_forest_falls_back_to_lightgbm_where_it_would_differ():
    """Categorical splits are not implemented and a log-link objective's output is not the sum of
    the leaves: no flat forest for those, and row_predictor still answers as LightGBM does."""
    import lightgbm as lgb

    from prismkit.detect import forest

    rng = np.random.default_rng(0)
    X = rng.integers(0, 6, (400, 2)).astype(np.float64)
    y = X[:, 0] * 2 + X[:, 1] + rng.random(400)
    params = {"verbosity": -1, "min_data_in_leaf": 5, "num_threads": 1}
    categorical = lgb.train({**params, "objective": "regression"}, lgb.Dataset(X, y, categorical_feature=[0]), 10)
    poisson = lgb.train({**params, "objective": "poisson"}, lgb.Dataset(X, y), 10)
    plain = lgb.train({**params, "objective": "regression"}, lgb.Dataset(X, y), 10)
    for booster in (categorical, poisson):
        assert forest.compile_forest(booster, 2) is None
        predict = forest.row_predictor(booster, 2)
        assert [predict(r) for r in X[:20].tolist()] == list(booster.predict(X[:20], num_threads=1))
    if forest._forest is not None:
        assert forest.compile_forest(plain, 2) is not None


def test_load_rejects_an_old_format_with_one_clear_line(model, tmp_path):
    import json

    path = model.save(tmp_path / "m.json")
    doc = json.loads(path.read_text())
    doc["version"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="format version 1.*refit"):
        WorkloadModel.load(path)


# -- the detector ----------------------------------------------------------------------------------

def test_online_detector_flags_the_same_batches_as_offline(model, traces):
    b, _ = traces["stall"]
    off = detect(b, model, change_points=False)
    det = OnlineDetector(model)
    flags = np.zeros(len(off.batches), dtype=bool)
    alarms = []
    for i, row in enumerate(off.batches[list(b.columns)].to_dict("records")):
        v = det.update(row)
        assert v.index == i
        flags[v.flagged] = True
        if v.alarm is not None:
            alarms.append(v.alarm.alarm_idx)
    det.finish()
    assert flags.sum() > 5
    assert np.array_equal(flags, off.flags)
    assert alarms == off.anomalies["alarm_idx"].tolist()
    assert [s.idx for s in det.shifts] == off.workload_shifts["idx"].tolist()


def test_online_detector_has_bounded_state(model):
    det = OnlineDetector(model, DetectorConfig(max_history=5))
    rng = np.random.default_rng(0)
    exp = 20e6
    for i in range(5000):
        slow = 3.0 if (i // 50) % 2 else 1.0   # alternating slow stretches: many anomalies
        det.step(i * 30_000_000, int(exp * slow * rng.uniform(0.98, 1.02)), exp, "decode", (4.0, 4.0, 800.0))
    assert len(det.anomalies) == 5
    assert len(det._ring) <= det._ring.maxlen
    assert det._shift.buf.maxlen == 2 * det.config.shift_window


def test_cusum_catches_a_small_persistent_slowdown(model):
    """A 22% slowdown stays under the enter limit (~+27%) most of the time: the CUSUM raises it within a few
    batches and flags back to where it began; normal batches raise nothing; old files run without it."""
    det = OnlineDetector(model, DetectorConfig(k_severe=None, cusum=True))
    cs = det.cusum
    assert cs is not None and cs.h >= 2 * cs.clip
    rng = np.random.default_rng(1)
    exp, alarms, flags = 20e6, [], set()
    for i in range(400):
        slow = 1.22 if 300 <= i < 360 else 1.0
        v = det.step(i * 25_000_000, int(exp * slow * np.exp(rng.normal(0, 0.03))), exp, "decode")
        flags.update(v.flagged)
        if v.alarm is not None:
            alarms.append(v.alarm)
    assert len(alarms) == 1 and alarms[0].trigger == "cusum", alarms
    assert 300 < alarms[0].alarm_idx <= 310 and alarms[0].start_idx == 300, alarms[0]
    assert min(flags) == 300 and len(flags) >= 50
    old = {k: v for k, v in model.calibration_.items() if k != "cusum_resid"}   # a model saved before the CUSUM
    assert OnlineDetector(model, DetectorConfig(cusum=True), calibration=old).cusum is None
    assert OnlineDetector(model).cusum is None   # off by default


def test_injected_faults_are_detected(model, traces):
    lags = []
    for name in ("cpu_contention", "stall"):
        b, labels = traces[name]
        s = evaluate_trace(b, labels, model, min_slowdown=1.2)
        res, ours = s["_result"], s["model"]
        assert ours["faults"] >= 1
        assert ours["faults_detected"] == ours["faults"], ours["per_label"]
        assert ours["batch_f1"] >= 0.9, (name, ours)
        assert ours["false_alarms"] <= 1, (name, res.anomalies)
        lags += [r["lag_batches"] for r in ours["per_label"] if r["detected"]]
        # the model beats both baselines on the same trace
        assert ours["batch_f1"] > s["rolling-median 15%"]["batch_f1"]
        assert ours["batch_f1"] > s["ruptures raw"]["batch_f1"]
        an = res.anomalies
        assert (an["slowdown"] > 1.1).all() and an["confidence"].between(0, 1).all()
        assert (an["end"] >= an["start"]).all() and (an["n_flagged"] <= an["n_batches"]).all()
    # the goal: median detection lag at most 3 batches over the injected faults
    assert np.median(lags) <= 3, lags
    # the strong CPU contention window reads as about 2x slower, the medium one about 1.3x
    res = detect(traces["cpu_contention"][0], model)
    long = res.anomalies[res.anomalies["n_flagged"] > 30]["slowdown"].sort_values().to_numpy()
    assert len(long) >= 2 and 1.5 < long[-1] < 3.0 and 1.2 < long[-2] < 1.5, res.anomalies
    assert (res.change_points["kind"] == "residual").sum() >= 2   # ruptures sees the fault windows


def test_workload_only_changes_are_shifts_not_anomalies(model, traces):
    for name in ("workload_concurrency", "workload_prompts"):
        b, labels = traces[name]
        res = detect(b, model)
        lab = labels[labels["kind"] == "workload"].iloc[0]
        an = res.anomalies
        # nothing while the workload changed; at most a lone stalled batch elsewhere (these recordings
        # were made on a shared machine: an unlabelled 60-100 ms stall of the server can happen)
        assert not ((an["start"] < lab["end_ns"]) & (an["end"] > lab["start_ns"])).any(), (name, an)
        assert len(an) <= 1 and (an["n_flagged"] == 1).all() and (an["trigger"] == "severe").all(), (name, an)
        inside = (res.batches["ts"] < lab["end_ns"]) & (res.batches["ts"] + res.batches["dur"] > lab["start_ns"])
        assert not res.batches.loc[inside, "flag"].any()
        sh = res.workload_shifts
        # the step up is reported near the label start, latency followed as predicted
        near = sh[(sh["ts"] - lab["start_ns"]).abs() < 3e9]
        assert len(near) >= 1, (name, sh)
        up = near.iloc[0]
        assert up["expected_change"] > 1.5 and up["explained"], up
        if name == "workload_concurrency":
            assert up["n_seqs_after"] > 2.5 * up["n_seqs_before"]
        # the raw-latency baselines do raise alarms during the workload change
        s = evaluate_trace(b, labels, model)
        assert s["model"]["workload_label_alarms"] == 0
        assert s["rolling-median 15%"]["workload_label_alarms"] > 0


def test_prism_eval_detect_prints_both_baselines(tmp_path, model):
    path = model.save(tmp_path / "m.json")
    out = subprocess.run([PRISM, "eval", "detect", str(sample("stall")), "--model", str(path),
                          "--min-slowdown", "1.2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("batch_f1", "window_f1", "lag_batches_median", "lag_ms_median", "workload_label_alarms",
                   "rolling-median 15%", "ruptures raw", "faults (model)"):
        assert needle in text, text
    line = next(ln for ln in text.splitlines() if ln.startswith("model "))
    assert float(line.split()[3]) >= 0.9   # batch_f1 of the model row
    bad = subprocess.run([PRISM, "eval", "detect", str(tmp_path / "nope.pftrace")], capture_output=True, text=True)
    assert bad.returncode != 0 and "does not exist" in bad.stderr


# -- CPU weight, with and without an autogroup ----------------------------------------------------

def test_cpu_weight_with_and_without_an_autogroup():
    """set_cpu_weight uses the session's autogroup where there is one and each thread's nice where
    there is none (a CI runner started straight from PID 1 is in the root group: its
    /proc/self/autogroup is empty), and its undo restores what was there."""
    import sys
    import time

    from prismkit.target.priority import autogroup_nice, set_cpu_weight, set_threads_nice

    require(os.geteuid() == 0, "root (negative nice)")
    assert Path("/proc/2/autogroup").read_text().strip() == ""    # kthreadd: the root group
    assert autogroup_nice(2) is None
    assert autogroup_nice(999_999_999) is None

    child = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                              "threading.Thread(target=time.sleep, args=(60,)).start()\ntime.sleep(60)"],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 2
        group = autogroup_nice(child.pid)
        assert group == 0                                   # a new session: its own autogroup
        undo = set_cpu_weight(child.pid, -4)
        assert undo is not None and autogroup_nice(child.pid) == -4
        assert all(os.getpriority(os.PRIO_PROCESS, t) == 0 for t in tids)
        undo()
        assert autogroup_nice(child.pid) == 0

        undo = set_threads_nice(child.pid, 7)               # the path taken where there is no autogroup
        assert undo is not None
        assert [os.getpriority(os.PRIO_PROCESS, t) for t in tids] == [7, 7]
        assert autogroup_nice(child.pid) == 0
        undo()
        assert [os.getpriority(os.PRIO_PROCESS, t) for t in tids] == [0, 0]
    finally:
        child.kill()
        child.wait()


def test_same_workload_ratio_measures_a_slowdown_without_the_model(baseline):
    """The model-free yardstick: a block of normal batches runs about as fast as its same-workload
    peers elsewhere in the recording, and the same block made 1.5x slower measures 1.5x."""
    from prismkit.detect import same_workload_ratio

    b = baseline.sort_values("ts").reset_index(drop=True)
    block = b.iloc[len(b) // 2: len(b) // 2 + 200]
    peers = b.drop(block.index)
    r, n = same_workload_ratio(block, peers)
    assert n >= 100 and 0.9 < r < 1.1, (r, n)
    slow = block.assign(dur=block["dur"] * 1.5)
    r_slow, n_slow = same_workload_ratio(slow, peers)
    assert n_slow == n and r_slow == pytest.approx(1.5 * r, rel=1e-9)
    # no peers at all: NaN, none compared
    r_none, n_none = same_workload_ratio(block.assign(n_seqs=99), peers)
    assert n_none == 0 and np.isnan(r_none)


# -- a fresh recording with a real injected fault ----------------------------------------------------

def _host_speed_drift(batches, fault_start: int, fault_end: int) -> list[tuple[float, float, int]]:
    """The host's speed outside the fault, measured without the model: per 2 s segment before the
    fault and per 1.5 s segment after it, (segment start in s from the fault's start, the segment's
    batches' median duration over same-workload batches elsewhere before the fault, how many had
    such peers). On this shared VM the server's speed sometimes drifts 1.2-1.7x over seconds with
    the same workload and no other process of the guest taking its CPUs (a slowdown from outside the
    guest): then batches after the fault are really slower than the baseline fitted before it, and
    alarms on them are not false alarms."""
    from prismkit.detect import same_workload_ratio

    t = ((batches["ts"] - fault_start) / 1e9).to_numpy()
    outside = ((batches["ts"] + batches["dur"] <= fault_start) | (batches["ts"] >= fault_end)).to_numpy()
    t_end = (fault_end - fault_start) / 1e9
    pre = batches[outside & (t < 0)]
    out = []
    for lo, hi in [(-6, -4), (-4, -2), (-2, 0), (t_end, t_end + 1.5), (t_end + 1.5, t_end + 3.2)]:
        seg = outside & (t >= lo) & (t < hi)
        r, n = same_workload_ratio(batches[seg], pre.drop(batches.index[seg], errors="ignore"), tokens_tol=0.05)
        out.append((round(lo, 1), round(r, 3), n))
    return out


@pytest.mark.server
@pytest.mark.bpf
def test_fresh_recording_with_injected_fault(server, bpf_ok, tmp_path):
    """Record the test server under load: normal, then a CPU hog on one of its CPUs for 5 s, then normal.

    Long prompts, so that batches are tens of ms (a 0.3 ms decode of the tiny
    model sits inside one scheduler slice: contention shows between its
    batches, not in them). While recording, the server's autogroup is raised
    (restored after) so that other work on a shared machine does not drown
    the fault; the hog runs at the same priority, on one CPU (llama.cpp's
    threads meet at a barrier after every graph node, so sharing one CPU
    slows every step several times). The model is fitted on the
    recording's first, normal, seconds; the fault must be found at once, with
    few false alarms.

    False alarms are counted only on a recording where the host kept its
    speed outside the fault (_host_speed_drift within 15%, measured without
    the model); a recording where it did not is recorded again, up to three
    times (CI failed once on such a recording: the server ran 1.2-1.3x slower
    for seconds after the fault on the same workload, and the detector
    flagged it). The fault must be detected on every recording.
    """
    from prismkit.detect.scenarios import Injection, LoadPhase, isolate, run_scenario
    from recorders.packs.llama_cpp import LlamaCppPack

    attempts = []
    for attempt in range(3):
        out = tmp_path / f"fresh{attempt}.pftrace"
        cpus = set(range(os.cpu_count() or 1))
        undo = isolate(server.pid, cpus, nice=-19, engine_only=False)
        try:
            run_scenario(server.pid, server.url, out,
                         [LoadPhase(14, 4, prompt="uniform:1000:1800", output="fixed:1", requests_per_s=8)],
                         [Injection(6, 5, "cpu_contention", {"hog_autogroup_nice": -19, "n": 1})],
                         packs=[LlamaCppPack()], server_cpus=cpus)
        finally:
            undo()
        labels = read_labels(out.with_suffix(".jsonl"))
        assert list(labels["scenario"]) == ["cpu_contention"]
        b = load_trace(out).batches.sort_values("ts")
        fault = labels.iloc[0]
        before = b[b["ts"] + b["dur"] < fault["start_ns"]]
        assert len(before) >= 60, len(before)
        m = WorkloadModel().fit(before)
        s = evaluate_trace(b, labels, m)
        ours, res = s["model"], s["_result"]
        drift = _host_speed_drift(b, int(fault["start_ns"]), int(fault["end_ns"]))
        print(f"attempt {attempt}:", ours, "host speed per segment:", drift)
        assert ours["faults_detected"] == 1, (ours, res.anomalies)
        # Lag and recall from the fault's onset in the batches: the first batch of the window from which
        # 3 of 4 batches ran 1.5x slower (the detector's persistence rule, m=3 of n=4). The hog does not
        # always bite at once: in 2 of 12 recordings the window's first 3-4 batches (0.1-0.2 s) ran at
        # normal speed, then 40x, and counted from the label's start the lag was 4-6 batches and the
        # recall 0.43; in one, 2 batches ran 2x, the next 2 at normal speed, then 2.4x and 14-53x.
        # Recall: share of the batches the fault slowed 1.5x or more that are flagged.
        B = res.batches
        inw = np.nonzero(((B["ts"] + B["dur"]) > fault["start_ns"]).to_numpy() & (B["ts"] < fault["end_ns"]).to_numpy())[0]
        is_slow = B["ratio"].to_numpy()[inw] >= 1.5
        slowed = inw[is_slow]
        sustained = [i for i in range(len(inw)) if is_slow[i] and is_slow[i:i + 4].sum() >= min(3, len(inw) - i)]
        assert sustained, ("the fault never slowed 3 of 4 batches 1.5x", B["ratio"].to_numpy()[inw])
        onset = int(inw[sustained[0]])
        # the fault took: the window's batches took 1.5x their expected time in all (not the median batch's
        # ratio: in one recording 6 batches of the first 0.25 s ran 1.0-1.6x and the next 4, 14-43x)
        took = B["dur"].to_numpy()[inw].sum() / B["expected"].to_numpy()[inw].sum()
        assert took > 1.5, (took, ours["per_label"])
        an = res.anomalies[(res.anomalies["end_idx"] >= onset) & (res.anomalies["start_idx"] <= inw[-1])]
        assert len(an) and int(an["alarm_idx"].min()) - onset <= 3, (onset, res.anomalies, ours["per_label"])
        assert B["flag"].to_numpy()[slowed].mean() >= 0.6, (slowed, res.anomalies)
        attempts.append(drift)
        if all(n < 8 or 1 / 1.15 <= r <= 1.15 for _, r, n in drift):
            break
    else:
        pytest.fail(f"the host's speed drifted more than 15% outside the fault in 3 recordings: {attempts}")
    # few false alarms on a steady host: at most one anomaly away from the fault (a 0.1-0.2 s preemption
    # by another process still happens), and few batches flagged outside it
    assert ours["false_alarms"] <= 1, res.anomalies
    assert ours["fp"] <= max(5, 0.1 * (len(b) - ours["tp"] - ours["fn"])), (ours, res.anomalies)
