"""stall: short SIGSTOP/SIGCONT pauses of the whole server process.

Every ``period_ms`` the server is stopped (SIGSTOP stops all its threads) for
``pause_ms`` and continued (SIGCONT) -- what a page-fault storm, a stop-the-
world hypervisor hiccup or a misbehaving monitoring agent looks like from the
server's side. The first pause starts at the window's start; ``jitter``
spreads the pause starts by up to that fraction of the period.

Labels: ONE label for the whole episode window, with the exact pauses in
``params["pauses"]`` as [[stop_ns, cont_ns], ...] on CLOCK_MONOTONIC (the
times just before the SIGSTOP and just after the SIGCONT were sent). A batch
that overlaps the window is in a fault episode, but it was actually stalled
only if its [ts, ts + dur] overlaps one of the pauses; batches between pauses
run at normal speed. ``prismkit.inject.labels.expand_pauses`` turns an
episode label into one row per pause for per-batch evaluation.

Safety: the SIGCONT is registered with the guard before the first SIGSTOP,
and cleanup always sends SIGCONT (also on Ctrl-C, SIGTERM and errors); if the
injector is SIGKILLed mid-pause the guard sends it.
"""
from __future__ import annotations

import os
import random
import signal
import time

from .base import Param, Scenario, guard
from .guard import signal_if_same


class Stall(Scenario):
    name = "stall"
    summary = "periodic SIGSTOP/SIGCONT pauses of the server"
    PARAMS = {
        "pause_ms": Param(50.0, "length of each pause in ms", float, lambda v: 0.1 <= v <= 10_000, "0.1..10000"),
        "period_ms": Param(250.0, "time from one pause's start to the next", float,
                           lambda v: 1 <= v <= 600_000, "1..600000"),
        "jitter": Param(0.0, "random shift of each pause start, as a fraction of the period", float,
                        lambda v: 0 <= v <= 0.5, "0..0.5"),
        "seed": Param(0, "random seed of the jitter", int),
    }

    def validate(self) -> None:
        from ..errors import PrismError

        if self.params["pause_ms"] >= self.params["period_ms"]:
            raise PrismError(f"stall: pause_ms ({self.params['pause_ms']:g}) must be shorter than "
                             f"period_ms ({self.params['period_ms']:g})")
        self.pauses: list[list[int]] = []
        self._stopped_at: int | None = None
        self._next: float = 0.0
        self._rng = random.Random(self.params["seed"])
        self._guard_id: int | None = None

    def _start(self) -> None:
        self._guard_id = guard().register({"op": "cont", "pid": self.target.pid, "start": self.target.start_time})
        self.applied = True
        self._next = time.monotonic()
        self.tick()

    def _offset(self) -> float:
        j = self.params["jitter"]
        return self._rng.uniform(-j, j) * self.params["period_ms"] / 1000 if j else 0.0

    def tick(self) -> float | None:
        now = time.monotonic()
        if self._stopped_at is not None:
            due = self._stopped_at / 1e9 + self.params["pause_ms"] / 1000
            if now >= due:
                self._cont()
                now = time.monotonic()
            else:
                return due - now
        if now >= self._next:
            t = time.monotonic_ns()
            if signal_if_same(self.target.pid, self.target.start_time, signal.SIGSTOP):
                self._stopped_at = t
            period = self.params["period_ms"] / 1000
            self._next = max(self._next + period, now) + self._offset()
            return self.params["pause_ms"] / 1000
        return self._next - now

    def _cont(self) -> None:
        signal_if_same(self.target.pid, self.target.start_time, signal.SIGCONT)
        if self._stopped_at is not None:
            self.pauses.append([self._stopped_at, time.monotonic_ns()])
            self._stopped_at = None

    def _cleanup(self) -> None:
        if self.applied:
            self._cont()  # always: even if we believe it is running
            guard().forget(self._guard_id)
            self._guard_id = None

    def label_params(self) -> dict:
        p = super().label_params()
        p["n_pauses"] = len(self.pauses)
        p["stopped_ms"] = round(sum(b - a for a, b in self.pauses) / 1e6, 3)
        p["pauses"] = self.pauses
        return p
