"""Exact Python function boundaries (opt-in, CPython 3.12+): a slice per call of chosen functions.

    PyMonitorPack(functions=["Worker.generate"], step="Engine.step",
                  step_args=[("n_seqs", "len(batch)"), ("n_tokens", "n_tokens")])

At attach it switches sys.monitoring on for the chosen functions inside the
running process (inject.py: a runtime change, see docs/python-monitor.md), with
the C type `slice` as the callback, and probes that callback (slice_new, found
through PySlice_Type.tp_new, so stripped builds work too). Each call of a chosen
function becomes a slice on its thread's track, named by the code object's
qualified name (read from the code object with the python pack's offsets):
category `python`, or `batch` for the `step` function (one batch per engine
step, `batch_id` and the configured arguments as columns: `len(<arg>)` or the
int value of `<arg>`, read at the call's start). Nesting and recursion are kept
exactly; a call left by an exception ends at its unwind.

When the recording ends, the events are switched off again (unless `keep`).
"""
from __future__ import annotations

import ctypes as ct
import re
from dataclasses import dataclass
from pathlib import Path

from prismkit.errors import PrismError

from ...target import TargetProcess
from ..base import AttachReport, ProbePack
from ..llama_cpp.pack import _Stage, write_nested
from ..python.interp import Interpreter, _load_bias, find_interpreter, read_memory
from ..python.pack import PYOBJECT_H, interp_defines
from . import inject

MAX_ATTRS = 4
TP_NEW_OFFSET = 0x138  # PyTypeObject.tp_new, x86-64, 3.12 and 3.13 (checked against the headers)
_ARG = re.compile(r"^\s*(?:(?P<len>len)\(\s*(?P<larg>\w+)\s*\)|(?P<arg>\w+))\s*$")


class PmCode(ct.Structure):
    _fields_ = [("n_attrs", ct.c_uint32), ("_pad", ct.c_uint32), ("slot", ct.c_int32 * MAX_ATTRS),
                ("mode", ct.c_uint32 * MAX_ATTRS)]


class PmEvent(ct.Structure):
    _fields_ = [("ts", ct.c_uint64), ("code", ct.c_uint64), ("tid", ct.c_uint32), ("kind", ct.c_uint32),
                ("attr_ok", ct.c_uint32), ("n_args", ct.c_uint32), ("attr", ct.c_int64 * MAX_ATTRS)]


@dataclass(frozen=True)
class StepArg:
    column: str
    arg: str
    length: bool

    @classmethod
    def parse(cls, column: str, text: str) -> "StepArg":
        m = _ARG.match(text)
        if not m or not column.isidentifier():
            raise PrismError(f"step argument {column}={text!r}: expected COLUMN=ARG or COLUMN=len(ARG)")
        return cls(column, m.group("larg") or m.group("arg"), bool(m.group("len")))


def _elf_symbol(path: str, name: str) -> int | None:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        for sec_name in (".dynsym", ".symtab"):
            sec = elf.get_section_by_name(sec_name)
            if sec is None:
                continue
            for sym in sec.get_symbol_by_name(name) or ():
                if sym["st_value"]:
                    return sym["st_value"]
    return None


def _file_bias(pid: int, path: str) -> int | None:
    from ..python.interp import _elf_objects

    start = _load_bias(pid, path)
    if start is None:
        return None
    _, base = _elf_objects(path)
    return start - (base & ~0xFFF)


def _read_str(pid: int, obj: int, off: dict) -> str | None:
    """A compact ASCII str object's text (code names are)."""
    raw = read_memory(pid, obj + off["unicode.length"], 8)
    if not raw:
        return None
    n = int.from_bytes(raw, "little")
    if not 0 < n < 512:
        return None
    text = read_memory(pid, obj + off["unicode.ascii_data"], n)
    return text.decode(errors="replace") if text else None


class PyMonitorPack(ProbePack):
    name = "pymonitor"
    engine = True          # with a step function it writes the batches; either way the user asked for it
    library_hint = "python3.12+ (--py-function)"
    bpf_file = Path(__file__).with_name("pymonitor.bpf.c")
    buffers = {"pm_events": "pm_lost"}

    def __init__(self, functions: list[str] | tuple = (), step: str | None = None,
                 step_args: list[tuple[str, str]] | dict | tuple = (), keep: bool = False,
                 inject_timeout_s: float = 10.0) -> None:
        funcs = list(dict.fromkeys([*functions, *([step] if step else [])]))
        if not funcs:
            raise PrismError("--py-function/--py-step: name at least one function")
        items = list(step_args.items()) if isinstance(step_args, dict) else list(step_args)
        if items and not step:
            raise PrismError("--py-step-arg needs --py-step (the arguments are read at each step's start)")
        if len(items) > MAX_ATTRS:
            raise PrismError(f"at most {MAX_ATTRS} step arguments (got {len(items)})")
        self.functions = funcs
        self.step = step
        self.step_args = [StepArg.parse(c, t) for c, t in items]
        self.keep = keep
        self.inject_timeout_s = inject_timeout_s
        self.interp: Interpreter | None = None
        self.pid = 0
        self.status: dict = {}
        self.names: dict[int, str] = {}     # code object -> qualified name (read from the code object)
        self.step_codes: set[int] = set()
        self.enabled = False
        self.removed = False
        self.calls: dict[str, int] = {}
        self.batches = 0
        self.unmatched_ends = 0
        self.unfinished = 0
        self._open: dict[int, list[tuple[int, _Stage]]] = {}   # tid -> open (code, slice), outermost first
        self._done: dict[int, list[_Stage]] = {}               # tid -> closed slices inside an open one
        self._ctx = None
        self._tracks: dict[str, int] = {}

    def applies_to(self, target: TargetProcess) -> bool:
        self.interp, why = find_interpreter(target)
        if self.interp is None:
            raise PrismError(f"--py-function: PID {target.pid} ({target.comm}): no CPython interpreter found ({why})")
        if self.interp.minor < inject.MIN_MINOR:
            raise PrismError(f"--py-function: PID {target.pid} runs Python {self.interp.version}; exact function "
                             "boundaries need sys.monitoring (Python 3.12+)")
        return True

    def bpf_text(self, target: TargetProcess, options: dict) -> str:
        assert self.interp is not None
        return interp_defines(self.interp) + PYOBJECT_H.read_text() + self.bpf_file.read_text()

    def _callback_address(self, target: TargetProcess) -> tuple[str, int]:
        """(ELF file, file virtual address) of PySlice_Type.tp_new, read from the live type object."""
        it = self.interp
        path = it.path
        vaddr = _elf_symbol(path, "PySlice_Type")
        bias = _file_bias(target.pid, path)
        if vaddr is None or bias is None:
            raise PrismError(f"PySlice_Type not found in {Path(path).name}")
        raw = read_memory(target.pid, bias + vaddr + TP_NEW_OFFSET, 8)
        fn = int.from_bytes(raw or b"\0" * 8, "little")
        if not fn:
            raise PrismError(f"PID {target.pid}: cannot read PySlice_Type.tp_new")
        return path, fn - bias

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        from ...elf import Symbol, _symbols, probe_offset

        self.pid = target.pid
        path, vaddr = self._callback_address(target)
        sym = next((s for s in _symbols(path).values() if s.vaddr == vaddr), None)
        name = sym.name if sym else f"{vaddr:#x}"
        if sym is None:
            sym = Symbol(name, vaddr, _file_offset(path, vaddr), 16)
        place = probe_offset(path, sym, reads_args=("rsi",))
        try:
            bpf.attach_uprobe(name=path, addr=vaddr + place.offset, fn_name="pm_callback", pid=target.pid)
        except Exception as exc:  # bcc raises plain Exception
            raise PrismError(f"cannot probe the sys.monitoring callback ({name}): {str(exc).splitlines()[0]}") from None
        self.status = inject.enable(target.pid, self.functions, self.inject_timeout_s)
        self.enabled = True
        codes = bpf["pm_codes"]
        off = self.interp.offsets
        for c in self.status["codes"]:
            addr = c["addr"]
            raw = read_memory(target.pid, addr + off["code.qualname"], 8)
            qual = _read_str(target.pid, int.from_bytes(raw or b"\0" * 8, "little"), off) or c["qualname"]
            self.names[addr] = qual
            rec = PmCode()
            if c["want"] == self.step:
                self.step_codes.add(addr)
                for i, a in enumerate(self.step_args):
                    if a.arg not in c["varnames"][: c["argcount"]]:
                        self._undo()
                        raise PrismError(f"--py-step-arg {a.column}: {a.arg!r} is not an argument of {qual} "
                                         f"(its arguments: {', '.join(c['varnames'][:c['argcount']]) or 'none'})")
                    rec.slot[i] = c["varnames"].index(a.arg)
                    rec.mode[i] = int(a.length)
                rec.n_attrs = len(self.step_args)
            codes[ct.c_uint64(addr)] = rec
        how = "emulated" if place.emulated else "single-stepped"
        report.attached.append(
            f"pymonitor: sys.monitoring tool {self.status['tool']} on {len(self.names)} code object(s) "
            f"({', '.join(sorted(set(self.names.values())))}); callback slice() probed at "
            f"{Path(path).name}:{name} ({place.first_insn}; {how}); runtime change, "
            + ("kept after the recording" if self.keep else "removed when the recording ends"))

    def _undo(self) -> None:
        if self.enabled and not self.removed:
            try:
                inject.disable(self.pid, self.inject_timeout_s)
                self.removed = True
            except PrismError:
                pass

    def start(self, bpf, ctx) -> None:
        self._ctx = ctx
        bpf["pm_events"].open_ring_buffer(self._on_event)

    def _counter(self, column: str) -> int:
        if column not in self._tracks:
            self._tracks[column] = self._ctx.writer.counter_track(f"batch.{column}", self._ctx.process_track)
        return self._tracks[column]

    def _on_event(self, _cpu, data, _size) -> None:
        ev = ct.cast(data, ct.POINTER(PmEvent)).contents
        stack = self._open.setdefault(ev.tid, [])
        name = self.names.get(ev.code, f"<code {ev.code:#x}>")
        if ev.kind == 0:
            args: dict = {}
            category = "python"
            if ev.code in self.step_codes:
                category = "batch"
                self.batches += 1
                args["batch_id"] = self.batches
                for i, a in enumerate(self.step_args):
                    if ev.attr_ok >> i & 1:
                        args[a.column] = int(ev.attr[i])
                if "n_prefill_tokens" in args and "n_decode_tokens" in args:
                    p, d = args["n_prefill_tokens"], args["n_decode_tokens"]
                    args["phase"] = "mixed" if p and d else ("prefill" if p else "decode")
            stack.append((ev.code, _Stage(ev.ts, 0, name, category, args)))
            return
        if not any(code == ev.code for code, _ in stack):
            self.unmatched_ends += 1  # e.g. a call that began before monitoring was on
            return
        while stack:
            code, s = stack.pop()
            s.dur = ev.ts - s.ts
            if code != ev.code:  # an inner call whose end was lost: closes with its caller
                s.end_args = {"unfinished": True}
                self.unfinished += 1
            self._close(ev.tid, s)
            if code == ev.code:
                break

    def _close(self, tid: int, s: _Stage) -> None:
        self.calls[s.name] = self.calls.get(s.name, 0) + 1
        ctx = self._ctx
        if s.category == "batch":
            seen = {**s.args, "tid": tid, "ts_start": s.ts, "ts_end": s.ts + s.dur}
            s.flow_ids = [f for observe in ctx.batch_observers for f in (observe(seen) or ())]
            for column in ("n_tokens", "n_seqs", "kv_tokens"):
                if column in s.args:
                    ctx.writer.counter(self._counter(column), s.ts, s.args[column])
        done = self._done.setdefault(tid, [])
        done.append(s)
        if not self._open.get(tid):  # the outermost call ended: its track can be written in order
            write_nested(ctx.writer, ctx.thread_track(tid), done)
            self._done[tid] = []

    def finish(self, bpf, ctx) -> None:
        if not self.keep:
            self._undo()
        end = max([s.ts for st in self._open.values() for _, s in st] + [0])
        import time

        end = max(end, time.monotonic_ns())
        for tid, stack in self._open.items():
            while stack:
                _, s = stack.pop()
                s.dur = end - s.ts
                s.end_args = {"unfinished": True}
                self.unfinished += 1
                self._close(tid, s)

    def metadata(self) -> dict:
        return {"pymonitor_calls": sum(self.calls.values()), "pymonitor_batches": self.batches,
                "pymonitor_unmatched_ends": self.unmatched_ends, "pymonitor_unfinished": self.unfinished,
                "pymonitor_removed": int(self.removed), "pymonitor_tool": int(self.status.get("tool", -1))}


def _file_offset(path: str, vaddr: int) -> int:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_memsz"]:
                return vaddr - seg["p_vaddr"] + seg["p_offset"]
    return vaddr
