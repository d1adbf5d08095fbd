"""The recording engine: attach probe packs to a live process, stream a Perfetto trace.

    Recorder(pid, "out.pftrace", duration_s=30).run()

Stops on the duration, Ctrl-C, SIGTERM or the target's exit, and always
leaves a valid trace: events are written as they arrive, the file is flushed
every 100 ms, and the stop path drains the buffers, writes the final stats
(lost events per buffer) and closes the file.

`pause()` detaches every probe until `resume()` (`prism record`: SIGUSR1 and
SIGUSR2); the trace marks each gap with ``prismkit.paused`` and
``prismkit.resumed`` instants.
"""
from __future__ import annotations

import gc
import os
import platform
import select
from collections import deque
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prismkit.errors import PrismError

from .packs import default_packs
from .packs.base import AttachReport, ProbePack
from .probe_switch import ProbeSwitch
from .ringbuf import RingReader, open_ring_reader
from .target import TargetProcess
from .trace_writer import TraceWriter


@dataclass
class RecordingContext:
    """What packs write through: the writer and the target's tracks."""

    writer: TraceWriter
    target: TargetProcess
    process_track: int
    options: dict
    #: called with each batch an engine pack writes (a dict of its attributes and
    #: tid, ts_start, ts_end); the flow ids they return go on the batch slice
    batch_observers: list[Callable[[dict], list[int]]] = field(default_factory=list)
    #: called with each batch as soon as its record arrives, on the engine's polling thread
    #: and before it is written (the online detector): must be quick
    live_observers: list[Callable[[dict], None]] = field(default_factory=list)
    #: ring buffers consumed first whenever one wakes the polling thread: (map name, callback)
    live_buffers: list[tuple[str, Callable]] = field(default_factory=list)
    #: ring buffers consumed by the polling thread (map names)
    main_buffers: list[str] = field(default_factory=list)
    #: ring buffers the polling thread drains in bulk: (map fd, reader, drain)
    bulk_buffers: list[tuple[int, RingReader, Callable[[RingReader], None]]] = field(default_factory=list)
    _deferred: deque = field(default_factory=deque)
    _threads: dict[int, int] = field(default_factory=dict)
    _named: dict[str, int] = field(default_factory=dict)

    def open_ring_buffer(self, bpf, name: str, callback: Callable, live: bool = False) -> None:
        """Consume ring buffer `name` with `callback(ctx, data, size)`.

        live=False: on the engine's polling thread, with every other pack's buffers.
        live=True: before any other buffer when one of these wakes the polling thread, so
        a record is seen within a wakeup of its submission however busy the other buffers
        are; such a callback must only copy the record (and show it to ctx.live_observers)
        and hand the writing to `defer()`.
        """
        if live:
            self.live_buffers.append((name, callback))
        else:
            bpf[name.encode() if isinstance(name, str) else name].open_ring_buffer(callback)
            self.main_buffers.append(name)

    def open_bulk_buffer(self, bpf, name: str, drain: Callable[[RingReader], None]) -> None:
        """Read ring buffer `name` in bulk: on the polling thread, at each drain of the other
        buffers, drain(reader) takes all its records at once (recorders/ringbuf.py)."""
        fd = bpf[name.encode() if isinstance(name, str) else name].map_fd
        self.bulk_buffers.append((fd, open_ring_reader(bpf, name), drain))

    def drain_bulk(self) -> None:
        for _fd, reader, drain in self.bulk_buffers:
            drain(reader)

    def close_bulk(self) -> None:
        for _fd, reader, _drain in self.bulk_buffers:
            reader.close()

    def defer(self, fn: Callable, *args) -> None:
        """Run fn(*args) on the engine's polling thread (the one that writes the trace)."""
        self._deferred.append((fn, args))

    def deferred_count(self) -> int:
        return len(self._deferred)

    def run_deferred(self, limit: int | None = None) -> None:
        """Run the deferred work in arrival order: all of it, or only the first `limit` items
        (those queued before a drain began: records of other buffers that precede them
        in time are then in)."""
        pop = self._deferred.popleft
        for _ in range(len(self._deferred) if limit is None else min(limit, len(self._deferred))):
            fn, args = pop()
            fn(*args)

    def thread_track(self, tid: int) -> int:
        uuid = self._threads.get(tid)
        if uuid is None:
            uuid = self._threads[tid] = self.writer.thread_track(self.target.pid, tid, self.target.thread_name(tid))
        return uuid

    def named_track(self, name: str, parent: int | None = None) -> int:
        uuid = self._named.get(name)
        if uuid is None:
            uuid = self._named[name] = self.writer.named_track(name, parent or self.process_track)
        return uuid

    def counter_track(self, name: str, unit: str | None = None, parent: int | None = None) -> int:
        key = "counter:" + name
        uuid = self._named.get(key)
        if uuid is None:
            uuid = self._named[key] = self.writer.counter_track(name, parent or self.process_track, unit)
        return uuid


class RingWaiter:
    """Sleeps until a ring buffer signals a wakeup, or the timeout.

    libbpf's own poll registers its buffers level-triggered: once woken, every
    following poll returns at once while any record is waiting, so with records
    arriving every few hundred microseconds (submitted without a wakeup) the
    consumer spun at the record rate -- measured: ~2,500 loops/s and most of the
    recorder's CPU. Registered edge-triggered here, a buffer wakes us only when
    the kernel really signals it (a forced wakeup, or a quarter-full buffer), and
    the records submitted without one wait for the next drain.
    """

    def __init__(self, fds: list[int]) -> None:
        self._ep = select.epoll()
        for fd in fds:
            self._ep.register(fd, select.EPOLLIN | select.EPOLLET)

    def wait(self, timeout_s: float) -> list[int]:
        """The fds of the buffers that signalled within timeout_s (none: the timeout)."""
        try:
            return [fd for fd, _events in self._ep.poll(timeout_s)]
        except InterruptedError:
            return []

    def close(self) -> None:
        self._ep.close()


class _LiveBuffers:
    """The live ring buffers (ctx.live_buffers), in a ring-buffer manager of their own.

    The polling thread consumes them first, before any other buffer, whenever one wakes
    it: BCC keeps one manager per BPF object and its poll runs every buffer's callbacks
    in turn, so a batch record would wait behind a burst of scheduler events. (They had
    a thread of their own before, which cost ~1.3 ms of CPU a second more under the demo
    load: GIL hand-offs and a second wakeup per drain.)
    """

    def __init__(self, bpf, buffers: list[tuple[str, Callable]], log: Callable[[str], None]) -> None:
        from bcc.libbcc import _RINGBUF_CB_TYPE, lib

        self._lib = lib
        self._cbs = []
        self._mgr = None
        self.fds: list[int] = []
        for name, callback in buffers:
            fn = _RINGBUF_CB_TYPE(_guarded(callback, log))
            self._cbs.append(fn)  # ctypes callbacks must outlive the manager
            fd = bpf[name.encode()].map_fd
            self.fds.append(fd)
            if self._mgr is None:
                self._mgr = lib.bpf_new_ringbuf(fd, fn, None)
                if not self._mgr:
                    raise PrismError(f"cannot open ring buffer {name}")
            elif lib.bpf_add_ringbuf(self._mgr, fd, fn, None) < 0:
                raise PrismError(f"cannot open ring buffer {name}")

    def consume(self) -> None:
        self._lib.bpf_consume_ringbuf(self._mgr)

    def close(self) -> None:
        if self._mgr is not None:
            self._lib.bpf_consume_ringbuf(self._mgr)
            self._lib.bpf_free_ringbuf(self._mgr)
            self._mgr = None


@dataclass
class RecordingSummary:
    path: str
    duration_s: float
    stop_reason: str
    events: dict[str, int]
    lost: dict[str, int]
    attached: list[str]
    failed: list[tuple[str, str]]
    #: BPF program name -> (runs, ns spent in it), when the kernel counts them (kernel.bpf_stats_enabled=1)
    probe_cost: dict[str, tuple[int, int]] = field(default_factory=dict)


class Recorder:
    def __init__(self, pid: int, output: str | os.PathLike, duration_s: float | None = None,
                 packs: list[ProbePack] | None = None, sample_interval_s: float = 0.2,
                 ringbuf_pages: int = 256, poll_interval_ms: int = 200, capture_paths: bool = False,
                 min_offcpu_us: int = 50, min_preempt_us: int = 20, min_stage_us: int = 10,
                 time_all_syscalls: bool = False,
                 rt_priority: int | None = None, freeze_gc: bool = False,
                 verbose: bool = True, on_event_count: Callable[[dict], None] | None = None) -> None:
        self.pid = pid
        self.output = Path(output)
        self.duration_s = duration_s
        self.packs = packs if packs is not None else default_packs()
        self.sample_interval_s = sample_interval_s
        # min_offcpu_us: shorter off-CPU intervals are only counted in the per-thread
        # totals (llama.cpp's worker threads hand off every ~40 us: one slice each
        # would be thousands per second); preemptions by other processes have their own,
        # lower limit min_preempt_us (measured on a loaded 2-core host: preemptions under
        # 20 us were 47% of the slices and 0.3% of the preempted time).
        # min_stage_us: engine stage calls shorter than this are counted, not written
        # (see the llama_cpp pack). time_all_syscalls: the syscalls pack (when loaded) times
        # futex calls too (see its docstring).
        self.options = {"ringbuf_pages": ringbuf_pages, "capture_paths": capture_paths,
                        "min_offcpu_us": min_offcpu_us, "min_preempt_us": min_preempt_us,
                        "min_stage_us": min_stage_us, "poll_interval_ms": poll_interval_ms}
        if time_all_syscalls:
            self.options["untimed_syscalls"] = ()
        self.poll_interval_ms = poll_interval_ms
        # rt_priority (prism watch): SCHED_FIFO for the polling thread while it waits and
        # while it consumes the live buffers (a batch record and the live observers); a woken
        # normal thread waits behind the server's busy threads for tens of ms on a loaded
        # host. It drops back to SCHED_OTHER for the drains: at real-time priority their bulk
        # work (thousands of events per second) preempted the server itself (measured: 37%
        # fewer batches with the tiny model). Plain `prism record` leaves scheduling alone.
        self.rt_priority = rt_priority
        # freeze_gc (the CLI): once attached, gc.freeze() the process's objects, which then
        # live as long as the recording (BCC's tables, imported modules, a loaded model). The
        # cyclic GC's full collections scanned them all: one stalled prism watch's consumer
        # for ~50 ms. A process that goes on after the recording should leave this off.
        self.freeze_gc = freeze_gc
        self._live: _LiveBuffers | None = None
        self.verbose = verbose
        self._stop_reason: str | None = None
        self._stop_event = threading.Event()
        self.ready = threading.Event()  # set once probes are attached and events flow
        self.summary: RecordingSummary | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._want_paused = False
        self._control_fd: int | None = None  # eventfd: pause, resume or stop was asked for
        self.pauses = 0
        self.paused_ns = 0

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"[record] {msg}", file=sys.stderr, flush=True)

    def stop(self, reason: str = "requested") -> None:
        """Ask a running recording to stop (thread-safe)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_event.set()
        self._poke()

    def pause(self) -> None:
        """Detach every probe until resume() (thread-safe). The target then runs without any
        probe, nothing is recorded, and the trace marks the gap; calls, scheduler intervals
        and requests in progress at the pause are not joined across it."""
        self._want_paused = True
        self._poke()

    def resume(self) -> None:
        """Attach the probes again after pause() (thread-safe)."""
        self._want_paused = False
        self._poke()

    def _poke(self) -> None:
        fd = self._control_fd
        if fd is not None:
            try:
                os.eventfd_write(fd, 1)
            except OSError:  # closed as the recording ended
                pass

    def start_background(self, timeout: float = 60.0) -> "Recorder":
        """Run the recording in a thread; return once it is attached (or raise its error)."""

        def target() -> None:
            try:
                self.summary = self.run()
            except BaseException as exc:  # handed to the caller of start_background/join
                self.error = exc
                self.ready.set()

        self._thread = threading.Thread(target=target, name="prism-recorder", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout):
            self.stop("timeout")
            raise PrismError(f"recorder did not attach within {timeout:.0f}s")
        if self.error is not None:
            raise self.error
        return self

    def join(self, timeout: float | None = None) -> RecordingSummary:
        """Stop a background recording and return its summary."""
        self.stop("requested")
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary

    def _compile(self, target: TargetProcess, packs: list[ProbePack]):
        from bcc import BPF

        pages = int(self.options["ringbuf_pages"])
        if pages < 1 or pages & (pages - 1):
            raise PrismError(f"--ringbuf-pages must be a power of two (got {pages})")
        text = "\n".join(p.bpf_text(target, self.options) for p in packs)
        text = f"#include <uapi/linux/ptrace.h>\n#define TARGET_PID {target.pid}\n#define RINGBUF_PAGES {pages}\n" + text
        try:
            return BPF(text=text.encode(), cflags=["-Wno-macro-redefined", "-Wno-unused-function"])
        except Exception as exc:
            raise PrismError(f"BPF programs failed to load: {str(exc).splitlines()[0]}") from None

    def run(self) -> RecordingSummary:
        from prismkit.preflight import check_all

        check_all(load_bpf=False)
        target = TargetProcess.from_pid(self.pid)
        packs = [p for p in self.packs if p.applies_to(target)]
        engine_packs = [p for p in packs if getattr(p, "engine", False)]
        if not engine_packs:
            known = ", ".join(sorted({getattr(p, "library_hint", p.name) for p in self.packs if getattr(p, "engine", False)}))
            raise PrismError(f"PID {target.pid} ({target.comm}) maps no known engine library (looked for {known})")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        bpf = self._compile(target, packs)
        switch = ProbeSwitch(bpf)  # keeps each attach call, for pause() and resume()
        report = AttachReport()
        try:
            for p in packs:
                p.attach(bpf, target, report)
        except PrismError:
            bpf.cleanup()
            raise
        for line in report.attached:
            self._log(f"attached  {line}")
        for what, why in report.failed:
            self._log(f"NOT attached {what}: {why}")

        writer = TraceWriter(self.output)
        process_track = writer.process_track(target.pid, target.comm, target.cmdline)
        ctx = RecordingContext(writer, target, process_track, self.options)
        t_start = time.monotonic_ns()
        writer.instant(process_track, t_start, "prismkit.metadata", "metadata", {
            "target_pid": target.pid,
            "target_cmdline": " ".join(target.cmdline),
            "engine_libraries": ";".join(f"{k}={v}" for k, v in sorted(target.libraries.items())
                                         if k.startswith(("libllama", "libggml", "libcuda", "libnccl"))),
            "build": _build_id(target),
            "packs": ",".join(p.name for p in packs),
            "probes_attached": "; ".join(report.attached),
            "probes_failed": "; ".join(f"{w}: {y}" for w, y in report.failed),
            "kernel": platform.release(),
            "clock": "CLOCK_MONOTONIC",
            "prismkit_version": _version(),
        })
        batch_wakeups = False         # a buffer of ctx.live_buffers wakes us at batch ends
        try:
            for p in packs:
                p.start(bpf, ctx)
            for p in packs:  # now that every pack has registered its observers
                if hasattr(p, "set_live"):
                    p.set_live(bpf, bool(ctx.live_observers), self.poll_interval_ms)
            # Buffers whose records wake us at batch ends (the llama.cpp pack's batches).
            batch_wakeups = bool(ctx.live_buffers)
            if ctx.live_buffers and ctx.live_observers:
                self._live = _LiveBuffers(bpf, ctx.live_buffers, self._log)
            else:
                # Nobody watches batches as they come (prism record): they are consumed with
                # the other buffers, at each drain.
                for name, callback in ctx.live_buffers:
                    ctx.open_ring_buffer(bpf, name, _guarded(callback, self._log))
                ctx.live_buffers = []
        except Exception:
            writer.close()
            bpf.cleanup()
            raise
        # Nothing to wait for here (no buffer of this thread's): sleep a poll interval instead.
        bcc_polls = bool(getattr(bpf, "_ringbuf_manager", None))
        live = self._live
        main_polls = bcc_polls or bool(ctx.bulk_buffers) or live is not None
        self._control_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        waiter = RingWaiter([bpf[n.encode() if isinstance(n, str) else n].map_fd for n in ctx.main_buffers]
                            + [fd for fd, _reader, _drain in ctx.bulk_buffers]
                            + (live.fds if live is not None else []) + [self._control_fd])
        live_fds = set(live.fds) if live is not None else set()
        # Drains follow batch ends (at most one per poll interval), when the engine samples and
        # sends tokens on one thread and the recorder takes no CPU from its lockstep compute
        # threads; the timer only covers an idle server.
        poll_s = self.poll_interval_ms / 1000
        drain_gap_s = poll_s * (4 if batch_wakeups else 1)
        last_drain = 0.0
        set_priority = _priority_switch(self.rt_priority if live is not None else None, self._log)
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        self.ready.set()

        old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig, reason in ((signal.SIGINT, "sigint"), (signal.SIGTERM, "sigterm")):
                old_handlers[sig] = signal.signal(sig, lambda *_a, r=reason: self.stop(r))
            old_handlers[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_a: self.pause())
            old_handlers[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, lambda *_a: self.resume())
        self._log(f"recording PID {target.pid} ({target.comm}) into {self.output}"
                  + (f" for {self.duration_s:g}s" if self.duration_s else "") + "; Ctrl-C to stop")
        deadline = time.monotonic() + self.duration_s if self.duration_s else None
        next_sample = time.monotonic()
        next_status = time.monotonic() + 1.0
        next_drain = time.monotonic()
        next_pack_sample: dict[str, float] = {}   # packs with a slower sample period of their own
        lost_last: dict[str, int] = {}
        lost_tracks = {buf: ctx.counter_track(f"lost_events.{buf}", "events")
                       for p in packs for buf in p.buffers}

        def drain() -> None:
            if live is not None:
                live.consume()
            if bcc_polls:
                bpf.ring_buffer_consume()
            # work handed over (by the callbacks just run) before the bulk
            # drain began: what it depends on (a batch's stages, in another buffer) is then in
            ready = ctx.deferred_count()
            ctx.drain_bulk()
            ctx.run_deferred(ready)

        try:
            while not self._stop_event.is_set():
                if self._want_paused:
                    drain()
                    self._paused(switch, ctx, packs, bpf, target, deadline)
                    next_drain = next_sample = time.monotonic()
                    continue
                if main_polls:
                    # Packs submit most records without a wakeup (one per record would have the
                    # recorder preempt the server's threads all the time): a buffer wakes us only
                    # when it fills up; otherwise everything is drained at the first batch end of
                    # each poll interval (the batch buffer's wakeup), or on the timer. Under
                    # prism watch more batch ends wake us (those the detector must see at once):
                    # their buffer is consumed first, and the rest drained only once per interval.
                    set_priority(True)
                    ready = waiter.wait(max(next_drain - time.monotonic(), 0.0))
                    now = time.monotonic()
                    if ready and live is not None:
                        live.consume()
                    set_priority(False)
                    if ((ready and (now - last_drain >= poll_s or not live_fds.issuperset(ready)))
                            or now >= next_drain):
                        drain()
                        last_drain = now
                        if now >= next_drain or batch_wakeups:
                            next_drain = now + drain_gap_s
                else:
                    self._stop_event.wait(self.poll_interval_ms / 1000)
                    ctx.run_deferred()
                now = time.monotonic()
                if now >= next_sample:
                    ts = time.monotonic_ns()
                    for p in packs:
                        every = getattr(p, "sample_every_s", None)
                        if every is None or now >= next_pack_sample.get(p.name, 0.0):
                            p.sample(ctx, ts)
                            if every is not None:
                                next_pack_sample[p.name] = now + every
                    next_sample = now + self.sample_interval_s
                if now >= next_status:
                    # lost-event counters once a second (and when they change): reading a
                    # per-CPU map costs ~20 us
                    ts = time.monotonic_ns()
                    lost_now = {buf: _sum_percpu(bpf, lost_map) for p in packs for buf, lost_map in p.buffers.items()}
                    for buf, value in lost_now.items():
                        if lost_last.get(buf) != value:
                            writer.counter(lost_tracks[buf], ts, value)
                            lost_last[buf] = value
                    self._status_line(packs, sum(lost_now.values()))
                    next_status = now + 1.0
                if deadline is not None and now >= deadline:
                    self.stop("duration")
                elif not target.alive():
                    self.stop("target_exit")
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            waiter.close()
            control, self._control_fd = self._control_fd, None  # no _poke() writes to it from now on
            os.close(control)
            target.close()
            try:
                summary = self._finish(bpf, ctx, packs, report, t_start)
            finally:
                set_priority(False)
        return summary

    def _paused(self, switch: ProbeSwitch, ctx: RecordingContext, packs, bpf, target: TargetProcess,
                deadline: float | None) -> None:
        """Detach every probe, wait for resume() (or a stop), then attach them again."""
        t_pause = time.monotonic_ns()
        took = switch.detach()
        ctx.writer.instant(ctx.process_track, t_pause, "prismkit.paused", "metadata",
                           {"detach_ms": round(took * 1e3, 3)})
        self._log(f"paused: {len(switch.calls)} probes detached in {took * 1e3:.1f} ms (SIGUSR2 resumes)")
        self.pauses += 1
        fd = self._control_fd
        while self._want_paused and not self._stop_event.is_set():
            select.select([fd], [], [], 0.5)
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                self.stop("duration")
            elif not target.alive():
                self.stop("target_exit")
        t_resume = time.monotonic_ns()
        self.paused_ns += t_resume - t_pause
        if self._stop_event.is_set():
            return
        for p in packs:
            p.before_resume(bpf)
        took, failed = switch.attach()
        for p in packs:
            p.after_resume(bpf, ctx)
        for why in failed:
            self._log(f"NOT re-attached {why}")
        ctx.writer.instant(ctx.process_track, t_resume, "prismkit.resumed", "metadata",
                           {"attach_ms": round(took * 1e3, 3), "failed": "; ".join(failed)})
        self._log(f"resumed: {len(switch.calls)} probes attached in {took * 1e3:.1f} ms")

    def _status_line(self, packs, lost: int) -> None:
        if not self.verbose:
            return
        counts = {}
        for p in packs:  # the first two counts of each pack keep the line short
            counts.update(list({k: v for k, v in p.metadata().items() if isinstance(v, int)}.items())[:2])
        text = ", ".join(f"{k} {v}" for k, v in counts.items())
        print(f"\r[record] {text}, lost {lost}\033[K", end="", file=sys.stderr, flush=True)

    def _finish(self, bpf, ctx: RecordingContext, packs, report, t_start) -> RecordingSummary:
        reason = self._stop_reason or "error"
        if self.verbose:
            print(file=sys.stderr)
        if self._live is not None:
            self._live.close()  # its last records are consumed into ctx's deferred work
            self._live = None
        try:
            bpf.ring_buffer_consume()  # drain what is already in the buffers
        except Exception:
            pass
        try:
            ctx.drain_bulk()
        except Exception as exc:  # one pack's failure must not cost the trace
            self._log(f"final drain failed: {exc!r}")
        ctx.close_bulk()
        ctx.run_deferred()
        lost = {buf: _sum_percpu(bpf, m) for p in packs for buf, m in p.buffers.items()}
        events: dict[str, int] = {}
        for p in packs:
            try:
                p.finish(bpf, ctx)
            except Exception as exc:  # one pack's failure must not cost the trace
                self._log(f"pack {p.name} failed to finish: {exc}")
            events.update({k: v for k, v in p.metadata().items() if isinstance(v, int)})
        t_end = time.monotonic_ns()
        probe_cost = bpf_program_stats(bpf)
        stats = {"stop_reason": reason, "lost_events": sum(lost.values()), "duration_ns": t_end - t_start,
                 "pauses": self.pauses, "paused_ns": self.paused_ns,
                 **{f"lost_events.{k}": v for k, v in lost.items()}, **{f"events.{k}": v for k, v in events.items()},
                 **{f"bpf.{k}.run_cnt": v[0] for k, v in probe_cost.items()},
                 **{f"bpf.{k}.run_ns": v[1] for k, v in probe_cost.items()}}
        ctx.writer.instant(ctx.process_track, t_end, "prismkit.stats", "metadata", stats)
        ctx.writer.close()
        try:
            bpf.cleanup()
        except Exception:
            pass
        summary = RecordingSummary(str(self.output), (t_end - t_start) / 1e9, reason, events, lost,
                                   report.attached, report.failed, probe_cost)
        self._log(f"stopped ({reason}) after {summary.duration_s:.1f}s: "
                  + ", ".join(f"{k} {v}" for k, v in events.items())
                  + f"; lost events {sum(lost.values())}; trace: {self.output}")
        return summary


def _priority_switch(rt_priority: int | None, log: Callable[[str], None]) -> Callable[[bool], None]:
    """set(True): the calling thread at SCHED_FIFO rt_priority; set(False): back to SCHED_OTHER.
    No-ops without rt_priority, or once the kernel has refused it (said once)."""
    if not rt_priority:
        return lambda _rt: None
    tid = threading.get_native_id()
    fifo, other = os.sched_param(rt_priority), os.sched_param(0)
    state = {"rt": False, "ok": True}

    def set_priority(rt: bool) -> None:
        if rt == state["rt"] or not state["ok"]:
            return
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO if rt else os.SCHED_OTHER, fifo if rt else other)
            state["rt"] = rt
        except OSError as exc:
            state["ok"] = False
            log(f"the batch consumer stays SCHED_OTHER: {exc}")
    return set_priority


def _guarded(callback: Callable, log: Callable[[str], None]) -> Callable:
    """A ring-buffer callback that logs its first failures instead of raising into ctypes."""
    errors = 0

    def guarded(ctx, data, size) -> int:
        nonlocal errors
        try:
            callback(ctx, data, size)
        except Exception as exc:  # one bad record must not stop the recording
            errors += 1
            if errors <= 3:
                log(f"ring buffer callback failed: {exc!r}")
        return 0
    return guarded


def bpf_program_stats(bpf) -> dict[str, tuple[int, int]]:
    """Per BPF program: (run count, ns spent), from /proc/self/fdinfo; empty unless
    kernel.bpf_stats_enabled=1 (off by default: counting costs ~20 ns per run). This is the
    probes' own cost in the kernel, paid by the threads that hit them; uprobe traps
    (~1 us per hit, ~1.4 us with a return probe) come on top."""
    out = {}
    for name, fn in getattr(bpf, "funcs", {}).items():
        try:
            with open(f"/proc/self/fdinfo/{fn.fd}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
            cnt, ns = int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0))
        except (OSError, ValueError):
            continue
        if cnt:
            out[name.decode() if isinstance(name, bytes) else name] = (cnt, ns)
    return out


def _sum_percpu(bpf, name: str) -> int:
    try:
        table = bpf[name]
        return int(sum(table.sum(k).value for k in table.keys()))
    except Exception:
        return 0


def _build_id(target: TargetProcess) -> str:
    path = target.library("libllama")
    if not path:
        return ""
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            for note in ELFFile(f).get_section_by_name(".note.gnu.build-id").iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return f"{Path(path).name} build-id {note['n_desc']}"
    except Exception:
        pass
    return Path(path).name


def _version() -> str:
    from prismkit import __version__

    return __version__
