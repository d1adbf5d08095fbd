"""Root cause of each latency anomaly: SHAP attribution of a latency model over
per-batch workload and system features, mapped to a cause vocabulary.

    res = prismkit.explain(trace)                  # anomalies from prismkit.detect, or pass them
    res = prismkit.explain(trace, anomalies=df)    # df with start/end (ns) columns
    res.causes        # one row per anomaly x cause: rank, cause, share, ms, confidence, evidence
    res.top           # one row per anomaly: its top cause
    res.shap          # per anomaly x feature: mean SHAP (anomaly) - mean SHAP (baseline), ns

Method
------
1. ``batch_features`` gives one row per batch: workload columns and what the
   system did to the server's threads while the batch ran (off-CPU time split
   into preempted by another process / by the idle task (throttling) / blocked,
   run-queue waits, faults, throttled ns, PSI stall shares, syscall time, ...).
2. A LightGBM model of batch latency is fit on all batches of the trace (when
   prismkit.detect's WorkloadModel is given, on the residual
   latency - expected(workload) instead, so that the workload is explained first).
3. SHAP TreeExplainer values of the anomaly's batches minus those of the
   baseline batches give, per feature, how many ns of the slowdown it accounts for.
4. Features are grouped into causes (features.FEATURE_GROUPS) with rules that
   use the physical meaning of the evidence:
   - time preempted by another process (and run-queue waits) -> cpu_contention;
   - time preempted with the CPU going idle, cgroup throttled ns -> cpu_throttle;
   - group stops -> stall, always: intervals in which (nearly) all of the
     server's threads, idle ones included, went off CPU at the same instant and
     came back at the same instant (features.group_stops). Only a process-wide
     stop does that (SIGSTOP/SIGCONT, the cgroup freezer, a ptrace stop): every
     thread is woken to take the stop and woken again by the continue. Page
     faults and I/O block one thread at a time, and a broadcast wake-up makes
     slices end together but not start together. The stopped ns per batch
     beyond the baseline are the stall's even where the model put them on
     another feature, and a stop keeps the batch thread's blocked time as stall
     whatever the fault / I/O counters do;
   - otherwise the batch thread blocked inside its batch -> stall, unless major
     faults or memory pressure rose with it (-> memory_pressure) or I/O
     pressure rose (-> io_contention);
   - cgroup throttled ns or throttled periods (cgroup.nr_throttled) rising
     -> cpu_throttle: the kernel's own account of the quota running out; a
     throttled thread leaves the CPU runnable, so its throttled time appears
     as 'preempted by another process' and is moved from cpu_contention;
   - PSI memory / major faults -> memory_pressure; PSI io / io syscalls -> io_contention;
   - a slowdown the model cannot place on any off-CPU feature, with the work
     unchanged and the batch thread on CPU longer per token -> memory_bandwidth;
   - workload columns -> workload.
   A cause whose pressure signal moved strongly against the baseline but whose
   SHAP share is small still appears (lower ranks) with its evidence.
5. Each feature's SHAP delta counts in proportion to how clearly it moved
   (z of the anomaly's mean against baseline windows of as many batches, z / 2
   capped at 1) and never for more than it measured: a feature in ns of the
   batch window (preempted, blocked, stopped, run-queue wait) for at most its
   rise per batch; a share of time (PSI, throttled share, syscall share) for
   at most its rise x the anomaly's mean batch latency. A model leaning on a
   feature that moved 0.2% of the time cannot make it explain a 25% slowdown.

Known limits (measured on the sample recordings, a shared 2-core machine):
memory_bandwidth injected with workers pinned to the server's CPUs and not
SCHED_IDLE takes CPU time from the server like cpu_contention; without PMU
counters (IPC, LLC misses, memory bandwidth) the only trace of the streaming is
a rise of the server's on-CPU time per unit of work, which the recordings show
in some windows and not in others -- those read as cpu_contention here. And
on a machine whose background load changes by itself, a window's extra
preemption by long-running neighbours is ranked as cpu_contention whatever
was injected alongside it.

Streaming on the CPUs the server does *not* use (``memory_bandwidth
-p cpus=others``: server started with ``prism target start --cpus 0 --threads 1``,
one worker on CPU 1) does not fix that here. A controlled A/B
(scripts/measure_bandwidth_interference.py: demo model, one request at a time,
CPU 1 idle / busy loop / streamer, 2 x 512 MiB buffers) gave the server's
on-CPU time per token, streamer vs idle: -0.2%, +1.5%, +1.4%, +2.0%, +7% and
+13% (median, six runs over an hour; one run p = 1e-4) with episodic rounds of
+30-75%, while the busy loop never raised it (-2% .. +0.3%); the streamer's
own copy ran at ~42-48 GB/s, the server's decode reads ~42 GB/s of weights,
and the host has bandwidth for both most of the time. The tiny model (weights
in L2) showed nothing. Recorded as RCA windows (closed loop c=4, three 4-s
windows, two traces) the on-CPU time per decode token rose +1%, +5%, +5%, +1%,
+30%, +7%, while the batches' 1.4-2.1x slowdown came from other processes
displaced from CPU 1 onto the server's CPU (preempted by others 0-1.5 ->
13-18 ms per batch): cpu_contention, truthfully, and ranked so (memory_bandwidth
top-1 1/6, the +30% window). Only an on-CPU rise well beyond what context
switches alone cause (cpu_contention windows show up to +5%) can name
memory_bandwidth, so the sample set keeps the recordings with workers on the
server's CPUs.

Two more ways to see the streaming, measured and not kept: a loaded-latency
canary (a pointer chase over 64 MiB, 1,000 loads every 50 ms) rose from 252 to
289 ns (p50) with a streamer on the other CPU of an idle machine, but with the
server under load it read 259 ns with nothing injected, 259 ns with the
streamer and 245 ns with a busy loop: the streamer displaces the server's own
weight streaming rather than adding to it. And a model small enough for the
shared L3 (a 17 MB GGUF, dim 384, 4 layers) decoded as fast with the streamer
on the other CPU as without it (on-CPU per token -0.7%, busy loop -1.0%;
scripts/measure_bandwidth_interference.py --model THAT.gguf): the two vCPUs
do not contend for cache or bandwidth on this host.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .features import FEATURE_GROUPS, SYSTEM, WORKLOAD, batch_features, preemptors

CAUSES = ["cpu_contention", "cpu_throttle", "memory_bandwidth", "stall", "memory_pressure", "io_contention",
          "workload", "unknown"]
MS = 1e6


@dataclass
class Explanation:
    causes: pd.DataFrame           # anomaly x cause rows, ranked
    shap: pd.DataFrame             # anomaly x feature: delta SHAP (ns), value in anomaly and baseline
    features: pd.DataFrame         # per batch features (+ anomaly_id, baseline flag)
    anomalies: pd.DataFrame        # the anomalies explained (start, end, n_batches, ...)
    timing: dict = field(default_factory=dict)
    model: object = None
    explainer: object = None
    feature_names: list = field(default_factory=list)

    @property
    def top(self) -> pd.DataFrame:
        if self.causes.empty:
            return self.causes
        return self.causes[self.causes["rank"] == 1].reset_index(drop=True)

    def shap_values(self, anomaly_id: int):
        """shap.Explanation for the batches of one anomaly (for waterfall / beeswarm plots)."""
        import shap

        f = self.features
        X = f.loc[f["anomaly_id"] == anomaly_id, self.feature_names]
        sv = self.explainer(X)
        return shap.Explanation(values=sv.values, base_values=sv.base_values, data=X.to_numpy(),
                                feature_names=self.feature_names)

    def anomaly_shap(self, anomaly_id: int):
        """One shap.Explanation row: the anomaly's mean batch against the baseline (for a waterfall)."""
        import shap

        d = self.shap[self.shap["anomaly_id"] == anomaly_id].set_index("feature").reindex(self.feature_names)
        base = float(self.features.loc[self.features["baseline"], "pred"].mean())
        return shap.Explanation(values=(d["delta_ns"].to_numpy() / MS), base_values=base / MS,
                                data=d["value"].to_numpy(), feature_names=self.feature_names)

    def perfetto_range(self, anomaly_id: int) -> str:
        a = self.anomalies.loc[anomaly_id]
        return f"ts {int(a['start'])} .. {int(a['end'])} ns (trace clock), {(a['end'] - a['start']) / MS:.1f} ms"


def _anomalies_from(trace, anomalies, labels) -> pd.DataFrame:
    if anomalies is None and labels is not None:
        from ..inject.labels import read_labels

        lab = labels if isinstance(labels, pd.DataFrame) else read_labels(labels)
        lab = lab[lab["kind"] == "fault"] if "kind" in lab else lab
        anomalies = pd.DataFrame({"start": lab["start_ns"].to_numpy(np.int64), "end": lab["end_ns"].to_numpy(np.int64),
                                  "scenario": lab["scenario"].to_numpy(object)})
    if anomalies is None:
        try:
            from ..detect import detect
        except ImportError as err:  # pragma: no cover - detect not installed
            raise ValueError("no anomalies given and prismkit.detect is unavailable") from err
        anomalies = detect(trace).anomalies
    if hasattr(anomalies, "anomalies"):
        anomalies = anomalies.anomalies
    a = anomalies.copy()
    if "start" not in a and "start_ns" in a:
        a = a.rename(columns={"start_ns": "start", "end_ns": "end"})
    return a.reset_index(drop=True)


def _baseline_mask(f: pd.DataFrame, anomalies: pd.DataFrame, baseline, margin_ns: int) -> np.ndarray:
    ts, end = f["ts"].to_numpy(), f["end"].to_numpy()
    if baseline is None:
        m = np.ones(len(f), dtype=bool)
        for s, e in zip(anomalies["start"].to_numpy(np.int64), anomalies["end"].to_numpy(np.int64)):
            m &= ~((end > s - margin_ns) & (ts < e + margin_ns))
        return m
    if isinstance(baseline, (tuple, list)) and len(baseline) == 2:
        return (ts >= baseline[0]) & (end <= baseline[1])
    return np.asarray(baseline, dtype=bool)


def _fmt_ns(ns: float) -> str:
    return f"{ns / MS:.1f} ms" if abs(ns) >= 1e5 else f"{ns / 1e3:.0f} us"


def explain(trace, anomalies=None, baseline=None, *, labels=None, model=None, margin_s: float = 0.5,
            max_causes: int = 4, seed: int = 0) -> Explanation:
    """Ranked root causes of each anomaly (see the module docstring).

    anomalies: DataFrame with start/end ns (prismkit.detect's table works), a
    DetectionResult, or None (labels if given, else prismkit.detect(trace)).
    baseline: None (all batches outside the anomalies, with a margin), a
    (start_ns, end_ns) pair, or a boolean mask over trace batches.
    model: an optional fitted prismkit.detect WorkloadModel: explain its residual.
    """
    import lightgbm as lgb
    import shap

    t0 = time.perf_counter()
    f = batch_features(trace)
    t_feat = time.perf_counter() - t0
    an = _anomalies_from(trace, anomalies, labels)
    f["anomaly_id"] = -1
    ts, end = f["ts"].to_numpy(), f["end"].to_numpy()
    for i, (s, e) in enumerate(zip(an["start"].to_numpy(np.int64), an["end"].to_numpy(np.int64))):
        f.loc[(end > s) & (ts < e) & (f["anomaly_id"].to_numpy() < 0), "anomaly_id"] = i
    f["baseline"] = _baseline_mask(f, an, baseline, int(margin_s * 1e9)) & (f["anomaly_id"].to_numpy() < 0)

    y = f["latency_ns"].to_numpy(dtype=np.float64)
    expected = None
    if model is not None:
        try:
            expected = np.asarray(model.predict(trace.batches), dtype=np.float64)
            if len(expected) != len(f):
                expected = None
        except Exception:  # noqa: BLE001 - a model of another shape: fall back to raw latency
            expected = None
    names = [c for c in WORKLOAD + SYSTEM if c in f and f[c].nunique() > 1]
    X = f[names].astype(np.float64)
    target = y - expected if expected is not None else y
    t1 = time.perf_counter()
    gbm = lgb.LGBMRegressor(n_estimators=150, learning_rate=0.08, num_leaves=15, min_child_samples=5,
                            subsample=0.9, subsample_freq=1, random_state=seed, verbose=-1, n_jobs=1)
    gbm.fit(X, target)
    explainer = shap.TreeExplainer(gbm)
    f["pred"] = gbm.predict(X)
    t_fit = time.perf_counter() - t1

    base = f["baseline"].to_numpy()
    if not base.any():
        base = f["anomaly_id"].to_numpy() < 0
    wl = [c for c in WORKLOAD if c in f]
    on = lgb.LGBMRegressor(n_estimators=60, learning_rate=0.1, num_leaves=7, min_child_samples=5,
                           random_state=seed, verbose=-1, n_jobs=1)
    on.fit(f.loc[base, wl], f.loc[base, "main_oncpu_ns"])
    f["oncpu_expected"] = on.predict(f[wl])
    on.fit(f.loc[base, wl], f.loc[base, "latency_ns"])
    f["latency_expected"] = on.predict(f[wl])
    rows, shap_rows, per_anomaly_s = [], [], []
    rng = np.random.default_rng(seed)

    def sample(mask: np.ndarray, k: int = 400) -> np.ndarray:
        """At most k of the rows in mask (SHAP cost grows with rows; a mean needs a few hundred)."""
        idx = np.flatnonzero(mask)
        return np.sort(rng.choice(idx, k, replace=False)) if len(idx) > k else idx

    sv_base = explainer.shap_values(X.iloc[sample(base)]).mean(axis=0) if base.any() else np.zeros(len(names))
    Xb = X[base]
    fb = f[base]
    lat_base = float(np.median(y[base])) if base.any() else float(np.median(y))
    pid = int(pd.to_numeric(trace.batches["pid"]).mode().iloc[0]) if len(trace.batches) else None
    for i, a in an.iterrows():
        ta = time.perf_counter()
        m = f["anomaly_id"].to_numpy() == i
        n_b = int(m.sum())
        if n_b == 0:
            rows.append(dict(anomaly_id=i, start=int(a["start"]), end=int(a["end"]), n_batches=0, rank=1,
                             cause="unknown", share=1.0, ms=0.0, confidence=0.0,
                             evidence="no batches ran in this window (the server did no work)"))
            per_anomaly_s.append(time.perf_counter() - ta)
            continue
        sv = explainer.shap_values(X.iloc[sample(m)])
        delta = sv.mean(axis=0) - sv_base
        va, vb = X[m].mean(axis=0), Xb.mean(axis=0)
        for j, nm in enumerate(names):
            shap_rows.append(dict(anomaly_id=i, feature=nm, cause=FEATURE_GROUPS.get(nm, "unknown"),
                                  delta_ns=float(delta[j]), value=float(va.iloc[j]), baseline=float(vb.iloc[j])))
        fa = f[m]
        rows += _causes_for(i, a, n_b, dict(zip(names, delta)), fa, fb, lat_base, trace, pid, max_causes)
        per_anomaly_s.append(time.perf_counter() - ta)
    causes = pd.DataFrame(rows)
    timing = {"features_s": t_feat, "fit_s": t_fit, "per_anomaly_s": per_anomaly_s,
              "total_s": time.perf_counter() - t0,
              "per_anomaly_total_s": (time.perf_counter() - t0) / max(len(an), 1)}
    return Explanation(causes=causes, shap=pd.DataFrame(shap_rows), features=f, anomalies=an, timing=timing,
                       model=gbm, explainer=explainer, feature_names=names)


def _window_z(fa: pd.DataFrame, fb: pd.DataFrame, cols) -> dict:
    """Per column: (anomaly mean - baseline mean) / std of means of baseline runs of as many batches."""
    n = max(1, min(len(fa), len(fb) // 3))
    out = {}
    if len(fb) < 4:
        return {c: 3.0 for c in cols}
    rb = fb[cols].rolling(n, min_periods=n).mean().iloc[n - 1::max(1, n // 4)]
    sd = rb.std(ddof=1).to_numpy()
    # a floor at 5% of the baseline level, so that a feature flat in the baseline does not give z = inf
    # for any tiny movement
    base = fb[cols].mean().to_numpy()
    floor = np.maximum(0.05 * np.abs(base), 1e-9)
    d = fa[cols].mean().to_numpy() - base
    zz = d / np.maximum(np.nan_to_num(sd, nan=0.0), floor)
    return dict(zip(cols, zz))


# features measured in ns of the batch window, and shares of the window's time: the SHAP credit of such a
# feature cannot exceed what it measured (a feature that rose by 10 ms per batch cannot account for 50 ms)
_NS_FEATURES = {"preempted_other_ns", "preempted_self_ns", "preempted_idle_ns", "main_blocked_ns", "runq_wait_ns",
                "wake_wait_ns", "stopped_ns"}
_SHARE_FEATURES = {"psi_cpu", "psi_memory", "psi_io", "throttled_share", "io_syscall_share", "syscall_share",
                   "runq_share"}


def _measured_bound(name: str, mv: dict, lat_mean: float) -> float:
    """Most ns per batch a feature can account for: its measured rise (ns features) or its rise in share of
    the time x the anomaly's mean batch latency (share features); unbounded for counts and the workload."""
    if name not in mv:
        return np.inf
    a, b = mv[name]
    if name in _NS_FEATURES:
        return max(a - b, 0.0)
    if name in _SHARE_FEATURES:
        return max(a - b, 0.0) * lat_mean
    return np.inf


def _rel(a: float, b: float) -> float:
    return (a - b) / max(abs(b), 1e-9)


def _causes_for(i, a, n_b, delta: dict, fa: pd.DataFrame, fb: pd.DataFrame, lat_base: float, trace, pid,
                max_causes: int) -> list[dict]:
    """Group per-feature SHAP deltas into causes with the rules of the module docstring; evidence in words."""
    mean = lambda df, c: float(df[c].mean()) if c in df and len(df) else 0.0  # noqa: E731
    lat_a = float(fa["latency_ns"].median())
    slowdown = lat_a / max(lat_base, 1.0)
    # measured movements against the baseline (per batch means), and how far each is beyond what
    # baseline windows of the same number of batches show by chance (z of the window mean)
    cols = [c for c in fa.columns
            if c not in ("ts", "end", "tid", "anomaly_id", "baseline") and pd.api.types.is_numeric_dtype(fa[c])]
    mv = {c: (mean(fa, c), mean(fb, c)) for c in cols}
    z = _window_z(fa, fb, cols)

    # SHAP delta per feature, kept in proportion to how clearly the feature moved (w = z / 2, capped at 1):
    # a feature (workload included) that moved no more than it does by chance cannot be the cause,
    # however much the model leans on it
    score = {c: 0.0 for c in CAUSES}
    lat_mean = mv["latency_ns"][0]
    for nm, d in delta.items():
        w = float(np.clip(z.get(nm, 0.0) / 2.0, 0.0, 1.0))
        d = min(d, _measured_bound(nm, mv, lat_mean))
        score[FEATURE_GROUPS.get(nm, "unknown")] += d * w if d > 0 else 0.0
    lat_excess_mean = max(lat_mean - mv["latency_ns"][1], 0.0)

    def strong(col, min_delta):
        return mv[col][0] - mv[col][1] > min_delta and z.get(col, 0.0) > 3.0

    mem_evidence = strong("major_faults_per_s", 1.0) or strong("psi_memory", 0.01)
    io_evidence = strong("psi_io", 0.01) and not mem_evidence
    throttle_evidence = strong("throttled_share", 0.01) or strong("throttled_periods_per_s", 0.5)
    # group stops (all the server's threads off CPU at the same instant and back at the same instant):
    # the process was stopped as a whole -- no page fault, I/O wait or competitor does that
    stop_evidence = strong("stopped_ns", 1e6)

    # blocked time of the batch thread: a stop (stall) unless the kernel says why
    blocked = score["stall"]
    if stop_evidence:
        pass
    elif mem_evidence:
        score["memory_pressure"] += blocked
        score["stall"] = 0.0
    elif io_evidence:
        score["io_contention"] += blocked
        score["stall"] = 0.0

    # throttled: the quota took the CPU away; on a busy machine another task runs meanwhile, so the
    # throttled time shows up as 'preempted by another process'. Move up to the throttled ns per batch.
    if throttle_evidence:
        thr = (mv["throttled_share"][0] - mv["throttled_share"][1]) * lat_mean   # measured ns per batch
        moved = min(max(score["cpu_contention"], 0.0), thr)
        score["cpu_contention"] -= moved
        score["cpu_throttle"] += max(moved, thr)

    # the workload gets no more credit than its change costs on normal batches: the baseline-only
    # workload model's expected latency, anomaly minus baseline (a fault that backs requests up
    # makes bigger batches, and their extra time under the fault is the fault's)
    wl_cost = max(float(fa["latency_expected"].mean() - fb["latency_expected"].mean()), 0.0)
    score["workload"] = min(score["workload"], wl_cost)

    # on-CPU time the workload does not account for: the compute itself got slower (memory bandwidth,
    # caches). Expected on-CPU time comes from a workload-only model fit on the baseline batches.
    oncpu_a, oncpu_b = mv["main_oncpu_ns"][0], float(fa["oncpu_expected"].mean())
    oncpu_excess = oncpu_a - oncpu_b
    z_on = _window_z(fa.assign(r=fa["main_oncpu_ns"] - fa["oncpu_expected"]),
                     fb.assign(r=fb["main_oncpu_ns"] - fb["oncpu_expected"]), ["r"]).get("r", 0.0)
    # (not when the batch thread was stopped/blocked far beyond baseline: after a stop the engine's
    # threads spin at their barriers for peers still waiting to run, which inflates on-CPU time)
    # (a rise of a few us per batch against a baseline that never blocked is no stop: at least 1 ms and
    # 2% of the anomaly's mean batch latency)
    blk_a, blk_b = mv["main_blocked_ns"]
    stopped = (z.get("main_blocked_ns", 0.0) > 3.0 and blk_a > 2 * blk_b
               and blk_a - blk_b > max(1e6, 0.02 * lat_mean))
    compute_slower = (oncpu_excess > 0 and oncpu_a > 1.15 * oncpu_b and z_on > 1.0 and not throttle_evidence
                      and not stopped)
    if compute_slower:
        # with page faults soaring, the extra on-CPU time is the kernel mapping pages back in
        # (memory pressure); otherwise the compute itself ran slower (memory bandwidth / caches)
        score["memory_pressure" if mem_evidence else "memory_bandwidth"] += \
            oncpu_excess * float(np.clip(z_on / 2.0, 0.0, 1.0))

    # who the competitors are: CPU taken while the system is under memory pressure (PSI memory, major
    # faults far above baseline) is memory pressure; by processes that are themselves I/O-bound (system
    # I/O pressure rose with them) is I/O contention; by processes that also slowed the server's compute while it ran
    # (cache / memory bandwidth) is memory-bandwidth interference; otherwise plain CPU contention.
    if score["cpu_contention"] > 0 and not throttle_evidence:
        if mem_evidence:   # reclaim / refault work and the evicting process: memory pressure
            score["memory_pressure"] += score["cpu_contention"]
            score["cpu_contention"] = 0.0
        elif io_evidence:
            score["io_contention"] += score["cpu_contention"]
            score["cpu_contention"] = 0.0
        elif compute_slower and not mem_evidence:
            score["memory_bandwidth"] += score["cpu_contention"]
            score["cpu_contention"] = 0.0

    # a pressure signal far outside the baseline is evidence even when the model has too few
    # batches to lean on it: a floor of 10% of the mean excess latency
    for cause, flag in (("memory_pressure", mem_evidence), ("io_contention", io_evidence),
                        ("cpu_throttle", throttle_evidence), ("stall", stop_evidence)):
        if flag:
            score[cause] = max(score[cause], 0.1 * lat_excess_mean)
    # a group stop is measured directly: the stopped ns per batch beyond the baseline are the stall's,
    # whatever share of them the model placed elsewhere
    if stop_evidence:
        score["stall"] = max(score["stall"], min(mv["stopped_ns"][0] - mv["stopped_ns"][1], lat_excess_mean))

    total_pos = sum(max(v, 0) for v in score.values())
    lat_excess = max(lat_a - lat_base, 0.0)
    order = sorted(score, key=lambda c: -score[c])
    out = []
    rank = 0
    for c in order:
        v = score[c]
        if v <= 0 or rank >= max_causes:
            continue
        rank += 1
        share = v / total_pos if total_pos > 0 else 0.0
        conf = share * min(1.0, v / max(lat_excess, 1.0)) ** 0.5 if lat_excess > 0 else share * 0.5
        out.append(dict(anomaly_id=i, start=int(a["start"]), end=int(a["end"]), n_batches=n_b, rank=rank,
                        cause=c, share=round(share, 3), ms=v / MS, slowdown=round(slowdown, 2),
                        confidence=round(float(np.clip(conf, 0, 1)), 3),
                        evidence=_evidence(c, mv, trace, pid, a, delta, oncpu_a, oncpu_b, fb)))
    if not out:
        out.append(dict(anomaly_id=i, start=int(a["start"]), end=int(a["end"]), n_batches=n_b, rank=1,
                        cause="unknown", share=1.0, ms=0.0, slowdown=round(slowdown, 2), confidence=0.0,
                        evidence=f"batch latency {_fmt_ns(lat_a)} vs {_fmt_ns(lat_base)} baseline; "
                                 "no feature accounts for it"))
    return out


def _moved(mv, c, unit="ns") -> str:
    a, b = mv[c]
    if unit == "ns":
        return f"{_fmt_ns(a)} per batch vs {_fmt_ns(b)} baseline"
    if unit == "%":
        return f"{100 * a:.1f}% vs {100 * b:.1f}% baseline"
    return f"{a:.2f} vs {b:.2f} baseline"


def _preemptor_excess(trace, pid, a, fb) -> pd.DataFrame:
    """Other processes that held the server's CPUs in the anomaly, ranked by their CPU-holding rate
    there minus their rate over the baseline batches (a new competitor ranks above a steady neighbour)."""
    t0, t1 = int(a["start"]), int(a["end"])
    pa = preemptors(trace, t0, t1, pid)
    if pa.empty:
        return pa
    pa["rate"] = pa["ns"] / max(t1 - t0, 1)
    if len(fb):
        b0, b1 = int(fb["ts"].min()), int(fb["end"].max())
        pb = preemptors(trace, b0, b1, pid)
        # baseline time spent inside anomaly windows is not baseline: scale by the baseline batches' span share
        span = max(float((fb["end"] - fb["ts"]).sum()), 1.0)
        inside = pb.set_index(["by_comm", "by_pid"])["ns"] / max(b1 - b0, 1) if not pb.empty else None
        pa["base_rate"] = [float(inside.get((c, p), 0.0)) if inside is not None else 0.0
                           for c, p in zip(pa["by_comm"], pa["by_pid"])]
        _ = span
    else:
        pa["base_rate"] = 0.0
    pa["excess"] = pa["rate"] - pa["base_rate"]
    return pa.sort_values("excess", ascending=False).reset_index(drop=True)


def _evidence(cause, mv, trace, pid, a, delta, oncpu_a, oncpu_b, fb) -> str:
    top = sorted(((d, n) for n, d in delta.items() if FEATURE_GROUPS.get(n) == cause), reverse=True)[:2]
    shap_txt = ", ".join(f"{n} {_fmt_ns(d)}" for d, n in top if d > 0)
    shap_txt = f" (SHAP: {shap_txt})" if shap_txt else ""
    if cause == "cpu_contention":
        pr = _preemptor_excess(trace, pid, a, fb)
        who = "; ".join(f"{r.by_comm} (pid {r.by_pid}) held the CPU {_fmt_ns(r.ns)} over {r.n} preemptions "
                        f"({100 * r.rate:.0f}% of the window vs {100 * r.base_rate:.0f}% in the baseline)"
                        for r in pr.head(3).itertuples()) or "no single other process"
        return (f"server threads preempted by other processes {_moved(mv, 'preempted_other_ns')}, run-queue wait "
                f"{_moved(mv, 'runq_wait_ns')}; top preemptors: {who}{shap_txt}")
    if cause == "cpu_throttle":
        return (f"cgroup throttled {_moved(mv, 'throttled_share', '%')} of the time; preempted with the CPU left idle "
                f"{_moved(mv, 'preempted_idle_ns')}{shap_txt}")
    if cause == "stall":
        return (f"the batch thread was stopped/blocked {_moved(mv, 'main_blocked_ns')} with no other process "
                f"running instead (preempted by others {_moved(mv, 'preempted_other_ns')}); no major faults or "
                f"I/O pressure{shap_txt}")
    if cause == "memory_pressure":
        return (f"major page faults {_moved(mv, 'major_faults_per_s', 'x')} per second, minor "
                f"{_moved(mv, 'minor_faults_per_s', 'x')} per second, PSI memory "
                f"{_moved(mv, 'psi_memory', '%')}, batch thread blocked {_moved(mv, 'main_blocked_ns')}{shap_txt}")
    if cause == "io_contention":
        return (f"PSI io {_moved(mv, 'psi_io', '%')}, I/O syscall time {_moved(mv, 'io_syscall_share', '%')} of the time, "
                f"batch thread blocked {_moved(mv, 'main_blocked_ns')}{shap_txt}")
    if cause == "memory_bandwidth":
        return (f"batch thread on CPU {_fmt_ns(oncpu_a)} per batch vs {_fmt_ns(oncpu_b)} expected for the same work "
                f"({100 * _rel(oncpu_a, oncpu_b):+.0f}%) while off-CPU time does not account for it: the compute "
                f"itself ran slower (memory bandwidth / cache interference){shap_txt}")
    if cause == "workload":
        return f"tokens per batch {_moved(mv, 'n_tokens', 'x')}{shap_txt}"
    return f"unattributed{shap_txt}"
