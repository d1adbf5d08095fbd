"""The scenario interface, the target, helper processes, the guard, and the runner.

A scenario is one kind of interference with a live server. Its life:

    sc = SCENARIOS[name](target, params)    # validates params (PrismError if bad)
    sc.start()        # apply: from here the server may be affected
    sc.tick()         # called by the runner while the window is open (periodic work)
    sc.stop()         # remove the interference, normal path
    sc.cleanup()      # always called (finally): idempotent, never raises

`run_window(sc, duration_s, ...)` drives that life and returns the label
(DESIGN.md): ``{"start_ns", "end_ns", "kind", "scenario", "params"}`` on
CLOCK_MONOTONIC (the trace clock). ``start_ns`` is taken just before the first
action that can touch the server, ``end_ns`` just after the last trace of the
interference is gone (helpers reaped, cgroup removed, SIGCONT sent), so every
batch outside [start_ns, end_ns] is unaffected; ``params`` holds the effective
parameters plus what actually happened (``effective_start_ns`` and
``setup_ms``: when, and how long after start_ns, the interference was in full
force -- helpers start in tens of ms to a few s on a busy host; ``interrupted``;
scenario-specific facts).

Cleanup guarantees: helpers are children of the injector that die with it
(PR_SET_PDEATHSIG) and are stopped and reaped in `cleanup`; changes to the
server itself (SIGSTOP, cgroup membership) are registered with the guard
process (guard.py) *before* they are made, so they are undone even if the
injector is SIGKILLed.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import PrismError
from ..paths import REPO_ROOT
from .guard import proc_start_time, proc_state, same_process


@dataclass
class Target:
    """The server under injection: its PID, the CPUs it may run on, its URL if known."""

    pid: int
    start_time: int
    cpus: list[int]
    url: str | None = None
    comm: str = ""

    @classmethod
    def from_pid(cls, pid: int, url: str | None = None) -> "Target":
        if pid <= 0:
            raise PrismError(f"bad PID {pid}")
        start = proc_start_time(pid)
        if start is None:
            raise PrismError(f"no such process: PID {pid}")
        state = proc_state(pid)
        if state in ("Z", "X"):
            raise PrismError(f"PID {pid} has exited (zombie)")
        if state in ("T", "t"):
            raise PrismError(f"PID {pid} is stopped (state {state}); resume it first (kill -CONT {pid})")
        if pid == os.getpid() or pid == os.getppid():
            raise PrismError(f"PID {pid} is the injector itself or its parent")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        return cls(pid=pid, start_time=start, cpus=server_cpus(pid), url=url.rstrip("/") if url else None, comm=comm)

    def alive(self) -> bool:
        return same_process(self.pid, self.start_time) and proc_state(self.pid) not in ("Z", "X")

    def tids(self) -> list[int]:
        try:
            return sorted(int(t) for t in os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            return []

    def resolve_url(self) -> str:
        """The server's URL: --url, else the one listening TCP port of the PID that answers /health."""
        if self.url:
            return self.url
        from ..target.server import health

        ports = listening_ports(self.pid)
        for port in ports:
            url = f"http://127.0.0.1:{port}"
            if health(url):
                self.url = url
                return url
        raise PrismError(f"PID {self.pid} ({self.comm}) has no listening port that answers /health "
                         f"(listening on {ports or 'nothing'}); pass --url")


def server_cpus(pid: int) -> list[int]:
    """The CPUs the server may run on: the union of its threads' affinity masks."""
    cpus: set[int] = set()
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            cpus |= os.sched_getaffinity(tid)
        except OSError:
            continue
    if not cpus:
        try:
            cpus = os.sched_getaffinity(pid)
        except OSError as err:
            raise PrismError(f"cannot read the CPU affinity of PID {pid}: {err.strerror}") from None
    return sorted(cpus)


def listening_ports(pid: int) -> list[int]:
    """TCP ports the process listens on (from /proc/net/tcp{,6} and its socket fds)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return []
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:
                ports.append(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(set(ports))


# --- parameters -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    default: Any
    help: str
    type: type | tuple = float
    check: Callable[[Any], bool] | None = None
    need: str = ""  # what `check` demands, for the error message


def _coerce(name: str, spec: Param, value: Any, scenario: str) -> Any:
    if value is None and spec.default is None:
        return None
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    if isinstance(value, bool) and bool not in types:
        raise PrismError(f"{scenario}: parameter {name} must be {types[0].__name__}, not {value!r}")
    if not isinstance(value, types):
        try:
            if types[0] is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            elif types[0] in (int, float) and isinstance(value, str):
                value = types[0](value)
            elif types[0] is float and isinstance(value, int):
                value = float(value)
            elif types[0] is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueError
        except ValueError:
            raise PrismError(f"{scenario}: parameter {name} must be {types[0].__name__}, not {value!r}") from None
    if spec.check is not None and not spec.check(value):
        raise PrismError(f"{scenario}: parameter {name}={value!r} is out of range ({spec.need})")
    return value


# --- helper processes and the guard -----------------------------------------------------------

class Guard:
    """Client side of the guard process (see guard.py); one per injector process."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._next = 0
        self._pending: set[int] = set()

    def ensure(self) -> None:
        """Start the guard process now (it takes ~50 ms, seconds on a saturated host)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._proc is None:
            env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            self._proc = subprocess.Popen([sys.executable, "-m", "prismkit.inject.guard", str(os.getpid())], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True, env=env, text=True)

    def _send(self, msg: dict) -> None:
        self._start()
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()

    def register(self, op: dict) -> int:
        with self._lock:
            self._next += 1
            self._send({"id": self._next, **op})
            self._pending.add(self._next)
            return self._next

    def forget(self, op_id: int | None) -> None:
        if op_id is None:
            return
        with self._lock:
            self._pending.discard(op_id)
            try:
                self._send({"forget": op_id})
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Tell the guard all is clean and let it exit (reaped here).

        If some undo action is still pending (a cleanup step failed), the guard
        is left running: it retries that action when this process exits.
        """
        with self._lock:
            if self._proc is None or self._pending:
                return
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"done": True}) + "\n")
                self._proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


_GUARD: Guard | None = None


def guard() -> Guard:
    global _GUARD
    if _GUARD is None:
        _GUARD = Guard()
    return _GUARD


def close_guard() -> None:
    if _GUARD is not None:
        _GUARD.close()


class Helper:
    """One helper process (worker.py), registered with the guard, stopped and reaped by `stop`."""

    def __init__(self, kind: str, cfg: dict, ready_timeout: float = 30.0) -> None:
        cfg = {**cfg, "parent": os.getpid()}
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, "-m", "prismkit.inject.worker", kind, json.dumps(cfg)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env, text=True)
        self.pid = self.proc.pid
        start = proc_start_time(self.pid)
        self._guard_id = guard().register({"op": "kill", "pid": self.pid, "start": start}) if start else None
        self.ready_timeout = ready_timeout
        self.output: str = ""

    def wait_ready(self, deadline: float) -> None:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PrismError(f"{self.kind} helper (pid {self.pid}) did not start within {self.ready_timeout:g}s")
                if sel.select(min(left, 0.2)):
                    line = self.proc.stdout.readline()
                    if line.strip() == "ready":
                        return
                    if not line:
                        break
                elif self.proc.poll() is not None:
                    break
        finally:
            sel.close()
        self.proc.wait()
        err = (self.proc.stderr.read() if self.proc.stderr else "").strip().splitlines()
        raise PrismError(f"{self.kind} helper exited with code {self.proc.returncode}: {err[-1] if err else 'no output'}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGKILL, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            try:
                self.output = self.proc.stdout.read()
            except (OSError, ValueError):
                pass
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        guard().forget(self._guard_id)
        self._guard_id = None


def start_helpers(kind: str, cfgs: list[dict], timeout: float = 30.0) -> list[Helper]:
    """Start helpers and wait until all report ready (stopping them all on failure)."""
    helpers: list[Helper] = []
    try:
        for cfg in cfgs:
            helpers.append(Helper(kind, cfg, timeout))
        deadline = time.monotonic() + timeout
        for h in helpers:
            h.wait_ready(deadline)
    except BaseException:
        for h in helpers:
            h.stop()
        raise
    return helpers


# --- scenarios --------------------------------------------------------------------------------

class Scenario:
    """Base class. Subclasses set `name`, `kind`, `PARAMS`, and implement `_start`/`_stop`/`_cleanup`."""

    name = "?"
    kind = "fault"  # or "workload"
    summary = ""
    PARAMS: dict[str, Param] = {}

    def __init__(self, target: Target, params: dict | None = None) -> None:
        self.target = target
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            known = ", ".join(self.PARAMS) or "none"
            raise PrismError(f"{self.name}: unknown parameter(s) {', '.join(unknown)} (known: {known})")
        self.params = {k: _coerce(k, spec, params.get(k, spec.default), self.name) for k, spec in self.PARAMS.items()}
        self.facts: dict[str, Any] = {}  # what actually happened, merged into the label's params
        self.applied = False  # set once something may have touched the server
        self.t_effective_ns: int | None = None
        self._stopped = False
        self._cleaned = False
        self.validate()

    # hooks -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the parameters against the target (raise PrismError); fill defaults that depend on it."""

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        """Remove the interference (normal path). Default: the same as cleanup."""
        self._cleanup()

    def _cleanup(self) -> None:
        raise NotImplementedError

    def tick(self) -> float | None:
        """Periodic work while the window is open; return seconds until the next call (None: no need)."""
        return None

    def finished(self) -> bool:
        """True when the scenario has run its course before the window's end (e.g. a burst that completed)."""
        return False

    def check(self) -> None:
        """Raise PrismError if the interference broke down (a helper died)."""

    # driver ----------------------------------------------------------------------------------
    def configure(self, duration_s: float) -> None:
        """Told the window's length before start (workload scenarios size their load by it)."""
        self.duration_s = duration_s

    def start(self) -> None:
        self._start()
        if self.t_effective_ns is None:
            self.t_effective_ns = time.monotonic_ns()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        try:
            self._cleanup()
        except Exception as exc:  # cleanup must go on; report, never raise
            print(f"[inject] warning: cleanup of {self.name} failed: {exc}", file=sys.stderr, flush=True)

    def label_params(self) -> dict:
        return {**self.params, **self.facts}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items() if v is not None)


class Stop:
    """A stop flag that signal handlers may set.

    No locks: a handler that called threading.Event.set() could deadlock on the
    Event's lock when the signal lands while the same thread holds it (inside
    Event.wait). `wait` polls the flag every 10 ms instead.
    """

    def __init__(self) -> None:
        self._flag = False
        self.reason: str | None = None

    def set(self, reason: str = "requested") -> None:
        if self.reason is None:
            self.reason = reason
        self._flag = True

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self._flag:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.01))
        return self._flag


def _say(log: Callable[[str], None] | None, msg: str) -> None:
    if log is not None:
        log(msg)


def run_window(sc: Scenario, duration_s: float, stop: Stop | None = None,
               log: Callable[[str], None] | None = None, t0_ns: int | None = None) -> dict | None:
    """Apply `sc` for `duration_s` seconds (or until `stop`); always clean up; return its label.

    Returns None when nothing was applied (an error before the first action).
    Errors (PrismError) propagate after the cleanup; the label is then
    attached to the exception as `.label` so callers can still write it.
    """
    stop = stop or Stop()
    t0_ns = t0_ns or time.monotonic_ns()
    guard().ensure()  # before the window opens: its start-up is not part of the window
    start_ns = time.monotonic_ns()
    error: BaseException | None = None
    _say(log, f"+{(start_ns - t0_ns) / 1e9:7.3f}s start {sc.name} ({sc.kind}) for {duration_s:g}s: {sc.describe()}")
    sc.stop_flag = stop  # scenarios that wait on their own (a load finishing) watch it too
    try:
        sc.configure(duration_s)
        sc.start()
        deadline = time.monotonic() + duration_s
        while not stop.is_set() and not sc.finished():
            now = time.monotonic()
            if now >= deadline:
                break
            if not sc.target.alive():
                raise PrismError(f"the server (PID {sc.target.pid}) exited during {sc.name}")
            sc.check()
            nxt = sc.tick()
            wait = min(deadline - time.monotonic(), 0.1 if nxt is None else nxt, 0.1)
            if wait > 0:
                stop.wait(wait)
        if not stop.is_set():
            sc.stop()  # graceful (e.g. let a load's requests in flight finish); cleanup follows anyway
    except BaseException as exc:
        error = exc
    finally:
        sc.cleanup()
        close_guard()  # nothing is left to undo (else the guard stays, to retry at exit)
    end_ns = time.monotonic_ns()
    if not sc.applied:
        if error is not None:
            raise error
        return None
    label_start = sc.facts.pop("_start_ns", start_ns)
    label_end = sc.facts.pop("_end_ns", end_ns)
    params = sc.label_params()
    effective = max(label_start, sc.t_effective_ns or start_ns)
    params["setup_ms"] = round((effective - label_start) / 1e6, 3)
    params["effective_start_ns"] = int(effective)
    params["interrupted"] = stop.is_set() or error is not None
    label = {"start_ns": int(label_start), "end_ns": int(label_end), "kind": sc.kind, "scenario": sc.name,
             "params": params}
    why = f" ({stop.reason})" if stop.is_set() else (f" (error: {error})" if error is not None else "")
    _say(log, f"+{(end_ns - t0_ns) / 1e9:7.3f}s stop  {sc.name}{why}: window {(label_end - label_start) / 1e9:.3f}s")
    if error is not None:
        try:
            error.label = label  # type: ignore[attr-defined]
        except AttributeError:
            pass
        raise error
    return label
