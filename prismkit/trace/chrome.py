"""Chrome JSON traces (``{"traceEvents": [...]}`` or a bare list): read and write.

Read into the same columns as the Perfetto decoder, so a PyTorch profiler /
Kineto trace and a prismkit recording end up in the same tables:
  X (complete), B/E, i/I/n (instants; scope g/p/t), C (counters: one track per
  argument, named ``name`` when the only argument is ``value``, else
  ``"name key"``), M (process_name / thread_name), s/t/f flows (v1, with
  ``bp: "e"``), ``bind_id`` + ``flow_in``/``flow_out`` flows (v2), b/e/n async
  events (one track per (pid, cat, id, name)).
ts/dur are microseconds (numbers, possibly fractional) -> int ns, parsed as
decimals so that no precision is lost. A truncated file loads every complete
event before the cut.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from array import array
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np

from ._args import A_BOOL, A_DOUBLE, A_INT, A_NONE, A_OBJ, A_STR, A_UINT
from .reader import Stop, TrackInfo

_DEC = json.JSONDecoder(parse_float=Decimal)
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _plain(v):
    """Decimals -> float, recursively."""
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _ns(x) -> int:
    if x is None:
        return 0
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, int):
        return x * 1000
    if isinstance(x, Decimal):
        return int((x * 1000).to_integral_value(ROUND_HALF_EVEN))
    if isinstance(x, float):
        return int(round(x * 1000)) if math.isfinite(x) else 0
    if isinstance(x, str):
        try:
            return _ns(Decimal(x))
        except Exception:
            return 0
    return 0


def _parse(data: bytes) -> tuple[Any, Stop | None]:
    text = data.decode("utf-8", "replace")
    try:
        return _DEC.decode(text), None
    except json.JSONDecodeError as err:
        first_err = err
    # damaged or truncated: take events one by one up to the first bad one
    s = text.lstrip("\ufeff \t\r\n")
    lead = len(text) - len(s)
    if s.startswith("["):
        pos = lead + 1
    else:
        k = text.find('"traceEvents"')
        pos = text.find("[", k) + 1 if k >= 0 else 0
        if k < 0 or pos <= 0:
            return None, Stop(len(text[:first_err.pos].encode()), f"invalid JSON ({first_err.msg})")
    events = []
    n = len(text)
    good = pos
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            break
        try:
            ev, end = _DEC.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        events.append(ev)
        pos = good = end
    if pos < n and text[pos] == "]":
        stop = Stop(len(text[:first_err.pos].encode()), f"invalid JSON after the events ({first_err.msg})")
    else:
        stop = Stop(len(text[:good].encode()), "truncated or damaged JSON event")
    return {"traceEvents": events}, stop


class _Builder:
    def __init__(self) -> None:
        self.strings: list[str] = []
        self.codes: dict[str, int] = {}
        self.ev = {k: array(t) for k, t in (("ts", "q"), ("clk", "h"), ("track", "i"), ("name", "i"),
                                            ("cat", "i"), ("type", "b"))}
        self.ct = {k: array(t) for k, t in (("ts", "q"), ("clk", "h"), ("track", "i"), ("val", "d"), ("name", "i"))}
        self.cx = {k: array(t) for k, t in (("row", "i"), ("dur", "q"))}
        self.track_list: list[int] = []
        self.track_index: dict[int, int] = {}
        self.ar = {k: array(t) for k, t in (("ev", "i"), ("key", "i"), ("type", "b"), ("val", "q"))}
        self.fl = {k: array(t) for k, t in (("ev", "i"), ("id", "Q"), ("term", "b"))}
        self.objects: list = []
        self.tracks: dict[int, TrackInfo] = {}
        self.next_uuid = 1
        self.thread_uuid: dict = {}
        self.proc_uuid: dict = {}
        self.counter_uuid: dict = {}
        self.async_uuid: dict = {}
        self.global_uuid = None
        self.ids: dict = {}
        self.flow_specs: list = []
        self.unsupported = 0

    def s(self, x) -> int:
        if x is None:
            return -1
        x = str(x)
        c = self.codes.get(x)
        if c is None:
            c = self.codes[x] = len(self.strings)
            self.strings.append(x)
        return c

    def norm_id(self, x) -> int:
        if isinstance(x, bool):
            return int(x)
        if isinstance(x, int):
            return x
        if isinstance(x, Decimal) and x == x.to_integral_value():
            return int(x)
        if x is None:
            return 0
        try:
            return int(str(x), 0)
        except ValueError:
            pass
        v = self.ids.get(str(x))
        if v is None:
            v = self.ids[str(x)] = 0x7F000000 + len(self.ids)
        return v

    def _new(self, kind: str) -> TrackInfo:
        t = TrackInfo(self.next_uuid)
        self.next_uuid += 1
        t.kind = kind
        self.tracks[t.uuid] = t
        return t

    def process(self, pid: int, raw_pid=None) -> int:
        u = self.proc_uuid.get(pid)
        if u is None:
            t = self._new("process")
            t.pid = pid
            if raw_pid is not None and not isinstance(raw_pid, (int, Decimal)) and str(raw_pid) != str(pid):
                t.process_name = str(raw_pid)
            u = self.proc_uuid[pid] = t.uuid
        return u

    def thread(self, pid: int, tid: int, raw_pid=None, raw_tid=None) -> int:
        u = self.thread_uuid.get((pid, tid))
        if u is None:
            p = self.process(pid, raw_pid)
            t = self._new("thread")
            t.pid, t.tid, t.parent_uuid = pid, tid, p
            if raw_tid is not None and not isinstance(raw_tid, (int, Decimal)) and str(raw_tid) != str(tid):
                t.thread_name = str(raw_tid)
            u = self.thread_uuid[(pid, tid)] = t.uuid
        return u

    def tix(self, uuid: int) -> int:
        i = self.track_index.get(uuid)
        if i is None:
            i = self.track_index[uuid] = len(self.track_list)
            self.track_list.append(uuid)
        return i

    def push_event(self, ts: int, type_: int, track: int, name, cat, dur: int = -1) -> int:
        e = self.ev
        row = len(e["ts"])
        e["ts"].append(ts); e["clk"].append(0); e["track"].append(self.tix(track))
        e["name"].append(self.s(name)); e["cat"].append(self.s(cat)); e["type"].append(type_)
        if type_ == 4:
            self.cx["row"].append(row); self.cx["dur"].append(dur)
        return row

    def push_args(self, row: int, args) -> None:
        if not isinstance(args, dict):
            return
        ar = self.ar
        for k, v in args.items():
            if isinstance(v, bool):
                t, x = A_BOOL, int(v)
            elif isinstance(v, int):
                if _I64_MIN <= v <= _I64_MAX:
                    t, x = A_INT, v
                elif 0 <= v < (1 << 64):
                    t, x = A_UINT, v - (1 << 64)
                else:
                    t, x = A_OBJ, len(self.objects)
                    self.objects.append(v)
            elif isinstance(v, (Decimal, float)):
                t, x = A_DOUBLE, struct.unpack("<q", struct.pack("<d", float(v)))[0]
            elif isinstance(v, str):
                t, x = A_STR, self.s(v)
            elif v is None:
                t, x = A_NONE, 0
            else:
                t, x = A_OBJ, len(self.objects)
                self.objects.append(_plain(v))
            ar["ev"].append(row); ar["key"].append(self.s(k)); ar["type"].append(t); ar["val"].append(x)

    def flow_id(self, x) -> int:
        if isinstance(x, dict):
            x = x.get("global", x.get("local", next(iter(x.values()), 0)))
        if isinstance(x, bool):
            return int(x)
        if isinstance(x, int):
            return x & ((1 << 64) - 1)
        try:
            return int(str(x), 0) & ((1 << 64) - 1)
        except ValueError:
            return zlib.crc32(str(x).encode())

    def raw(self) -> dict:
        out = {}
        for prefix, cols in (("ev", self.ev), ("ct", self.ct), ("ar", self.ar), ("fl", self.fl), ("cx", self.cx)):
            for k, v in cols.items():
                out[f"{prefix}_{k}"] = v
        out.update(tracks=array("Q", self.track_list), clock_keys=array("q", [0]), strings=self.strings, objects=self.objects, descs=[], clocks=[],
                   packets=len(self.ev["ts"]) + len(self.ct["ts"]), skipped_no_state=0, unresolved_iids=0,
                   unsupported_events=self.unsupported)
        return out


def read_chrome_json(data: bytes):
    """-> (raw columns, tracks, v1 flow specs, other top-level keys, Stop or None)."""
    obj, stop = _parse(data)
    meta: dict = {}
    if isinstance(obj, dict):
        events = obj.get("traceEvents") or []
        for k, v in obj.items():
            if k not in ("traceEvents", "systemTraceEvents", "stackFrames", "samples"):
                meta[k] = _plain(v)
    elif isinstance(obj, list):
        events = obj
    else:
        events = []
    b = _Builder()
    names_p: dict[int, str] = {}
    names_t: dict[tuple, tuple] = {}
    for ev in events:
        if not isinstance(ev, dict):
            continue
        ph = ev.get("ph")
        raw_pid, raw_tid = ev.get("pid"), ev.get("tid")
        pid = b.norm_id(raw_pid)
        tid = b.norm_id(raw_tid if raw_tid is not None else raw_pid)
        if ph == "M":
            a = ev.get("args") or {}
            if ev.get("name") == "process_name":
                names_p[pid] = str(a.get("name", ""))
                b.process(pid, raw_pid)
            elif ev.get("name") == "thread_name":
                names_t[(pid, tid)] = (str(a.get("name", "")), a)
                b.thread(pid, tid, raw_pid, raw_tid)
            continue
        ts = _ns(ev.get("ts"))
        name, cat = ev.get("name"), ev.get("cat")
        if ph in ("X", "B", "E"):
            track = b.thread(pid, tid, raw_pid, raw_tid)
            if ph == "X":
                row = b.push_event(ts, 4, track, name, cat, max(_ns(ev.get("dur")), 0))
            else:
                row = b.push_event(ts, 1 if ph == "B" else 2, track, name if ph == "B" else None,
                                   cat if ph == "B" else None)
            b.push_args(row, ev.get("args"))
            bid = ev.get("bind_id")
            if bid is not None and (ev.get("flow_in") or ev.get("flow_out")):
                fid = b.flow_id(bid)
                term = bool(ev.get("flow_in")) and not ev.get("flow_out")
                b.fl["ev"].append(row); b.fl["id"].append(fid); b.fl["term"].append(int(term))
        elif ph in ("i", "I", "R"):
            scope = ev.get("s", "t")
            if scope == "g":
                if b.global_uuid is None:
                    t = b._new("other")
                    t.name = "global"
                    t.explicit_name = True
                    b.global_uuid = t.uuid
                track = b.global_uuid
            elif scope == "p":
                track = b.process(pid, raw_pid)
            else:
                track = b.thread(pid, tid, raw_pid, raw_tid)
            row = b.push_event(ts, 3, track, name, cat)
            b.push_args(row, ev.get("args"))
        elif ph == "C":
            a = ev.get("args") or {}
            p = b.process(pid, raw_pid)
            items = list(a.items()) if isinstance(a, dict) else []
            for k, v in items:
                if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
                    continue
                series = str(name) if (len(items) == 1 and k == "value") else f"{name} {k}"
                key = (pid, series)
                u = b.counter_uuid.get(key)
                if u is None:
                    t = b._new("counter")
                    t.name = series
                    t.explicit_name = True
                    t.parent_uuid = p
                    t.pid = pid
                    u = b.counter_uuid[key] = t.uuid
                c = b.ct
                c["ts"].append(ts); c["clk"].append(0); c["track"].append(b.tix(u)); c["val"].append(float(v))
                c["name"].append(-1)
        elif ph in ("s", "t", "f"):
            track = b.thread(pid, tid, raw_pid, raw_tid)
            fid_raw = ev.get("id", ev.get("id2"))
            key = (cat, json.dumps(_plain(fid_raw), sort_keys=True, default=str))
            b.flow_specs.append((ts, track, key, ph, ev.get("bp") == "e", b.flow_id(fid_raw)))
        elif ph in ("b", "e", "n"):
            aid = ev.get("id", ev.get("id2"))
            key = (pid, cat, json.dumps(_plain(aid), sort_keys=True, default=str), name if ph != "e" else None)
            u = b.async_uuid.get(key)
            if u is None and ph == "e":
                # an end event may omit the name: find the open track of this id
                cands = [v for k2, v in b.async_uuid.items() if k2[:3] == key[:3]]
                u = cands[-1] if cands else None
            if u is None:
                t = b._new("other")
                t.name = str(name)
                t.explicit_name = True
                t.parent_uuid = b.process(pid, raw_pid)
                t.pid = pid
                u = b.async_uuid[key] = t.uuid
            row = b.push_event(ts, {"b": 1, "e": 2, "n": 3}[ph], u, name if ph != "e" else None,
                               cat if ph != "e" else None)
            b.push_args(row, ev.get("args"))
        else:
            b.unsupported += 1
    for pid, nm in names_p.items():
        u = b.proc_uuid.get(pid)
        if u is not None:
            b.tracks[u].process_name = nm
    for key, (nm, a) in names_t.items():
        u = b.thread_uuid.get(key)
        if u is None:
            continue
        t = b.tracks[u]
        t.thread_name = nm
        if "prismkit.kind" in a:   # written by to_chrome_json: a non-thread track
            t.kind = str(a["prismkit.kind"])
            t.name = nm
            t.explicit_name = True
            rt = a.get("prismkit.tid")
            t.tid = int(rt) if rt is not None else None
            if t.kind == "process":
                t.tid = None
    return b.raw(), b.tracks, b.flow_specs, meta, stop


# ---------------------------------------------------------------- export

def _us(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    ns = abs(int(ns))
    return f"{sign}{ns // 1000}.{ns % 1000:03d}"


def _dumps(x) -> str:
    return json.dumps(x, ensure_ascii=False, default=_json_default)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


def write_chrome_json(trace, path) -> None:
    s = trace.slices
    tr = trace.tracks
    info = {int(u): (name, kind, pid, tid) for u, name, kind, pid, tid in zip(
        tr["uuid"].tolist(), tr["name"].tolist(), tr["kind"].tolist(), tr["pid"].tolist(), tr["tid"].tolist())}
    pseudo: dict[int, tuple[int, int]] = {}
    lines: list[str] = []
    procs_named: set = set()

    def na(x):
        return None if x is None or x is pd_NA or (isinstance(x, float) and math.isnan(x)) else int(x)

    for u, (name, kind, pid, tid) in sorted(info.items()):
        pid = na(pid)
        tid = na(tid)
        if kind == "process" and pid is not None and pid not in procs_named:
            procs_named.add(pid)
            lines.append(f'{{"ph":"M","name":"process_name","pid":{pid},"tid":{pid},"args":{{"name":{_dumps(name)}}}}}')
    next_pseudo = 0x7FFF0000
    for u in pd_unique(s["track_uuid"].to_numpy()):
        name, kind, pid, tid = info.get(int(u), ("", "other", None, None))
        pid, tid = na(pid), na(tid)
        if kind == "thread" and tid is not None:
            pseudo[int(u)] = (pid if pid is not None else 0, tid)
            lines.append(f'{{"ph":"M","name":"thread_name","pid":{pseudo[int(u)][0]},"tid":{tid},'
                         f'"args":{{"name":{_dumps(name)}}}}}')
            continue
        next_pseudo += 1
        pseudo[int(u)] = (pid if pid is not None else 0, next_pseudo)
        a = {"name": name, "prismkit.kind": kind, "prismkit.tid": tid, "prismkit.uuid": int(u)}
        lines.append(f'{{"ph":"M","name":"thread_name","pid":{pseudo[int(u)][0]},"tid":{next_pseudo},'
                     f'"args":{_dumps(a)}}}')
    ts = s["ts"].to_numpy()
    dur = s["dur"].to_numpy()
    names = s["name"].astype(object).tolist()
    cats = s["category"].astype(object).tolist()
    tracks = s["track_uuid"].to_numpy()
    inst = trace._slice_type == 3
    args = list(s["args"].array)
    for i in range(len(s)):
        pid, tid = pseudo[int(tracks[i])]
        parts = [f'"pid":{pid},"tid":{tid},"ts":{_us(ts[i])}']
        if inst[i]:
            head = '{"ph":"i","s":"t",'
        elif dur[i] < 0:
            head = '{"ph":"B",'
        else:
            head = '{"ph":"X",'
            parts.append(f'"dur":{_us(dur[i])}')
        nm = names[i]
        if nm is not None and nm == nm:
            parts.append(f'"name":{_dumps(nm)}')
        c = cats[i]
        if c is not None and c == c:
            parts.append(f'"cat":{_dumps(c)}')
        if args[i]:
            parts.append(f'"args":{_dumps(args[i])}')
        lines.append(head + ",".join(parts) + "}")
    c = trace.counters
    if len(c):
        cts = c["ts"].to_numpy()
        cn = c["name"].astype(object).tolist()
        cv = c["value"].to_numpy()
        cp = c["pid"].tolist()
        for i in range(len(c)):
            pid = na(cp[i])
            v = float(cv[i])
            vs = repr(v) if math.isfinite(v) else "0"
            lines.append(f'{{"ph":"C","name":{_dumps(cn[i])},"pid":{pid if pid is not None else 0},'
                         f'"ts":{_us(cts[i])},"args":{{"value":{vs}}}}}')
    f = trace.flows
    for k, (a, b_) in enumerate(zip(f["from_slice"].tolist(), f["to_slice"].tolist())):
        pa, ta = pseudo[int(tracks[a])]
        pb, tb = pseudo[int(tracks[b_])]
        fid = int(f["flow_id"].iloc[k])
        lines.append(f'{{"ph":"s","id":{fid},"cat":"flow{k}","name":"flow","pid":{pa},"tid":{ta},"ts":{_us(ts[a])}}}')
        lines.append(f'{{"ph":"f","bp":"e","id":{fid},"cat":"flow{k}","name":"flow","pid":{pb},"tid":{tb},'
                     f'"ts":{_us(ts[b_])}}}')
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"traceEvents":[\n')
        out.write(",\n".join(lines))
        out.write('\n],"displayTimeUnit":"ns"}\n')


def pd_unique(a: np.ndarray) -> list:
    import pandas as pd

    return pd.unique(a).tolist()


try:
    import pandas as _pd

    pd_NA = _pd.NA
except Exception:  # pragma: no cover
    pd_NA = None
