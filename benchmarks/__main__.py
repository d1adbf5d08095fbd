"""`python -m benchmarks` (make bench): every benchmark, one after the other."""
import runpy
import sys

for name in ("benchmarks.bench_recorder", "benchmarks.bench_reader", "benchmarks.bench_alert_latency",
             "benchmarks.bench_detector_predict",
             "benchmarks.bench_gpu_packs", "benchmarks.bench_py_monitor"):
    print(f"\n===== {name} =====", flush=True)
    sys.argv = [name]
    try:
        runpy.run_module(name, run_name="__main__")
    except ModuleNotFoundError as err:
        print(f"(skipped: {err})")
    except SystemExit as exc:  # one benchmark's failure must not stop the others
        if exc.code not in (0, None):
            print(f"({name} exited with {exc.code})")
