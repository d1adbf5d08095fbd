"""Top causes of a live anomaly, computed off the hot path (the enrichment thread).

If `prismkit.explain` is installed (the offline root-cause analysis), it is
used on the recent window of the growing trace. Otherwise, and in addition,
quick evidence from /proc over half a second of the open episode:

- cpu_contention: other processes running on the server's CPUs (their CPU
  time) and the server's threads waiting in the run queue (schedstat);
- stall: the server found stopped (state T) or neither running nor runnable;
- memory_pressure / io_contention: PSI memory / io stall time.
"""
from __future__ import annotations

import os
import time


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


def quick_causes(pid: int, window_s: float = 0.5, samples: int = 25) -> list[dict]:
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    ticks0, sched0 = _proc_cpu_ticks(), _schedstat(pid)
    psi0 = {k: _psi_total(k) for k in ("cpu", "memory", "io")}
    stopped = 0
    for _ in range(samples):
        time.sleep(window_s / samples)
        if _state(pid) in ("T", "t"):
            stopped += 1
    ticks1, sched1 = _proc_cpu_ticks(), _schedstat(pid)
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
    if other_share > 0.1 or runq > 0.2:
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


def rootcause_causes(trace_path, start_ns: int, end_ns: int, window_s: float = 20.0, model=None) -> list[dict]:
    """prismkit.rootcause.explain on the recent window of the growing trace (anomaly vs the batches around it)."""
    import pandas as pd

    from prismkit.rootcause import explain
    from prismkit.trace import load_trace

    trace = load_trace(trace_path)           # a growing trace loads up to its last complete packet
    b = trace.batches
    if b.empty:
        return []
    lo = end_ns - int(window_s * 1e9)
    res = explain(trace, anomalies=pd.DataFrame({"start": [start_ns], "end": [end_ns]}),
                  baseline=(lo, start_ns), model=model)
    out = []
    for r in res.causes.sort_values("rank").itertuples(index=False):
        out.append({"cause": r.cause, "score": float(getattr(r, "confidence", 0.0) or 0.0),
                    "share": float(getattr(r, "share", 0.0) or 0.0), "evidence": str(getattr(r, "evidence", "")),
                    "source": "prismkit.rootcause"})
    return out


def make_cause_fn(trace_path=None, rca: bool = False, model_fn=None, wait_s: float = 1.5):
    """The causes callback for AlertManager: quick /proc evidence; with `rca`, prismkit.rootcause too.

    Runs on the enrichment thread only (never on the alert path). The root-cause
    analysis reloads the growing trace, so it is opt-in (`prism watch --rca`).
    """
    def fn(ctx: dict) -> list[dict]:
        causes = quick_causes(ctx["pid"])
        for c in causes:
            c["source"] = "proc"
        if rca and trace_path is not None:
            try:
                time.sleep(wait_s)   # let the trace hold the anomaly's batches and their OS events
                extra = rootcause_causes(trace_path(), ctx["start_ns"], max(ctx["end_ns"], time.monotonic_ns() - 200_000_000),
                                         model=model_fn() if model_fn else None)
                causes = extra[:4] + causes
            except Exception as exc:  # the quick evidence stays
                causes.append({"cause": "rootcause_failed", "score": 0.0, "evidence": repr(exc)[:300]})
        return causes

    return fn
