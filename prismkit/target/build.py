"""Build llama.cpp's native `llama-server` from a pinned llama-cpp-python sdist.

No prebuilt wheel fits these machines, but the sdist on PyPI vendors the whole
llama.cpp tree. We download it once (pinned by version and hash), build the
server with shared libraries (so libllama/libggml-* are separate files in
/proc/PID/maps, where the probes attach) and cache the result.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from ..errors import PrismError
from ..paths import cache_dir

SDIST_VERSION = "0.3.35"
SDIST_SHA256 = "1139dbb54509074b70893fab8554e3b079aa9f4d312058ce4018ef0019e3de12"
SDIST_NAME = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"

CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",  # engine libraries as separate .so files for uprobes
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # would download from a hub
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=ON",
]


def build_root() -> Path:
    return cache_dir() / f"llama.cpp-{SDIST_VERSION}"


def server_binary() -> Path:
    return build_root() / "build" / "bin" / "llama-server"


def _log(msg: str) -> None:
    print(f"[target] {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_sdist(dest: Path) -> Path:
    tarball = dest / SDIST_NAME
    if tarball.exists() and _sha256(tarball) == SDIST_SHA256:
        return tarball
    _log(f"downloading llama-cpp-python=={SDIST_VERSION} sdist from PyPI")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "-q", "-d", str(dest), f"llama-cpp-python=={SDIST_VERSION}"]
    # pip download may try to prepare metadata; we only need the file it saved.
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if not tarball.exists():
        raise PrismError(f"could not download {SDIST_NAME} from PyPI (no network?)")
    if _sha256(tarball) != SDIST_SHA256:
        tarball.unlink()
        raise PrismError(f"{SDIST_NAME} from PyPI does not match the pinned sha256")
    return tarball


def ensure_llama_server(jobs: int | None = None) -> Path:
    """Return the path of a built llama-server, building it on first use."""
    binary = server_binary()
    stamp = build_root() / ".built"
    if binary.exists() and stamp.exists():
        return binary
    root = build_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second `make` waits for the first build
        if binary.exists() and stamp.exists():
            return binary
        if shutil.which("cmake") is None:
            raise PrismError("cmake is missing: run `make setup`")
        tarball = _download_sdist(root)
        src = root / "src"
        if not (src / "CMakeLists.txt").exists():
            _log("unpacking vendored llama.cpp")
            prefix = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
            tmp = root / "src.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            with tarfile.open(tarball) as tf:
                members = []
                for m in tf.getmembers():
                    if m.name.startswith(prefix) and len(m.name) > len(prefix):
                        m.name = m.name[len(prefix):]
                        members.append(m)
                tf.extractall(tmp, members=members, filter="data")
            shutil.rmtree(src, ignore_errors=True)
            tmp.rename(src)
        jobs = jobs or os.cpu_count() or 2
        log_path = root / "build.log"
        _log(f"building llama-server with {jobs} jobs (about 10 minutes on 2 cores; log: {log_path})")
        t0 = time.time()
        with open(log_path, "w") as log:
            for cmd in (
                ["cmake", "-S", str(src), "-B", str(root / "build"), *CMAKE_FLAGS],
                ["cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", str(jobs)],
            ):
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    if line.startswith("[") and "%]" in line[:8]:
                        print(f"\r[target] build {line[:6].strip()} {time.time() - t0:5.0f}s",
                              end="", file=sys.stderr, flush=True)
                if proc.wait() != 0:
                    print(file=sys.stderr)
                    raise PrismError(f"llama-server build failed (see {log_path})")
        print(file=sys.stderr)
        if not binary.exists():
            raise PrismError(f"llama-server build finished but {binary} is missing (see {log_path})")
        stamp.write_text(f"{SDIST_VERSION}\n")
        _log(f"built {binary} in {time.time() - t0:.0f}s")
    return binary
