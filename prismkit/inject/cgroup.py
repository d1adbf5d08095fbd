"""Temporary cgroups around a live process: create, move its threads in, move them back, remove.

Works with cgroup v1 (a hierarchy with the controller mounted, e.g.
/sys/fs/cgroup/cpu) and cgroup v2 (the unified hierarchy with the controller
available). The new cgroup is named ``prismkit-inject-<injector pid>-<n>``.

v1: the new cgroup is created inside the server's current cgroup (so the
limits that already apply keep applying), all threads are moved with
``cgroup.procs``, and on the way back every thread returns to the cgroup it
came from (threads born during the window go to the main thread's cgroup).
v2: processes move as a whole, and a child of a cgroup that holds processes
cannot get controllers ("no internal processes"), so the new cgroup is
created under the hierarchy's root, with the controller enabled there; the
process goes back to its original cgroup afterwards.

The undo action is registered with the guard before the first thread moves.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PrismError
from .base import guard
from .guard import cgroup_evacuate

_counter = itertools.count(1)


@dataclass
class Hierarchy:
    mount: Path
    v2: bool


def find_hierarchy(controller: str) -> Hierarchy:
    """Where `controller` (cpu, memory) is mounted: a v1 hierarchy, else the v2 one."""
    v2_mount = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError as err:
        raise PrismError(f"cannot read /proc/self/mountinfo: {err.strerror}") from None
    for line in lines:
        pre, _, post = line.partition(" - ")
        fields, post_fields = pre.split(), post.split()
        if len(post_fields) < 3:
            continue
        fstype, opts = post_fields[0], post_fields[2].split(",")
        if fstype == "cgroup" and controller in opts:
            return Hierarchy(Path(fields[4]), False)
        if fstype == "cgroup2" and v2_mount is None:
            v2_mount = Path(fields[4])
    if v2_mount is not None:
        try:
            available = (v2_mount / "cgroup.controllers").read_text().split()
        except OSError:
            available = []
        if controller in available:
            return Hierarchy(v2_mount, True)
    raise PrismError(f"no cgroup hierarchy with the {controller} controller is mounted")


def cgroup_of(tid: int, h: Hierarchy, controller: str) -> Path:
    """The directory of the cgroup `tid` is in, in hierarchy `h`."""
    try:
        lines = Path(f"/proc/{tid}/cgroup").read_text().splitlines()
    except OSError as err:
        raise PrismError(f"cannot read the cgroups of {tid}: {err.strerror}") from None
    for line in lines:
        num, ctrls, path = line.split(":", 2)
        if (h.v2 and num == "0" and ctrls == "") or (not h.v2 and controller in ctrls.split(",")):
            return h.mount / path.lstrip("/")
    raise PrismError(f"thread {tid} is in no {controller} cgroup")


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:
        raise PrismError(f"cannot write {value!r} to {path}: {err.strerror}") from None


@dataclass
class TempCgroup:
    """A new cgroup that holds a process for a while."""

    controller: str
    pid: int
    h: Hierarchy = field(init=False)
    dir: Path | None = None
    home: Path | None = None
    homes: dict[str, str] = field(default_factory=dict)
    _guard_id: int | None = None

    def __post_init__(self) -> None:
        self.h = find_hierarchy(self.controller)

    def create(self) -> Path:
        self.home = cgroup_of(self.pid, self.h, self.controller)
        if not self.h.v2:
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                try:
                    self.homes[tid] = str(cgroup_of(int(tid), self.h, self.controller))
                except PrismError:
                    continue
        parent = self.h.mount if self.h.v2 else self.home
        if self.h.v2:
            sub = self.h.mount / "cgroup.subtree_control"
            if self.controller not in sub.read_text().split():
                _write(sub, f"+{self.controller}")
        name = f"prismkit-inject-{os.getpid()}-{next(_counter)}"
        path = parent / name
        try:
            path.mkdir()
        except OSError as err:
            raise PrismError(f"cannot create cgroup {path}: {err.strerror}") from None
        self.dir = path
        self._guard_id = guard().register({"op": "cgroup", "dir": str(self.dir), "dest": str(self.home),
                                           "tids": self.homes, "v2": self.h.v2})
        return path

    def set(self, name: str, value: str) -> None:
        assert self.dir is not None
        _write(self.dir / name, value)

    def enter(self) -> None:
        """Move the whole process (all threads) into the new cgroup."""
        assert self.dir is not None
        _write(self.dir / "cgroup.procs", str(self.pid))

    def members(self) -> list[int]:
        if self.dir is None:
            return []
        try:
            text = (self.dir / ("cgroup.procs" if self.h.v2 else "tasks")).read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def remove(self) -> None:
        """Move everything back home and delete the cgroup (idempotent)."""
        if self.dir is None:
            return
        if self.dir.exists():
            assert self.home is not None
            if not cgroup_evacuate(self.dir, self.home, self.homes, self.h.v2, timeout=10.0):
                raise PrismError(f"could not remove cgroup {self.dir} (still busy); the guard will retry")
        guard().forget(self._guard_id)
        self._guard_id = None
        self.dir = None
