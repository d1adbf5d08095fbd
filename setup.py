"""Build the optional native parts: the trace decoder (prismkit/trace/_wire.c), the event encoder
(recorders/_encode.c), the detector's flat forest (prismkit/detect/_forest.c) and gdb's ptrace shim for `prism python-monitor` (recorders/packs/pymonitor/gdb_xstate.c).

Project metadata lives in pyproject.toml; this file only adds the native parts.
Each is optional: without the decoder or the encoder prismkit falls back to
pure Python (slower) and warns once; without the shim gdb runs as it is.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "prismkit.trace._wire",
            sources=["prismkit/trace/_wire.c"],
            extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wno-unused-function", "-Wno-maybe-uninitialized"],
            optional=True,
        ),
        Extension(  # the online detector's one-row predictions (prismkit/detect/forest.py)
            "prismkit.detect._forest",
            sources=["prismkit/detect/_forest.c"],
            # (no fused multiply-adds: the predictions must equal numpy's, operation for operation)
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-ffp-contract=off"],
            optional=True,
        ),
        Extension(  # the trace writer's fast path for event packets
            "recorders._encode",
            sources=["recorders/_encode.c"],
            extra_compile_args=["-O2", "-std=c99", "-Wall"],
            optional=True,
        ),
        Extension(  # not a Python module: an LD_PRELOAD library for gdb < 14 on AMX CPUs (see the file)
            "recorders.packs.pymonitor._gdb_xstate",
            sources=["recorders/packs/pymonitor/gdb_xstate.c"],
            extra_compile_args=["-O2", "-Wall"],
            libraries=["dl"],
            optional=True,
        ),
    ],
)
