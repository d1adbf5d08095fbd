"""`prism watch`: record a live server and run the online detector on every batch as it completes.

Data path (one direction, the recorder is never blocked):

    recorder's polling thread, woken by the llama.cpp pack's batch buffer (at the batches
    that may be slow, and at drains), consumes that buffer before any other
        -> live observer: the online detector, inline (inline=True, the default),
           or queue.put(batch) to a detector thread (inline=False)
    detector: expected latency (WorkloadModel, no pandas)
        -> OnlineDetector.step() -> AlertManager: terminal / JSON lines / Prometheus inline,
           webhook and cause analysis on threads of their own
    main thread: the live view, signals, --follow-port

Without --model, the first `warmup_s` seconds of batches train a baseline
WorkloadModel (fitted on a thread of its own), saved next to the trace.
"""
from __future__ import annotations

import math
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prismkit.errors import PrismError
from recorders.packs.base import ProbePack
from recorders.packs.llama_cpp.pack import WOKE, LiveWake, shape_key

from .alerts import AlertManager, JsonlSink, Sink, TerminalSink, WebhookSink


@dataclass
class WatchConfig:
    pid: int
    output: str | os.PathLike = "out/watch.pftrace"
    model: str | os.PathLike | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    alerts_jsonl: str | os.PathLike | None = None
    webhook: str | None = None
    prometheus_port: int | None = None
    warmup_s: float = 30.0
    min_warmup_batches: int = 60
    follow_port: int | None = None
    follow_cmd: str | None = None                   # regex on the command line of the process to re-attach to
    follow_timeout_s: float = 120.0
    terminal_alerts: bool = True
    save_model: str | os.PathLike | None = None   # default: <output>.model.json when learned
    detector: dict = field(default_factory=dict)    # DetectorConfig overrides (k, m, n, ...)
    n_estimators: int = 150
    max_fit_batches: int = 4000                     # warm-up batches (evenly spaced) the baseline is fitted on
    nice: int | None = None                         # autogroup nice of the watcher itself (alert path under load)
    syscalls: bool = False                          # also the syscalls pack (off by default: its cost)
    # Drains of the ring buffers and samples of the counters, as prism record. Every 500 ms took the
    # watcher from ~9.4 to ~7-8 ms of CPU a second with no throughput gain the benchmark could see,
    # and the webhook's alert p99 went from 1.9 to 4.5 ms (one benchmark run each; likely the larger
    # drain right after the alarm batch, holding the GIL that the sink's thread needs): README.
    poll_ms: int = 200
    sample_ms: int = 200
    causes: bool = True
    rca: bool = False                               # also prismkit.rootcause on the growing trace (a worker process)
    resolve_after_s: float = 1.0                    # anomalies closer than this are one alert episode
    min_excess_ms: float = 2.0                      # alert once an anomaly has cost this much batch time
    min_slowdown: float = 0.10                      # alert on batches at least this much slower than expected,
                                                    # each (the detector's enter-limit floor, 0.05 offline) and
                                                    # over the episode: a 5-9% drift is not worth a page
    inline: bool = True                             # detect in the recorder's batch callback (else: a queue + thread)
    switch_interval_s: float | None = 0.001         # GIL switch interval: other threads give the recorder the GIL sooner
    live_rt_priority: int | None = None             # SCHED_FIFO for the recorder's batch consumer (None: normal; see cli)
    wake: str = "suspects"                          # which batches wake the detector at once: 'suspects' (those
                                                    # that may be slower than expected; the rest arrive in order
                                                    # at the next drain, poll_ms) or 'every' batch
    verbose: bool = True
    freeze_gc: bool = True                          # gc.freeze() once attached (see recorders.engine.Recorder)


class _WatchPack(ProbePack):
    """Not a probe: registers the batch observer and taps the http pack's finished requests."""

    name = "watch"

    def __init__(self, watcher: "Watcher") -> None:
        self.watcher = watcher

    def start(self, bpf, ctx) -> None:
        q = self.watcher._q
        put = q.put

        mono = time.monotonic_ns
        w = self.watcher

        if w.cfg.inline:
            def observe(batch: dict):
                # detection on the recorder's polling thread as the batch buffer is consumed: no
                # hand-off on the alert path
                batch["t_obs"] = mono()
                try:
                    w._handle(batch)
                except Exception as exc:  # never let detection break the recording
                    w._say(f"detector error: {exc!r}")
                return None
        else:
            def observe(batch: dict):
                batch["t_obs"] = mono()
                put(batch)
                return None

        # live observers see each batch as soon as its record is consumed, before it is written
        # (recorders/engine.py)
        ctx.live_observers.append(observe)
        self.watcher._bpf = bpf
        self.watcher._armed_ns = time.monotonic_ns()   # packs start once every probe is attached
        http = next((p for p in self.watcher._packs if p.name == "http"), None)
        if http is not None and hasattr(http, "_write"):
            orig = http._write

            def write(req, _orig=orig):
                _orig(req)
                try:
                    t = req.timings()
                    item = ("req", {"req_id": req.req_id, "ts_arrival": req.ts_arrival, "ts_end": req.ts_end, **t})
                    w._handle(item) if w.cfg.inline else put(item)
                except Exception:
                    pass

            http._write = write
        sched = next((p for p in self.watcher._packs if p.name == "sched"), None)
        history = self.watcher.sched_history
        if history is not None and sched is not None and hasattr(sched, "_write_events"):
            orig_events = sched._write_events

            def write_events(raw, _orig=orig_events, _add=history.add):
                _orig(raw)
                _add(raw)

            sched._write_events = write_events

    def after_resume(self, bpf, ctx) -> None:
        # (SIGUSR2 after SIGUSR1) as at the first attach: a batch that began while the probes were
        # being attached again ran slower for it (each uprobe attached takes the server's memory-map
        # lock and rewrites a code page; on the demo one such batch in 37 re-attaches took x1.46)
        self.watcher._armed_ns = time.monotonic_ns()


def _cmdline_pids(pattern: str) -> list[int]:
    """PIDs whose command line (arguments joined by spaces) matches the regex `pattern`, oldest first."""
    import re

    rx = re.compile(pattern)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
            start = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[19])
        except (OSError, ValueError, IndexError):
            continue
        if cmd and rx.search(cmd):
            found.append((start, int(name)))
    return [pid for _start, pid in sorted(found)]


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        out.add(pid)
    return out


def _listener_pid(port: int) -> int | None:
    """PID of a process listening on TCP `port` (IPv4 or IPv6), from /proc."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            for fd in os.listdir(f"/proc/{name}/fd"):
                try:
                    if os.readlink(f"/proc/{name}/fd/{fd}") in inodes:
                        return int(name)
                except OSError:
                    continue
        except OSError:
            continue
    return None


class Watcher:
    def __init__(self, config: WatchConfig, sinks: list[Sink] | None = None, log=None) -> None:
        self.cfg = config
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._log_fn = log
        self._bpf = None
        self._packs: list = []
        self.recorder = None
        self.traces: list[str] = []
        self.pid = config.pid
        self.model = None
        self.model_path: str | None = None
        self.detector = None
        self.state = "starting"      # 'warming_up' | 'fitting' | 'watching' | 'stopped'
        self.started = time.monotonic()
        self.first_batch_mono: float | None = None
        self.n_batches = 0
        self.n_tokens = 0
        self.n_requests = 0
        self.recent: deque = deque(maxlen=4096)         # (ts_end, dur, expected, n_tokens, mono)
        self.recent_req: deque = deque(maxlen=1024)
        self.ring: deque = deque(maxlen=256)            # recent batch dicts (affected slots)
        self._warm: list[dict] = []
        self._prev_tokens: dict = {}
        self._fit_thread: threading.Thread | None = None
        self.detect_ns: deque = deque(maxlen=100_000)   # detector-thread time per batch
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._undo_nice = None                    # undoes cfg.nice (set_cpu_weight)
        self.messages: deque = deque(maxlen=50)
        self.restarts = 0
        self._old_pids: set[int] = set()  # targets that exited (never re-attach to them)
        self._attach_failures: dict[int, int] = {}
        self._lost_total: dict[str, int] = {}
        self._wake = None                         # the llama_cpp pack's LiveWake, once the recorder runs
        self._armed_ns = 0                        # probes all attached (batches that began before are not judged)
        self.wake_exceeded = 0                    # batches beyond the enter limit while only suspects wake it ...
        self.wake_missed = 0                      # ... of which did not wake it (their shape's floor was too high)
        self.wake_counts: dict[int, list[int]] = {}   # LiveWake mode -> [batches, of which woke the detector]
        self._floors_learned: dict[int, float] | None = None   # shape floors from the warm-up, for the kernel

        from .metrics import WatchMetrics

        self.metrics = WatchMetrics(config.pid, self.lost_events)
        if sinks is None:
            sinks = []
            if config.terminal_alerts:
                sinks.append(TerminalSink(self._say))
            if config.alerts_jsonl:
                sinks.append(JsonlSink(config.alerts_jsonl))
            if config.webhook:
                sinks.append(WebhookSink(config.webhook, rt_priority=config.live_rt_priority))
        self.sinks = sinks
        causes = None
        self.sched_history = None                 # the sched pack's recent records, for the causes
        if config.causes:
            from .causes import SchedHistory, make_cause_fn

            self.sched_history = SchedHistory()
            causes = make_cause_fn(lambda: self.traces[-1] if self.traces else str(config.output), rca=config.rca,
                                   model_fn=lambda: self.model, sched=self.sched_history,
                                   batches_fn=self._batch_spans)
        self.alerts = AlertManager(sinks, config.pid, config.slo_ttft_ms, config.slo_tpot_ms,
                                   causes=causes, metrics=self.metrics, resolve_after_s=config.resolve_after_s,
                                   min_excess_ms=config.min_excess_ms, min_slowdown=config.min_slowdown)
        self._det_thread = threading.Thread(target=self._detector_loop, name="prism-detector", daemon=True)

    # -- messages --------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        self.messages.append(msg)
        if self._log_fn is not None:
            self._log_fn(msg)
        elif self.cfg.verbose:
            print(msg if msg.startswith("[watch]") else f"[watch] {msg}", file=sys.stderr, flush=True)

    def lost_events(self) -> dict[str, int]:
        from recorders.engine import _sum_percpu

        bpf = self._bpf
        cur = {}
        if bpf is not None:
            for p in self._packs:
                for buf, m in getattr(p, "buffers", {}).items():
                    cur[buf] = _sum_percpu(bpf, m)
        return {k: self._lost_total.get(k, 0) + cur.get(k, 0) for k in set(cur) | set(self._lost_total)}

    # -- model -------------------------------------------------------------------------
    def _use_model(self, model) -> None:
        from prismkit.detect.detector import DetectorConfig, OnlineDetector

        cfg = DetectorConfig().replace(**self.cfg.detector) if self.cfg.detector else DetectorConfig()
        if "min_limit" not in self.cfg.detector and self.cfg.min_slowdown > cfg.min_limit:
            cfg = cfg.replace(min_limit=self.cfg.min_slowdown)
        model.prepare_one()   # now, not at the first batch judged (~40 ms: the flat forest and its check)
        self.detector = OnlineDetector(model, cfg)
        self.model = model
        self.state = "watching"

    def _fit(self, batches: list[dict]) -> None:
        import pandas as pd

        from prismkit.detect.model import WorkloadModel

        try:  # the fit must not take the CPU from the server or the detector: lowest priority for this thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
        try:
            if len(batches) > self.cfg.max_fit_batches:   # evenly over the whole warm-up, not its tail
                keep = np.linspace(0, len(batches) - 1, self.cfg.max_fit_batches).astype(int)
                batches = [batches[i] for i in keep]
            df = pd.DataFrame(batches)
            t0 = time.monotonic()
            model = WorkloadModel(n_estimators=self.cfg.n_estimators).fit(df)
            path = self.cfg.save_model or str(Path(self.cfg.output).with_suffix("")) + ".model.json"
            model.save(path)
            self.model_path = str(path)
            cal = model.calibration_
            self._use_model(model)
            try:
                self._floors_learned = self._shape_floors(df, model)
            except Exception as exc:   # the shapes' floors are then learned as batches come
                self._say(f"could not set wake floors from the warm-up ({exc!r})")
            lim = self.detector.limits
            self._say(f"baseline learned from {len(df)} batches in {time.monotonic() - t0:.1f}s "
                      f"(out-of-fold MAPE {cal.get('oof_mape', float('nan')):.1%}; alarm above "
                      + ", ".join(f"{k} +{v.enter:.0%}" for k, v in lim.items() if k != "all")
                      + f"); saved {path}; watching")
        except Exception as exc:
            self.state = "warming_up"
            self._warm = batches[-20000:]
            self._say(f"baseline fit failed ({exc}); still learning")

    def _shape_floors(self, batches, model) -> dict[int, float]:
        """Per batch shape (the kernel's key), the shortest duration the detector could flag, from
        the warm-up's batches: SUSPECTS mode filters from the first watched batch on."""
        exp = model.predict(batches)
        phases = batches.get("phase", ["all"] * len(batches))
        out: dict[int, float] = {}
        for k, e, phase in zip(map(shape_key, batches["n_tokens"], batches["n_seqs"], batches["kv_tokens"]), exp, phases):
            f = self._wake_floor(e, phase)
            if f == f and f < out.get(k, math.inf):
                out[k] = float(f)
        return out

    def _batch_spans(self):
        """[start, end) of the recent batches, (n, 2) (the causes measure within them)."""
        import numpy as np

        return np.array([(end - dur, end) for end, dur, *_rest in list(self.recent)], dtype=np.int64).reshape(-1, 2)

    def _wake_floor(self, expected: float, phase) -> float:
        """The shortest duration the detector could flag for a batch expected to take `expected`."""
        return expected * (1.0 + self.detector._lim(phase).enter)

    # -- detector thread ----------------------------------------------------------------
    def _detector_loop(self) -> None:
        get = self._q.get
        while True:
            item = get()
            if item is None:
                return
            try:
                self._handle(item)
            except Exception as exc:  # keep watching
                self._say(f"detector error: {exc!r}")

    def _handle(self, item) -> None:
        t0 = time.monotonic_ns()
        if isinstance(item, tuple):
            self._on_request(item[1])
            return
        self._on_batch(item)
        self.detect_ns.append(time.monotonic_ns() - t0)

    def _on_request(self, r: dict) -> None:
        self.n_requests += 1
        self.recent_req.append(r)
        self.alerts.recent_requests.append(r)
        self.metrics.on_request(r)

    def _on_batch(self, b: dict) -> None:
        b["t_deq"] = time.monotonic_ns()
        dur = b["ts_end"] - b["ts_start"]
        if dur <= 0:
            return
        b["ts"], b["dur"] = b["ts_start"], dur
        self.n_batches += 1
        self.n_tokens += b.get("n_tokens") or 0
        now = time.monotonic()
        if self.first_batch_mono is None:
            self.first_batch_mono = now
        exp = v = None
        if b["ts_start"] < self._armed_ns:
            pass  # in flight while the probes were being attached, which slows it down: not judged or learned
        elif self.detector is not None:
            self.ring.append(b)
            v = self.detector.update(b)   # prismkit.detect's OnlineDetector: expected latency + control limits
            exp = v.expected
            if v.alarm is not None or v.flagged or v.closed is not None or self.alerts._pending is not None:
                self.alerts.on_verdict(v, b, self.ring)
            elif self.alerts.active is not None:
                self.alerts.tick()
        elif self.state == "warming_up":
            tid = b.get("tid", 0)   # the model's history feature, kept before the warm-up is thinned out
            b["prev_n_tokens"] = self._prev_tokens.get(tid, float("nan"))
            self._prev_tokens[tid] = float(b.get("n_tokens") or 0)
            self._warm.append(b)
            if (now - self.first_batch_mono >= self.cfg.warmup_s and len(self._warm) >= self.cfg.min_warmup_batches):
                self.state = "fitting"
                batches, self._warm = self._warm, []
                self._say(f"warm-up over: fitting the baseline on {len(batches)} batches")
                self._fit_thread = threading.Thread(target=self._fit, args=(batches,), name="prism-fit", daemon=True)
                self._fit_thread.start()
        self.recent.append((b["ts_end"], dur, exp, b.get("n_tokens") or 0, now))
        self.metrics.on_batch(b, exp)
        self._tune_wakeups(b, v)

    def _tune_wakeups(self, b: dict, v) -> None:
        """Which batches wake the detector at once (the llama_cpp pack's LiveWake).

        Each wakeup preempts one of the server's lockstep compute threads (the 2-core demo lost
        ~3% throughput to one per batch), yet only a batch that may be slower than expected needs
        the detector at once. So a batch wakes it only when it lasted at least its shape's floor:
        the shortest duration the detector could flag for that shape, expected x (1 + enter
        limit), the lowest seen for the shape (expected latency varies a few % within a shape; a
        3% margin below that doubled the wakeups and caught no more batches on the test
        recordings). The others are read in order at the next wakeup (the drain every poll_ms at
        the latest). Every batch wakes it while an anomaly has not yet cost enough to alert (any
        batch may cross the line); once alerted, updates and resolution can wait for a drain.
        While learning no batch needs to wake it, but while the baseline is being fitted each
        does: the first batches judged then reach the detector at once.
        """
        wake = self._wake
        if wake is None:
            llama = next((p for p in self._packs if p.name == "llama_cpp"), None)
            wake = self._wake = getattr(llama, "wake", None)
            if wake is None:
                return
        key = b.get("wake", 0)
        seen = self.wake_counts.setdefault(wake.mode, [0, 0])   # mode it was submitted under (or just before)
        seen[0] += 1
        if key & WOKE:
            seen[1] += 1
        if self._floors_learned is not None:      # from the warm-up, once the baseline is fitted
            floors, self._floors_learned = self._floors_learned, None
            for k, f in floors.items():
                wake.lower_floor(k, f)
        det = self.detector
        if det is None or v is None:
            # while the baseline is fitted every batch wakes it: the first one judged must not wait for a drain
            want = LiveWake.EVERY_BATCH if self.state == "fitting" or det is not None else LiveWake.DRAINS
        elif self.cfg.wake != "suspects" or det.cusum is not None or self.alerts._pending is not None:
            # (the opt-in CUSUM adds up small excesses: it sees each batch at once; an anomaly that has
            # not yet cost enough to alert may cross the line at any batch, slow or not)
            want = LiveWake.EVERY_BATCH
        else:
            want = LiveWake.SUSPECTS
        if v is not None and v.expected:
            if wake.mode == LiveWake.SUSPECTS and v.exceed:
                self.wake_exceeded += 1
                self.wake_missed += not key & WOKE
            wake.lower_floor(key, self._wake_floor(v.expected, b.get("phase", "all")))
        if want != wake.mode:
            wake.set(want)

    # -- recording -----------------------------------------------------------------------
    def _trace_path(self) -> Path:
        out = Path(self.cfg.output)
        if not self.traces:
            return out
        return out.with_name(f"{out.stem}.{len(self.traces)}{out.suffix}")

    def _start_recorder(self, pid: int) -> None:
        from recorders.engine import Recorder
        from recorders.packs import default_packs

        self._packs = default_packs(opt_in=["syscalls"] if self.cfg.syscalls else [])
        self._wake = None
        if self.sched_history is not None:
            self.sched_history.clear()
        packs = self._packs + [_WatchPack(self)]
        path = self._trace_path()
        self.recorder = Recorder(pid, path, packs=packs, verbose=False, poll_interval_ms=self.cfg.poll_ms,
                                 rt_priority=self.cfg.live_rt_priority, freeze_gc=self.cfg.freeze_gc,
                                 sample_interval_s=self.cfg.sample_ms / 1000)
        self.recorder.start_background()
        self.traces.append(str(path))
        self.pid = pid
        self.alerts.pid = pid
        self.metrics.target_pid.set(pid)

    def start(self) -> "Watcher":
        if self.cfg.switch_interval_s:
            sys.setswitchinterval(self.cfg.switch_interval_s)
        if self.cfg.nice is not None:
            # Before any thread starts, so that where the weight is per thread (no autogroup) they inherit it.
            # An autogroup is the whole session's (the shell that started us too): stop() undoes it.
            from prismkit.target.priority import set_cpu_weight

            self._undo_nice = set_cpu_weight(os.getpid(), self.cfg.nice)
            if self._undo_nice is None:
                self._say(f"could not set the watcher's CPU weight to nice {self.cfg.nice} (not allowed?); "
                          "watching at the default")
        if self.cfg.model:
            from prismkit.detect.model import WorkloadModel

            self._use_model(WorkloadModel.load(self.cfg.model))
            self.model_path = str(self.cfg.model)
            self._say(f"baseline model {self.cfg.model}: watching from the first batch")
        else:
            self.state = "warming_up"
            self.metrics.warmup.set(1)
            self._say(f"no --model: learning a baseline from the first {self.cfg.warmup_s:g}s of batches "
                      f"(at least {self.cfg.min_warmup_batches}); the load should be normal meanwhile")
        if self.cfg.prometheus_port is not None:
            port = self.metrics.serve(self.cfg.prometheus_port)
            self._say(f"Prometheus metrics on http://127.0.0.1:{port}/metrics")
        self._det_thread.start()
        self._start_recorder(self.pid)
        self._say(f"watching PID {self.pid}; trace {self.traces[-1]}")
        return self

    def recorder_alive(self) -> bool:
        t = getattr(self.recorder, "_thread", None)
        return t is not None and t.is_alive()

    def _finish_recorder(self, reason: str):
        rec = self.recorder
        if rec is None:
            return None
        lost_now = self.lost_events()
        rec.stop(reason)
        try:
            summary = rec.join(30)
        except Exception as exc:
            self._say(f"recorder error: {exc}")
            summary = None
        self._lost_total = lost_now if summary is None else {
            k: self._lost_total.get(k, 0) + v for k, v in summary.lost.items()} | {
            k: v for k, v in self._lost_total.items() if k not in summary.lost}
        self._bpf = None
        return summary

    def poll(self) -> bool:
        """Main-thread housekeeping; False once the session is over."""
        if self._stop.is_set():
            return False
        self.alerts.tick()
        self.metrics.flush()
        if self.recorder is not None and not self.recorder_alive():
            summary = self._finish_recorder("target_exit")
            reason = summary.stop_reason if summary else "error"
            if (self.cfg.follow_port or self.cfg.follow_cmd) and reason == "target_exit":
                return self._follow()
            self.stop_reason = reason
            self.recorder = None
            return False
        return True

    def _successors(self) -> list[int]:
        """Processes to re-attach to, best first: the one listening on follow_port, or those whose
        command line matches follow_cmd, newest first (never the PIDs that exited, nor our ancestors,
        whose command lines may carry the pattern)."""
        if self.cfg.follow_port:
            pid = _listener_pid(self.cfg.follow_port)
            return [pid] if pid is not None and pid != self.pid else []
        skip = self._old_pids | _ancestors()
        return [p for p in reversed(_cmdline_pids(self.cfg.follow_cmd))
                if p not in skip and self._attach_failures.get(p, 0) < 3]

    def _follow(self) -> bool:
        what = (f"a new process listening on port {self.cfg.follow_port}" if self.cfg.follow_port
                else f"a new process whose command line matches {self.cfg.follow_cmd!r}")
        self._say(f"target PID {self.pid} exited; waiting up to {self.cfg.follow_timeout_s:g}s for {what}")
        self._old_pids.add(self.pid)
        deadline = time.monotonic() + self.cfg.follow_timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            for pid in self._successors():
                time.sleep(0.5)  # let it map its libraries
                try:
                    self._start_recorder(pid)
                except PrismError as exc:
                    self._attach_failures[pid] = self._attach_failures.get(pid, 0) + 1
                    self._say(f"could not attach to PID {pid} yet: {exc}")
                    time.sleep(0.5)
                    continue
                self.restarts += 1
                how = (f"listening on port {self.cfg.follow_port}" if self.cfg.follow_port
                       else f"matching {self.cfg.follow_cmd!r}")
                self._say(f"re-attached to PID {pid} {how}; trace continues in {self.traces[-1]}")
                return True
            time.sleep(0.2)
        self.stop_reason = "target_exit"
        self.recorder = None
        return False

    def stop(self, reason: str = "requested") -> dict:
        self._stop.set()
        if self.stop_reason is None:
            self.stop_reason = reason
        self._finish_recorder(reason)
        self.recorder = None
        self._q.put(None)
        if self._det_thread.ident is not None:   # stop() also runs when start() failed before starting it
            self._det_thread.join(10)
        self.alerts.close_now()   # an episode still open at the end is resolved with the session
        self.alerts.close()
        if self._undo_nice is not None:
            self._undo_nice()
            self._undo_nice = None
        self.state = "stopped"
        self.metrics.flush()
        self.metrics.close()
        return self.summary()

    # -- numbers for the view and the summary ------------------------------------------------
    def stats(self, window_s: float = 5.0) -> dict:
        now = time.monotonic()
        rec = [r for r in list(self.recent) if now - r[4] <= window_s]
        span = min(window_s, now - (self.first_batch_mono or now)) or 1.0
        durs = np.array([r[1] for r in rec], dtype=np.float64) / 1e6
        exps = np.array([r[2] for r in rec if r[2] is not None], dtype=np.float64) / 1e6
        reqs = list(self.recent_req)[-200:]
        ttft = np.array([r["ttft_ns"] for r in reqs if r.get("ttft_ns")], dtype=np.float64) / 1e6
        tpot = np.array([r["tpot_ns"] for r in reqs if r.get("tpot_ns")], dtype=np.float64) / 1e6

        def q(a, p):
            return float(np.percentile(a, p)) if len(a) else float("nan")

        return {"state": self.state, "batches": self.n_batches, "requests": self.n_requests,
                "batches_per_s": len(rec) / span, "tokens_per_s": sum(r[3] for r in rec) / span,
                "p50_ms": q(durs, 50), "p99_ms": q(durs, 99), "exp_p50_ms": q(exps, 50), "exp_p99_ms": q(exps, 99),
                "ttft_p50_ms": q(ttft, 50), "ttft_p99_ms": q(ttft, 99), "tpot_p50_ms": q(tpot, 50),
                "tpot_p99_ms": q(tpot, 99), "alert": self.alerts.active,
                "episodes": len(self.alerts.episodes), "lost": sum(self.lost_events().values())}

    def summary(self) -> dict:
        lat = {}
        for s in self.sinks:
            ms = s.latencies_ms("opened")
            if ms:
                lat[s.name] = {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                               "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(max(ms))}
        det = np.array(self.detect_ns, dtype=np.float64) / 1e6
        return {"pid": self.pid, "traces": self.traces, "stop_reason": self.stop_reason,
                "duration_s": time.monotonic() - self.started, "batches": self.n_batches,
                "tokens": self.n_tokens, "requests": self.n_requests, "model": self.model_path,
                "episodes": [{k: d[k] for k in ("alert_id", "status", "start_ns", "end_ns", "duration_ms",
                                                "observed_ms", "expected_ms", "slowdown", "causes")}
                             for d in self.alerts.episodes],
                "alert_latency_ms": lat, "suppressed_below_min_excess": self.alerts.suppressed,
                "lost_events": self.lost_events(), "restarts": self.restarts,
                "woke_detector": sum(woke for _n, woke in self.wake_counts.values()), "woke_missed": self.wake_missed,
                "woke_by_mode": {LiveWake.MODE_NAMES.get(k, str(k)): list(v) for k, v in self.wake_counts.items()},
                "detector_ms_p50": float(np.percentile(det, 50)) if len(det) else None,
                "detector_ms_p99": float(np.percentile(det, 99)) if len(det) else None,
                "detector_ms_mean": float(det.mean()) if len(det) else None,
                "causes_cpu_ms": {kind: [ns / 1e6 for k, ns in self.alerts.causes_cpu_ns if k == kind]
                                  for kind in ("open", "grow", "final")}}


# -- command line --------------------------------------------------------------------------
def _fmt(x: float, unit: str = "ms") -> str:
    return "-" if x != x else f"{x:.1f}{unit}"


def status_text(st: dict, cfg: WatchConfig) -> str:
    slo_t = f"/{cfg.slo_ttft_ms:g}" if cfg.slo_ttft_ms else ""
    slo_p = f"/{cfg.slo_tpot_ms:g}" if cfg.slo_tpot_ms else ""
    alert = st["alert"]
    a = f"ALERT {alert['id']}" if alert else "ok"
    return (f"{st['state']:<10} {st['batches_per_s']:6.1f} batch/s {st['tokens_per_s']:7.1f} tok/s | batch p50 "
            f"{_fmt(st['p50_ms'])} (exp {_fmt(st['exp_p50_ms'])}) p99 {_fmt(st['p99_ms'])} "
            f"(exp {_fmt(st['exp_p99_ms'])}) | TTFT p99 {_fmt(st['ttft_p99_ms'])}{slo_t} TPOT p99 "
            f"{_fmt(st['tpot_p99_ms'])}{slo_p} | {a} | episodes {st['episodes']} lost {st['lost']}")


def run_watch(cfg: WatchConfig, live: bool | None = None, status_every_s: float = 1.0) -> int:
    """The `prism watch` loop: start, show the live view, stop cleanly on Ctrl-C/SIGTERM."""
    live = sys.stderr.isatty() if live is None else live
    console = None
    if live:
        from rich.console import Console

        console = Console(stderr=True)
    stop_sig: list[str] = []
    stopping = threading.Event()   # set by the signal handler: the main thread's waits end at once

    def on_signal(signum, _frame):
        stop_sig.append("sigint" if signum == signal.SIGINT else "sigterm")
        stopping.set()

    def on_pause(signum, _frame):  # as prism record: SIGUSR1 detaches the probes, SIGUSR2 attaches them
        rec = w.recorder
        if rec is not None:
            rec.pause() if signum == signal.SIGUSR1 else rec.resume()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    w = Watcher(cfg, log=(lambda m: console.print(m if m.startswith("[watch]") else f"[watch] {m}",
                                                  markup=False, highlight=False)) if console else None)
    old.update({s: signal.signal(s, on_pause) for s in (signal.SIGUSR1, signal.SIGUSR2)})
    try:
        w.start()
        next_status = time.monotonic() + status_every_s
        if console is not None:
            from rich.live import Live
            from rich.text import Text

            # (refreshed by this loop, not rich's own thread: each wakeup takes the GIL from the recorder)
            with Live(Text(""), console=console, auto_refresh=False, transient=True) as view:
                while not stop_sig and w.poll():
                    view.update(Text(status_text(w.stats(), cfg)), refresh=True)
                    stopping.wait(0.5)
        else:
            # housekeeping twice a second: the main thread's wakeups cost the recorder more than
            # their own work (~0.1 ms each, taking the GIL back and forth; 10 a second were
            # ~1.4 ms of CPU a second under load)
            while not stop_sig and w.poll():
                stopping.wait(0.5)
                if time.monotonic() >= next_status and cfg.verbose:
                    print("[watch] " + status_text(w.stats(), cfg), file=sys.stderr, flush=True)
                    next_status = time.monotonic() + status_every_s
    finally:
        summary = w.stop(stop_sig[0] if stop_sig else (w.stop_reason or "requested"))
        for s, h in old.items():
            signal.signal(s, h)
    print_summary(summary)
    return 0


def print_summary(s: dict) -> None:
    print(f"prism watch: stopped ({s['stop_reason']}) after {s['duration_s']:.1f}s: {s['batches']} batches, "
          f"{s['tokens']} tokens, {s['requests']} requests, {len(s['episodes'])} anomaly episodes, "
          f"lost events {sum(s['lost_events'].values())}, target restarts {s['restarts']}")
    for e in s["episodes"]:
        # (the same cause can come from two sources, e.g. a stall seen in /proc and in the sched records)
        causes = ", ".join(list(dict.fromkeys(c["cause"] for c in (e.get("causes") or [])))[:3]) or "-"
        print(f"  {e['alert_id']} {e['status']}: {e['duration_ms']:.0f} ms, observed {e['observed_ms']:.1f} ms vs "
              f"expected {e['expected_ms']:.1f} ms (x{e['slowdown']:.2f}); causes: {causes}")
    for name, lat in s["alert_latency_ms"].items():
        print(f"  alert path to {name}: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms (n={lat['n']})")
    if s.get("detector_ms_p50") is not None:
        print(f"  detector per batch: p50 {s['detector_ms_p50']:.3f} ms, p99 {s['detector_ms_p99']:.3f} ms, "
              f"mean {s['detector_ms_mean']:.3f} ms")
    runs = [(kind, ms) for kind, v in (s.get("causes_cpu_ms") or {}).items() for ms in v]
    if runs:
        print(f"  cause analysis: {len(runs)} runs, {sum(ms for _k, ms in runs):.1f} ms of CPU ("
              + ", ".join(f"{kind} {np.mean(v):.1f} ms" for kind, v in s["causes_cpu_ms"].items() if v) + " each)")
    if s["batches"]:
        print(f"  batches that woke the detector at once: {s['woke_detector']} of {s['batches']} "
              f"({s['woke_detector'] / s['batches']:.0%}); beyond the enter limit without waking it: {s['woke_missed']}")
    if s.get("model"):
        print(f"  baseline model: {s['model']}")
    print(f"  trace: {', '.join(s['traces'])}  (open in https://ui.perfetto.dev)", flush=True)
