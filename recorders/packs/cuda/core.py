"""The GPU engine-step core shared by the cuda, hip, nccl and python packs.

BPF side (gpu_core.bpf.c): per-thread accumulation of one engine step's GPU
API calls and the step boundary (device-to-host copy of the sampled tokens,
then a synchronization). Python side (here): one object per recording, shared
by every GPU pack that applies, that reads the step records and writes one
`batch` slice per step; the other packs add their arguments through
`formatters`.

Batch slice `engine_step` (category `batch`, on the launching thread), args:
  batch_id; n_tokens = n_seqs = n_outputs = closing D2H copy bytes / 8 (one
  int64 sampled token per sequence: the batch size; a Python attribute named
  like a batch column overrides it, see the python pack); phase (guess, below);
  platform; n_launches (runtime + driver API eager launches), n_rt_launches,
  n_drv_launches, n_graph_launches, n_drv_graph_launches, n_copies, bytes_h2d,
  bytes_d2h, bytes_d2d, bytes_other (cudaMemcpyDefault / host-to-host),
  n_syncs, sync_ns (time waited in every synchronization of the step), tail_ns
  (time waited in the one that ended it: the GPU tail), launch_ns (first call
  to the closing copy), graph (last graph exec handle), stream, event,
  ts_done (when the ending synchronization returned), clipped (the slice ends
  where the next step began: overlap loop), synced (false for steps written
  at the end of the recording that no synchronization ended), sync_tid.
Phase guess: graph replay with fewer than `prefill_min_launches` eager
launches => decode; no graph replay and at least that many => prefill; both
=> mixed; neither => decode (a small eager step).

At the end: an instant `gpu.kernels` (category `metadata`) on the process
track: `kernels_distinct`, `launches_total`, and the most launched kernels as
`<kernel name>: count` (runtime-API launches named from the host stub's ELF
symbol, demangled; driver-API launches from cuModuleGetFunction's name when
the recorder saw that call, else `CUfunction 0x...`); and `gpu.summary`.
"""
from __future__ import annotations

import ctypes as ct
import time
from pathlib import Path
from typing import Callable

from .symbols import ProcessSymbols, demangle

CORE_BPF = Path(__file__).with_name("gpu_core.bpf.c")
STEP_NAME = "engine_step"
PY_FRAMES = 16
PY_ATTRS = 4
COLL_KINDS = 6
REC_STEP, REC_FUNCTION, REC_COMM = 0, 1, 2
F_SEALED, F_CLIPPED, F_NO_SYNC, F_STREAM_SYNC = 1, 2, 4, 8
API_RT, API_DRV = 1, 2
TOP_KERNELS = 25


class GpuStep(ct.Structure):
    _fields_ = [
        ("kind", ct.c_uint32), ("tid", ct.c_uint32), ("sync_tid", ct.c_uint32), ("flags", ct.c_uint32),
        ("ts_start", ct.c_uint64), ("ts_seal", ct.c_uint64), ("ts_end", ct.c_uint64), ("ts_done", ct.c_uint64),
        ("ts_next", ct.c_uint64),
        ("bytes_h2d", ct.c_uint64), ("bytes_d2h", ct.c_uint64), ("bytes_d2d", ct.c_uint64),
        ("bytes_other", ct.c_uint64), ("last_d2h_bytes", ct.c_uint64), ("sync_ns", ct.c_uint64),
        ("tail_ns", ct.c_uint64), ("graph", ct.c_uint64), ("stream", ct.c_uint64), ("event", ct.c_uint64),
        ("n_launches", ct.c_uint32), ("n_drv_launches", ct.c_uint32), ("n_graph_launches", ct.c_uint32),
        ("n_copies", ct.c_uint32), ("n_d2h", ct.c_uint32), ("n_syncs", ct.c_uint32),
        ("n_event_records", ct.c_uint32), ("n_drv_graph_launches", ct.c_uint32),
        ("coll_bytes", ct.c_uint64), ("coll_elems", ct.c_uint64), ("coll_ns", ct.c_uint64),
        ("coll_enter", ct.c_uint64), ("coll_comm", ct.c_uint64), ("coll_stream", ct.c_uint64),
        ("n_coll", ct.c_uint32 * COLL_KINDS), ("coll_dtype", ct.c_int32), ("coll_op", ct.c_int32),
        ("coll_mixed", ct.c_uint32), ("_pad1", ct.c_uint32),
        ("py_code", ct.c_uint64 * PY_FRAMES), ("py_attr", ct.c_int64 * PY_ATTRS),
        ("py_depth", ct.c_uint32), ("py_attr_ok", ct.c_uint32), ("py_flags", ct.c_uint32), ("_pad2", ct.c_uint32),
    ]


class GpuFnRec(ct.Structure):
    _fields_ = [("kind", ct.c_uint32), ("tid", ct.c_uint32), ("handle", ct.c_uint64), ("name", ct.c_char * 112)]


class GpuCommRec(ct.Structure):
    _fields_ = [("kind", ct.c_uint32), ("rank", ct.c_int32), ("nranks", ct.c_int32), ("ret", ct.c_int32),
                ("comm", ct.c_uint64), ("ts", ct.c_uint64)]


class KernelKey(ct.Structure):
    _fields_ = [("addr", ct.c_uint64), ("api", ct.c_uint32), ("_pad", ct.c_uint32)]


Formatter = Callable[[GpuStep, dict], None]


def core_text() -> str:
    return CORE_BPF.read_text()


def phase_guess(eager_launches: int, graph_launches: int, prefill_min_launches: int) -> str:
    many = eager_launches >= prefill_min_launches
    if graph_launches:
        return "mixed" if many else "decode"
    return "prefill" if many else "decode"


def find_library(target, prefix: str) -> str | None:
    """The mapped library stem `prefix`, or `prefix-<hash>` as pip wheels vendor them (libcudart-d0da41ae)."""
    if target.library(prefix):
        return prefix
    for stem in sorted(target.libraries):
        if stem.startswith(prefix + "-"):
            return stem
    return None


class GpuCore:
    """One per recording (per compiled BPF object), shared by the GPU packs."""

    _ATTR = "_prismkit_gpu_core"

    @classmethod
    def of(cls, bpf) -> "GpuCore":
        core = getattr(bpf, cls._ATTR, None)
        if core is None:
            core = cls()
            setattr(bpf, cls._ATTR, core)
        return core

    def __init__(self) -> None:
        self.platforms: list[str] = []
        self.formatters: list[Formatter] = []
        self.record_handlers: dict[int, Callable[[object], None]] = {}
        self.function_names: dict[int, str] = {}
        self.prefill_min_launches = 64
        self.steps = 0
        self.unsynced = 0
        self.kernel_launches = 0
        self.kernel_distinct = 0
        self.top_kernels: list[tuple[str, int]] = []
        self._ctx = None
        self._started = self._finished = False
        self._symbols: ProcessSymbols | None = None
        self._last_refresh = 0.0
        self._n_tokens_track = None

    # -- lifecycle (idempotent: every GPU pack calls these) --------------------
    def start(self, bpf, ctx) -> None:
        if self._started:
            return
        self._started = True
        self._ctx = ctx
        self._symbols = ProcessSymbols(ctx.target.pid)
        self._n_tokens_track = ctx.counter_track("batch.n_tokens", "tokens")
        bpf["gpu_events"].open_ring_buffer(self._on_event)

    def sample(self) -> None:
        now = time.monotonic()
        if self._symbols is not None and now - self._last_refresh > 1.0:
            self._last_refresh = now
            self._symbols.refresh()  # keep the maps of a live target for naming kernels at the end

    def finish(self, bpf, ctx) -> None:
        if self._finished or not self._started:
            return
        self._finished = True
        self._flush_unsynced(bpf)
        self._write_kernels(bpf)
        ctx.writer.instant(ctx.process_track, time.monotonic_ns(), "gpu.summary", "metadata", {
            "steps": self.steps, "unsynced_steps": self.unsynced, "platforms": ",".join(self.platforms),
            "prefill_min_launches": self.prefill_min_launches,
        })

    # -- events ------------------------------------------------------------------
    def _on_event(self, _cpu, data, size) -> None:
        kind = ct.cast(data, ct.POINTER(ct.c_uint32)).contents.value
        if kind == REC_STEP:
            self._write_step(ct.cast(data, ct.POINTER(GpuStep)).contents)
        elif kind == REC_FUNCTION:
            rec = ct.cast(data, ct.POINTER(GpuFnRec)).contents
            self.function_names[rec.handle] = rec.name.decode(errors="replace")
        else:
            handler = self.record_handlers.get(kind)
            if handler is not None:
                handler(data)

    def step_args(self, ev: GpuStep) -> dict:
        n_out = int(ev.last_d2h_bytes // 8)
        eager = ev.n_launches + ev.n_drv_launches
        graphs = ev.n_graph_launches + ev.n_drv_graph_launches
        synced = not (ev.flags & F_NO_SYNC)
        args = {
            "batch_id": self.steps, "n_tokens": n_out, "n_seqs": n_out, "n_outputs": n_out,
            "phase": phase_guess(eager, graphs, self.prefill_min_launches),
            "platform": "+".join(self.platforms) or "gpu",
            "n_launches": eager, "n_rt_launches": ev.n_launches, "n_drv_launches": ev.n_drv_launches,
            "n_graph_launches": ev.n_graph_launches, "n_drv_graph_launches": ev.n_drv_graph_launches,
            "n_copies": ev.n_copies, "bytes_h2d": ev.bytes_h2d, "bytes_d2h": ev.bytes_d2h,
            "bytes_d2d": ev.bytes_d2d, "bytes_other": ev.bytes_other, "n_syncs": ev.n_syncs,
            "sync_ns": ev.sync_ns, "tail_ns": ev.tail_ns if synced else 0,
            "launch_ns": max(ev.ts_seal - ev.ts_start, 0) if ev.ts_seal else 0,
            "graph": ev.graph, "stream": ev.stream, "event": ev.event,
            "ts_done": ev.ts_done if synced else 0, "clipped": bool(ev.flags & F_CLIPPED),
            "synced": synced, "sync_kind": "stream" if ev.flags & F_STREAM_SYNC else "event",
        }
        if ev.sync_tid and ev.sync_tid != ev.tid:
            args["sync_tid"] = ev.sync_tid
        for fmt in self.formatters:
            fmt(ev, args)
        return args

    def _write_step(self, ev: GpuStep) -> None:
        ctx = self._ctx
        self.steps += 1
        if ev.flags & F_NO_SYNC:
            self.unsynced += 1
        args = self.step_args(ev)
        end = max(ev.ts_end, ev.ts_start)
        # Batch observers (e.g. request-to-batch flows), where the engine offers them.
        seen = {**args, "tid": ev.tid, "ts_start": ev.ts_start, "ts_end": end}
        flows = [f for observe in getattr(ctx, "batch_observers", None) or () for f in (observe(seen) or ())]
        ctx.writer.slice(ctx.thread_track(ev.tid), ev.ts_start, end - ev.ts_start, STEP_NAME, "batch", args,
                         flow_ids=flows)
        ctx.writer.counter(self._n_tokens_track, ev.ts_start, int(args["n_tokens"]))

    def _flush_unsynced(self, bpf) -> None:
        """Steps sealed (or copied out) that no synchronization ended before the recording stopped."""
        left = []
        for table in ("gpu_sealed", "gpu_acc"):
            try:
                items = list(bpf[table].items())
            except Exception:
                continue
            for _k, v in items:
                ev = GpuStep.from_buffer_copy(bytes(v))
                if ev.n_d2h == 0 or ev.ts_start == 0:
                    continue
                ev.flags |= F_NO_SYNC
                ev.ts_end = ev.ts_next if ev.ts_next else ev.ts_seal
                left.append(ev)
        for ev in sorted(left, key=lambda e: e.ts_start):
            self._write_step(ev)

    # -- kernels -----------------------------------------------------------------
    def kernel_counts(self, bpf) -> dict[str, int]:
        counts: dict[str, int] = {}
        raw: list[tuple[str, int]] = []
        try:
            items = list(bpf["gpu_kernels"].items())
        except Exception:
            items = []
        for k, v in items:
            key = KernelKey.from_buffer_copy(bytes(k))
            n = int(v.value)
            if key.api == API_RT:
                name = (self._symbols.resolve(key.addr) if self._symbols else None) or f"{key.addr:#x}"
            else:
                name = self.function_names.get(key.addr) or f"CUfunction {key.addr:#x}"
            raw.append((name, n))
        pretty = demangle([n for n, _ in raw])
        for name, n in raw:
            counts[pretty.get(name, name)] = counts.get(pretty.get(name, name), 0) + n
        return counts

    def _write_kernels(self, bpf) -> None:
        counts = self.kernel_counts(bpf)
        self.kernel_launches = sum(counts.values())
        self.kernel_distinct = len(counts)
        self.top_kernels = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_KERNELS]
        ctx = self._ctx
        args: dict = {"kernels_distinct": self.kernel_distinct, "launches_total": self.kernel_launches}
        for name, n in self.top_kernels:
            args[name] = n
        ctx.writer.instant(ctx.process_track, time.monotonic_ns(), "gpu.kernels", "metadata", args)

    def metadata(self) -> dict:
        return {"gpu_steps": self.steps, "gpu_unsynced_steps": self.unsynced}
