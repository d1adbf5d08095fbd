"""Switch sys.monitoring on (and off) for chosen functions inside a running CPython 3.12+.

This is a runtime change to the target, opt-in and removable (docs/python-monitor.md):

* gdb attaches for a fraction of a second (batch mode, no symbols but libc's and
  libpython's), maps one private page with mmap(2) (a system call: no lock the
  stopped thread could hold), writes a small Python snippet there and calls
  `Py_AddPendingCall(PyRun_SimpleString, page)`, then detaches.
* The interpreter runs the pending call on its main thread at its next safe
  point (between bytecodes, holding the GIL) — as soon as the main thread runs
  Python code. The snippet takes sys.monitoring tool id 4 (3 if 4 is taken;
  PEP 669 assigns 0-2 and 5 to debuggers, coverage, profilers and optimizers),
  registers the built-in type `slice` as the callback of PY_START/PY_RESUME
  (called as slice(code, offset)) and PY_RETURN/PY_YIELD/PY_UNWIND
  (slice(code, offset, value)), and sets the local events on the code objects of
  the chosen functions only (PY_UNWIND can only be global: it fires on frames
  left by an exception). So no Python code runs per event, only the C `slice`
  constructor, which the recorder probes (pack.py).
* The snippet writes what it did as JSON to a status file the recorder reads
  (through /proc/PID/root); it never raises (a pending call that fails would
  raise in whatever code the main thread was running), and it does nothing
  when it runs after its deadline (a recorder that gave up waiting).

Removal runs the same way: events off (local and global), callbacks
unregistered, tool id freed. Nothing else in the process changes, except one
4 KiB page per injection that stays mapped (the interpreter reads the source
from it).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from prismkit.errors import PrismError

TOOL_NAME = "prismkit"
TOOL_IDS = (4, 3)  # ids PEP 669 leaves unassigned (0 debugger, 1 coverage, 2 profiler, 5 optimizer)
MIN_MINOR = 12

# Runs inside the target (3.12+), in a fresh namespace. Never raises.
SNIPPET = r'''
def _prism(P):
    import json, sys, time
    out = {"token": P["token"], "ok": False, "action": P["action"], "pid": __import__("os").getpid()}
    def done():
        try:
            with open(P["status"], "w") as f:
                json.dump(out, f)
        except Exception:
            pass
    try:
        if time.monotonic_ns() > P["deadline_ns"]:
            out["error"] = "the pending call ran after the recorder's deadline: nothing changed"
            return done()
        m = sys.monitoring
        E = m.events
        starts, ends = E.PY_START | E.PY_RESUME, E.PY_RETURN | E.PY_YIELD
        ours = [t for t in range(6) if m.get_tool(t) == P["name"]]
        import gc
        funcs = [o for o in gc.get_objects() if type(o).__name__ == "function"]
        def clear(t):
            for f in funcs:
                try:
                    if m.get_local_events(t, f.__code__):
                        m.set_local_events(t, f.__code__, 0)
                except Exception:
                    pass
            m.set_events(t, 0)
            for ev in (E.PY_START, E.PY_RESUME, E.PY_RETURN, E.PY_YIELD, E.PY_UNWIND):
                m.register_callback(t, ev, None)
            m.free_tool_id(t)
        for t in ours:
            clear(t)
        out["removed_tools"] = ours
        if P["action"] == "remove":
            out["ok"] = True
            return done()
        codes = {}
        for want in P["functions"]:
            mod, _, qual = want.rpartition(":")
            hits = []
            for f in funcs:
                c = getattr(f, "__code__", None)
                if c is None or c.co_qualname != qual:
                    continue
                if mod and getattr(f, "__module__", None) != mod:
                    continue
                if c not in hits:
                    hits.append(c)
            if not hits:
                out["error"] = ("no function %r in the process (is its module imported yet?)" % want)
                return done()
            for c in hits:
                codes[id(c)] = (want, c)
        tool = next((t for t in P["tool_ids"] if m.get_tool(t) is None), None)
        if tool is None:
            out["error"] = "sys.monitoring tool ids %s are all taken: %s" % (
                P["tool_ids"], [m.get_tool(t) for t in P["tool_ids"]])
            return done()
        m.use_tool_id(tool, P["name"])
        for ev in (E.PY_START, E.PY_RESUME, E.PY_RETURN, E.PY_YIELD, E.PY_UNWIND):
            m.register_callback(tool, ev, slice)
        listing = []
        for addr, (want, c) in codes.items():
            gen = bool(c.co_flags & 0x2A0)  # generator, coroutine, async generator
            m.set_local_events(tool, c, (starts | ends) if gen else (E.PY_START | E.PY_RETURN))
            names = list(c.co_varnames) + list(c.co_cellvars) + list(c.co_freevars)
            listing.append({"addr": addr, "want": want, "qualname": c.co_qualname, "file": c.co_filename,
                            "line": c.co_firstlineno, "argcount": c.co_argcount + c.co_kwonlyargcount,
                            "varnames": list(c.co_varnames), "generator": gen})
        m.set_events(tool, E.PY_UNWIND)
        out.update(ok=True, tool=tool, codes=listing, version="%d.%d" % sys.version_info[:2])
    except BaseException as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
    done()
'''


def _source(params: dict) -> bytes:
    body = SNIPPET + f"\n_prism(__import__('json').loads({json.dumps(params)!r}))\n"
    # One line for PyRun_SimpleString, in a fresh namespace (nothing lands in __main__).
    b64 = base64.b64encode(body.encode()).decode()
    return f"exec(__import__('base64').b64decode('{b64}'),{{}})\n".encode() + b"\0"


def python_minor(pid: int) -> tuple[str, int]:
    """The target's Python version (from the interpreter the python pack finds)."""
    from ...target import TargetProcess
    from ..python.interp import find_interpreter

    try:
        target = TargetProcess.from_pid(pid)
    except PrismError:
        raise
    except Exception as exc:
        raise PrismError(f"PID {pid}: {exc}") from None
    interp, why = find_interpreter(target)
    if interp is None:
        raise PrismError(f"PID {pid} is not a CPython process prismkit can read ({why})")
    return interp.version, interp.minor


def _gdb() -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        raise PrismError("gdb is needed to switch sys.monitoring on in a running process (apt-get install gdb; "
                         "scripts/setup.sh installs it)")
    return gdb


def _gdb_env() -> dict[str, str]:
    """gdb's environment: with the ptrace shim preloaded where setup.py built it.

    gdb 13 (Debian 12's) writes a 2696-byte XSAVE buffer that Linux refuses on CPUs
    with AMX state (11008 bytes), so its function calls fail and leave the target's
    interrupted system call returning ERESTARTNOHAND (514); gdb_xstate.c completes
    the write. On other hosts the shim passes every call through.
    """
    import importlib.machinery

    env = dict(os.environ)
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        shim = here / f"_gdb_xstate{suffix}"
        if shim.exists():
            env["LD_PRELOAD"] = " ".join(filter(None, [str(shim), env.get("LD_PRELOAD", "")]))
            break
    return env


def _gdb_script(source: bytes) -> str:
    # gdb's own Python: one mmap'd page (no malloc in the stopped process), the source written
    # into it, then the pending call. Py_AddPendingCall only queues: the main thread runs it later.
    return "\n".join([
        "python",
        "import gdb",
        f"src = bytes.fromhex('{source.hex()}')",
        "size = (len(src) + 4095) & ~4095",
        "page = int(gdb.parse_and_eval('(long)mmap(0, %d, 3, 0x22, -1, 0)' % size))",
        "assert 0 < page < 2**47, 'mmap failed: %#x' % page",
        "gdb.selected_inferior().write_memory(page, src)",
        "rc = int(gdb.parse_and_eval('(int)Py_AddPendingCall((void *)PyRun_SimpleString, (void *)%d)' % page))",
        "print('PRISM_PENDING %d %#x' % (rc, page))",
        "end",
        "",
    ])


def run_in_target(pid: int, params: dict, timeout_s: float = 10.0) -> dict:
    """Queue the snippet as a pending call in `pid` and wait for its status file."""
    version, minor = python_minor(pid)
    if minor < MIN_MINOR:
        raise PrismError(f"PID {pid} runs Python {version}: sys.monitoring needs Python 3.12+ "
                         "(exact function boundaries are not available on this interpreter)")
    gdb = _gdb()
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    status_rel = f"/tmp/prismkit-pymonitor-{pid}-{token}.json"
    status_host = Path(f"/proc/{pid}/root") / status_rel.lstrip("/")
    params = {**params, "token": token, "status": status_rel, "name": TOOL_NAME, "tool_ids": list(TOOL_IDS),
              "deadline_ns": time.monotonic_ns() + int(timeout_s * 1e9)}
    script = _gdb_script(_source(params))
    cmd = [gdb, "-p", str(pid), "-batch", "-nx", "-iex", "set auto-solib-add off", "-iex", "set auto-load off",
           "-iex", "set verbose off", "-ex", "sharedlibrary libc\\.so", "-ex", "sharedlibrary libpython",
           "-x"]
    with tempfile.NamedTemporaryFile("w", suffix=".gdb", prefix="prismkit-") as f:
        f.write(script)
        f.flush()
        try:
            res = subprocess.run(cmd + [f.name], capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL, env=_gdb_env())
        except subprocess.TimeoutExpired:
            raise PrismError(f"gdb did not finish within 60 s on PID {pid}") from None
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("PRISM_PENDING")), None)
    if line is None:
        err = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise PrismError(f"could not queue the pending call in PID {pid} with gdb: {err}")
    if int(line.split()[1]) != 0:
        raise PrismError(f"Py_AddPendingCall refused in PID {pid} (its pending-call queue is full)")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = json.loads(status_host.read_text())
        except (OSError, ValueError):
            status = None
        if status and status.get("token") == token:
            try:
                status_host.unlink()
            except OSError:
                pass
            return status
        if not Path(f"/proc/{pid}").exists():
            raise PrismError(f"PID {pid} exited")
        time.sleep(0.02)
    raise PrismError(f"PID {pid}: the main thread ran no Python code within {timeout_s:g} s, so the pending "
                     "call did not run (it will do nothing when it runs later)")


def enable(pid: int, functions: list[str], timeout_s: float = 10.0) -> dict:
    """Turn on PY_START/PY_RETURN events for `functions` ('Qual.name' or 'module:Qual.name')."""
    if not functions:
        raise PrismError("name at least one function (qualified name, e.g. Engine.step)")
    for f in functions:
        qual = f.rpartition(":")[2]
        if not qual or not all(p.isidentifier() or p == "<locals>" for p in qual.split(".")):
            raise PrismError(f"{f!r} is not a qualified function name (e.g. Engine.step or mod.sub:Engine.step)")
    status = run_in_target(pid, {"action": "add", "functions": list(functions)}, timeout_s)
    if not status.get("ok"):
        raise PrismError(f"PID {pid}: {status.get('error', 'failed')}")
    return status


def disable(pid: int, timeout_s: float = 10.0) -> dict:
    """Turn prismkit's sys.monitoring tool off in `pid` (no-op when it is not on)."""
    status = run_in_target(pid, {"action": "remove", "functions": []}, timeout_s)
    if not status.get("ok"):
        raise PrismError(f"PID {pid}: {status.get('error', 'failed')}")
    return status
