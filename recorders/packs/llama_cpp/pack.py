"""llama.cpp probe pack: batches (llama_decode) and their inner stages.

Which functions llama-server really calls (checked on the pinned build):
- every engine step is one `llama_decode(ctx, batch)` in libllama;
- graph compute: `ggml_backend_sched_graph_compute_async` in libggml-base
  (one call per micro-batch, inside llama_decode);
- sampling: the server's own wrapper `common_sampler_sample` in libllama-common
  (one call per sampled sequence, after llama_decode), else `llama_sampler_sample`;
- tokenization: `common_tokenize(const llama_vocab *, ...)` (on HTTP threads);
- detokenization: `common_token_to_piece(const llama_vocab *, ...)` (per token);
- `llama_synchronize` (waits for the backend after a decode with outputs): probed only
  where a GPU or remote backend is mapped. On a CPU-only build graph compute is synchronous
  and the call returns at once (1-2 us), yet it came ~5 times per batch: its probes were
  ~0.4 ms of the engine thread's time a second at the demo load.
Newer llama.cpp servers call `llama_process` on an opaque batch instead of
llama_decode; that build is reported as unsupported (no batch attributes).

Stage calls shorter than `min_stage_us` (default 10; `prism record --min-stage-us`)
are counted and timed in the kernel, not written as slices: llama_synchronize and
common_token_to_piece take 1-2 us and were 60% of the stage records. The metadata's
`stage.<name>` counts the written slices and `stage.<name>.short` the other calls; an instant
`llama_cpp.short_stages` (category metadata) at the end gives their calls and total ns.
Their time still reaches the batches: each thread sums its short calls (those not nested
in another stage call) per stage, and its next llama_decode slice carries the sums as
`gap_short_ns.<stage>` (since the thread's previous decode returned: the previous step's
sampling and detokenization) and `short_ns.<stage>` (inside the call), with `gap_short_end`.

Batch records go to a ring buffer of their own, which the recorder's polling thread consumes
first when live observers wait for batches (`prism watch`), else with the other buffers. When
a record wakes that thread is LiveWake's business: at drains only (`prism record`), at every
batch, or (`prism watch`) only at batches that lasted at least their shape's floor, which
the online detector sets per shape key (`shape_key`, computed in the kernel too).
"""
from __future__ import annotations

import ctypes as ct
import struct
import time
from dataclasses import dataclass
from typing import Sequence
from pathlib import Path

from ...target import TargetProcess
from ..base import AttachReport, ProbePack, Uprobe, attach_uprobe

# Stages that run on the engine loop thread, around or inside llama_decode.
ENGINE_LOOP_STAGES = {"graph_compute", "sample", "detokenize", "synchronize"}
STAGES = {  # stage id -> (stage name, probe spec)
    1: ("graph_compute", Uprobe("graph_compute", "libggml-base", ("ggml_backend_sched_graph_compute_async",))),
    2: ("sample", Uprobe("sample", "libllama-common",
                         (r"_Z21common_sampler_sampleP14common_samplerP13llama_contextib",
                          r"_Z21common_sampler_sample.*"))),
    3: ("tokenize", Uprobe("tokenize", "libllama-common", (r"_Z15common_tokenizePK11llama_vocab.*",))),
    4: ("detokenize", Uprobe("detokenize", "libllama-common", (r"_Z21common_token_to_piece.*PK11llama_vocab.*",))),
    5: ("synchronize", Uprobe("synchronize", "libllama", ("llama_synchronize",))),
}
# Where the server binary links the common helpers statically, look in the executable.
FALLBACK_LIBRARY = {"libllama-common": "exe"}
FALLBACK_SYMBOLS = {2: ("libllama", ("llama_sampler_sample",)), 3: ("libllama", ("llama_tokenize",)),
                    4: ("libllama", ("llama_token_to_piece",))}

# Stages that only measure something with an asynchronous backend: probed where one is mapped.
ASYNC_BACKEND_STAGES = {5}
ASYNC_BACKEND_LIBRARIES = ("libggml-cuda", "libggml-hip", "libggml-musa", "libggml-vulkan", "libggml-sycl",
                           "libggml-opencl", "libggml-cann", "libggml-metal", "libggml-rpc", "libcuda",
                           "libamdhip64", "libvulkan", "libOpenCL")


def async_backend(target: TargetProcess) -> str | None:
    """The first mapped library of a GPU or remote ggml backend (or its runtime), else None."""
    return next((lib for lib in ASYNC_BACKEND_LIBRARIES if target.library(lib)), None)


DEFAULT_MIN_STAGE_US = 10
DECODE = Uprobe("llama_decode", "libllama", ("llama_decode",), entry="llama_decode_enter",
                ret="llama_decode_return", reads=("sp",))


# a stage record, struct llama_stage_event: ts_start, ts_end, tid, kind
STAGE_HEAD = struct.Struct("=QQII")
SLOTS = 8  # LLAMA_SLOTS: stage ids 1..7
assert max(STAGES) < SLOTS


class LlamaEvent(ct.Structure):
    _fields_ = [
        ("ts_start", ct.c_uint64), ("ts_end", ct.c_uint64), ("tid", ct.c_uint32), ("kind", ct.c_uint32),
        ("n_tokens", ct.c_int32), ("n_seqs", ct.c_int32), ("n_prefill_tokens", ct.c_int32),
        ("n_decode_tokens", ct.c_int32), ("kv_tokens", ct.c_int64), ("n_outputs", ct.c_int32),
        ("ret", ct.c_int32), ("truncated", ct.c_uint32), ("seq_mask_lo", ct.c_uint32),
        ("prefill_mask_lo", ct.c_uint32), ("wake", ct.c_uint32), ("gap_short_end", ct.c_uint64),
        ("gap_short_ns", ct.c_uint32 * SLOTS), ("short_ns", ct.c_uint32 * SLOTS),
    ]


assert ct.sizeof(LlamaEvent) == 144

WOKE = 0x80000000      # LlamaEvent.wake: this batch's record woke the consumer
SHAPE_KEY = 0x7FFFFFFF  # LlamaEvent.wake: the batch's shape key (llama_shape_key in the BPF file)


def shape_key(n_tokens: int, n_seqs: int, kv_tokens: int) -> int:
    """The kernel's shape key of a batch (llama_shape_key in the BPF file, bit for bit)."""
    n = max(int(n_tokens), 0)
    tok = min(n if n < 64 else 64 + (n >> 6), 255)
    seqs = min(max(int(n_seqs), 0), 63)
    kv = min(max(int(kv_tokens), 0) >> 6, 4095)
    return tok | (seqs << 8) | (kv << 14)


class LiveWake:
    """When the batch buffer wakes its live consumer (llama_wake and llama_wake_floor in the BPF file).

    Modes: DRAINS (only min_gap_ms after the last wakeup, at a batch end), EVERY_BATCH, and
    SUSPECTS: a batch wakes the consumer only when it lasted at least its shape's floor, or
    its shape has none yet. An online detector sets each shape's floor to the
    shortest duration it could flag (``lower_floor``); the other batches reach it in order
    at the next wakeup, so it still sees every batch, and the per-batch wakeups (each one
    preempts a compute thread of the server) are gone for the batches that are as fast as
    expected. Every mode also wakes min_gap_ms after the last wakeup.
    """

    DRAINS, EVERY_BATCH, SUSPECTS = 0, 1, 2
    MODE_NAMES = {DRAINS: "drains", EVERY_BATCH: "every_batch", SUSPECTS: "suspects"}

    def __init__(self, bpf, mode: int = DRAINS, min_gap_ms: float = 0) -> None:
        self._wake = bpf["llama_wake"]
        self._floor = bpf["llama_wake_floor"]
        self.floors: dict[int, int] = {}   # shape key -> floor (ns), as written to the kernel
        self.mode = -1
        self.min_gap_ms = min_gap_ms
        self.set(mode, min_gap_ms)

    def set(self, mode: int, min_gap_ms: float | None = None) -> None:
        if min_gap_ms is not None:
            self.min_gap_ms = min_gap_ms
        leaf = self._wake.Leaf()
        leaf.mode = mode
        leaf.min_gap_ns = max(int(self.min_gap_ms * 1e6), 0)
        self._wake[ct.c_int(0)] = leaf      # (resets 'last': at worst one early wakeup)
        self.mode = mode

    def lower_floor(self, key: int, floor_ns: float) -> bool:
        """Make batches of shape `key` lasting at least floor_ns wake the consumer (if that is
        lower than the floor the shape has). True when the kernel's table changed."""
        key &= SHAPE_KEY
        floor = max(int(floor_ns), 1)
        old = self.floors.get(key)
        if old is not None and floor >= old:
            return False
        try:
            self._floor[ct.c_uint32(key)] = ct.c_uint64(floor)
        except Exception:   # table full: the shape keeps waking the consumer at every batch
            return False
        self.floors[key] = floor
        return True


@dataclass(eq=False, slots=True)
class _Stage:
    ts: int
    dur: int
    name: str
    category: str = "stage"
    args: dict | None = None
    end_args: dict | None = None
    flow_ids: Sequence[int] = ()


def write_nested(writer, track: int, slices: list[_Stage]) -> None:
    """Write properly nested slices of one track with every BEGIN and END in time order.

    Writing slices whole, one after another, would put a child's BEGIN after its
    parent's END whenever the child starts later; a stack keeps the order.
    """
    open_ends: list[_Stage] = []
    for s in sorted(slices, key=lambda s: (s.ts, -s.dur)):
        while open_ends and open_ends[-1].ts + open_ends[-1].dur <= s.ts:
            done = open_ends.pop()
            writer.end(track, done.ts + done.dur, done.end_args)
        writer.begin(track, s.ts, s.name, s.category, s.args, s.flow_ids)
        open_ends.append(s)
    while open_ends:
        done = open_ends.pop()
        writer.end(track, done.ts + done.dur, done.end_args)


def phase_of(n_prefill: int, n_decode: int) -> str:
    if n_prefill and n_decode:
        return "mixed"
    return "prefill" if n_prefill else "decode"


class LlamaCppPack(ProbePack):
    name = "llama_cpp"
    calls_batch_observers = True  # it reports each batch to ctx.batch_observers (flows)
    engine = True  # an engine pack: recording needs at least one that applies
    library_hint = "libllama"
    bpf_file = Path(__file__).with_name("llama_cpp.bpf.c")
    buffers = {"llama_events": "llama_lost", "llama_stage_events": "llama_stage_lost"}
    state_maps = ("llama_open_batch", "llama_threads")

    def __init__(self) -> None:
        self.batches = 0
        self.stage_counts: dict[str, int] = {}
        self.short_stages: dict[str, tuple[int, int]] = {}  # name -> (calls, ns) not written
        self.min_stage_us = DEFAULT_MIN_STAGE_US
        self._bpf = None
        self._pending: dict[int, list[_Stage]] = {}  # tid -> stage slices not yet written
        self._decode_tids: set[int] = set()
        self._ctx = None
        self._n_tokens_track = self._kv_track = self._seqs_track = None
        self._last_n_tokens = self._last_n_seqs = None

    def applies_to(self, target: TargetProcess) -> bool:
        return target.library("libllama") is not None

    def bpf_text(self, target: TargetProcess, options: dict) -> str:
        programs = " ".join(f"LLAMA_STAGE({n})" for n in STAGES)
        self.min_stage_us = int(options.get("min_stage_us", DEFAULT_MIN_STAGE_US) or 0)
        return (f"#define LLAMA_MIN_STAGE_NS {self.min_stage_us * 1000}ULL\n"
                + self.bpf_file.read_text().replace("LLAMA_STAGE_PROGRAMS", programs))

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        from bcc import BPF

        progs = bpf["llama_progs"]
        for slot, fn in enumerate(("llama_tokens_chunk", "llama_batch_fold")):
            progs[ct.c_int(slot)] = ct.c_int(bpf.load_func(fn, BPF.KPROBE).fd)
        if not attach_uprobe(bpf, target, DECODE, report):
            from prismkit.errors import PrismError
            why = report.failed[-1][1]
            lib = target.library("libllama") or "libllama"
            from ...elf import find_symbol
            if find_symbol(lib, "llama_process"):
                why += " (this llama.cpp calls llama_process with an opaque batch: not supported yet)"
            raise PrismError(f"cannot probe llama_decode: {why}")
        backend = async_backend(target)
        for stage_id, (stage, spec) in STAGES.items():
            if stage_id in ASYNC_BACKEND_STAGES and backend is None:
                report.failed.append((stage, "not probed: CPU-only build (no GPU or remote ggml backend "
                                             "mapped), where it returns at once"))
                continue
            probe = Uprobe(stage, spec.library, spec.symbols, entry=f"llama_stage_enter_{stage_id}",
                           ret=f"llama_stage_return_{stage_id}")
            sub = AttachReport()
            ok = attach_uprobe(bpf, target, probe, sub)
            if not ok and spec.library in FALLBACK_LIBRARY:
                sub = AttachReport()
                ok = attach_uprobe(bpf, target, Uprobe(stage, FALLBACK_LIBRARY[spec.library], spec.symbols,
                                                       probe.entry, probe.ret), sub)
            if not ok and stage_id in FALLBACK_SYMBOLS:
                lib, syms = FALLBACK_SYMBOLS[stage_id]
                sub = AttachReport()
                ok = attach_uprobe(bpf, target, Uprobe(stage, lib, syms, probe.entry, probe.ret), sub)
            report.attached += sub.attached
            report.failed += sub.failed

    def start(self, bpf, ctx) -> None:
        self._ctx = ctx
        self._bpf = bpf
        self._n_tokens_track = ctx.writer.counter_track("batch.n_tokens", ctx.process_track, "tokens")
        self._kv_track = ctx.writer.counter_track("batch.kv_tokens", ctx.process_track, "tokens")
        self._seqs_track = ctx.writer.counter_track("batch.n_seqs", ctx.process_track, "sequences")
        ctx.open_bulk_buffer(bpf, "llama_stage_events", self._drain_stages)
        ctx.open_ring_buffer(bpf, "llama_events", self._on_record, live=True)

    def set_live(self, bpf, live: bool, drain_gap_ms: int = 0) -> None:
        """Wake the consumer at every finished batch when live observers wait for it; else
        (drain_gap_ms > 0) at the first batch end drain_gap_ms after the last wakeup. A live
        observer may narrow this down later through ``self.wake`` (LiveWake)."""
        self.wake = LiveWake(bpf, LiveWake.EVERY_BATCH if live else LiveWake.DRAINS, drain_gap_ms)

    def _on_record(self, _cpu, data, _size) -> None:
        """On the engine's polling thread: copy the record, show the batch to the live observers
        (the online detector) at once, and leave the writing to the next drain."""
        ev = LlamaEvent()  # (this buffer holds batches only: stages have llama_stage_events)
        ct.memmove(ct.addressof(ev), data, ct.sizeof(LlamaEvent))
        self.batches += 1
        seen = args = None
        if self._ctx.live_observers:  # (with none, the writing thread builds it)
            args = self._batch_args(ev, self.batches)
            seen = self._seen(ev, self.batches, args)
            for observe in self._ctx.live_observers:
                observe(seen)
        self._ctx.defer(self._write_batch, ev, self.batches, seen, args)

    @classmethod
    def _seen(cls, ev: LlamaEvent, batch_id: int, args: dict | None = None) -> dict:
        """A batch as observers get it: its attributes, tid, ts_start, ts_end and wake (its shape
        key, and WOKE when its record woke the consumer: see LiveWake)."""
        return dict(args or cls._batch_args(ev, batch_id), tid=ev.tid, ts_start=ev.ts_start, ts_end=ev.ts_end,
                    wake=ev.wake)

    def _drain_stages(self, reader) -> None:
        """On the engine's polling thread, every stage record since the last drain at once. The
        engine runs a batch's deferred writing only after a drain that began after the batch
        arrived, so every stage inside it (submitted before the batch's record, by the same
        thread) is already pending then."""
        # struct.iter_unpack: a few records per drain, where numpy's fixed cost per call dominates
        for ts_start, ts_end, tid, kind in STAGE_HEAD.iter_unpack(reader.drain_fixed(STAGE_HEAD.size)):
            self._on_stage(ts_start, ts_end, tid, kind)

    @staticmethod
    def _batch_args(ev: LlamaEvent, batch_id: int) -> dict:
        args = {
            "batch_id": batch_id, "n_tokens": ev.n_tokens, "n_seqs": ev.n_seqs,
            "n_prefill_tokens": ev.n_prefill_tokens, "n_decode_tokens": ev.n_decode_tokens,
            "kv_tokens": ev.kv_tokens, "n_outputs": ev.n_outputs,
            "phase": phase_of(ev.n_prefill_tokens, ev.n_decode_tokens), "seq_mask": ev.seq_mask_lo,
            "prefill_mask": ev.prefill_mask_lo,
        }
        if ev.truncated:
            args["truncated_tokens"] = ev.truncated
        for stage_id, (name, _spec) in STAGES.items():
            if ev.gap_short_ns[stage_id]:
                args[f"gap_short_ns.{name}"] = ev.gap_short_ns[stage_id]
            if ev.short_ns[stage_id]:
                args[f"short_ns.{name}"] = ev.short_ns[stage_id]
        if ev.gap_short_end:
            args["gap_short_end"] = ev.gap_short_end
        return args

    def _on_stage(self, ts_start: int, ts_end: int, tid: int, kind: int) -> None:
        name = STAGES.get(kind, (f"stage{kind}",))[0]
        self.stage_counts[name] = self.stage_counts.get(name, 0) + 1
        if tid not in self._decode_tids and name not in ENGINE_LOOP_STAGES:
            # e.g. tokenization on an HTTP thread: no batch can enclose it, write it now
            write_nested(self._ctx.writer, self._ctx.thread_track(tid), [_Stage(ts_start, ts_end - ts_start, name)])
            return
        # On a decoding thread a stage may be the child of a batch not yet seen: hold it
        # until that batch arrives so the track's events stay in time order.
        self._pending.setdefault(tid, []).append(_Stage(ts_start, ts_end - ts_start, name))

    def _write_batch(self, ev: LlamaEvent, batch_id: int, seen: dict | None, args: dict | None = None) -> None:
        ctx = self._ctx
        w = ctx.writer
        track = ctx.thread_track(ev.tid)
        self._decode_tids.add(ev.tid)
        self._flush_stages(ev.tid, upto=ev.ts_start)  # stages that ended before this batch began
        args = args or self._batch_args(ev, batch_id)   # (built once when live observers saw the batch)
        flows = []
        if ctx.batch_observers:
            seen = seen or self._seen(ev, batch_id, args)
            flows = [f for observe in ctx.batch_observers for f in (observe(seen) or ())]
        pending = self._pending.get(ev.tid, [])
        inside, rest = [], []
        for s in pending:
            (inside if s.ts >= ev.ts_start and s.ts + s.dur <= ev.ts_end else rest).append(s)
        self._pending[ev.tid] = rest
        batch = _Stage(ev.ts_start, ev.ts_end - ev.ts_start, "llama_decode", "batch", args,
                       {"ret": ev.ret}, flows)
        write_nested(w, track, [batch, *inside])
        # a counter holds its value until the next sample: write these two when they change
        if ev.n_tokens != self._last_n_tokens:
            w.counter(self._n_tokens_track, ev.ts_start, ev.n_tokens)
            self._last_n_tokens = ev.n_tokens
        if ev.n_seqs != self._last_n_seqs:
            w.counter(self._seqs_track, ev.ts_start, ev.n_seqs)
            self._last_n_seqs = ev.n_seqs
        if ev.kv_tokens >= 0:
            w.counter(self._kv_track, ev.ts_start, ev.kv_tokens)

    def _flush_stages(self, tid: int, upto: int | None) -> None:
        pending = self._pending.get(tid)
        if not pending:
            return
        ready = [s for s in pending if upto is None or s.ts + s.dur <= upto]
        self._pending[tid] = [s for s in pending if not (upto is None or s.ts + s.dur <= upto)]
        write_nested(self._ctx.writer, self._ctx.thread_track(tid), ready)

    def finish(self, bpf, ctx) -> None:
        for tid in list(self._pending):
            self._flush_stages(tid, upto=None)
        self.short_stages = self._read_short_stages()
        if self.short_stages:
            args = {"min_stage_us": self.min_stage_us}
            for name, (calls, ns) in self.short_stages.items():
                args[f"{name}.calls"] = calls
                args[f"{name}.total_ns"] = ns
            ctx.writer.instant(ctx.process_track, time.monotonic_ns(), "llama_cpp.short_stages", "metadata", args)

    def _read_short_stages(self) -> dict[str, tuple[int, int]]:
        if self._bpf is None:
            return {}
        out = {}
        table = self._bpf[b"llama_short_stages"]
        for stage_id, (name, _spec) in STAGES.items():
            per_cpu = table[table.Key(stage_id)]
            calls, ns = sum(v.count for v in per_cpu), sum(v.ns for v in per_cpu)
            if calls:
                out[name] = (int(calls), int(ns))
        return out

    def metadata(self) -> dict:
        out = {"batches": self.batches}
        for name in {**self.stage_counts, **self.short_stages}:
            short = self.short_stages.get(name, (0, 0))[0]
            out[f"stage.{name}"] = self.stage_counts.get(name, 0)
            if short:
                out[f"stage.{name}.short"] = short
        return out
