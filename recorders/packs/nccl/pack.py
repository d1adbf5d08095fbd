"""NCCL probe pack (also RCCL, which exports the same API as librccl.so.1):
collectives per engine step, rank and world size.

Probes: ncclAllReduce, ncclAllGather, ncclReduceScatter, ncclBroadcast,
ncclSend, ncclRecv (entry: count, datatype, op, comm, stream; return: the
host-side time of the call), ncclCommInitRank / ncclCommInitRankConfig
(entry + return: the new communicator, its rank and world size). The counts
go into the engine step of the calling thread (the GPU core shared with the
cuda/hip packs), so each `engine_step` batch slice gets:
  nccl_allreduce, nccl_allgather, nccl_reducescatter, nccl_broadcast,
  nccl_send, nccl_recv (calls), nccl_calls, nccl_elems (sum of the count
  arguments), nccl_bytes (elements * datatype size), nccl_host_ns (time in the
  calls on the host), nccl_dtype, nccl_op (names; of the step's last
  collective that has the argument), nccl_comm, nccl_stream (handles of the last
  call), nccl_mixed (comma list of what varied inside the step: comm, dtype,
  op, stream), and rank, world_size of that communicator when its creation
  was recorded (a communicator created before the recorder attached is
  unknown: rank = world_size = -1).
Collectives captured into a CUDA graph (vLLM decode) run inside the graph
replay and make no host call: they are not counted, by construction.
"""
from __future__ import annotations

import ctypes as ct
from pathlib import Path

from ...target import TargetProcess
from ..base import AttachReport, ProbePack
from ..cuda.core import COLL_KINDS, REC_COMM, GpuCommRec, GpuCore, GpuStep, core_text, find_library
from ..cuda.pack import DEFER_TO, Api, attach_apis

KINDS = ("allreduce", "allgather", "reducescatter", "broadcast", "send", "recv")
assert len(KINDS) == COLL_KINDS
DTYPES = {0: "int8", 1: "uint8", 2: "int32", 3: "uint32", 4: "int64", 5: "uint64", 6: "float16", 7: "float32",
          8: "float64", 9: "bfloat16", 10: "float8e4m3", 11: "float8e5m2"}
OPS = {0: "sum", 1: "prod", 2: "max", 3: "min", 4: "avg"}
MIXED = ((1, "comm"), (2, "dtype"), (4, "op"), (8, "stream"))

NCCL_APIS = (
    Api("ncclAllReduce", "nccl_allreduce_enter", "nccl_coll_return", reads=("rdx", "rcx", "r8", "r9", "sp")),
    Api("ncclAllGather", "nccl_allgather_enter", "nccl_coll_return", reads=("rdx", "rcx", "r8", "r9")),
    Api("ncclReduceScatter", "nccl_reducescatter_enter", "nccl_coll_return", reads=("rdx", "rcx", "r8", "r9", "sp")),
    Api("ncclBroadcast", "nccl_broadcast_enter", "nccl_coll_return", reads=("rdx", "rcx", "r9", "sp")),
    Api("ncclSend", "nccl_send_enter", "nccl_coll_return", reads=("rsi", "rdx", "r8", "r9")),
    Api("ncclRecv", "nccl_recv_enter", "nccl_coll_return", reads=("rsi", "rdx", "r8", "r9")),
    Api("ncclCommInitRank", "nccl_init_enter", "nccl_init_return", reads=("rdi", "rsi", "rdx")),
    Api("ncclCommInitRankConfig", "nccl_init_enter", "nccl_init_return", reads=("rdi", "rsi", "rdx"),
        optional=True),
)


class NcclPack(ProbePack):
    name = "nccl"
    bpf_file = Path(__file__).with_name("nccl.bpf.c")
    buffers = {"gpu_events": "gpu_lost"}
    library_prefixes = ("libnccl", "librccl")

    def __init__(self) -> None:
        self.comms: dict[int, tuple[int, int]] = {}  # comm -> (rank, nranks)
        self.attached = 0
        self.collectives = 0
        self.core: GpuCore | None = None

    def applies_to(self, target: TargetProcess) -> bool:
        if any(target.library(stem) for stem in DEFER_TO):
            return False
        return any(find_library(target, p) for p in self.library_prefixes)

    def bpf_text(self, target: TargetProcess, options: dict) -> str:
        return core_text() + "\n" + self.bpf_file.read_text()

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        self.core = GpuCore.of(bpf)
        self.core.formatters.append(self._format)
        self.core.record_handlers[REC_COMM] = self._on_comm
        for prefix in self.library_prefixes:
            stem = find_library(target, prefix)
            if stem:
                self.attached += attach_apis(bpf, target, stem, NCCL_APIS, report, self.name)

    def _on_comm(self, data) -> None:
        rec = ct.cast(data, ct.POINTER(GpuCommRec)).contents
        if rec.ret == 0 and rec.comm:
            self.comms[rec.comm] = (rec.rank, rec.nranks)

    def _format(self, ev: GpuStep, args: dict) -> None:
        calls = [int(ev.n_coll[i]) for i in range(COLL_KINDS)]
        n = sum(calls)
        self.collectives += n
        for kind, c in zip(KINDS, calls):
            args[f"nccl_{kind}"] = c
        args["nccl_calls"] = n
        args["nccl_elems"] = ev.coll_elems
        args["nccl_bytes"] = ev.coll_bytes
        args["nccl_host_ns"] = ev.coll_ns
        if n:
            args["nccl_dtype"] = DTYPES.get(ev.coll_dtype, str(ev.coll_dtype))
            if ev.coll_op >= 0:
                args["nccl_op"] = OPS.get(ev.coll_op, str(ev.coll_op))
            args["nccl_comm"] = ev.coll_comm
            args["nccl_stream"] = ev.coll_stream
            if ev.coll_mixed:
                args["nccl_mixed"] = ",".join(name for bit, name in MIXED if ev.coll_mixed & bit)
            rank, nranks = self.comms.get(ev.coll_comm, (-1, -1))
            args["rank"] = rank
            args["world_size"] = nranks

    def start(self, bpf, ctx) -> None:
        if self.core is not None:
            self.core.start(bpf, ctx)

    def finish(self, bpf, ctx) -> None:
        if self.core is not None:
            self.core.finish(bpf, ctx)

    def metadata(self) -> dict:
        return {"nccl_probes": self.attached, "nccl_collectives": self.collectives, "nccl_comms": len(self.comms)}
