"""Build the optional native trace decoder (prismkit/trace/_wire.c) and event encoder (recorders/_encode.c).

Project metadata lives in pyproject.toml; this file only adds the C extension.
The extension is optional: if it cannot be compiled, prismkit falls back to a
pure-Python decoder (slower) and warns once.
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
        Extension(  # the trace writer's fast path for event packets
            "recorders._encode",
            sources=["recorders/_encode.c"],
            extra_compile_args=["-O2", "-std=c99", "-Wall"],
            optional=True,
        ),
    ],
)
