"""Shared fixtures: the real llama.cpp server, and CI strictness.

In CI (CI=true) a test that would skip for lack of root, BPF or the server is a
failure, not a skip: `require()` turns the skip into a failure there.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from prismkit.target.server import LlamaServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


def require(condition: bool, reason: str) -> None:
    """Skip when `condition` is false; in CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _have_bpf() -> tuple[bool, str]:
    from prismkit.errors import PrismError
    from prismkit.preflight import check_all

    try:
        check_all(load_bpf=True)
    except PrismError as err:
        return False, str(err)
    return True, ""


@pytest.fixture(scope="session")
def bpf_ok() -> None:
    ok, why = _have_bpf()
    require(ok, why)


@pytest.fixture(scope="session")
def server():
    """A real llama-server (tiny random model, -np 4) for the whole session."""
    from prismkit.target.build import server_binary

    require(server_binary().exists(), "llama-server is not built (run `make target`)")
    srv = LlamaServer(model="tiny", port=free_port(), n_parallel=4, ctx_size=8192, name=f"pytest-{os.getpid()}")
    info = srv.start()
    # The first requests after start are several times slower: warm up.
    from prismkit.load import closed_loop, parse_length_dist, run_load

    run_load(info.url, closed_loop(8, parse_length_dist("fixed:32"), parse_length_dist("fixed:8")),
             concurrency=4, progress=False)
    yield info
    srv.stop()
