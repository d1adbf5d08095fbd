"""proc_counters pack: periodic counters from /proc and the target's cgroup (no BPF).

Counters (names as in docs/trace-format.md), written at each sample (the
per-thread ones at most once a second):
- `cpu.<tid>` (thread track): share of one CPU the thread used since the last
  sample (from /proc/PID/task/TID/schedstat run time in ns; utime+stime from
  stat where schedstat is missing); `cpu.total` (process track): the sum;
- `runq.<tid>` (thread track): share of the interval the thread was runnable but
  waiting for a CPU (schedstat run_delay), where schedstat exists;
- `faults.minor.<tid>` / `faults.major.<tid>` (thread track, cumulative, written
  when they change) and `faults.minor` / `faults.major` (process, cumulative);
- `rss_bytes` (process);
- `psi.cpu.some`, `psi.memory.some`, `psi.io.some`: the kernel's 'some avg10'
  (%), and `psi.<res>.some.stall_us`: stall time (us) since the last sample;
- `cgroup.throttled_ns`, `cgroup.nr_throttled` (cumulative since the recording
  began) and `cgroup.quota_cpus` while the target's cgroup (or an ancestor) has
  a CPU quota (cgroup v1 cpu.cfs_quota_us, v2 cpu.max). The cgroup and its quota
  are looked up again every second: a quota set, or a move to another cgroup,
  during the recording is followed.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ...target import TargetProcess
from ...procfs import ProcFiles
from ..base import AttachReport, ProbePack

TICK_NS = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)
PAGE = os.sysconf("SC_PAGE_SIZE")
PSI_RESOURCES = ("cpu", "memory", "io")
CGROUP_RECHECK_S = 1.0
THREAD_SAMPLE_NS = 1_000_000_000  # per-thread counters: once a second (process-wide ones: every sample)


@dataclass
class _CpuLimit:
    path: str           # the cgroup directory whose quota applies
    version: int        # 1 or 2
    quota_cpus: float   # quota / period


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _stat_fields(text: str) -> list[str]:
    """Fields of a /proc stat line after the command name, numbered from 3 (state) as in proc(5)."""
    return text.rsplit(")", 1)[1].split()


def parse_psi(text: str) -> dict[str, float]:
    """'some avg10=1.00 avg60=... total=123' -> {'some.avg10': 1.0, 'some.total': 123.0, ...}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        kind = parts[0]
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            try:
                out[f"{kind}.{k}"] = float(v)
            except ValueError:
                pass
    return out


_MOUNTS_CACHE: tuple[float, list] = (-1e9, [])
MOUNTS_TTL_S = 30.0  # cgroup hierarchies are mounted at boot; the target's cgroup is re-read each check


def _mounts() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fs type, super options) for cgroup mounts, from /proc/self/mountinfo."""
    global _MOUNTS_CACHE
    now = time.monotonic()
    if now - _MOUNTS_CACHE[0] < MOUNTS_TTL_S:
        return _MOUNTS_CACHE[1]
    out = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((lf[3], lf[4], rf[0], rf[2]))
    _MOUNTS_CACHE = (now, out)
    return out


def cgroup_dirs(pid: int) -> list[tuple[int, str]]:
    """The target's CPU cgroup directories as (version, path), v1 cpu controller first."""
    text = _read(f"/proc/{pid}/cgroup")
    if text is None:
        return []
    mounts = _mounts()
    found: list[tuple[int, str]] = []
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            for root, mnt, fstype, _opts in mounts:
                if fstype == "cgroup2":
                    found.append((2, _join(mnt, root, path)))
        elif "cpu" in controllers.split(","):
            for root, mnt, fstype, opts in mounts:
                if fstype == "cgroup" and "cpu" in opts.split(","):
                    found.append((1, _join(mnt, root, path)))
    found.sort(key=lambda vp: vp[0])
    return found


def _join(mnt: str, root: str, path: str) -> str:
    if root != "/" and path.startswith(root):
        path = path[len(root):]
    return os.path.normpath(mnt + "/" + path.lstrip("/"))


def cpu_limit(pid: int) -> tuple[_CpuLimit | None, str]:
    """The nearest cgroup (target's own or an ancestor) with a CPU quota, and a description."""
    dirs = cgroup_dirs(pid)
    if not dirs:
        return None, f"no CPU cgroup found for PID {pid}"
    for version, leaf in dirs:
        d = leaf
        while True:
            if version == 1:
                quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
                period = _read(os.path.join(d, "cpu.cfs_period_us"))
                if quota and period and int(quota) > 0:
                    return _CpuLimit(d, 1, int(quota) / max(int(period), 1)), d
            else:
                cmax = _read(os.path.join(d, "cpu.max"))
                if cmax:
                    fields = cmax.split()
                    q, p = fields[0], fields[1] if len(fields) > 1 else "100000"
                    if q != "max":
                        return _CpuLimit(d, 2, int(q) / max(int(p), 1)), d
            parent = os.path.dirname(d)
            if parent == d or not os.path.isfile(os.path.join(parent, "cpu.stat")):
                break
            d = parent
    return None, f"{dirs[0][1]} (cgroup v{dirs[0][0]}) and its ancestors have no CPU quota"


def throttle_stats(limit: _CpuLimit) -> tuple[int, int] | None:
    """(nr_throttled, throttled ns) of the cgroup, or None if unreadable."""
    text = _read(os.path.join(limit.path, "cpu.stat"))
    if text is None:
        return None
    kv = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            kv[parts[0]] = int(parts[1])
    if limit.version == 1:
        return kv.get("nr_throttled", 0), kv.get("throttled_time", 0)
    return kv.get("nr_throttled", 0), kv.get("throttled_usec", 0) * 1000


class ProcCountersPack(ProbePack):
    name = "proc_counters"

    def __init__(self) -> None:
        self._pid = 0
        self._prev_ts = 0
        self._prev_thread_ts = 0
        self._prev_cpu: dict[int, tuple[int, int]] = {}   # tid -> (run ns, run_delay ns or -1)
        self._prev_psi: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._have_schedstat = False
        self._psi = [r for r in PSI_RESOURCES if os.path.exists(f"/proc/pressure/{r}")]
        self._limit: _CpuLimit | None = None
        self._limit_why = ""
        self._limit_checked = 0.0
        self._throttle_base: tuple[str, int, int] | None = None   # (path, nr, ns) at the first reading there
        self._throttle_acc = [0, 0]                              # nr, ns accumulated in earlier cgroups
        self.samples = 0
        self._files = ProcFiles()

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        self._pid = target.pid
        self._have_schedstat = os.path.exists(f"/proc/{target.pid}/task/{target.pid}/schedstat")
        if self._have_schedstat:
            report.attached.append("proc_counters: /proc/PID/task/*/schedstat (per-thread CPU share, run-queue share)")
        else:
            report.attached.append("proc_counters: /proc/PID/task/*/stat (per-thread CPU share from utime+stime, "
                                   f"{TICK_NS // 1_000_000} ms ticks; no schedstat on this kernel)")
        report.attached.append("proc_counters: /proc/PID/stat, statm (faults, rss_bytes)")
        if self._psi:
            report.attached.append(f"proc_counters: /proc/pressure/{{{','.join(self._psi)}}} (PSI some avg10, stall us)")
        else:
            report.failed.append(("proc_counters: /proc/pressure",
                                  "PSI not available (kernel without CONFIG_PSI, or booted with psi=0)"))
        self._limit, self._limit_why = cpu_limit(target.pid)
        self._limit_checked = time.monotonic()
        if self._limit:
            report.attached.append(f"proc_counters: cgroup v{self._limit.version} {self._limit.path}/cpu.stat "
                                   f"(CPU quota {self._limit.quota_cpus:g} CPUs: throttling)")
        else:
            report.failed.append(("proc_counters: cgroup throttling",
                                  f"not applicable now: {self._limit_why} (checked again every "
                                  f"{CGROUP_RECHECK_S:g}s)"))

    # -- helpers -------------------------------------------------------------
    def _counter(self, ctx, name: str, unit: str, parent: int | None, ts: int, value, only_changes=False):
        if only_changes and self._last.get(name) == value:
            return
        self._last[name] = value
        ctx.writer.counter(ctx.counter_track(name, unit, parent), ts, value)

    def _thread_cpu(self, tid: int) -> tuple[int, int, int, int] | None:
        """(run ns, run_delay ns or -1, minflt, majflt) of one thread."""
        base = f"/proc/{self._pid}/task/{tid}"
        stat = self._files.read(base + "/stat")
        if stat is None:
            return None
        f = _stat_fields(stat)
        minflt, majflt = int(f[7]), int(f[9])
        if self._have_schedstat:
            ss = self._files.read(base + "/schedstat")
            if ss:
                run, delay = ss.split()[:2]
                return int(run), int(delay), minflt, majflt
        return (int(f[11]) + int(f[12])) * TICK_NS, -1, minflt, majflt

    # -- sampling ------------------------------------------------------------
    def sample(self, ctx, now_ns: int) -> None:
        if not self._pid:
            return
        # Our own clock reading, not the engine's: other packs' sample() calls (and a
        # ring buffer drain) can run between the two, and a share is only right over
        # the interval between the /proc reads themselves.
        now_ns = time.monotonic_ns()
        self.samples += 1
        # Per-thread counters once a second: two /proc reads per thread per sample were a
        # fifth of the recorder's own CPU time; the sched pack's off-CPU slices keep the
        # fine-grained view.
        if not self._prev_thread_ts or now_ns - self._prev_thread_ts >= THREAD_SAMPLE_NS:
            dt = now_ns - self._prev_thread_ts if self._prev_thread_ts else 0
            self._sample_threads(ctx, now_ns, dt)
            self._prev_thread_ts = now_ns
        self._sample_process(ctx, now_ns)
        self._sample_psi(ctx, now_ns)
        self._sample_cgroup(ctx, now_ns)
        self._prev_ts = now_ns

    def _sample_threads(self, ctx, now_ns: int, dt: int) -> None:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{self._pid}/task")]
        except OSError:
            return
        total = 0.0
        seen = {}
        for tid in tids:
            r = self._thread_cpu(tid)
            if r is None:
                continue
            run, delay, minflt, majflt = r
            seen[tid] = (run, delay)
            prev = self._prev_cpu.get(tid)
            parent = ctx.thread_track(tid)
            if prev is not None and dt > 0:
                share = max(run - prev[0], 0) / dt
                total += share
                self._counter(ctx, f"cpu.{tid}", "CPU", parent, now_ns, round(share, 4))
                if delay >= 0 and prev[1] >= 0:
                    self._counter(ctx, f"runq.{tid}", "share", parent, now_ns, round(max(delay - prev[1], 0) / dt, 4))
            self._counter(ctx, f"faults.minor.{tid}", "faults", parent, now_ns, minflt, only_changes=True)
            self._counter(ctx, f"faults.major.{tid}", "faults", parent, now_ns, majflt, only_changes=True)
        if self._prev_cpu and dt > 0:
            self._counter(ctx, "cpu.total", "CPU", ctx.process_track, now_ns, round(total, 4))
        self._prev_cpu = seen
        task_dir = f"/proc/{self._pid}/task/"
        self._files.forget_prefix(task_dir, {f"{task_dir}{tid}/{f}" for tid in tids for f in ("stat", "schedstat")})

    def _sample_process(self, ctx, now_ns: int) -> None:
        statm = self._files.read(f"/proc/{self._pid}/statm")
        if statm:
            self._counter(ctx, "rss_bytes", "bytes", ctx.process_track, now_ns, int(statm.split()[1]) * PAGE)
        stat = self._files.read(f"/proc/{self._pid}/stat")
        if stat:
            f = _stat_fields(stat)
            self._counter(ctx, "faults.minor", "faults", ctx.process_track, now_ns, int(f[7]), only_changes=True)
            self._counter(ctx, "faults.major", "faults", ctx.process_track, now_ns, int(f[9]), only_changes=True)

    def _sample_psi(self, ctx, now_ns: int) -> None:
        for res in self._psi:
            text = self._files.read(f"/proc/pressure/{res}")
            if not text:
                continue
            psi = parse_psi(text)
            if "some.avg10" in psi:
                self._counter(ctx, f"psi.{res}.some", "%", ctx.process_track, now_ns, float(psi["some.avg10"]))
            total = psi.get("some.total")
            key = f"{res}.some.total"
            if total is not None:
                if key in self._prev_psi:
                    self._counter(ctx, f"psi.{res}.some.stall_us", "us", ctx.process_track, now_ns,
                                  int(max(total - self._prev_psi[key], 0)))
                self._prev_psi[key] = total

    def _sample_cgroup(self, ctx, now_ns: int) -> None:
        now = time.monotonic()
        if now - self._limit_checked >= CGROUP_RECHECK_S:
            self._limit_checked = now
            self._limit, self._limit_why = cpu_limit(self._pid)
        if self._limit is None:
            return
        st = throttle_stats(self._limit)
        if st is None:
            return
        nr, ns = st
        if self._throttle_base is None or self._throttle_base[0] != self._limit.path:
            if self._throttle_base is not None:  # moved: keep what was counted in the old cgroup
                old = self._last.get("cgroup.nr_throttled", 0), self._last.get("cgroup.throttled_ns", 0)
                self._throttle_acc = [int(old[0]), int(old[1])]
            self._throttle_base = (self._limit.path, nr, ns)
        _, nr0, ns0 = self._throttle_base
        self._counter(ctx, "cgroup.throttled_ns", "ns", ctx.process_track, now_ns, self._throttle_acc[1] + ns - ns0)
        self._counter(ctx, "cgroup.nr_throttled", "periods", ctx.process_track, now_ns,
                      self._throttle_acc[0] + nr - nr0)
        self._counter(ctx, "cgroup.quota_cpus", "CPUs", ctx.process_track, now_ns,
                      round(self._limit.quota_cpus, 3), only_changes=True)

    def finish(self, bpf, ctx) -> None:
        self._files.close()

    def metadata(self) -> dict:
        return {}
