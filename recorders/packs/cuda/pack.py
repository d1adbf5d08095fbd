"""CUDA probe pack: engine steps of a CUDA inference server (vLLM, SGLang, any
PyTorch engine) from its calls into libcudart.so.12 and libcuda.so.1, with no
change to the server and no restart.

Probes (entry only, except the synchronizations and cuModuleGetFunction):
  libcudart: cudaLaunchKernel (kernel = host stub address, named from the ELF
    symbol there), cudaGraphLaunch, cudaMemcpyAsync (bytes by cudaMemcpyKind),
    cudaEventRecord, cudaEventSynchronize / cudaStreamSynchronize (entry +
    return: the wait is the GPU tail), and the per-thread-stream `_ptsz`
    variants where the library has them;
  libcuda: cuLaunchKernel, cuLaunchKernelEx (Triton and other JIT kernels),
    cuGraphLaunch, cuStreamSynchronize, cuModuleGetFunction (handle -> name).
Everything is aggregated per thread and per engine step in BPF (see
gpu_core.bpf.c for the step boundary and core.py for the slice's arguments);
one record per step reaches user space.

Runtime- and driver-API counts are kept apart (n_rt_launches /
n_drv_launches, n_graph_launches / n_drv_graph_launches): with the real
libcudart a runtime call may reach the driver's exported entry point, and
kept apart neither count is inflated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...elf import find_symbol
from ...target import TargetProcess
from ..base import AttachReport, ProbePack, Uprobe, attach_uprobe
from .core import GpuCore, core_text, find_library


#: Engines whose own pack already writes one batch per step: the GPU packs stand aside there.
DEFER_TO = ("libllama",)


@dataclass(frozen=True)
class Api:
    """One API entry point: symbol, BPF entry/return programs, argument registers the entry reads."""

    symbol: str
    entry: str | None
    ret: str | None = None
    reads: tuple[str, ...] = ()
    optional: bool = False  # attach when present, say nothing when absent (e.g. _ptsz variants)


CUDART_APIS = (
    Api("cudaLaunchKernel", "gpu_launch_rt", reads=("rdi",)),
    Api("cudaLaunchKernel_ptsz", "gpu_launch_rt", reads=("rdi",), optional=True),
    Api("cudaGraphLaunch", "gpu_graph_launch", reads=("rdi",)),
    Api("cudaGraphLaunch_ptsz", "gpu_graph_launch", reads=("rdi",), optional=True),
    Api("cudaMemcpyAsync", "gpu_memcpy_async", reads=("rdx", "rcx", "r8")),
    Api("cudaMemcpyAsync_ptsz", "gpu_memcpy_async", reads=("rdx", "rcx", "r8"), optional=True),
    Api("cudaEventRecord", "gpu_event_record", reads=("rdi",)),
    Api("cudaEventRecord_ptsz", "gpu_event_record", reads=("rdi",), optional=True),
    Api("cudaEventSynchronize", "gpu_evsync_enter", "gpu_sync_return", reads=("rdi",)),
    Api("cudaStreamSynchronize", "gpu_stsync_enter", "gpu_sync_return", reads=("rdi",)),
    Api("cudaStreamSynchronize_ptsz", "gpu_stsync_enter", "gpu_sync_return", reads=("rdi",), optional=True),
)
CUDA_DRIVER_APIS = (
    Api("cuLaunchKernel", "gpu_launch_drv", reads=("rdi",)),
    Api("cuLaunchKernel_ptsz", "gpu_launch_drv", reads=("rdi",), optional=True),
    Api("cuLaunchKernelEx", "gpu_launch_drv_ex", reads=("rsi",)),
    Api("cuLaunchKernelEx_ptsz", "gpu_launch_drv_ex", reads=("rsi",), optional=True),
    Api("cuGraphLaunch", "gpu_graph_launch_drv", reads=("rdi",)),
    Api("cuGraphLaunch_ptsz", "gpu_graph_launch_drv", reads=("rdi",), optional=True),
    Api("cuStreamSynchronize", "gpu_stsync_enter", "gpu_sync_return", reads=("rdi",)),
    Api("cuStreamSynchronize_ptsz", "gpu_stsync_enter", "gpu_sync_return", reads=("rdi",), optional=True),
    Api("cuModuleGetFunction", "gpu_getfn_enter", "gpu_getfn_return", reads=("rdi", "rdx")),
)


def attach_apis(bpf, target: TargetProcess, stem: str, apis, report: AttachReport, label: str) -> int:
    """Attach each API of `apis` in the mapped library `stem`; returns how many attached."""
    path = target.library(stem)
    n = 0
    for api in apis:
        if api.optional and (path is None or find_symbol(path, api.symbol) is None):
            continue
        probe = Uprobe(f"{label}: {api.symbol}", stem, (api.symbol,), entry=api.entry, ret=api.ret, reads=api.reads)
        n += attach_uprobe(bpf, target, probe, report)
    return n


class GpuApiPack(ProbePack):
    """A platform's runtime (+ driver) API packs share the GPU core; subclasses give the libraries."""

    engine = True
    calls_batch_observers = True  # each step is offered to ctx.batch_observers (flows), where present
    platform = "gpu"
    #: (library stem prefix, APIs) pairs
    libraries: tuple[tuple[str, tuple[Api, ...]], ...] = ()
    buffers = {"gpu_events": "gpu_lost"}

    def __init__(self, prefill_min_launches: int = 64) -> None:
        self.prefill_min_launches = prefill_min_launches
        self.core: GpuCore | None = None
        self.attached = 0

    @property
    def library_hint(self) -> str:
        return "/".join(prefix for prefix, _ in self.libraries)

    def applies_to(self, target: TargetProcess) -> bool:
        if any(target.library(stem) for stem in DEFER_TO):
            return False  # an engine with its own pack (llama.cpp built for CUDA/HIP): its batches, not ours
        return any(find_library(target, prefix) for prefix, _ in self.libraries)

    def bpf_text(self, target: TargetProcess, options: dict) -> str:
        return core_text()

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        self.core = GpuCore.of(bpf)
        if self.platform not in self.core.platforms:
            self.core.platforms.append(self.platform)
        self.core.prefill_min_launches = self.prefill_min_launches
        for prefix, apis in self.libraries:
            stem = find_library(target, prefix)
            if stem is not None:
                self.attached += attach_apis(bpf, target, stem, apis, report, self.name)

    def start(self, bpf, ctx) -> None:
        if self.core is not None:
            self.core.start(bpf, ctx)

    def sample(self, ctx, now_ns: int) -> None:
        if self.core is not None:
            self.core.sample()

    def finish(self, bpf, ctx) -> None:
        if self.core is not None:
            self.core.finish(bpf, ctx)

    def metadata(self) -> dict:
        return {f"{self.name}_probes": self.attached, **(self.core.metadata() if self.core else {})}


class CudaPack(GpuApiPack):
    name = "cuda"
    platform = "cuda"
    libraries = (("libcudart", CUDART_APIS), ("libcuda", CUDA_DRIVER_APIS))
