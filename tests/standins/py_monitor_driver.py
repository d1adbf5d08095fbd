"""A Python 3.12+ target for the exact-boundaries (sys.monitoring) tests. No dependencies.

    python3.X py_monitor_driver.py

Prints {"ready": pid}; its main thread polls stdin between short sleeps (so a
pending call runs within ~20 ms) and obeys one command per line:
  run N   N iterations on the main thread and one worker thread: Engine.step
          (recursive: step(batch, depth) calls step(batch[1:], depth-1)), a
          failing step (raises, caught), Engine.helper (never chosen), and a
          generator Engine.tokens; prints what it called, exactly
  state   prints the sys.monitoring tools in use and the events on Engine.step
  quit    exits
"""
import json
import os
import select
import sys
import threading
import time


class Engine:
    def step(self, batch, depth, fail=False):
        self.helper()
        if fail:
            raise ValueError("step failed")
        if depth > 0:
            self.step(batch[1:], depth - 1)
        return len(batch)

    def helper(self):
        return 1

    def tokens(self, n):
        for i in range(n):
            yield i


def workload(engine, n, log):
    for i in range(n):
        depth = i % 3
        engine.step(list(range(4 + i % 5)), depth)
        log["step"] += depth + 1
        log["depth_hist"][depth] = log["depth_hist"].get(depth, 0) + 1
        try:
            engine.step([0], 0, fail=True)
        except ValueError:
            log["step"] += 1
            log["failed"] += 1
        log["tokens_items"] += sum(engine.tokens(3))
        log["tokens"] += 1


def new_log():
    return {"step": 0, "failed": 0, "tokens": 0, "tokens_items": 0, "depth_hist": {}}


def main():
    engine = Engine()
    print(json.dumps({"ready": os.getpid(), "python": "%d.%d" % sys.version_info[:2]}), flush=True)
    while True:
        r, _, _ = select.select([sys.stdin], [], [], 0.02)
        if not r:
            continue
        cmd = sys.stdin.readline().split()
        if not cmd or cmd[0] == "quit":
            return
        if cmd[0] == "run":
            n = int(cmd[1])
            main_log, worker_log = new_log(), new_log()
            t = threading.Thread(target=workload, args=(engine, n, worker_log), name="worker")
            t.start()
            workload(engine, n, main_log)
            t.join()
            print(json.dumps({"main_tid": threading.get_native_id(), "worker_tid": t.native_id,
                              "main": main_log, "worker": worker_log}), flush=True)
        elif cmd[0] == "state":
            m = sys.monitoring
            E = m.events
            print(json.dumps({"tools": [m.get_tool(i) for i in range(6)],
                              "start_return": E.PY_START | E.PY_RETURN, "unwind": E.PY_UNWIND,
                              "step_events": [m.get_local_events(i, Engine.step.__code__) for i in range(6)
                                              if m.get_tool(i)],
                              "global_events": [m.get_events(i) for i in range(6) if m.get_tool(i)]}), flush=True)
        time.sleep(0.001)


if __name__ == "__main__":
    main()
