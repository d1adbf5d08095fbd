"""Top causes of a live anomaly, computed off the hot path (the enrichment thread).

With `rca` (`prism watch --rca`), the offline root-cause analysis
(prismkit.rootcause) runs on the recent window of the growing trace, in a
process of its own (RcaWorker). In addition, quick evidence from /proc over
half a second of the open episode:

- cpu_contention: other processes running on the server's CPUs (their CPU
  time) and the server's threads waiting in the run queue (schedstat);
- stall: the server found stopped (state T) or neither running nor runnable;
- memory_pressure / io_contention: PSI memory / io stall time.
"""
from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _psi_total(kind: str) -> int:
    for line in _read(f"/proc/pressure/{kind}").splitlines():
        if line.startswith("some"):
            for part in line.split():
                if part.startswith("total="):
                    return int(part[6:])
    return 0


def _proc_cpu_ticks() -> dict[int, tuple[str, int]]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        s = _read(f"/proc/{name}/stat")
        if not s:
            continue
        r = s.rfind(")")
        comm = s[s.find("(") + 1:r]
        f = s[r + 2:].split()
        try:
            out[int(name)] = (comm, int(f[11]) + int(f[12]))
        except (IndexError, ValueError):
            pass
    return out


def _schedstat(pid: int) -> tuple[int, int]:
    cpu = wait = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            parts = _read(f"/proc/{pid}/task/{tid}/schedstat").split()
            if len(parts) >= 2:
                cpu += int(parts[0])
                wait += int(parts[1])
    except OSError:
        pass
    return cpu, wait


def _state(pid: int) -> str:
    s = _read(f"/proc/{pid}/stat")
    r = s.rfind(")")
    return s[r + 2:r + 3] if r > 0 else "?"


def quick_causes(pid: int, window_s: float = 0.5, samples: int = 25, scan_processes: bool = True) -> list[dict]:
    """Evidence from /proc over the next `window_s`: the server's state sampled `samples` times
    (stopped?), its run-queue wait, PSI, and with scan_processes the other processes' CPU time.

    scan_processes=False leaves out the other processes' CPU time (every /proc/PID/stat
    read twice, ~11 ms of CPU on a quiet host): the sched pack's records name who held
    the server's CPUs during the episode itself (SchedHistory), which this cannot.
    """
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    ticks0, sched0 = (_proc_cpu_ticks() if scan_processes else {}), _schedstat(pid)
    psi0 = {k: _psi_total(k) for k in ("cpu", "memory", "io")}
    stopped = 0
    samples = max(int(samples), 1)
    for _ in range(samples):
        time.sleep(window_s / samples)
        if _state(pid) in ("T", "t"):
            stopped += 1
    ticks1, sched1 = (_proc_cpu_ticks() if scan_processes else {}), _schedstat(pid)
    psi1 = {k: _psi_total(k) for k in ("cpu", "memory", "io")}
    wall = time.monotonic() - t0
    ncpu = max(len(os.sched_getaffinity(pid)) if os.path.exists(f"/proc/{pid}") else os.cpu_count() or 1, 1)
    others = []
    me = os.getpid()
    for p, (comm, t) in ticks1.items():
        if p in (pid, me):
            continue
        d = (t - ticks0.get(p, (comm, t))[1]) / hz
        if d > 0:
            others.append((d / wall, p, comm))
    others.sort(reverse=True)
    other_share = sum(s for s, _p, _c in others) / ncpu
    runq = (sched1[1] - sched0[1]) / 1e9 / wall
    causes = []
    if stopped:
        causes.append({"cause": "stall", "score": 0.5 + 0.5 * stopped / samples,  # being stopped is decisive
                       "evidence": f"server stopped (state T) in {stopped}/{samples} samples"})
    if scan_processes and (other_share > 0.1 or runq > 0.2):
        top = ", ".join(f"{c}[{p}] {s:.0%}" for s, p, c in others[:3])
        causes.append({"cause": "cpu_contention", "score": min(1.0, max(other_share, runq / ncpu)),
                       "evidence": f"other processes use {other_share:.0%} of the server's {ncpu} CPUs ({top}); "
                                   f"server threads wait {runq:.2f} s/s in the run queue"})
    for kind, name in (("memory", "memory_pressure"), ("io", "io_contention")):
        share = (psi1[kind] - psi0[kind]) / 1e6 / wall
        if share > 0.05:
            causes.append({"cause": name, "score": min(1.0, share),
                           "evidence": f"PSI {kind} some {share:.0%} of the time"})
    if not stopped and not causes:
        cpu_share = (sched1[0] - sched0[0]) / 1e9 / wall
        causes.append({"cause": "unknown", "score": 0.0,
                       "evidence": f"server on CPU {cpu_share:.2f} s/s, run-queue wait {runq:.2f} s/s"})
    causes.sort(key=lambda c: -c["score"])
    return causes


# -- the episode itself, from the sched pack's records ---------------------------------------------
PF_KTHREAD = 0x00200000          # /proc/PID/stat flags: a kernel thread
SCHED_RECORD = [("ts_off", "<u8"), ("ts_on", "<u8"), ("runq_ns", "<u8"), ("tid", "<u4"), ("by_pid", "<u4"),
                ("cpu", "<u4"), ("reason", "<u4"), ("by_comm", "S16")]   # struct sched_event (sched.bpf.c)
assert np.dtype(SCHED_RECORD).itemsize == 56      # recorders/packs/sched/pack.py's SCHED_EVENT.size
PREEMPTED = 1
MIN_SCORE = 0.2                  # a cause must explain at least this share of the episode's excess time


def _task_label(tid: int, comm: str, own: set[int]) -> str:
    if tid in own:
        return f"{comm} (pid {tid}, this watcher)"
    s = _read(f"/proc/{tid}/stat")
    r = s.rfind(")")
    try:
        if int(s[r + 2:].split()[6]) & PF_KTHREAD:
            return f"{comm} (pid {tid}, kernel thread)"
    except (IndexError, ValueError):
        pass
    return f"{comm} (pid {tid})"


def _tids(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.1f} ms"


class SchedHistory:
    """The sched pack's records of the last `keep_s` (who held the CPUs the server's threads
    waited for), kept for the causes of a live episode.

    A short episode (one batch 12 ms slow) is over long before /proc can be sampled:
    only the records of the episode itself can say who took the CPU. The recorder's
    thread hands over each drain's bytes as they are (`add`: a reference, no decoding);
    the enrichment thread decodes the history only when an episode needs its causes.
    Each cause is scored by the share of the episode's excess time (observed minus
    expected batch time) it accounts for, beyond its own rate in the history before
    the episode (a 2-core server's threads always wait for each other a little).
    """

    def __init__(self, keep_s: float = 20.0) -> None:
        self.keep_ns = int(keep_s * 1e9)
        self._chunks: deque = deque()       # (monotonic ns of the drain, raw records)
        self.last_drain_ns = 0

    def add(self, raw: bytes) -> None:
        """One drain's records (the recorder's thread)."""
        now = time.monotonic_ns()
        chunks = self._chunks
        chunks.append((now, raw))
        self.last_drain_ns = now
        while chunks and now - chunks[0][0] > self.keep_ns:
            chunks.popleft()

    def clear(self) -> None:
        """A new target: its threads are others."""
        self._chunks.clear()
        self.last_drain_ns = 0

    @property
    def active(self) -> bool:
        return self.last_drain_ns > 0

    def records(self) -> np.ndarray:
        chunks = list(self._chunks)     # (one C call: safe against the recorder thread's appends)
        return np.frombuffer(b"".join(raw for _t, raw in chunks), dtype=np.dtype(SCHED_RECORD))

    def wait_past(self, t_ns: int, timeout_s: float = 1.0) -> None:
        """Until a drain after t_ns + 20 ms (records of off-CPU intervals that ended by then)."""
        deadline = time.monotonic() + timeout_s
        while self.last_drain_ns < t_ns + 20_000_000 and time.monotonic() < deadline:
            time.sleep(0.02)

    def causes(self, pid: int, start_ns: int, end_ns: int, excess_ns: float,
               batches: np.ndarray | None = None) -> list[dict]:
        """Ranked causes of the episode [start_ns, end_ns) that lost excess_ns of batch time.

        batches: [start, end) of the server's recent batches, (n, 2). Only what happened while a
        batch ran can have slowed one down, so times are measured within batches when given
        (within the episode's wall time otherwise)."""
        from prismkit.rootcause.features import group_stops, interval_overlap

        import pandas as pd

        rec = self.records()
        if len(rec) == 0 or end_ns <= start_ns:
            return []
        ts = rec["ts_off"].astype(np.int64)
        te = rec["ts_on"].astype(np.int64)
        by = rec["by_pid"].astype(np.int64)
        pre = rec["reason"] == PREEMPTED
        own = np.isin(by, np.fromiter(set(rec["tid"].tolist()) | _tids(pid) | {pid}, dtype=np.int64))
        h0 = max(int(ts.min()), start_ns - self.keep_ns)        # the history before the episode
        if batches is None or len(batches) == 0:
            busy_now, busy_before = np.array([[start_ns, end_ns]]), np.array([[h0, start_ns]])
        else:
            b = np.asarray(batches, dtype=np.int64).reshape(-1, 2)
            busy_now = np.clip(b, start_ns, end_ns)
            busy_before = np.clip(b, h0, start_ns)

        def within(s0: np.ndarray, s1: np.ndarray, busy: np.ndarray) -> float:
            """Time of intervals [s0, s1) (summed) that falls within the busy intervals."""
            return float(interval_overlap(s0, s1, busy[:, 0], busy[:, 1]).sum()) if len(s0) else 0.0

        win = float((busy_now[:, 1] - busy_now[:, 0]).sum())                  # batch time in the episode
        if win <= 0:
            return []     # (its batches are older than the history)
        hist = max(float((busy_before[:, 1] - busy_before[:, 0]).sum()), 1.0)  # and before it
        what = f"{_ms(win)} of batches" if batches is not None and len(batches) else f"{_ms(win)} episode"
        excess = max(float(excess_ns), 1.0)
        causes = []

        # (the last 2 s: the sweep needs every thread off CPU, and a thread that exited earlier never is)
        near = (te > start_ns - 2_000_000_000) & (ts < end_ns + 2_000_000)
        stops = group_stops(pd.DataFrame({"pid": pid, "tid": rec["tid"][near].astype(np.int64), "ts": ts[near],
                                          "dur": (te - ts)[near]}), pid, exclusive=True)
        stopped = within(stops[:, 0], stops[:, 1], busy_now)
        if stopped > 0:
            causes.append({"cause": "stall", "score": min(1.0, stopped / excess),
                           "evidence": f"all the server's threads were stopped together for {_ms(stopped)} "
                                       f"of the {what}"})

        # Run-queue waits: a preempted thread's whole interval; a blocked one's end, after its wakeup
        # (not after a stop: SIGCONT wakes every thread at once). The engine's threads run in
        # lockstep, so a batch waits while any one of them waits: the union counts, not the sum.
        rq0 = np.maximum(te - rec["runq_ns"].astype(np.int64), ts)
        if len(stops):   # off CPU when a stop ended: its wait in the run queue is the stop's doing
            k = np.searchsorted(stops[:, 1], te, side="right") - 1
            rq0 = np.where((k >= 0) & (stops[np.maximum(k, 0), 1] >= ts), te, rq0)
        u0, u1 = _union(rq0, te)
        w_rq, r_rq = within(u0, u1, busy_now), within(u0, u1, busy_before) / hist
        x_rq = max(w_rq - r_rq * win, 0.0)
        if x_rq > 0:
            other = pre & ~own & (by != 0)
            ov = np.maximum(np.minimum(te, end_ns) - np.maximum(ts, start_ns), 0)
            m = other & (ov > 0)
            who = {}
            for b_, c, o in zip(by[m].tolist(), rec["by_comm"][m].tolist(), ov[m].tolist()):
                who[(b_, c)] = who.get((b_, c), 0) + o
            me = _tids(os.getpid())
            top = [kv for kv in sorted(who.items(), key=lambda kv: -kv[1])[:3] if kv[1] >= max(5e5, 0.05 * w_rq)]
            names = ", ".join(f"{_task_label(b_, c.decode(errors='replace'), me)} {_ms(o)}" for (b_, c), o in top)
            evidence = (f"for {_ms(w_rq)} of the {what} a thread of the server waited in the run queue "
                        f"(before it: {r_rq:.0%} of the time): ")
            evidence += (f"behind {names}, and behind the server's own threads for the rest" if names else
                         f"behind the server's own threads (other tasks held their CPUs {_ms(float(ov[other].sum()))})")
            causes.append({"cause": "cpu_contention", "score": min(1.0, x_rq / excess), "evidence": evidence})

        idle = pre & (by == 0)        # switched out with nothing else to run: the CPU quota ran out
        i0, i1 = _union(ts[idle], te[idle])
        w_idle, r_idle = within(i0, i1, busy_now), within(i0, i1, busy_before) / hist
        x_idle = max(w_idle - r_idle * win, 0.0)
        if x_idle > 0:
            causes.append({"cause": "cpu_throttle", "score": min(1.0, x_idle / excess),
                           "evidence": f"the server's threads were switched out with their CPU left idle for "
                                       f"{_ms(w_idle)} of the {what} (a CPU quota ran out?)"})
        causes = [c for c in causes if c["score"] >= MIN_SCORE]
        if not causes:
            causes.append({"cause": "unknown", "score": 0.0,
                           "evidence": f"no preemption, stop or throttling of the server's threads accounts for "
                                       f"the {_ms(excess)} lost: in the {what} a thread waited in the run "
                                       f"queue {_ms(w_rq)} (before it: {r_rq:.0%} of the time)"})
        for c in causes:
            c["source"] = "sched"
        causes.sort(key=lambda c: -c["score"])
        return causes


def _union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of the intervals [starts, ends) as disjoint sorted intervals."""
    keep = ends > starts
    s, e = starts[keep], ends[keep]
    if len(s) == 0:
        return s, e
    o = np.argsort(s, kind="stable")
    s, e = s[o], e[o]
    reach = np.maximum.accumulate(e)
    first = np.r_[True, s[1:] > reach[:-1]]          # a new run of overlapping intervals begins
    idx = np.flatnonzero(first)
    return s[idx], np.maximum.reduceat(e, idx)


WINDOW_MARGIN_NS = 2_000_000_000   # read this much before the baseline: slices and counters that span its start


def rootcause_causes(trace_path, start_ns: int, end_ns: int, window_s: float = 20.0, model=None,
                     tail=None) -> list[dict]:
    """prismkit.rootcause.explain on the recent window of the growing trace (anomaly vs the batches around it).

    tail: a TraceTail of trace_path; only the window is decoded then (the whole file without it,
    or when the window is older than the tail holds)."""
    import pandas as pd

    from prismkit.errors import PrismError
    from prismkit.rootcause import explain
    from prismkit.trace import load_trace

    lo = end_ns - int(window_s * 1e9)
    since = min(lo, start_ns) - WINDOW_MARGIN_NS
    if tail is not None:
        try:
            tail.update()
        except PrismError:                   # e.g. a finished, gzipped trace: read it whole
            tail = None
    if tail is not None and tail.covers(since):
        trace = tail.load(since_ns=since)
    else:
        trace = load_trace(trace_path)       # a growing trace loads up to its last complete packet
    b = trace.batches
    if b.empty:
        return []
    res = explain(trace, anomalies=pd.DataFrame({"start": [start_ns], "end": [end_ns]}),
                  baseline=(lo, start_ns), model=model)
    out = []
    for r in res.causes.sort_values("rank").itertuples(index=False):
        out.append({"cause": r.cause, "score": float(getattr(r, "confidence", 0.0) or 0.0),
                    "share": float(getattr(r, "share", 0.0) or 0.0), "evidence": str(getattr(r, "evidence", "")),
                    "source": "prismkit.rootcause"})
    return out


# -- the root-cause analysis in a process of its own -----------------------------------------------
class RcaWorker:
    """rootcause_causes() in a process of its own (`python -m prismkit.online.causes`) at CPU weight `nice`.

    The analysis (trace parsing, pandas, SHAP) holds the GIL in C code for up to
    ~150 ms at a time. On a thread of the watcher it held back the recorder's live
    thread, which needs the GIL to hand each batch to the detector: in `make demo`
    the stall alert left 154 ms after its batch ended (alert_path_ms.to_observer)
    instead of ~0.1 ms, because the previous episode's analysis was running.
    A plain subprocess, not multiprocessing: its spawn re-runs the caller's main
    module (a user's script or notebook), and fork is unsafe in a threaded process
    that holds BPF objects. Requests and replies are pickles over the pipes; the
    baseline model is sent only when it changes. One request at a time.

    The worker has a session, hence an autogroup, of its own at nice 19: an analysis
    takes about a second of CPU, which in the watcher's session (whose autogroup
    `--nice` raises) would be taken from the server, maybe during the next fault.
    At nice 19 it runs when the server leaves a CPU idle, so its causes may come
    later on a saturated host.
    """

    def __init__(self, nice: int = 19, timeout_s: float = 120.0) -> None:
        self.nice, self.timeout_s = nice, timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sent = None                # the model the worker holds (kept alive: its id() is the key)
        self._start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        from prismkit.target.priority import set_cpu_weight

        self._proc = subprocess.Popen([sys.executable, "-m", "prismkit.online.causes", "--worker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      cwd=str(Path(__file__).resolve().parents[2]), close_fds=True,
                                      start_new_session=True)   # (Ctrl-C stops the watcher, which closes us)
        set_cpu_weight(self._proc.pid, self.nice)
        self._sent = None

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def causes(self, trace_path, start_ns: int, end_ns: int, model=None) -> list[dict]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()            # first use after close(), or the worker died (OOM-killed, say)
            send = model if (model is not None and self._sent is not model) else None
            req = (str(trace_path), int(start_ns), int(end_ns), None if model is None else id(model), send)
            try:
                pickle.dump(req, self._proc.stdin)
                self._proc.stdin.flush()
                ready, _, _ = select.select([self._proc.stdout], [], [], self.timeout_s)
                if not ready:
                    raise TimeoutError(f"root-cause analysis took over {self.timeout_s:g}s")
                ok, value = pickle.load(self._proc.stdout)
            except (OSError, EOFError, TimeoutError, pickle.UnpicklingError):
                self._stop()
                raise
            if not ok:
                raise RuntimeError(value)
            self._sent = model if model is not None else self._sent
            return value

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                try:
                    self._proc.stdin.close()     # the worker exits at end of input
                    self._proc.wait(5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
                self._stop()


TAIL_EVERY_S = 1.0     # the worker reads the growing trace this often between requests
TAIL_KEEP_S = 120.0    # and holds its last two minutes of events


def _worker_main() -> None:
    """The RcaWorker's loop: a request per pickle on stdin, a (ok, causes | error) pickle on stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                        # a stray print must not corrupt the replies
    import prismkit.rootcause  # noqa: F401  (seconds of imports: now, not at the first alert)

    from prismkit.trace.tail import TraceTail

    models: dict = {}
    tails: dict[str, TraceTail] = {}     # one per trace: each byte of it is read once
    inp = sys.stdin.buffer
    while True:
        # Between requests, read what the recorder wrote (the client sends one request and waits for
        # its reply, so no request is left in inp's buffer while fd 0 has nothing to read).
        while tails and not select.select([inp], [], [], TAIL_EVERY_S)[0]:
            for path, tail in list(tails.items()):
                try:
                    tail.update()
                except Exception:  # noqa: BLE001 (a rotated or removed trace: read whole at the next request)
                    del tails[path]
        try:
            path, start_ns, end_ns, key, model = pickle.load(inp)
        except EOFError:
            return
        try:
            if model is not None:
                models = {key: model}
            if key is not None and key not in models:
                raise LookupError("the baseline model was not sent")
            if path not in tails:
                tails = {path: TraceTail(path, keep_s=TAIL_KEEP_S)}   # the watcher's current trace only
            reply = (True, rootcause_causes(path, start_ns, end_ns, model=models.get(key), tail=tails[path]))
        except Exception as exc:  # noqa: BLE001 (the reply carries it)
            reply = (False, f"{type(exc).__name__}: {exc}"[:300])
        pickle.dump(reply, out)
        out.flush()


def make_cause_fn(trace_path=None, rca: bool = False, model_fn=None, wait_s: float = 1.5,
                  sched: SchedHistory | None = None, batches_fn=None):
    """The causes callback for AlertManager: quick /proc evidence, the episode's own scheduler
    records when the sched pack runs (`sched`; `batches_fn` gives the [start, end) of the
    recent batches, (n, 2)); with `rca`, prismkit.rootcause too.

    Runs on the enrichment thread only (never on the alert path); the root-cause
    analysis reloads the growing trace in an RcaWorker process, so it is opt-in
    (`prism watch --rca`). The callback's close() stops that process.

    ctx: pid, start_ns, end_ns, excess_ns (when queued), `current`, a callable giving the
    episode's (end_ns, excess_ns) now (it may have gone on while /proc was sampled), and
    `kind`: 'open', 'grow' (it went on after a pause) or 'final' (it is over: the scheduler
    records of all of it, with `kept`, the /proc and root-cause evidence gathered while it
    lasted). The root-cause analysis runs at 'open' only.
    """
    worker = RcaWorker() if rca and trace_path is not None else None

    def fn(ctx: dict) -> list[dict]:
        use_sched = sched is not None and sched.active
        kind = ctx.get("kind", "open")
        if kind == "final":     # the episode is over: /proc has nothing more to say about it
            causes = list(ctx.get("kept") or [])
            if not use_sched:
                return causes
        else:
            # With the sched pack the episode's own records show stops and who held the CPUs, so
            # /proc is sampled twice instead of 25 times (each sample a wakeup: ~5 of the ~12 ms of
            # CPU an episode's first analysis took); PSI still covers the same half second.
            causes = quick_causes(ctx["pid"], samples=2 if use_sched else 25, scan_processes=not use_sched)
            for c in causes:
                c["source"] = "proc"
        if use_sched:
            end, excess = ctx["current"]() if "current" in ctx else (ctx["end_ns"], ctx.get("excess_ns", 0.0))
            sched.wait_past(end)
            found = sched.causes(ctx["pid"], ctx["start_ns"], end, excess,
                                 batches=batches_fn() if batches_fn is not None else None)
            if found:   # (its 'unknown' says more about the episode than /proc's)
                causes = sorted(found + [c for c in causes if c["cause"] != "unknown"], key=lambda c: -c["score"])
        if worker is not None and kind == "open":   # (seconds of CPU: once an episode)
            try:
                time.sleep(wait_s)   # let the trace hold the anomaly's batches and their OS events
                extra = worker.causes(trace_path(), ctx["start_ns"],
                                      max(ctx["end_ns"], time.monotonic_ns() - 200_000_000),
                                      model=model_fn() if model_fn else None)
                causes = extra[:4] + causes
            except Exception as exc:  # the quick evidence stays
                causes.append({"cause": "rootcause_failed", "score": 0.0, "evidence": repr(exc)[:300],
                               "source": "prismkit.rootcause"})
        return causes

    fn.worker = worker
    fn.close = worker.close if worker is not None else (lambda: None)
    return fn


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker_main()
    else:
        sys.exit("usage: python -m prismkit.online.causes --worker  (started by prism watch --rca)")
