"""The trace writer's C fast path (recorders/_encode.c) writes the packets the protobuf classes write."""
from __future__ import annotations

import pytest
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace

from recorders import trace_writer
from recorders.trace_writer import TraceWriter


def _write(path, native: bool) -> None:
    w = TraceWriter(path, native=native)
    proc = w.process_track(10, "srv", ["srv", "--port", "1"])
    th = w.thread_track(10, 11, "worker")
    cnt = w.counter_track("batch.n_tokens", proc, "tokens")
    w.slice(th, 1_000, 50, "preempted", "sched", {"by_pid": 42, "by_comm": "busy", "runq_wait_ns": 7, "cpu": 1})
    w.slice(th, 2_000, 60, "preempted", "sched", {"by_pid": -3, "by_comm": "é", "ok": True, "ratio": 0.25})
    w.begin(th, 3_000, "llama_decode", "batch", {"n_tokens": 2**40, "skip": None, "phase": "decode"},
            flow_ids=[2**63 + 5, 7])
    w.end(th, 3_500, {"ret": 0})
    w.slice(th, 4_000, 10, "request", "request", None, terminating_flow_ids=[7])
    w.instant(proc, 5_000, "prismkit.metadata", "metadata", {"kernel": "6.1", "nested": [1, 2]})
    w.counter(cnt, 6_000, 17)
    w.counter(cnt, 6_100, 2.5)
    w.counter(cnt, 6_200, -4)
    w.close()


def test_native_encoder_matches_protobuf(tmp_path):
    if trace_writer._encode is None:
        pytest.fail("recorders._encode is not built (scripts/setup.sh builds it)")
    _write(tmp_path / "py.pftrace", native=False)
    _write(tmp_path / "c.pftrace", native=True)
    py = Trace.FromString((tmp_path / "py.pftrace").read_bytes()).packet
    c = Trace.FromString((tmp_path / "c.pftrace").read_bytes()).packet
    assert len(py) == len(c) == 16  # clock snapshot, 3 tracks, 12 events
    for a, b in zip(py, c):
        if a.HasField("clock_snapshot"):
            assert b.HasField("clock_snapshot")
            continue
        assert a == b, (a, b)


def test_native_encoder_rejects_bad_input():
    if trace_writer._encode is None:
        pytest.fail("recorders._encode is not built")
    with pytest.raises(TypeError):
        trace_writer._encode.track_event(1, 1, 1, 0, 0, [("x", 1)], None, None, None, 1, 2, None)


def _packets_after_clock(path) -> bytes:
    data = path.read_bytes()
    assert data[0] == 0x0A
    n = shift = 0
    i = 1
    while True:  # the clock snapshot's length varint
        b = data[i]
        n |= (b & 0x7F) << shift
        shift += 7
        i += 1
        if not b & 0x80:
            break
    return data[i + n:]


SCHED_RECORD = "<QQQIIII16s"  # struct sched_event (recorders/packs/sched/sched.bpf.c)
SCHED_ARGS = ("by_pid", "by_comm", "runq_wait_ns", "cpu")


def _sched_records() -> list[tuple]:
    """(ts_off, ts_on, runq_ns, tid, by_pid, cpu, reason, by_comm) as the sched pack drains them."""
    comms = [b"busy", "é".encode(), b"", b"k\xffw", b"x" * 16, b"ab\0cd", "é".encode() * 8, b"\xe2\x82"]
    return [(10_000 + 100 * i, 10_000 + 100 * i + (i * 37) % 90 - (40 if i == 3 else 0), (i * 2**33) % 2**40,
             (11, 12, 11, 13)[i % 4], (0, 42, 2**32 - 1)[i % 3], i % 5, (1, 2, 2, 0, 7, 1)[i % 6],
             comms[i % len(comms)].ljust(16, b"\0")) for i in range(40)]


def _write_sched(path, native: bool, encoded: bool) -> dict:
    import struct

    from recorders.packs.sched.pack import REASON_NAMES, _comm

    w = TraceWriter(path, native=native)
    tracks = {tid: w.thread_track(10, tid, f"t{tid}") for tid in (11, 12, 13)}
    w.slice(tracks[11], 5_000, 10, "blocked", "other", {"cpu": 3})  # some strings interned already
    names, cats, anns = w.intern(REASON_NAMES, ("sched",), SCHED_ARGS)
    assert w.intern(REASON_NAMES[::-1]) == (names[::-1], [], [])  # nothing new: nothing written
    records = _sched_records()
    counts = {}
    if encoded:
        raw = b"".join(struct.pack(SCHED_RECORD, *r) for r in records)
        args = (tuple(names), cats[0], tuple(anns), trace_writer.SEQUENCE_ID, trace_writer.SEQ_NEEDS_INCREMENTAL_STATE)
        enc = trace_writer._encode.encode_sched_events
        assert enc(raw, {11: tracks[11]}, *args) == [12, 13]  # no track yet: nothing encoded
        data, counts = enc(raw, tracks, *args)
        w.write_encoded(data, 2 * len(records))
    else:
        for ts_off, ts_on, runq, tid, by_pid, cpu, reason, comm in records:
            counts[reason] = counts.get(reason, 0) + 1
            w.slice(tracks[tid], ts_off, ts_on - ts_off, REASON_NAMES[reason] if reason < 3 else "off_cpu", "sched",
                    {"by_pid": by_pid, "by_comm": _comm(comm), "runq_wait_ns": runq, "cpu": cpu})
    w.instant(tracks[12], 20_000, "preempted", "sched", {"by_comm": "z"})  # the iids carry on
    assert w.packets == 1 + 3 + 2 + 1 + 2 * len(records) + 1
    w.close()
    return counts


@pytest.mark.parametrize("native_ref", [False, True], ids=["protobuf", "track_event"])
def test_encode_sched_events_writes_the_bytes_of_slice_calls(tmp_path, native_ref):
    if trace_writer._encode is None:
        pytest.fail("recorders._encode is not built (scripts/setup.sh builds it)")
    ref_counts = _write_sched(tmp_path / "ref.pftrace", native=native_ref, encoded=False)
    counts = _write_sched(tmp_path / "sched.pftrace", native=True, encoded=True)
    assert counts == ref_counts == {0: 7, 1: 13, 2: 14, 7: 6}
    ref, got = (_packets_after_clock(tmp_path / f) for f in ("ref.pftrace", "sched.pftrace"))
    assert got == ref
    packets = Trace.FromString((tmp_path / "sched.pftrace").read_bytes()).packet
    interned = [p.interned_data for p in packets if p.HasField("interned_data")]
    assert [n.name for d in interned for n in d.event_names] == ["blocked", "off_cpu", "preempted"]
    assert [n.name for d in interned for n in d.debug_annotation_names] == ["cpu", "by_pid", "by_comm",
                                                                            "runq_wait_ns"]


def test_encode_sched_events_rejects_bad_input():
    if trace_writer._encode is None:
        pytest.fail("recorders._encode is not built")
    enc = trace_writer._encode.encode_sched_events
    raw = b"\0" * 56
    iids = ((1, 2, 3), 1, (1, 2, 3, 4), 1, 2)
    with pytest.raises(ValueError):  # not whole records
        enc(raw[:-1], {0: 5}, *iids)
    with pytest.raises(TypeError):  # tracks not a dict
        enc(raw, [5], *iids)
    with pytest.raises(TypeError):  # a track uuid that is no int
        enc(raw, {0: "5"}, *iids)
    with pytest.raises(ValueError):  # track uuid 0
        enc(raw, {0: 0}, *iids)
    assert enc(b"", {}, *iids) == (b"", {})
