"""Drive a server with a workload; write the client-side ground truth CSV."""
from __future__ import annotations

import asyncio
import csv
import signal
import socket
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from ..errors import PrismError
from .client import MIN_PROMPT_TOKENS, RequestResult, completion_body, make_prompt, stream_completion
from .workload import RequestSpec

CSV_COLUMNS = [f.name for f in fields(RequestResult) if f.name != "chunk_ts_ns"]


@dataclass
class LoadResult:
    results: list[RequestResult]
    interrupted: bool
    wall_s: float

    def frame(self) -> pd.DataFrame:
        return results_frame(self.results)


def results_frame(results: list[RequestResult]) -> pd.DataFrame:
    df = pd.DataFrame([{c: getattr(r, c) for c in CSV_COLUMNS} for r in results], columns=CSV_COLUMNS)
    return add_latency_columns(df)


def add_latency_columns(df: pd.DataFrame) -> pd.DataFrame:
    """TTFT, TPOT and E2E in milliseconds from the raw client time stamps."""
    df = df.copy()
    ok = df["status"] == "ok"
    df["ttft_ms"] = np.where(ok, (df["t_first_token_ns"] - df["t_send_ns"]) / 1e6, np.nan)
    df["e2e_ms"] = np.where(ok, (df["t_end_ns"] - df["t_send_ns"]) / 1e6, np.nan)
    decode_tokens = (df["output_tokens"] - 1).clip(lower=1)
    df["tpot_ms"] = np.where(ok & (df["output_tokens"] > 1),
                             (df["t_end_ns"] - df["t_first_token_ns"]) / 1e6 / decode_tokens, np.nan)
    return df


def read_results_csv(path: str | Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError) as err:
        raise PrismError(f"cannot read load results {path}: {err}") from None
    return add_latency_columns(df)


def write_results_csv(results: list[RequestResult], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in results:
            w.writerow([getattr(r, c) for c in CSV_COLUMNS])


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.done = self.errors = self.in_flight = self.tokens = 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def show(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < 0.5:
            return
        self._last = now
        el = max(now - self.t0, 1e-9)
        line = (f"\r[load] {self.done}/{self.total} done, {self.in_flight} in flight, "
                f"{self.errors} errors, {self.done / el:5.1f} req/s, {self.tokens / el:7.1f} tok/s, {el:5.0f}s")
        print(line, end="\n" if final else "", file=sys.stderr, flush=True)


def run_load(url: str, specs: list[RequestSpec], concurrency: int = 4, out_csv: str | Path | None = None,
             seed: int = 0, cache_prompt: bool = False, max_in_flight: int = 256,
             duration_s: float | None = None, progress: bool = True) -> LoadResult:
    """Send `specs` to the server at `url`.

    Specs without arrival times are sent closed-loop by `concurrency` workers;
    specs with arrival times open-loop at those offsets (at most `max_in_flight`
    at once). Ctrl-C or SIGTERM stops sending; what finished is still written.
    """
    parsed = urlparse(url)
    if not parsed.hostname or not parsed.port:
        raise PrismError(f"bad server URL {url!r}: use http://HOST:PORT")
    if not specs:
        raise PrismError("the workload has no requests")
    if concurrency < 1:
        raise PrismError(f"concurrency must be at least 1 (got {concurrency})")
    short = [s.prompt_tokens for s in specs if s.prompt_tokens < MIN_PROMPT_TOKENS]
    if short:
        raise PrismError(f"prompts need at least {MIN_PROMPT_TOKENS} tokens (BOS and one word); "
                         f"{len(short)} requests ask for fewer")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=5).close()
    except OSError as err:
        raise PrismError(f"cannot connect to {url}: {err.strerror or err}") from None
    rng = np.random.default_rng(seed)
    bodies = [completion_body(make_prompt(s.prompt_tokens, rng), s.output_tokens, cache_prompt) for s in specs]
    results = [RequestResult(req_id=i, requested_prompt_tokens=s.prompt_tokens,
                             requested_output_tokens=s.output_tokens) for i, s in enumerate(specs)]
    prog = _Progress(len(specs), progress)
    t0 = time.monotonic()
    interrupted = asyncio.run(_drive(parsed.hostname, parsed.port, specs, bodies, results, concurrency,
                                     max_in_flight, duration_s, prog))
    prog.show(final=True)
    for r in results:
        if r.status == "pending":
            r.status = "cancelled" if r.t_send_ns else "not_sent"
    sent = [r for r in results if r.status != "not_sent"]
    if out_csv:
        write_results_csv(sent, out_csv)
    return LoadResult(sent, interrupted, time.monotonic() - t0)


async def _drive(host, port, specs, bodies, results, concurrency, max_in_flight, duration_s, prog) -> bool:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    start = time.monotonic()
    deadline = start + duration_s if duration_s else None

    async def one(i: int) -> None:
        prog.in_flight += 1
        await stream_completion(host, port, results[i], bodies[i])
        prog.in_flight -= 1
        prog.done += 1
        prog.tokens += results[i].output_tokens
        prog.errors += results[i].status != "ok"
        prog.show()

    tasks: set[asyncio.Task] = set()
    closed = [i for i, s in enumerate(specs) if s.arrival_s is None]
    timed = sorted((i for i, s in enumerate(specs) if s.arrival_s is not None), key=lambda i: specs[i].arrival_s)

    async def closed_worker(queue: list[int]) -> None:
        while queue and not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            await one(queue.pop(0))

    async def open_sender() -> None:
        sem = asyncio.Semaphore(max_in_flight)

        async def guarded(i: int) -> None:
            async with sem:
                await one(i)

        for i in timed:
            delay = start + specs[i].arrival_s - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return
            t = asyncio.create_task(guarded(i))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    drivers = [asyncio.create_task(closed_worker(closed)) for _ in range(min(concurrency, len(closed)))]
    if timed:
        drivers.append(asyncio.create_task(open_sender()))
    ticker = asyncio.create_task(_tick(prog))
    waiter = asyncio.create_task(stop.wait())
    gathers = [asyncio.gather(*drivers, return_exceptions=True)]
    await asyncio.wait([waiter, gathers[0]], return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set() and tasks:
        gathers.append(asyncio.gather(*tasks, return_exceptions=True))
        await asyncio.wait([waiter, gathers[1]], return_when=asyncio.FIRST_COMPLETED)
    interrupted = stop.is_set()
    # Cancel the tasks, never the gather()s: a gather cancelled while a child swallows its
    # cancellation (a request records itself as 'cancelled' and returns) ends holding a
    # CancelledError as its exception, which asyncio logs with a traceback if nobody reads it.
    pending = [*drivers, *tasks, waiter, ticker]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for g in gathers:  # done with their children; with return_exceptions they hold results
        await g
    return interrupted


async def _tick(prog: _Progress) -> None:
    while True:
        await asyncio.sleep(0.5)
        prog.show()


def latency_summary(df: pd.DataFrame, percentiles=(50, 90, 99)) -> pd.DataFrame:
    """TTFT/TPOT/E2E percentiles (ms) of the successful requests."""
    ok = df[df["status"] == "ok"]
    rows = {}
    for col, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2e_ms", "E2E")):
        vals = ok[col].dropna()
        rows[name] = {f"p{p}": (np.percentile(vals, p) if len(vals) else np.nan) for p in percentiles}
        rows[name]["mean"] = vals.mean() if len(vals) else np.nan
    out = pd.DataFrame(rows).T
    out.index.name = "metric (ms)"
    return out
