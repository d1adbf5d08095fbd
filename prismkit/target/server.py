"""Start, stop and inspect a llama-server process (ours or an existing one)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import PrismError
from ..paths import state_dir
from .build import ensure_llama_server
from .model import ensure_model


@dataclass
class ServerInfo:
    """What a started server is: enough for `prism record --pid` and `prism load`."""

    pid: int
    port: int
    host: str
    model: str
    n_parallel: int
    ctx_size: int
    log: str
    cmdline: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def health(url: str) -> bool:
    try:
        code, _ = http_get(f"{url}/health", timeout=1.0)
        return code == 200
    except OSError:
        return False


def pid_listening_on(port: int) -> int | None:
    """PID of the process that listens on TCP `port` (from /proc/net/tcp{,6})."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(parts[9])
    if not inodes:
        return None
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(pid_dir.name)
        except OSError:
            continue
    return None


class LlamaServer:
    """A llama-server on 127.0.0.1 with continuous batching and /metrics.

    Use as a context manager in tests, or through `prism target start|stop|status`,
    which keeps the server's details in a state file so later commands find it.
    """

    def __init__(self, model: str | Path = "tiny", port: int = 8080, host: str = "127.0.0.1",
                 n_parallel: int = 4, ctx_size: int = 8192, threads: int | None = None,
                 extra_args: list[str] | None = None, name: str = "default",
                 cpus: list[int] | None = None) -> None:
        self.model = model
        self.port = port
        self.host = host
        self.n_parallel = n_parallel
        self.ctx_size = ctx_size
        # cpus: the CPUs the server (all its threads) may run on, like a cpuset or `taskset -c`; the
        # default thread count is then one per such CPU
        self.cpus = sorted(set(cpus)) if cpus else None
        self.threads = threads or max(1, len(self.cpus) if self.cpus else (os.cpu_count() or 2))
        self.extra_args = extra_args or []
        self.name = name
        self.info: ServerInfo | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def state_file(self) -> Path:
        return state_dir() / f"server-{self.name}.json"

    def _model_path(self) -> Path:
        m = str(self.model)
        if m in ("tiny", "demo"):
            return ensure_model(m)
        path = Path(m).expanduser()
        if not path.is_file():
            raise PrismError(f"GGUF model not found: {path}")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise PrismError(f"not a GGUF file (bad magic): {path}")
        return path.resolve()

    def start(self, timeout: float = 120.0) -> ServerInfo:
        model = self._model_path()
        if port_in_use(self.host, self.port):
            raise PrismError(f"port {self.port} on {self.host} is already in use (choose another with --port)")
        binary = ensure_llama_server()
        log_path = state_dir() / f"server-{self.name}.log"
        cmd = [
            str(binary), "-m", str(model), "--host", self.host, "--port", str(self.port),
            "-np", str(self.n_parallel), "-c", str(self.ctx_size), "-t", str(self.threads),
            "--metrics", "--cont-batching", "--no-webui", *self.extra_args,
        ]
        log = open(log_path, "w")
        # Own session: the server outlives `prism target start` and gets no Ctrl-C of ours.
        cpus = self.cpus
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        log.close()
        url = f"http://{self.host}:{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = _tail(log_path)
                raise PrismError(f"llama-server exited with code {self._proc.returncode} before it was healthy: {tail}")
            if health(url):
                break
            time.sleep(0.1)
        else:
            self._kill()
            raise PrismError(f"llama-server did not become healthy within {timeout:g}s (log: {log_path})")
        self.info = ServerInfo(pid=self._proc.pid, port=self.port, host=self.host, model=str(model),
                               n_parallel=self.n_parallel, ctx_size=self.ctx_size, log=str(log_path),
                               cmdline=cmd)
        self.state_file.write_text(json.dumps(asdict(self.info), indent=1))
        return self.info

    def _kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def stop(self) -> None:
        if self._proc is not None:
            self._kill()
        else:
            info = self.load_state()
            if info is not None:
                stop_pid(info.pid)
        self.state_file.unlink(missing_ok=True)

    def load_state(self) -> ServerInfo | None:
        try:
            info = ServerInfo(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if not Path(f"/proc/{info.pid}").exists():
            self.state_file.unlink(missing_ok=True)
            return None
        self.info = info
        return info

    def __enter__(self) -> ServerInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def default_pid(pid: int | None) -> int:
    """`pid`, or when none was given the PID of the server `prism target start` started."""
    if pid is not None:
        return pid
    info = LlamaServer().load_state()
    if info is None:
        raise PrismError("no --pid given and no server started by `prism target start`")
    return info.pid


def attach_existing(url: str) -> ServerInfo:
    """Describe an already-running server at `url` (the PID is found from its port)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if not parsed.port:
        raise PrismError(f"server URL needs a port: {url}")
    if not health(url):
        raise PrismError(f"no healthy llama-server answers at {url}/health")
    pid = pid_listening_on(parsed.port)
    if pid is None:
        raise PrismError(f"server at {url} answers but no local process listens on port {parsed.port}")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return ServerInfo(pid=pid, port=parsed.port, host=parsed.hostname or "127.0.0.1", model="?",
                      n_parallel=0, ctx_size=0, log="", cmdline=[c.decode() for c in cmdline if c])
