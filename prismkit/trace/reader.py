"""``load_trace``: a Perfetto protobuf or Chrome JSON trace into pandas tables.

Pipeline (see docs/trace-format.md for the conventions):

1. bytes -> columns. A Perfetto trace is fed in chunks to the decoder
   (``_wire.c``, or its twin ``_pywire.py``), which keeps the per-sequence
   incremental state (interning, packet defaults, clocks) and returns flat
   columns of events, counters, arguments and flows plus the rare descriptor
   and clock-snapshot packets. A Chrome JSON trace is turned into the same
   columns by ``chrome.py``.
2. clocks: every timestamp is moved to the trace's primary clock (or the
   clock asked for) through the clock snapshots.
3. slices: BEGIN/END events are paired per track in timestamp order (a stack
   per track), giving depth and parent; END arguments are merged into the
   slice's arguments; flows are linked.
4. tables: pandas DataFrames (``Trace``); domain tables are built on demand.
"""
from __future__ import annotations

import os
import warnings
import zlib
from collections import deque
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..errors import PrismError
from . import _backend
from ._args import ArgStore
from ._pywire import _fields, synth_thread_uuid

CHUNK = 1 << 20

CLOCK_NAMES = {1: "realtime", 2: "realtime_coarse", 3: "monotonic", 4: "monotonic_coarse", 5: "monotonic_raw",
               6: "boottime", 9: "tsc", 10: "perf", 11: "trace_file"}
CLOCK_IDS = {v: k for k, v in CLOCK_NAMES.items()}
DEFAULT_TRACE_CLOCK = 6  # BOOTTIME, when a trace names no primary clock


class TraceWarning(UserWarning):
    """Something in the trace was skipped or could not be read."""


# ---------------------------------------------------------------- sources

class _Source:
    """A trace file: sniffs gzip and the format, yields byte chunks."""

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.path.exists(path):
            raise PrismError(f"trace not found: {path}")
        if os.path.isdir(path):
            raise PrismError(f"not a trace file (a directory): {path}")
        try:
            self.size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(2)
        except OSError as e:
            raise PrismError(f"cannot read trace {path}: {e.strerror or e}") from None
        self.gzipped = head == b"\x1f\x8b"
        head = b""
        for chunk in self.chunks(65536):
            head = chunk
            break
        if not head:
            raise PrismError(f"empty trace file: {path}")
        first = head.lstrip(b" \t\r\n")
        if first.startswith(b"\xef\xbb\xbf"):
            first = first[3:].lstrip(b" \t\r\n")
        sample = head[:256]
        textlike = all(b >= 0x20 or b in (9, 10, 13) for b in sample) and max(sample) < 0x80
        if first[:1] in (b"{", b"[") and (head[:1] != b"\x0a" or textlike):
            self.format = "chrome_json"
        elif head[:1] == b"\x0a":
            self.format = "perfetto"
        elif not first:
            raise PrismError(f"empty trace file: {path}")
        else:
            where = " (after gunzip)" if self.gzipped else ""
            raise PrismError(f"not a Perfetto or Chrome JSON trace{where}: {path} starts with byte 0x{first[0]:02x} "
                             f"at offset 0")

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as f:
                if not self.gzipped:
                    while True:
                        b = f.read(size)
                        if not b:
                            return
                        yield b
                d = zlib.decompressobj(31)
                while True:
                    b = f.read(size)
                    if not b:
                        tail = d.flush()
                        if tail:
                            yield tail
                        return
                    while b:
                        try:
                            out = d.decompress(b)
                        except zlib.error:
                            self.gzip_error = True
                            return
                        if out:
                            yield out
                        if d.eof:
                            b = d.unused_data
                            d = zlib.decompressobj(31)
                            if not b.startswith(b"\x1f\x8b"):
                                b = b""
                        else:
                            b = b""
        except OSError as e:
            raise PrismError(f"cannot read trace {self.path}: {e.strerror or e}") from None

    def read_all(self) -> bytes:
        return b"".join(self.chunks())


class _BytesSource(_Source):
    """Perfetto protobuf bytes already in memory (TraceTail's window), read like a file."""

    def __init__(self, data: bytes, name: str) -> None:
        self.path, self.data, self.size = name, data, len(data)
        self.gzipped = False
        self.format = "perfetto"
        if not data:
            raise PrismError(f"empty trace: {name}")

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        mv = memoryview(self.data)
        for i in range(0, len(self.data), size):
            yield bytes(mv[i:i + size])


# ---------------------------------------------------------------- clocks

class ClockConverter:
    """Converts timestamps between clocks using the trace's clock snapshots.

    For a timestamp t on clock A, the snapshot with the largest A value <= t
    (the first one for earlier t) gives the offset to clock B; clocks not in a
    common snapshot are reached through intermediate clocks.
    """

    def __init__(self, snapshots: list) -> None:
        self.primary = None
        self.pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self.clocks: set[int] = set()
        for _seq, primary, clocks in snapshots:
            if primary is not None and primary >= 0 and self.primary is None:
                self.primary = int(primary)
            for a, ta in clocks:
                self.clocks.add(a)
                for b, tb in clocks:
                    if a != b:
                        self.pairs.setdefault((a, b), []).append((ta, tb))
        self._tables: dict = {}

    def trace_clock(self) -> int:
        return self.primary if self.primary is not None else DEFAULT_TRACE_CLOCK

    def _path(self, src: int, dst: int) -> list[int] | None:
        if src == dst:
            return [src]
        prev = {src: None}
        q = deque([src])
        adj: dict[int, list[int]] = {}
        for a, b in self.pairs:
            adj.setdefault(a, []).append(b)
        while q:
            a = q.popleft()
            for b in adj.get(a, ()):
                if b not in prev:
                    prev[b] = a
                    if b == dst:
                        path = [b]
                        while prev[path[-1]] is not None:
                            path.append(prev[path[-1]])
                        return path[::-1]
                    q.append(b)
        return None

    def _hop(self, a: int, b: int, t: np.ndarray) -> np.ndarray:
        tab = self._tables.get((a, b))
        if tab is None:
            pts = sorted(self.pairs[(a, b)])
            tab = self._tables[(a, b)] = (np.array([p[0] for p in pts], dtype=np.int64),
                                          np.array([p[1] - p[0] for p in pts], dtype=np.int64))
        src, off = tab
        idx = np.searchsorted(src, t, side="right") - 1
        np.clip(idx, 0, len(src) - 1, out=idx)
        return t + off[idx]

    def convert(self, ts: np.ndarray, keys: np.ndarray, target: int, trace_clock: int,
                problems: list[str]) -> np.ndarray:
        """ts on clocks ``keys`` (0 = trace clock) -> ts on clock ``target``."""
        if len(ts) == 0:
            return np.asarray(ts, dtype=np.int64)
        kmin, kmax = int(keys.min()), int(keys.max())
        uniq = [kmin] if kmin == kmax else np.unique(keys).tolist()
        out = None
        for k in uniq:
            src = trace_clock if k == 0 else int(k)
            if src == target:
                continue
            path = self._path(src, target)
            if out is None:
                out = np.array(ts, dtype=np.int64, copy=True)
            if path is None:
                problems.append(f"no clock snapshot relates clock {_clock_name(src)} to {_clock_name(target)}; "
                                f"its timestamps are left as they are")
                continue
            sel = slice(None) if len(uniq) == 1 else (keys == k)
            t = out[sel]
            for a, b in zip(path, path[1:]):
                t = self._hop(a, b, t)
            out[sel] = t
        return np.asarray(ts, dtype=np.int64) if out is None else out


def _clock_name(cid: int) -> str:
    if cid >= (1 << 40):
        return f"sequence-scoped {cid & 0xFF} (sequence {(cid >> 8) & 0xFFFFFFFF})"
    return CLOCK_NAMES.get(cid, str(cid))


def _resolve_clock(clock) -> int | None:
    if clock is None:
        return None
    if isinstance(clock, (int, np.integer)):
        return int(clock)
    name = str(clock).lower().replace("builtin_clock_", "").replace("clock_", "")
    if name in CLOCK_IDS:
        return CLOCK_IDS[name]
    raise PrismError(f"unknown clock {clock!r}; use one of {', '.join(sorted(CLOCK_IDS))} or a clock id")


# ---------------------------------------------------------------- descriptors

def _s64(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def _i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def _dec_str(buf: bytes, span) -> str:
    return buf[span[0]:span[1]].decode("utf-8", "replace")


def _parse_process(buf: bytes, a: int = 0, b: int | None = None) -> dict:
    out: dict[str, Any] = {"cmdline": []}
    for num, wt, v in _fields(buf, a, len(buf) if b is None else b):
        if num == 1 and wt == 0:
            out["pid"] = _i32(v)
        elif num == 2 and wt == 2:
            out["cmdline"].append(_dec_str(buf, v))
        elif num == 6 and wt == 2:
            out["process_name"] = _dec_str(buf, v)
    return out


def _parse_thread(buf: bytes, a: int = 0, b: int | None = None) -> dict:
    out: dict[str, Any] = {}
    for num, wt, v in _fields(buf, a, len(buf) if b is None else b):
        if num == 1 and wt == 0:
            out["pid"] = _i32(v)
        elif num == 2 and wt == 0:
            out["tid"] = _i32(v)
        elif num == 5 and wt == 2:
            out["thread_name"] = _dec_str(buf, v)
    return out


def _parse_counter(buf: bytes, a: int, b: int) -> dict:
    out: dict[str, Any] = {}
    units = {1: "ns", 2: "count", 3: "bytes"}
    for num, wt, v in _fields(buf, a, b):
        if num == 3 and wt == 0:
            out["unit"] = units.get(v)
        elif num == 6 and wt == 2:
            out["unit"] = _dec_str(buf, v)
        elif num == 4 and wt == 0:
            out["unit_multiplier"] = _s64(v)
        elif num == 5 and wt == 0:
            out["is_incremental"] = v != 0
    return out


def _parse_track_descriptor(buf: bytes) -> dict:
    out: dict[str, Any] = {}
    for num, wt, v in _fields(buf, 0, len(buf)):
        if num == 1 and wt == 0:
            out["uuid"] = v
        elif num == 5 and wt == 0:
            out["parent_uuid"] = v
        elif num in (2, 10, 13) and wt == 2:
            out["name"] = _dec_str(buf, v)
        elif num == 3 and wt == 2:
            out["process"] = _parse_process(buf, *v)
        elif num == 4 and wt == 2:
            out["thread"] = _parse_thread(buf, *v)
        elif num == 8 and wt == 2:
            out["counter"] = _parse_counter(buf, *v)
        elif num == 6 and wt == 2:
            out.setdefault("chrome_process", True)
        elif num == 7 and wt == 2:
            out.setdefault("chrome_thread", True)
    return out


def synth_process_uuid(pid: int) -> int:
    return (1 << 63) | (1 << 62) | (pid & 0xFFFFFFFF)


class TrackInfo:
    __slots__ = ("uuid", "name", "parent_uuid", "pid", "tid", "kind", "unit", "unit_multiplier", "is_incremental",
                 "process_name", "thread_name", "cmdline", "explicit_name")

    def __init__(self, uuid: int) -> None:
        self.uuid = uuid
        self.name = None
        self.explicit_name = False
        self.parent_uuid = None
        self.pid = None
        self.tid = None
        self.kind = "other"
        self.unit = None
        self.unit_multiplier = 1
        self.is_incremental = False
        self.process_name = None
        self.thread_name = None
        self.cmdline = None


def tracks_from_descs(descs: list, problems: list[str]) -> tuple[dict[int, TrackInfo], dict[int, int]]:
    """Track infos from descriptor packets; and synthetic-thread-uuid -> described-uuid remaps."""
    tracks: dict[int, TrackInfo] = {}
    legacy_threads: dict[int, dict] = {}
    legacy_procs: dict[int, dict] = {}
    bad = 0
    for kind, _seq, payload, _row in descs:
        try:
            if kind == 1:
                d = _parse_track_descriptor(payload)
                uuid = d.get("uuid", 0)
                t = tracks.get(uuid) or TrackInfo(uuid)
                tracks[uuid] = t
                if "parent_uuid" in d:
                    t.parent_uuid = d["parent_uuid"]
                if "name" in d:
                    t.name = d["name"]
                    t.explicit_name = True
                if "process" in d:
                    p = d["process"]
                    t.kind = "process"
                    t.pid = p.get("pid", t.pid)
                    t.process_name = p.get("process_name", t.process_name)
                    t.cmdline = p.get("cmdline") or t.cmdline
                if "thread" in d:
                    th = d["thread"]
                    t.kind = "thread"
                    t.pid = th.get("pid", t.pid)
                    t.tid = th.get("tid", t.tid)
                    t.thread_name = th.get("thread_name", t.thread_name)
                if "counter" in d:
                    c = d["counter"]
                    t.kind = "counter"
                    t.unit = c.get("unit")
                    t.unit_multiplier = c.get("unit_multiplier") or 1
                    t.is_incremental = bool(c.get("is_incremental"))
            elif kind == 2:
                p = _parse_process(payload)
                if "pid" in p:
                    legacy_procs[p["pid"]] = p
            elif kind == 3:
                th = _parse_thread(payload)
                if "tid" in th:
                    legacy_threads[synth_thread_uuid(th.get("pid", 0), th["tid"])] = th
        except Exception:  # a malformed descriptor: skip it, keep the rest
            bad += 1
    if bad:
        problems.append(f"{bad} malformed track/process/thread descriptor(s) skipped")
    # process names for legacy descriptors, and for described processes
    for pid, p in legacy_procs.items():
        u = synth_process_uuid(pid)
        if not any(t.kind == "process" and t.pid == pid for t in tracks.values()):
            t = tracks[u] = TrackInfo(u)
            t.kind = "process"
            t.pid = pid
            t.process_name = p.get("process_name")
            t.cmdline = p.get("cmdline")
    remap: dict[int, int] = {}
    by_thread = {(t.pid, t.tid): t.uuid for t in tracks.values() if t.kind == "thread"}
    for u, th in legacy_threads.items():
        key = (th.get("pid", 0), th["tid"])
        if key in by_thread:
            remap[u] = by_thread[key]
            t = tracks[by_thread[key]]
            if th.get("thread_name") and not t.thread_name:
                t.thread_name = th["thread_name"]
            continue
        t = tracks[u] = TrackInfo(u)
        t.kind = "thread"
        t.pid, t.tid = key
        t.thread_name = th.get("thread_name")
        by_thread[key] = u
    return tracks, remap


def finalize_tracks(tracks: dict[int, TrackInfo], used: set[int]) -> None:
    """Add tracks only seen in events; inherit pid/tid from parents; pick names."""
    for u in used:
        if u not in tracks:
            tracks[u] = TrackInfo(u)
    procs = {t.pid: t for t in tracks.values() if t.kind == "process" and t.pid is not None}
    for t in list(tracks.values()):
        if t.kind == "thread" and t.parent_uuid is None and t.pid in procs and procs[t.pid].uuid != t.uuid:
            t.parent_uuid = procs[t.pid].uuid
    for t in tracks.values():
        seen = {t.uuid}
        p = t.parent_uuid
        while (t.pid is None or (t.tid is None and t.kind != "process")) and p is not None and p in tracks and p not in seen:
            seen.add(p)
            parent = tracks[p]
            if t.pid is None and parent.pid is not None:
                t.pid = parent.pid
            if t.tid is None and parent.tid is not None and t.kind != "process":
                t.tid = parent.tid
            p = parent.parent_uuid
        if not t.name:
            if t.kind == "thread":
                t.name = t.thread_name or (f"thread {t.tid}" if t.tid is not None else "")
            elif t.kind == "process":
                t.name = t.process_name or (f"process {t.pid}" if t.pid is not None else "")
            else:
                t.name = "" if t.uuid != 0 else "default"


def tracks_frame(tracks: dict[int, TrackInfo]) -> pd.DataFrame:
    items = sorted(tracks.values(), key=lambda t: t.uuid)
    return pd.DataFrame({
        "uuid": np.array([t.uuid for t in items], dtype=np.uint64),
        "name": pd.array([t.name or "" for t in items], dtype=object).astype(str) if items else pd.Series([], dtype=str),
        "parent_uuid": pd.array([t.parent_uuid for t in items], dtype="UInt64"),
        "pid": pd.array([t.pid for t in items], dtype="Int64"),
        "tid": pd.array([t.tid for t in items], dtype="Int64"),
        "kind": pd.array([t.kind for t in items], dtype=object).astype(str) if items else pd.Series([], dtype=str),
        "unit": pd.array([t.unit for t in items], dtype=object),
    })


# ---------------------------------------------------------------- decoding

class Stop:
    """Where reading stopped early (truncated, damaged or still being written)."""

    def __init__(self, offset: int, message: str, gzipped: bool = False) -> None:
        self.offset = offset
        self.message = message
        self.gzipped = gzipped

    def __str__(self) -> str:
        where = f"byte offset {self.offset}" + (" of the decompressed data" if self.gzipped else "")
        return f"{self.message} at {where}"


def decode_perfetto(src: _Source, pure_python: bool | None = None) -> tuple[dict, Stop | None, str]:
    mod = _backend.module(pure_python)
    dec = mod.Decoder(decompress=_inflate, size_hint=src.size if not src.gzipped else 0)
    pending = b""
    offset = 0
    stop = None
    waiting: list[bytes] = []    # chunks held back while a packet larger than a chunk completes
    waiting_n = 0
    for chunk in src.chunks():
        if len(pending) > CHUNK:
            waiting.append(chunk)
            waiting_n += len(chunk)
            if waiting_n < len(pending):   # feed again only once the data has doubled: O(n) copying
                continue
            chunk = b"".join(waiting)
            waiting, waiting_n = [], 0
        buf = pending + chunk if pending else chunk
        consumed = dec.feed(buf, offset)
        if dec.error is not None:
            off, msg = dec.error
            stop = Stop(off, f"damaged packet ({msg})", src.gzipped)
            pending = b""
            break
        offset += consumed
        pending = buf[consumed:]
    if stop is None and waiting:
        buf = pending + b"".join(waiting)
        consumed = dec.feed(buf, offset)
        if dec.error is not None:
            off, msg = dec.error
            stop = Stop(off, f"damaged packet ({msg})", src.gzipped)
            pending = b""
        else:
            offset += consumed
            pending = buf[consumed:]
    if stop is None and pending:
        stop = Stop(offset, f"incomplete packet ({len(pending)} bytes; file truncated or still being written)",
                    src.gzipped)
    if stop is None and getattr(src, "gzip_error", False):
        stop = Stop(offset, "damaged gzip stream", True)
    raw = dec.finish()
    return raw, stop, ("native" if mod is not _backend._pywire else "python")


def _inflate(data: bytes) -> bytes:
    return zlib.decompress(data)


# ---------------------------------------------------------------- assembly

def _col(raw: dict, key: str, dtype) -> np.ndarray:
    return np.frombuffer(raw[key], dtype=dtype)


def build_tables(raw: dict, tracks: dict[int, TrackInfo], remap: dict[int, int], *, clock: int | None,
                 problems: list[str], json_flows: list | None = None) -> dict:
    """Columns from a decoder (or the JSON importer) -> the Trace's tables.

    ``raw`` is consumed: its event columns are dropped as soon as the slices
    are built, to keep the peak memory low.
    """
    strings: list = raw["strings"]
    track_uuids = np.frombuffer(raw["tracks"], dtype=np.uint64).copy()
    clock_keys = np.frombuffer(raw["clock_keys"], dtype=np.int64)
    if remap:
        for a, b in remap.items():
            track_uuids[track_uuids == np.uint64(a)] = np.uint64(b)
    finalize_tracks(tracks, set(int(u) for u in track_uuids))
    # the decoder's track indices may map to the same uuid after remapping: merge them
    uniq_uuids, track_code_of_index = np.unique(track_uuids, return_inverse=True)
    track_code_of_index = track_code_of_index.astype(np.int32)
    tinfo = [tracks[int(u)] for u in uniq_uuids]
    nt = len(uniq_uuids)

    # clocks
    conv = ClockConverter(raw.get("clocks", []))
    trace_clock = conv.trace_clock()
    target = trace_clock if clock is None else clock

    def to_target(ts_col: str, clk_col: str) -> np.ndarray:
        t = _col(raw, ts_col, np.int64)
        c = _col(raw, clk_col, np.int16)
        if len(t) == 0:
            return t
        cmin, cmax = int(c.min()), int(c.max())
        if cmin == cmax:
            keys = np.full(1, clock_keys[cmin], dtype=np.int64)
            return conv.convert(t, np.broadcast_to(keys, t.shape), target, trace_clock, problems)
        return conv.convert(t, clock_keys[c], target, trace_clock, problems)

    # ---- slices: every non-END event starts one; ids follow event rows (then sorted by ts)
    mod = _backend.module(raw.get("_pure_python"))
    ts = to_target("ev_ts", "ev_clk")
    ev_type = _col(raw, "ev_type", np.int8)
    n = len(ts)
    ev_tcode = track_code_of_index[_col(raw, "ev_track", np.int32)] if n else np.empty(0, dtype=np.int32)
    cx_row = _col(raw, "cx_row", np.int32)
    dur_ev = np.empty(0, dtype=np.int64)
    if len(cx_row):
        dur_ev = np.zeros(n, dtype=np.int64)
        dur_ev[cx_row] = _col(raw, "cx_dur", np.int64)
    is_start = ev_type != 2
    sid = np.cumsum(is_start, dtype=np.int32) - 1
    sid[~is_start] = -1
    ns = int(is_start.sum())
    pre = None
    if n and not bool((ts[1:] >= ts[:-1]).all()):
        pre = np.argsort(ts, kind="stable").astype(np.int32)
    if nt > 1:
        order = np.frombuffer(mod.group_order(ev_tcode, nt, pre), dtype=np.int32)
    else:
        order = pre if pre is not None else np.arange(n, dtype=np.int32)
    se, dep, par, e2s, unmatched = mod.match_slices(
        np.ascontiguousarray(order), np.ascontiguousarray(ev_type), np.ascontiguousarray(ev_tcode),
        np.ascontiguousarray(ts), dur_ev, sid, ns)
    del order, pre
    se = np.frombuffer(se, dtype=np.int32)
    dep = np.frombuffer(dep, dtype=np.int32)
    par = np.frombuffer(par, dtype=np.int32)
    e2s = np.frombuffer(e2s, dtype=np.int32)
    if unmatched:
        problems.append(f"{unmatched} slice END event(s) without a matching BEGIN were ignored")
    sb = np.nonzero(is_start)[0].astype(np.int32)
    del is_start, sid
    sts = ts[sb]
    if ns and not bool((sts[1:] >= sts[:-1]).all()):
        perm = np.argsort(sts, kind="stable")
        inv = np.empty(ns, dtype=np.int32)
        inv[perm] = np.arange(ns, dtype=np.int32)
        sb, se, dep, par, sts = sb[perm], se[perm], dep[perm], par[perm], sts[perm]
        par = np.where(par >= 0, inv[np.maximum(par, 0)], -1).astype(np.int32)
        e2s = np.where(e2s >= 0, inv[np.maximum(e2s, 0)], -1).astype(np.int32)
    sty = ev_type[sb]
    dur = np.where(se >= 0, ts[np.maximum(se, 0)] - sts, -1)
    dur[sty == 3] = 0
    cpl = sty == 4
    if cpl.any():
        dur[cpl] = dur_ev[sb[cpl]]
    scode = ev_tcode[sb]
    sname = _col(raw, "ev_name", np.int32)[sb]
    scat = _col(raw, "ev_cat", np.int32)[sb]

    # flows (v2: flow_ids / terminating_flow_ids) need event timestamps
    fl_ev = _col(raw, "fl_ev", np.int32)
    flow_from: list[int] = []
    flow_to: list[int] = []
    flow_ids: list[int] = []
    slice_flows: dict[int, list[int]] = {}
    if len(fl_ev):
        fl_id = _col(raw, "fl_id", np.uint64)
        fl_term = _col(raw, "fl_term", np.int8)
        fo = np.lexsort((fl_ev, ts[fl_ev]))
        pending: dict[int, int] = {}
        for e, fid, term in zip(fl_ev[fo].tolist(), fl_id[fo].tolist(), fl_term[fo].tolist()):
            s = int(e2s[e])
            if s < 0:
                continue
            ids = slice_flows.setdefault(s, [])
            if fid not in ids:
                ids.append(fid)
            prev = pending.get(fid)
            if prev is not None and prev != s:
                flow_from.append(prev)
                flow_to.append(s)
                flow_ids.append(fid)
            if term:
                pending.pop(fid, None)
            else:
                pending[fid] = s
    # the event columns are not needed any more
    del ts, ev_type, ev_tcode, dur_ev
    for k in ("ev_ts", "ev_clk", "ev_track", "ev_name", "ev_cat", "ev_type", "cx_row", "cx_dur"):
        raw.pop(k, None)

    if json_flows:
        strack_uuid = uniq_uuids[scode]
        for a, b, fid in link_v1_flows(json_flows, sts, dur, dep, par, strack_uuid):
            flow_from.append(a)
            flow_to.append(b)
            flow_ids.append(fid)
            for s in (a, b):
                ids = slice_flows.setdefault(s, [])
                if fid not in ids:
                    ids.append(fid)

    # args stay grouped by event; int32 offsets per event row
    ar_ev = _col(raw, "ar_ev", np.int32)
    ev_off = np.zeros(n + 1, dtype=np.int32)
    if len(ar_ev):
        np.cumsum(np.bincount(ar_ev, minlength=n), out=ev_off[1:])
    store = ArgStore(ev_off, ar_ev, _col(raw, "ar_key", np.int32), _col(raw, "ar_type", np.int8),
                     _col(raw, "ar_val", np.int64), strings, raw["objects"], sb, se, e2s)
    del sb, se, e2s

    # string columns as categoricals (names are few)
    def cat_from_codes(c: np.ndarray) -> pd.Categorical:
        if len(c) == 0:
            return pd.Categorical([])
        valid = c >= 0
        used_mask = np.bincount(c[valid], minlength=len(strings)) > 0 if valid.any() else np.zeros(len(strings), bool)
        used_codes = np.nonzero(used_mask)[0]
        remap_codes = np.full(len(strings) + 1, -1, dtype=np.int32)
        remap_codes[used_codes] = np.arange(len(used_codes), dtype=np.int32)
        cats = [strings[i] for i in used_codes]
        if len(set(cats)) != len(cats):   # JSON importer may repeat; fall back
            return pd.Categorical([strings[i] if i >= 0 else None for i in c.tolist()])
        return pd.Categorical.from_codes(remap_codes[c], categories=pd.Index(cats, dtype=object))

    track_names = [t.name or "" for t in tinfo]

    def track_cat(codes_: np.ndarray, names: list[str]) -> pd.Categorical:
        if not names:
            return pd.Categorical([None] * len(codes_)) if len(codes_) else pd.Categorical([])
        u_names = list(dict.fromkeys(names))
        pos = {nm: i for i, nm in enumerate(u_names)}
        m = np.array([pos[nm] for nm in names], dtype=np.int32)
        return pd.Categorical.from_codes(m[codes_], categories=pd.Index(u_names, dtype=object))

    def ids_array(codes_: np.ndarray, attr: str) -> pd.arrays.IntegerArray:
        vals = np.array([getattr(t, attr) if getattr(t, attr) is not None else 0 for t in tinfo], dtype=np.int64)
        mask = np.array([getattr(t, attr) is None for t in tinfo], dtype=bool)
        if len(codes_) == 0:
            return pd.array(np.empty(0, dtype=np.int64), dtype="Int64")
        return pd.arrays.IntegerArray(vals[codes_], mask[codes_])

    flow_col = np.full(ns, None, dtype=object)
    for s, ids in slice_flows.items():
        flow_col[s] = tuple(ids)
    from ._args import ArgsArray

    slices = pd.DataFrame({
        "ts": sts,
        "dur": dur,
        "name": cat_from_codes(sname),
        "category": cat_from_codes(scat),
        "track": track_cat(scode, track_names),
        "track_uuid": uniq_uuids[scode],
        "pid": ids_array(scode, "pid"),
        "tid": ids_array(scode, "tid"),
        "depth": dep,
        "parent_id": par.astype(np.int64),
        "args": ArgsArray(store, np.arange(ns, dtype=np.int32)),
        "flow_ids": pd.Series(flow_col, dtype=object, copy=False),
    }, copy=False)
    slices.index.name = "slice_id"
    del sname, scat, scode, flow_col

    # ---- counters
    cts = to_target("ct_ts", "ct_clk")
    nct = len(cts)
    if nct:
        ccodes = track_code_of_index[_col(raw, "ct_track", np.int32)]
        ct_val = _col(raw, "ct_val", np.float64)
        ct_name = _col(raw, "ct_name", np.int32)
        if bool((cts[1:] >= cts[:-1]).all()):
            corder = None
            cts_o, ccodes_o, vals, cname_codes = cts, ccodes, ct_val.copy(), ct_name
        else:
            corder = np.argsort(cts, kind="stable")
            cts_o, ccodes_o, vals, cname_codes = cts[corder], ccodes[corder], ct_val[corder], ct_name[corder]
        for i, t in enumerate(tinfo):
            if t.unit_multiplier not in (None, 1) or t.is_incremental:
                m = ccodes_o == i
                if t.unit_multiplier not in (None, 1):
                    vals[m] *= t.unit_multiplier
                if t.is_incremental:
                    vals[m] = np.cumsum(vals[m])
        if (cname_codes >= 0).any():
            tn = np.array(track_names, dtype=object)[ccodes_o]
            own = cname_codes >= 0
            tn[own] = [strings[c] for c in cname_codes[own]]
            name_col = pd.Categorical(tn)
        else:
            name_col = track_cat(ccodes_o, track_names)
        counters = pd.DataFrame({
            "ts": cts_o,
            "track": track_cat(ccodes_o, track_names),
            "track_uuid": uniq_uuids[ccodes_o],
            "name": name_col,
            "value": vals,
            "pid": ids_array(ccodes_o, "pid"),
            "tid": ids_array(ccodes_o, "tid"),
        }, copy=False)
    else:
        counters = empty_counters()
    for k in ("ct_ts", "ct_clk", "ct_track", "ct_val", "ct_name"):
        raw.pop(k, None)
    flows = pd.DataFrame({"flow_id": np.array(flow_ids, dtype=np.uint64),
                          "from_slice": np.array(flow_from, dtype=np.int64),
                          "to_slice": np.array(flow_to, dtype=np.int64)})
    return {
        "slices": slices, "counters": counters, "flows": flows, "tracks": tracks_frame(tracks),
        "args": store, "slice_type": sty, "trace_clock": target,
        "stats": {k: raw.get(k, 0) for k in ("packets", "skipped_no_state", "unresolved_iids", "unsupported_events")},
    }


def empty_counters() -> pd.DataFrame:
    return pd.DataFrame({
        "ts": np.empty(0, dtype=np.int64), "track": pd.Categorical([]), "track_uuid": np.empty(0, dtype=np.uint64),
        "name": pd.Categorical([]), "value": np.empty(0, dtype=np.float64),
        "pid": pd.array([], dtype="Int64"), "tid": pd.array([], dtype="Int64")})


def link_v1_flows(specs: list, sts: np.ndarray, dur: np.ndarray, dep: np.ndarray, par: np.ndarray,
                  strack: np.ndarray) -> list[tuple[int, int, int]]:
    """Chrome JSON flow events (ph s/t/f) -> (from_slice, to_slice, id).

    specs: (ts, track_uuid, key, phase, bind_enclosing, id). 's' binds to the
    enclosing slice; 't'/'f' to the enclosing slice when bp == 'e', else to the
    next slice starting at or after ts on that thread.
    """
    by_track: dict[int, np.ndarray] = {}
    out: list[tuple[int, int, int]] = []
    pending: dict = {}
    for ts_, track, key, ph, enclosing, fid in sorted(specs, key=lambda s: s[0]):
        idx = by_track.get(track)
        if idx is None:
            idx = np.nonzero(strack == np.uint64(track))[0]
            by_track[track] = idx
        if len(idx) == 0:
            continue
        tss = sts[idx]
        s = -1
        if ph == "s" or enclosing:
            k = int(np.searchsorted(tss, ts_, side="right")) - 1
            if k >= 0:
                s = int(idx[k])
                while s >= 0 and not (sts[s] <= ts_ and (dur[s] < 0 or ts_ <= sts[s] + dur[s])):
                    s = int(par[s])
        else:
            k = int(np.searchsorted(tss, ts_, side="left"))
            if k < len(idx):
                s = int(idx[k])
        if s < 0:
            continue
        if ph == "s":
            pending[key] = s
        else:
            prev = pending.get(key)
            if prev is not None and prev != s:
                out.append((prev, s, fid))
            if ph == "t":
                pending[key] = s
            else:
                pending.pop(key, None)
    return out


# ---------------------------------------------------------------- entry point

def load_trace(path, clock=None, *, strict: bool = False, trace_processor_bin: str | None = None,
               pure_python: bool | None = None):
    """Load a Perfetto protobuf (.pftrace, optionally gzipped) or Chrome JSON trace.

    clock: report timestamps on this clock ('monotonic', 'boottime', 'realtime',
      ... or a clock id); default: the trace's primary clock (BOOTTIME when the
      trace names none). Chrome JSON traces have no clock information.
    strict: raise PrismError instead of loading the valid prefix of a truncated
      or damaged trace.
    trace_processor_bin: path of a trace_processor_shell binary to read the
      trace with Perfetto's TraceProcessor instead (also env PRISM_TRACE_PROCESSOR).
      It is never downloaded.
    pure_python: force (True) or forbid (False) the pure-Python decoder.
    """
    path = os.fspath(path)
    target = _resolve_clock(clock)
    tp_bin = trace_processor_bin or os.environ.get("PRISM_TRACE_PROCESSOR") or None
    if tp_bin:
        from .tp import load_with_trace_processor

        return load_with_trace_processor(path, tp_bin, clock=target)
    return _load_source(_Source(path), path, target, strict, pure_python)


def load_trace_bytes(data: bytes, name: str = "<bytes>", clock=None, *, strict: bool = False,
                     pure_python: bool | None = None):
    """load_trace() for Perfetto protobuf bytes in memory (uncompressed); `name` is used in messages."""
    return _load_source(_BytesSource(data, name), name, _resolve_clock(clock), strict, pure_python)


def _load_source(src: _Source, path: str, target: int | None, strict: bool, pure_python: bool | None):
    from .model import Trace

    clock = target
    problems: list[str] = []
    meta: dict[str, Any] = {"path": path, "format": src.format, "stopped_at_offset": None}
    if src.format == "chrome_json":
        from .chrome import read_chrome_json

        raw, tracks, json_flows, json_meta, stop = read_chrome_json(src.read_all())
        meta["reader"] = "json"
        meta.update({"chrome_json": json_meta} if json_meta else {})
        remap: dict = {}
        if clock is not None:
            problems.append("a Chrome JSON trace has no clock snapshots; the clock argument is ignored")
            target = None
    else:
        raw, stop, meta["reader"] = decode_perfetto(src, pure_python)
        raw["_pure_python"] = pure_python
        json_flows = None
        tracks, remap = tracks_from_descs(raw["descs"], problems)
    n_events = memoryview(raw["ev_ts"]).nbytes // 8 + memoryview(raw["ct_ts"]).nbytes // 8
    if stop is not None:
        meta["stopped_at_offset"] = stop.offset
        meta["stop_message"] = str(stop)
        if strict:
            raise PrismError(f"damaged trace {path}: {stop}")
        if n_events == 0 and raw.get("packets", 0) == 0:
            raise PrismError(f"no valid trace data in {path}: {stop}")
        warnings.warn(f"{path}: read up to the last complete packet; {stop}", TraceWarning, stacklevel=2)
    elif raw.get("packets", 1) == 0 and n_events == 0 and src.format == "perfetto":
        raise PrismError(f"no trace packets in {path}")
    tables = build_tables(raw, tracks, remap, clock=target, problems=problems, json_flows=json_flows)
    if src.format == "chrome_json":
        tables["trace_clock"] = None
    st = tables.pop("stats")
    if st.get("skipped_no_state"):
        problems.append(f"{st['skipped_no_state']} packet(s) skipped: their sequence's incremental state was "
                        f"lost (trace started mid-stream or packets were dropped)")
    if st.get("unresolved_iids"):
        problems.append(f"{st['unresolved_iids']} interned id(s) had no definition")
    meta["packets"] = st.get("packets", 0)
    for p in problems:
        warnings.warn(f"{path}: {p}", TraceWarning, stacklevel=2)
    meta["warnings"] = problems
    return Trace._from_tables(tables, meta)
