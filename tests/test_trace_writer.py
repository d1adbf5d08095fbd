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
