"""Workload scenarios: the negatives. They change the load, not the system.

Their labels have kind "workload": batches get slower because they are
bigger or longer, which a good detector must explain by the workload and not
flag. Each drives the server (``--url``, or found from the PID's listening
port) with the load generator in a helper process, on top of whatever load
is already running:

concurrency_step
    ``concurrency`` extra closed-loop clients for the window (prompt/output
    lengths ``prompt``/``output``): more requests in flight, bigger batches.
prompt_shift
    ``concurrency`` closed-loop clients with long prompts (default
    uniform:768:1536 tokens): prefill-heavy batches, longer contexts.
burst
    ``n`` requests arriving within ``spread_s`` seconds at the window's start;
    the window ends when the last of them is done (or at the duration).

The label covers the first request sent to the last one finished (client
time stamps, CLOCK_MONOTONIC); its params report what was sent
(``n_sent``, ``n_ok``, token counts).
"""
from __future__ import annotations

import json
import math
import signal
import time

from ..errors import PrismError
from .base import Param, Scenario, start_helpers


def _dist_ok(spec: str) -> bool:
    from ..load import parse_length_dist

    try:
        parse_length_dist(spec)
    except PrismError:
        return False
    return True


_DIST = "fixed:N, uniform:A:B, lognormal:MEDIAN:SIGMA or normal:MEAN:STD"


class _LoadScenario(Scenario):
    kind = "workload"
    mode = "closed"

    def validate(self) -> None:
        self.helpers = []
        self.url = self.target.resolve_url()
        self.facts["url"] = self.url

    def _cfg(self, duration_s: float) -> dict:
        raise NotImplementedError

    def _start(self) -> None:
        cfg = self._cfg(getattr(self, "duration_s", 10.0))
        cfg.update(url=self.url, prompt=self.params["prompt"], output=self.params["output"],
                   seed=self.params.get("seed", 0))
        self.applied = True
        self.helpers = start_helpers("load", [cfg], timeout=60.0)

    def finished(self) -> bool:
        return bool(self.helpers) and not self.helpers[0].alive()

    def _stop(self) -> None:
        # Normal end: closed-loop clients stop sending at the duration and their
        # requests in flight complete; a burst has finished. Give them time.
        # A second Ctrl-C / SIGTERM (the window's stop flag) cuts this short.
        deadline = time.monotonic() + 120
        stop = getattr(self, "stop_flag", None)
        while self.helpers and self.helpers[0].alive() and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            time.sleep(0.05)
        self._cleanup()

    def _cleanup(self) -> None:
        for h in self.helpers:
            h.stop(signal.SIGTERM, grace=10.0)  # run_load stops and reports what it did
            self._collect(h.output)
        self.helpers = []

    def _collect(self, output: str) -> None:
        for line in reversed(output.strip().splitlines()):
            try:
                summary = json.loads(line)
            except ValueError:
                continue
            if summary.get("first_send_ns"):
                self.facts["_start_ns"] = summary.pop("first_send_ns")
            if summary.get("last_end_ns"):
                self.facts["_end_ns"] = summary.pop("last_end_ns")
            summary.pop("first_send_ns", None)
            summary.pop("last_end_ns", None)
            self.facts.update(summary)
            return

    def check(self) -> None:
        pass


class ConcurrencyStep(_LoadScenario):
    name = "concurrency_step"
    summary = "extra closed-loop clients: more requests in flight"
    PARAMS = {
        "concurrency": Param(8, "extra closed-loop clients", int, lambda v: 1 <= v <= 1024, "1..1024"),
        "prompt": Param("uniform:16:128", f"prompt lengths in tokens ({_DIST})", str, _dist_ok, _DIST),
        "output": Param("uniform:16:64", f"output lengths in tokens ({_DIST})", str, _dist_ok, _DIST),
        "seed": Param(0, "random seed", int),
    }

    def _cfg(self, duration_s: float) -> dict:
        c = self.params["concurrency"]
        # Enough requests that the clients never run dry before the duration.
        n = min(200_000, c * max(8, math.ceil(duration_s * 50)))
        return {"mode": "closed", "n": n, "concurrency": c, "duration_s": duration_s}


class PromptShift(ConcurrencyStep):
    name = "prompt_shift"
    summary = "closed-loop clients with long prompts: prefill-heavy batches"
    PARAMS = {
        "concurrency": Param(2, "closed-loop clients", int, lambda v: 1 <= v <= 1024, "1..1024"),
        "prompt": Param("uniform:768:1536", f"prompt lengths in tokens ({_DIST})", str, _dist_ok, _DIST),
        "output": Param("fixed:16", f"output lengths in tokens ({_DIST})", str, _dist_ok, _DIST),
        "seed": Param(0, "random seed", int),
    }


class Burst(_LoadScenario):
    name = "burst"
    summary = "a burst of arrivals at the window's start"
    PARAMS = {
        "n": Param(16, "requests in the burst", int, lambda v: 1 <= v <= 100_000, "1..100000"),
        "spread_s": Param(0.1, "the arrivals are spread evenly over this many seconds", float,
                          lambda v: 0 <= v <= 3600, "0..3600"),
        "prompt": Param("uniform:16:128", f"prompt lengths in tokens ({_DIST})", str, _dist_ok, _DIST),
        "output": Param("uniform:16:64", f"output lengths in tokens ({_DIST})", str, _dist_ok, _DIST),
        "seed": Param(0, "random seed", int),
    }

    def _cfg(self, duration_s: float) -> dict:
        return {"mode": "burst", "n": self.params["n"], "spread_s": self.params["spread_s"],
                "duration_s": max(duration_s, self.params["spread_s"])}
