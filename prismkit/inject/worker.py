"""Helper processes the scenarios start: ``python -m prismkit.inject.worker KIND JSON``.

Kinds: ``spin`` (burn CPU, optionally with a duty cycle), ``stream`` (copy a
large buffer in a loop: memory bandwidth), ``io`` (fsync'd writes and
cache-bypassing reads of an unnamed temporary file), ``load`` (drive the
server with the load generator and report the requests as JSON), ``stall``
(SIGSTOP/SIGCONT the server on a real-time timer, one line per pause).

Every worker arranges its own end: it asks the kernel for SIGKILL when its
parent dies (PR_SET_PDEATHSIG), so a SIGKILLed injector leaves no helper
running; it ignores SIGINT (a Ctrl-C in the terminal is for the injector,
which then stops its helpers in order); it writes one line ``ready`` on stdout
once the interference is about to start, which is what the label's start
time waits for. The ``io`` worker's file is created with O_TMPFILE, so it has
no name and its space is freed whenever the process ends, however it ends.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _setup(cfg: dict) -> None:
    _die_with_parent(int(cfg["parent"]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cfg.get("cpus"):
        os.sched_setaffinity(0, cfg["cpus"])
    if cfg.get("nice"):
        os.nice(int(cfg["nice"]))
    if cfg.get("sched_idle"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def spin(cfg: dict) -> None:
    duty = float(cfg.get("duty", 1.0))
    period = float(cfg.get("period_ms", 10)) / 1000
    _ready()
    if duty >= 1.0:
        while True:
            pass
    while True:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < duty * period:
            pass
        time.sleep((1.0 - duty) * period)


def stream(cfg: dict) -> None:
    import numpy as np

    n = int(cfg.get("buffer_mb", 256)) * (1 << 20) // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    _ready()
    while True:
        np.copyto(dst, src)
        np.copyto(src, dst)


def io(cfg: dict) -> None:
    directory = cfg["dir"]
    size = int(cfg.get("file_mb", 256)) << 20
    block = int(cfg.get("block_kb", 1024)) << 10
    fsync_every = max(1, int(cfg.get("fsync_every_kb", 1024)) << 10)
    fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)  # no name: nothing to leave behind
    buf = os.urandom(block)
    _ready()
    while True:
        os.lseek(fd, 0, os.SEEK_SET)
        written = since_sync = 0
        while written < size:
            written += os.write(fd, buf)
            since_sync += block
            if since_sync >= fsync_every:
                os.fsync(fd)
                since_sync = 0
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the reads must come from the disk
        os.lseek(fd, 0, os.SEEK_SET)
        while os.read(fd, block):
            pass
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def load(cfg: dict) -> None:
    """Run the load generator; SIGTERM stops it (in-flight requests are cancelled)."""
    from prismkit.load import closed_loop, open_loop, parse_length_dist, run_load
    from prismkit.load.workload import RequestSpec

    prompt = parse_length_dist(cfg["prompt"], lo=2)
    output = parse_length_dist(cfg["output"])
    seed = int(cfg.get("seed", 0))
    if cfg["mode"] == "closed":
        specs = closed_loop(int(cfg["n"]), prompt, output, seed=seed)
    else:  # burst: n arrivals spread evenly over spread_s
        import numpy as np

        rng = np.random.default_rng(seed)
        n, spread = int(cfg["n"]), float(cfg["spread_s"])
        specs = [RequestSpec(spread * i / max(n - 1, 1), prompt(rng), output(rng)) for i in range(n)]
    def interrupt(*_a) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # until run_load's own handlers take over
    _ready()
    try:
        res = run_load(cfg["url"], specs, concurrency=int(cfg.get("concurrency", 1)), seed=seed,
                       duration_s=cfg.get("duration_s"), progress=False, max_in_flight=1024)
        results, interrupted = res.results, res.interrupted
    except KeyboardInterrupt:
        results, interrupted = [], True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the summary must get out
    ok = [r for r in results if r.status == "ok"]
    sent = [r for r in results if r.t_send_ns]
    summary = {
        "n_sent": len(sent), "n_ok": len(ok),
        "prompt_tokens": sum(r.prompt_tokens for r in ok), "output_tokens": sum(r.output_tokens for r in ok),
        "first_send_ns": min((r.t_send_ns for r in sent), default=0),
        "last_end_ns": max((r.t_end_ns for r in sent), default=0),
        "interrupted": interrupted,
        "errors": sorted({r.error or r.status for r in results if r.status not in ("ok", "cancelled")})[:3],
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except OSError:
        return None


def stall(cfg: dict) -> None:
    """SIGSTOP the target for pause_ms every period_ms; one line "STOP_NS CONT_NS" per pause.

    Runs as SCHED_FIFO where allowed (it sleeps nearly all the time), so that
    the pauses have their length even on a saturated host. Whatever ends it
    (SIGTERM from the injector, an error), the target gets its SIGCONT.
    """
    import random

    pid, start = int(cfg["pid"]), int(cfg["start"])
    pause, period = float(cfg["pause_ms"]) / 1000, float(cfg["period_ms"]) / 1000
    jitter, rng = float(cfg.get("jitter", 0.0)), random.Random(int(cfg.get("seed", 0)))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        try:
            os.nice(-10)
        except OSError:
            pass

    def terminate(*_a) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    _ready()
    nxt = time.monotonic()
    try:
        while True:
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if _start_time(pid) != start:
                return  # the target is gone: nothing left to pause
            a = time.monotonic_ns()
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(pause)
            finally:
                os.kill(pid, signal.SIGCONT)
                b = time.monotonic_ns()
                sys.stdout.write(f"{a} {b}\n")
                sys.stdout.flush()
            nxt = max(nxt + period + (rng.uniform(-jitter, jitter) * period if jitter else 0.0), time.monotonic())
    finally:
        if _start_time(pid) == start:
            os.kill(pid, signal.SIGCONT)


KINDS = {"spin": spin, "stream": stream, "io": io, "load": load, "stall": stall}


def main() -> int:
    kind, cfg = sys.argv[1], json.loads(sys.argv[2])
    _setup(cfg)
    if kind == "load":
        signal.signal(signal.SIGINT, signal.default_int_handler)  # run_load handles SIGINT/SIGTERM itself
    KINDS[kind](cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
