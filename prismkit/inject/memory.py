"""Memory faults: a competing memory-bandwidth hog, and eviction of the server's mapped model.

memory_bandwidth
    ``workers`` helper processes that copy a ``buffer_mb`` buffer back and
    forth with numpy in a loop (a STREAM-copy-like access pattern, far larger
    than the last-level cache). ``pin`` pins them; ``cpus`` says where:
    ``others`` -- the CPUs the server may *not* run on (outside the union of
    its threads' affinity masks): the realistic case of a bandwidth hog on
    the machine's other cores, which takes no CPU time from the server, only
    shared cache and memory bandwidth; ``server`` -- the server's own CPUs
    (they then also take CPU time from it, like cpu_contention); ``auto``
    (default) -- ``others`` when the server leaves any CPU free, else
    ``server``. Unpinned, they run wherever the scheduler puts them.
    ``sched_idle`` runs them as SCHED_IDLE so that they only use CPU time
    the server leaves idle. ``workers`` defaults to the number of CPUs they
    are pinned to.

    Measured (demo model, llama-server ``--cpus 0 --threads 1``, one worker
    with 512 MiB buffers on CPU 1, 2-vCPU KVM guest on an AMD EPYC host): the
    server's on-CPU time per generated token rose 13% (median; every 3-s
    window +9% to +44%) while a busy loop on CPU 1 left it unchanged (-1%);
    in a quieter hour of the same machine the rise was +1.5% median with
    occasional +30-75% requests. The size of the effect depends on what else
    loads the host's memory system.

memory_pressure
    The server's model is memory-mapped (llama.cpp's default): under memory
    pressure the kernel reclaims those page-cache pages and every batch that
    touches an evicted weight page takes a major fault and waits for the disk.
    This scenario does exactly that reclaim, targeted: every ``interval_ms``
    it asks the kernel to page out the server's mappings of the model file(s)
    -- process_madvise(MADV_PAGEOUT) on the server's own address space through
    a pidfd -- and drops the file's remaining cached pages
    (posix_fadvise(POSIX_FADV_DONTNEED), what ``vmtouch -e`` does), so the
    refaults go to the disk. Nothing is limited: the server's anonymous memory
    (KV cache, buffers) is never touched, so it can never be OOM-killed. On
    exit the file is read back into the page cache (MADV_WILLNEED and a read
    of the file) so the server's next batches only take cheap minor faults.

    Why not a cgroup memory limit: with cgroup v1 (this host) page-cache pages
    stay charged to the cgroup of whoever first read them (often not the
    server), so a limit on the server's cgroup does not evict them; and a
    limit below the server's anonymous footprint, with no swap, OOM-kills it.

    Limitation: the kernel never pages out a page that other processes map
    too. If another process maps the same model file (a second server on the
    same GGUF), the scenario refuses to run (PrismError naming those PIDs)
    unless ``allow_shared`` is set; the label records what was really
    evicted (``evicted_mb``, per-round average ``evicted_mb_per_round``).
"""
from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

from ..errors import PrismError
from .base import Param, Scenario, start_helpers

SYS_pidfd_open = 434
SYS_process_madvise = 440
MADV_WILLNEED = 3
MADV_PAGEOUT = 21


class MemoryBandwidth(Scenario):
    name = "memory_bandwidth"
    summary = "processes streaming through large buffers (memory bandwidth, cache)"
    PARAMS = {
        "workers": Param(None, "streaming processes (default: number of the server's CPUs)", int,
                         lambda v: 1 <= v <= 256, "1..256"),
        "buffer_mb": Param(64, "size of each worker's source and destination buffers (MiB)", int,
                           lambda v: 1 <= v <= 65536, "1..65536"),
        "pin": Param(True, "pin the workers (to the CPUs `cpus` names)", bool),
        "cpus": Param("auto", "where pinned workers go: others (CPUs the server may not use: bandwidth and cache "
                              "only), server (its own CPUs: CPU time too), auto (others if any, else server)", str,
                      lambda v: v in ("auto", "others", "server"), "auto, others or server"),
        "sched_idle": Param(False, "run the workers as SCHED_IDLE (bandwidth only, no CPU time taken)", bool),
    }

    def validate(self) -> None:
        free = sorted(set(os.sched_getaffinity(0)) - set(self.target.cpus))
        where = self.params["cpus"]
        if where == "others" and not free:
            raise PrismError(f"memory_bandwidth: cpus=others, but the server may run on every CPU "
                             f"({','.join(map(str, self.target.cpus))}); start it on fewer "
                             f"(prism target start --cpus, taskset) or use cpus=server")
        if where == "auto":
            where = "others" if free else "server"
        self.worker_cpus = free if where == "others" else list(self.target.cpus)
        self.params["cpus"] = where
        if self.params["workers"] is None:
            self.params["workers"] = len(self.worker_cpus)
        need = 2 * self.params["buffer_mb"] * self.params["workers"] << 20
        avail = _mem_available()
        if avail is not None and need > avail // 2:
            raise PrismError(f"memory_bandwidth: {need >> 20} MiB of buffers is more than half of the "
                             f"available memory ({avail >> 20} MiB); lower buffer_mb or workers")
        self.facts["server_cpus"] = self.target.cpus
        self.facts["worker_cpus"] = self.worker_cpus if self.params["pin"] else None
        self.helpers = []

    def _start(self) -> None:
        cfg = {"buffer_mb": self.params["buffer_mb"], "sched_idle": self.params["sched_idle"],
               "cpus": self.worker_cpus if self.params["pin"] else None}
        self.applied = True
        self.helpers = start_helpers("stream", [cfg] * self.params["workers"], timeout=60.0)
        self.facts["helper_pids"] = [h.pid for h in self.helpers]

    def check(self) -> None:
        dead = [h.pid for h in self.helpers if not h.alive()]
        if dead:
            raise PrismError(f"memory_bandwidth: worker(s) {dead} exited early")

    def _cleanup(self) -> None:
        for h in self.helpers:
            h.stop()
        self.helpers = []


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def file_mappings(pid: int, paths: list[str] | None = None) -> dict[str, list[tuple[int, int]]]:
    """The server's mappings of `paths` (default: every mapped *.gguf file): path -> [(start, end)]."""
    out: dict[str, list[tuple[int, int]]] = {}
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError as err:
        raise PrismError(f"cannot read /proc/{pid}/maps: {err.strerror}") from None
    wanted = {os.path.realpath(p) for p in paths} if paths else None
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        path = parts[5].strip()
        if path.endswith(" (deleted)"):
            continue
        if (wanted is not None and path in wanted) or (wanted is None and path.endswith(".gguf")):
            a, b = (int(x, 16) for x in parts[0].split("-"))
            out.setdefault(path, []).append((a, b))
    return out


def mapping_rss_kb(pid: int, ranges: list[tuple[int, int]]) -> int:
    """Resident KiB of the given mappings (from /proc/PID/smaps)."""
    starts = {a for a, _ in ranges}
    total, counting = 0, False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(" ", 1)[0]
                if "-" in head and not head.endswith(":"):
                    counting = int(head.split("-")[0], 16) in starts
                elif counting and line.startswith("Rss:"):
                    total += int(line.split()[1])
    except OSError:
        return 0
    return total


def other_mappers(path: str, pid: int) -> list[int]:
    """Other processes that map `path` (their pages cannot be paged out)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    key = f" {dev} {st.st_ino} "
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in (pid, os.getpid()):
            continue
        try:
            with open(f"/proc/{d}/maps") as f:
                if any(key in line for line in f):
                    found.append(int(d))
        except OSError:
            continue
    return found


class MemoryPressure(Scenario):
    name = "memory_pressure"
    summary = "repeatedly evict the server's memory-mapped model from memory"
    PARAMS = {
        "interval_ms": Param(100.0, "time between eviction rounds (ms)", float, lambda v: 1 <= v <= 60_000,
                             "1..60000"),
        "paths": Param(None, "mapped files to evict, comma-separated (default: the mapped *.gguf files)",
                       str),
        "allow_shared": Param(False, "run even if other processes map the file (their pages stay)", bool),
        "restore": Param(True, "read the file back into the page cache on exit", bool),
    }

    def validate(self) -> None:
        paths = [p for p in (self.params["paths"] or "").split(",") if p] or None
        self.maps = file_mappings(self.target.pid, paths)
        if not self.maps:
            what = ", ".join(paths) if paths else "*.gguf files"
            raise PrismError(f"memory_pressure: PID {self.target.pid} maps no {what} "
                             "(a model loaded with --no-mmap cannot be evicted; pass paths=...)")
        if not self.params["allow_shared"]:
            for path in self.maps:
                others = other_mappers(path, self.target.pid)
                if others:
                    raise PrismError(f"memory_pressure: {path} is also mapped by PID(s) "
                                     f"{', '.join(map(str, others[:5]))}; the kernel does not evict shared pages "
                                     "(start the server on its own copy of the model, or pass allow_shared=true)")
        self.ranges = [r for rs in self.maps.values() for r in rs]
        self.facts["files"] = sorted(self.maps)
        self.facts["mapped_mb"] = round(sum(b - a for a, b in self.ranges) / 2**20, 1)
        self._pidfd = -1
        self._fds: list[int] = []
        self._next = 0.0
        self.rounds = 0
        self.evicted_kb = 0

    def _madvise(self, advice: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        iov = (_IoVec * len(self.ranges))(*[_IoVec(a, b - a) for a, b in self.ranges])
        r = libc.syscall(SYS_process_madvise, self._pidfd, iov, len(self.ranges), advice, 0)
        if r < 0:
            err = ctypes.get_errno()
            raise PrismError(f"memory_pressure: process_madvise failed: {os.strerror(err)}")

    def _start(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._pidfd = libc.syscall(SYS_pidfd_open, self.target.pid, 0)
        if self._pidfd < 0:
            raise PrismError(f"memory_pressure: pidfd_open({self.target.pid}) failed: "
                             f"{os.strerror(ctypes.get_errno())}")
        self._fds = [os.open(p, os.O_RDONLY) for p in self.maps]
        self.facts["resident_mb_before"] = round(mapping_rss_kb(self.target.pid, self.ranges) / 1024, 1)
        self.applied = True
        self._next = time.monotonic()
        self.tick()

    def tick(self) -> float | None:
        now = time.monotonic()
        if now < self._next:
            return self._next - now
        before = mapping_rss_kb(self.target.pid, self.ranges)
        self._madvise(MADV_PAGEOUT)
        for fd in self._fds:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.evicted_kb += max(0, before - mapping_rss_kb(self.target.pid, self.ranges))
        self.rounds += 1
        self._next = max(self._next + self.params["interval_ms"] / 1000, time.monotonic())
        return self._next - time.monotonic()

    def _cleanup(self) -> None:
        try:
            if self.applied and self.params["restore"] and self._pidfd >= 0:
                try:
                    self._madvise(MADV_WILLNEED)
                except PrismError:
                    pass
                for fd in self._fds:  # read the file through: the page cache holds it again
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                    os.lseek(fd, 0, os.SEEK_SET)
                    while os.read(fd, 1 << 20):
                        pass
        finally:
            for fd in self._fds:
                os.close(fd)
            self._fds = []
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1

    def label_params(self) -> dict:
        p = super().label_params()
        p["rounds"] = self.rounds
        p["evicted_mb"] = round(self.evicted_kb / 1024, 1)
        p["evicted_mb_per_round"] = round(self.evicted_kb / 1024 / max(self.rounds, 1), 2)
        return p
