"""ELF symbol lookup and probe placement for uprobes.

A uprobe costs about 1 us when the kernel can emulate the probed instruction
(push, call, jmp, nop) and about 10 us when it must single-step it out of line
(sub, endbr64, rip-relative mov, ...). `probe_offset` finds the cheapest safe
place: the function entry when its first instruction is emulated, otherwise
just past that first instruction when skipping it cannot change what the probe
reads (it must not move the stack pointer, which a return probe relies on, and
must not write the argument registers the probe reads).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from elftools.elf.elffile import ELFFile

# Instructions the x86-64 uprobe code emulates instead of single-stepping.
EMULATED = ("push", "call", "jmp", "nop")
# Every name of each argument register, so a write to %r9d counts as a write to r9.
REGISTER_FAMILY = {
    "rdi": {"rdi", "edi", "di", "dil"}, "rsi": {"rsi", "esi", "si", "sil"},
    "rdx": {"rdx", "edx", "dx", "dl", "dh"}, "rcx": {"rcx", "ecx", "cx", "cl", "ch"},
    "r8": {"r8", "r8d", "r8w", "r8b"}, "r9": {"r9", "r9d", "r9w", "r9b"},
    "rsp": {"rsp", "esp", "sp", "spl"},
}


@dataclass(frozen=True)
class Symbol:
    name: str
    vaddr: int
    file_offset: int
    size: int


@lru_cache(maxsize=64)
def _symbols(path: str) -> dict[str, Symbol]:
    out: dict[str, Symbol] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        segments = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        for section_name in (".dynsym", ".symtab"):
            sec = elf.get_section_by_name(section_name)
            if sec is None:
                continue
            for sym in sec.iter_symbols():
                if sym["st_info"]["type"] != "STT_FUNC" or sym["st_shndx"] == "SHN_UNDEF" or not sym["st_value"]:
                    continue
                vaddr = sym["st_value"]
                off = vaddr
                for seg in segments:
                    if seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_memsz"]:
                        off = vaddr - seg["p_vaddr"] + seg["p_offset"]
                        break
                out.setdefault(sym.name, Symbol(sym.name, vaddr, off, sym["st_size"]))
    return out


def find_symbol(path: str, pattern: str) -> Symbol | None:
    """The function symbol named `pattern`, or the first whose name matches it as a regex."""
    syms = _symbols(path)
    if pattern in syms:
        return syms[pattern]
    rx = re.compile(pattern)
    matches = sorted(n for n in syms if rx.fullmatch(n))
    return syms[matches[0]] if matches else None


@dataclass(frozen=True)
class Placement:
    offset: int          # bytes past the symbol start
    first_insn: str      # e.g. "push rbx"
    emulated: bool       # True when the probe fires on an emulated instruction


def probe_offset(path: str, sym: Symbol, reads_args: tuple[str, ...] = ()) -> Placement:
    import capstone

    with open(path, "rb") as f:
        f.seek(sym.file_offset)
        code = f.read(16)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    insns = list(md.disasm(code, sym.vaddr, count=2))
    if not insns:
        return Placement(0, "?", False)
    first = insns[0]
    text = f"{first.mnemonic} {first.op_str}".strip()
    if first.mnemonic in EMULATED:
        return Placement(0, text, True)
    _, written = first.regs_access()
    written_names = {first.reg_name(r) for r in written}
    touches_stack = bool(written_names & REGISTER_FAMILY["rsp"]) or first.mnemonic in ("pop", "ret")
    clobbers_args = any(written_names & REGISTER_FAMILY.get(a, {a}) for a in reads_args)
    relative_branch = first.group(capstone.CS_GRP_JUMP) or first.group(capstone.CS_GRP_CALL)
    if touches_stack or clobbers_args or relative_branch:
        return Placement(0, text, False)
    second = insns[1] if len(insns) > 1 else None
    emulated = bool(second and second.mnemonic in EMULATED)
    return Placement(first.size, text, emulated)
