"""syscalls pack: how many system calls the target's threads make and how long they take.

raw_syscalls:sys_enter / sys_exit -- as raw tracepoints where the kernel allows
(no trace record is built per call), else as tracepoints --
filtered to the target's tgid, aggregated in
BPF per syscall number (count, total ns, max ns, errors) and per thread (count,
total ns). Written as:
- cumulative counters `syscalls.<name>.count` and `syscalls.<name>.ns` on the
  process track for the top syscalls (by time and by count; once a syscall has a
  track it keeps it), once a second;
- at the end an instant `syscalls.summary` (category `metadata`) on the process
  track, with `<name>.count`, `<name>.total_ns`, `<name>.max_ns`, `<name>.errors`
  per syscall, and `thread.<tid>.count` / `thread.<tid>.total_ns` per thread.

The maps are read once a second in one batch: every map syscall briefly holds
the kernel's per-CPU bpf_prog_active, and a recorder preempted there makes the
tracepoint programs on that CPU skip events until it runs again.
Time in blocking calls (futex, epoll_wait, poll, accept...) is time the thread
waited there, not CPU time.

futex is counted but not timed by default (`untimed_syscalls` option; `prism record
--time-all-syscalls` times it too): the ggml thread pool makes ~30k futex calls/s
under load, and timing each cost ~280 ns of BPF on the compute threads. Its waits are
the threads' blocked off-CPU time in the sched pack. The summary lists untimed calls
under `untimed` and gives them a count only.
"""
from __future__ import annotations


import time
from functools import lru_cache
from pathlib import Path

from ...target import TargetProcess
from ..base import AttachReport, ProbePack, map_items, percpu_array_u64
from ..sched.tracefs import tracepoint_struct

TOP_N = 8
SAMPLE_EVERY_NS = 1_000_000_000
SLOTS = 512
# Numbers newer than bcc's table (x86-64): the uretprobe/uprobe trampolines of
# the recorder's own user probes (Linux 6.11+ / 6.16+) show up as these.
_EXTRA_NAMES = {"x86_64": {335: "uretprobe", 336: "uprobe"}}
DEFAULT_UNTIMED = ("futex",)


@lru_cache(maxsize=None)
def syscall_number(name: str) -> int | None:
    try:
        from bcc.syscall import syscalls
    except Exception:
        return None
    return next((nr for nr, n in syscalls.items() if n == name.encode()), None)


@lru_cache(maxsize=None)
def syscall_name(nr: int) -> str:
    try:
        from bcc.syscall import syscall_name as bcc_name

        name = bcc_name(nr).decode()
    except Exception:
        name = ""
    if name and not name.startswith("["):
        return name
    import platform

    return _EXTRA_NAMES.get(platform.machine(), {}).get(nr, f"sys_{nr}")


class SyscallsPack(ProbePack):
    name = "syscalls"
    # Off unless asked for (prism record --syscalls): its probes run on every system call of
    # the host, and llama.cpp's thread pool makes ~30k futex calls/s on its compute threads'
    # critical path. Measured at the demo load (benchmarks/bench_recorder.py, 12 pairs each):
    # throughput loss 2.9% with it, 1.4% without. Root-cause analysis does not need it
    # (PSI io and blocked time carry io_contention; same accuracy on the sample traces).
    on_by_default = False
    bpf_file = Path(__file__).with_name("syscalls.bpf.c")

    def __init__(self) -> None:
        self._bpf = None
        self._attached = False
        self._have = False
        self._tracked: set[int] = set()      # syscall numbers with counter tracks
        self._last: dict[str, int] = {}
        self.total = 0
        self._last_sample = 0
        self.untimed: dict[int, str] = {}   # syscall nr -> name: counted, not timed

    def bpf_text(self, target: TargetProcess, options: dict) -> str:
        enter = tracepoint_struct("raw_syscalls", "sys_enter", "sys_enter_args", ("id",))
        exit_ = tracepoint_struct("raw_syscalls", "sys_exit", "sys_exit_args", ("id", "ret"))
        self._have = bool(enter and exit_)
        head = ["#define SYSCALLS_HAVE_ENTER 1", enter, "#define SYSCALLS_HAVE_EXIT 1", exit_] if self._have else []
        names = options.get("untimed_syscalls", DEFAULT_UNTIMED)
        self.untimed = {nr: name for name in names if (nr := syscall_number(name)) is not None}
        test = " || ".join(f"(nr) == {nr}" for nr in sorted(self.untimed)) or "0"
        head.append(f"#define SYSCALLS_UNTIMED(nr) ({test})")
        return "\n".join(head) + "\n" + self.bpf_file.read_text()

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        self._bpf = bpf
        try:
            bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"sys_raw_enter")
            try:
                bpf.attach_raw_tracepoint(tp=b"sys_exit", fn_name=b"sys_raw_exit")
            except Exception:
                bpf.detach_raw_tracepoint(tp=b"sys_enter")
                raise
            self._attached = True
            report.attached.append("syscalls: raw_syscalls:sys_enter/sys_exit (raw tracepoints, count and time per syscall"
                                   + self._untimed_note() + ")")
            return
        except Exception as exc:  # bcc raises plain Exception
            raw_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not self._have:
            report.failed.append(("syscalls: raw_syscalls:sys_enter/sys_exit",
                                  f"raw tracepoints: {raw_error}; tracepoints not found in tracefs "
                                  "(or lack the id/ret fields)"))
            return
        try:
            bpf.attach_tracepoint(tp=b"raw_syscalls:sys_enter", fn_name=b"sys_on_enter")
            bpf.attach_tracepoint(tp=b"raw_syscalls:sys_exit", fn_name=b"sys_on_exit")
        except Exception as exc:  # bcc raises plain Exception
            report.failed.append(("syscalls: raw_syscalls:sys_enter/sys_exit",
                                  f"attach failed: {str(exc).splitlines()[0]}"))
            return
        self._attached = True
        report.attached.append(f"syscalls: raw_syscalls:sys_enter/sys_exit (tracepoints, count and time per syscall"
                               f"{self._untimed_note()}; raw tracepoints failed: {raw_error})")

    def _untimed_note(self) -> str:
        return f"; {', '.join(sorted(self.untimed.values()))} counted only" if self.untimed else ""

    def per_syscall(self) -> dict[int, dict]:
        """syscall nr -> {count, total_ns, max_ns, errors} over all target threads."""
        out: dict[int, dict] = {}
        if not self._attached:
            return out
        table = self._bpf[b"sys_stats"]
        try:
            raw = percpu_array_u64(table, 4)   # struct sys_val: count, total_ns, max_ns, errors
        except Exception:  # no batch lookups on this kernel: one lookup per slot
            for k, per_cpu in map_items(table):
                count = sum(v.count for v in per_cpu)
                if count:
                    out[k] = {"count": count, "total_ns": sum(v.total_ns for v in per_cpu),
                              "max_ns": max(v.max_ns for v in per_cpu), "errors": sum(v.errors for v in per_cpu)}
            return out
        count, total, max_ns, errors = raw[:, :, 0].sum(1), raw[:, :, 1].sum(1), raw[:, :, 2].max(1), raw[:, :, 3].sum(1)
        for nr in count.nonzero()[0]:
            out[int(nr)] = {"count": int(count[nr]), "total_ns": int(total[nr]), "max_ns": int(max_ns[nr]),
                            "errors": int(errors[nr])}
        return out

    def per_thread(self) -> dict[int, dict]:
        """tid -> {count, total_ns} of the timed calls of the target's threads."""
        if not self._attached:
            return {}
        return {k: {"count": v.count, "total_ns": v.total_ns}
                for k, v in map_items(self._bpf[b"sys_threads"]) if v.count}

    def _counter(self, ctx, name: str, unit: str, ts: int, value: int) -> None:
        if self._last.get(name) == value:
            return
        self._last[name] = value
        ctx.writer.counter(ctx.counter_track(name, unit, ctx.process_track), ts, int(value))

    def sample(self, ctx, now_ns: int, force: bool = False) -> None:
        if not self._attached or (not force and now_ns - self._last_sample < SAMPLE_EVERY_NS):
            return
        self._last_sample = now_ns
        rows = self.per_syscall()
        self.total = sum(r["count"] for r in rows.values())
        for key in ("total_ns", "count"):
            self._tracked.update(sorted(rows, key=lambda nr: -rows[nr][key])[:TOP_N])
        for nr in sorted(self._tracked):
            row = rows.get(nr)
            if row is None:
                continue
            name = syscall_name(nr) if nr < SLOTS - 1 else "other"
            self._counter(ctx, f"syscalls.{name}.count", "calls", now_ns, row["count"])
            if nr not in self.untimed:
                self._counter(ctx, f"syscalls.{name}.ns", "ns", now_ns, row["total_ns"])

    def finish(self, bpf, ctx) -> None:
        if not self._attached:
            return
        now = time.monotonic_ns()
        self.sample(ctx, now, force=True)
        rows = self.per_syscall()
        args: dict = {"syscalls": self.total, "distinct": len(rows),
                      "untimed": ",".join(sorted(self.untimed.values()))}
        for nr, row in sorted(rows.items(), key=lambda kv: -kv[1]["total_ns"]):
            name = syscall_name(nr) if nr < SLOTS - 1 else "other"
            for key, value in row.items():
                if nr not in self.untimed or key == "count":
                    args[f"{name}.{key}"] = int(value)
        for tid, row in sorted(self.per_thread().items()):
            for key, value in row.items():
                args[f"thread.{tid}.{key}"] = int(value)
        ctx.writer.instant(ctx.process_track, now, "syscalls.summary", "metadata", args)

    def metadata(self) -> dict:
        return {"syscalls": self.total}

