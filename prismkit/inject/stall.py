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

The timing runs in a small helper process (worker.py, kind "stall") at
SCHED_FIFO priority: it sleeps nearly all the time, and the pauses keep their
length even when the host is saturated or the injector's own process is busy.

Safety: the SIGCONT is registered with the guard before the first SIGSTOP;
the timer sends SIGCONT whenever it ends; and cleanup sends it again, always
(also on Ctrl-C, SIGTERM and errors). If the injector is SIGKILLed mid-pause,
its timer dies with it (PR_SET_PDEATHSIG) and the guard sends the SIGCONT.
"""
from __future__ import annotations

import select
import signal

from ..errors import PrismError
from .base import Param, Scenario, guard, start_helpers
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
        if self.params["pause_ms"] >= self.params["period_ms"]:
            raise PrismError(f"stall: pause_ms ({self.params['pause_ms']:g}) must be shorter than "
                             f"period_ms ({self.params['period_ms']:g})")
        self.pauses: list[list[int]] = []
        self.helpers = []
        self._guard_id: int | None = None

    def _start(self) -> None:
        self._guard_id = guard().register({"op": "cont", "pid": self.target.pid, "start": self.target.start_time})
        self.applied = True
        cfg = {"pid": self.target.pid, "start": self.target.start_time, **self.params}
        self.helpers = start_helpers("stall", [cfg])

    def _drain(self) -> None:
        """Collect the pauses the timer reported so far (it must never block on a full pipe)."""
        for h in self.helpers:
            out = h.proc.stdout
            while out is not None and select.select([out], [], [], 0)[0]:
                line = out.readline()
                if not line:
                    break
                self._add(line)

    def _add(self, line: str) -> None:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            self.pauses.append([int(parts[0]), int(parts[1])])

    def tick(self) -> float | None:
        self._drain()
        return 0.1

    def check(self) -> None:
        for h in self.helpers:
            if not h.alive():
                raise PrismError(f"stall: the pause timer (pid {h.pid}) exited early")

    def _cleanup(self) -> None:
        try:
            self._drain()
            for h in self.helpers:
                h.stop(signal.SIGTERM, grace=2.0)  # it sends the SIGCONT on its way out
                for line in h.output.splitlines():
                    self._add(line)
            self.helpers = []
        finally:
            if self.applied:
                # Always, whatever happened to the timer: the server must run.
                signal_if_same(self.target.pid, self.target.start_time, signal.SIGCONT)
                guard().forget(self._guard_id)
                self._guard_id = None

    def label_params(self) -> dict:
        p = super().label_params()
        p["n_pauses"] = len(self.pauses)
        p["stopped_ms"] = round(sum(b - a for a, b in self.pauses) / 1e6, 3)
        p["pauses"] = self.pauses
        return p
