"""Tracepoint argument structs built from tracefs format files (no kernel headers).

BCC's TRACEPOINT_PROBE would generate these itself, but it also attaches the
program while compiling, and a tracepoint missing on the host would then fail
the whole compilation (every pack's). Here a pack asks for the struct, gets
None when the tracepoint does not exist, leaves its program out and says so
in the attach report; the layout comes from the kernel's own format file, so
field offsets are never guessed.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d);")


def tracefs() -> str | None:
    for root in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(root, "events")):
            return root
    return None


def tracepoint_exists(category: str, event: str) -> bool:
    root = tracefs()
    return bool(root) and os.path.isfile(os.path.join(root, "events", category, event, "format"))


@lru_cache(maxsize=None)
def tracepoint_fields(category: str, event: str) -> tuple[tuple[str, int, int, bool, int], ...] | None:
    """(name, offset, size, signed, array_len) for each field, or None if the tracepoint is missing."""
    root = tracefs()
    if root is None:
        return None
    try:
        with open(os.path.join(root, "events", category, event, "format")) as f:
            text = f.read()
    except OSError:
        return None
    out = []
    for m in _FIELD.finditer(text):
        decl = m.group("decl").strip()
        arr = 0
        am = re.search(r"\[(\d*)\]\s*$", decl)
        if am:
            arr = int(am.group(1) or 0)
            decl = decl[: am.start()].strip()
        name = re.split(r"[\s*]", decl)[-1]
        out.append((name, int(m.group("off")), int(m.group("size")), m.group("signed") == "1", arr))
    return tuple(out)


_INT = {(1, False): "u8", (2, False): "u16", (4, False): "u32", (8, False): "u64",
        (1, True): "s8", (2, True): "s16", (4, True): "s32", (8, True): "s64"}


def tracepoint_struct(category: str, event: str, struct_name: str, wanted: tuple[str, ...]) -> str | None:
    """C text of a packed struct holding the `wanted` fields at their real offsets.

    Returns None if the tracepoint, or one of the wanted fields, does not exist.
    Arrays come out as byte arrays (e.g. `char next_comm[16]`), integers as
    u8..u64 / s8..s64 of the field's size.
    """
    fields = tracepoint_fields(category, event)
    if not fields:
        return None
    by_name = {f[0]: f for f in fields}
    if any(w not in by_name for w in wanted):
        return None
    lines = [f"struct {struct_name} {{"]
    pos = 0
    for name, off, size, signed, arr in sorted((by_name[w] for w in wanted), key=lambda f: f[1]):
        if off > pos:
            lines.append(f"    u8 __pad_{pos}[{off - pos}];")
        if arr:
            lines.append(f"    char {name}[{size}];")
        elif (size, signed) in _INT:
            lines.append(f"    {_INT[(size, signed)]} {name};")
        else:
            lines.append(f"    u8 {name}[{size}];")
        pos = off + size
    lines.append("};")
    # The kernel lays fields out at their natural alignment, so the explicit pads
    # reproduce the layout without `packed` (which would make clang load byte by byte).
    for name, off, *_ in (by_name[w] for w in wanted):
        lines.append(f'_Static_assert(__builtin_offsetof(struct {struct_name}, {name}) == {off}, '
                     f'"{category}:{event} field {name} offset");')
    return "\n".join(lines)
