"""Streaming Perfetto TrackEvent writer (the format is in docs/trace-format.md).

Each packet is framed and written as soon as it is built, so memory stays flat
in hour-long recordings and a trace cut at any point is valid up to its last
complete packet. Names, categories and annotation names are interned.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, BinaryIO, Iterable, Sequence

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import (
    BuiltinClock,
    ClockSnapshot,
    TracePacket,
    TrackEvent,
)

from prismkit.trace._pywire import encode_varint

try:  # the C fast path for event packets (recorders/_encode.c); optional, same bytes on the wire
    from recorders import _encode
except ImportError:  # pragma: no cover - built by setup.sh; the protobuf path below is the fallback
    _encode = None

SEQ_INCREMENTAL_STATE_CLEARED = 1
SEQ_NEEDS_INCREMENTAL_STATE = 2
CLOCK_MONOTONIC = BuiltinClock.BUILTIN_CLOCK_MONOTONIC
TYPE_SLICE_BEGIN = TrackEvent.TYPE_SLICE_BEGIN
TYPE_SLICE_END = TrackEvent.TYPE_SLICE_END
TYPE_INSTANT = TrackEvent.TYPE_INSTANT
TYPE_COUNTER = TrackEvent.TYPE_COUNTER
SEQUENCE_ID = 1

Args = dict[str, Any]


class TraceWriter:
    """Write tracks, slices, instants and counters to a .pftrace file, packet by packet.

    Thread-safe: packs call it from the engine's polling thread, samplers from theirs.
    """

    def __init__(self, path: str | os.PathLike, flush_interval_s: float = 0.1, native: bool = True) -> None:
        self.path = str(path)
        self._native = native and _encode is not None
        self._f: BinaryIO = open(self.path, "wb")
        self._lock = threading.Lock()
        self._next_uuid = 1
        self._names: dict[str, int] = {}
        self._cats: dict[str, int] = {}
        self._ann: dict[str, int] = {}
        self._first = True
        self._flush_interval = flush_interval_s
        self._last_flush = time.monotonic()
        self.packets = 0
        self._write_clock_snapshot()

    # -- low level -----------------------------------------------------------
    def _emit(self, pkt: TracePacket) -> None:
        pkt.trusted_packet_sequence_id = SEQUENCE_ID
        if self._first:
            pkt.first_packet_on_sequence = True
            pkt.sequence_flags = SEQ_INCREMENTAL_STATE_CLEARED
            pkt.trace_packet_defaults.timestamp_clock_id = CLOCK_MONOTONIC
            self._first = False
        elif pkt.HasField("track_event"):
            pkt.sequence_flags = SEQ_NEEDS_INCREMENTAL_STATE
        data = pkt.SerializeToString()
        self._f.write(b"\x0a" + encode_varint(len(data)) + data)  # Trace.packet = field 1
        self._written(1)

    def _written(self, packets: int) -> None:
        """Count packets just written; flush the file every flush interval (caller holds the lock)."""
        self.packets += packets
        now = time.monotonic()
        if now - self._last_flush >= self._flush_interval:
            self._f.flush()
            self._last_flush = now

    def _write_clock_snapshot(self) -> None:
        pkt = TracePacket()
        snap = pkt.clock_snapshot
        for clock_id, clk in ((CLOCK_MONOTONIC, time.CLOCK_MONOTONIC),
                              (BuiltinClock.BUILTIN_CLOCK_BOOTTIME, time.CLOCK_BOOTTIME),
                              (BuiltinClock.BUILTIN_CLOCK_REALTIME, time.CLOCK_REALTIME)):
            c = snap.clocks.add()
            c.clock_id = clock_id
            c.timestamp = time.clock_gettime_ns(clk)
        snap.primary_trace_clock = CLOCK_MONOTONIC
        pkt.timestamp = snap.clocks[0].timestamp
        pkt.timestamp_clock_id = CLOCK_MONOTONIC
        self._emit(pkt)

    def _intern(self, table: dict[str, int], key: str, pkt: TracePacket, kind: str) -> int:
        iid = table.get(key)
        if iid is None:
            iid = table[key] = len(table) + 1
            entry = getattr(pkt.interned_data, kind).add()
            entry.iid = iid
            entry.name = key
        return iid

    def _event(self, ts: int, track_uuid: int, type_: int, name: str | None, category: str | None,
               args: Args | None = None, flow_ids: Iterable[int] = (),
               terminating_flow_ids: Iterable[int] = ()) -> TracePacket:
        pkt = TracePacket()
        pkt.timestamp = int(ts)
        ev = pkt.track_event
        ev.type = type_
        ev.track_uuid = track_uuid
        if name is not None:
            ev.name_iid = self._intern(self._names, name, pkt, "event_names")
        if category is not None:
            ev.category_iids.append(self._intern(self._cats, category, pkt, "event_categories"))
        if args:
            for key, value in args.items():
                if value is None:
                    continue
                ann = ev.debug_annotations.add()
                ann.name_iid = self._intern(self._ann, key, pkt, "debug_annotation_names")
                if isinstance(value, bool):
                    ann.bool_value = value
                elif isinstance(value, int):
                    ann.int_value = value
                elif isinstance(value, float):
                    ann.double_value = value
                else:
                    ann.string_value = str(value)
        ev.flow_ids.extend(flow_ids)
        ev.terminating_flow_ids.extend(terminating_flow_ids)
        return pkt

    def _write_event(self, ts: int, track_uuid: int, type_: int, name: str | None, category: str | None,
                     args: Args | None = None, flow_ids: Iterable[int] = (),
                     terminating_flow_ids: Iterable[int] = (), counter: float | None = None) -> None:
        """Build and write one event packet (caller holds the lock)."""
        if not self._native or self._first:
            pkt = self._event(ts, track_uuid, type_, name, category, args, flow_ids, terminating_flow_ids)
            if counter is not None:
                if isinstance(counter, int):
                    pkt.track_event.counter_value = counter
                else:
                    pkt.track_event.double_counter_value = float(counter)
            self._emit(pkt)
            return
        new = []
        name_iid = cat_iid = 0
        if name is not None:
            name_iid = self._names.get(name)
            if name_iid is None:
                name_iid = self._names[name] = len(self._names) + 1
                new.append((2, name_iid, name))
        if category is not None:
            cat_iid = self._cats.get(category)
            if cat_iid is None:
                cat_iid = self._cats[category] = len(self._cats) + 1
                new.append((1, cat_iid, category))
        anns = None
        if args:
            anns = []
            table = self._ann
            for key, value in args.items():
                if value is None:
                    continue
                iid = table.get(key)
                if iid is None:
                    iid = table[key] = len(table) + 1
                    new.append((3, iid, key))
                anns.append((iid, value))
        if counter is not None and not isinstance(counter, int):
            counter = float(counter)
        self._f.write(_encode.track_event(int(ts), track_uuid, type_, name_iid, cat_iid, anns, flow_ids or None,
                                          terminating_flow_ids or None, new or None, SEQUENCE_ID,
                                          SEQ_NEEDS_INCREMENTAL_STATE, counter))
        self._written(1)

    # -- tracks --------------------------------------------------------------
    def _new_uuid(self) -> int:
        uuid = self._next_uuid
        self._next_uuid += 1
        return uuid

    def process_track(self, pid: int, name: str, cmdline: list[str] | None = None) -> int:
        with self._lock:
            uuid = self._new_uuid()
            pkt = TracePacket()
            pkt.track_descriptor.uuid = uuid
            proc = pkt.track_descriptor.process
            proc.pid = pid
            proc.process_name = name
            if cmdline:
                proc.cmdline.extend(cmdline)
            self._emit(pkt)
            return uuid

    def thread_track(self, pid: int, tid: int, name: str) -> int:
        with self._lock:
            uuid = self._new_uuid()
            pkt = TracePacket()
            pkt.track_descriptor.uuid = uuid
            th = pkt.track_descriptor.thread
            th.pid = pid
            th.tid = tid
            th.thread_name = name
            self._emit(pkt)
            return uuid

    def named_track(self, name: str, parent_uuid: int | None = None) -> int:
        with self._lock:
            uuid = self._new_uuid()
            pkt = TracePacket()
            pkt.track_descriptor.uuid = uuid
            pkt.track_descriptor.name = name
            if parent_uuid:
                pkt.track_descriptor.parent_uuid = parent_uuid
            self._emit(pkt)
            return uuid

    def counter_track(self, name: str, parent_uuid: int | None = None, unit_name: str | None = None) -> int:
        with self._lock:
            uuid = self._new_uuid()
            pkt = TracePacket()
            td = pkt.track_descriptor
            td.uuid = uuid
            td.name = name
            if parent_uuid:
                td.parent_uuid = parent_uuid
            td.counter.SetInParent()
            if unit_name:
                td.counter.unit_name = unit_name
            self._emit(pkt)
            return uuid

    # -- events --------------------------------------------------------------
    def begin(self, track_uuid: int, ts: int, name: str, category: str, args: Args | None = None,
              flow_ids: Iterable[int] = ()) -> None:
        with self._lock:
            self._write_event(ts, track_uuid, TYPE_SLICE_BEGIN, name, category, args, flow_ids)

    def end(self, track_uuid: int, ts: int, args: Args | None = None) -> None:
        with self._lock:
            self._write_event(ts, track_uuid, TYPE_SLICE_END, None, None, args)

    def slice(self, track_uuid: int, ts: int, dur: int, name: str, category: str,
              args: Args | None = None, end_args: Args | None = None, flow_ids: Iterable[int] = (),
              terminating_flow_ids: Iterable[int] = ()) -> None:
        with self._lock:
            self._write_event(ts, track_uuid, TYPE_SLICE_BEGIN, name, category, args, flow_ids, terminating_flow_ids)
            self._write_event(ts + max(int(dur), 0), track_uuid, TYPE_SLICE_END, None, None, end_args)

    # -- packets encoded elsewhere (recorders/_encode.c: encode_sched_events) ----
    def intern(self, names: Sequence[str] = (), categories: Sequence[str] = (),
               annotation_names: Sequence[str] = ()) -> tuple[list[int], list[int], list[int]]:
        """The iids of these event names, categories and annotation names, for packets encoded
        outside the writer (write_encoded). Those new to the tables are written at once, in a
        packet of their own, so any packet written after this call may use them."""
        with self._lock:
            pkt = TracePacket()
            iids = ([self._intern(self._names, s, pkt, "event_names") for s in names],
                    [self._intern(self._cats, s, pkt, "event_categories") for s in categories],
                    [self._intern(self._ann, s, pkt, "debug_annotation_names") for s in annotation_names])
            if pkt.HasField("interned_data"):
                self._emit(pkt)
            return iids

    def write_encoded(self, data: bytes, packets: int) -> None:
        """Append `packets` framed TracePackets encoded elsewhere: on SEQUENCE_ID with
        SEQ_NEEDS_INCREMENTAL_STATE, their iids from intern()."""
        if not data:
            return
        with self._lock:
            self._f.write(data)
            self._written(packets)

    def instant(self, track_uuid: int, ts: int, name: str, category: str, args: Args | None = None,
                flow_ids: Iterable[int] = ()) -> None:
        with self._lock:
            self._write_event(ts, track_uuid, TYPE_INSTANT, name, category, args, flow_ids)

    def counter(self, track_uuid: int, ts: int, value: float) -> None:
        with self._lock:
            self._write_event(ts, track_uuid, TYPE_COUNTER, None, None, counter=value)

    def flush(self) -> None:
        with self._lock:
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
