"""Locate a live CPython interpreter in a target process: which libpython (or
executable) holds it, its version, `_PyRuntime` and the type objects' run-time
addresses, and the struct offsets to walk it with (offsets.py, overridden by
`_Py_DebugOffsets` on 3.13+)."""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache

from . import offsets as O

TYPE_SYMBOLS = ("PyLong_Type", "PyBool_Type", "PyList_Type", "PyTuple_Type", "PyDict_Type", "PyUnicode_Type")


@dataclass
class Interpreter:
    path: str               # the ELF file holding _PyRuntime (libpython3.X.so or the executable)
    version: str            # "3.12"
    runtime: int            # run-time address of _PyRuntime
    types: dict[str, int]   # run-time addresses of TYPE_SYMBOLS
    offsets: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def minor(self) -> int:
        return int(self.version.split(".")[1])


@lru_cache(maxsize=32)
def _elf_objects(path: str) -> tuple[dict[str, int], int]:
    """Data symbols (name -> vaddr) and the first PT_LOAD segment's vaddr - offset (page-aligned base)."""
    from elftools.elf.elffile import ELFFile

    want = {"_PyRuntime", "Py_Version", *TYPE_SYMBOLS}
    out: dict[str, int] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        first = next((s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"), None)
        base = (first["p_vaddr"] - first["p_offset"]) if first is not None else 0
        for name in (".dynsym", ".symtab"):
            sec = elf.get_section_by_name(name)
            if sec is None:
                continue
            for sym in sec.iter_symbols():
                if sym.name in want and sym["st_value"] and sym.name not in out:
                    out[sym.name] = sym["st_value"]
    return out, base


def _load_bias(pid: int, path: str) -> int | None:
    """Run-time address minus ELF vaddr for `path` in `pid` (from its offset-0 mapping)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].strip() == path and int(parts[2], 16) == 0:
                    return int(parts[0].split("-")[0], 16)
    except OSError:
        return None
    return None


def read_memory(pid: int, addr: int, size: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/mem", "rb") as f:
            f.seek(addr)
            return f.read(size)
    except (OSError, ValueError, OverflowError):
        return None


def _version_from(path: str, pid: int, syms: dict[str, int], bias: int) -> str | None:
    m = re.search(r"python(3\.\d+)", path.rsplit("/", 1)[-1])
    if m:
        return m.group(1)
    if "Py_Version" in syms:  # 3.11+: const unsigned long Py_Version = PY_VERSION_HEX
        raw = read_memory(pid, bias + syms["Py_Version"], 4)
        if raw:
            hexv = struct.unpack("<I", raw)[0]
            return f"{hexv >> 24}.{(hexv >> 16) & 0xff}"
    return None


def candidate_paths(target) -> list[str]:
    """libpython3.X first (the interpreter state lives there in shared builds), then the executable."""
    libs = [path for stem, path in sorted(target.libraries.items()) if re.fullmatch(r"libpython3\.\d+", stem)]
    exe = target.libraries.get("exe")
    return libs + ([exe] if exe else [])


def find_interpreter(target) -> tuple[Interpreter | None, str]:
    """The target's interpreter, or None and why not."""
    why = "no libpython3.X and no _PyRuntime in the executable"
    for path in candidate_paths(target):
        try:
            syms, base = _elf_objects(path)
        except (OSError, Exception):
            continue
        if "_PyRuntime" not in syms:
            continue
        start = _load_bias(target.pid, path)
        if start is None:
            why = f"{path} has no offset-0 mapping in PID {target.pid}"
            continue
        bias = start - (base & ~0xFFF)
        version = _version_from(path, target.pid, syms, bias)
        if version is None:
            why = f"cannot tell the Python version of {path}"
            continue
        runtime = bias + syms["_PyRuntime"]
        table = O.offsets_for(version)
        notes: list[str] = []
        minor = int(version.split(".")[1])
        if minor >= 13:
            raw = read_memory(target.pid, runtime, O.DEBUG_SIZE_313)
            try:
                debug = O.parse_debug_offsets(raw or b"")
            except ValueError as err:
                if table is None:
                    return None, f"Python {version}: {err}"
                notes.append(str(err))
                debug = None
            if debug is not None:
                if debug["free_threaded"]:
                    return None, f"Python {version} free-threaded build: not supported"
                if table is None:  # a newer 3.x: only when its debug offsets keep the 3.13 layout
                    return None, f"Python {version}: no offsets table (supported: {', '.join(O.SUPPORTED)})"
                table, changed = O.apply_debug_offsets(table, debug)
                notes.append("offsets from _Py_DebugOffsets" + (f" (differed from table: {changed})" if changed else ""))
        if table is None:
            return None, f"Python {version}: no offsets table (supported: {', '.join(O.SUPPORTED)})"
        types = {name: bias + syms[name] for name in TYPE_SYMBOLS if name in syms}
        if minor < 11:
            off = pthread_tid_offset(target.pid, runtime, table)
            if off is None:
                return None, f"Python {version}: cannot map its threads (pthread_t) to thread ids"
            table = {**table, "pthread.tid": off}
            notes.append(f"threads matched by pthread tid at +{off:#x}")
        return Interpreter(path, version, runtime, types, table, notes), ""
    return None, why


def _u64(pid: int, addr: int) -> int:
    raw = read_memory(pid, addr, 8)
    return struct.unpack("<Q", raw)[0] if raw and len(raw) == 8 else 0


def pthread_tid_offset(pid: int, runtime: int, table: dict[str, int]) -> int | None:
    """Where glibc's struct pthread keeps the kernel thread id (3.10 has only pthread_self() in its
    thread states). Found on the main thread, whose tid is the pid; glibc x86-64 puts it at 0x2d0."""
    interp = _u64(pid, runtime + table["runtime.interpreters_head"])
    t = _u64(pid, interp + table["interp.threads_head"]) if interp else 0
    for _ in range(256):
        if not t:
            break
        th = _u64(pid, t + table["tstate.thread_id"])
        raw = read_memory(pid, th, 2048) if th else None
        if raw:
            hits = [o for o in range(0, len(raw) - 3, 4) if struct.unpack_from("<i", raw, o)[0] == pid]
            if hits:
                return 0x2D0 if 0x2D0 in hits else hits[0]
        t = _u64(pid, t + table["tstate.next"])
    return None
