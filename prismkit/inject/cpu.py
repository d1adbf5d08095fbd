"""CPU faults: contention from busy neighbours, and a CFS bandwidth quota.

cpu_contention
    ``workers`` spinning helper processes (default: one per CPU the server may
    run on, i.e. its affinity), each pinned to those CPUs, at ``nice`` and
    spinning ``duty`` of every 10 ms (1.0 = always). The server's threads
    share their CPUs with the spinners, so its decode steps run on a fraction
    of the CPU time they had: llama.cpp's worker threads meet at a barrier
    after every graph node, so one preempted thread holds up the whole step.

cpu_throttle
    A CPU quota on the server itself: its threads move into a new cgroup with
    ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (v1) or ``cpu.max`` (v2) of
    ``quota`` x (number of the server's CPUs) per ``period_ms``. When the
    quota is spent the server is throttled until the next period: batches
    that straddle the throttled part of a period take up to
    (1 - quota) x period longer. Afterwards every thread goes back to its own
    original cgroup and the new cgroup is removed (registered with the guard,
    so this also happens if the injector is killed).
"""
from __future__ import annotations

from .base import Param, Scenario, start_helpers
from .cgroup import TempCgroup


class CpuContention(Scenario):
    name = "cpu_contention"
    summary = "busy processes pinned to the server's CPUs"
    PARAMS = {
        "workers": Param(None, "spinning processes (default: number of CPUs the server may run on)", int,
                         lambda v: 1 <= v <= 1024, "1..1024"),
        "duty": Param(1.0, "fraction of each 10 ms each worker spins", float, lambda v: 0 < v <= 1, "0 < duty <= 1"),
        "nice": Param(0, "nice value of the workers", int, lambda v: -20 <= v <= 19, "-20..19"),
        "pin": Param(True, "pin the workers to the server's CPUs (its affinity)", bool),
    }

    def validate(self) -> None:
        if self.params["workers"] is None:
            self.params["workers"] = len(self.target.cpus)
        self.facts["cpus"] = self.target.cpus
        self.helpers = []

    def _start(self) -> None:
        cfg = {"duty": self.params["duty"], "nice": self.params["nice"],
               "cpus": self.target.cpus if self.params["pin"] else None}
        self.applied = True
        self.helpers = start_helpers("spin", [cfg] * self.params["workers"])
        self.facts["helper_pids"] = [h.pid for h in self.helpers]

    def check(self) -> None:
        from ..errors import PrismError

        dead = [h.pid for h in self.helpers if not h.alive()]
        if dead:
            raise PrismError(f"cpu_contention: worker(s) {dead} exited early")

    def _cleanup(self) -> None:
        for h in self.helpers:
            h.stop()
        self.helpers = []


class CpuThrottle(Scenario):
    name = "cpu_throttle"
    summary = "a CFS CPU quota on the server (temporary cgroup)"
    PARAMS = {
        "quota": Param(0.3, "CPU time allowed, as a fraction of the server's CPUs", float,
                       lambda v: 0.01 <= v <= 1.0, "0.01..1"),
        "period_ms": Param(100.0, "CFS period in ms", float, lambda v: 1 <= v <= 1000, "1..1000"),
    }

    def validate(self) -> None:
        self.cg: TempCgroup | None = None
        ncpu = len(self.target.cpus)
        self.period_us = int(self.params["period_ms"] * 1000)
        self.quota_us = max(1000, int(self.params["quota"] * ncpu * self.period_us))
        self.facts.update(cpus=self.target.cpus, quota_us=self.quota_us, period_us=self.period_us)

    def _start(self) -> None:
        self.cg = TempCgroup("cpu", self.target.pid)
        path = self.cg.create()
        if self.cg.h.v2:
            self.cg.set("cpu.max", f"{self.quota_us} {self.period_us}")
        else:
            self.cg.set("cpu.cfs_period_us", str(self.period_us))
            self.cg.set("cpu.cfs_quota_us", str(self.quota_us))
        self.facts["cgroup"] = str(path)
        self.applied = True
        self.cg.enter()

    def _cleanup(self) -> None:
        if self.cg is not None:
            self.cg.remove()
            self.cg = None
