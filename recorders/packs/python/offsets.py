"""CPython struct offsets (x86-64, default non-debug, GIL builds) for the python pack.

Generated from each interpreter's own headers with offsets_check.c (the tests
recompile it against every interpreter they find and compare). They are
stable within a minor version. 3.13+ interpreters also describe themselves:
`_Py_DebugOffsets` at the start of `_PyRuntime` (see debug_offsets()), which
overrides the table for every field it covers; the fields it lacks (dict
internals, the heap type's cached keys) come from the table.
"""
from __future__ import annotations

import struct

TABLES: dict[str, dict[str, int]] = {
    "3.10": {
        "runtime.interpreters_head": 32,
        "interp.threads_head": 8,
        "interp.next": 0,
        "tstate.next": 8,
        "tstate.thread_id": 176,
        "tstate.frame": 24,
        "frameobj.f_back": 24,
        "frameobj.f_code": 32,
        "frameobj.f_localsplus": 352,
        "code.varnames": 72,
        "keys.size": 8,
        "keys.indices": 40,
        "keys.nentries": 32,
        "code.name": 112,
        "code.filename": 104,
        "code.firstlineno": 40,
        "code.argcount": 16,
        "type.flags": 168,
        "type.basicsize": 32,
        "type.dictoffset": 288,
        "type.name": 24,
        "tuple.items": 24,
        "varobj.size": 16,
        "list.items": 24,
        "dict.used": 16,
        "dict.keys": 32,
        "dict.values": 40,
        "unicode.length": 16,
        "unicode.state": 32,
        "unicode.ascii_data": 48,
        "long.digits": 24,
        "float.value": 16,
        "TPFLAGS_MANAGED_DICT": 0,
        "TPFLAGS_INLINE_VALUES": 0,
        "sizeof.PyObject": 16,
    },
    "3.11": {
        "runtime.interpreters_head": 40,
        "interp.threads_head": 16,
        "interp.next": 0,
        "tstate.next": 8,
        "tstate.native_thread_id": 160,
        "tstate.cframe": 56,
        "cframe.current_frame": 8,
        "iframe.previous": 48,
        "iframe.code": 32,
        "iframe.owner": 69,
        "iframe.localsplus": 72,
        "code.qualname": 128,
        "code.localsplusnames": 96,
        "FRAME_OWNED_BY_CSTACK": -1,
        "keys.log2_index_bytes": 9,
        "keys.kind": 10,
        "keys.indices": 32,
        "heaptype.cached_keys": 872,
        "keys.nentries": 24,
        "code.name": 120,
        "code.filename": 112,
        "code.firstlineno": 72,
        "code.argcount": 56,
        "type.flags": 168,
        "type.basicsize": 32,
        "type.dictoffset": 288,
        "type.name": 24,
        "tuple.items": 24,
        "varobj.size": 16,
        "list.items": 24,
        "dict.used": 16,
        "dict.keys": 32,
        "dict.values": 40,
        "unicode.length": 16,
        "unicode.state": 32,
        "unicode.ascii_data": 48,
        "long.digits": 24,
        "float.value": 16,
        "TPFLAGS_MANAGED_DICT": 16,
        "TPFLAGS_INLINE_VALUES": 0,
        "sizeof.PyObject": 16,
    },
    "3.12": {
        "runtime.interpreters_head": 40,
        "interp.threads_head": 72,
        "interp.next": 0,
        "tstate.next": 8,
        "tstate.native_thread_id": 144,
        "tstate.cframe": 56,
        "cframe.current_frame": 0,
        "iframe.previous": 8,
        "iframe.code": 0,
        "iframe.owner": 70,
        "iframe.localsplus": 72,
        "code.qualname": 128,
        "code.localsplusnames": 96,
        "FRAME_OWNED_BY_CSTACK": 3,
        "keys.log2_index_bytes": 9,
        "keys.kind": 10,
        "keys.indices": 32,
        "heaptype.cached_keys": 880,
        "keys.nentries": 24,
        "code.name": 120,
        "code.filename": 112,
        "code.firstlineno": 68,
        "code.argcount": 52,
        "type.flags": 168,
        "type.basicsize": 32,
        "type.dictoffset": 288,
        "type.name": 24,
        "tuple.items": 24,
        "varobj.size": 16,
        "list.items": 24,
        "dict.used": 16,
        "dict.keys": 32,
        "dict.values": 40,
        "unicode.length": 16,
        "unicode.state": 32,
        "unicode.ascii_data": 40,
        "long.digits": 24,
        "long.tag": 16,
        "float.value": 16,
        "TPFLAGS_MANAGED_DICT": 16,
        "TPFLAGS_INLINE_VALUES": 0,
        "sizeof.PyObject": 16,
    },
    "3.13": {
        "runtime.interpreters_head": 632,
        "interp.threads_head": 7344,
        "interp.next": 7264,
        "tstate.next": 8,
        "tstate.native_thread_id": 160,
        "tstate.current_frame": 72,
        "tstate.cframe": -1,
        "iframe.previous": 8,
        "iframe.code": 0,
        "iframe.owner": 70,
        "iframe.localsplus": 72,
        "code.qualname": 128,
        "code.localsplusnames": 96,
        "FRAME_OWNED_BY_CSTACK": 3,
        "keys.log2_index_bytes": 9,
        "keys.kind": 10,
        "keys.indices": 32,
        "heaptype.cached_keys": 880,
        "keys.nentries": 24,
        "code.name": 120,
        "code.filename": 112,
        "code.firstlineno": 68,
        "code.argcount": 52,
        "type.flags": 168,
        "type.basicsize": 32,
        "type.dictoffset": 288,
        "type.name": 24,
        "tuple.items": 24,
        "varobj.size": 16,
        "list.items": 24,
        "dict.used": 16,
        "dict.keys": 32,
        "dict.values": 40,
        "unicode.length": 16,
        "unicode.state": 32,
        "unicode.ascii_data": 40,
        "long.digits": 24,
        "long.tag": 16,
        "float.value": 16,
        "TPFLAGS_MANAGED_DICT": 16,
        "TPFLAGS_INLINE_VALUES": 4,
        "sizeof.PyObject": 16,
    },
}

# Not in the headers' public structs, from the CPython sources of each version:
EXTRA = {
    "3.10": {"values.items": 0},
    # Py_TPFLAGS_MANAGED_DICT objects: PyDictValues * at obj - 32, dict at obj - 24.
    "3.11": {"values.items": 0, "obj.values_ptr": -32, "obj.managed_dict": -24},
    # PyDictOrValues at obj - 24: a dict pointer, or (values - 1) tagged with bit 0.
    "3.12": {"values.items": 0, "obj.managed_dict": -24},
    # Inline values right after the object (tp_basicsize); header {capacity, size, embedded, valid} then values[].
    "3.13": {"values.items": 8, "values.valid": 3, "obj.managed_dict": -24},
}
SUPPORTED = tuple(TABLES)


def offsets_for(version: str) -> dict[str, int] | None:
    if version not in TABLES:
        return None
    return {**TABLES[version], **EXTRA[version]}


# _Py_DebugOffsets (3.13): cookie[8], version, free_threaded, then sections of
# uint64 fields, each section starting with its struct's size.
_DEBUG_SECTIONS_313 = (
    ("runtime_state", ("size", "finalizing", "interpreters_head")),
    ("interpreter_state", ("size", "id", "next", "threads_head", "gc", "imports_modules", "sysdict", "builtins",
                           "ceval_gil", "gil_runtime_state", "gil_runtime_state_enabled",
                           "gil_runtime_state_locked", "gil_runtime_state_holder")),
    ("thread_state", ("size", "prev", "next", "interp", "current_frame", "thread_id", "native_thread_id",
                      "datastack_chunk", "status")),
    ("interpreter_frame", ("size", "previous", "executable", "instr_ptr", "localsplus", "owner")),
    ("code_object", ("size", "filename", "name", "qualname", "linetable", "firstlineno", "argcount",
                     "localsplusnames", "localspluskinds", "co_code_adaptive")),
    ("pyobject", ("size", "ob_type")),
    ("type_object", ("size", "tp_name", "tp_repr", "tp_flags")),
    ("tuple_object", ("size", "ob_item", "ob_size")),
    ("list_object", ("size", "ob_item", "ob_size")),
    ("dict_object", ("size", "ma_keys", "ma_values")),
    ("float_object", ("size", "ob_fval")),
    ("long_object", ("size", "lv_tag", "ob_digit")),
    ("bytes_object", ("size", "ob_size", "ob_sval")),
    ("unicode_object", ("size", "state", "length", "asciiobject_size")),
    ("gc", ("size", "collecting")),
)
# Table key <- (section, field) of _Py_DebugOffsets
_FROM_DEBUG = {
    "runtime.interpreters_head": ("runtime_state", "interpreters_head"),
    "interp.threads_head": ("interpreter_state", "threads_head"),
    "interp.next": ("interpreter_state", "next"),
    "tstate.next": ("thread_state", "next"),
    "tstate.native_thread_id": ("thread_state", "native_thread_id"),
    "tstate.current_frame": ("thread_state", "current_frame"),
    "iframe.previous": ("interpreter_frame", "previous"),
    "iframe.code": ("interpreter_frame", "executable"),
    "iframe.owner": ("interpreter_frame", "owner"),
    "iframe.localsplus": ("interpreter_frame", "localsplus"),
    "code.qualname": ("code_object", "qualname"),
    "code.name": ("code_object", "name"),
    "code.filename": ("code_object", "filename"),
    "code.firstlineno": ("code_object", "firstlineno"),
    "code.argcount": ("code_object", "argcount"),
    "code.localsplusnames": ("code_object", "localsplusnames"),
    "type.flags": ("type_object", "tp_flags"),
    "type.name": ("type_object", "tp_name"),
    "tuple.items": ("tuple_object", "ob_item"),
    "list.items": ("list_object", "ob_item"),
    "dict.keys": ("dict_object", "ma_keys"),
    "dict.values": ("dict_object", "ma_values"),
    "long.tag": ("long_object", "lv_tag"),
    "long.digits": ("long_object", "ob_digit"),
    "unicode.state": ("unicode_object", "state"),
    "unicode.length": ("unicode_object", "length"),
    "unicode.ascii_data": ("unicode_object", "asciiobject_size"),
}
DEBUG_COOKIE = b"xdebugpy"
DEBUG_SIZE_313 = 24 + 8 * sum(len(f) for _, f in _DEBUG_SECTIONS_313)


def parse_debug_offsets(raw: bytes) -> dict:
    """The 3.13 _Py_DebugOffsets fields, as {"version": hex, "free_threaded": 0/1, (section, field): offset}."""
    if len(raw) < DEBUG_SIZE_313 or raw[:8] != DEBUG_COOKIE:
        raise ValueError("no _Py_DebugOffsets cookie at the start of _PyRuntime")
    version, free_threaded = struct.unpack_from("<QQ", raw, 8)
    out: dict = {"version": version, "free_threaded": free_threaded}
    pos = 24
    for section, fields in _DEBUG_SECTIONS_313:
        for name in fields:
            out[(section, name)] = struct.unpack_from("<Q", raw, pos)[0]
            pos += 8
    return out


def apply_debug_offsets(table: dict[str, int], debug: dict) -> tuple[dict[str, int], list[str]]:
    """The table with every field _Py_DebugOffsets covers taken from it; also the keys that differed."""
    out = dict(table)
    changed = []
    for key, src in _FROM_DEBUG.items():
        if src in debug:
            value = int(debug[src])
            if key in out and out[key] != value:
                changed.append(key)
            out[key] = value
    return out, changed
