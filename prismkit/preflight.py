"""Checks that the host can record: root, BPF, kernel headers, tracefs.

Run as ``python -m prismkit.preflight``; each failure is one clear line.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from .errors import PrismError

MIN_KERNEL = (5, 8)


def kernel_version() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_root() -> None:
    if os.geteuid() != 0:
        raise PrismError("recording needs root (CAP_BPF and CAP_PERFMON): run as root or with sudo")


def check_kernel() -> None:
    if kernel_version() < MIN_KERNEL:
        raise PrismError(
            f"unsupported kernel {platform.release()}: prismkit needs Linux "
            f"{MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer (BPF ring buffers)"
        )


def check_headers() -> None:
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return
    build = Path("/lib/modules") / platform.release() / "build"
    if not (build / "include").exists():
        raise PrismError(
            f"no kernel headers at {build}: run `make setup` (installs linux-headers and links them)"
        )


def check_tracefs() -> None:
    if not Path("/sys/kernel/tracing/events").exists():
        raise PrismError("tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing")


def check_bcc() -> None:
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise PrismError(
            "the bcc Python module is missing: run `make setup` (Debian python3-bpfcc linked into .venv)"
        ) from None


def check_bpf_loads() -> None:
    """Load and attach one tiny tracepoint program: proves BPF really works."""
    from bcc import BPF

    try:
        prog = BPF(text="TRACEPOINT_PROBE(sched, sched_switch) { return 0; }")
        prog.cleanup()
    except Exception as exc:  # bcc raises bare Exception on load failures
        raise PrismError(f"BPF is unavailable on this host: {str(exc).splitlines()[0]}") from None


def check_all(load_bpf: bool = True) -> None:
    check_root()
    check_kernel()
    check_headers()
    check_tracefs()
    check_bcc()
    if load_bpf:
        check_bpf_loads()


def main() -> int:
    try:
        check_all()
    except PrismError as err:
        print(f"[preflight] error: {err}", file=sys.stderr)
        return 1
    print(f"[preflight] ok: root, kernel {platform.release()}, headers, tracefs, bcc, BPF loads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
