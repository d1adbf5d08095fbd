"""Optional backend: Perfetto's TraceProcessor (a trace_processor_shell binary you supply).

``load_trace(path, trace_processor_bin=...)`` (or env PRISM_TRACE_PROCESSOR)
queries the binary through ``perfetto.trace_processor`` and returns the same
tables as the native reader. The binary is never downloaded: a bin_path is
always given, and a missing one is a PrismError.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..errors import PrismError
from ._args import A_BOOL, A_DOUBLE, A_INT, A_NONE, A_STR, ArgStore, ArgsArray
from .reader import CLOCK_NAMES, empty_counters

SLICES_SQL = """
select s.id, s.ts, s.dur, s.name, s.category, s.depth, s.parent_id, s.track_id, s.arg_set_id,
       t.name as track_name,
       th.tid as tid,
       coalesce(p.pid, thp.pid) as pid
from slice s
left join track t on t.id = s.track_id
left join thread_track tt on tt.id = s.track_id
left join thread th on th.utid = tt.utid
left join process thp on thp.upid = th.upid
left join process_track pt on pt.id = s.track_id
left join process p on p.upid = pt.upid
order by s.ts, s.id
"""

COUNTERS_SQL = """
select c.ts, c.value, c.track_id, t.name as track_name,
       th.tid as tid, coalesce(p.pid, thp.pid) as pid
from counter c
left join track t on t.id = c.track_id
left join thread_counter_track tt on tt.id = c.track_id
left join thread th on th.utid = tt.utid
left join process thp on thp.upid = th.upid
left join process_counter_track pt on pt.id = c.track_id
left join process p on p.upid = pt.upid
order by c.ts, c.id
"""

ARGS_SQL = """
select a.arg_set_id, a.key, a.int_value, a.string_value, a.real_value, a.value_type
from args a
where a.arg_set_id in (select distinct arg_set_id from slice where arg_set_id is not null)
  and a.key like 'debug.%'
order by a.arg_set_id, a.id
"""


def _query(tp, sql: str) -> pd.DataFrame:
    return tp.query(sql).as_pandas_dataframe()


def load_with_trace_processor(path: str, bin_path: str, clock: int | None = None):
    from .model import Trace

    if not os.path.exists(path):
        raise PrismError(f"trace not found: {path}")
    if not (os.path.isfile(bin_path) and os.access(bin_path, os.X_OK)):
        raise PrismError(f"trace_processor binary not found or not executable: {bin_path}")
    try:
        from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig
    except ImportError as e:  # pragma: no cover - perfetto is a dependency
        raise PrismError(f"the perfetto package is needed for the TraceProcessor backend: {e}") from None
    try:
        # bin_path given and fetch_latest off: the perfetto package never downloads a binary
        tp = TraceProcessor(trace=path, config=TraceProcessorConfig(bin_path=bin_path,
                                                                   fetch_latest_trace_processor=False))
    except Exception as e:
        raise PrismError(f"trace_processor could not load {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    try:
        s = _query(tp, SLICES_SQL)
        c = _query(tp, COUNTERS_SQL)
        a = _query(tp, ARGS_SQL)
        f = _query(tp, "select slice_out, slice_in from flow order by id")
        tr = _query(tp, "select id, name, type from track")
    except Exception as e:
        raise PrismError(f"trace_processor query failed on {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    finally:
        try:
            tp.close()
        except Exception:
            pass
    return Trace._from_tables(_tables(s, c, a, f, tr), {
        "path": path, "format": "perfetto", "reader": "trace_processor", "stopped_at_offset": None,
        "warnings": []})


def _tables(s: pd.DataFrame, c: pd.DataFrame, a: pd.DataFrame, f: pd.DataFrame, tr: pd.DataFrame) -> dict:
    ns = len(s)
    id_to_row = {int(i): k for k, i in enumerate(s["id"].tolist())}
    parent = np.array([id_to_row.get(int(p), -1) if pd.notna(p) else -1 for p in s["parent_id"]], dtype=np.int64)
    # args: one pseudo-event per slice (the slice row itself)
    strings: list[str] = []
    codes: dict[str, int] = {}

    def code(x: str) -> int:
        k = codes.get(x)
        if k is None:
            k = codes[x] = len(strings)
            strings.append(x)
        return k

    set_rows: dict[int, list[int]] = {}
    for k, aid in enumerate(s["arg_set_id"].tolist()):
        if pd.notna(aid):
            set_rows.setdefault(int(aid), []).append(k)
    ar_ev, ar_key, ar_type, ar_val = [], [], [], []
    for aid, key, iv, sv, rv, vt in a.itertuples(index=False):
        rows = set_rows.get(int(aid), [])
        key = str(key)[len("debug."):]
        if vt in ("int", "uint", "pointer"):
            t, v = A_INT, int(iv)
        elif vt == "bool":
            t, v = A_BOOL, int(iv)
        elif vt == "real":
            t, v = A_DOUBLE, int(np.float64(rv).view(np.int64))
        elif vt in ("string", "json"):
            t, v = A_STR, code(str(sv))
        else:
            t, v = A_NONE, 0
        for r in rows:
            ar_ev.append(r)
            ar_key.append(code(key))
            ar_type.append(t)
            ar_val.append(v)
    order = np.argsort(np.array(ar_ev, dtype=np.int64), kind="stable")
    ar_ev_a = np.array(ar_ev, dtype=np.int32)[order]
    ev_off = np.zeros(ns + 1, dtype=np.int64)
    if len(ar_ev_a):
        np.cumsum(np.bincount(ar_ev_a, minlength=ns), out=ev_off[1:])
    rows = np.arange(ns, dtype=np.int64)
    store = ArgStore(ev_off, ar_ev_a, np.array(ar_key, dtype=np.int32)[order], np.array(ar_type, dtype=np.int8)[order],
                     np.array(ar_val, dtype=np.int64)[order], strings, [], rows, np.full(ns, -1, dtype=np.int64), rows)
    track_names = dict(zip(tr["id"].tolist(), tr["name"].tolist()))
    slices = pd.DataFrame({
        "ts": s["ts"].to_numpy(dtype=np.int64),
        "dur": s["dur"].to_numpy(dtype=np.int64),
        "name": pd.Categorical(s["name"].astype(object)),
        "category": pd.Categorical(s["category"].astype(object)),
        "track": pd.Categorical([track_names.get(t) or "" for t in s["track_id"].tolist()]),
        "track_uuid": s["track_id"].to_numpy(dtype=np.uint64),
        "pid": pd.array(s["pid"], dtype="Int64"),
        "tid": pd.array(s["tid"], dtype="Int64"),
        "depth": s["depth"].to_numpy(dtype=np.int32),
        "parent_id": parent,
        "args": ArgsArray(store, rows),
        "flow_ids": pd.Series(np.full(ns, None, dtype=object), dtype=object),
    })
    slices.index.name = "slice_id"
    sty = np.where(s["dur"].to_numpy() == 0, 3, 1).astype(np.int8)
    if len(c):
        counters = pd.DataFrame({
            "ts": c["ts"].to_numpy(dtype=np.int64),
            "track": pd.Categorical(c["track_name"].fillna("").astype(object)),
            "track_uuid": c["track_id"].to_numpy(dtype=np.uint64),
            "name": pd.Categorical(c["track_name"].fillna("").astype(object)),
            "value": c["value"].to_numpy(dtype=np.float64),
            "pid": pd.array(c["pid"], dtype="Int64"),
            "tid": pd.array(c["tid"], dtype="Int64"),
        })
    else:
        counters = empty_counters()
    flows = pd.DataFrame({
        "flow_id": np.arange(len(f), dtype=np.uint64),
        "from_slice": np.array([id_to_row.get(int(x), -1) for x in f["slice_out"]], dtype=np.int64),
        "to_slice": np.array([id_to_row.get(int(x), -1) for x in f["slice_in"]], dtype=np.int64),
    })
    tracks = pd.DataFrame({
        "uuid": tr["id"].to_numpy(dtype=np.uint64), "name": tr["name"].fillna("").astype(str),
        "parent_uuid": pd.array([None] * len(tr), dtype="UInt64"), "pid": pd.array([None] * len(tr), dtype="Int64"),
        "tid": pd.array([None] * len(tr), dtype="Int64"),
        "kind": tr["type"].astype(str).map(lambda t: "thread" if "thread" in t else "process" if "process" in t
                                           else "counter" if "counter" in t else "other"),
        "unit": pd.array([None] * len(tr), dtype=object)})
    return {"slices": slices, "counters": counters, "flows": flows, "tracks": tracks, "args": store,
            "slice_type": sty, "trace_clock": None}


__all__ = ["load_with_trace_processor", "CLOCK_NAMES"]
