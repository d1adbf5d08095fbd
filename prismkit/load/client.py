"""A small asyncio HTTP/1.1 client for streamed (SSE) completions.

Hand-written on asyncio streams rather than a heavy HTTP library so that the
time stamps it takes are as close as possible to the bytes on the socket: the
client-side CSV is the ground truth the recorder is checked against.
Times are CLOCK_MONOTONIC nanoseconds, the clock eBPF's bpf_ktime_get_ns uses.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np

from ..target.model import PROMPT_WORDS

EOS_TOKEN_ID = 2
MIN_PROMPT_TOKENS = 2  # BOS + one word: an empty prompt is an error for llama-server


@dataclass
class RequestResult:
    req_id: int
    t_send_ns: int = 0
    t_first_token_ns: int = 0
    t_end_ns: int = 0
    requested_prompt_tokens: int = 0
    requested_output_tokens: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    n_chunks: int = 0
    bytes_out: int = 0
    status: str = "pending"
    error: str = ""
    wall_send_s: float = 0.0
    chunk_ts_ns: list[int] = field(default_factory=list, repr=False)


def make_prompt(n_tokens: int, rng: np.random.Generator) -> str:
    """Text that the bundled vocabulary tokenizes to exactly n_tokens (BOS included)."""
    n_words = max(1, n_tokens - 1)
    return " ".join(rng.choice(PROMPT_WORDS, size=n_words))


def completion_body(prompt: str, max_tokens: int, cache_prompt: bool) -> bytes:
    return json.dumps({
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # llama-server: never stop early...
        "logit_bias": {str(EOS_TOKEN_ID): -100},  # ...and servers without ignore_eos
        "temperature": 1.0,
        "cache_prompt": cache_prompt,
    }).encode()


async def stream_completion(host: str, port: int, result: RequestResult, body: bytes,
                            path: str = "/v1/completions", timeout: float = 300.0) -> RequestResult:
    """POST one streamed completion and fill `result` with its timings and counts."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        result.wall_send_s = time.time()
        result.t_send_ns = time.monotonic_ns()
        writer.write(head.encode() + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        code = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
        headers = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        if code != 200:
            payload = await reader.read(4096)
            result.status = f"http_{code}"
            result.error = payload.decode(errors="replace")[:200].replace("\n", " ")
            result.t_end_ns = time.monotonic_ns()
            return result
        buf = b""
        async for data in _body_pieces(reader, chunked, timeout):
            now = time.monotonic_ns()
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                _handle_event(event, now, result)
        result.t_end_ns = time.monotonic_ns()
        if result.status == "pending":
            result.status = "ok" if result.n_chunks else "empty"
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
        result.status = "error"
        result.error = f"{type(err).__name__}: {err}"[:200]
        result.t_end_ns = time.monotonic_ns()
    finally:
        if writer is not None:
            writer.close()
    return result


async def _body_pieces(reader: asyncio.StreamReader, chunked: bool, timeout: float):
    if not chunked:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return
            yield data
    while True:
        size_line = await asyncio.wait_for(reader.readline(), timeout)
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
        yield data[:-2]


def _handle_event(event: bytes, now: int, result: RequestResult) -> None:
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            result.status = "ok"
            return
        msg = json.loads(payload)
        if "error" in msg:
            result.status = "error"
            result.error = str(msg["error"])[:200]
            return
        usage = msg.get("usage")
        if usage:
            result.prompt_tokens = int(usage.get("prompt_tokens", 0))
            result.output_tokens = int(usage.get("completion_tokens", 0))
        choices = msg.get("choices") or []
        # Token chunks only: the closing chunk (finish_reason set, no text) carries usage.
        if choices and (choices[0].get("text") or choices[0].get("finish_reason") is None):
            result.n_chunks += 1
            result.bytes_out += len(payload)
            result.chunk_ts_ns.append(now)
            if not result.t_first_token_ns:
                result.t_first_token_ns = now
