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

    def applies_to(self, target: "TargetProcess") -> bool:
        return True

    def bpf_text(self, target: "TargetProcess", options: dict) -> str:
        return self.bpf_file.read_text() if self.bpf_file else ""

    def attach(self, bpf, target: "TargetProcess", report: AttachReport) -> None:
        pass

    def start(self, bpf, ctx: "RecordingContext") -> None:
        pass

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
        if probe.entry:
            bpf.attach_uprobe(name=path, addr=addr, fn_name=probe.entry, pid=target.pid)
        if probe.ret:
            bpf.attach_uretprobe(name=path, addr=addr, fn_name=probe.ret, pid=target.pid)
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
