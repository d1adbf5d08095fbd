"""`python -m benchmarks` (make bench): every benchmark, one after the other."""
import runpy
import sys

for name in ("benchmarks.bench_recorder", "benchmarks.bench_reader"):
    print(f"\n===== {name} =====", flush=True)
    sys.argv = [name]
    try:
        runpy.run_module(name, run_name="__main__")
    except ModuleNotFoundError as err:
        print(f"(skipped: {err})")
