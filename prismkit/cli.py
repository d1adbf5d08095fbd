"""`prism`: the command line. Each subcommand is a thin layer over the library."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import PrismError


def _add_target(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("target", help="build, start, stop or inspect the bundled llama.cpp server")
    tsub = p.add_subparsers(dest="action", required=True)
    tsub.add_parser("build", help="build llama-server from the pinned llama-cpp-python sdist (cached)")
    s = tsub.add_parser("start", help="start llama-server on 127.0.0.1 (continuous batching, /metrics)")
    s.add_argument("--model", default="tiny", help="'tiny', 'demo' (random-weight llama GGUFs) or a GGUF path")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("-np", "--parallel", type=int, default=4, help="server slots (concurrent sequences)")
    s.add_argument("--ctx", type=int, default=8192, help="total context size (split across slots)")
    s.add_argument("--threads", type=int, default=None, help="compute threads (default: one per CPU it may use)")
    s.add_argument("--cpus", default=None,
                   help="CPUs the server may run on, e.g. 0 or 0-1,3 (like taskset -c; default: all)")
    s.add_argument("--name", default="default", help="name of this server (several can run)")
    s.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until healthy")
    s.add_argument("extra", nargs="*", help="extra llama-server arguments (after --)")
    for action in ("stop", "status"):
        a = tsub.add_parser(action, help=f"{action} a server started by `prism target start`")
        a.add_argument("--name", default="default")
    m = tsub.add_parser("model", help="write a random-weight llama GGUF and print its path")
    m.add_argument("size", choices=["tiny", "demo"])


def _cpu_list(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5] (the CPUs must exist on this machine)."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out.update(range(int(a), int(b or a) + 1))
    except ValueError:
        raise PrismError(f"bad CPU list {text!r} (want e.g. 0 or 0-1,3)") from None
    bad = sorted(out - os.sched_getaffinity(0))
    if not out or bad:
        raise PrismError(f"CPU list {text!r}: CPU(s) {bad} not available here "
                         f"(available: {sorted(os.sched_getaffinity(0))})")
    return sorted(out)


def _positive_int(text: str) -> int:
    """An argparse type: an integer above zero (argparse turns the ValueError into a one-line error)."""
    n = int(text)
    if n <= 0:
        raise ValueError(text)
    return n


_positive_int.__name__ = "positive integer"   # argparse: "invalid positive integer value: '0'"


def _cmd_target(args: argparse.Namespace) -> int:
    from .target.build import ensure_llama_server
    from .target.model import ensure_model
    from .target.server import LlamaServer, health

    if args.action == "build":
        print(ensure_llama_server())
        return 0
    if args.action == "model":
        print(ensure_model(args.size))
        return 0
    if args.action == "start":
        srv = LlamaServer(model=args.model, port=args.port, n_parallel=args.parallel, ctx_size=args.ctx,
                          threads=args.threads, extra_args=args.extra, name=args.name,
                          cpus=_cpu_list(args.cpus) if args.cpus else None)
        existing = srv.load_state()
        if existing is not None:
            raise PrismError(f"server '{args.name}' is already running (pid {existing.pid}, {existing.url})")
        info = srv.start(timeout=args.timeout)
        print(f"llama-server pid {info.pid} healthy at {info.url} (model {info.model}, -np {info.n_parallel})")
        print(f"log: {info.log}")
        return 0
    srv = LlamaServer(name=args.name)
    info = srv.load_state()
    if args.action == "stop":
        if info is None:
            print(f"server '{args.name}' is not running")
            return 0
        srv.stop()
        print(f"stopped llama-server pid {info.pid}")
        return 0
    if info is None:
        print(f"server '{args.name}': not running")
        return 1
    state = "healthy" if health(info.url) else "NOT healthy"
    print(f"server '{args.name}': pid {info.pid} at {info.url}, {state}, model {info.model}")
    return 0


def _add_load(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="drive a server with closed-loop, open-loop or replayed load")
    p.add_argument("--url", default=None, help="server URL (default: the server `prism target start` started)")
    p.add_argument("--mode", choices=["closed", "poisson", "bursty", "azure"], default="closed")
    p.add_argument("-c", "--concurrency", type=int, default=4, help="closed loop: requests in flight")
    p.add_argument("-n", "--requests", type=int, default=None, help="closed loop: number of requests")
    p.add_argument("--rate", type=float, default=2.0, help="open loop: mean requests per second")
    p.add_argument("--burstiness", type=float, default=4.0, help="bursty: CV^2 of inter-arrival gaps (1 = Poisson)")
    p.add_argument("--duration", type=float, default=None, help="seconds of load (open loop, replay window, or closed-loop limit)")
    p.add_argument("--prompt", default="uniform:16:128", help="prompt length distribution in tokens")
    p.add_argument("--output", default="uniform:16:64", help="output length distribution in tokens")
    p.add_argument("--trace", type=Path, help="azure: a CSV with TIMESTAMP, ContextTokens, GeneratedTokens")
    p.add_argument("--time-scale", type=float, default=1.0, help="azure: stretch arrival times (0.5 = 2x faster)")
    p.add_argument("--start-offset", type=float, default=0.0, help="azure: seconds into the trace to start")
    p.add_argument("--token-scale", type=float, default=1.0, help="azure: scale token lengths")
    p.add_argument("--max-prompt", type=int, default=None, help="cap prompt lengths (tokens)")
    p.add_argument("--max-output", type=int, default=None, help="cap output lengths (tokens)")
    p.add_argument("--cache-prompt", action="store_true", help="let the server reuse cached prompt prefixes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", type=Path, default=Path("out/load.csv"), help="per-request results CSV")
    p.add_argument("--quiet", action="store_true")


def _server_url(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    from .target.server import LlamaServer

    info = LlamaServer().load_state()
    if info is None:
        raise PrismError("no server given: pass --url or start one with `prism target start`")
    return info.url


def _cmd_load(args: argparse.Namespace) -> int:
    from .load import azure_replay, closed_loop, open_loop, parse_length_dist, run_load
    from .load.runner import latency_summary

    if args.requests is not None and args.requests < 1:
        raise PrismError(f"-n/--requests must be at least 1 (got {args.requests})")
    if args.concurrency < 1:
        raise PrismError(f"-c/--concurrency must be at least 1 (got {args.concurrency})")
    url = _server_url(args.url)
    prompt = parse_length_dist(args.prompt, lo=2, hi=args.max_prompt or 1 << 20)
    output = parse_length_dist(args.output, hi=args.max_output or 1 << 20)
    if args.mode == "closed":
        n = args.requests if args.requests is not None else (10_000 if args.duration else 40)
        specs = closed_loop(n, prompt, output, seed=args.seed)
    elif args.mode in ("poisson", "bursty"):
        specs = open_loop(args.rate, args.duration or 30.0, prompt, output,
                          burstiness=1.0 if args.mode == "poisson" else args.burstiness, seed=args.seed)
    else:
        if not args.trace:
            raise PrismError("--mode azure needs --trace FILE.csv")
        specs = azure_replay(args.trace, args.time_scale, args.start_offset, args.duration,
                             args.token_scale, args.max_prompt, args.max_output)
    res = run_load(url, specs, concurrency=args.concurrency, out_csv=args.out, seed=args.seed,
                   cache_prompt=args.cache_prompt, duration_s=args.duration if args.mode == "closed" else None,
                   progress=not args.quiet)
    df = res.frame()
    n_ok = int((df["status"] == "ok").sum())
    print(f"{len(df)} requests sent, {n_ok} ok, in {res.wall_s:.1f}s{' (interrupted)' if res.interrupted else ''}; "
          f"results: {args.out}")
    print(latency_summary(df).round(2).to_string())
    return 130 if res.interrupted else (0 if n_ok == len(df) else 1)


def _add_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="attach to a live server by PID and record a Perfetto trace",
                       epilog="Signals: SIGINT/SIGTERM stop (the trace stays valid); SIGUSR1 pauses (every probe "
                              "detached), SIGUSR2 resumes.")
    p.add_argument("--pid", type=int, default=None, help="server PID (default: the server `prism target start` started)")
    p.add_argument("--duration", type=float, default=None, help="seconds to record (default: until Ctrl-C or the target exits)")
    p.add_argument("-o", "--output", type=Path, default=Path("out/trace.pftrace"))
    p.add_argument("--ringbuf-pages", type=int, default=256, help="ring buffer size per pack, in pages (power of two)")
    p.add_argument("--poll-ms", type=_positive_int, default=200,
                   help="how often the ring buffers are drained (at the first batch end after it)")
    p.add_argument("--sample-ms", type=_positive_int, default=200, help="period of the CPU/memory/pressure counters")
    p.add_argument("--min-offcpu-us", type=int, default=50,
                   help="off-CPU intervals shorter than this are counted, not written one by one "
                        "(preemptions by other processes: see --min-preempt-us); 0 writes all")
    p.add_argument("--min-preempt-us", type=int, default=20,
                   help="preemptions by other processes shorter than this are counted, not written "
                        "(at most --min-offcpu-us); 0 writes all")
    p.add_argument("--min-stage-us", type=int, default=10,
                   help="engine stage calls (sampling, detokenizing...) shorter than this are counted and timed, "
                        "not written one by one; 0 writes all")
    p.add_argument("--syscalls", action="store_true",
                   help="also the syscalls pack: count and time of every system call of the server (off by "
                        "default: its probes run on every syscall of the host, ~1.5%% of the demo's throughput)")
    p.add_argument("--time-all-syscalls", action="store_true",
                   help="with --syscalls: time futex calls too (default: counted only; ~280 ns each on the "
                        "server's thread pool)")
    p.add_argument("--capture-paths", action="store_true",
                   help="also record each request's HTTP path (off by default: sizes and timings only)")
    p.add_argument("--packs", default=None, metavar="NAMES",
                   help="comma-separated probe packs to use (default: all that apply), e.g. llama_cpp,http")
    g = p.add_argument_group("exact Python function boundaries (CPython 3.12+; a runtime change, "
                             "see docs/python-monitor.md)")
    g.add_argument("--py-function", action="append", default=[], metavar="QUALNAME",
                   help="a slice per call of this function (e.g. Worker.generate or module:Worker.generate); repeatable")
    g.add_argument("--py-step", metavar="QUALNAME", help="the engine-step function: one batch per call")
    g.add_argument("--py-step-arg", action="append", default=[], metavar="COLUMN=ARG",
                   help="a batch column from the step's argument: n_seqs=len(batch), n_tokens=n_tokens; repeatable")
    g.add_argument("--py-keep-monitor", action="store_true",
                   help="leave sys.monitoring on after the recording (default: removed; `prism python-monitor remove`)")
    p.add_argument("--quiet", action="store_true")


def _py_monitor_pack(args: argparse.Namespace):
    if not (args.py_function or args.py_step or args.py_step_arg):
        return None
    from recorders.packs.pymonitor import PyMonitorPack

    step_args = []
    for item in args.py_step_arg:
        column, sep, expr = item.partition("=")
        if not sep:
            raise PrismError(f"--py-step-arg {item!r}: expected COLUMN=ARG or COLUMN=len(ARG)")
        step_args.append((column.strip(), expr))
    return PyMonitorPack(args.py_function, step=args.py_step, step_args=step_args, keep=args.py_keep_monitor)


def _cmd_record(args: argparse.Namespace) -> int:
    from .preflight import check_root

    check_root()  # before anything heavy: the first thing a non-root user should hear
    from recorders.engine import Recorder

    from .target.server import default_pid

    pid = default_pid(args.pid)
    packs = None
    monitor = _py_monitor_pack(args)
    args.syscalls = args.syscalls or args.time_all_syscalls
    if monitor is not None or args.packs or args.syscalls:
        from recorders.packs import all_packs, default_packs

        packs = default_packs(opt_in=["syscalls"] if args.syscalls else [])
        if args.packs:
            wanted = {n.strip() for n in args.packs.split(",") if n.strip()} | ({"syscalls"} if args.syscalls else set())
            every = all_packs()
            unknown = wanted - {p.name for p in every}
            if unknown:
                raise PrismError(f"--packs: unknown pack(s) {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(p.name for p in every)})")
            packs = [p for p in every if p.name in wanted]
        if monitor is not None:
            packs.append(monitor)
    rec = Recorder(pid, args.output, duration_s=args.duration, sample_interval_s=args.sample_ms / 1000, packs=packs,
                   ringbuf_pages=args.ringbuf_pages, poll_interval_ms=args.poll_ms,
                   capture_paths=args.capture_paths, min_offcpu_us=args.min_offcpu_us,
                   min_preempt_us=args.min_preempt_us, min_stage_us=args.min_stage_us,
                   time_all_syscalls=args.time_all_syscalls, freeze_gc=True,
                   verbose=not args.quiet)
    summary = rec.run()
    print(f"trace: {summary.path}  (open it in https://ui.perfetto.dev)")
    return 0


def _add_python_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("python-monitor", help="switch exact Python function boundaries (sys.monitoring, 3.12+) "
                                              "on or off in a running process")
    msub = p.add_subparsers(dest="action", required=True)
    a = msub.add_parser("add", help="turn on PY_START/PY_RETURN events for the named functions (a runtime change)")
    a.add_argument("--pid", type=int, required=True)
    a.add_argument("functions", nargs="+", metavar="QUALNAME")
    r = msub.add_parser("remove", help="turn prismkit's sys.monitoring tool off again")
    r.add_argument("--pid", type=int, required=True)
    for q in (a, r):
        q.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the main thread to run it")


def _cmd_python_monitor(args: argparse.Namespace) -> int:
    from .preflight import check_root

    check_root()
    from recorders.packs.pymonitor import inject

    if args.action == "add":
        st = inject.enable(args.pid, args.functions, args.timeout)
        for c in st["codes"]:
            print(f"on: {c['qualname']} ({c['file']}:{c['line']}) code {c['addr']:#x}")
        print(f"PID {args.pid}: sys.monitoring tool {st['tool']} ({inject.TOOL_NAME}) on {len(st['codes'])} code "
              f"object(s); `prism python-monitor remove --pid {args.pid}` turns it off")
    else:
        st = inject.disable(args.pid, args.timeout)
        print(f"PID {args.pid}: " + (f"sys.monitoring tool {', '.join(map(str, st['removed_tools']))} removed"
                                      if st["removed_tools"] else "prismkit's sys.monitoring tool was not on"))
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="summarise a trace in the terminal and write an HTML report")
    p.add_argument("trace", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None, help="HTML report path (default: TRACE.html)")
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in ms")
    p.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO in ms")
    p.add_argument("--trace-processor", default=None, help="trace_processor_shell binary to read the trace with")


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.report import print_summary, write_report
    from .trace import load_trace

    trace = load_trace(args.trace, trace_processor_bin=args.trace_processor)
    print_summary(trace, args.slo_ttft, args.slo_tpot)
    out = args.output or args.trace.with_suffix(".html")
    write_report(trace, out, args.slo_ttft, args.slo_tpot)
    print(f"report: {out}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job end to end: server, load, record, analyse")
    p.add_argument("--model", default="demo")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--out", type=Path, default=Path("out"))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, duration_s=args.duration, port=args.port, out_dir=args.out)


def _add_inject(sub: argparse._SubParsersAction) -> None:
    from .inject.cli import add_arguments

    add_arguments(sub.add_parser("inject", help="inject a fault or workload change into a live server, write labels"))


def _cmd_inject(args: argparse.Namespace) -> int:
    from .inject.cli import run

    return run(args)


def _add_watch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="record a live server and alert on latency anomalies as batches complete",
                       epilog="Signals: SIGINT/SIGTERM stop; SIGUSR1 pauses the recorder (every probe detached, "
                              "nothing watched), SIGUSR2 resumes.")
    p.add_argument("--pid", type=int, default=None, help="server PID (default: the server `prism target start` started)")
    p.add_argument("--model", type=Path, default=None, help="baseline WorkloadModel (JSON); default: learn one during --warmup")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of batches to learn the baseline from (no --model)")
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in ms")
    p.add_argument("--slo-tpot", type=float, default=None, help="TPOT SLO in ms")
    p.add_argument("-o", "--output", type=Path, default=Path("out/watch.pftrace"))
    p.add_argument("--alerts-jsonl", type=Path, default=None, help="append alert events (JSON lines) to this file")
    p.add_argument("--webhook", default=None, help="POST alert events (JSON) to this URL")
    p.add_argument("--prometheus-port", type=int, default=None, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--follow-port", type=int, default=None,
                   help="when the target exits, re-attach to the next process listening on this port")
    p.add_argument("--follow-cmd", default=None, metavar="REGEX",
                   help="when the target exits, re-attach to the newest process whose command line matches REGEX")
    p.add_argument("--poll-ms", type=_positive_int, default=200,
                   help="how often the ring buffers are drained (at the first batch end after it; a batch that "
                        "may be slow wakes the detector at once regardless)")
    p.add_argument("--sample-ms", type=_positive_int, default=200,
                   help="period of the CPU/memory/pressure counters in the trace")
    p.add_argument("--no-causes", action="store_true", help="do not run cause analysis on an alert")
    p.add_argument("--syscalls", action="store_true", help="also record the syscalls pack (see prism record --help)")
    p.add_argument("--rca", action="store_true",
                   help="add prismkit.rootcause's ranked causes to each alert (reloads the growing trace in a process "
                        "of its own at nice 19, off the alert path)")
    p.add_argument("--min-excess-ms", type=float, default=2.0,
                   help="alert once an anomaly has cost this much batch time (ms) beyond the expected")
    p.add_argument("--min-slowdown", type=float, default=0.10,
                   help="alert only on anomalies at least this much slower than expected, per batch and over "
                        "the episode (0.10: 10%%; the offline detector's floor is 0.05)")
    p.add_argument("--nice", type=int, default=None,
                   help="CPU weight of the watcher as a nice value (e.g. -10: alerts stay fast on a loaded machine): "
                        "its session's autogroup nice, restored when the watch ends, or where the session has no "
                        "autogroup its own threads' nice")
    p.add_argument("--live-priority", type=int, default=0,
                   help="SCHED_FIFO priority (1-99) for the recorder thread while it waits for batches and runs "
                        "the detector on them (it drops to normal scheduling for the trace writing); 0 (default): "
                        "normal scheduling. Real-time keeps alerts within milliseconds on a busy host, but the "
                        "detector's work (tens of us a batch, a few hundred after a wakeup) then preempts the "
                        "server: use it for engines whose batches take several ms, not sub-millisecond ones")
    p.add_argument("--wake", choices=("suspects", "every"), default="suspects",
                   help="which finished batches wake the detector at once: 'suspects' (default: those that lasted "
                        "long enough to be flagged, judged in the kernel per batch shape; the others arrive in order "
                        "at the next drain, --poll-ms) or 'every' batch (one wakeup per batch: costs the server throughput)")
    p.add_argument("--quiet", action="store_true", help="no status lines (alerts and the summary still print)")


def _cmd_watch(args: argparse.Namespace) -> int:
    from .preflight import check_root

    check_root()
    from .online.watch import WatchConfig, run_watch

    from .target.server import default_pid

    if args.follow_port and args.follow_cmd:
        raise PrismError("give --follow-port or --follow-cmd, not both")
    if args.follow_cmd:
        import re

        try:
            re.compile(args.follow_cmd)
        except re.error as exc:
            raise PrismError(f"--follow-cmd is not a valid regular expression: {exc}") from None
    if not 0 <= args.min_slowdown < 10:
        raise PrismError(f"--min-slowdown is a fraction of the expected latency, e.g. 0.1 (got {args.min_slowdown})")
    if not 0 <= args.live_priority <= 99:
        raise PrismError(f"--live-priority must be 0-99 (got {args.live_priority})")
    pid = default_pid(args.pid)
    cfg = WatchConfig(pid=pid, output=args.output, model=args.model, slo_ttft_ms=args.slo_ttft,
                      slo_tpot_ms=args.slo_tpot, alerts_jsonl=args.alerts_jsonl, webhook=args.webhook,
                      prometheus_port=args.prometheus_port, warmup_s=args.warmup, follow_port=args.follow_port,
                      follow_cmd=args.follow_cmd,
                      poll_ms=args.poll_ms, sample_ms=args.sample_ms, causes=not args.no_causes, verbose=not args.quiet,
                      nice=args.nice, min_excess_ms=args.min_excess_ms, min_slowdown=args.min_slowdown,
                      rca=args.rca, live_rt_priority=args.live_priority or None, syscalls=args.syscalls,
                      wake=args.wake)
    return run_watch(cfg)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    from .rootcause.cli import add_explain_arguments

    add_explain_arguments(sub.add_parser("explain", help="rank the root causes of each latency anomaly (SHAP)"))


def _cmd_explain(args: argparse.Namespace) -> int:
    from .rootcause.cli import cmd_explain

    return cmd_explain(args)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .detect.cli import add_arguments

    add_arguments(p := sub.add_parser("eval", help="score the anomaly detector (and workload model) on labelled traces"))
    from .rootcause.cli import add_eval_rca_arguments

    eval_sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    add_eval_rca_arguments(eval_sub.add_parser("rca", help="top-1/top-3 accuracy of the root-cause ranking per scenario"))


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.what == "rca":
        from .rootcause.cli import cmd_eval_rca

        return cmd_eval_rca(args)
    from .detect.cli import cmd

    return cmd(args)


COMMANDS = {"target": (_add_target, _cmd_target), "load": (_add_load, _cmd_load),
            "record": (_add_record, _cmd_record), "analyze": (_add_analyze, _cmd_analyze),
            "demo": (_add_demo, _cmd_demo), "inject": (_add_inject, _cmd_inject),
            "watch": (_add_watch, _cmd_watch)}

COMMANDS["python-monitor"] = (_add_python_monitor, _cmd_python_monitor)
COMMANDS["explain"] = (_add_explain, _cmd_explain)
COMMANDS["eval"] = (_add_eval, _cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prism", description="Watch a live LLM inference server with eBPF.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args) or 0
    except PrismError as err:
        print(f"prism {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"prism {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
