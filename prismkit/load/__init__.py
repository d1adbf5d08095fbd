"""Load generator: closed-loop, open-loop (Poisson, bursty) and trace replay."""
from .workload import RequestSpec, azure_replay, closed_loop, open_loop, parse_length_dist
from .runner import LoadResult, run_load

__all__ = ["RequestSpec", "azure_replay", "closed_loop", "open_loop", "parse_length_dist",
           "LoadResult", "run_load"]
