"""Per-call cost of exact Python function boundaries, side by side.

    .venv/bin/python -m benchmarks.bench_py_monitor [--python 3.12] [--calls 200000] [--repeats 5]

A CPython 3.12+ target times N calls of a small function `f` (ns per call),
called two ways: from a Python loop (Python-to-Python call: 3.11+ runs it
inside the same _PyEval_EvalFrameDefault activation) and through map() (a call
from C: a new activation). Then `g`, never chosen, from a Python loop. Set-ups:

  baseline         nothing attached
  monitor          sys.monitoring on f only (slice() callback), no probe: the runtime change alone
  monitor+probe    the recorder's pymonitor pack: the above plus the uprobe on slice_new
  evalloop probes  plain uprobe + uretprobe on _PyEval_EvalFrameDefault, filtered on f's
                   code object in BPF (the alternative this pack avoids); it sees only
                   calls from C, Python-to-Python calls are invisible to it

Medians of --repeats runs; the added ns per call and the ratio to baseline.
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
sys.path.insert(0, str(REPO))

TARGET = r'''
import json, os, select, sys, time
def f(x):
    return x
def g(x):
    return x
print(json.dumps({"ready": os.getpid(), "f_code": id(f.__code__)}), flush=True)
while True:  # poll: a pending call runs only when the main thread runs Python code
    if not select.select([sys.stdin], [], [], 0.02)[0]:
        continue
    line = sys.stdin.readline()
    if not line:
        break
    n = int(line)
    res = {}
    t = time.perf_counter_ns()
    for i in range(n):
        f(i)
    res["f_python"] = (time.perf_counter_ns() - t) / n
    t = time.perf_counter_ns()
    for _ in map(f, range(n)):
        pass
    res["f_from_c"] = (time.perf_counter_ns() - t) / n
    t = time.perf_counter_ns()
    for i in range(n):
        g(i)
    res["g_python"] = (time.perf_counter_ns() - t) / n
    print(json.dumps(res), flush=True)
'''

EVAL_BPF = r'''
#include <uapi/linux/ptrace.h>
BPF_ARRAY(hits, u64, 2);
BPF_HASH(open_sp, u32, u64, 1024);
int on_enter(struct pt_regs *ctx) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_PID) return 0;
    u64 code = 0, frame = PT_REGS_PARM2(ctx);
    bpf_probe_read_user(&code, 8, (void *)(frame + CODE_OFF));
    if (code != F_CODE) return 0;
    u32 tid = bpf_get_current_pid_tgid(); u64 sp = PT_REGS_SP(ctx);
    open_sp.update(&tid, &sp);
    int k = 0; u64 *v = hits.lookup(&k); if (v) (*v)++;
    return 0;
}
int on_return(struct pt_regs *ctx) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_PID) return 0;
    u32 tid = bpf_get_current_pid_tgid();
    u64 *sp = open_sp.lookup(&tid);
    if (!sp || *sp + 8 != PT_REGS_SP(ctx)) return 0;
    open_sp.delete(&tid);
    int k = 1; u64 *v = hits.lookup(&k); if (v) (*v)++;
    return 0;
}
'''


def measure(proc, calls: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        proc.stdin.write(f"{calls}\n")
        proc.stdin.flush()
        runs.append(json.loads(proc.stdout.readline()))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default="3.12", help="pyenv minor version of the target (3.12+)")
    ap.add_argument("--calls", type=int, default=200000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{args.python}.*/bin/python{args.python}")))
    if not found:
        print(f"pyenv Python {args.python} not found", file=sys.stderr)
        return 2
    from bcc import BPF

    from recorders.engine import Recorder
    from recorders.packs.pymonitor import PyMonitorPack, inject
    from recorders.packs.python.interp import find_interpreter
    from recorders.target import TargetProcess

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "target.py"
        script.write_text(TARGET)
        proc = subprocess.Popen([found[-1], str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            ready = json.loads(proc.stdout.readline())
            pid = ready["ready"]
            results = {"baseline": measure(proc, args.calls, args.repeats)}
            inject.enable(pid, ["f"])
            results["monitor"] = measure(proc, args.calls, args.repeats)
            inject.disable(pid)
            rec = Recorder(pid, Path(tmp) / "t.pftrace", packs=[PyMonitorPack(["f"])], verbose=False)
            rec.start_background()
            results["monitor+probe"] = measure(proc, args.calls, args.repeats)
            summary = rec.join(timeout=60)
            seen = summary.events["pymonitor_calls"]
            it, _ = find_interpreter(TargetProcess.from_pid(pid))
            text = EVAL_BPF.replace("TARGET_PID", str(pid)).replace("CODE_OFF", str(it.offsets["iframe.code"])) \
                .replace("F_CODE", f"{ready['f_code']:#x}ull")
            b = BPF(text=text.encode())
            b.attach_uprobe(name=it.path, sym="_PyEval_EvalFrameDefault", fn_name="on_enter", pid=pid)
            b.attach_uretprobe(name=it.path, sym="_PyEval_EvalFrameDefault", fn_name="on_return", pid=pid)
            results["evalloop probes"] = measure(proc, args.calls, args.repeats)
            hits = [b["hits"][b["hits"].Key(i)].value for i in range(2)]
            b.cleanup()
        finally:
            proc.kill()
            proc.wait()
    base = results["baseline"]
    print(f"Python {args.python}, {args.calls} calls x {args.repeats} runs (medians), ns per call; "
          "in brackets: added ns per call, ratio to baseline")
    cols = [("f_python", "f() from Python"), ("f_from_c", "f() via map()"), ("g_python", "g() (not chosen)")]
    print(f"{'set-up':18}" + "".join(f"{label:>34}" for _, label in cols))
    for name, r in results.items():
        cells = []
        for key, _ in cols:
            add = r[key] - base[key]
            cells.append(f"{r[key]:8.1f} ({add:+7.1f}, {r[key] / base[key]:5.2f}x)" if name != "baseline"
                         else f"{r[key]:8.1f}")
        print(f"{name:18}" + "".join(f"{c:>34}" for c in cells))
    expect = 2 * args.calls * args.repeats
    print(f"pymonitor slices recorded: {seen} (expected {expect}: every f() call, both ways); "
          f"eval-loop probes saw {hits[0]} entries, {hits[1]} matched returns of f "
          f"(expected {args.calls * args.repeats}: only the calls from C)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
