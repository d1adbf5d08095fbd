"""Where each batch's time goes: stages, off-CPU (preempted / blocked), other.

One analyzer per question, HolisticTraceAnalysis style:

    bd = BatchBreakdown(trace)
    bd.per_batch()          # one row per batch, stage columns summing to the duration
    bd.by_phase()           # summaries by prefill / decode / mixed
    bd.by_batch_size()      # summaries by n_tokens bins
    bd.percentiles()        # p50/p90/p99 of batch latency per phase

Two scopes: 'batch' is the llama_decode call itself; 'step' (the default) is
the engine step it starts: the decode plus the sampling and detokenization the
server does on that thread before its next decode (idle time is not counted).

Stage calls too short to be written as slices (under the recorder's
--min-stage-us) are summed per thread in the kernel and carried by the next
batch slice (`short_ns.<stage>` inside the call, `gap_short_ns.<stage>` since the
previous decode returned): that time moves from "other" to its stage, the gap
sums to the step before.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .timeline import LabelTimeline

# Labels in priority order: off-CPU owns time before any stage, then stages, then "other".
OFFCPU = ["offcpu_preempted", "offcpu_blocked"]
STAGES = ["tokenize", "sample", "detokenize", "graph_compute", "synchronize"]
LABELS = OFFCPU + STAGES
STAGE_COLUMNS = [f"{name}_ns" for name in LABELS] + ["other_ns"]


class BatchBreakdown:
    def __init__(self, trace, scope: str = "step") -> None:
        if scope not in ("step", "batch"):
            raise ValueError("scope must be 'step' or 'batch'")
        self.trace = trace
        self.scope = scope
        self._per_batch: pd.DataFrame | None = None

    def _windows(self, batches: pd.DataFrame, stages: pd.DataFrame) -> pd.DataFrame:
        b = batches.sort_values(["tid", "ts"]).copy()
        b["end"] = b["ts"] + b["dur"]
        if self.scope == "batch":
            b["window_end"] = b["end"]
            return b
        # A step runs from its decode to the end of the last stage that starts
        # after the decode and before the thread's next decode.
        b["next_ts"] = b.groupby("tid")["ts"].shift(-1, fill_value=np.iinfo(np.int64).max).astype(np.int64)
        b["window_end"] = b["end"]
        if "gap_short_end" in b.columns:  # short stage calls after this decode, carried by the next
            gap_end = b.groupby("tid")["gap_short_end"].shift(-1).fillna(0).to_numpy(dtype=np.int64)
            b["window_end"] = np.maximum(b["end"].to_numpy(), np.minimum(gap_end, b["next_ts"].to_numpy()))
        for tid, grp in b.groupby("tid"):
            st = stages[stages["tid"] == tid]
            if st.empty:
                continue
            st_ts = st["ts"].to_numpy()
            st_end = (st["ts"] + st["dur"]).to_numpy()
            order = np.argsort(st_ts)
            st_ts, st_end = st_ts[order], st_end[order]
            lo = np.searchsorted(st_ts, grp["end"].to_numpy(), side="left")
            hi = np.searchsorted(st_ts, grp["next_ts"].to_numpy(), side="left")
            ends = []
            for a, z, e in zip(lo, hi, b.loc[grp.index, "window_end"].to_numpy()):
                ends.append(max(e, st_end[a:z].max()) if z > a else e)
            b.loc[grp.index, "window_end"] = np.minimum(np.asarray(ends, dtype=np.int64), grp["next_ts"].to_numpy())
        return b

    def per_batch(self) -> pd.DataFrame:
        """One row per batch: workload columns, `window_ns` and stage columns summing to it."""
        if self._per_batch is not None:
            return self._per_batch
        batches = self.trace.batches
        if batches.empty:
            self._per_batch = pd.DataFrame(columns=[*batches.columns, "window_ns", *STAGE_COLUMNS])
            return self._per_batch
        slices = self.trace.slices
        stages = slices[(slices["category"] == "stage") & slices["name"].isin(STAGES)]
        sched = self.trace.sched
        b = self._windows(batches, stages)
        out = []
        for tid, grp in b.groupby("tid"):
            st = stages[stages["tid"] == tid]
            sc = sched[sched["tid"] == tid] if not sched.empty else sched
            starts = [st["ts"].to_numpy()]
            ends = [(st["ts"] + st["dur"]).to_numpy()]
            labels = [st["name"].map({n: i for i, n in enumerate(LABELS)}).to_numpy()]
            if not sc.empty:
                starts.append(sc["ts"].to_numpy())
                ends.append((sc["ts"] + sc["dur"]).to_numpy())
                labels.append(np.where(sc["reason"].to_numpy() == "preempted", 0, 1))
            tl = LabelTimeline(np.concatenate(starts), np.concatenate(ends),
                               np.concatenate(labels).astype(np.int64), len(LABELS))
            owned = tl.time_in(grp["ts"].to_numpy(), grp["window_end"].to_numpy())
            part = grp.copy()
            part["window_ns"] = part["window_end"] - part["ts"]
            for i, name in enumerate(LABELS):
                part[f"{name}_ns"] = owned[:, i]
            part["other_ns"] = part["window_ns"] - owned.sum(axis=1)
            self._add_short_calls(part)
            out.append(part)
        df = pd.concat(out).sort_values("ts")
        df = df.drop(columns=[c for c in ("end", "next_ts", "window_end") if c in df.columns])
        self._per_batch = df.reset_index(drop=True)
        return self._per_batch

    def _add_short_calls(self, part: pd.DataFrame) -> None:
        """Move the time of short stage calls (carried as batch arguments) from other_ns to
        their stages; `part` is one thread's batches in time order."""
        short = np.zeros((len(part), len(STAGES)))
        for i, name in enumerate(STAGES):
            if f"short_ns.{name}" in part.columns:
                short[:, i] += part[f"short_ns.{name}"].fillna(0).to_numpy(dtype=float)
            if self.scope == "step" and f"gap_short_ns.{name}" in part.columns:
                # the next batch carries the calls made after this one returned
                short[:, i] += part[f"gap_short_ns.{name}"].shift(-1).fillna(0).to_numpy(dtype=float)
        total = short.sum(axis=1)
        if not total.any():
            return
        other = part["other_ns"].to_numpy(dtype=float)
        # Never more than "other" holds (a short call that overlaps a written slice).
        scale = np.where(total > other, np.clip(other, 0, None) / np.where(total > 0, total, 1), 1.0)
        moved = np.floor(short * scale[:, None]).astype(np.int64)
        for i, name in enumerate(STAGES):
            part[f"{name}_ns"] = part[f"{name}_ns"].to_numpy() + moved[:, i]
        part["other_ns"] = part["other_ns"].to_numpy() - moved.sum(axis=1)

    def shares(self) -> pd.Series:
        """Share of all batch time owned by each stage (sums to 1)."""
        df = self.per_batch()
        total = df["window_ns"].sum()
        out = (df[STAGE_COLUMNS].sum() / total) if total else df[STAGE_COLUMNS].sum().astype(float)
        out.index = [c.removesuffix("_ns") for c in out.index]
        out.index.name = "stage"
        return out

    def by_phase(self) -> pd.DataFrame:
        df = self.per_batch()
        if df.empty:
            return pd.DataFrame()
        agg = df.groupby("phase").agg(batches=("ts", "size"), tokens=("n_tokens", "sum"),
                                      mean_ms=("window_ns", lambda d: d.mean() / 1e6),
                                      p50_ms=("window_ns", lambda d: d.quantile(0.5) / 1e6),
                                      p99_ms=("window_ns", lambda d: d.quantile(0.99) / 1e6))
        return agg

    def stages_by_phase(self) -> pd.DataFrame:
        """Mean ms per batch in each stage (rows) for each phase (columns)."""
        df = self.per_batch()
        if df.empty:
            return pd.DataFrame()
        out = (df.groupby("phase")[STAGE_COLUMNS].mean() / 1e6).T
        out.index = [c.removesuffix("_ns") for c in out.index]
        out.index.name = "stage (mean ms)"
        return out

    def by_batch_size(self, bins: list[int] | None = None) -> pd.DataFrame:
        df = self.per_batch()
        if df.empty:
            return pd.DataFrame()
        bins = bins or [0, 1, 2, 4, 8, 16, 64, 256, 1024, 1 << 30]
        groups = df.groupby(pd.cut(df["n_tokens"], bins=bins, right=True), observed=True)
        out = groups.agg(batches=("ts", "size"), tokens=("n_tokens", "sum"),
                         mean_ms=("window_ns", lambda d: d.mean() / 1e6),
                         p50_ms=("window_ns", lambda d: d.quantile(0.5) / 1e6),
                         p99_ms=("window_ns", lambda d: d.quantile(0.99) / 1e6))
        out["ms_per_token"] = groups["window_ns"].sum() / 1e6 / out["tokens"]
        out.index.name = "n_tokens"
        return out

    def percentiles(self, qs=(50, 90, 99)) -> pd.DataFrame:
        df = self.per_batch()
        if df.empty:
            return pd.DataFrame()
        rows = {}
        for phase, grp in [("all", df), *df.groupby("phase")]:
            rows[phase] = {f"p{q}": np.percentile(grp["window_ns"], q) / 1e6 for q in qs}
            rows[phase]["batches"] = len(grp)
        out = pd.DataFrame(rows).T
        out.index.name = "batch latency (ms)"
        return out
