"""The trace writer's C fast path (recorders/_encode.c) writes the packets the protobuf classes write."""
from __future__ import annotations

import numpy as np
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


SCHED_LIKE = np.dtype([("ts", "<u8"), ("end", "<u8"), ("tid", "<u4"), ("by_pid", "<i4"), ("cpu", "<u2"),
                       ("reason", "u1"), ("pad", "u1")])


def _rows() -> np.ndarray:
    """Slices as a pack drains them: a structured array (strided field views), names and a
    string arg as indices, a negative duration, values of every int width."""
    rows = np.zeros(7, SCHED_LIKE)
    rows["ts"] = [10_000, 10_100, 10_200, 2**40, 10_400, 10_500, 10_600]
    rows["end"] = [10_050, 10_100, 10_150, 2**40 + 7, 10_900, 10_501, 10_800]  # row 2 ends before it starts
    rows["tid"] = [11, 11, 12, 11, 12, 12, 11]
    rows["by_pid"] = [42, -3, 0, 2**31 - 1, 7, 7, 42]
    rows["cpu"] = [0, 1, 65535, 1, 0, 0, 1]
    rows["reason"] = [1, 1, 2, 0, 2, 3, 1]  # 3: the duplicate "preempted" below
    return rows


NAMES = ("off_cpu", "preempted", "blocked", "preempted")
COMMS = ["busy", "é", "", "busy"]


def _batch(rows: np.ndarray, tracks: dict[int, int]) -> dict:
    return {"track_uuid": np.array([tracks[t] for t in rows["tid"].tolist()], dtype=np.uint64),
            "ts": rows["ts"], "dur": rows["end"].astype(np.int64) - rows["ts"].astype(np.int64),
            "name": (rows["reason"], NAMES), "category": "sched",
            "args": {"by_pid": rows["by_pid"], "by_comm": (np.arange(len(rows)) % len(COMMS), COMMS),
                     "runq_wait_ns": rows["end"], "cpu": rows["cpu"]}}


def _write_batches(path, native: bool, one_by_one: bool) -> None:
    w = TraceWriter(path, native=native)
    tracks = {11: w.thread_track(10, 11, "a"), 12: w.thread_track(10, 12, "b")}
    w.slice(tracks[11], 5_000, 10, "preempted", "sched", {"cpu": 3})  # some names already interned
    rows = _rows()
    for part in (rows[:4], rows[:0], rows[4:]):
        batch = _batch(part, tracks)
        if not one_by_one:
            w.slices(**batch)
            continue
        dur = batch["dur"].tolist()
        comms = batch["args"]["by_comm"][0].tolist()
        for i, r in enumerate(part.tolist()):
            w.slice(tracks[r[2]], r[0], dur[i], NAMES[r[5]], "sched",
                    {"by_pid": r[3], "by_comm": COMMS[comms[i]], "runq_wait_ns": r[1], "cpu": r[4]})
    w.instant(tracks[11], 20_000, "blocked", "sched", {"cpu": 1})  # after the batch: interning carried on
    w.close()


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


@pytest.mark.parametrize("native", [True, False])
def test_slices_batch_writes_the_bytes_of_slice_calls(tmp_path, native):
    if native and trace_writer._encode is None:
        pytest.fail("recorders._encode is not built (scripts/setup.sh builds it)")
    _write_batches(tmp_path / "ref.pftrace", native=False, one_by_one=True)
    _write_batches(tmp_path / "batch.pftrace", native=native, one_by_one=False)
    ref, got = (_packets_after_clock(tmp_path / f) for f in ("ref.pftrace", "batch.pftrace"))
    assert got == ref
    packets = Trace.FromString((tmp_path / "batch.pftrace").read_bytes()).packet
    assert len(packets) == 1 + 2 + 2 + 2 * 7 + 1
    interned = [p.interned_data for p in packets if p.HasField("interned_data")]
    assert [n.name for d in interned for n in d.event_names] == ["preempted", "blocked", "off_cpu"]


def test_encode_slices_rejects_bad_input():
    if trace_writer._encode is None:
        pytest.fail("recorders._encode is not built")
    enc = trace_writer._encode.encode_slices
    col = np.arange(3, dtype=np.uint64)
    with pytest.raises(ValueError):  # columns of different lengths
        enc(col, col[:2], col, col, 0, [], [], 1, 2)
    with pytest.raises(TypeError):  # not integers
        enc(col, col, col, col.astype(np.float64), 0, [], [], 1, 2)
    with pytest.raises(IndexError):  # string index out of range
        enc(col, col, col, col, 0, [(1, col, ["a"])], [], 1, 2)
    with pytest.raises(ValueError):  # interned row past the end
        enc(col, col, col, col, 0, [], [(5, [(2, 1, "x")])], 1, 2)
    with pytest.raises(ValueError):  # interned rows out of order
        enc(col, col, col, col, 0, [], [(1, [(2, 1, "x")]), (1, [(2, 2, "y")])], 1, 2)
    assert enc(col[:0], col[:0], col[:0], col[:0], 0, [], [], 1, 2) == b""
