"""TraceTail: the recent window of a growing trace, read incrementally (prismkit/trace/tail.py).

Ground truth: the ordinary reader on the whole file. The recordings are the labelled
sample traces (real recordings of the demo server); tests/test_watch.py checks a
TraceTail on a live watch session's growing trace.
"""
from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest

from conftest import REPO
from prismkit.errors import PrismError
from prismkit.trace import _pywire, load_trace
from prismkit.trace._backend import native_available
from prismkit.trace.tail import TraceTail, scan_packets

SAMPLES = REPO / "sample_traces"


def _grow(tmp_path, data: bytes, pieces: int):
    """Write data to a file in `pieces` uneven appends (packets cut mid-way), reading a tail after each."""
    path = tmp_path / "growing.pftrace"
    path.write_bytes(b"")
    tail = TraceTail(path, keep_s=600)
    step = len(data) // pieces + 7
    for i in range(0, len(data), step):
        with open(path, "ab") as f:
            f.write(data[i:i + step])
        tail.update()
    return path, tail


@pytest.mark.skipif(not native_available(), reason="the native reader is not built")
def test_scan_packets_native_and_python_agree():
    from prismkit.trace import _wire

    data = (SAMPLES / "rca_stall.pftrace").read_bytes()
    rows, end = _wire.scan_packets(data)
    rows_py, end_py = _pywire.scan_packets(data)
    assert bytes(rows) == bytes(rows_py) and end == end_py == len(data)
    table = np.frombuffer(rows, dtype=np.int64).reshape(-1, 4)
    assert (table[1:, 0] == table[:-1, 1]).all() and table[0, 0] == 0      # contiguous packets
    assert (table[:, 3] & 1).sum() > 0.9 * len(table)                     # mostly track events
    for cut in (1, 1000, len(data) // 2 + 3):                             # a packet cut short is left for later
        r, e = _wire.scan_packets(data[:cut])
        r_py, e_py = _pywire.scan_packets(data[:cut])
        assert bytes(r) == bytes(r_py) and e == e_py <= cut
        assert e == (table[table[:, 1] <= cut, 1].max() if (table[:, 1] <= cut).any() else 0)
    for mod in (_wire, _pywire):
        with pytest.raises(ValueError, match="Trace.packet at byte 0"):
            mod.scan_packets(b"\x12\x00" + data)


def test_window_equals_the_whole_trace_from_its_start(tmp_path):
    """Fed in pieces, the tail's window holds exactly the batches, scheduler slices and requests that
    the whole file holds from the window's start on, and the recording's metadata."""
    src = SAMPLES / "demo_steady_bursty.pftrace"
    data = src.read_bytes()
    path, tail = _grow(tmp_path, data, pieces=9)
    assert tail.offset == len(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = load_trace(src)
    b = whole.batches
    since = int(whole.requests["ts_arrival"].quantile(0.5))   # (the load ended before the recording)
    window = tail.load(since_ns=since)
    wb = window.batches.sort_values("ts")
    want = b[b["ts"] >= since].sort_values("ts")
    assert len(wb) == len(want) > 50
    for col in ("ts", "dur", "n_tokens", "kv_tokens", "phase"):
        assert (wb[col].to_numpy() == want[col].to_numpy()).all(), col
    s_whole, s_win = whole.slices, window.slices
    assert len(s_win[s_win["ts"] >= since]) == len(s_whole[s_whole["ts"] >= since])
    assert window.metadata["target_pid"] == whole.metadata["target_pid"]
    assert window.metadata["packs"] == whole.metadata["packs"]
    r_whole, r_win = whole.requests, window.requests
    r_whole = r_whole[r_whole["ts_arrival"] >= since].sort_values("ts_arrival")
    r_win = r_win[r_win["ts_arrival"] >= since].sort_values("ts_arrival")
    assert len(r_win) == len(r_whole) > 5
    assert (r_win["e2e_ns"].to_numpy() == r_whole["e2e_ns"].to_numpy()).all()


def test_tail_keeps_only_its_window(tmp_path, monkeypatch):
    import prismkit.trace.tail as tail_module

    monkeypatch.setattr(tail_module, "READ_CHUNK", 65536)   # a first read in many chunks, trimmed as it goes
    data = (SAMPLES / "demo_steady_bursty.pftrace").read_bytes()
    path = tmp_path / "t.pftrace"
    path.write_bytes(data)
    tail = TraceTail(path, keep_s=5)
    tail.update()
    assert not tail.covers(tail.last_ts - 10_000_000_000) and tail.covers(tail.last_ts - 4_000_000_000)
    held = len(tail.window_bytes())
    assert held < len(data) / 2
    assert tail.update() == tail.packets                       # nothing new: nothing read again
    assert len(tail.window_bytes()) == held


def test_tail_errors(tmp_path):
    gz = tmp_path / "t.pftrace.gz"
    gz.write_bytes(gzip.compress((SAMPLES / "rca_stall.pftrace").read_bytes()[:5000]))
    with pytest.raises(PrismError, match="gzipped"):
        TraceTail(gz).update()
    with pytest.raises(PrismError, match="cannot read trace"):
        TraceTail(tmp_path / "missing.pftrace").update()
    bad = tmp_path / "bad.pftrace"
    bad.write_bytes(b"{}\n")
    with pytest.raises(PrismError, match="not a Perfetto trace stream"):
        TraceTail(bad).update()
    empty = tmp_path / "empty.pftrace"
    empty.write_bytes(b"")
    tail = TraceTail(empty)
    tail.update()
    with pytest.raises(PrismError, match="nothing read"):
        tail.load()


@pytest.mark.parametrize("name", ["rca_stall", "rca_cpu_contention"])
def test_root_cause_on_the_window_ranks_as_on_the_whole_trace(name, tmp_path):
    """prism watch --rca reads only the recent window: the evidence of each cause (per-batch features,
    anomaly vs baseline) is that of the whole file, and so is the top cause. The SHAP model is fit on
    the batches read, so its attributions (and scores) are the window's, as the analysis intends."""
    from prismkit.detect import WorkloadModel
    from prismkit.inject.labels import read_labels
    from prismkit.online.causes import rootcause_causes

    src = SAMPLES / f"{name}.pftrace"
    labels = read_labels(src.with_suffix(".labels.jsonl"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_trace(src).batches
    model = WorkloadModel().fit(b[b["ts"] < labels["start_ns"].min()])
    path, tail = _grow(tmp_path, src.read_bytes(), pieces=4)
    cut = 0
    for fault in labels.itertuples():
        # a 6 s baseline (watch's is 20 s): these recordings are short, and the window must cut them
        start, end = int(fault.start_ns), int(fault.end_ns)
        cut += min(end - 6e9, start) - 2e9 > b["ts"].min()
        on_window = rootcause_causes(path, start, end, window_s=6, model=model, tail=tail)
        on_whole = rootcause_causes(src, start, end, window_s=6, model=model)
        assert on_window[0]["cause"] == on_whole[0]["cause"], (on_window, on_whole)
        evidence = {c["cause"]: c["evidence"].split(" (SHAP")[0] for c in on_whole}
        for c in on_window:
            assert c["evidence"].split(" (SHAP")[0] == evidence[c["cause"]]
    assert cut >= 1
