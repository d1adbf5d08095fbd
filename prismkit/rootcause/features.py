"""Per-batch features for root-cause analysis: the workload and what the system did
to the engine's threads while each batch ran.

    feats = batch_features(trace)     # one row per batch, aligned with BatchBreakdown.per_batch()

Every system feature is measured over the batch's step window [ts, ts + window_ns)
(BatchBreakdown's 'step' scope) with vectorised interval / counter arithmetic:

- interval sums (off-CPU slices from ``trace.sched``): the overlap of a set of
  intervals with many windows is F(t1) - F(t0), F(t) = sum_i clip(t - s_i, 0, e_i - s_i),
  evaluated for all windows at once from cumulative sums over sorted starts and ends;
- cumulative counters (faults, throttled ns, syscall ns, nivcsw): linear
  interpolation of the counter at both window ends (a rate over the sample period
  that covers the batch, since counters are sampled every ~200 ms);
- per-sample gauges (PSI stall us per sample, run-queue share, CPU share):
  the sample that covers the batch (the first sample at or after its start).

- group stops (``group_stops``): the part of each window in which all the server's threads were
  stopped together (SIGSTOP, freezer), found from simultaneous starts *and* ends of their off-CPU slices;
- throttled periods: the rise of ``cgroup.nr_throttled`` (periods in which the CPU quota ran out), per second.

Feature groups (``FEATURE_GROUPS``) tie each feature to the cause vocabulary
used by :mod:`prismkit.rootcause.explain`.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

WORKLOAD = ["n_tokens", "n_seqs", "n_prefill_tokens", "n_decode_tokens", "kv_tokens", "is_prefill",
            "decode_x_kv", "prefill_x_kv"]
IO_SYSCALLS = ("read", "write", "pread64", "pwrite64", "readv", "writev", "fsync", "fdatasync", "openat",
               "sync_file_range", "io_uring_enter", "io_submit", "io_getevents")

# feature -> cause it is evidence for (explain.py may re-route 'blocked' time, see there)
FEATURE_GROUPS = {
    **{f: "workload" for f in WORKLOAD},
    "preempted_other_ns": "cpu_contention",
    "n_preempt_other": "cpu_contention",
    "runq_wait_ns": "cpu_contention",
    "runq_share": "cpu_contention",
    "psi_cpu": "cpu_contention",
    "preempted_self_ns": "cpu_contention",
    "preempted_idle_ns": "cpu_throttle",
    "throttled_share": "cpu_throttle",
    "main_blocked_ns": "stall",
    "wake_wait_ns": "stall",
    "stopped_ns": "stall",
    "throttled_periods_per_s": "cpu_throttle",
    "major_faults_per_s": "memory_pressure",
    "minor_faults_per_s": "memory_pressure",
    "psi_memory": "memory_pressure",
    "psi_io": "io_contention",
    "io_syscall_share": "io_contention",
    "syscall_share": "unknown",
}
SYSTEM = [f for f in FEATURE_GROUPS if FEATURE_GROUPS[f] != "workload"]


def interval_overlap(starts: np.ndarray, ends: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """Total overlap of intervals [starts, ends) with each window [w0, w1), vectorised.

    Overlapping intervals count once each (sum, not union)."""
    w0 = np.asarray(w0, dtype=np.int64)
    w1 = np.asarray(w1, dtype=np.int64)
    if len(starts) == 0:
        return np.zeros(len(w0), dtype=np.float64)
    s = np.sort(np.asarray(starts, dtype=np.float64))
    e = np.sort(np.asarray(ends, dtype=np.float64))
    cs = np.concatenate([[0.0], np.cumsum(s)])
    ce = np.concatenate([[0.0], np.cumsum(e)])

    def F(t):
        t = t.astype(np.float64)
        ns = np.searchsorted(s, t, side="left")
        ne = np.searchsorted(e, t, side="left")
        return (ns * t - cs[ns]) - (ne * t - ce[ne])

    return np.maximum(F(w1) - F(w0), 0.0)


def count_in(points: np.ndarray, w0: np.ndarray, w1: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Number (or weighted sum) of points in each window [w0, w1)."""
    order = np.argsort(points, kind="stable")
    p = np.asarray(points)[order]
    cw = np.concatenate([[0.0], np.cumsum(np.ones(len(p)) if weights is None else np.asarray(weights, float)[order])])
    return cw[np.searchsorted(p, w1, side="left")] - cw[np.searchsorted(p, w0, side="left")]


def _cumulative_delta(ts: np.ndarray, values: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """Increase of a cumulative counter over each window (linear between samples)."""
    if len(ts) == 0:
        return np.zeros(len(w0))
    order = np.argsort(ts, kind="stable")
    ts, values = ts[order].astype(np.float64), values[order].astype(np.float64)
    return np.maximum(np.interp(w1, ts, values) - np.interp(w0, ts, values), 0.0)


def _covering_sample(ts: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Value of the first sample at or after t (the sample whose period covers t)."""
    if len(ts) == 0:
        return np.zeros(len(t))
    order = np.argsort(ts, kind="stable")
    ts, values = ts[order], values[order].astype(np.float64)
    i = np.clip(np.searchsorted(ts, t, side="left"), 0, len(ts) - 1)
    return values[i]


def _summed_series(c: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Sum of several cumulative per-track series as one cumulative series (forward-filled)."""
    if c.empty:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    wide = c.pivot_table(index="ts", columns="name", values="value", aggfunc="last").sort_index().ffill().fillna(0)
    return wide.index.to_numpy(dtype=np.int64), wide.sum(axis=1).to_numpy(dtype=np.float64)


def _rate_per_sample(c: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(ts, value / sample period) of a per-sample delta counter (e.g. stall us since the last sample)."""
    if c.empty:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    c = c.sort_values("ts")
    ts = c["ts"].to_numpy(dtype=np.int64)
    period = np.diff(ts, prepend=ts[0] - (np.median(np.diff(ts)) if len(ts) > 1 else 2e8)).astype(np.float64)
    return ts, c["value"].to_numpy(dtype=np.float64) * 1000.0 / np.maximum(period, 1.0)   # us -> share of time


def group_stops(sched: pd.DataFrame, pid: int, tol_ns: int = 2_000_000, min_frac: float = 0.6,
                min_ns: int = 1_000_000, exclusive: bool = False) -> np.ndarray:
    """[(start, end)] of the server's *group stops*: intervals in which (nearly) all its threads went off
    CPU at the same instant and came back at the same instant.

    A process-wide stop (SIGSTOP, the cgroup freezer, a ptrace stop, a VM pause seen from inside) wakes
    every thread, even those sleeping in futex or poll, to take the stop, and SIGCONT wakes them all
    again; each thread's scheduler record therefore shows a slice that starts within a few us of the
    others' and ends within a few us of theirs. Ordinary waits never do that: a broadcast wake-up
    makes slices *end* together, but they began at different times; blocking on a page fault or on I/O
    is one thread at a time. A group stop is at least max(3, min_frac x threads) distinct threads whose
    off-CPU slices start within tol_ns of the first and end within tol_ns of their median end, and
    last at least min_ns.

    exclusive: instead, the times every thread of `sched` was off CPU at once, that many of its
    slices began just before and ended just after. Without that, the time between two stops
    can pass for one: the threads that go back to sleep right after SIGCONT are woken together
    by the next SIGSTOP, while the busy threads compute meanwhile (with no slice at all: they
    never left the CPU). `sched` must then hold the slices of every thread over a while around
    (seconds), not just of the stops; a thread that exited in it (its last slice ended, it
    never left the CPU again as far as the slices tell) hides every stop after.
    """
    if sched is None or sched.empty:
        return np.zeros((0, 2), dtype=np.int64)
    s = sched[(sched["pid"].to_numpy(dtype=np.float64, na_value=np.nan) == pid)]
    if s.empty:
        return np.zeros((0, 2), dtype=np.int64)
    need = max(3, int(np.ceil(min_frac * s["tid"].nunique())))
    ts = s["ts"].to_numpy(dtype=np.int64)
    te = ts + np.maximum(s["dur"].to_numpy(dtype=np.int64), 0)
    tid = s["tid"].to_numpy(dtype=np.int64)
    if exclusive:
        return _exclusive_stops(ts, te, s["tid"].nunique(), need, tol_ns, min_ns)
    o = np.argsort(ts, kind="stable")
    ts, te, tid = ts[o], te[o], tid[o]
    # candidate starts: where `need` slices start within tol_ns (vectorised); then check the ends
    j_all = np.searchsorted(ts, ts + tol_ns, side="right")
    cand = np.flatnonzero(j_all - np.arange(len(ts)) >= need)
    out, i_next = [], 0
    for i in cand:
        if i < i_next:
            continue
        j = j_all[i]
        e = te[i:j]
        med = int(np.median(e))
        ok = np.abs(e - med) <= tol_ns
        if len(np.unique(tid[i:j][ok])) >= need and med - ts[i] >= min_ns:
            out.append((int(ts[i]), med))
            i_next = j
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _exclusive_stops(ts: np.ndarray, te: np.ndarray, n_threads: int, need: int, tol_ns: int,
                     min_ns: int) -> np.ndarray:
    """group_stops(exclusive=True): the times every thread was off CPU (a sweep over the slices'
    starts and ends; one thread's slices never overlap), at least min_ns long, that `need`
    slices began within tol_ns before and `need` ended within tol_ns after."""
    t = np.concatenate([ts, te])
    step = np.concatenate([np.ones(len(ts), np.int64), -np.ones(len(te), np.int64)])
    o = np.lexsort((step, t))                  # at a tie an end before a start
    t, off = t[o], np.cumsum(step[o])
    k = np.flatnonzero(off[:-1] == n_threads)
    a, b = t[k], t[k + 1]
    k = (b - a) >= min_ns
    a, b = a[k], b[k]
    if len(a) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ss, es = np.sort(ts), np.sort(te)
    began = np.searchsorted(ss, a, side="right") - np.searchsorted(ss, a - tol_ns, side="left")
    ended = np.searchsorted(es, b + tol_ns, side="right") - np.searchsorted(es, b, side="left")
    k = (began >= need) & (ended >= need)
    return np.stack([a[k], b[k]], axis=1).astype(np.int64)


def server_tids(trace, pid: int) -> set[int]:
    """Thread ids of the server process seen anywhere in the trace (cached on the trace)."""
    cache = trace.__dict__.setdefault("_rootcause_tids", {})
    if pid not in cache:
        cache[pid] = _server_tids(trace, pid)
    return cache[pid]


def _server_tids(trace, pid: int) -> set[int]:
    out: set[int] = set()
    for df in (trace.tracks, trace.sched, trace.batches):
        if df is not None and not df.empty and "tid" in df and "pid" in df:
            m = df["pid"].to_numpy(dtype=np.float64, na_value=np.nan) == pid
            out.update(int(x) for x in pd.unique(df["tid"][m].dropna()))
    out.add(int(pid))
    return out


def batch_features(trace, per_batch: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per batch: ts, end, latency_ns (step window) plus WORKLOAD and SYSTEM features."""
    if per_batch is None:
        from ..analysis import BatchBreakdown

        per_batch = BatchBreakdown(trace).per_batch()
    b = per_batch
    out = pd.DataFrame({"ts": b["ts"].to_numpy(dtype=np.int64)})
    out["end"] = out["ts"] + b["window_ns"].to_numpy(dtype=np.int64)
    out["latency_ns"] = b["window_ns"].to_numpy(dtype=np.float64)
    out["dur"] = b["dur"].to_numpy(dtype=np.float64)
    out["tid"] = b["tid"].to_numpy(dtype=np.int64)
    for c in ("n_tokens", "n_seqs", "n_prefill_tokens", "n_decode_tokens", "kv_tokens"):
        out[c] = pd.to_numeric(b[c], errors="coerce").to_numpy(dtype=np.float64, na_value=0.0)
    out["is_prefill"] = (out["n_prefill_tokens"] > 0).astype(float)
    out["decode_x_kv"] = out["n_decode_tokens"] * out["kv_tokens"]
    out["prefill_x_kv"] = out["n_prefill_tokens"] * out["kv_tokens"]
    for c in ("graph_compute_ns", "offcpu_preempted_ns", "offcpu_blocked_ns"):
        out[c] = b[c].to_numpy(dtype=np.float64) if c in b else 0.0
    w0, w1 = out["ts"].to_numpy(), out["end"].to_numpy()
    n = len(out)
    pid = int(pd.to_numeric(b["pid"]).mode().iloc[0]) if n else 0
    tids = server_tids(trace, pid)

    # -- scheduler: off-CPU intervals of all the server's threads ---------------
    s = trace.sched
    if s is not None and not s.empty:
        ss = s["ts"].to_numpy(dtype=np.int64)
        se = ss + np.maximum(s["dur"].to_numpy(dtype=np.int64), 0)
        reason = s["reason"].to_numpy(dtype=object)
        by = s["by_pid"].to_numpy(dtype=np.float64, na_value=-1)
        stid = s["tid"].to_numpy(dtype=np.float64, na_value=-1)
        pre = reason == "preempted"
        own = np.isin(by, np.fromiter(tids, dtype=np.float64))
        idle = by == 0
        other = pre & ~own & ~idle
        blk = reason == "blocked"
        main = np.isin(stid, out["tid"].unique().astype(np.float64))
        out["preempted_other_ns"] = interval_overlap(ss[other], se[other], w0, w1)
        out["preempted_self_ns"] = interval_overlap(ss[pre & own], se[pre & own], w0, w1)
        out["preempted_idle_ns"] = interval_overlap(ss[pre & idle], se[pre & idle], w0, w1)
        # engine threads: those that were ever on a batch's CPU path (preempted at least once while
        # a batch ran) -- idle HTTP / pool threads block for seconds and would drown the signal
        busy = np.unique(stid[pre])
        eng = blk & np.isin(stid, busy)
        out["engine_blocked_ns"] = interval_overlap(ss[eng], se[eng], w0, w1)
        out["main_blocked_ns"] = interval_overlap(ss[blk & main], se[blk & main], w0, w1)
        out["n_preempt_other"] = count_in(ss[other], w0, w1)
        rq = s["runq_wait_ns"].to_numpy(dtype=np.float64, na_value=0.0)
        # run-queue wait after a preemption is contention; after the batch thread was blocked (or
        # stopped) it is the wakeup delay of that block
        out["runq_wait_ns"] = count_in(se[pre], w0, w1, rq[pre])
        out["wake_wait_ns"] = count_in(se[blk & main], w0, w1, rq[blk & main])
        gs = group_stops(s, pid)
        out["stopped_ns"] = interval_overlap(gs[:, 0], gs[:, 1], w0, w1)
        cpu = s["cpu"].to_numpy(dtype=np.float64, na_value=-1)
        out["n_cpus"] = 0.0
        for c in np.unique(cpu[cpu >= 0]):   # a handful of CPUs: one vectorised pass each
            m = cpu == c
            out["n_cpus"] += (count_in(ss[m], w0, w1) > 0).astype(float)
    else:
        for c in ("preempted_other_ns", "preempted_self_ns", "preempted_idle_ns", "engine_blocked_ns",
                  "main_blocked_ns", "n_preempt_other", "runq_wait_ns", "wake_wait_ns", "stopped_ns", "n_cpus"):
            out[c] = 0.0
    out["main_oncpu_ns"] = np.maximum(out["latency_ns"] - out["offcpu_preempted_ns"] - out["offcpu_blocked_ns"], 0)

    # -- counters ---------------------------------------------------------------
    cn = trace.counters
    names = cn["name"].astype(str) if not cn.empty else pd.Series([], dtype=str)

    def series(name):
        c = cn[names == name]
        return c["ts"].to_numpy(dtype=np.int64), c["value"].to_numpy(dtype=np.float64)

    def delta(name):
        ts, v = series(name)
        return _cumulative_delta(ts, v, w0, w1)

    out["major_faults"] = delta("faults.major")
    out["minor_faults"] = delta("faults.minor")
    out["throttled_ns"] = delta("cgroup.throttled_ns")
    out["throttled_periods"] = delta("cgroup.nr_throttled")
    for res in ("cpu", "memory", "io"):
        ts, v = _rate_per_sample(cn[names == f"psi.{res}.some.stall_us"])
        if len(ts) == 0:
            ts, v = series(f"psi.{res}.some")
        out[f"psi_{res}"] = _covering_sample(ts, v, w0)
    rq = cn[names.str.match(r"^runq\.\d+$")] if not cn.empty else cn
    ts, v = (rq.groupby("ts")["value"].sum().pipe(lambda x: (x.index.to_numpy(np.int64), x.to_numpy(float)))
             if not rq.empty else (np.zeros(0, np.int64), np.zeros(0)))
    out["runq_share"] = _covering_sample(ts, v, w0)
    thr = cn[names.str.match(r"^cpu\.\d+$")] if not cn.empty else cn
    ts, v = (thr.groupby("ts")["name"].size().pipe(lambda x: (x.index.to_numpy(np.int64), x.to_numpy(float)))
             if not thr.empty else (np.zeros(0, np.int64), np.zeros(0)))
    out["n_threads"] = _covering_sample(ts, v, w0)
    sys_ns = cn[names.str.match(r"^syscalls\..+\.ns$")] if not cn.empty else cn
    io_names = {f"syscalls.{x}.ns" for x in IO_SYSCALLS}
    ts, v = _summed_series(sys_ns[sys_ns["name"].isin(io_names)])
    out["io_syscall_ns"] = _cumulative_delta(ts, v, w0, w1)
    ts, v = _summed_series(sys_ns[~sys_ns["name"].isin(io_names | {"syscalls.futex.ns", "syscalls.poll.ns",
                                                                        "syscalls.epoll_wait.ns"})])
    out["syscall_ns"] = _cumulative_delta(ts, v, w0, w1)
    # counters measured as rates over the window (so they do not grow with the window's length)
    win = np.maximum(out["latency_ns"].to_numpy(), 1.0)
    out["major_faults_per_s"] = out["major_faults"] * 1e9 / win
    out["minor_faults_per_s"] = out["minor_faults"] * 1e9 / win
    out["throttled_share"] = out["throttled_ns"] / win
    out["throttled_periods_per_s"] = out["throttled_periods"] * 1e9 / win
    out["io_syscall_share"] = out["io_syscall_ns"] / win
    out["syscall_share"] = out["syscall_ns"] / win
    return out


def preemptors(trace, t0: int, t1: int, pid: int | None = None, exclude_own: bool = True) -> pd.DataFrame:
    """Who held the CPU while the server's threads waited in [t0, t1): by_comm, by_pid, ns, n."""
    s = trace.sched
    if s is None or s.empty:
        return pd.DataFrame(columns=["by_comm", "by_pid", "ns", "n"])
    ss = s["ts"].to_numpy(dtype=np.int64)
    se = ss + np.maximum(s["dur"].to_numpy(dtype=np.int64), 0)
    ov = np.clip(np.minimum(se, t1) - np.maximum(ss, t0), 0, None)
    m = (ov > 0) & (s["reason"].to_numpy(dtype=object) == "preempted")
    by = s["by_pid"].to_numpy(dtype=np.float64, na_value=-1)
    m &= by > 0
    if exclude_own and pid is not None:
        m &= ~np.isin(by, np.fromiter(server_tids(trace, pid), dtype=np.float64))
    if not m.any():
        return pd.DataFrame(columns=["by_comm", "by_pid", "ns", "n"])
    df = pd.DataFrame({"by_comm": s["by_comm"].to_numpy(dtype=object)[m], "by_pid": by[m].astype(np.int64), "ns": ov[m]})
    return (df.groupby(["by_comm", "by_pid"], as_index=False).agg(ns=("ns", "sum"), n=("ns", "size"))
            .sort_values("ns", ascending=False).reset_index(drop=True))


