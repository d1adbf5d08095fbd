"""HIP probe pack (ROCm): the CUDA pack's engine steps for libamdhip64.

HIP mirrors the CUDA runtime call for call (hipLaunchKernel takes the host
stub and dim3s by value, hipMemcpyKind has cudaMemcpyKind's values), so the
same BPF programs of the GPU core serve both; only the symbol table differs:
  hipLaunchKernel, hipGraphLaunch, hipMemcpyAsync, hipEventRecord,
  hipEventSynchronize, hipStreamSynchronize (runtime-style, as PyTorch ROCm
  calls them), hipModuleLaunchKernel / hipExtModuleLaunchKernel (module
  launches: Triton on ROCm), hipModuleGetFunction (handle -> name), and the
  `_spt` (per-thread default stream) variants where the library has them.
RCCL collectives are the nccl pack's (librccl.so.1 exports the NCCL API).
rocBLAS/hipBLASLt calls are not probed: their GEMMs reach hipModuleLaunchKernel
/ hipExtModuleLaunchKernel and are counted as driver-style launches.
"""
from __future__ import annotations

from ..cuda.pack import Api, GpuApiPack

HIP_APIS = (
    Api("hipLaunchKernel", "gpu_launch_rt", reads=("rdi",)),
    Api("hipLaunchKernel_spt", "gpu_launch_rt", reads=("rdi",), optional=True),
    Api("hipGraphLaunch", "gpu_graph_launch", reads=("rdi",)),
    Api("hipGraphLaunch_spt", "gpu_graph_launch", reads=("rdi",), optional=True),
    Api("hipMemcpyAsync", "gpu_memcpy_async", reads=("rdx", "rcx", "r8")),
    Api("hipMemcpyAsync_spt", "gpu_memcpy_async", reads=("rdx", "rcx", "r8"), optional=True),
    Api("hipEventRecord", "gpu_event_record", reads=("rdi",)),
    Api("hipEventRecord_spt", "gpu_event_record", reads=("rdi",), optional=True),
    Api("hipEventSynchronize", "gpu_evsync_enter", "gpu_sync_return", reads=("rdi",)),
    Api("hipStreamSynchronize", "gpu_stsync_enter", "gpu_sync_return", reads=("rdi",)),
    Api("hipStreamSynchronize_spt", "gpu_stsync_enter", "gpu_sync_return", reads=("rdi",), optional=True),
    Api("hipModuleLaunchKernel", "gpu_launch_drv", reads=("rdi",)),
    Api("hipExtModuleLaunchKernel", "gpu_launch_drv", reads=("rdi",), optional=True),
    Api("hipModuleGetFunction", "gpu_getfn_enter", "gpu_getfn_return", reads=("rdi", "rdx")),
)


class HipPack(GpuApiPack):
    name = "hip"
    platform = "hip"
    libraries = (("libamdhip64", HIP_APIS),)
