"""Name a code address in a live process: its mapping in /proc/PID/maps, then the
ELF symbol (.symtab, else .dynsym) that covers it in that file.

cudaLaunchKernel's first argument is the kernel's host stub (the function the
compiler emits for a __global__ kernel, whose symbol carries the kernel's
mangled name), so this names every runtime-API kernel launch.
"""
from __future__ import annotations

import bisect
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    path: str


def read_maps(pid: int) -> list[Mapping]:
    out = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) < 6 or not parts[5].startswith("/"):
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append(Mapping(lo, hi, int(parts[2], 16), parts[5].strip()))
    except OSError:
        pass
    return out


@lru_cache(maxsize=128)
def _elf_index(path: str):
    """(PT_LOAD segments as (p_offset, p_vaddr, p_filesz), sorted [(vaddr, size, name)])."""
    from elftools.elf.elffile import ELFFile

    segs, syms = [], {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD":
                    segs.append((seg["p_offset"], seg["p_vaddr"], seg["p_filesz"]))
            for sec_name in (".dynsym", ".symtab"):
                sec = elf.get_section_by_name(sec_name)
                if sec is None:
                    continue
                for sym in sec.iter_symbols():
                    if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC") or not sym["st_value"]:
                        continue
                    syms[sym["st_value"]] = (sym["st_size"], sym.name)  # .symtab wins (read last)
    except (OSError, Exception):
        return [], [], []
    table = sorted((v, s, n) for v, (s, n) in syms.items())
    return segs, [t[0] for t in table], table


class ProcessSymbols:
    """Address -> 'symbol' (or 'symbol+0xoff', or 'lib.so+0xoff') for one process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.maps = read_maps(pid)
        self._cache: dict[int, str | None] = {}

    def refresh(self) -> None:
        maps = read_maps(self.pid)
        if maps:
            self.maps = maps

    def _mapping(self, addr: int) -> Mapping | None:
        for m in self.maps:
            if m.start <= addr < m.end:
                return m
        return None

    def resolve(self, addr: int) -> str | None:
        if addr in self._cache:
            return self._cache[addr]
        m = self._mapping(addr)
        if m is None:
            self.refresh()  # a library loaded after the snapshot (dlopen)
            m = self._mapping(addr)
        name = None
        if m is not None:
            file_off = addr - m.start + m.offset
            segs, starts, table = _elf_index(m.path)
            vaddr = None
            for p_off, p_vaddr, p_filesz in segs:
                if p_off <= file_off < p_off + p_filesz:
                    vaddr = file_off - p_off + p_vaddr
                    break
            if vaddr is not None:
                i = bisect.bisect_right(starts, vaddr) - 1
                if i >= 0:
                    start, size, sym = table[i]
                    if vaddr == start:
                        name = sym
                    elif vaddr < start + max(size, 1):
                        name = f"{sym}+{vaddr - start:#x}"
            if name is None:
                name = f"{m.path.rsplit('/', 1)[-1]}+{file_off:#x}"
        self._cache[addr] = name
        return name


def demangle(names: list[str]) -> dict[str, str]:
    """Itanium C++ names made readable with c++filt when it is installed (else unchanged)."""
    mangled = sorted({n for n in names if n.startswith("_Z")})
    out = {n: n for n in names}
    tool = shutil.which("c++filt")
    if not mangled or not tool:
        return out
    try:
        proc = subprocess.run([tool], input="\n".join(mangled) + "\n", capture_output=True, text=True, timeout=10)
        lines = proc.stdout.splitlines()
        if len(lines) == len(mangled):
            out.update(dict(zip(mangled, lines)))
    except (OSError, subprocess.SubprocessError):
        pass
    return out
