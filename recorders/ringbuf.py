"""BPF ring buffers read in bulk: every record of a drain in one bytes object.

BCC calls a Python function per record (libbpf -> ctypes -> BCC's wrapper: ~2.4 us
before a pack's code runs). A pack with many small fixed-size records instead drains
its buffer through a reader (RecordingContext.open_bulk_buffer) and decodes the whole
drain at once, e.g. with numpy, or in C as the sched pack does (encode_sched_events):

    raw = reader.drain_fixed(EVENT.itemsize)     # payloads back to back
    events = np.frombuffer(raw, EVENT)

The reader is recorders._encode.RingReader (mmap of the map, as libbpf reads it); when
the extension is not built, BccRingReader gives the same interface on top of BCC's
per-record callbacks.
"""
from __future__ import annotations

import ctypes as ct
import struct
from typing import Protocol

try:
    from recorders._encode import RingReader as NativeRingReader
except ImportError:  # pragma: no cover - built by setup.sh; BccRingReader is the fallback
    NativeRingReader = None


class RingReader(Protocol):
    #: records drain_fixed() left out (another size than asked for)
    skipped: int

    def drain(self) -> bytes:
        """Every committed record, each as its u32 length (native byte order) and payload."""

    def drain_fixed(self, record_size: int) -> bytes:
        """The payloads of `record_size` bytes, back to back; others are counted in `skipped`."""

    def close(self) -> None:
        """Stop reading (the map itself belongs to BCC)."""


class BccRingReader:
    """RingReader on BCC's callbacks: the records are collected as BCC's manager consumes
    them (bpf.ring_buffer_consume(), which the engine calls before each bulk drain)."""

    def __init__(self, bpf, name: bytes) -> None:
        self.skipped = 0
        self._records: list[bytes] = []
        bpf[name].open_ring_buffer(self._on_record)

    def _on_record(self, _ctx, data, size) -> None:
        self._records.append(ct.string_at(data, size))

    def _take(self) -> list[bytes]:
        records, self._records = self._records, []
        return records

    def drain(self) -> bytes:
        return b"".join(struct.pack("=I", len(r)) + r for r in self._take())

    def drain_fixed(self, record_size: int) -> bytes:
        records = self._take()
        kept = [r for r in records if len(r) == record_size]
        self.skipped += len(records) - len(kept)
        return b"".join(kept)

    def close(self) -> None:
        self._records = []


def open_ring_reader(bpf, name: str | bytes) -> RingReader:
    """A bulk reader of BCC's ring buffer map `name` (never also opened with open_ring_buffer)."""
    key = name.encode() if isinstance(name, str) else name
    if NativeRingReader is None:
        return BccRingReader(bpf, key)
    return NativeRingReader(bpf[key].map_fd)
