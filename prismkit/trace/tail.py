"""The recent window of a growing prismkit trace, read incrementally: ``TraceTail``.

`prism watch` keeps writing its trace for as long as it runs (about 90-160 KB/s
at the demo load, 0.3-0.6 GB an hour). Questions asked live (the root-cause
analysis of an alert, the live notebook) need only the last seconds; reloading
the whole file for each gets slower and bigger as the session ages. TraceTail
reads each byte of the file once, in `update()`, indexes its packets without
decoding them (`scan_packets`, C in _wire.c), and keeps:

- the file's head, up to the recording's ``prismkit.metadata`` instant;
- every packet that is not a track event (track descriptors, clock snapshots,
  interned strings): they stay valid for the whole trace;
- the interned strings that arrive inside track-event packets (the writer
  interns a name in the first event that uses it), re-framed without the event;
- the track-event packets of the last `keep_s` seconds, by packet timestamp.

`load(since_ns)` decodes the head, the state and the events from `since_ns` on
with the ordinary reader into a `Trace`, whose size depends on the window, not on
the session's age. A slice that began before `since_ns` loses its BEGIN and is
left out (its END is ignored and counted in ``metadata["warnings"]``).
Timestamps are the writer's clock (CLOCK_MONOTONIC in prismkit traces).
"""
from __future__ import annotations

import os
import warnings
from collections import deque

import numpy as np

from prismkit.errors import PrismError

from . import _backend
from ._pywire import encode_varint

METADATA_NAME = b"prismkit.metadata"
READ_CHUNK = 16 << 20
HAS_EVENT, HAS_INTERNED = 1, 2


def scan_packets(buf: bytes, pos: int = 0) -> tuple[np.ndarray, int]:
    """Index the complete Trace.packet entries of buf from pos without decoding them.

    Returns (rows, end): rows an int64 array of (start, end, ts, flags) per packet, start..end
    the framed packet, ts its timestamp (-1 without one), flags HAS_EVENT | HAS_INTERNED; end
    where the last complete packet ends. PrismError on bytes that are not Trace framing.
    """
    mod = _backend.module()
    try:
        rows, end = mod.scan_packets(buf, pos)
    except ValueError as e:
        raise PrismError(f"not a Perfetto trace stream: {e}") from None
    return np.frombuffer(rows, dtype=np.int64).reshape(-1, 4), end


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def without_track_event(packet: bytes) -> bytes:
    """A framed TracePacket re-framed without its track_event field (its interned_data and
    sequence fields kept), for the interning state of an event packet outside the window."""
    _tag, i = _varint(packet, 0)
    _length, i = _varint(packet, i)
    body = bytearray()
    while i < len(packet):
        start = i
        key, i = _varint(packet, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _v, i = _varint(packet, i)
        elif wire == 2:
            size, i = _varint(packet, i)
            i += size
        else:
            i += 8 if wire == 1 else 4
        if field != 11:
            body += packet[start:i]
    return b"\x0a" + encode_varint(len(body)) + bytes(body)


def _select(buf: bytes, starts: np.ndarray, ends: np.ndarray) -> bytes:
    """The byte ranges start..end of buf (disjoint, in order) concatenated, without a Python loop."""
    if len(starts) == 0:
        return b""
    edge = np.zeros(len(buf) + 1, dtype=np.int8)
    edge[starts] += 1
    edge[ends] -= 1
    return np.frombuffer(buf, dtype=np.uint8)[np.cumsum(edge[:-1], dtype=np.int8) > 0].tobytes()


def _compact(buf: bytes, events: np.ndarray) -> tuple[bytes, np.ndarray, int, int]:
    """A chunk of only these event packets: (their bytes, their (start, end, ts) rows in them,
    oldest ts, newest ts)."""
    data = _select(buf, events[:, 0], events[:, 1])
    ends = np.cumsum(events[:, 1] - events[:, 0])
    rows = np.column_stack([ends - (events[:, 1] - events[:, 0]), ends, events[:, 2]])
    return data, rows, int(events[:, 2].min()), int(events[:, 2].max())


class TraceTail:
    """The last `keep_s` seconds of a growing trace file, read incrementally.

    >>> tail = TraceTail("live.pftrace", keep_s=60)
    >>> tail.update()                      # read what was written since the last call
    >>> recent = tail.load(since_ns=tail.last_ts - 20_000_000_000)   # a Trace of the last 20 s
    """

    def __init__(self, path: str | os.PathLike, keep_s: float = 60.0) -> None:
        self.path = os.fspath(path)
        self.keep_ns = int(keep_s * 1e9)
        self.offset = 0                   # bytes of the file consumed (complete packets only)
        self.head: bytes | None = None    # the file up to the prismkit.metadata packet, once seen
        self._head_parts: list[bytes] = []
        self.state: list[bytes] = []      # packets that are not track events; interned strings
        self._chunks: deque[tuple[bytes, np.ndarray, int, int]] = deque()   # (data, rows, oldest, newest)
        self._pending = b""
        self.last_ts = 0                  # the newest event timestamp read
        self.dropped_until = -1           # the newest event timestamp no longer held
        self.packets = 0

    def update(self) -> int:
        """Read the packets written since the last call, READ_CHUNK bytes at a time (a first read of an
        hour-long trace holds one chunk and the window, not the file); returns the packets read so far."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset + len(self._pending))
                while True:
                    data = f.read(READ_CHUNK)
                    if not data:
                        break
                    self._feed(data)
        except OSError as e:
            raise PrismError(f"cannot read trace {self.path}: {e.strerror or e}") from None
        return self.packets

    def _feed(self, data: bytes) -> None:
        buf = self._pending + data if self._pending else data
        if self.offset == 0 and buf[:2] == b"\x1f\x8b":
            raise PrismError(f"{self.path} is gzipped: TraceTail reads a trace as it is written")
        rows, used = scan_packets(buf)
        self._pending = buf[used:]
        self.offset += used
        self.packets += len(rows)
        if self.head is None and len(rows):
            rows = self._take_head(buf, rows)
        if len(rows):
            self._index(buf[:used], rows)

    def _take_head(self, buf: bytes, rows: np.ndarray) -> np.ndarray:
        """Hold packets as the head until the metadata packet; the rows after it."""
        at = buf.find(METADATA_NAME, int(rows[0, 0]), int(rows[-1, 1]))
        last = len(rows) - 1 if at < 0 else int(np.searchsorted(rows[:, 1], at, side="right"))
        self._head_parts.append(buf[rows[0, 0]:rows[last, 1]])
        if at >= 0:
            self.head = b"".join(self._head_parts)
            self._head_parts = []
        return rows[last + 1:]

    def _index(self, buf: bytes, rows: np.ndarray) -> None:
        flags = rows[:, 3]
        for start, end, _ts, fl in rows[(flags & HAS_EVENT) == 0].tolist() + \
                rows[flags == HAS_EVENT | HAS_INTERNED].tolist():
            pkt = buf[start:end]
            self.state.append(without_track_event(pkt) if fl & HAS_EVENT else pkt)
        events = rows[(flags & HAS_EVENT) != 0][:, :3].copy()
        if len(events):
            self.last_ts = max(self.last_ts, int(events[:, 2].max()))
            self._chunks.append(_compact(buf, events))
        self._trim(self.last_ts - self.keep_ns)

    def _trim(self, cut: int) -> None:
        """Drop the events older than cut (chunks are in file order, nearly in time order)."""
        while self._chunks and self._chunks[0][2] < cut:     # (its oldest event)
            data, ev, _oldest, newest = self._chunks.popleft()
            old = ev[:, 2] < cut
            self.dropped_until = max(self.dropped_until, int(ev[old, 2].max()))
            if newest >= cut:
                self._chunks.appendleft(_compact(data, ev[~old]))
                break

    def covers(self, since_ns: int) -> bool:
        """Whether every event from since_ns on that was read is still held."""
        return since_ns > self.dropped_until

    def window_bytes(self, since_ns: int | None = None) -> bytes:
        """The head, the state packets and the events from since_ns on, as one trace's bytes."""
        head = self.head if self.head is not None else b"".join(self._head_parts)
        parts = [head, *self.state]
        for buf, ev, _oldest, _newest in self._chunks:
            if since_ns is not None:
                ev = ev[ev[:, 2] >= since_ns]   # packets come in drains: nearly, not strictly, time-sorted
            parts.append(_select(buf, ev[:, 0], ev[:, 1]))
        return b"".join(parts)

    def load(self, since_ns: int | None = None, clock=None):
        """A Trace of the window from since_ns on (all that is held without it)."""
        from .reader import load_trace_bytes

        data = self.window_bytes(since_ns)
        if not data:
            raise PrismError(f"nothing read from {self.path} yet")
        with warnings.catch_warnings():   # (a window cuts slices: that is in metadata["warnings"])
            warnings.simplefilter("ignore")
            return load_trace_bytes(data, name=f"{self.path} (window)", clock=clock)


__all__ = ["TraceTail", "scan_packets", "without_track_event"]
