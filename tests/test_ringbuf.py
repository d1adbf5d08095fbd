"""Bulk ring-buffer readers (recorders/ringbuf.py) against a real BPF ring buffer.

A tiny BPF program on syscalls:sys_enter_getppid submits one record per getppid() of
this process: 16-byte records, every fifth a 24-byte one, some reserved and then
discarded. The buffer is one page, so a few rounds wrap it many times (records
straddling its end are read through the kernel's double mapping).
"""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from recorders import ringbuf

PROGRAM = r"""
BPF_RINGBUF_OUTPUT(rb, 1);
BPF_ARRAY(seq, u64, 1);
struct small { u64 seq; u64 tag; };
struct big { u64 seq; u64 tag; u64 extra; };

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_PID) return 0;
    int z = 0;
    u64 *c = seq.lookup(&z);
    if (!c) return 0;
    u64 n = *c;
    *c = n + 1;
    if (n % 5 == 4) {
        struct big *b = rb.ringbuf_reserve(sizeof(struct big));
        if (!b) return 0;
        b->seq = n;
        b->tag = 0xB16;
        b->extra = n * 3;
        rb.ringbuf_submit(b, 0);
    } else {
        struct small *s = rb.ringbuf_reserve(sizeof(struct small));
        if (!s) return 0;
        s->seq = n;
        s->tag = 0x5A11;
        if (n % 7 == 3) rb.ringbuf_discard(s, 0);
        else rb.ringbuf_submit(s, 0);
    }
    return 0;
}
"""
SMALL = np.dtype([("seq", "<u8"), ("tag", "<u8")])


def _kind(n: int) -> str:
    return "big" if n % 5 == 4 else "discarded" if n % 7 == 3 else "small"


@pytest.fixture(params=["native", "bcc"])
def ring(request, bpf_ok):
    """(bpf, reader, drain_prepare): drain_prepare() runs before each drain (BCC's consume for
    the fallback reader, which collects records from BCC's callbacks)."""
    from bcc import BPF

    if request.param == "native" and ringbuf.NativeRingReader is None:
        pytest.fail("recorders._encode is not built (scripts/setup.sh builds it)")
    bpf = BPF(text=f"#define TARGET_PID {os.getpid()}\n{PROGRAM}".encode())
    try:
        if request.param == "native":
            reader, prepare = ringbuf.NativeRingReader(bpf[b"rb"].map_fd), lambda: None
        else:
            reader, prepare = ringbuf.BccRingReader(bpf, b"rb"), bpf.ring_buffer_consume
        yield bpf, reader, prepare
        reader.close()
    finally:
        bpf.cleanup()


def _calls(first: int, count: int) -> list[int]:
    for _ in range(count):
        os.getppid()
    return list(range(first, first + count))


def test_drain_fixed_reads_every_record_across_wraps(ring):
    _bpf, reader, prepare = ring
    if not isinstance(reader, ringbuf.BccRingReader):
        assert reader.data_size == 4096  # one page, from the map's max_entries
    n = 0
    for _round in range(25):  # ~2.5 KB per round in a 4 KB buffer
        seqs = _calls(n, 100)
        n += 100
        prepare()
        got = np.frombuffer(reader.drain_fixed(SMALL.itemsize), SMALL)
        assert got["seq"].tolist() == [s for s in seqs if _kind(s) == "small"]
        assert (got["tag"] == 0x5A11).all()
        assert reader.skipped == sum(_kind(s) == "big" for s in range(n))
    prepare()
    assert reader.drain_fixed(SMALL.itemsize) == b""


def test_drain_frames_records_of_every_size(ring):
    _bpf, reader, prepare = ring
    n = 0
    for _round in range(10):
        seqs = _calls(n, 100)
        n += 100
        prepare()
        raw = reader.drain()
        records, at = [], 0
        while at < len(raw):
            (size,) = struct.unpack_from("=I", raw, at)
            records.append(raw[at + 4:at + 4 + size])
            at += 4 + size
        assert at == len(raw)
        kept = [s for s in seqs if _kind(s) != "discarded"]
        assert [struct.unpack_from("<Q", r)[0] for r in records] == kept
        assert [len(r) for r in records] == [24 if _kind(s) == "big" else 16 for s in kept]
        big = [struct.unpack("<3Q", r) for r in records if len(r) == 24]
        assert all(tag == 0xB16 and extra == 3 * s for s, tag, extra in big)


def test_full_buffer_then_space_is_given_back(ring):
    """Records that do not fit are lost in BPF; a drain hands the space back to the producer."""
    _bpf, reader, prepare = ring
    seqs = _calls(0, 400)  # ~10 KB of records for 4 KB
    prepare()
    got = np.frombuffer(reader.drain_fixed(SMALL.itemsize), SMALL)["seq"].tolist()
    small = [s for s in seqs if _kind(s) == "small"]
    assert 50 < len(got) < len(small)
    assert got == small[:len(got)], "the records kept are the first ones, in order"
    seqs = _calls(400, 100)
    prepare()
    got = np.frombuffer(reader.drain_fixed(SMALL.itemsize), SMALL)["seq"].tolist()
    assert got == [s for s in seqs if _kind(s) == "small"]
