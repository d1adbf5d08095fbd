"""Python context pack: the Python functions on the engine thread's stack at
each engine step, and configured attributes of its local variables, read in
BPF from the live CPython interpreter (3.10-3.13; no change to the target, no
restart, nothing imported into it).

It rides on the GPU core (cuda/hip packs): at every device-to-host copy (the
copy that closes a step's launches), python.bpf.c walks the calling thread's
frame chain. The step's `engine_step` batch slice then gets:
  py_stack   qualified names of the frames, innermost first, ';'-joined
             (3.10: plain function names, it has no co_qualname);
  py_depth   frames recorded (up to 16; py_truncated when deeper);
  <column>   each configured attribute read, as an int: an attribute named
             like a batch column (n_tokens, n_seqs, ...) replaces the value the
             GPU pack derived (which stays in n_sampled).
Attributes are `"<function qualname>:<local>.<attr>..."` (up to 4 attributes,
int/bool values) or `"<function qualname>:len(<local>.<attr>...)"` (len of a
list, tuple, dict or str), read from the innermost frame running that
function; attributes of plain-class instances (their __dict__, inline or
shared-key values), not __slots__ or properties. Up to 4 attributes; several
may feed one column (the first one read wins), so one configuration covers
several engines. The default configuration reads vLLM v1's
GPUModelRunner.execute_model(scheduler_output) and SGLang's
Scheduler.run_batch(batch).

Offsets: `_Py_DebugOffsets` at the start of `_PyRuntime` on 3.13+, per-version
tables (offsets.py, checked against each interpreter's headers) before.
"""
from __future__ import annotations

import ctypes as ct
import re
from dataclasses import dataclass
from pathlib import Path

from ...target import TargetProcess
from ..base import AttachReport, ProbePack
from ..cuda.core import GpuCore, GpuStep, core_text, find_library
from ..cuda.pack import DEFER_TO
from .interp import Interpreter, find_interpreter

#: CPython object reads shared with the pymonitor pack (include-guarded BPF C)
PYOBJECT_H = Path(__file__).with_name("pyobject.bpf.h")

REC_PYCODE = 3
MAX_SPECS = 4
MAX_PATH = 4
MAX_NAME = 63
BATCH_COLUMNS = ("n_tokens", "n_seqs", "n_prefill_tokens", "n_decode_tokens", "kv_tokens", "n_outputs")
GPU_LIBRARIES = ("libcudart", "libcuda", "libamdhip64")

DEFAULT_ATTRS: tuple[tuple[str, str], ...] = (
    ("n_tokens", "GPUModelRunner.execute_model:scheduler_output.total_num_scheduled_tokens"),
    ("n_seqs", "GPUModelRunner.execute_model:len(scheduler_output.num_scheduled_tokens)"),
    ("n_seqs", "Scheduler.run_batch:len(batch.reqs)"),
    ("n_tokens", "Scheduler.run_batch:batch.extend_num_tokens"),
)
_SPEC = re.compile(r"^\s*(?P<func>[\w.<>]+)\s*:\s*(?:(?P<len>len)\(\s*(?P<lexpr>[\w.]+)\s*\)|(?P<expr>[\w.]+))\s*$")


@dataclass(frozen=True)
class AttrSpec:
    column: str
    function: str       # qualified name, e.g. GPUModelRunner.execute_model
    local: str
    path: tuple[str, ...]
    length: bool        # len(...) instead of the int value

    @classmethod
    def parse(cls, column: str, text: str) -> "AttrSpec":
        m = _SPEC.match(text)
        if not m:
            raise ValueError(f"python attribute {column}={text!r}: expected 'Qual.func:local.attr' or "
                             "'Qual.func:len(local.attr)'")
        expr = (m.group("lexpr") or m.group("expr")).split(".")
        local, path = expr[0], tuple(expr[1:])
        if len(path) > MAX_PATH:
            raise ValueError(f"python attribute {column}={text!r}: at most {MAX_PATH} attributes after the local")
        for name in (m.group("func"), local, *path):
            if len(name) > MAX_NAME or not name.isascii():
                raise ValueError(f"python attribute {column}={text!r}: names must be ASCII, up to {MAX_NAME} bytes")
        return cls(column, m.group("func"), local, path, bool(m.group("len")))


class _PyStr(ct.Structure):
    _fields_ = [("len", ct.c_uint32), ("_pad", ct.c_uint32), ("w", ct.c_char * 64)]


class _PySpec(ct.Structure):
    _fields_ = [("qual", ct.c_uint32), ("local", ct.c_uint32), ("n_path", ct.c_uint32), ("mode", ct.c_uint32),
                ("path", ct.c_uint32 * MAX_PATH), ("_pad", ct.c_uint32)]


class _PyCodeRec(ct.Structure):
    _fields_ = [("kind", ct.c_uint32), ("len", ct.c_uint32), ("code", ct.c_uint64), ("firstlineno", ct.c_int32),
                ("_pad", ct.c_uint32), ("name", ct.c_char * 64)]


def _macro(key: str) -> str:
    return "PY_OFF_" + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


def interp_defines(it: Interpreter) -> str:
    """The PY_* constants (version, _PyRuntime, offsets, type addresses) BPF programs read `it` with."""
    lines = [f"#define PY_MINOR {it.minor}", f"#define PY_RUNTIME_ADDR {it.runtime:#x}ull"]
    for key, value in sorted(it.offsets.items()):
        if key.startswith(("TPFLAGS_", "FRAME_OWNED_BY_CSTACK")):
            lines.append(f"#define PY_{key} {value}")
        elif key != "sizeof.PyObject":
            lines.append(f"#define {_macro(key)} {value}")
    for sym, macro in (("PyLong_Type", "LONG"), ("PyBool_Type", "BOOL"), ("PyList_Type", "LIST"),
                       ("PyTuple_Type", "TUPLE"), ("PyDict_Type", "DICT"), ("PyUnicode_Type", "UNICODE")):
        lines.append(f"#define PY_TYPE_{macro} {it.types.get(sym, 1):#x}ull")
    return "\n".join(lines) + "\n"


class PythonPack(ProbePack):
    name = "python"
    bpf_file = Path(__file__).with_name("python.bpf.c")
    buffers = {"gpu_events": "gpu_lost"}

    def __init__(self, attrs: dict[str, str] | list[tuple[str, str]] | tuple | None = None) -> None:
        items = list(attrs.items()) if isinstance(attrs, dict) else list(attrs if attrs is not None else DEFAULT_ATTRS)
        if len(items) > MAX_SPECS:
            raise ValueError(f"at most {MAX_SPECS} python attributes (got {len(items)})")
        self.specs = [AttrSpec.parse(col, text) for col, text in items]
        self.interp: Interpreter | None = None
        self.why_not = ""
        self.code_names: dict[int, str] = {}
        self.core: GpuCore | None = None
        self.steps_with_stack = 0
        self.attrs_read = 0
        self._strings: list[str] = []

    def applies_to(self, target: TargetProcess) -> bool:
        if any(target.library(stem) for stem in DEFER_TO):
            return False
        if not any(find_library(target, p) for p in GPU_LIBRARIES):
            return False  # it rides on the GPU core's step boundary
        self.interp, self.why_not = find_interpreter(target)
        return self.interp is not None

    def _string_id(self, s: str) -> int:
        if s not in self._strings:
            self._strings.append(s)
        return self._strings.index(s)

    def bpf_text(self, target: TargetProcess, options: dict) -> str:
        assert self.interp is not None
        return (core_text() + "\n" + interp_defines(self.interp) + f"#define PY_NSPECS {len(self.specs)}\n"
                + PYOBJECT_H.read_text() + self.bpf_file.read_text())

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        from bcc import BPF

        it = self.interp
        self.core = GpuCore.of(bpf)
        self.core.formatters.append(self._format)
        self.core.record_handlers[REC_PYCODE] = self._on_code
        strings, specs = bpf["py_strings"], bpf["py_specs"]
        for i, spec in enumerate(self.specs):
            # 3.10 has no co_qualname: match the function's own name.
            qual = spec.function if it.minor >= 11 else spec.function.rsplit(".", 1)[-1]
            rec = _PySpec(self._string_id(qual), self._string_id(spec.local), len(spec.path), int(spec.length))
            for j, attr in enumerate(spec.path):
                rec.path[j] = self._string_id(attr)
            specs[ct.c_int(i)] = rec
        for i, s in enumerate(self._strings):
            strings[ct.c_int(i)] = _PyStr(len(s), 0, s.encode())
        try:
            bpf["gpu_progs"][ct.c_int(0)] = ct.c_int(bpf.load_func("py_walk", BPF.KPROBE).fd)
            bpf["py_progs"][ct.c_int(1)] = ct.c_int(bpf.load_func("py_classify", BPF.KPROBE).fd)
            bpf["py_progs"][ct.c_int(2)] = ct.c_int(bpf.load_func("py_attr", BPF.KPROBE).fd)
        except Exception as exc:  # bcc raises plain Exception (e.g. the verifier's refusal)
            report.failed.append(("python: frame walk", f"BPF program refused: {str(exc).splitlines()[0]}"))
            return
        notes = f"; {'; '.join(it.notes)}" if it.notes else ""
        report.attached.append(f"python: Python {it.version} frames at each step's device-to-host copy "
                               f"({Path(it.path).name}, _PyRuntime {it.runtime:#x}{notes}); "
                               f"{len(self.specs)} attribute(s)")

    def _on_code(self, data) -> None:
        rec = ct.cast(data, ct.POINTER(_PyCodeRec)).contents
        self.code_names[rec.code] = rec.name[: rec.len].decode(errors="replace") or "?"

    def frame_names(self, ev: GpuStep) -> list[str]:
        codes = [ev.py_code[i] for i in range(min(ev.py_depth, len(ev.py_code)))]
        return [self.code_names.get(c, f"<code {c:#x}>") for c in codes if c]  # 0: C-stack shim frame

    def _format(self, ev: GpuStep, args: dict) -> None:
        if not ev.py_flags & 1:
            return
        names = self.frame_names(ev)
        self.steps_with_stack += 1
        args["py_stack"] = ";".join(names)
        args["py_depth"] = len(names)
        if ev.py_flags & 2:
            args["py_truncated"] = True
        args.setdefault("n_sampled", args.get("n_tokens"))
        seen: set[str] = set()
        for i, spec in enumerate(self.specs):
            if not (ev.py_attr_ok >> i) & 1 or spec.column in seen:
                continue
            seen.add(spec.column)
            args[spec.column] = int(ev.py_attr[i])
            self.attrs_read += 1

    def start(self, bpf, ctx) -> None:
        if self.core is not None:
            self.core.start(bpf, ctx)

    def finish(self, bpf, ctx) -> None:
        if self.core is not None:
            self.core.finish(bpf, ctx)

    def metadata(self) -> dict:
        return {"python_steps_with_stack": self.steps_with_stack, "python_attrs_read": self.attrs_read,
                "python_code_objects": len(self.code_names)}
