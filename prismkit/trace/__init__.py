"""Read Perfetto (and Chrome JSON) traces into pandas: ``load_trace(path) -> Trace``.

See ``reader.py`` for the pipeline, ``model.py`` for the tables, and
docs/trace-format.md for the conventions that give the domain tables.
"""
from .model import Trace
from .reader import TraceWarning, load_trace
from ._backend import native_available

__all__ = ["Trace", "TraceWarning", "load_trace", "native_available"]
