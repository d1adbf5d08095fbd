"""Exact Python function boundaries (sys.monitoring switched on in a running CPython 3.12/3.13).

tests/standins/py_monitor_driver.py runs on a real pyenv interpreter; the real
Recorder attaches (gdb queues the pending call, the pack probes slice_new), the
driver runs a known workload on its main thread and a worker thread, and the
trace must hold exactly its calls: counts, arguments, nesting, generator
resumptions, calls left by an exception, nothing for other functions; and the
recording's end must leave the process running with monitoring off.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from prismkit.trace import load_trace

from conftest import REPO, require

pytestmark = [pytest.mark.bpf]
DRIVER = REPO / "tests" / "standins" / "py_monitor_driver.py"
PRISM = [sys.executable, "-m", "prismkit.cli"]


def pyenv_python(minor: str) -> str | None:
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python{minor}")))
    return found[-1] if found else None


class Driver:
    def __init__(self, minor: str):
        python = pyenv_python(minor)
        require(python is not None, f"pyenv Python {minor} is not installed")
        self.proc = subprocess.Popen([python, str(DRIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline())
        assert ready["ready"] == self.proc.pid and ready["python"] == minor
        self.pid = self.proc.pid

    def ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> int:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                return self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def gdb_ok():
    require(shutil.which("gdb") is not None, "gdb is needed (scripts/setup.sh installs it)")


def expected_steps(n: int) -> list[tuple[int, int]]:
    """(len(batch), depth) of each Engine.step call in begin order, per thread."""
    out = []
    for i in range(n):
        length, depth = 4 + i % 5, i % 3
        out += [(length - k, depth - k) for k in range(depth + 1)]
        out.append((1, 0))  # the failing step
    return out


@pytest.mark.parametrize("minor", ["3.12", "3.13"])
def test_exact_boundaries(bpf_ok, gdb_ok, tmp_path, minor):
    from recorders.engine import Recorder
    from recorders.packs.pymonitor import PyMonitorPack

    n = 30
    drv = Driver(minor)
    try:
        assert drv.ask("state")["tools"] == [None] * 6
        pack = PyMonitorPack(["Engine.tokens"], step="Engine.step",
                             step_args=[("n_seqs", "len(batch)"), ("depth", "depth")])
        out = tmp_path / "t.pftrace"
        rec = Recorder(drv.pid, out, packs=[pack], verbose=False).start_background()
        on = drv.ask("state")
        assert on["tools"][4] == "prismkit"
        result = drv.ask(f"run {n}")
        summary = rec.join(timeout=30)
        off = drv.ask("state")  # the recording's end switched it off; the process runs on
        assert (off["tools"], off["step_events"], off["global_events"]) == ([None] * 6, [], [])
        again = drv.ask("run 2")
        assert again["main"]["step"] > 0
        assert drv.close() == 0
    finally:
        drv.close()
    # sys.monitoring events: PY_START|PY_RETURN on the plain function, global PY_UNWIND only
    assert on["step_events"] == [on["start_return"]] and on["global_events"] == [on["unwind"]]
    trace = load_trace(out)
    s = trace.slices
    assert set(s[s["category"].isin(["python", "batch"])]["name"]) == {"Engine.step", "Engine.tokens"}, \
        "nothing recorded for other functions (Engine.helper)"
    b = trace.batches
    tids = {"main": result["main_tid"], "worker": result["worker_tid"]}
    assert len(b) == result["main"]["step"] + result["worker"]["step"]
    assert sorted(b["batch_id"]) == list(range(1, len(b) + 1))
    for who, tid in tids.items():
        mine = b[b["tid"] == tid].sort_values("ts")
        assert len(mine) == result[who]["step"], who
        got = list(zip(mine["n_seqs"].astype(int), mine["depth"].astype(int)))
        assert got == expected_steps(n), f"{who}: every call, in order, with its arguments"
        assert (mine["dur"] > 0).all()
        # nesting: a recursive call lies inside its caller, one level deeper
        ends = (mine["ts"] + mine["dur"]).to_numpy()
        rows = mine.reset_index(drop=True)
        for i in range(len(rows) - 1):
            if rows["depth"][i] > 0:  # its first inner call follows at once, inside it
                assert rows["ts"][i] < rows["ts"][i + 1] and ends[i + 1] <= ends[i]
                assert rows["depth"][i + 1] == rows["depth"][i] - 1
            else:  # a leaf: the next call starts after it ended
                assert ends[i] <= rows["ts"][i + 1]
    gens = s[s["name"] == "Engine.tokens"]
    assert len(gens) == 4 * (result["main"]["tokens"] + result["worker"]["tokens"])
    assert (gens["dur"] > 0).all()
    ev = summary.events
    assert ev["pymonitor_batches"] == len(b)
    assert ev["pymonitor_unmatched_ends"] == 0 and ev["pymonitor_unfinished"] == 0
    assert ev["pymonitor_removed"] == 1 and ev["pymonitor_tool"] == 4
    assert trace.metadata["lost_events"] == 0
    attached = "\n".join(summary.attached)
    assert "slice_new (push rbp; emulated)" in attached and "runtime change" in attached


def test_cli_add_remove(bpf_ok, gdb_ok):
    drv = Driver("3.12")
    try:
        r = subprocess.run([*PRISM, "python-monitor", "add", "--pid", str(drv.pid), "Engine.step"],
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert "sys.monitoring tool 4 (prismkit) on 1 code object(s)" in r.stdout
        st = drv.ask("state")
        assert st["tools"][4] == "prismkit" and st["step_events"] == [st["start_return"]]
        r = subprocess.run([*PRISM, "python-monitor", "add", "--pid", str(drv.pid), "Engine.step", "No.such"],
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and "no function 'No.such'" in r.stderr
        assert "Traceback" not in r.stderr
        # a failed add removed the earlier one first and took nothing: all off
        assert drv.ask("state")["tools"] == [None] * 6
        r = subprocess.run([*PRISM, "python-monitor", "add", "--pid", str(drv.pid), "Engine.step"],
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0
        r = subprocess.run([*PRISM, "python-monitor", "remove", "--pid", str(drv.pid)],
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0 and "tool 4 removed" in r.stdout
        assert drv.ask("state")["tools"] == [None] * 6
        assert drv.ask("run 1")["main"]["step"] == 2
    finally:
        assert drv.close() == 0


def test_python311_one_line_error(tmp_path):
    python = pyenv_python("3.11")
    require(python is not None, "pyenv Python 3.11 is not installed")
    proc = subprocess.Popen([python, "-c", "import time; print('r', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        for args in (["python-monitor", "add", "--pid", str(proc.pid), "Engine.step"],
                     ["record", "--pid", str(proc.pid), "--py-step", "Engine.step", "--duration", "1",
                      "-o", str(tmp_path / "x.pftrace")]):
            r = subprocess.run([*PRISM, *args], capture_output=True, text=True, cwd=REPO)
            assert r.returncode != 0
            assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
            assert "Python 3.11" in r.stderr and "3.12" in r.stderr
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
