"""Benchmarks: `python -m benchmarks` runs them all, `python -m benchmarks.bench_<name>` one."""
