"""Per-probe cost of the GPU packs (cuda, hip, nccl, python), on the stand-in libraries.

    .venv/bin/python -m benchmarks.bench_gpu_packs [--calls 20000] [--repeats 3]

The stand-in driver times N calls of each probed API in a tight loop (ns per
call), once with no recorder and once per pack set with the recorder
attached; the difference is what a probe adds to each call on this machine
(uprobe trap + BPF program; uretprobe where the pack measures the call's
duration). The Python pack's cost is per device-to-host copy (its stack walk
and attribute reads run there, once per engine step): measured with the
Python stand-in driver copying from inside GPUModelRunner.execute_model, with
the cuda pack alone and with cuda + python. Medians of --repeats runs.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def run_bench(cmd: list[str], packs_factory, tmp: Path) -> dict:
    from recorders.engine import Recorder

    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, STANDIN_SYNC_US="0"))
    rec = None
    try:
        json.loads(proc.stdout.readline())
        if packs_factory is not None:
            rec = Recorder(proc.pid, tmp / "bench.pftrace", packs=packs_factory(), verbose=False).start_background()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = json.loads(proc.stdout.readline())["bench"]
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if rec is not None:
            rec.join(timeout=60)
    return out


def median_runs(cmd, packs_factory, tmp, repeats: int) -> dict:
    runs = [run_bench(cmd, packs_factory, tmp) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def table(title: str, base: dict, rows: dict[str, dict]) -> None:
    print(f"\n{title}: ns per call (median), and what the probes add")
    names = list(rows)
    print(f"  {'API call':24s} {'no recorder':>12s}" + "".join(f" {n:>16s} {'+ns':>8s}" for n in names))
    for api in base:
        line = f"  {api:24s} {base[api]:12.1f}"
        for n in names:
            v = rows[n][api]
            line += f" {v:16.1f} {v - base[api]:8.0f}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from recorders.packs.cuda import CudaPack
    from recorders.packs.hip import HipPack
    from recorders.packs.nccl import NcclPack
    from recorders.packs.python import PythonPack
    from standins.build import build_standins

    out = build_standins()
    n = str(args.calls)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cuda_cmd = [str(out / "gpu_driver"), "--tp", "2", "--bench", n]
        base = median_runs(cuda_cmd, None, tmp, args.repeats)
        table("CUDA (libcudart/libcuda) + NCCL, C driver", base, {
            "cuda": median_runs(cuda_cmd, lambda: [CudaPack()], tmp, args.repeats),
            "cuda+nccl": median_runs(cuda_cmd, lambda: [CudaPack(), NcclPack()], tmp, args.repeats),
        })
        hip_cmd = [str(out / "gpu_driver_hip"), "--tp", "2", "--bench", n]
        base = median_runs(hip_cmd, None, tmp, args.repeats)
        table("HIP (libamdhip64) + RCCL, C driver", base, {
            "hip+nccl": median_runs(hip_cmd, lambda: [HipPack(), NcclPack()], tmp, args.repeats),
        })
        for minor in ("3.11", "3.12", "3.13"):
            found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python{minor}")))
            if not found:
                print(f"\n(Python {minor} not installed: skipped)")
                continue
            py_cmd = [found[-1], str(REPO / "tests/standins/py_driver.py"), str(out), "--bench", str(args.calls // 4)]
            attrs = [("n_tokens", "GPUModelRunner.execute_model:scheduler_output.total_num_scheduled_tokens"),
                     ("n_seqs", "GPUModelRunner.execute_model:len(scheduler_output.num_scheduled_tokens)")]
            base = median_runs(py_cmd, None, tmp, args.repeats)
            table(f"Python {minor} (ctypes driver; the python pack walks the stack at each D2H copy)", base, {
                "cuda": median_runs(py_cmd, lambda: [CudaPack()], tmp, args.repeats),
                "cuda+python": median_runs(py_cmd, lambda: [CudaPack(), PythonPack(attrs)], tmp, args.repeats),
            })


if __name__ == "__main__":
    main()
