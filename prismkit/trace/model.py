"""``Trace``: the tables of one recording (see docs/trace-format.md for the conventions).

Generic tables, built at load:
  slices    ts, dur, name, category, track, track_uuid, pid, tid, depth, parent_id,
            args (dict per slice, built lazily; None when it has none), flow_ids.
            Index: slice_id. Instants are slices with dur 0; a slice whose END
            was never seen (trace cut short) has dur -1.
  counters  ts, track, track_uuid, name, value, pid, tid
  flows     flow_id, from_slice, to_slice (slice_ids)
  tracks    uuid, name, parent_uuid, pid, tid, kind (process/thread/counter/other), unit
  metadata  dict: args of the ``prismkit.metadata`` and ``prismkit.stats`` instants,
            ``lost_events`` (total), and reader facts (path, format, trace_clock,
            stopped_at_offset, ...)
Domain tables, built on first use from the slices' arguments:
  batches, requests, sched
Times are int64 nanoseconds on the trace clock.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from ._args import ArgStore

BATCH_INT_COLS = ["n_tokens", "n_seqs", "n_prefill_tokens", "n_decode_tokens", "kv_tokens", "batch_id", "n_outputs"]
BATCH_COLS = ["slice_id", "ts", "dur", "pid", "tid", "name", "n_tokens", "n_seqs", "n_prefill_tokens",
              "n_decode_tokens", "kv_tokens", "phase", "batch_id", "n_outputs", "ret"]
REQUEST_COLS = ["slice_id", "req_id", "ts_arrival", "ts_first_token", "ts_end", "ttft", "tpot", "e2e", "n_chunks",
                "bytes_in", "bytes_out", "pid", "track"]
SCHED_COLS = ["slice_id", "ts", "dur", "pid", "tid", "reason", "by_pid", "by_comm", "runq_wait_ns", "cpu", "track"]


class Trace:
    """Tables of one trace. Build with :func:`prismkit.load_trace`."""

    slices: pd.DataFrame
    counters: pd.DataFrame
    flows: pd.DataFrame
    tracks: pd.DataFrame
    metadata: dict

    def __init__(self) -> None:  # pragma: no cover - use load_trace
        raise TypeError("use prismkit.load_trace(path)")

    @classmethod
    def _from_tables(cls, tables: dict, meta: dict) -> "Trace":
        self = object.__new__(cls)
        self.slices = tables["slices"]
        self.counters = tables["counters"]
        self.flows = tables["flows"]
        self.tracks = tables["tracks"]
        self._args: ArgStore = tables["args"]
        self._slice_type = tables["slice_type"]
        from .reader import CLOCK_NAMES

        tc = tables.get("trace_clock")
        meta = dict(meta)
        meta["trace_clock"] = None if tc is None else CLOCK_NAMES.get(tc, str(tc))
        meta["trace_clock_id"] = tc
        self.metadata = self._collect_metadata(meta)
        return self

    # -- metadata ------------------------------------------------------------
    def _collect_metadata(self, reader_meta: dict) -> dict:
        out: dict[str, Any] = {}
        s = self.slices
        names = s["name"]
        for nm in ("prismkit.metadata", "prismkit.stats"):
            rows = np.nonzero((names == nm).to_numpy(dtype=bool, na_value=False))[0]
            for d in self._args.dicts(rows):
                if d:
                    out.update(d)
        lost = out.get("lost_events")
        if not isinstance(lost, (int, np.integer)):
            per = [v for k, v in out.items() if k.startswith("lost_events.") and isinstance(v, (int, float))]
            if per:
                lost = int(sum(per))
            else:
                c = self.counters
                m = c["name"].astype(str).str.startswith("lost_events").to_numpy(dtype=bool) if len(c) else []
                lost = int(c[m].groupby("track_uuid", observed=True)["value"].last().sum()) if len(c) and m.any() else 0
        out["lost_events"] = int(lost)
        for k, v in reader_meta.items():
            if k in out and k not in ("stopped_at_offset",):
                out[f"reader.{k}"] = v
            else:
                out[k] = v
        return out

    # -- args ------------------------------------------------------------------
    def arg(self, key: str, slices: pd.DataFrame | None = None, default=np.nan) -> np.ndarray:
        """Vectorized value of argument ``key`` for each row of ``slices`` (default: all slices)."""
        idx = self.slices.index.to_numpy() if slices is None else slices.index.to_numpy()
        return self._args.column(key, idx, default)

    def args_table(self) -> pd.DataFrame:
        """All slice arguments in long form: slice_id, key, value."""
        return self._args.long_table()

    def _is_instant(self, rows: np.ndarray) -> np.ndarray:
        return self._slice_type[rows] == 3

    def _category_rows(self, category: str, complete_only: bool = True, instants: bool = False) -> np.ndarray:
        s = self.slices
        m = (s["category"] == category).to_numpy(dtype=bool, na_value=False)
        if complete_only:
            m = m & (s["dur"].to_numpy() >= 0)
        rows = np.nonzero(m)[0]
        inst = self._is_instant(rows)
        return rows[inst] if instants else rows[~inst]

    def _int_col(self, key: str, rows: np.ndarray) -> np.ndarray:
        v = self._args.column(key, rows)
        if v.dtype == object:
            v = pd.to_numeric(pd.Series(v), errors="coerce").to_numpy(dtype=float)
        return v

    # -- domain tables -----------------------------------------------------
    @functools.cached_property
    def batches(self) -> pd.DataFrame:
        """One row per engine step (category 'batch'), with its workload arguments.

        Columns: slice_id, ts, dur, pid, tid, name, n_tokens, n_seqs, n_prefill_tokens,
        n_decode_tokens, kv_tokens, phase, batch_id, n_outputs, ret, then any other
        argument of batch slices. Integer columns are int64 when every batch has
        the argument, else float64 with NaN. Batches whose END was not seen are left out.
        """
        rows = self._category_rows("batch")
        s = self.slices
        if len(rows) == 0:
            return _empty(BATCH_COLS, {"name": str, "phase": str})
        cols: dict = {
            "slice_id": rows.astype(np.int64),
            "ts": s["ts"].to_numpy()[rows],
            "dur": s["dur"].to_numpy()[rows],
            "pid": s["pid"].array[rows],
            "tid": s["tid"].array[rows],
            "name": pd.Series(np.asarray(s["name"].array[rows], dtype=object), dtype=object),
        }
        for k in BATCH_INT_COLS:
            cols[k] = self._int_col(k, rows)
        phase = self._args.column("phase", rows, default=None)
        if phase.dtype != object or (phase == None).any():  # noqa: E711
            pre = np.asarray(cols["n_prefill_tokens"], dtype=float)
            dec = np.asarray(cols["n_decode_tokens"], dtype=float)
            derived = np.where(pre > 0, np.where(dec > 0, "mixed", "prefill"),
                               np.where(dec > 0, "decode", None)).astype(object)
            derived[np.isnan(pre) | np.isnan(dec)] = None
            phase = np.asarray(phase, dtype=object)
            miss = np.array([p is None for p in phase], dtype=bool)
            phase[miss] = derived[miss]
        cols["phase"] = pd.Series(phase, dtype=object)
        cols["ret"] = self._int_col("ret", rows)
        for k in self._args.keys(rows):
            if k not in cols:
                cols[k] = self._args.column(k, rows)
        order = [c for c in BATCH_COLS if c in cols] + [c for c in cols if c not in BATCH_COLS]
        return pd.DataFrame({c: cols[c] for c in order}, copy=False)

    @functools.cached_property
    def requests(self) -> pd.DataFrame:
        """One row per client request (category 'request' slices).

        ts_arrival = slice start, ts_end = slice end, ts_first_token from the
        ``ts_first_token`` argument or else the earliest ``first_token`` instant
        inside the request slice; ttft = ts_first_token - ts_arrival;
        e2e = ts_end - ts_arrival; tpot = (ts_end - ts_first_token) / (n_chunks - 1)
        (NaN when n_chunks < 2). n_chunks from the argument or else the count of
        ``chunk`` instants inside the request. Times are ns; ts_first_token and
        ttft are nullable Int64.
        """
        rows = self._category_rows("request")
        s = self.slices
        if len(rows) == 0:
            return _empty(REQUEST_COLS, {"track": str})
        ts = s["ts"].to_numpy()[rows]
        dur = s["dur"].to_numpy()[rows]
        req_id = self._args.column("req_id", rows, default=None)
        if req_id.dtype == object:
            req_id = np.array([rows[i] if v is None else v for i, v in enumerate(req_id)], dtype=object)
            try:
                req_id = req_id.astype(np.int64)
            except (TypeError, ValueError):
                pass
        ftok = self._int_col("ts_first_token", rows)
        n_chunks = self._int_col("n_chunks", rows).astype(float)
        # instants inside the requests
        inst = self._category_rows("request", complete_only=False, instants=True)
        if len(inst):
            par = s["parent_id"].to_numpy()[inst]
            its = s["ts"].to_numpy()[inst]
            iname = np.asarray(s["name"].array[inst], dtype=object)
            pos = np.full(len(s), -1, dtype=np.int64)
            pos[rows] = np.arange(len(rows))
            where = np.where(par >= 0, pos[np.maximum(par, 0)], -1)
            ft = (iname == "first_token") & (where >= 0)
            if ft.any():
                first = pd.Series(its[ft]).groupby(where[ft]).min()
                cur = ftok.astype(float)
                idx = first.index.to_numpy()
                fill = np.isnan(cur[idx])
                cur[idx[fill]] = first.to_numpy()[fill]
                ftok = cur
            ch = (iname == "chunk") & (where >= 0)
            if ch.any():
                cnt = np.bincount(where[ch], minlength=len(rows)).astype(float)
                miss = np.isnan(n_chunks) & (cnt > 0)
                n_chunks[miss] = cnt[miss]
        ftok_f = np.asarray(ftok, dtype=float)
        ts_end = ts + dur
        # TPOT over the generated tokens when the recorder counted them (n_tokens:
        # the closing event of a stream is a chunk but not a token), else over chunks.
        n_tok = self._int_col("n_tokens", rows).astype(float)
        per = np.where(np.isnan(n_tok), n_chunks, n_tok)
        tpot = np.where(per > 1, (ts_end - ftok_f) / np.maximum(per - 1, 1), np.nan)
        out = {
            "slice_id": rows.astype(np.int64),
            "req_id": req_id,
            "ts_arrival": ts,
            "ts_first_token": _nullable_int(ftok_f),
            "ts_end": ts_end,
            "ttft": _nullable_int(ftok_f - ts),
            "tpot": tpot,
            "e2e": dur,
            "n_chunks": _maybe_int(n_chunks),
            "bytes_in": _maybe_int(self._int_col("bytes_in", rows)),
            "bytes_out": _maybe_int(self._int_col("bytes_out", rows)),
            "pid": s["pid"].array[rows],
            "track": pd.Series(np.asarray(s["track"].array[rows], dtype=object), dtype=object),
        }
        for k in self._args.keys(rows):
            if k not in out:
                out[k] = self._args.column(k, rows)
        return pd.DataFrame(out, copy=False)

    @functools.cached_property
    def sched(self) -> pd.DataFrame:
        """Off-CPU intervals of engine threads (category 'sched').

        Columns: slice_id, ts, dur, pid, tid, reason ('preempted'/'blocked'),
        by_pid, by_comm, runq_wait_ns, cpu, track.
        """
        rows = self._category_rows("sched")
        s = self.slices
        if len(rows) == 0:
            return _empty(SCHED_COLS, {"reason": str, "by_comm": str, "track": str})
        return pd.DataFrame({
            "slice_id": rows.astype(np.int64),
            "ts": s["ts"].to_numpy()[rows],
            "dur": s["dur"].to_numpy()[rows],
            "pid": s["pid"].array[rows],
            "tid": s["tid"].array[rows],
            "reason": pd.Series(np.asarray(s["name"].array[rows], dtype=object), dtype=object),
            "by_pid": _maybe_int(self._int_col("by_pid", rows)),
            "by_comm": pd.Series(self._args.column("by_comm", rows, default=None), dtype=object),
            "runq_wait_ns": _maybe_int(self._int_col("runq_wait_ns", rows)),
            "cpu": _maybe_int(self._int_col("cpu", rows)),
            "track": pd.Series(np.asarray(s["track"].array[rows], dtype=object), dtype=object),
        }, copy=False)

    # -- export ----------------------------------------------------------------
    def to_chrome_json(self, path) -> None:
        """Write the slices, counters and flows as a Chrome JSON trace (opens in ui.perfetto.dev).

        Thread tracks keep their pid/tid; other tracks (sched lanes, request lanes,
        process tracks) become pseudo-threads named after the track, with the
        real tid in the metadata event's ``prismkit.tid`` arg so that
        ``load_trace`` reads the same table back. ts/dur are written in
        microseconds with 3 decimals (exact ns).
        """
        from .chrome import write_chrome_json

        write_chrome_json(self, path)

    def __repr__(self) -> str:
        return (f"<Trace {self.metadata.get('path')}: {len(self.slices)} slices, {len(self.counters)} counter "
                f"samples, {len(self.flows)} flows, {len(self.tracks)} tracks>")


def _nullable_int(x: np.ndarray) -> pd.arrays.IntegerArray:
    x = np.asarray(x, dtype=float)
    mask = np.isnan(x)
    return pd.arrays.IntegerArray(np.where(mask, 0, x).astype(np.int64), mask)


def _maybe_int(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "f" and len(x) and not np.isnan(x).any() and (x == np.round(x)).all():
        return x.astype(np.int64)
    return x


def _empty(cols: list[str], str_cols: dict) -> pd.DataFrame:
    data = {}
    for c in cols:
        if c in str_cols:
            data[c] = pd.Series([], dtype=object)
        elif c in ("pid", "tid", "ts_first_token", "ttft"):
            data[c] = pd.array([], dtype="Int64")
        elif c == "tpot":
            data[c] = np.empty(0, dtype=float)
        else:
            data[c] = np.empty(0, dtype=np.int64)
    return pd.DataFrame(data)
