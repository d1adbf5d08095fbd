"""Trace reader speed and memory: native decoder vs the perfetto package's protobuf classes.

    .venv/bin/python -m benchmarks.bench_reader [--events 1000000] [--repeat 3] [--python-events 100000]

1. Writes a recorder-like trace (prismkit.trace.synth: interned names, batch
   slices with int annotations, nested stages, sched slices, counters,
   requests with flows) of about --events track events.
2. In fresh subprocesses, one after the other:
   - native: ``load_trace(path)`` (every generic table: slices, counters,
     flows, tracks, metadata), then the domain tables (batches, requests,
     sched); best of --repeat wall and CPU times; peak RSS growth of the
     process (VmHWM minus RSS before loading) over the file size.
   - protobuf classes: the same file parsed packet by packet with
     ``TracePacket.FromString``, interning resolved, every track event's
     ts/type/track/name/category/args collected and put in a DataFrame (no
     BEGIN/END pairing, so this baseline does less work than load_trace).
   - pure Python (the fallback decoder) on a --python-events trace.
3. Prints events/s side by side, the speed-up and memory ratios. No asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

NATIVE_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
from prismkit.trace import load_trace
import numpy as np, pandas as pd

def status(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

def peak():
    # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, inherited across exec)
    return status('VmHWM')

path, repeat, pure = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'
try:
    with open('/proc/self/clear_refs', 'w') as f:   # reset the peak to the current RSS
        f.write('5')
except OSError:
    pass
r0 = status('VmRSS')
w0, c0 = time.perf_counter(), time.process_time()
t = load_trace(path, pure_python=pure)
first_wall, first_cpu = time.perf_counter() - w0, time.process_time() - c0
peak_load = peak() - r0
w1 = time.perf_counter()
nb, nr, ns = len(t.batches), len(t.requests), len(t.sched)
domain_wall = time.perf_counter() - w1
peak_all = peak() - r0
counts = dict(slices=len(t.slices), counters=len(t.counters), flows=len(t.flows), batches=nb, requests=nr, sched=ns,
              reader=t.metadata['reader'])
del t
walls, cpus = [first_wall], [first_cpu]
for _ in range(repeat - 1):
    w0, c0 = time.perf_counter(), time.process_time()
    t = load_trace(path, pure_python=pure)
    walls.append(time.perf_counter() - w0); cpus.append(time.process_time() - c0)
    del t
print(json.dumps(dict(wall=min(walls), cpu=min(cpus), walls=walls, peak_load=peak_load, peak_all=peak_all,
                      domain_wall=domain_wall, **counts)))
"""

PROTOBUF_CHILD = r"""
import json, sys, time
import pandas as pd
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TracePacket

def read(path):
    data = open(path, 'rb').read()
    pos, n = 0, len(data)
    names, cats, anns = {}, {}, {}
    ts, typ, trk, nm, ct, args, cval = [], [], [], [], [], [], []
    parse = TracePacket.FromString
    while pos < n:
        pos += 1                       # tag 0x0a (Trace.packet)
        size = shift = 0
        while True:
            b = data[pos]; pos += 1
            size |= (b & 0x7F) << shift; shift += 7
            if b < 0x80:
                break
        pkt = parse(data[pos:pos + size]); pos += size
        if pkt.HasField('interned_data'):
            idd = pkt.interned_data
            for e in idd.event_names: names[e.iid] = e.name
            for e in idd.event_categories: cats[e.iid] = e.name
            for e in idd.debug_annotation_names: anns[e.iid] = e.name
        if pkt.HasField('track_event'):
            te = pkt.track_event
            ts.append(pkt.timestamp); typ.append(te.type); trk.append(te.track_uuid)
            nm.append(names.get(te.name_iid)); ct.append(cats.get(te.category_iids[0]) if te.category_iids else None)
            cval.append(te.counter_value if te.HasField('counter_value') else None)
            if te.debug_annotations:
                d = {}
                for a in te.debug_annotations:
                    w = a.WhichOneof('value')
                    d[anns.get(a.name_iid)] = getattr(a, w) if w else None
                args.append(d)
            else:
                args.append(None)
    return pd.DataFrame({'ts': ts, 'type': typ, 'track': trk, 'name': nm, 'category': ct, 'args': args,
                         'counter': cval})

path, repeat = sys.argv[1], int(sys.argv[2])
walls, cpus = [], []
for _ in range(repeat):
    w0, c0 = time.perf_counter(), time.process_time()
    df = read(path)
    walls.append(time.perf_counter() - w0); cpus.append(time.process_time() - c0)
    rows = len(df)
    del df
print(json.dumps(dict(wall=min(walls), cpu=min(cpus), walls=walls, rows=rows)))
"""


def run_child(code: str, *args: str) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="track events in the trace (default 1M)")
    ap.add_argument("--repeat", type=int, default=3, help="loads per reader; the best time is reported")
    ap.add_argument("--python-events", type=int, default=100_000,
                    help="events for the pure-Python fallback run (0: skip)")
    ap.add_argument("--keep", type=Path, help="write the trace here instead of a temporary directory")
    args = ap.parse_args(argv)

    from prismkit.trace import native_available
    from prismkit.trace.synth import write_recorder_like_trace

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "bench.pftrace"
        t0 = time.perf_counter()
        summ = write_recorder_like_trace(path, args.events)
        size = summ["bytes"]
        print(f"trace: {summ['events']:,} track events ({summ['batches']:,} batches, {summ['sched']:,} sched "
              f"slices, {summ['counters']:,} counter samples, {summ['requests']:,} requests), "
              f"{size / 1e6:.1f} MB, written in {time.perf_counter() - t0:.1f} s")
        if not native_available():
            print("WARNING: the native decoder is not built; 'native' below is the pure-Python fallback")
        nat = run_child(NATIVE_CHILD.format(repo=str(REPO)), str(path), str(args.repeat), "0")
        pb = run_child(PROTOBUF_CHILD, str(path), str(args.repeat))
        py = None
        if args.python_events:
            small = Path(tmp) / "small.pftrace"
            ps = write_recorder_like_trace(small, args.python_events)
            py = run_child(NATIVE_CHILD.format(repo=str(REPO)), str(small), "1", "1")
            py["events"] = ps["events"]
    n = summ["events"]
    print()
    print(f"{'reader':<52} {'wall s':>8} {'cpu s':>8} {'events/s (wall)':>16} {'events/s (cpu)':>15}")
    rows = [(f"prismkit load_trace ({nat['reader']})", nat, n),
            ("perfetto protobuf classes, packet by packet", pb, n)]
    if py:
        rows.append((f"pure-Python fallback ({py['events']:,} events)", py, py["events"]))
    for label, r, ev in rows:
        print(f"{label:<52} {r['wall']:>8.3f} {r['cpu']:>8.3f} {ev / r['wall']:>16,.0f} {ev / r['cpu']:>15,.0f}")
    print()
    print(f"speed-up native vs protobuf classes: {pb['wall'] / nat['wall']:.1f}x (wall), "
          f"{pb['cpu'] / nat['cpu']:.1f}x (cpu)")
    print(f"native tables: {nat['slices']:,} slices, {nat['counters']:,} counter samples, {nat['flows']:,} flows; "
          f"domain tables ({nat['batches']:,} batches, {nat['requests']:,} requests, {nat['sched']:,} sched) "
          f"built in {nat['domain_wall']:.3f} s")
    print(f"peak memory (RSS growth) / file size: load_trace {nat['peak_load'] / size:.2f}x "
          f"({nat['peak_load'] / 1e6:.0f} MB for {size / 1e6:.1f} MB); with domain tables "
          f"{nat['peak_all'] / size:.2f}x")
    print(f"all wall times: native {[round(x, 3) for x in nat['walls']]}, "
          f"protobuf {[round(x, 3) for x in pb['walls']]}")


if __name__ == "__main__":
    main()
