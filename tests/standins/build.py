"""Build the stand-in GPU libraries and drivers once, into a cache directory.

    from tests.standins.build import build_standins
    out = build_standins()          # Path with libcudart.so.12, ..., gpu_driver

The directory name carries a hash of the sources, so an edit rebuilds and a
rerun reuses the build. `make -C tests/standins OUT=...` does the same by hand.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("Makefile", "standin.h", "cudart.c", "cuda.c", "nccl.c", "hip.c", "kernels.c", "driver.c")
PRODUCTS = ("libcudart.so.12", "libcuda.so.1", "libnccl.so.2", "librccl.so.1", "libamdhip64.so.6",
            "libstandin_kernels.so.0", "gpu_driver", "gpu_driver_hip")


def _digest() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    root = Path(os.environ.get("PRISMKIT_STANDINS_DIR", Path(tempfile.gettempdir()) / "prismkit-standins"))
    return root / _digest()


def build_standins() -> Path:
    """The directory holding the built stand-ins (built on first use)."""
    out = build_dir()
    if all((out / p).exists() for p in PRODUCTS):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:  # one build at a time (parallel test runs)
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Built in place at its final path: the drivers' rpath points at it.
        proc = subprocess.run(["make", "-s", "-C", str(HERE), f"OUT={out}"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the stand-ins failed:\n{proc.stdout}\n{proc.stderr}")
        # Builds of other sources stay: another checkout's test run may be using them.
    missing = [p for p in PRODUCTS if not (out / p).exists()]
    if missing:
        raise RuntimeError(f"stand-in build left out {missing}")
    return out


if __name__ == "__main__":
    print(build_standins())
