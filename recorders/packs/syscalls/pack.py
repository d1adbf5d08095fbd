"""syscalls pack: how many system calls the target's threads make and how long they take.

raw_syscalls:sys_enter / sys_exit, filtered to the target's tgid, aggregated in
BPF per (thread, syscall number) -> count, total ns, max ns, errors. Written as:
- cumulative counters `syscalls.<name>.count` and `syscalls.<name>.ns` on the
  process track for the top syscalls (by time and by count; once a syscall has a
  track it keeps it), sampled with the other counters;
- at the end an instant `syscalls.summary` (category `metadata`) on the process
  track, with `<name>.count`, `<name>.total_ns`, `<name>.max_ns`, `<name>.errors`
  per syscall, and `<name>.threads` (how many threads made it).
Time in blocking calls (futex, epoll_wait, poll, accept...) is time the thread
waited there, not CPU time.
"""
from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

from ...target import TargetProcess
from ..base import AttachReport, ProbePack
from ..sched.tracefs import tracepoint_struct

TOP_N = 8
# Numbers newer than bcc's table (x86-64): the uretprobe/uprobe trampolines of
# the recorder's own user probes (Linux 6.11+ / 6.16+) show up as these.
_EXTRA_NAMES = {"x86_64": {335: "uretprobe", 336: "uprobe"}}


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
    bpf_file = Path(__file__).with_name("syscalls.bpf.c")

    def __init__(self) -> None:
        self._bpf = None
        self._attached = False
        self._have = False
        self._tracked: set[int] = set()      # syscall numbers with counter tracks
        self._last: dict[str, int] = {}
        self.total = 0

    def bpf_text(self, target: TargetProcess, options: dict) -> str:
        enter = tracepoint_struct("raw_syscalls", "sys_enter", "sys_enter_args", ("id",))
        exit_ = tracepoint_struct("raw_syscalls", "sys_exit", "sys_exit_args", ("id", "ret"))
        self._have = bool(enter and exit_)
        head = ["#define SYSCALLS_HAVE_ENTER 1", enter, "#define SYSCALLS_HAVE_EXIT 1", exit_] if self._have else []
        return "\n".join(head) + "\n" + self.bpf_file.read_text()

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        self._bpf = bpf
        if not self._have:
            report.failed.append(("syscalls: raw_syscalls:sys_enter/sys_exit",
                                  "tracepoints not found in tracefs (or lack the id/ret fields)"))
            return
        try:
            bpf.attach_tracepoint(tp=b"raw_syscalls:sys_enter", fn_name=b"sys_on_enter")
            bpf.attach_tracepoint(tp=b"raw_syscalls:sys_exit", fn_name=b"sys_on_exit")
        except Exception as exc:  # bcc raises plain Exception
            report.failed.append(("syscalls: raw_syscalls:sys_enter/sys_exit",
                                  f"attach failed: {str(exc).splitlines()[0]}"))
            return
        self._attached = True
        report.attached.append("syscalls: raw_syscalls:sys_enter/sys_exit (tracepoints, count and time per syscall)")

    def per_syscall(self) -> dict[int, dict]:
        """syscall nr -> {count, total_ns, max_ns, errors, threads} over all target threads."""
        out: dict[int, dict] = {}
        if not self._attached:
            return out
        for k, v in self._bpf[b"sys_stats"].items():
            row = out.setdefault(k.nr, {"count": 0, "total_ns": 0, "max_ns": 0, "errors": 0, "threads": 0})
            row["count"] += v.count
            row["total_ns"] += v.total_ns
            row["max_ns"] = max(row["max_ns"], v.max_ns)
            row["errors"] += v.errors
            row["threads"] += 1
        return out

    def _counter(self, ctx, name: str, unit: str, ts: int, value: int) -> None:
        if self._last.get(name) == value:
            return
        self._last[name] = value
        ctx.writer.counter(ctx.counter_track(name, unit, ctx.process_track), ts, int(value))

    def sample(self, ctx, now_ns: int) -> None:
        if not self._attached:
            return
        rows = self.per_syscall()
        self.total = sum(r["count"] for r in rows.values())
        for key in ("total_ns", "count"):
            self._tracked.update(sorted(rows, key=lambda nr: -rows[nr][key])[:TOP_N])
        for nr in sorted(self._tracked):
            row = rows.get(nr)
            if row is None:
                continue
            name = syscall_name(nr)
            self._counter(ctx, f"syscalls.{name}.count", "calls", now_ns, row["count"])
            self._counter(ctx, f"syscalls.{name}.ns", "ns", now_ns, row["total_ns"])

    def finish(self, bpf, ctx) -> None:
        if not self._attached:
            return
        now = time.monotonic_ns()
        self.sample(ctx, now)
        rows = self.per_syscall()
        args: dict = {"syscalls": self.total, "distinct": len(rows)}
        try:
            args["dropped"] = int(sum(v.value for v in bpf[b"sys_dropped"].values()))
        except Exception:
            pass
        for nr, row in sorted(rows.items(), key=lambda kv: -kv[1]["total_ns"]):
            name = syscall_name(nr)
            for key, value in row.items():
                args[f"{name}.{key}"] = int(value)
        ctx.writer.instant(ctx.process_track, now, "syscalls.summary", "metadata", args)

    def metadata(self) -> dict:
        return {"syscalls": self.total}
