"""Pick the native decoder (``_wire``, a C extension) or its pure-Python twin.

``PRISM_PURE_PYTHON=1`` forces the Python one (tests use it to compare both).
When the extension is missing, the first use warns once and carries on, slower.
"""
from __future__ import annotations

import os
import warnings

from . import _pywire

ABI = 3   # must match _wire.c's ABI constant: a stale build is not used

_stale = False
try:
    from . import _wire as _native  # type: ignore[attr-defined]
    if getattr(_native, "ABI", None) != ABI:
        _native, _stale = None, True
except ImportError:  # pragma: no cover - depends on the build
    _native = None

_warned = False


def native_available() -> bool:
    return _native is not None


def module(pure_python: bool | None = None):
    """The decoding module to use (has Decoder, match_slices, build_args)."""
    global _warned
    if pure_python is None:
        pure_python = os.environ.get("PRISM_PURE_PYTHON", "") not in ("", "0")
    if _native is not None and not pure_python:
        return _native
    if _native is None and not pure_python and not _warned:
        _warned = True
        what = "is out of date" if _stale else "is not built"
        warnings.warn(f"prismkit.trace: the native decoder (prismkit/trace/_wire.c) {what}; "
                      "using the pure-Python reader, which is about 50x slower. "
                      "Rebuild with `pip install -e .`.", RuntimeWarning, stacklevel=3)
    return _pywire


def build_args(begin_rows, end_rows, offsets, key, type_, val, strings, objects):
    mod = _native if _native is not None else _pywire
    return mod.build_args(begin_rows, end_rows, offsets, key, type_, val, strings, objects)
