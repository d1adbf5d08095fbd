"""What a probe pack is: data (libraries, symbols, how to decode) plus small BPF programs.

The engine knows nothing of any engine: it concatenates the BPF text of every
pack that applies to the target, compiles it once, asks each pack to attach its
probes and to register its ring buffers, and hands it the recording context.
"""
from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..elf import find_symbol, probe_offset

if TYPE_CHECKING:
    import numpy as np

    from ..engine import RecordingContext
    from ..target import TargetProcess


@dataclass
class AttachReport:
    attached: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (probe, why)


@dataclass(frozen=True)
class Uprobe:
    """A function to probe: the first of `symbols` found in the mapped `library`.

    `symbols` are exact names or regular expressions (for C++ mangled names).
    `entry`/`ret` name the BPF functions for the entry and return probes.
    `reads` lists what the entry program reads ('sp' for stack arguments,
    register names for register arguments) so the placement can skip an
    expensive first instruction only when that is safe.
    """

    what: str
    library: str
    symbols: tuple[str, ...]
    entry: str | None = None
    ret: str | None = None
    reads: tuple[str, ...] = ()


class ProbePack:
    name = "base"
    bpf_file: Path | None = None
    #: ring buffers this pack owns: BPF map name -> per-CPU lost counter map name
    buffers: dict[str, str] = {}
    #: seconds between sample() calls, if slower than the engine's sample interval
    sample_every_s: float | None = None
    #: False: prism record loads it only when asked (default_packs(opt_in=...), --packs)
    on_by_default: bool = True
    #: BPF maps of calls in progress, cleared when a paused recording resumes (before_resume)
    state_maps: tuple[str, ...] = ()

    def applies_to(self, target: "TargetProcess") -> bool:
        return True

    def bpf_text(self, target: "TargetProcess", options: dict) -> str:
        return self.bpf_file.read_text() if self.bpf_file else ""

    def attach(self, bpf, target: "TargetProcess", report: AttachReport) -> None:
        pass

    def start(self, bpf, ctx: "RecordingContext") -> None:
        pass

    def before_resume(self, bpf) -> None:
        """Called with every probe detached, just before a paused recording attaches them again:
        forget the state of calls and intervals that began before the pause (`state_maps`
        are cleared), so that none of them spans the gap."""
        for name in self.state_maps:
            bpf[name.encode()].clear()

    def after_resume(self, bpf, ctx: "RecordingContext") -> None:
        """Called once a paused recording has attached every probe again."""

    def sample(self, ctx: "RecordingContext", now_ns: int) -> None:
        """Called periodically by the engine (counters)."""

    def finish(self, bpf, ctx: "RecordingContext") -> None:
        """Flush what the pack still holds; the trace is closed after this."""

    def metadata(self) -> dict:
        return {}


def attach_uprobe(bpf, target: "TargetProcess", probe: Uprobe, report: AttachReport) -> bool:
    """Attach one Uprobe spec, recording success or the reason for failure."""
    path = target.library(probe.library)
    if path is None:
        report.failed.append((probe.what, f"{probe.library} is not mapped in PID {target.pid}"))
        return False
    sym = None
    for pattern in probe.symbols:
        sym = find_symbol(path, pattern)
        if sym is not None:
            break
    if sym is None:
        report.failed.append((probe.what, f"symbol {probe.symbols[0]} not found in {Path(path).name} (missing in this build)"))
        return False
    # Stack reads ('sp') stay valid past a skipped instruction: a skip never moves rsp.
    place = probe_offset(path, sym, reads_args=tuple(r for r in probe.reads if r != "sp"))
    addr = sym.vaddr + place.offset  # bcc translates the virtual address to a file offset
    try:
        # The return probe first: every call whose entry is seen then has its return seen too
        # (a return without its entry is ignored; an entry without its return would stay open).
        if probe.ret:
            bpf.attach_uretprobe(name=path, addr=addr, fn_name=probe.ret, pid=target.pid)
        if probe.entry:
            bpf.attach_uprobe(name=path, addr=addr, fn_name=probe.entry, pid=target.pid)
    except Exception as exc:  # bcc raises plain Exception
        report.failed.append((probe.what, f"attach failed on {sym.name}: {str(exc).splitlines()[0]}"))
        return False
    how = "emulated" if place.emulated else "single-stepped"
    skip = f" +{place.offset}" if place.offset else ""
    report.attached.append(f"{probe.what}: {Path(path).name}:{_short(sym.name)}{skip} ({place.first_insn}; {how})")
    return True


def _short(name: str) -> str:
    return name if len(name) < 48 else name[:45] + "..."


EventHandler = Callable[[object, int, int], None]

_CT_INTS = (ct.c_uint32, ct.c_uint64, ct.c_int32, ct.c_int64, ct.c_uint, ct.c_ulong)


def map_items(table) -> list:
    """(key, value) pairs of a BPF map, in one batch syscall where the kernel has it.

    Integer keys and values come back as Python ints either way."""
    try:
        pairs = list(table.items_lookup_batch())
    except Exception:  # bcc raises plain Exception where batch ops are missing
        pairs = list(table.items())
    return [(_plain(k), _plain(v)) for k, v in pairs]


def _plain(x):
    return x.value if isinstance(x, _CT_INTS) else x


def percpu_array_u64(table, n_fields: int) -> "np.ndarray":
    """Every slot of a per-CPU array whose value is n_fields u64s: array[slot, cpu, field].

    One batch syscall into a preallocated buffer and a numpy view of it: the generic
    items path builds a Python object per slot and CPU (~1 ms for 512 slots)."""
    import numpy as np
    from bcc.libbcc import lib

    bufs = getattr(table, "_prism_batch_bufs", None)
    if bufs is None:
        bufs = table._prism_batch_bufs = table._alloc_keys_values(alloc_k=True, alloc_v=True)
    count, keys, values = bufs
    n = ct.c_uint32(count.value)
    out_batch = ct.c_uint32(0)
    if lib.bpf_lookup_batch(table.map_fd, None, ct.byref(out_batch), keys, values, ct.byref(n)) != 0 \
            and ct.get_errno() not in (0, 2):  # ENOENT: the whole array was read
        raise OSError(ct.get_errno(), "BPF_MAP_LOOKUP_BATCH failed")
    return np.frombuffer(values, dtype=np.uint64).reshape(count.value, -1, n_fields)[: n.value]
