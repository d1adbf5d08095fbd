"""GPU probe packs (cuda, hip, nccl, python) against stand-in GPU libraries, no GPU.

tests/standins/ builds libcudart.so.12, libcuda.so.1, libnccl.so.2,
librccl.so.1 and libamdhip64.so.6 with the real sonames and C signatures, a C
driver that calls them like vLLM v1 / SGLang engine steps, and a Python
driver that calls them through ctypes from vLLM/SGLang-named functions. Each
test starts a driver, attaches the real Recorder to the running process (no
restart), lets it run, and compares the recording with the JSON the driver
prints: exact per-step counts, bytes, collective arguments, Python frames and
attributes.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prismkit.trace import load_trace
from recorders.engine import Recorder

from conftest import REPO, require

sys.path.insert(0, str(REPO / "tests"))
from standins.build import build_standins  # noqa: E402

pytestmark = [pytest.mark.bpf]
SYNC_US = 300  # the stand-ins' emulated GPU tail in every synchronization
BATCH_COLUMNS = ["ts", "dur", "pid", "tid", "n_tokens", "n_seqs", "phase", "batch_id", "n_outputs"]


@pytest.fixture(scope="session")
def standins() -> Path:
    require(shutil.which("gcc") is not None and shutil.which("make") is not None, "gcc and make are needed")
    return build_standins()


def pyenv_python(minor: str) -> str | None:
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python{minor}")))
    return found[-1] if found else None


def record(cmd: list[str], packs, tmp_path: Path, name: str = "t"):
    """Start `cmd` (a driver), attach the recorder to it, let it run; return (trace, driver JSON, summary)."""
    env = dict(os.environ, STANDIN_SYNC_US=str(SYNC_US))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] == proc.pid
        out = tmp_path / f"{name}.pftrace"
        rec = Recorder(proc.pid, out, packs=packs, verbose=False).start_background()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=60) == 0
        summary = rec.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return load_trace(out), result, summary


def metadata_args(trace, name: str) -> dict:
    s = trace.slices
    rows = s[(s["name"] == name) & (s["category"] == "metadata")]
    assert len(rows) == 1, f"one {name} instant"
    return rows.iloc[0]["args"]


def assert_slices_in_order(b) -> None:
    """Steps of one thread never overlap (batches never nest)."""
    for _tid, g in b.groupby("tid"):
        ts = g["ts"].to_numpy()
        end = ts + g["dur"].to_numpy()
        assert (np.diff(ts) > 0).all()
        assert (end[:-1] <= ts[1:]).all()


def cuda_packs(prefill_min_launches: int = 64):
    from recorders.packs.cuda import CudaPack
    from recorders.packs.nccl import NcclPack

    return [CudaPack(prefill_min_launches), NcclPack()]


def check_c_driver_steps(b, result, platform: str, steps=None, synced: bool = True) -> None:
    exp = result["steps"] if steps is None else steps
    assert len(b) == len(exp), "one batch per engine step"
    assert set(BATCH_COLUMNS) <= set(b.columns)
    assert (b["name"] == "engine_step").all()
    assert (b["pid"] == result["pid"]).all()
    assert (b["platform"] == platform).all()
    for i, (row, e) in enumerate(zip(b.itertuples(), exp)):
        got = {
            "phase": row.phase, "n_launches": row.n_rt_launches, "n_drv_launches": row.n_drv_launches,
            "n_graph_launches": row.n_graph_launches, "bytes_h2d": row.bytes_h2d, "bytes_d2h": row.bytes_d2h,
            "bytes_d2d": row.bytes_d2d, "n_tokens": row.n_tokens, "n_allreduce": row.nccl_allreduce,
            "n_allgather": row.nccl_allgather, "nccl_bytes": row.nccl_bytes, "nccl_elems": row.nccl_elems,
        }
        assert got == e, f"step {i}"
        assert row.n_launches == e["n_launches"] + e["n_drv_launches"]
        assert row.n_seqs == row.n_outputs == e["n_tokens"]
        assert row.nccl_calls == e["n_allreduce"] + e["n_allgather"]
        assert row.nccl_reducescatter == row.nccl_broadcast == row.nccl_send == row.nccl_recv == 0
        # collectives' decoded arguments
        assert row.nccl_dtype == "bfloat16"
        if e["n_allreduce"]:
            assert row.nccl_op == "sum"
        else:
            assert pd.isna(row.nccl_op)  # an all-gather has no reduction op
        assert row.nccl_comm == result["comm"]
        assert row.nccl_stream == result["nccl_stream"]
        assert (row.rank, row.world_size) == (result["rank"], result["tp"])
        assert row.nccl_host_ns > 0
        # the copy, the stream, the graph bucket, the wait
        assert row.stream == result["stream"]
        if e["n_graph_launches"]:
            bucket = 1 << (e["n_tokens"] - 1).bit_length()
            assert row.graph == 0x6000 + bucket
        if synced:
            assert row.n_syncs == 1 and row.sync_ns == row.tail_ns >= SYNC_US * 1000
            assert row.synced
        assert 0 < row.launch_ns <= row.dur + row.tail_ns


def check_kernels(trace, result) -> None:
    k = metadata_args(trace, "gpu.kernels")
    expected = {("vllm::rms_norm_kernel()" if n == "_ZN4vllm15rms_norm_kernelEv" else n): c
                for n, c in {**result["kernels"], **result["drv_kernels"]}.items()}
    got = {n: c for n, c in k.items() if n not in ("kernels_distinct", "launches_total")}
    assert got == expected, "every kernel named (host stub symbol / cuModuleGetFunction) and counted"
    assert k["kernels_distinct"] == len(expected)
    assert k["launches_total"] == sum(expected.values())


def test_vllm_loop_cuda_nccl_exact(standins, bpf_ok, tmp_path):
    """vLLM v1 loop, TP=2: graph-replayed decode, eager prefill with all-reduces, Triton launches."""
    cmd = [str(standins / "gpu_driver"), "--mode", "vllm", "--steps", "24", "--layers", "8", "--tp", "2",
           "--rank", "1", "--triton-per-layer", "1", "--prefill-every", "4", "--max-batch", "8"]
    trace, result, summary = record(cmd, cuda_packs(), tmp_path)
    check_c_driver_steps(trace.batches, result, "cuda")
    b = trace.batches
    assert list(b["phase"]) == ["prefill" if k % 4 == 0 else "decode" for k in range(24)]
    assert (b["sync_kind"] == "event").all() and not b["clipped"].any()
    assert (b["event"] == 0xE0000).all()
    assert_slices_in_order(b)
    # the step ends when its sync returns: the slice covers the GPU tail
    assert ((b["ts"] + b["dur"]) == b["ts_done"]).all()
    assert (b["dur"] >= b["tail_ns"]).all()
    check_kernels(trace, result)
    assert trace.metadata["lost_events"] == 0
    assert summary.events["gpu_steps"] == 24 and summary.events["gpu_unsynced_steps"] == 0
    assert summary.events["nccl_comms"] == 1
    # probes land on the stand-ins' `push rbp` (emulated); ncclCommInitRank starts with
    # `test edx, edx` and is probed past it (it reads rdi, rsi, rdx: a test writes none)
    attached = "\n".join(summary.attached)
    for api in ("cudaLaunchKernel", "cudaMemcpyAsync", "cudaEventSynchronize", "cuLaunchKernel", "ncclAllReduce"):
        assert f"{api} (push rbp; emulated)" in attached
    assert "ncclCommInitRank +2 (test edx, edx;" in attached
    counters = trace.counters
    assert (counters["name"] == "batch.n_tokens").sum() == 24


def test_vllm_loop_stream_sync(standins, bpf_ok, tmp_path):
    """Copy then cudaStreamSynchronize (no event): the stream sync ends the step."""
    cmd = [str(standins / "gpu_driver"), "--mode", "vllm", "--steps", "10", "--layers", "8", "--sync", "stream",
           "--triton-per-layer", "1"]
    trace, result, _ = record(cmd, cuda_packs(), tmp_path)
    b = trace.batches
    assert len(b) == 10
    for row, e in zip(b.itertuples(), result["steps"]):
        assert (row.phase, row.n_rt_launches, row.n_drv_launches, row.n_graph_launches, row.bytes_h2d,
                row.bytes_d2h, row.n_tokens) == (e["phase"], e["n_launches"], e["n_drv_launches"],
                                                 e["n_graph_launches"], e["bytes_h2d"], e["bytes_d2h"], e["n_tokens"])
        assert row.nccl_calls == 0 and row.nccl_host_ns == 0  # TP=1: no collectives
    assert (b["sync_kind"] == "stream").all() and (b["event"] == 0).all()
    assert (b["tail_ns"] >= SYNC_US * 1000).all()
    assert_slices_in_order(b)


def test_sglang_overlap_hip_rccl_exact(standins, bpf_ok, tmp_path):
    """SGLang overlap loop on ROCm (HIP + RCCL), TP=4 rank 3: step k's event is synchronized
    after step k+1 was launched; the step's slice ends where the next began."""
    from recorders.packs.hip import HipPack
    from recorders.packs.nccl import NcclPack

    cmd = [str(standins / "gpu_driver_hip"), "--mode", "sglang", "--steps", "16", "--layers", "8", "--tp", "4",
           "--rank", "3", "--triton-per-layer", "2", "--prefill-every", "5", "--skip-final-sync"]
    trace, result, summary = record(cmd, [HipPack(), NcclPack()], tmp_path)
    b = trace.batches
    # The driver exits without waiting for its last step: that step is written at the end, unsynced.
    assert list(b["synced"]) == [True] * 15 + [False]
    assert b["ts_done"].iloc[-1] == 0 and b["tail_ns"].iloc[-1] == 0
    assert metadata_args(trace, "gpu.summary")["unsynced_steps"] == 1
    check_c_driver_steps(trace.batches.iloc[:15], result, "hip", steps=result["steps"][:15])
    check_c_driver_steps(trace.batches.iloc[15:], result, "hip", steps=result["steps"][15:], synced=False)
    assert list(b["event"]) == [0xE1000 + 16 * k for k in range(16)]
    # every step but the last was still waiting for its sync when the next one started
    assert list(b["clipped"]) == [True] * 15 + [False]
    clipped = b[b["clipped"]]
    assert ((clipped["ts"] + clipped["dur"]).to_numpy() == b["ts"].to_numpy()[1:]).all()
    assert (clipped["ts_done"] > clipped["ts"] + clipped["dur"]).all()
    assert_slices_in_order(b)
    check_kernels(trace, result)
    assert "hip: hipLaunchKernel: libamdhip64.so.6:hipLaunchKernel (push rbp; emulated)" in summary.attached
    assert any(a.startswith("nccl: ncclAllReduce: librccl.so.1:") for a in summary.attached)
    assert trace.metadata["lost_events"] == 0


# Four attributes (the most one recording reads), for both engines' functions: the
# vLLM ones are on the stack in vLLM-shaped steps, the SGLang ones in SGLang-shaped steps.
PY_ATTRS = [
    ("n_tokens", "GPUModelRunner.execute_model:scheduler_output.total_num_scheduled_tokens"),  # int
    ("n_seqs", "GPUModelRunner.execute_model:len(scheduler_output.num_scheduled_tokens)"),      # len(dict)
    ("n_seqs", "Scheduler.run_batch:len(batch.reqs)"),                                           # len(list)
    ("top_k", "Scheduler.run_batch:batch.sampling_info.top_k"),  # through a 45-entry combined dict
]
PY_COLUMNS = {"vllm": ("n_tokens", "n_seqs"), "sglang": ("n_seqs", "top_k")}


@pytest.mark.parametrize("minor", ["3.11", "3.12", "3.13"])
def test_python_frames_and_attributes(standins, bpf_ok, tmp_path, minor):
    """The Python stack at each step's closing copy and the configured attributes, exact per step:
    a vLLM-shaped loop, then an SGLang-shaped overlap loop, in one interpreter."""
    from recorders.packs.cuda import CudaPack
    from recorders.packs.python import PythonPack

    python = pyenv_python(minor)
    require(python is not None, f"pyenv Python {minor} is not installed")
    cmd = [python, str(REPO / "tests" / "standins" / "py_driver.py"), str(standins), "--mode", "both",
           "--steps", "12", "--layers", "20"]
    trace, result, summary = record(cmd, [CudaPack(prefill_min_launches=32), PythonPack(PY_ATTRS)], tmp_path)
    assert result["python"] == minor
    b = trace.batches
    exp = result["steps"]
    assert len(b) == len(exp) == 24
    assert list(b["py_stack"]) == [";".join(e["stack"]) for e in exp]
    assert list(b["py_depth"]) == [len(e["stack"]) for e in exp]
    for i, (row, e) in enumerate(zip(b.to_dict("records"), exp)):
        assert row["phase"] == e["phase"], f"step {i}"
        assert row["n_sampled"] == e["n_sampled"], f"step {i}"
        for column in PY_COLUMNS[e["engine"]]:
            assert row[column] == e[column], f"step {i} ({e['engine']}) {column}"
        if e["engine"] == "sglang":
            assert row["n_tokens"] == e["n_sampled"]  # no attribute for it there: the copy's batch size
            assert row["clipped"] == (i < len(exp) - 1)
        else:
            assert pd.isna(row["top_k"]) and not row["clipped"]
    assert (b["n_tokens"] != b["n_sampled"]).any(), "the attribute replaced the copy's batch size"
    attached = "\n".join(summary.attached)
    assert f"python: Python {minor} frames" in attached
    if minor == "3.13":
        assert "offsets from _Py_DebugOffsets" in attached and "differed" not in attached
    assert summary.events["python_steps_with_stack"] == 24
    assert summary.events["python_attrs_read"] == 24 * 2
    assert trace.metadata["lost_events"] == 0


def test_python_offset_tables_match_headers(tmp_path):
    """offsets.py equals what each interpreter's own headers say (offsets_check.c)."""
    from recorders.packs.python.offsets import TABLES

    require(shutil.which("gcc") is not None, "gcc is needed")
    checked = []
    for minor, table in TABLES.items():
        python = pyenv_python(minor)
        if python is None:
            continue
        prefix = Path(python).parent.parent
        inc = prefix / "include" / f"python{minor}"
        exe = tmp_path / f"chk{minor}"
        subprocess.run(["gcc", "-o", str(exe), str(REPO / "recorders/packs/python/offsets_check.c"),
                        f"-I{inc}", f"-I{inc / 'internal'}"], check=True, capture_output=True)
        got = json.loads(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout)
        assert got.pop("version") == minor
        assert got == table, f"Python {minor}"
        checked.append(minor)
    require({"3.11", "3.12", "3.13"} <= set(checked), f"pyenv 3.11-3.13 with headers (found {checked})")


def test_attribute_spec_parsing():
    from recorders.packs.python import AttrSpec

    s = AttrSpec.parse("n_seqs", "Scheduler.run_batch:len(batch.reqs)")
    assert (s.function, s.local, s.path, s.length) == ("Scheduler.run_batch", "batch", ("reqs",), True)
    s = AttrSpec.parse("k", " A.f : x.a.b ")
    assert (s.function, s.local, s.path, s.length) == ("A.f", "x", ("a", "b"), False)
    for bad in ("no_colon", "A.f:", "A.f:len(x", "A.f:x.a.b.c.d.e"):
        with pytest.raises(ValueError):
            AttrSpec.parse("c", bad)


def test_default_packs_apply_to_gpu_targets(standins):
    """prism record's default packs include the GPU packs; each applies only where its library is mapped,
    and they stand aside for llama.cpp (its own pack writes the batches)."""
    from recorders.packs import default_packs
    from recorders.target import TargetProcess

    names = [p.name for p in default_packs()]
    assert {"cuda", "hip", "nccl", "python"} <= set(names)
    proc = subprocess.Popen([str(standins / "gpu_driver"), "--steps", "1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        json.loads(proc.stdout.readline())
        target = TargetProcess.from_pid(proc.pid)
        applies = {p.name for p in default_packs() if p.applies_to(target)}
        assert {"cuda", "nccl"} <= applies and not {"hip", "python", "llama_cpp"} & applies
        py = pyenv_python("3.12")
        if py is not None:  # a Python engine: the python pack rides along
            pyproc = subprocess.Popen([py, str(REPO / "tests/standins/py_driver.py"), str(standins)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                json.loads(pyproc.stdout.readline())
                pytarget = TargetProcess.from_pid(pyproc.pid)
                assert {p.name for p in default_packs() if p.applies_to(pytarget)} >= {"cuda", "python"}
            finally:
                pyproc.kill()
                pyproc.wait()
        target.libraries["libllama"] = "/x/libllama.so"
        assert not {p.name for p in default_packs() if p.applies_to(target)} & {"cuda", "nccl", "hip", "python"}
    finally:
        proc.kill()
        proc.wait()
