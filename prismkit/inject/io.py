"""io_contention: competing heavy disk I/O.

``workers`` helper processes each write a ``file_mb`` file in ``block_kb``
blocks with an fsync every ``fsync_every_kb``, drop it from the page cache,
read it back from the disk, and start over. The file is created with
O_TMPFILE in ``dir`` (default: the directory of the server's model file, i.e.
the server's own disk): it never has a name, so nothing can be left behind,
whatever ends the worker. ``pin`` puts the workers on the server's CPUs
(the kernel time of their I/O -- copies into the page cache, block-layer and
filesystem work, interrupts -- then competes with the server's threads).

A llama.cpp server whose model is resident does no disk I/O while it
decodes, so what this costs the server is mostly that CPU time plus memory
traffic; with a model that is (partly) evicted from memory it also slows
the refaults (combine with memory_pressure).
"""
from __future__ import annotations

import os
import shutil
import tempfile

from ..errors import PrismError
from .base import Param, Scenario, start_helpers
from .memory import file_mappings


class IoContention(Scenario):
    name = "io_contention"
    summary = "processes doing fsync'd writes and uncached reads of a big temporary file"
    PARAMS = {
        "workers": Param(None, "I/O processes (default: number of the server's CPUs)", int,
                         lambda v: 1 <= v <= 64, "1..64"),
        "file_mb": Param(256, "size of each worker's file (MiB)", int, lambda v: 1 <= v <= 1 << 20, "1..1048576"),
        "block_kb": Param(1024, "write/read size (KiB)", int, lambda v: 4 <= v <= 1 << 20, "4..1048576"),
        "fsync_every_kb": Param(4096, "fsync after this many KiB written", int, lambda v: v >= 4, ">= 4"),
        "dir": Param(None, "directory for the (unnamed) files (default: the model's directory)", str),
        "pin": Param(True, "pin the workers to the server's CPUs", bool),
    }

    def validate(self) -> None:
        if self.params["workers"] is None:
            self.params["workers"] = len(self.target.cpus)
        d = self.params["dir"]
        if d is None:
            maps = file_mappings(self.target.pid)
            d = os.path.dirname(next(iter(maps))) if maps else tempfile.gettempdir()
            self.params["dir"] = d
        if not os.path.isdir(d):
            raise PrismError(f"io_contention: dir {d} is not a directory")
        need = self.params["file_mb"] * self.params["workers"] << 20
        free = shutil.disk_usage(d).free
        if need > free // 2:
            raise PrismError(f"io_contention: {need >> 20} MiB of files is more than half of the free space "
                             f"in {d} ({free >> 20} MiB); lower file_mb or workers")
        self.helpers = []

    def _start(self) -> None:
        cfg = {k: self.params[k] for k in ("file_mb", "block_kb", "fsync_every_kb", "dir")}
        cfg["cpus"] = self.target.cpus if self.params["pin"] else None
        self.applied = True
        self.helpers = start_helpers("io", [cfg] * self.params["workers"])
        self.facts["helper_pids"] = [h.pid for h in self.helpers]

    def check(self) -> None:
        for h in self.helpers:
            if not h.alive():
                err = (h.proc.stderr.read() if h.proc.stderr else "").strip().splitlines()
                raise PrismError(f"io_contention: worker {h.pid} exited: {err[-1] if err else h.proc.returncode}")

    def _cleanup(self) -> None:
        for h in self.helpers:
            h.stop()
        self.helpers = []
