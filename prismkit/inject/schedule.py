"""Schedules: several scenarios, one after another with gaps, during one recording.

A schedule file is JSON: a list of windows (or {"windows": [...]})::

    [{"scenario": "cpu_contention", "start_s": 10, "duration_s": 8, "params": {"workers": 2}},
     {"scenario": "concurrency_step", "start_s": 30, "duration_s": 8},
     {"scenario": "stall", "start_s": 50, "duration_s": 5, "params": {"pause_ms": 80}}]

``start_s`` counts from the start of `prism inject`; windows must not overlap
(a workload window may run a little past its duration while its requests in
flight finish; the next window then starts late, and says so). Every window
is validated before the first one starts, so a typo in the last window fails
at once, not after minutes of recording.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import PrismError
from .base import Scenario, Stop, Target, run_window
from .labels import LabelWriter


@dataclass
class Window:
    scenario: Scenario
    start_s: float
    duration_s: float


def _num(entry: dict, key: str, i: int, default: float | None = None) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise PrismError(f"schedule window {i}: {key} must be a number >= 0 (got {value!r})")
    return float(value)


def parse_schedule(data: object, target: Target) -> list[Window]:
    from . import make_scenario

    if isinstance(data, dict):
        data = data.get("windows")
    if not isinstance(data, list) or not data:
        raise PrismError("a schedule is a non-empty JSON list of windows (or {\"windows\": [...]})")
    windows = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise PrismError(f"schedule window {i}: must be an object, not {entry!r}")
        extra = set(entry) - {"scenario", "start_s", "duration_s", "params"}
        if extra:
            raise PrismError(f"schedule window {i}: unknown key(s) {', '.join(sorted(extra))}")
        if "scenario" not in entry or "start_s" not in entry or "duration_s" not in entry:
            raise PrismError(f"schedule window {i}: needs scenario, start_s and duration_s")
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise PrismError(f"schedule window {i}: params must be an object")
        duration = _num(entry, "duration_s", i)
        if duration <= 0:
            raise PrismError(f"schedule window {i}: duration_s must be > 0")
        try:
            sc = make_scenario(str(entry["scenario"]), target, params)
        except PrismError as err:
            raise PrismError(f"schedule window {i}: {err}") from None
        windows.append(Window(sc, _num(entry, "start_s", i), duration))
    windows.sort(key=lambda w: w.start_s)
    for a, b in zip(windows, windows[1:]):
        if b.start_s < a.start_s + a.duration_s:
            raise PrismError(f"schedule windows overlap: {a.scenario.name} at {a.start_s:g}s for "
                             f"{a.duration_s:g}s and {b.scenario.name} at {b.start_s:g}s")
    return windows


def load_schedule(path: str | Path, target: Target) -> list[Window]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise PrismError(f"cannot read schedule {path}: {err.strerror}") from None
    except ValueError as err:
        raise PrismError(f"schedule {path} is not valid JSON: {err}") from None
    return parse_schedule(data, target)


def run_schedule(windows: list[Window], labels: LabelWriter, stop: Stop | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """Run the windows in order; write each label as soon as its window closes."""
    stop = stop or Stop()
    t0 = time.monotonic()
    t0_ns = time.monotonic_ns()
    out = []
    for w in windows:
        delay = t0 + w.start_s - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        elif delay < -0.05 and log:
            log(f"+{time.monotonic() - t0:7.3f}s note: {w.scenario.name} starts {-delay:.2f}s late "
                "(the previous window ran over)")
        if stop.is_set():
            break
        try:
            label = run_window(w.scenario, w.duration_s, stop, log, t0_ns)
        except BaseException as exc:
            if getattr(exc, "label", None) is not None:
                labels.write(exc.label)  # type: ignore[attr-defined]
            raise
        if label is not None:
            labels.write(label)
            out.append(label)
        if stop.is_set():
            break
    return out
