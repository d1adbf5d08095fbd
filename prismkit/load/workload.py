"""What to send and when: request specs with arrival offsets and token lengths."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import PrismError


@dataclass(frozen=True)
class RequestSpec:
    """One request: when to send it (seconds from start; None = as soon as a worker is free)."""

    arrival_s: float | None
    prompt_tokens: int
    output_tokens: int


LengthDist = Callable[[np.random.Generator], int]


def parse_length_dist(spec: str, lo: int = 1, hi: int = 1 << 20) -> LengthDist:
    """Parse 'fixed:N', 'uniform:A:B', 'lognormal:MEDIAN:SIGMA' or 'normal:MEAN:STD'."""
    parts = spec.split(":")
    kind, args = parts[0], parts[1:]
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise PrismError(f"bad length distribution {spec!r}: arguments must be numbers") from None

    def clip(x: float) -> int:
        return int(min(max(round(x), lo), hi))

    def bad(why: str) -> PrismError:
        return PrismError(f"bad length distribution {spec!r}: {why}")

    if kind == "uniform" and len(nums) == 2 and nums[0] > nums[1]:
        raise bad("uniform:A:B needs A <= B")
    if kind in ("normal", "lognormal") and len(nums) == 2 and nums[1] < 0:
        raise bad("the spread (std or sigma) must be >= 0")
    if kind == "lognormal" and len(nums) == 2 and nums[0] <= 0:
        raise bad("the lognormal median must be > 0")
    if kind == "fixed" and len(nums) == 1:
        return lambda rng: clip(nums[0])
    if kind == "uniform" and len(nums) == 2:
        a, b = int(nums[0]), int(nums[1])
        return lambda rng: clip(rng.integers(a, b + 1))
    if kind == "lognormal" and len(nums) == 2:
        mu = np.log(nums[0])
        return lambda rng: clip(rng.lognormal(mu, nums[1]))
    if kind == "normal" and len(nums) == 2:
        return lambda rng: clip(rng.normal(nums[0], nums[1]))
    raise PrismError(
        f"bad length distribution {spec!r}: use fixed:N, uniform:A:B, lognormal:MEDIAN:SIGMA or normal:MEAN:STD"
    )


def closed_loop(n_requests: int, prompt: LengthDist, output: LengthDist, seed: int = 0) -> list[RequestSpec]:
    """Requests with no arrival time: the runner sends each when a worker is free."""
    rng = np.random.default_rng(seed)
    return [RequestSpec(None, prompt(rng), output(rng)) for _ in range(n_requests)]


def open_loop(rate: float, duration_s: float, prompt: LengthDist, output: LengthDist,
              burstiness: float = 1.0, seed: int = 0) -> list[RequestSpec]:
    """Open-loop arrivals at `rate` requests/s for `duration_s`.

    Inter-arrival gaps are Gamma distributed with shape 1/burstiness: burstiness 1
    is a Poisson process; larger values give bursts and lulls at the same mean rate.
    """
    if rate <= 0 or duration_s <= 0:
        raise PrismError("open-loop load needs --rate > 0 and --duration > 0")
    if burstiness <= 0:
        raise PrismError("--burstiness must be > 0 (1 = Poisson)")
    rng = np.random.default_rng(seed)
    shape = 1.0 / burstiness
    scale = 1.0 / (rate * shape)
    specs, t = [], 0.0
    while True:
        t += rng.gamma(shape, scale)
        if t >= duration_s:
            return specs
        specs.append(RequestSpec(t, prompt(rng), output(rng)))


def read_azure_trace(path: Path) -> Iterator[tuple[float, int, int]]:
    """Rows of an Azure LLM inference trace CSV as (epoch seconds, context, generated)."""
    try:
        f = open(path, newline="")
    except OSError as err:
        raise PrismError(f"cannot read trace {path}: {err.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise PrismError(f"{path} is not an Azure LLM trace: needs columns {', '.join(sorted(need))}")
        for lineno, row in enumerate(reader, start=2):
            try:
                ts = _parse_timestamp(row["TIMESTAMP"])
                yield ts, int(row["ContextTokens"]), int(row["GeneratedTokens"])
            except ValueError:
                raise PrismError(f"{path}:{lineno}: bad row {row}") from None


def _parse_timestamp(text: str) -> float:
    text = text.strip()
    if "." in text:  # 7 fractional digits: more than datetime parses
        head, frac = text.split(".", 1)
        return datetime.fromisoformat(head).timestamp() + float("0." + frac)
    return datetime.fromisoformat(text).timestamp()


def azure_replay(path: Path, time_scale: float = 1.0, start_offset_s: float = 0.0,
                 duration_s: float | None = None, token_scale: float = 1.0,
                 max_prompt: int | None = None, max_output: int | None = None) -> list[RequestSpec]:
    """Replay an Azure trace: the window [start_offset, start_offset + duration) of trace time.

    `time_scale` stretches time (0.5 = twice as fast); `token_scale` scales the
    lengths so that a small server can keep up with the trace's shape. Prompts
    are at least 2 tokens (BOS and one word), outputs at least 1.
    """
    if time_scale <= 0 or token_scale <= 0:
        raise PrismError("--time-scale and --token-scale must be > 0")
    rows = list(read_azure_trace(Path(path)))
    if not rows:
        raise PrismError(f"{path} has no requests")
    t0 = rows[0][0] + start_offset_s
    specs = []
    for ts, ctx, gen in rows:
        rel = ts - t0
        if rel < 0:
            continue
        if duration_s is not None and rel >= duration_s:
            break
        p = max(2, round(ctx * token_scale))
        o = max(1, round(gen * token_scale))
        if max_prompt:
            p = min(p, max_prompt)
        if max_output:
            o = min(o, max_output)
        specs.append(RequestSpec(rel * time_scale, p, o))
    return specs
