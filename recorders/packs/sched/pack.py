"""sched pack: off-CPU intervals of the target's threads (preempted vs blocked),
who ran instead, run-queue waits, per-thread scheduling totals, user page faults.

Trace output (docs/trace-format.md):
- slices `preempted` / `blocked` (category `sched`) on the track `sched <tid>`
  under each thread track, args `by_pid`, `by_comm` (the task that ran next on
  that CPU), `runq_wait_ns`, `cpu`;
- cumulative counters per thread (on the thread track, written when they
  change): `sched.oncpu_ns.<tid>`, `sched.preempted_ns.<tid>`,
  `sched.blocked_ns.<tid>`, `sched.runq_wait_ns.<tid>`, `sched.nivcsw.<tid>`,
  `faults.<tid>` (user page faults, where exceptions:page_fault_user exists);
- cumulative counters `sched.preemptor_ns.<comm>.<pid>` (process track): time
  that task held a CPU on which a target thread was waiting to run, for the
  top preemptors;
- at the end an instant `sched.summary` (category `metadata`) with the per-thread
  totals and the top preemptors.

Options (Recorder options / ctx.options): `min_offcpu_us` (default 0): off-CPU
intervals shorter than this are counted but not written as slices, except
preemptions by another process, which have their own limit `min_preempt_us`
(default 0: all written). Whatever is not written still counts in the
per-thread totals and the per-preemptor totals.
"""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path

from ...ringbuf import RingReader
from ...target import TargetProcess
from ...trace_writer import SEQ_NEEDS_INCREMENTAL_STATE, SEQUENCE_ID
from ..base import AttachReport, ProbePack, map_items
from .tracefs import tracepoint_exists, tracepoint_struct

try:  # a drain decoded and encoded in one C call (recorders/_encode.c)
    from ..._encode import encode_sched_events
except ImportError:  # pragma: no cover - built by setup.sh; record by record through TraceWriter.slice
    encode_sched_events = None

PREEMPTED, BLOCKED = 1, 2
REASON_NAMES = ("off_cpu", "preempted", "blocked")  # by reason; other values: off_cpu
TOP_PREEMPTORS = 10
# The preemptor map can hold hundreds of tasks: read it once a second (each map
# read briefly holds the kernel's per-CPU bpf_prog_active; see syscalls/pack.py).
PREEMPTORS_EVERY_NS = 1_000_000_000

_TRACEPOINTS = {  # macro -> (category, event, struct name, fields, program)
    "SCHED_HAVE_SWITCH": ("sched", "sched_switch", "sched_switch_args",
                          ("prev_comm", "prev_pid", "prev_state", "next_comm", "next_pid"), "sched_on_switch"),
    "SCHED_HAVE_WAKEUP": ("sched", "sched_wakeup", "sched_wakeup_args", ("pid", "target_cpu"), "sched_on_wakeup"),
    "SCHED_HAVE_WAKEUP_NEW": ("sched", "sched_wakeup_new", "sched_wakeup_new_args", ("pid", "target_cpu"),
                              "sched_on_wakeup_new"),
}
_THREAD_TOTALS = ("oncpu_ns", "preempted_ns", "blocked_ns", "runq_ns", "nivcsw", "nvcsw", "below_threshold")
_COUNTERS = (("oncpu_ns", "sched.oncpu_ns", "ns"), ("preempted_ns", "sched.preempted_ns", "ns"),
             ("blocked_ns", "sched.blocked_ns", "ns"), ("runq_ns", "sched.runq_wait_ns", "ns"),
             ("nivcsw", "sched.nivcsw", "switches"))


SCHED_EVENT = struct.Struct("<QQQIIII16s")  # struct sched_event (sched.bpf.c): ts_off, ts_on, runq_ns,
assert SCHED_EVENT.size == 56                 # tid, by_pid, cpu, reason, by_comm
_SLICE_ARGS = ("by_pid", "by_comm", "runq_wait_ns", "cpu")  # in encode_sched_events' order


def _prog_misses(bpf, fn: str) -> int | None:
    """recursion_misses of a loaded program (from its fdinfo), None if unknown."""
    try:
        func = bpf.funcs.get(fn.encode())
        if func is None:
            return None
        with open(f"/proc/self/fdinfo/{func.fd}") as f:
            for line in f:
                if line.startswith("recursion_misses:"):
                    return int(line.split()[1])
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


class SchedPack(ProbePack):
    name = "sched"
    bpf_file = Path(__file__).with_name("sched.bpf.c")
    buffers = {"sched_events": "sched_lost"}
    # per-thread totals and preemptors once a second (~300 us a read); the slices give
    # the fine-grained view
    sample_every_s = 1.0

    def __init__(self) -> None:
        self.events = 0
        self.by_reason = {PREEMPTED: 0, BLOCKED: 0}
        self._ctx = None
        self._bpf = None
        self._have: set[str] = set()        # macros whose tracepoint exists
        self._faults_attached = False
        self._sched_tracks: dict[int, int] = {}
        self._last: dict[str, int] = {}      # counter track name -> last value written
        self._exited: dict[int, dict] = {}   # totals of threads that exited (entries deleted in BPF)
        self._preemptor_tracks: set[int] = set()
        self._min_offcpu_us = 0
        self._min_preempt_us = 0
        self._last_preemptors = 0
        self._comms: dict[bytes, str] = {}
        self._skipped = 0                    # records of another size than struct sched_event
        self._encode_args: tuple | None = None  # encode_sched_events(raw, tracks, *these): iids, sequence

    # -- setup ---------------------------------------------------------------
    def bpf_text(self, target: TargetProcess, options: dict) -> str:
        self._min_offcpu_us = int(options.get("min_offcpu_us", 0) or 0)
        self._min_preempt_us = min(int(options.get("min_preempt_us", 0) or 0), self._min_offcpu_us)
        parts = [f"#define SCHED_MIN_OFFCPU_NS {self._min_offcpu_us * 1000}ULL",
                 f"#define SCHED_MIN_PREEMPT_NS {self._min_preempt_us * 1000}ULL"]
        self._have.clear()
        for macro, (cat, ev, struct, fields, _fn) in _TRACEPOINTS.items():
            text = tracepoint_struct(cat, ev, struct, fields)
            if text is None:
                continue
            self._have.add(macro)
            parts += [f"#define {macro} 1", text]
        return "\n".join(parts) + "\n" + self.bpf_file.read_text()

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        self._bpf = bpf
        # Known threads first, so that "preempted by another process" can tell
        # the target's own threads from the start.
        threads = bpf[b"sched_threads"]
        for tid in target.threads():
            key = threads.Key(tid)
            if key not in threads:
                leaf = threads.Leaf()
                leaf.verified = 1
                threads[key] = leaf
        for macro, (cat, ev, _struct, _fields, fn) in _TRACEPOINTS.items():
            what = f"sched: {cat}:{ev}"
            if macro not in self._have:
                report.failed.append((what, f"tracepoint {cat}:{ev} not found in tracefs (or lacks the fields used)"))
                continue
            try:
                bpf.attach_tracepoint(tp=f"{cat}:{ev}".encode(), fn_name=fn.encode())
            except Exception as exc:  # bcc raises plain Exception
                report.failed.append((what, f"attach failed: {str(exc).splitlines()[0]}"))
                continue
            extra = (f" (off-CPU slices >= {self._min_offcpu_us} us, preemptions by other processes "
                     f">= {self._min_preempt_us} us)") \
                if macro == "SCHED_HAVE_SWITCH" and self._min_offcpu_us else ""
            report.attached.append(f"{what} (tracepoint){extra}")
        if not tracepoint_exists("exceptions", "page_fault_user"):
            report.failed.append(("sched: exceptions:page_fault_user",
                                  "tracepoint not available on this kernel/arch; page faults come from /proc only"))
        else:
            try:
                bpf.attach_tracepoint(tp=b"exceptions:page_fault_user", fn_name=b"sched_on_page_fault")
                self._faults_attached = True
                report.attached.append("sched: exceptions:page_fault_user (tracepoint, per-thread user page faults)")
            except Exception as exc:
                report.failed.append(("sched: exceptions:page_fault_user",
                                      f"attach failed: {str(exc).splitlines()[0]}"))

    def start(self, bpf, ctx) -> None:
        self._ctx = ctx
        self._bpf = bpf
        ctx.open_bulk_buffer(bpf, "sched_events", self._drain)

    def before_resume(self, bpf) -> None:
        """Each thread's interval in progress is forgotten, its totals kept: the first switch
        after the pause starts afresh (no off-CPU interval or run-queue wait spans the gap)."""
        threads = bpf[b"sched_threads"]
        for tid, t in list(threads.items()):
            t.off = t.waiting = 0
            t.ts_off = t.ts_on = t.ts_wake = 0
            threads[tid] = t
        bpf[b"sched_cpus"].clear()  # a BPF array: every element zeroed

    # -- events --------------------------------------------------------------
    def _track(self, tid: int) -> int:
        uuid = self._sched_tracks.get(tid)
        if uuid is None:
            ctx = self._ctx
            uuid = self._sched_tracks[tid] = ctx.named_track(f"sched {tid}", parent=ctx.thread_track(tid))
        return uuid

    def _drain(self, reader: RingReader) -> None:
        raw = reader.drain_fixed(SCHED_EVENT.size)
        self._skipped = reader.skipped
        if raw:
            self._write_events(raw)

    def _write_events(self, raw: bytes) -> None:
        """One slice per record of a drain (the hottest path of the recorder: a thousand or
        more records a second on a busy host): decoded and encoded in one C call."""
        if encode_sched_events is None:
            self._write_events_one_by_one(raw)
            return
        writer = self._ctx.writer
        if self._encode_args is None:
            names, (category,), args = writer.intern(REASON_NAMES, ("sched",), _SLICE_ARGS)
            self._encode_args = (tuple(names), category, tuple(args), SEQUENCE_ID, SEQ_NEEDS_INCREMENTAL_STATE)
        out = encode_sched_events(raw, self._sched_tracks, *self._encode_args)
        if isinstance(out, list):  # threads without a track yet: nothing was written
            for tid in out:
                self._track(tid)
            out = encode_sched_events(raw, self._sched_tracks, *self._encode_args)
        data, counts = out
        writer.write_encoded(data, 2 * (len(raw) // SCHED_EVENT.size))
        self.events += len(raw) // SCHED_EVENT.size
        for reason, count in counts.items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count

    def _write_events_one_by_one(self, raw: bytes) -> None:
        """_write_events without the extension: a TraceWriter.slice call per record."""
        slice_ = self._ctx.writer.slice
        for ts_off, ts_on, runq_ns, tid, by_pid, cpu, reason, by_comm in SCHED_EVENT.iter_unpack(raw):
            self.events += 1
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
            comm = self._comms.get(by_comm)
            if comm is None:
                comm = self._comms[by_comm] = _comm(by_comm)
            slice_(self._sched_tracks.get(tid) or self._track(tid), ts_off, ts_on - ts_off,
                   REASON_NAMES[reason] if reason < len(REASON_NAMES) else "off_cpu", "sched",
                   {"by_pid": by_pid, "by_comm": comm, "runq_wait_ns": runq_ns, "cpu": cpu})

    # -- counters ------------------------------------------------------------
    def _counter(self, name: str, unit: str, parent: int | None, ts: int, value: int) -> None:
        if self._last.get(name) == value:
            return
        self._last[name] = value
        track = self._ctx.counter_track(name, unit, parent)
        self._ctx.writer.counter(track, ts, int(value))

    def thread_totals(self) -> dict[int, dict]:
        """tid -> totals (ns and counts) of the target's threads seen so far."""
        out = {tid: dict(v) for tid, v in self._exited.items()}
        if self._bpf is None:
            return out
        for k, v in map_items(self._bpf[b"sched_threads"]):
            if not v.verified:
                continue
            out[k] = {f: int(getattr(v, f)) for f in _THREAD_TOTALS}
            if v.exited:
                out[k]["exited"] = 1
        if self._faults_attached:
            for k, v in map_items(self._bpf[b"sched_faults"]):
                if k in out:
                    out[k]["faults"] = int(v)
        return out

    def preemptors(self) -> list[dict]:
        """Tasks that held a CPU while a target thread waited for it, most time first."""
        if self._bpf is None:
            return []
        rows = [{"pid": k, "tgid": v.tgid, "comm": _comm(bytes(v.comm)), "ns": int(v.ns),
                 "slices": int(v.slices), "target": v.tgid == self._ctx.target.pid if self._ctx else False}
                for k, v in map_items(self._bpf[b"sched_preemptors"])]
        rows.sort(key=lambda r: -r["ns"])
        return rows

    def sample(self, ctx, now_ns: int) -> None:
        if self._bpf is None:
            return
        # (Records the BPF side submitted without a wakeup are drained by the engine every
        # poll interval, before this runs.)
        totals = self.thread_totals()
        for tid, tot in totals.items():
            if tid in self._exited:
                continue
            parent = ctx.thread_track(tid)
            for key, name, unit in _COUNTERS:
                self._counter(f"{name}.{tid}", unit, parent, now_ns, tot[key])
            if "faults" in tot:
                self._counter(f"faults.{tid}", "faults", parent, now_ns, tot["faults"])
            if tot.get("exited"):  # last values written: free the BPF entry
                self._exited[tid] = tot
                try:
                    del self._bpf[b"sched_threads"][self._bpf[b"sched_threads"].Key(tid)]
                except KeyError:
                    pass
        if now_ns - self._last_preemptors < PREEMPTORS_EVERY_NS:
            return
        self._last_preemptors = now_ns
        rows = self.preemptors()
        self._preemptor_tracks.update(r["pid"] for r in rows[:TOP_PREEMPTORS])
        for row in rows:
            if row["pid"] in self._preemptor_tracks:
                self._counter(f"sched.preemptor_ns.{row['comm']}.{row['pid']}", "ns", ctx.process_track,
                              now_ns, row["ns"])

    def finish(self, bpf, ctx) -> None:
        now = time.monotonic_ns()
        self._last_preemptors = 0
        self.sample(ctx, now)
        args: dict = {"offcpu_events": self.events, "preempted_events": self.by_reason.get(PREEMPTED, 0),
                      "blocked_events": self.by_reason.get(BLOCKED, 0), "min_offcpu_us": self._min_offcpu_us,
                      "min_preempt_us": self._min_preempt_us,
                      # the recorder preempts the target too: name it so analysis can tell
                      "recorder_pid": os.getpid()}
        if self._skipped:
            args["skipped_records"] = self._skipped
        # Invocations the kernel skipped because another BPF program (or a map syscall
        # preempted while holding bpf_prog_active) was active on that CPU: intervals
        # merged or missed there.
        for _m, (_c, _e, _s, _f, fn) in _TRACEPOINTS.items():
            misses = _prog_misses(bpf, fn)
            if misses is not None:
                args[f"missed.{fn.removeprefix('sched_on_')}"] = misses
        for tid, tot in sorted(self.thread_totals().items()):
            for key, value in tot.items():
                args[f"thread.{tid}.{key}"] = value
        for i, row in enumerate(self.preemptors()[:20]):
            for key in ("pid", "tgid", "comm", "ns", "slices", "target"):
                args[f"preemptor.{i}.{key}"] = row[key]
        ctx.writer.instant(ctx.process_track, now, "sched.summary", "metadata", args)

    def metadata(self) -> dict:
        return {"offcpu_events": self.events}

