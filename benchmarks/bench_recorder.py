"""Recorder overhead and event-rate limit, measured side by side in one run.

    .venv/bin/python -m benchmarks.bench_recorder [--model demo] [--pairs 4] [--seconds 20] [--packs a,b]

1. Overhead: server throughput (generated tokens/s at a fixed closed-loop
   concurrency) without (A) and with (B) the recorder attached, in the order
   A/B, B/A, A/B, ...; prints each run and the median B/A ratio with a bootstrap 95%
   interval (on a shared VM a single run's throughput moves by several percent).
   The recorder runs as `prism record` in a process of its own, as it would in
   production (in this process it would compete for the GIL with the load
   generator); its CPU use is printed too. Then one more recording with
   kernel.bpf_stats_enabled=1 says where the cost goes: the BPF programs' own time
   per pack and probe hits per second (uprobe traps, ~1-1.5 us each, come on top).
   --toggle-s S instead keeps one recorder loaded for the whole run and detaches and
   attaches its probes every S seconds (prism record's SIGUSR1/SIGUSR2): each attached
   segment is compared with the detached ones beside it, so the host's slow drifts cancel.
   --stop-s S keeps the probes attached and stops and continues the recorder process
   every S seconds: the user-space process's own share of the cost.
2. Event rate: the tiny model under heavy load (many short batches) with the
   recorder at its default buffer size and with smaller ones; prints events/s
   and lost events, and the highest rate recorded without loss.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prismkit.load import closed_loop, parse_length_dist, run_load
from prismkit.target.server import LlamaServer
from recorders.engine import Recorder

REPO = Path(__file__).resolve().parent.parent


def throughput(url: str, seconds: float, concurrency: int, seed: int) -> float:
    specs = closed_loop(100_000, parse_length_dist("fixed:64"), parse_length_dist("fixed:32"), seed=seed)
    res = run_load(url, specs, concurrency=concurrency, duration_s=seconds, progress=False)
    df = res.frame()
    ok = df[df["status"] == "ok"]
    return ok["output_tokens"].sum() / res.wall_s


def _packs(names: str | None):
    """The default packs, or only those named (e.g. 'llama_cpp,http,syscalls')."""
    from recorders.packs import all_packs, default_packs

    if not names:
        return default_packs()
    wanted = set(names.split(","))
    return [p for p in all_packs() if p.name in wanted]


def _start_burner(burn_ms: float, period_ms: float = 200.0) -> subprocess.Popen:
    """The control: the injector's spin worker, burning burn_ms of every period_ms (no probes)."""
    cfg = {"parent": os.getpid(), "duty": burn_ms / period_ms, "period_ms": period_ms}
    proc = subprocess.Popen([sys.executable, "-m", "prismkit.inject.worker", "spin", json.dumps(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # "ready"
    return proc


def overhead(model: str, pairs: int, seconds: float, concurrency: int, port: int, packs: str | None = None,
             watch: bool = False, extra: tuple[str, ...] = (), control_burn_ms: float | None = None) -> None:
    srv = LlamaServer(model=model, port=port, name="bench-overhead", n_parallel=concurrency)
    info = srv.start()
    try:
        throughput(info.url, 5, concurrency, seed=0)  # warm up
        ratios, cpus = [], []
        what = "prism watch (recorder + online detector + JSONL alerts)" if watch else "prism record"
        if control_burn_ms:
            what = f"the control (a process burning {control_burn_ms:g} ms of CPU every 200 ms, no probes)"
        b_name, b_proc = ("control", "burner") if control_burn_ms else ("recording", "recorder")
        print(f"overhead of {what}: model {model}, closed loop c={concurrency}, {seconds:.0f}s per run, "
              f"{pairs} A/B pairs" + ("" if control_burn_ms else f", packs: {packs or 'all default'}")
              + (f", options: {' '.join(extra)}" if extra else ""))
        with tempfile.TemporaryDirectory() as tmp:
            watch_model = _baseline_model(info, Path(tmp), concurrency, packs) if watch else None
            for i in range(pairs):
                # A B, then B A: a drift of the host's speed over the run cancels out pairwise
                if i % 2 == 0:
                    a = throughput(info.url, seconds, concurrency, seed=2 * i)
                out = Path(tmp) / f"b{i}.pftrace"
                if control_burn_ms:
                    rec = _start_burner(control_burn_ms)
                else:
                    rec = _start_record(info.pid, out, packs, watch_model, extra)
                cpu0 = _cpu_s(rec.pid)
                b = throughput(info.url, seconds, concurrency, seed=2 * i)
                cpu = (_cpu_s(rec.pid) - cpu0) / seconds
                rec.send_signal(signal.SIGKILL if control_burn_ms else signal.SIGINT)
                rec.wait(60)
                if i % 2 == 1:
                    a = throughput(info.url, seconds, concurrency, seed=2 * i)
                from prismkit.trace import load_trace

                meta = {} if control_burn_ms else load_trace(out).metadata
                events = sum(v for k, v in meta.items() if k.startswith("events.") and isinstance(v, int))
                ratios.append(b / a)
                cpus.append(cpu)
                print(f"  pair {i + 1}: A {a:8.1f} tok/s   B ({b_name}) {b:8.1f} tok/s   B/A {b / a:.4f}   "
                      f"{b_proc} {cpu:.3f} CPU"
                      + ("" if control_burn_ms else f"   events {events} lost {meta.get('lost_events')}")
                      + (_watch_figures(out) if watch else ""))
            med = statistics.median(ratios)
            lo, hi = _median_interval(ratios)
            print(f"median B/A throughput ratio: {med:.4f} (95% interval {lo:.3f}-{hi:.3f})  -> overhead "
                  f"{100 * (1 - med):+.2f}% (goal: under 1%); {b_proc} {statistics.median(cpus):.3f} CPU (median)")
            if not watch and not control_burn_ms:
                _where_it_goes(info, Path(tmp), seconds, concurrency, packs, extra)
    finally:
        srv.stop()


def overhead_toggled(model: str, seconds: float, segment_s: float, concurrency: int, port: int,
                     packs: str | None = None, watch: bool = False, extra: tuple[str, ...] = (),
                     settle_s: float = 0.25) -> None:
    """The recorder kept loaded while its probes are detached and attached again every
    segment_s (SIGUSR2 / SIGUSR1): each recorded segment is compared with the detached
    segments on either side of it, a few seconds apart, so that the host's own drift (tens
    of percent over tens of seconds here) cancels. Throughput per segment is the number of
    tokens the load generator received in it (the first settle_s after each switch left out)."""
    import numpy as np

    srv = LlamaServer(model=model, port=port, name="bench-overhead", n_parallel=concurrency)
    info = srv.start()
    try:
        throughput(info.url, 5, concurrency, seed=0)  # warm up
        what = "prism watch" if watch else "prism record"
        print(f"overhead of {what}, probes attached and detached every {segment_s:g}s (the recorder stays "
              f"loaded): model {model}, closed loop c={concurrency}, {seconds:.0f}s, packs: {packs or 'all default'}"
              + (f", options: {' '.join(extra)}" if extra else ""))
        with tempfile.TemporaryDirectory() as tmp:
            watch_model = _baseline_model(info, Path(tmp), concurrency, packs) if watch else None
            out = Path(tmp) / "toggled.pftrace"
            rec = _start_record(info.pid, out, packs, watch_model, extra)
            cpu_marks: list[tuple[int, float]] = []  # (monotonic ns, recorder CPU s) at each switch

            def toggle(k: int) -> None:   # k even: attached until now
                cpu_marks.append((time.monotonic_ns(), _cpu_s(rec.pid)))
                rec.send_signal(signal.SIGUSR1 if k % 2 == 0 else signal.SIGUSR2)

            chunks = _load_while_switching(info.url, concurrency, seconds, segment_s, toggle)
            cpu_marks.append((time.monotonic_ns(), _cpu_s(rec.pid)))
            rec.send_signal(signal.SIGINT)
            rec.wait(60)
            segments = _toggled_segments(out, settle_s)
            watched = _watch_figures(out) if watch else ""
    finally:
        srv.stop()
    cpu_on, cpu_off = _cpu_by_state(cpu_marks)
    r = _neighbour_ratios(segments, chunks, ("attached", "detached"))
    print(f"  recorder CPU: {cpu_on:.3f} attached, {cpu_off:.4f} detached")
    if watch:
        print(watched)
    mean_lo, mean_hi, med_lo, med_hi = _intervals(r)
    print(f"attached / neighbouring detached throughput, {len(r)} segments: mean {r.mean():.4f} "
          f"(95% interval {mean_lo:.4f}-{mean_hi:.4f}; one segment's ratio varies by {r.std():.1%}), "
          f"median {np.median(r):.4f} ({med_lo:.4f}-{med_hi:.4f})"
          f"  -> overhead {100 * (1 - r.mean()):+.2f}% (goal: under 1%)")


def _load_while_switching(url: str, concurrency: int, seconds: float, segment_s: float,
                          switch: Callable[[int], None]):
    """The benchmark's closed-loop load for `seconds`, calling switch(0), switch(1), ... every
    segment_s on a thread of its own; returns the client's chunk timestamps, sorted."""
    import threading

    import numpy as np

    done = threading.Event()

    def every_segment() -> None:
        k = 0
        while not done.wait(segment_s):
            switch(k)
            k += 1

    specs = closed_loop(100_000, parse_length_dist("fixed:64"), parse_length_dist("fixed:32"), seed=1)
    switcher = threading.Thread(target=every_segment, daemon=True)
    switcher.start()
    try:
        res = run_load(url, specs, concurrency=concurrency, duration_s=seconds, progress=False)
    finally:
        done.set()
        switcher.join()
    return np.sort(np.fromiter((t for r in res.results for t in r.chunk_ts_ns), dtype=np.int64))


def _neighbour_ratios(segments: list[tuple[int, int, bool]], chunks, states: tuple[str, str]):
    """Each 'on' segment's throughput (tokens received per second, from the client's sorted
    chunk timestamps) over the mean of the 'off' segments on either side; prints the counts."""
    import numpy as np

    rates = []
    for begin, end, on in segments:
        n = np.searchsorted(chunks, end) - np.searchsorted(chunks, begin)
        rates.append((n / ((end - begin) / 1e9), on))
    ratios = [rates[i][0] / ((rates[i - 1][0] + rates[i + 1][0]) / 2)
              for i in range(1, len(rates) - 1) if rates[i][1] and not rates[i - 1][1] and not rates[i + 1][1]]
    if len(ratios) < 4:
        raise SystemExit(f"only {len(ratios)} {states[0]} segments between two {states[1]} ones: run longer")
    on = np.array([x for x, a in rates if a])
    off = np.array([x for x, a in rates if not a])
    print(f"  {len(on)} segments {states[0]}, {len(off)} {states[1]}; tokens/s {states[0]} {on.mean():.1f}, "
          f"{states[1]} {off.mean():.1f} (their spread over the run: {off.std() / off.mean():.1%} of the mean)")
    return np.asarray(ratios)


def _intervals(r, n: int = 5000, seed: int = 0) -> tuple[float, float, float, float]:
    """Bootstrap 95% intervals of the mean and of the median of r."""
    import numpy as np

    boot = np.random.default_rng(seed).choice(r, size=(n, len(r)))
    mean_lo, mean_hi = np.quantile(boot.mean(axis=1), [0.025, 0.975])
    med_lo, med_hi = np.quantile(np.median(boot, axis=1), [0.025, 0.975])
    return float(mean_lo), float(mean_hi), float(med_lo), float(med_hi)


def overhead_stopped(model: str, seconds: float, segment_s: float, concurrency: int, port: int,
                     packs: str | None = None, extra: tuple[str, ...] = ()) -> None:
    """The recorder process's own share of the cost: its probes stay attached for the whole run
    while the `prism record` process is stopped (SIGSTOP) and continued (SIGCONT) every
    segment_s. A running segment also drains the backlog of the stopped one before it, so
    1 - (running / stopped neighbours) is about twice what the user-space process costs;
    what the probes cost in the kernel is in both and cancels. No detach in each cycle
    makes this ~2.5x less noisy than --toggle-s."""
    from prismkit.trace import load_trace

    srv = LlamaServer(model=model, port=port, name="bench-overhead", n_parallel=concurrency)
    info = srv.start()
    try:
        throughput(info.url, 5, concurrency, seed=0)  # warm up
        print(f"the recorder process's share, prism record stopped and continued every {segment_s:g}s (probes "
              f"attached throughout): model {model}, closed loop c={concurrency}, {seconds:.0f}s, packs: "
              f"{packs or 'all default'}" + (f", options: {' '.join(extra)}" if extra else ""))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "stopped.pftrace"
            rec = _start_record(info.pid, out, packs, None, extra)
            switches: list[tuple[int, bool]] = []  # (monotonic ns, running from then on)

            def stop_or_continue(k: int) -> None:   # k even: running until now
                rec.send_signal(signal.SIGSTOP if k % 2 == 0 else signal.SIGCONT)
                switches.append((time.monotonic_ns(), k % 2 == 1))

            try:
                chunks = _load_while_switching(info.url, concurrency, seconds, segment_s, stop_or_continue)
            finally:
                rec.send_signal(signal.SIGCONT)
                rec.send_signal(signal.SIGINT)
                rec.wait(60)
            lost = load_trace(out).metadata.get("lost_events")
    finally:
        srv.stop()
    segments = [(t0, t1, running) for (t0, running), (t1, _r) in zip(switches, switches[1:])]
    r = _neighbour_ratios(segments, chunks, ("running", "stopped"))
    mean_lo, mean_hi, _, _ = _intervals(r)
    print(f"  lost events: {lost} (a stopped recorder's buffers must hold {segment_s:g}s)")
    print(f"running / neighbouring stopped throughput, {len(r)} segments: mean {r.mean():.4f} "
          f"(95% interval {mean_lo:.4f}-{mean_hi:.4f}; one segment's ratio varies by {r.std():.1%})"
          f"  -> the recorder process costs about {50 * (1 - r.mean()):+.2f}% "
          f"({50 * (1 - mean_hi):+.2f} to {50 * (1 - mean_lo):+.2f}%)")


def _toggled_segments(trace: Path, settle_s: float) -> list[tuple[int, int, bool]]:
    """(begin, end, attached) of each segment of a toggled recording, from its prismkit.paused and
    prismkit.resumed instants; each begins settle_s after its switch was complete."""
    import numpy as np

    from prismkit.trace import load_trace

    tr = load_trace(trace)
    s = tr.slices
    marks = s[s["name"].isin(["prismkit.paused", "prismkit.resumed"])].sort_values("ts")
    took = tr.arg("detach_ms", marks, 0.0) + tr.arg("attach_ms", marks, 0.0)
    edges = [(int(ts), int(ts + ms * 1e6), name == "prismkit.resumed")
             for ts, ms, name in zip(marks["ts"], np.nan_to_num(took), marks["name"])]
    settle = int(settle_s * 1e9)
    return [(switched + settle, nxt_ts, attached)
            for (_ts, switched, attached), (nxt_ts, _sw, _a) in zip(edges, edges[1:]) if nxt_ts > switched + settle]


def _cpu_by_state(marks: list[tuple[int, float]]) -> tuple[float, float]:
    """The recorder's CPU (s/s) over attached and detached segments (the first one is attached)."""
    use = {True: [0.0, 0.0], False: [0.0, 0.0]}
    for i, ((t0, c0), (t1, c1)) in enumerate(zip(marks, marks[1:])):
        row = use[i % 2 == 1]  # segment i + 1 after the first switch: detached when i is even
        row[0] += c1 - c0
        row[1] += (t1 - t0) / 1e9
    return (use[True][0] / max(use[True][1], 1e-9), use[False][0] / max(use[False][1], 1e-9))


def _median_interval(ratios: list[float], n: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the median."""
    import numpy as np

    return _intervals(np.asarray(ratios), n, seed)[2:]


def _where_it_goes(info, tmp: Path, seconds: float, concurrency: int, packs: str | None,
                   extra: tuple[str, ...] = ()) -> None:
    """One recording with kernel.bpf_stats_enabled=1: the probes' own time per pack."""
    from prismkit.trace import load_trace

    old = _set_bpf_stats(True)
    try:
        out = tmp / "stats.pftrace"
        rec = _start_record(info.pid, out, packs, None, extra)
        cpu0 = _cpu_s(rec.pid)
        throughput(info.url, seconds, concurrency, seed=7)
        cpu = (_cpu_s(rec.pid) - cpu0) / seconds
        rec.send_signal(signal.SIGINT)
        rec.wait(60)
    finally:
        _set_bpf_stats(old)
    meta = load_trace(out).metadata
    dur = meta.get("duration_ns", seconds * 1e9) / 1e9
    by_pack: dict[str, list[float]] = {}
    for key, runs in meta.items():
        if not (key.startswith("bpf.") and key.endswith(".run_cnt")):
            continue
        prog = key[4:-8]
        pack = {"sys": "syscalls", "sched": "sched", "http": "http", "llama": "llama_cpp"}.get(prog.split("_")[0],
                                                                                                prog.split("_")[0])
        row = by_pack.setdefault(pack, [0.0, 0.0, 0.0])
        row[0] += meta.get(f"bpf.{prog}.run_ns", 0) / dur / 1e6
        row[1] += runs / dur
        if "_enter" in prog and pack == "llama_cpp":  # one uprobe trap per call (the return: a uretprobe)
            row[2] += runs / dur
    if not by_pack:
        print("where it goes: no BPF run statistics (kernel.bpf_stats_enabled could not be set)")
        return
    total = sum(r[0] for r in by_pack.values())
    print(f"where it goes (one more {seconds:.0f}s recording, bpf_stats on, which adds ~20-40 ns per probe run):")
    for pack, (ms, runs, calls) in sorted(by_pack.items(), key=lambda kv: -kv[1][0]):
        extra = f", {calls:,.0f} uprobe+uretprobe calls/s" if calls else ""
        print(f"  {pack:12s} BPF {ms:6.2f} ms/s  ({runs:,.0f} program runs/s{extra})")
    print(f"  BPF total {total:.2f} ms/s; recorder process {1000 * cpu:.1f} ms/s of CPU; the host has "
          f"{1000 * os.cpu_count():.0f} ms/s")


def _baseline_model(info, tmp: Path, concurrency: int, packs: str | None) -> Path:
    """A WorkloadModel fitted on a 20 s recording under the benchmark's load, for `prism watch
    --model` (so that no B run pays for learning a baseline)."""
    from prismkit.detect import WorkloadModel
    from prismkit.trace import load_trace

    out = tmp / "baseline.pftrace"
    rec = _start_record(info.pid, out, packs)
    throughput(info.url, 20, concurrency, seed=99)
    rec.send_signal(signal.SIGINT)
    rec.wait(60)
    path = tmp / "baseline.model.json"
    WorkloadModel().fit(load_trace(out).batches).save(path)
    out.unlink()
    return path


def _start_record(pid: int, out: Path, packs: str | None, watch_model: Path | None = None,
                  extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`prism record` (or `prism watch --model`) in a process of its own; returns once it is
    attached (its trace has begun)."""
    cmd = [sys.executable, "-m", "prismkit.cli", "record", "--pid", str(pid), "-o", str(out), "--quiet"]
    if watch_model is not None:
        cmd = [sys.executable, "-m", "prismkit.cli", "watch", "--pid", str(pid), "-o", str(out), "--quiet",
               "--model", str(watch_model), "--alerts-jsonl", str(out.with_suffix(".alerts.jsonl"))]
    elif packs:
        cmd += ["--packs", packs]
    cmd += list(extra)
    log = open(out.with_suffix(".log"), "wb") if watch_model is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.DEVNULL)
    if watch_model is not None:
        log.close()   # (the child has its own copy)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:  # attached once the metadata packet is in the file
        if out.exists() and out.stat().st_size > 0 and b"prismkit.metadata" in out.read_bytes()[:65536]:
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"prism record exited with {proc.returncode}")
        time.sleep(0.1)
    raise SystemExit("prism record did not attach within 60 s")


def _watch_figures(out: Path) -> str:
    """Alerts the watch opened during its B run, and how many batches woke its detector at once
    (from its summary: see prism watch --wake)."""
    alerts = out.with_suffix(".alerts.jsonl")
    lines = alerts.read_text().splitlines() if alerts.exists() else []
    opened = sum(json.loads(line).get("event") == "opened" for line in lines if line.strip())
    log = out.with_suffix(".log")
    m = re.search(r"woke the detector at once: (\d+) of (\d+)", log.read_text()) if log.exists() else None
    woke = f", woke the detector {int(m[1]) / max(int(m[2]), 1):.0%} of batches" if m else ""
    return f"   alerts {opened}{woke}"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def event_rate(seconds: float, port: int) -> None:
    srv = LlamaServer(model="tiny", port=port, name="bench-events", n_parallel=8)
    info = srv.start()
    best = 0.0
    try:
        throughput(info.url, 3, 8, seed=0)
        print(f"event rate: tiny model, closed loop c=8, {seconds:.0f}s per run")
        with tempfile.TemporaryDirectory() as tmp:
            for pages in (256, 16, 4, 1):
                rec = Recorder(info.pid, Path(tmp) / f"e{pages}.pftrace", ringbuf_pages=pages,
                               verbose=False).start_background()
                t0 = time.monotonic()
                specs = closed_loop(100_000, parse_length_dist("fixed:8"), parse_length_dist("fixed:64"))
                run_load(info.url, specs, concurrency=8, duration_s=seconds, progress=False)
                summary = rec.join()
                el = time.monotonic() - t0
                n = sum(summary.events.values())
                lost = sum(summary.lost.values())
                rate = n / el
                if lost == 0:
                    best = max(best, rate)
                print(f"  ring buffer {pages:4d} pages: {rate:9.0f} events/s recorded, {lost} lost")
        print(f"highest event rate recorded without loss: {best:.0f} events/s")
    finally:
        srv.stop()


BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def _set_bpf_stats(on: bool | None) -> bool | None:
    """Set kernel.bpf_stats_enabled; returns the previous setting (None if unknown)."""
    try:
        old = BPF_STATS.read_text().strip() == "1"
        if on is not None and on != old:
            BPF_STATS.write_text("1" if on else "0")
        return old
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--port", type=int, default=8391)
    ap.add_argument("--packs", default=None, help="comma-separated pack names to record with (default: all)")
    ap.add_argument("--record-args", default="", metavar="ARGS",
                    help="more options for prism record / prism watch, e.g. '--poll-ms 200'")
    ap.add_argument("--no-event-rate", action="store_true")
    ap.add_argument("--watch", action="store_true",
                    help="measure `prism watch` (recorder + online detector) instead of `prism record`")
    ap.add_argument("--control-burn-ms", type=float, default=None, metavar="MS",
                    help="B runs a plain process that burns MS of CPU every 200 ms instead of the recorder "
                         "(the recorder's CPU without its probes: how well this host resolves a loss that small)")
    ap.add_argument("--toggle-s", type=float, default=None, metavar="S",
                    help="instead of A/B runs: one recording whose probes are detached and attached again "
                         "every S seconds (e.g. 4: longer than a detach, ~2 s here; --seconds is then the whole "
                         "run, e.g. 1200)")
    ap.add_argument("--stop-s", type=float, default=None, metavar="S",
                    help="instead of A/B runs: the recorder process's own share, with its probes attached "
                         "throughout and the process stopped and continued every S seconds (e.g. 3; --seconds "
                         "is the whole run, e.g. 600)")
    ap.add_argument("--bpf-stats", action="store_true",
                    help="leave kernel.bpf_stats_enabled on (per-program run counts in the traces; "
                         "costs ~20-40 ns per probe hit, so off by default, as on a production host)")
    args = ap.parse_args()
    old = _set_bpf_stats(bool(args.bpf_stats))
    if old is not None:
        print(f"kernel.bpf_stats_enabled = {int(bool(args.bpf_stats))} for the runs (was {int(old)})")
    try:
        _run(args)
    finally:
        _set_bpf_stats(old)


def _run(args) -> None:
    if args.stop_s:
        overhead_stopped(args.model, args.seconds, args.stop_s, args.concurrency, args.port, args.packs,
                         tuple(shlex.split(args.record_args)))
        return
    if args.toggle_s:
        overhead_toggled(args.model, args.seconds, args.toggle_s, args.concurrency, args.port, args.packs,
                         args.watch, tuple(shlex.split(args.record_args)))
        return
    overhead(args.model, args.pairs, args.seconds, args.concurrency, args.port, args.packs, args.watch,
             tuple(shlex.split(args.record_args)), args.control_burn_ms)
    if not args.no_event_rate:
        event_rate(min(args.seconds, 10.0), args.port + 1)


if __name__ == "__main__":
    main()
