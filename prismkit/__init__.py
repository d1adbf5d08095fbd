"""prismkit: where every millisecond of LLM inference latency goes, from the outside.

Data flow (see DESIGN.md): eBPF recorders (``recorders/``) write Perfetto
traces; ``load_trace`` reads them into pandas; analyzers break latency down,
model the workload, detect anomalies and explain them.
"""
from .errors import PrismError
from .trace import load_trace, Trace

__version__ = "0.1.0"
__all__ = ["PrismError", "__version__"]
