"""The trace reader (prismkit.trace): Perfetto protobuf and Chrome JSON into pandas.

Traces are built here with the perfetto package's protobuf classes (or the
synthetic recorder-like generator), so every expected value is known exactly.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from prismkit.errors import PrismError
from prismkit.trace import TraceWarning, load_trace, native_available
from prismkit.trace.synth import write_recorder_like_trace

from conftest import require

CLEARED, NEEDS = 1, 2
MONO, BOOT, REAL = 3, 6, 1
TE = pb.TrackEvent


# ----------------------------------------------------------------- helpers

def write_packets(path: Path, packets: list) -> bytes:
    data = pb.Trace(packet=packets).SerializeToString()
    path.write_bytes(data)
    return data


def packet_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each framed TracePacket."""
    out, pos = [], 0
    while pos < len(data):
        assert data[pos] == 0x0A
        p, n, shift = pos + 1, 0, 0
        while True:
            b = data[p]
            p += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out.append((pos, p + n))
        pos = p + n
    return out


def load_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceWarning)
        return load_trace(path, **kw)


def slice_rows(trace, name: str) -> pd.DataFrame:
    s = trace.slices
    return s[s["name"] == name]


def one(trace, name: str) -> pd.Series:
    rows = slice_rows(trace, name)
    assert len(rows) == 1, f"{name}: {len(rows)} slices"
    return rows.iloc[0]


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(object)
        elif str(out[c].dtype) == "prismkit.args":
            out[c] = list(out[c].array)
    return out.reset_index(drop=True)


# ----------------------------------------------------------------- a rich hand-built trace

def _pkt(seq: int, ts: int | None = None, **kw) -> pb.TracePacket:
    p = pb.TracePacket(trusted_packet_sequence_id=seq, **kw)
    if ts is not None:
        p.timestamp = ts
    return p


def rich_packets() -> list:
    P = []
    # seq 1: snapshot (no primary clock named -> BOOTTIME is the trace clock), defaults: MONOTONIC
    p = _pkt(1, ts=1_500_000, sequence_flags=CLEARED, first_packet_on_sequence=True)
    p.trace_packet_defaults.timestamp_clock_id = MONO
    p.clock_snapshot.clocks.add(clock_id=MONO, timestamp=1_000_000)
    p.clock_snapshot.clocks.add(clock_id=BOOT, timestamp=1_500_000)
    p.clock_snapshot.clocks.add(clock_id=REAL, timestamp=1_700_000_000_000_000_000)
    p.timestamp_clock_id = BOOT
    P.append(p)
    for uuid, kw in ((100, dict(process=pb.ProcessDescriptor(pid=10, process_name="srv", cmdline=["srv", "-x"]))),
                     (101, dict(thread=pb.ThreadDescriptor(pid=10, tid=11, thread_name="main"))),
                     (102, dict(name="lane 0", parent_uuid=100)),
                     (103, dict(name="mem", parent_uuid=100, counter=pb.CounterDescriptor(unit_multiplier=1024))),
                     (104, dict(name="ticks", parent_uuid=101, counter=pb.CounterDescriptor(is_incremental=True)))):
        P.append(_pkt(1, track_descriptor=pb.TrackDescriptor(uuid=uuid, **kw)))
    # outer BEGIN with interning in the same packet and every kind of annotation
    p = _pkt(1, ts=2_000_000, sequence_flags=NEEDS)
    idata = p.interned_data
    idata.event_names.add(iid=1, name="outer")
    idata.event_names.add(iid=2, name="inner")
    idata.event_categories.add(iid=1, name="batch")
    idata.event_categories.add(iid=2, name="stage")
    for iid, nm in enumerate(["n_tokens", "ratio", "ok", "big", "label", "phase", "cfg", "legacy", "ptr", "ret"], 1):
        idata.debug_annotation_names.add(iid=iid, name=nm)
    idata.debug_annotation_string_values.add(iid=1, str=b"decode")
    te = p.track_event
    te.type = TE.TYPE_SLICE_BEGIN
    te.track_uuid = 101
    te.name_iid = 1
    te.category_iids.append(1)
    te.debug_annotations.add(name_iid=1, int_value=7)
    te.debug_annotations.add(name_iid=2, double_value=0.5)
    te.debug_annotations.add(name_iid=3, bool_value=True)
    te.debug_annotations.add(name_iid=4, uint_value=(1 << 63) + 5)
    te.debug_annotations.add(name_iid=5, string_value="x")
    te.debug_annotations.add(name_iid=6, string_value_iid=1)
    cfg = te.debug_annotations.add(name_iid=7)
    cfg.dict_entries.add(name="a", int_value=1)
    arr = cfg.dict_entries.add(name="b")
    arr.array_values.add(int_value=1)
    arr.array_values.add(string_value="two")
    leg = te.debug_annotations.add(name_iid=8)
    leg.nested_value.nested_type = pb.DebugAnnotation.NestedValue.DICT
    leg.nested_value.dict_keys.extend(["k", "l"])
    leg.nested_value.dict_values.add(int_value=3)
    lv = leg.nested_value.dict_values.add(nested_type=pb.DebugAnnotation.NestedValue.ARRAY)
    lv.array_values.add(double_value=1.5)
    te.debug_annotations.add(name_iid=9, pointer_value=0xDEAD)
    te.debug_annotations.add(name="plain_name", int_value=-3)
    te.flow_ids.append(77)
    P.append(p)
    p = _pkt(1, ts=2_000_100, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.track_uuid, p.track_event.name_iid = TE.TYPE_SLICE_BEGIN, 101, 2
    p.track_event.category_iids.append(2)
    P.append(p)
    p = _pkt(1, ts=2_000_200, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.track_uuid, p.track_event.name = TE.TYPE_INSTANT, 101, "tick"
    p.track_event.categories.extend(["x", "y"])
    P.append(p)
    p = _pkt(1, ts=2_000_300, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.track_uuid = TE.TYPE_SLICE_END, 101
    P.append(p)
    p = _pkt(1, ts=2_000_500, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.track_uuid = TE.TYPE_SLICE_END, 101
    p.track_event.debug_annotations.add(name_iid=10, int_value=-1)
    P.append(p)
    for ts, track, val in ((2_000_600, 103, 3), (2_000_700, 104, 5), (2_000_800, 104, 2)):
        p = _pkt(1, ts=ts, sequence_flags=NEEDS)
        p.track_event.type, p.track_event.track_uuid, p.track_event.counter_value = TE.TYPE_COUNTER, track, val
        P.append(p)
    p = _pkt(1, ts=2_000_650, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.track_uuid = TE.TYPE_COUNTER, 103
    p.track_event.double_counter_value = 0.25
    P.append(p)
    p = _pkt(1, ts=2_000_900, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.track_uuid, p.track_event.name = TE.TYPE_SLICE_BEGIN, 102, "req"
    p.track_event.terminating_flow_ids.append(77)
    P.append(p)
    p = _pkt(1, ts=2_001_000, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.track_uuid = TE.TYPE_SLICE_END, 102
    P.append(p)
    # incremental state reset: iid 1 now means "second"; default track via track_event_defaults
    p = _pkt(1, ts=2_002_000, sequence_flags=CLEARED)
    p.trace_packet_defaults.timestamp_clock_id = MONO
    p.trace_packet_defaults.track_event_defaults.track_uuid = 101
    p.trace_packet_defaults.track_event_defaults.extra_counter_track_uuids.append(103)
    p.interned_data.event_names.add(iid=1, name="second")
    p.track_event.type, p.track_event.name_iid = TE.TYPE_SLICE_BEGIN, 1
    p.track_event.extra_counter_values.append(42)
    P.append(p)
    p = _pkt(1, ts=2_003_000, sequence_flags=NEEDS)
    p.track_event.type = TE.TYPE_SLICE_END
    P.append(p)
    # a second snapshot moves the MONOTONIC->BOOTTIME offset from 500 us to 600 us
    p = _pkt(1, ts=3_600_000, timestamp_clock_id=BOOT)
    p.clock_snapshot.clocks.add(clock_id=MONO, timestamp=3_000_000)
    p.clock_snapshot.clocks.add(clock_id=BOOT, timestamp=3_600_000)
    P.append(p)
    p = _pkt(1, ts=3_100_000, timestamp_clock_id=MONO, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.name = TE.TYPE_INSTANT, "late"
    P.append(p)
    # seq 2 never cleared its incremental state: its event must be skipped
    p = _pkt(2, ts=2_000_000, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.track_uuid, p.track_event.name_iid = TE.TYPE_INSTANT, 101, 1
    P.append(p)
    # seq 3: legacy thread_descriptor, no track uuids, a sequence-scoped incremental clock in us
    p = _pkt(3, sequence_flags=CLEARED)
    p.thread_descriptor.pid, p.thread_descriptor.tid, p.thread_descriptor.thread_name = 10, 12, "legacy"
    P.append(p)
    p = _pkt(3)   # (thread_descriptor and clock_snapshot are one oneof: two packets)
    p.clock_snapshot.clocks.add(clock_id=64, timestamp=2000, is_incremental=True, unit_multiplier_ns=1000)
    p.clock_snapshot.clocks.add(clock_id=BOOT, timestamp=2_500_000)
    P.append(p)
    p = _pkt(3, ts=100, timestamp_clock_id=64, sequence_flags=NEEDS)
    p.track_event.name = "legacyX"
    p.track_event.legacy_event.phase = ord("X")
    p.track_event.legacy_event.duration_us = 5
    P.append(p)
    p = _pkt(3, ts=50, timestamp_clock_id=64, sequence_flags=NEEDS)
    p.track_event.type, p.track_event.name = TE.TYPE_INSTANT, "legacyI"
    P.append(p)
    return P


@pytest.fixture(scope="module")
def rich_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rich") / "rich.pftrace"
    write_packets(path, rich_packets())
    return path


@pytest.fixture(scope="module", params=["native", "python"])
def rich(request, rich_path):
    if request.param == "native":
        require(native_available(), "the native decoder is not built (pip install -e .)")
    with pytest.warns(TraceWarning, match="incremental state"):
        return load_trace(rich_path, pure_python=request.param == "python")


def test_rich_slices_exact(rich):
    s = rich.slices
    assert s["ts"].is_monotonic_increasing
    outer = one(rich, "outer")
    # MONOTONIC 2_000_000 + (1_500_000 - 1_000_000) on the BOOTTIME trace clock
    assert (outer["ts"], outer["dur"], outer["depth"], outer["parent_id"]) == (2_500_000, 500, 0, -1)
    assert (outer["category"], outer["track"], outer["pid"], outer["tid"]) == ("batch", "main", 10, 11)
    assert outer["args"] == {
        "n_tokens": 7, "ratio": 0.5, "ok": True, "big": (1 << 63) + 5, "label": "x", "phase": "decode",
        "cfg": {"a": 1, "b": [1, "two"]}, "legacy": {"k": 3, "l": [1.5]}, "ptr": 0xDEAD, "plain_name": -3,
        "ret": -1}  # ret: from the END event
    assert outer["flow_ids"] == (77,)
    inner = one(rich, "inner")
    assert (inner["ts"], inner["dur"], inner["depth"], inner["category"]) == (2_500_100, 200, 1, "stage")
    assert inner["parent_id"] == outer.name and inner["args"] is None
    tick = one(rich, "tick")
    assert (tick["ts"], tick["dur"], tick["depth"], tick["parent_id"]) == (2_500_200, 0, 2, inner.name)
    assert tick["category"] == "x,y"
    req = one(rich, "req")
    assert (req["ts"], req["dur"], req["track"], req["pid"]) == (2_500_900, 100, "lane 0", 10)
    assert pd.isna(req["tid"])
    second = one(rich, "second")   # iid 1 after the reset; track from track_event_defaults
    assert (second["ts"], second["dur"], second["track"], second["depth"]) == (2_502_000, 1000, "main", 0)
    late = one(rich, "late")       # converted with the second snapshot
    assert (late["ts"], late["dur"], late["track"]) == (3_700_000, 0, "main")
    lx = one(rich, "legacyX")      # incremental us clock: (2000 + 100) us -> +500 us
    assert (lx["ts"], lx["dur"], lx["track"], lx["pid"], lx["tid"]) == (2_600_000, 5000, "legacy", 10, 12)
    li = one(rich, "legacyI")      # (2100 + 50) us
    assert (li["ts"], li["dur"], li["depth"]) == (2_650_000, 0, 0)
    assert len(s) == 8             # the seq-2 event without incremental state is not there


def test_rich_counters_flows_tracks_metadata(rich):
    c = rich.counters
    got = [(int(ts), nm, float(v)) for ts, nm, v in zip(c["ts"], c["name"].astype(str), c["value"])]
    assert got == [(2_500_600, "mem", 3 * 1024.0), (2_500_650, "mem", 0.25 * 1024), (2_500_700, "ticks", 5.0),
                   (2_500_800, "ticks", 7.0), (2_502_000, "mem", 42 * 1024.0)]
    assert c.loc[c["name"] == "ticks", "tid"].tolist() == [11, 11]
    assert c.loc[c["name"] == "mem", "pid"].tolist() == [10, 10, 10]
    f = rich.flows
    assert len(f) == 1
    assert (int(f["flow_id"][0]), f["from_slice"][0], f["to_slice"][0]) == (
        77, one(rich, "outer").name, one(rich, "req").name)
    t = rich.tracks.set_index("uuid")
    assert t.loc[100, ["name", "kind", "pid"]].tolist() == ["srv", "process", 10]
    assert t.loc[101, ["name", "kind", "pid", "tid", "parent_uuid"]].tolist() == ["main", "thread", 10, 11, 100]
    assert t.loc[102, ["name", "kind", "pid"]].tolist() == ["lane 0", "other", 10]
    assert t.loc[103, "kind"] == "counter" and t.loc[104, "tid"] == 11
    legacy = t[t["name"] == "legacy"]
    assert legacy[["kind", "pid", "tid"]].values.tolist() == [["thread", 10, 12]]
    m = rich.metadata
    assert m["trace_clock"] == "boottime" and m["stopped_at_offset"] is None and m["lost_events"] == 0
    assert m["format"] == "perfetto"


def test_clock_argument(rich_path):
    t = load_quiet(rich_path, clock="monotonic")
    assert one(t, "outer")["ts"] == 2_000_000
    assert one(t, "legacyX")["ts"] == 2_100_000    # us clock -> BOOTTIME -> MONOTONIC
    assert t.metadata["trace_clock"] == "monotonic"
    r = load_quiet(rich_path, clock="realtime")
    assert one(r, "outer")["ts"] == 1_700_000_000_000_000_000 + 1_000_000
    with pytest.raises(PrismError, match="unknown clock"):
        load_trace(rich_path, clock="sundial")


def test_native_and_python_decoders_agree(rich_path, tmp_path):
    require(native_available(), "the native decoder is not built (pip install -e .)")
    path = tmp_path / "synth.pftrace"
    write_recorder_like_trace(path, 3000)
    for p in (rich_path, path):
        a = load_quiet(p, pure_python=False)
        b = load_quiet(p, pure_python=True)
        assert a.metadata["reader"] == "native" and b.metadata["reader"] == "python"
        pd.testing.assert_frame_equal(comparable(a.slices), comparable(b.slices))
        pd.testing.assert_frame_equal(comparable(a.counters), comparable(b.counters))
        pd.testing.assert_frame_equal(a.flows, b.flows)
        pd.testing.assert_frame_equal(a.tracks, b.tracks)


def test_primary_trace_clock_and_compressed_packets(tmp_path):
    inner = []
    p = _pkt(5, ts=10_000, sequence_flags=CLEARED)
    p.interned_data.event_names.add(iid=3, name="zipped")
    p.track_event.type, p.track_event.track_uuid, p.track_event.name_iid = TE.TYPE_INSTANT, 9, 3
    inner.append(p)
    snap = _pkt(5, ts=0)
    snap.clock_snapshot.primary_trace_clock = MONO
    snap.clock_snapshot.clocks.add(clock_id=MONO, timestamp=100)
    snap.clock_snapshot.clocks.add(clock_id=BOOT, timestamp=1100)
    comp = _pkt(5, compressed_packets=zlib.compress(pb.Trace(packet=inner).SerializeToString()))
    p2 = _pkt(5, ts=20_000, timestamp_clock_id=BOOT, sequence_flags=NEEDS)
    p2.track_event.type, p2.track_event.track_uuid, p2.track_event.name_iid = TE.TYPE_INSTANT, 9, 3
    write_packets(tmp_path / "c.pftrace", [snap, comp, p2])
    t = load_trace(tmp_path / "c.pftrace")
    assert t.metadata["trace_clock"] == "monotonic"
    # packets without a clock id are on the trace clock; the BOOTTIME one moves by -1000
    assert slice_rows(t, "zipped")["ts"].tolist() == [10_000, 19_000]


# ----------------------------------------------------------------- against the protobuf classes

def test_matches_protobuf_classes_on_recorder_like_trace(tmp_path):
    path = tmp_path / "r.pftrace"
    summary = write_recorder_like_trace(path, 4000)
    data = path.read_bytes()
    names, cats, anns = {}, {}, {}
    stacks: dict[int, list] = {}
    expected = []
    n_counters = 0
    for a, b in packet_offsets(data):
        pkt = pb.TracePacket.FromString(_payload(data, a, b))
        if pkt.HasField("interned_data"):
            for e in pkt.interned_data.event_names:
                names[e.iid] = e.name
            for e in pkt.interned_data.event_categories:
                cats[e.iid] = e.name
            for e in pkt.interned_data.debug_annotation_names:
                anns[e.iid] = e.name
        if not pkt.HasField("track_event"):
            continue
        te = pkt.track_event
        args = {anns[x.name_iid]: getattr(x, x.WhichOneof("value")) for x in te.debug_annotations}
        if te.type == TE.TYPE_COUNTER:
            n_counters += 1
        elif te.type == TE.TYPE_SLICE_END:
            row = stacks[te.track_uuid].pop()
            row["dur"] = pkt.timestamp - row["ts"]
            row["args"] = {**(row["args"] or {}), **args} or None
        else:
            row = {"ts": pkt.timestamp, "dur": 0, "name": names[te.name_iid],
                   "category": cats[te.category_iids[0]], "track_uuid": te.track_uuid, "args": args or None,
                   "depth": len(stacks.get(te.track_uuid, []))}
            expected.append(row)
            if te.type == TE.TYPE_SLICE_BEGIN:
                stacks.setdefault(te.track_uuid, []).append(row)
    t = load_trace(path)
    exp = pd.DataFrame(expected).sort_values("ts", kind="stable").reset_index(drop=True)
    got = comparable(t.slices[["ts", "dur", "name", "category", "track_uuid", "args", "depth"]])
    got["track_uuid"] = got["track_uuid"].astype(np.int64)
    exp["track_uuid"] = exp["track_uuid"].astype(np.int64)
    exp["depth"] = exp["depth"].astype(np.int32)
    for c in ("name", "category"):
        exp[c] = exp[c].astype(object)
    pd.testing.assert_frame_equal(got, exp[got.columns])
    assert len(t.counters) == n_counters == summary["counters"]
    assert len(t.batches) == summary["batches"]


def _payload(data: bytes, a: int, b: int) -> bytes:
    p = a + 1
    while data[p] & 0x80:
        p += 1
    return data[p + 1:b]


# ----------------------------------------------------------------- domain tables

def test_domain_tables_on_recorder_like_trace(tmp_path):
    path = tmp_path / "r.pftrace"
    summary = write_recorder_like_trace(path, 6000)
    t = load_trace(path)
    b = t.batches
    assert len(b) == summary["batches"]
    for col in ("ts", "dur", "pid", "tid", "n_tokens", "n_seqs", "n_prefill_tokens", "n_decode_tokens", "kv_tokens",
                "phase", "batch_id", "n_outputs", "ret"):
        assert col in b.columns
    assert b["batch_id"].tolist() == list(range(1, len(b) + 1))
    assert (b["n_tokens"] == b["n_prefill_tokens"] + b["n_decode_tokens"]).all()
    assert set(b["phase"]) <= {"prefill", "decode"} and (b["ret"] == 0).all() and (b["tid"] == 4242).all()
    first = t.slices.loc[b["slice_id"][0]]
    assert first["args"]["batch_id"] == 1 and b["dur"][0] == first["dur"]
    r = t.requests
    assert len(r) == summary["requests"]
    done = r[r["n_chunks"] == 16]
    assert len(done) > 0
    assert (done["ttft"] == done["ts_first_token"] - done["ts_arrival"]).all()
    assert (done["e2e"] == done["ts_end"] - done["ts_arrival"]).all()
    np.testing.assert_allclose(done["tpot"], (done["ts_end"] - done["ts_first_token"]).astype(float) / 15)
    # first_token instants are the requests' children
    ft = slice_rows(t, "first_token")
    assert len(ft) == len(done)
    assert set(t.slices.loc[ft["parent_id"], "name"]) == {"request"}
    s = t.sched
    assert len(s) == summary["sched"]
    assert set(s["reason"]) == {"preempted", "blocked"} and (s["by_comm"] == "kworker/0:1").all()
    assert set(s["tid"]) <= {4243, 4244, 4245} and (s["dur"] > 0).all()
    assert t.metadata["lost_events"] == 3 and t.metadata["stop_reason"] == "duration"
    assert t.metadata["target_pid"] == 4242
    # flows: each request's slice to the batch that served it first
    f = t.flows
    assert len(f) == summary["requests"]
    assert set(t.slices.loc[f["from_slice"], "name"]) == {"request"}
    assert set(t.slices.loc[f["to_slice"], "name"]) == {"llama_decode"}
    # vectorized argument access
    np.testing.assert_array_equal(t.arg("kv_tokens", t.slices.loc[b["slice_id"]]), b["kv_tokens"].to_numpy())


def test_empty_domain_tables_have_columns(rich):
    assert rich.requests.empty and "ttft" in rich.requests.columns
    assert rich.sched.empty and "runq_wait_ns" in rich.sched.columns
    b = rich.batches    # 'outer' is a batch slice with n_tokens only
    assert len(b) == 1 and b["n_tokens"].tolist() == [7] and b["phase"].tolist() == ["decode"]


# ----------------------------------------------------------------- Chrome JSON

def test_native_and_chrome_json_export_agree(tmp_path, rich_path):
    path = tmp_path / "r.pftrace"
    write_recorder_like_trace(path, 3000)
    for p in (path, rich_path):
        a = load_quiet(p)
        out = tmp_path / (p.stem + ".json")
        a.to_chrome_json(out)
        b = load_quiet(out)
        assert b.metadata["format"] == "chrome_json"
        cols = ["ts", "dur", "name", "category", "track", "pid", "tid", "depth", "parent_id", "args", "flow_ids"]
        pd.testing.assert_frame_equal(comparable(a.slices[cols]), comparable(b.slices[cols]))
        cc = ["ts", "name", "value", "pid"]
        pd.testing.assert_frame_equal(comparable(a.counters[cc]), comparable(b.counters[cc]))
        fa = sorted(map(tuple, a.flows[["flow_id", "from_slice", "to_slice"]].values.tolist()))
        fb = sorted(map(tuple, b.flows[["flow_id", "from_slice", "to_slice"]].values.tolist()))
        assert fa == fb
        pd.testing.assert_frame_equal(a.batches.drop(columns=["pid", "tid"]), b.batches.drop(columns=["pid", "tid"]))


KINETO = {
    "schemaVersion": 1,
    "deviceProperties": [{"id": 0, "name": "GPU"}],
    "traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "main"}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 7, "ts": 100.5, "dur": 20.25,
         "args": {"Input Dims": [[2, 3], [3, 4]], "External id": 5}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": 1, "tid": 7, "ts": 105, "dur": 2},
        {"ph": "i", "s": "t", "name": "mark", "pid": 1, "tid": 7, "ts": 103},
        {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": "stream 7", "ts": 130, "dur": 5.001,
         "args": {"stream": 7}},
        {"ph": "s", "id": 5, "pid": 1, "tid": 7, "ts": 100.5, "cat": "ac2g", "name": "ac2g"},
        {"ph": "f", "id": 5, "pid": 0, "tid": "stream 7", "ts": 130, "cat": "ac2g", "name": "ac2g", "bp": "e"},
        {"ph": "C", "name": "[memory]", "pid": 1, "ts": 110, "args": {"Total Allocated": 1024}},
        {"ph": "C", "name": "qps", "pid": 1, "ts": 111, "args": {"value": 3.5}},
        {"ph": "B", "name": "step", "pid": 1, "tid": 8, "ts": 90},
        {"ph": "E", "pid": 1, "tid": 8, "ts": 140, "args": {"loss": 0.5}},
        {"ph": "X", "name": "big", "pid": 1, "tid": 9, "ts": 1234567890123.456, "dur": 0.001},
    ],
}


def _check_kineto(t) -> None:
    mm = one(t, "aten::mm")
    assert (mm["ts"], mm["dur"], mm["depth"], mm["category"], mm["track"], mm["pid"], mm["tid"]) == (
        100_500, 20_250, 0, "cpu_op", "main", 1, 7)
    assert mm["args"] == {"Input Dims": [[2, 3], [3, 4]], "External id": 5}
    add = one(t, "aten::add")
    assert (add["ts"], add["dur"], add["depth"], add["parent_id"]) == (105_000, 2000, 1, mm.name)
    mark = one(t, "mark")
    assert (mark["dur"], mark["depth"], mark["parent_id"]) == (0, 1, mm.name)
    gemm = one(t, "gemm")
    assert (gemm["ts"], gemm["dur"], gemm["track"], gemm["pid"]) == (130_000, 5001, "stream 7", 0)
    step = one(t, "step")
    assert (step["dur"], step["args"]) == (50_000, {"loss": 0.5})
    assert one(t, "big")["ts"] == 1_234_567_890_123_456   # no float rounding
    assert t.flows[["from_slice", "to_slice"]].values.tolist() == [[mm.name, gemm.name]]
    c = t.counters
    assert [(int(a), n, v) for a, n, v in zip(c["ts"], c["name"].astype(str), c["value"])] == [
        (110_000, "[memory] Total Allocated", 1024.0), (111_000, "qps", 3.5)]
    assert t.metadata["format"] == "chrome_json" and t.metadata["chrome_json"]["schemaVersion"] == 1


def test_chrome_json_kineto_like(tmp_path):
    text = json.dumps(KINETO)
    (tmp_path / "k.json").write_text(text)
    _check_kineto(load_trace(tmp_path / "k.json"))
    # bare list, gzip, any extension: detected by content
    (tmp_path / "k.bin").write_text(json.dumps(KINETO["traceEvents"]))
    _check_kineto_bare = load_trace(tmp_path / "k.bin")
    assert len(_check_kineto_bare.slices) == 6
    with gzip.open(tmp_path / "k.json.gz", "wt") as f:
        f.write(text)
    _check_kineto(load_trace(tmp_path / "k.json.gz"))


def test_chrome_json_truncated(tmp_path):
    text = json.dumps(KINETO, indent=1)
    cut = text.index('"name": "qps"')
    (tmp_path / "t.json").write_text(text[:cut])
    with pytest.warns(TraceWarning, match="truncated"):
        t = load_trace(tmp_path / "t.json")
    assert set(t.slices["name"].astype(str)) == {"aten::mm", "aten::add", "mark", "gemm"}
    assert t.metadata["stopped_at_offset"] is not None and 0 < t.metadata["stopped_at_offset"] < cut
    with pytest.raises(PrismError, match="offset"):
        load_trace(tmp_path / "t.json", strict=True)


# ----------------------------------------------------------------- growing, truncated, damaged files

@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "s.pftrace"
    write_recorder_like_trace(path, 2000)
    return path, path.read_bytes()


def test_truncated_mid_packet_loads_complete_packets(synth, tmp_path):
    path, data = synth
    offs = packet_offsets(data)
    k = len(offs) // 2
    start, end = offs[k]
    (tmp_path / "cut.pftrace").write_bytes(data[:start + (end - start) // 2])
    (tmp_path / "prefix.pftrace").write_bytes(data[:start])
    with pytest.warns(TraceWarning, match=f"byte offset {start}"):
        cut = load_trace(tmp_path / "cut.pftrace")
    assert cut.metadata["stopped_at_offset"] == start
    prefix = load_trace(tmp_path / "prefix.pftrace")
    assert prefix.metadata["stopped_at_offset"] is None
    pd.testing.assert_frame_equal(comparable(cut.slices), comparable(prefix.slices))
    pd.testing.assert_frame_equal(comparable(cut.counters), comparable(prefix.counters))
    assert (cut.slices["dur"] == -1).any()          # the open batch at the cut
    s = cut.slices
    assert len(cut.batches) == ((s["category"] == "batch") & (s["dur"] >= 0)).sum() > 0
    with pytest.raises(PrismError) as err:
        load_trace(tmp_path / "cut.pftrace", strict=True)
    assert str(start) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_bytes_in_the_middle(synth, tmp_path):
    path, data = synth
    offs = packet_offsets(data)
    k = len(offs) // 3
    start, end = offs[k]
    # 1) the framing is broken: not a TracePacket tag
    bad = bytearray(data)
    bad[start] = 0xFF
    (tmp_path / "bad1.pftrace").write_bytes(bad)
    (tmp_path / "prefix.pftrace").write_bytes(data[:start])
    with pytest.warns(TraceWarning, match=f"damaged packet .* at byte offset {start}"):
        t = load_trace(tmp_path / "bad1.pftrace")
    assert t.metadata["stopped_at_offset"] == start
    prefix = load_trace(tmp_path / "prefix.pftrace")
    pd.testing.assert_frame_equal(comparable(t.slices), comparable(prefix.slices))
    # 2) the framing is fine but the packet's content is not protobuf (wire type 7)
    bad = bytearray(data)
    p = start + 1
    while bad[p] & 0x80:
        p += 1
    bad[p + 1] = 0x0F
    (tmp_path / "bad2.pftrace").write_bytes(bad)
    with pytest.warns(TraceWarning, match="wire type|field number"):
        t2 = load_trace(tmp_path / "bad2.pftrace")
    assert t2.metadata["stopped_at_offset"] == start
    pd.testing.assert_frame_equal(comparable(t2.slices), comparable(prefix.slices))
    with pytest.raises(PrismError, match=f"offset {start}"):
        load_trace(tmp_path / "bad2.pftrace", strict=True)
    # 3) nothing valid at all
    (tmp_path / "bad3.pftrace").write_bytes(b"\x0a\x05\x0f\xff\xff\xff\xff" + data)
    with pytest.raises(PrismError, match="offset 0"):
        load_trace(tmp_path / "bad3.pftrace")


def test_gzipped_perfetto_trace(synth, tmp_path):
    path, data = synth
    gz = tmp_path / "s.pftrace.gz"
    gz.write_bytes(gzip.compress(data))
    a, b = load_trace(path), load_trace(gz)
    pd.testing.assert_frame_equal(comparable(a.slices), comparable(b.slices))
    gz.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])
    with pytest.warns(TraceWarning, match="decompressed"):
        c = load_trace(gz)
    assert 0 < len(c.slices) < len(a.slices)


def test_file_being_appended_while_read(synth, tmp_path):
    path, data = synth
    live = tmp_path / "live.pftrace"
    live.write_bytes(b"")
    done = threading.Event()

    def writer():
        with open(live, "ab") as f:
            pos = 0
            step = 997   # not aligned with packets
            while pos < len(data):
                f.write(data[pos:pos + step])
                f.flush()
                pos += step
                time.sleep(0.0005)
        done.set()

    th = threading.Thread(target=writer)
    th.start()
    loads = 0
    seen = 0
    try:
        while not done.is_set():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", TraceWarning)
                    t = load_trace(live)
            except PrismError as e:    # only while the file holds no complete packet yet
                assert "no valid trace data" in str(e) or "empty" in str(e)
                continue
            loads += 1
            ids = t.batches["batch_id"].tolist()
            assert ids == list(range(1, len(ids) + 1))   # a prefix, nothing torn
            assert len(ids) >= seen
            seen = len(ids)
            off = t.metadata["stopped_at_offset"]
            assert off is None or (off < len(data) and data[off] == 0x0A)
    finally:
        th.join()
    final = load_trace(live)
    assert final.metadata["stopped_at_offset"] is None
    assert len(final.batches) == len(load_trace(path).batches)
    assert loads >= 1


@pytest.mark.parametrize("content,match", [
    (None, "trace not found"),
    (b"", "empty trace file"),
    (b"\x00\x01garbage that is not a trace", "not a Perfetto or Chrome JSON trace"),
    (b"hello world", "not a Perfetto or Chrome JSON trace"),
    (b"{not json at all", "no valid trace data"),
])
def test_bad_inputs_raise_one_line_prism_error(tmp_path, content, match):
    path = tmp_path / "x.pftrace"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PrismError, match=match) as err:
        load_trace(path)
    assert "\n" not in str(err.value)


def test_directory_is_not_a_trace(tmp_path):
    with pytest.raises(PrismError, match="directory"):
        load_trace(tmp_path)


# ----------------------------------------------------------------- TraceProcessor backend

def _tp_binary() -> str | None:
    return os.environ.get("PRISM_TRACE_PROCESSOR") or shutil.which("trace_processor_shell") \
        or shutil.which("trace_processor")


def test_trace_processor_backend_agrees(rich_path, tmp_path):
    tp = _tp_binary()
    if not tp:
        pytest.skip("no trace_processor_shell binary (set PRISM_TRACE_PROCESSOR to test this backend)")
    path = tmp_path / "r.pftrace"
    write_recorder_like_trace(path, 2000)
    for p in (path, rich_path):
        a = load_quiet(p)
        b = load_trace(p, trace_processor_bin=tp)
        assert b.metadata["reader"] == "trace_processor"
        cols = ["ts", "dur", "name", "category", "track", "pid", "tid", "depth"]
        sa = comparable(a.slices[cols]).sort_values(["ts", "track", "depth"]).reset_index(drop=True)
        sb = comparable(b.slices[cols]).sort_values(["ts", "track", "depth"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(sa, sb, check_dtype=False)
        assert len(a.counters) == len(b.counters)


def test_trace_processor_missing_binary_is_a_prism_error(rich_path, tmp_path):
    with pytest.raises(PrismError, match="trace_processor"):
        load_trace(rich_path, trace_processor_bin=str(tmp_path / "no-such-binary"))


# ----------------------------------------------------------------- fallback and robustness

def test_pure_python_fallback_warns_once_when_extension_missing(monkeypatch, synth):
    from prismkit.trace import _backend

    path, _ = synth
    native = load_trace(path)
    monkeypatch.setattr(_backend, "_native", None)
    monkeypatch.setattr(_backend, "_warned", False)
    with pytest.warns(RuntimeWarning, match="native decoder .* not built"):
        t = load_trace(path)
    assert t.metadata["reader"] == "python"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # only once
        load_trace(path)
    pd.testing.assert_frame_equal(comparable(native.slices), comparable(t.slices))


def test_mutated_traces_never_crash(synth, tmp_path):
    """Random byte damage: a Trace of the valid prefix or a PrismError, never a crash or other exception."""
    path, data = synth
    rng = np.random.default_rng(7)
    outcomes = {"trace": 0, "error": 0}
    for i in range(60):
        buf = bytearray(data[: rng.integers(1, len(data))] if i % 3 == 0 else data)
        for _ in range(int(rng.integers(1, 8))):
            buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
        p = tmp_path / f"m{i}.pftrace"
        p.write_bytes(bytes(buf))
        try:
            t = load_quiet(p)
        except PrismError as e:
            assert "\n" not in str(e)
            outcomes["error"] += 1
            continue
        outcomes["trace"] += 1
        assert t.slices["ts"].is_monotonic_increasing
        _ = t.batches, t.requests, t.sched
    assert outcomes["trace"] > 0


def test_trace_processor_backend_conversion_with_a_stand_in(monkeypatch, rich_path, tmp_path):
    """The TraceProcessor code path, with a stand-in for the binary's query results."""
    import perfetto.trace_processor as tpmod

    seen = {}

    class Result:
        def __init__(self, df):
            self.df = df

        def as_pandas_dataframe(self):
            return self.df

    class FakeTP:
        def __init__(self, trace=None, config=None):
            seen["trace"], seen["config"] = trace, config

        def query(self, sql):
            if "from slice s" in sql:
                return Result(pd.DataFrame({
                    "id": [10, 11], "ts": [100, 150], "dur": [100, 0], "name": ["outer", "mark"],
                    "category": ["batch", None], "depth": [0, 1], "parent_id": [None, 10], "track_id": [1, 1],
                    "arg_set_id": [5, None], "track_name": ["main", "main"], "tid": [11, 11], "pid": [10, 10]}))
            if "from counter c" in sql:
                return Result(pd.DataFrame({"ts": [120], "value": [2.5], "track_id": [2], "track_name": ["mem"],
                                            "tid": [None], "pid": [10]}))
            if "from args a" in sql:
                return Result(pd.DataFrame({
                    "arg_set_id": [5, 5, 5], "key": ["debug.n_tokens", "debug.phase", "debug.ratio"],
                    "int_value": [7, None, None], "string_value": [None, "decode", None],
                    "real_value": [None, None, 0.5], "value_type": ["int", "string", "real"]}))
            if "from flow" in sql:
                return Result(pd.DataFrame({"slice_out": [10], "slice_in": [11]}))
            return Result(pd.DataFrame({"id": [1, 2], "name": ["main", "mem"],
                                        "type": ["thread_track", "process_counter_track"]}))

        def close(self):
            seen["closed"] = True

    monkeypatch.setattr(tpmod, "TraceProcessor", FakeTP)
    binary = tmp_path / "trace_processor_shell"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    t = load_trace(rich_path, trace_processor_bin=str(binary))
    assert seen["config"].bin_path == str(binary) and not seen["config"].fetch_latest_trace_processor
    assert seen["closed"] and t.metadata["reader"] == "trace_processor"
    outer = one(t, "outer")
    assert (outer["ts"], outer["dur"], outer["track"], outer["pid"], outer["tid"]) == (100, 100, "main", 10, 11)
    assert outer["args"] == {"n_tokens": 7, "phase": "decode", "ratio": 0.5}
    assert one(t, "mark")["parent_id"] == outer.name
    assert t.flows[["from_slice", "to_slice"]].values.tolist() == [[0, 1]]
    assert t.counters[["ts", "value"]].values.tolist() == [[120, 2.5]]
    assert t.batches["n_tokens"].tolist() == [7] and t.batches["phase"].tolist() == ["decode"]


def test_packets_larger_than_the_read_chunk(tmp_path):
    from prismkit.trace import reader

    big = "x" * (3 * reader.CHUNK + 123)
    p = _pkt(1, ts=5, sequence_flags=CLEARED)
    p.track_event.type, p.track_event.track_uuid, p.track_event.name = TE.TYPE_INSTANT, 1, "big"
    p.track_event.debug_annotations.add(name="blob", string_value=big)
    q = _pkt(1, ts=6, sequence_flags=NEEDS)
    q.track_event.type, q.track_event.track_uuid, q.track_event.name = TE.TYPE_INSTANT, 1, "after"
    data = write_packets(tmp_path / "big.pftrace", [p, q])
    t = load_trace(tmp_path / "big.pftrace")
    assert one(t, "big")["args"] == {"blob": big} and one(t, "after")["ts"] == 6
    (tmp_path / "cut.pftrace").write_bytes(data[: len(data) - 10])
    with pytest.warns(TraceWarning, match=f"at byte offset {packet_offsets(data)[1][0]}"):
        c = load_trace(tmp_path / "cut.pftrace")
    assert c.slices["name"].tolist() == ["big"]
