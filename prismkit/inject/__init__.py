"""The anomaly simulator: real faults and workload changes on a live server, with ground-truth labels.

    prism inject cpu_contention --pid PID --duration 10 --labels out/labels.jsonl
    prism inject stall --pid PID --duration 5 -p pause_ms=80 -p period_ms=400 --labels out/labels.jsonl
    prism inject --schedule sched.json --pid PID --labels out/labels.jsonl
    prism inject --list

Fault scenarios (kind "fault") change the system under the server:
cpu_contention, cpu_throttle (cpu.py), memory_bandwidth, memory_pressure
(memory.py), io_contention (io.py), stall (stall.py). Workload scenarios
(kind "workload", the negatives) change only its load: concurrency_step,
prompt_shift, burst (workload.py). Each module's docstring says exactly what
it does; base.py has the scenario interface, the label semantics and the
cleanup guarantees; labels.py reads labels into pandas (`read_labels`).

From Python (any thread; the stop flag ends a window early)::

    from prismkit.inject import Target, make_scenario, run_window, Stop
    label = run_window(make_scenario("stall", Target.from_pid(pid), {"pause_ms": 50}), 5.0, Stop())

This package imports nothing heavy at import time: its helper processes
(guard.py, worker.py) start fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .base import Scenario, Target


def scenarios() -> dict[str, type]:
    """Scenario classes by name, faults first."""
    from .cpu import CpuContention, CpuThrottle
    from .io import IoContention
    from .memory import MemoryBandwidth, MemoryPressure
    from .stall import Stall
    from .workload import Burst, ConcurrencyStep, PromptShift

    classes = [CpuContention, CpuThrottle, MemoryBandwidth, MemoryPressure, Stall, IoContention,
               ConcurrencyStep, PromptShift, Burst]
    return {c.name: c for c in classes}


FAULTS = ("cpu_contention", "cpu_throttle", "memory_bandwidth", "memory_pressure", "stall", "io_contention")
WORKLOADS = ("concurrency_step", "prompt_shift", "burst")


def make_scenario(name: str, target: "Target", params: dict | None = None) -> "Scenario":
    from ..errors import PrismError

    table = scenarios()
    if name not in table:
        raise PrismError(f"unknown scenario {name!r} (known: {', '.join(table)})")
    return table[name](target, params or {})


def __getattr__(name: str):
    if name in ("Target", "Scenario", "Stop", "run_window", "close_guard"):
        from . import base

        return getattr(base, name)
    if name in ("read_labels", "expand_pauses", "label_batches", "LabelWriter"):
        from . import labels

        return getattr(labels, name)
    if name in ("load_schedule", "parse_schedule", "run_schedule"):
        from . import schedule

        return getattr(schedule, name)
    raise AttributeError(name)
