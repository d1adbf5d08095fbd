"""HTTP pack: per-request timings from the server's socket syscalls, no code change.

What llama-server (cpp-httplib) does on the wire, checked with strace on the
pinned build under a streamed completion:
- an acceptor thread blocks in `accept4(listen_fd)`; a pool thread then
  `poll`s and `recvfrom`s the request (4 KiB reads);
- the response head (status line + headers) is one `sendto`, written as soon
  as the request is parsed, before any token exists;
- a streamed (SSE, chunked) body is one `sendto` per event: one per token,
  then one larger final event (finish reason, usage, timings), then
  `data: [DONE]` (19 bytes with its chunk framing), then the chunked-encoding
  terminator as two tiny writes (`0\\r\\n`, `\\r\\n`);
- between writes it polls the socket for POLLIN to notice a client that went
  away; with `Connection: close` it ends with shutdown, a read of 0 bytes
  (EOF) and close; with keep-alive the next read starts the next request.

So, from sizes and order only (no payload byte is read):
- a request begins with the first read of bytes on a connection after accept
  or after the previous response (keep-alive); its arrival is when that read
  returned;
- its response begins with the first write after it (`ts_first_byte`, the
  head), its end is the last write before the next request's read, EOF,
  shutdown or close;
- every later write of more than CONTROL_MAX bytes is a chunk (an SSE event);
  writes of CONTROL_MAX bytes or less are transfer framing and end-of-stream
  markers, counted in bytes_out but not as chunks;
- the first token is the first chunk after the head (a response written in a
  single write has its first token there).

Trace output (docs/trace-format.md): a slice `request` (category `request`) per
request, from arrival to the last write of its response, on a lane track
`requests <n>` under the process (lanes are reused; requests that overlap in
time are on different lanes), written 0.3 s after the request ended (so the
batches that served it have arrived), with args
  req_id, fd, tid (thread that read it), port, bytes_in, bytes_out, n_writes,
  ts_first_byte (response head), ts_first_token, ts_last_chunk, n_chunks,
  n_tokens (chunks that carry a token: all but a closing summary event that is
  clearly larger than the token events), streamed, ttft_ns, e2e_ns,
  tpot_ns = (end - first token) / (n_tokens - 1) when n_tokens >= 2,
  ended_by (next_request, eof, shutdown, close, reused, recording_stopped),
  ts_accept (first request of a connection accepted during the recording),
  path (only with capture_paths), and when linked to batches: n_batches,
  first_batch_id, slot (when a single slot fits);
instants `first_token` and `chunk` (category `request`) on the same lane; flow
ids from the request slice to each batch that served it, when the llama.cpp
pack reports its batches to the `batch_observers` of the recording context (see
`on_batch` and flows.py).

Option `capture_paths` (ctx.options, default off): record the request target
(path without query) of each request, read in the kernel from the first 64
bytes of its first read; nothing else of the payload is ever read.
"""
from __future__ import annotations

import ctypes as ct
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ...target import TargetProcess
from ..base import AttachReport, ProbePack
from . import sockets
from .flows import BatchLog, batch_flow_ids, link_request

ACCEPT, READ, WRITE, CLOSE, SHUTDOWN, EOF = 1, 2, 3, 4, 5, 6
CONTROL_MAX = 32  # writes this small are chunked-encoding framing or `data: [DONE]`, not chunks
PATH_LEN = 64
HOLD_NS = 300_000_000  # keep finished requests this long (at least 3 drains) so the batches that served them arrive first

# (tracepoint, BPF program): entry probes filter on the tracked fds, exit probes finish the call.
ENTER = (
    ("accept4", "http_enter_accept"), ("accept", "http_enter_accept"),
    ("read", "http_enter_read"), ("readv", "http_enter_readv"), ("recvfrom", "http_enter_recvfrom"),
    ("recvmsg", "http_enter_recvmsg"),
    ("write", "http_enter_write"), ("writev", "http_enter_write"), ("sendto", "http_enter_write"),
    ("sendmsg", "http_enter_write"),
    ("close", "http_enter_close"), ("shutdown", "http_enter_shutdown"),
)
EXIT = (
    ("accept4", "http_exit_accept"), ("accept", "http_exit_accept"),
    ("read", "http_exit_call"), ("readv", "http_exit_call"), ("recvfrom", "http_exit_call"),
    ("recvmsg", "http_exit_call"), ("write", "http_exit_call"), ("writev", "http_exit_call"),
    ("sendto", "http_exit_call"), ("sendmsg", "http_exit_call"),
)


class HttpEvent(ct.Structure):
    _fields_ = [
        ("ts", ct.c_uint64), ("ts_enter", ct.c_uint64), ("bytes", ct.c_int64), ("tid", ct.c_uint32),
        ("fd", ct.c_uint32), ("kind", ct.c_uint32), ("aux", ct.c_uint32), ("path", ct.c_ubyte * PATH_LEN),
    ]


@dataclass
class Request:
    req_id: int
    fd: int
    port: int
    ts_arrival: int
    tid: int
    ts_accept: int | None = None      # only on the first request of a connection
    bytes_in: int = 0
    path: str | None = None
    writes: list[tuple[int, int]] = field(default_factory=list)  # (ts, bytes)
    ended_by: str = ""
    interim_bytes: int = 0            # 1xx responses written before the request body was read

    # -- derived (sizes and order only) ------------------------------------
    @property
    def ts_first_byte(self) -> int | None:
        return self.writes[0][0] if self.writes else None

    @property
    def ts_end(self) -> int | None:
        return self.writes[-1][0] if self.writes else None

    @property
    def bytes_out(self) -> int:
        return sum(n for _, n in self.writes) + self.interim_bytes

    def chunks(self) -> list[tuple[int, int]]:
        """Writes after the head that carry an event (not framing): the streamed chunks."""
        body = [w for w in self.writes[1:] if w[1] > CONTROL_MAX]
        if not body and self.writes:
            # A response in one write (head and body together), or head + framing only.
            big = [w for w in self.writes[1:] if w[1] > 0]
            return big[:1] or self.writes[:1]
        return body

    def timings(self) -> dict:
        if not self.writes:
            return {}
        chunks = self.chunks()
        first = chunks[0][0]
        out = {
            "ts_first_byte": self.ts_first_byte,
            "ts_first_token": first,
            "ttft_ns": first - self.ts_arrival,
            "e2e_ns": self.ts_end - self.ts_arrival,
            "n_chunks": len(chunks),
            "streamed": len(self.writes) > 2,
        }
        tokens = token_chunks(chunks)
        out["n_tokens"] = tokens
        out["ts_last_chunk"] = chunks[-1][0]
        if tokens >= 2:
            out["tpot_ns"] = (self.ts_end - first) // (tokens - 1)
        return out


def token_chunks(chunks: list[tuple[int, int]]) -> int:
    """How many chunks carry a token: all but a closing summary event.

    OpenAI-style streams end with one event that carries no new token (finish
    reason, usage, timings); it is clearly larger than the token events before
    it. Counting it would understate the time per output token.
    """
    n = len(chunks)
    if n >= 3:
        sizes = sorted(s for _, s in chunks[:-1])
        median = sizes[len(sizes) // 2]
        if chunks[-1][1] > 1.5 * median + 64:
            return n - 1
    return n


@dataclass
class Connection:
    fd: int
    port: int
    ts_accept: int | None
    request: Request | None = None
    n_requests: int = 0


class HttpPack(ProbePack):
    name = "http"
    bpf_file = Path(__file__).with_name("http.bpf.c")
    buffers = {"http_events": "http_lost"}
    state_maps = ("http_calls",)

    def __init__(self) -> None:
        self._hold_ns = HOLD_NS
        self.events = 0
        self.requests = 0
        self.chunks = 0
        self.aborted = 0          # the client went away before any response byte
        self.orphan_writes = 0    # writes on connections whose request began before the recording
        self.incomplete = 0       # responses still running when the recording stopped
        self.flows = 0
        self.linked = 0
        self._ctx = None
        self._listen: list[sockets.SocketInfo] = []
        self._conns: dict[int, Connection] = {}
        self._done: deque[Request] = deque()
        self._lanes: list[int] = []  # lane n -> end of the last slice written on it
        self._next_req = 0
        self._capture_paths = False
        self._batches = BatchLog()
        self._claimed: dict[int, int] = {}  # batch_id -> requests linked to it

    # -- setup ---------------------------------------------------------------
    def applies_to(self, target: TargetProcess) -> bool:
        self._listen = sockets.listening_sockets(target.pid)
        return bool(self._listen)

    def bpf_text(self, target: TargetProcess, options: dict) -> str:
        self._capture_paths = bool(options.get("capture_paths"))
        self._hold_ns = max(HOLD_NS, 3 * int(options.get("poll_interval_ms", 0)) * 1_000_000)
        ports = sorted({s.local_port for s in self._listen})
        head = []
        if self._capture_paths:
            head.append("#define HTTP_CAPTURE_PATHS 1")
        if not sockets.has_listening_unix_socket(target.pid):
            # Every accept of this process is then on one of its TCP listeners.
            head.append("#define HTTP_ACCEPT_ANY_UNSEEN 1")
        if len(ports) == 1:
            head.append(f"#define HTTP_DEFAULT_PORT {ports[0]}")
        return "\n".join(head) + "\n" + self.bpf_file.read_text()

    def attach(self, bpf, target: TargetProcess, report: AttachReport) -> None:
        problem = check_tracepoint_layout()
        if problem:
            report.failed.append(("http requests", problem))
            return
        listen = bpf[b"http_listen"]
        for s in self._listen:
            listen[ct.c_uint32(s.fd)] = ct.c_uint32(s.local_port)
        ports = {s.local_port for s in self._listen}
        conns = bpf[b"http_conns"]
        for s in sockets.served_connections(target.pid, ports):
            # Open connections (keep-alive) from before the recording: their next request counts.
            conns[conns.Key(target.pid << 32 | s.fd)] = conns.Leaf(s.local_port, 0)
            self._conns[s.fd] = Connection(s.fd, s.local_port, None)
        attached, failed = [], []
        for tp, fn in [(f"sys_enter_{n}", f) for n, f in ENTER] + [(f"sys_exit_{n}", f) for n, f in EXIT]:
            try:
                bpf.attach_tracepoint(tp=f"syscalls:{tp}".encode(), fn_name=fn.encode())
                attached.append(tp)
            except Exception as exc:  # bcc raises plain Exception
                failed.append((f"syscalls:{tp}", str(exc).splitlines()[0]))
        listeners = ", ".join(f"fd {s.fd} port {s.local_port}" for s in self._listen)
        report.attached.append(f"http requests: {len(attached)} syscall tracepoints on listening "
                               f"{listeners}" + (" (paths captured)" if self._capture_paths else ""))
        report.failed += failed

    def start(self, bpf, ctx) -> None:
        self._ctx = ctx
        ctx.batch_observers.append(self.on_batch)
        ctx.open_bulk_buffer(bpf, "http_events", self._drain)

    # -- events --------------------------------------------------------------
    def _drain(self, reader) -> None:
        """Every record since the last drain, in one read (no per-record callback)."""
        size = ct.sizeof(HttpEvent)
        raw = reader.drain_fixed(size)
        from_copy = HttpEvent.from_buffer_copy
        for offset in range(0, len(raw), size):
            self._on_event(from_copy(raw, offset))

    def _on_event(self, ev: HttpEvent) -> None:
        self.events += 1
        kind, fd, ts = ev.kind, ev.fd, ev.ts
        if kind == ACCEPT:
            old = self._conns.pop(fd, None)
            if old is not None:  # a close we did not see
                self._end_request(old, "reused")
            self._conns[fd] = Connection(fd, ev.aux, ts)
            return
        conn = self._conns.get(fd)
        if conn is None:
            conn = self._conns[fd] = Connection(fd, 0, None)
        if kind == READ:
            req = conn.request
            if req is not None and req.writes and sum(n for _, n in req.writes) <= CONTROL_MAX:
                # An interim response ("HTTP/1.1 100 Continue\r\n\r\n", 25 bytes, in one or two
                # writes) before the client sent the body: still the same request.
                req.interim_bytes += sum(n for _, n in req.writes)
                req.writes.clear()
            if req is None or req.writes:
                if req is not None:
                    self._end_request(conn, "next_request")
                req = conn.request = Request(self._next_req, fd, conn.port, ts, ev.tid)
                self._next_req += 1
                if conn.n_requests == 0:
                    req.ts_accept = conn.ts_accept
                conn.n_requests += 1
                if self._capture_paths:
                    path = bytes(ev.path).lstrip(b"\0").split(b"\0", 1)[0]
                    req.path = path.decode("ascii", errors="replace") if path else None
            req.bytes_in += ev.bytes
        elif kind == WRITE:
            if conn.request is None:
                self.orphan_writes += 1
                return
            conn.request.writes.append((ts, ev.bytes))
        elif kind in (EOF, SHUTDOWN):
            if conn.request is not None and (conn.request.writes or kind == EOF):
                self._end_request(conn, "eof" if kind == EOF else "shutdown")
        elif kind == CLOSE:
            self._end_request(conn, "close")
            self._conns.pop(fd, None)

    def _end_request(self, conn: Connection, why: str) -> None:
        req = conn.request
        conn.request = None
        if req is None:
            return
        req.ended_by = why
        if not req.writes:
            self.aborted += 1
            return
        self._done.append(req)

    def on_batch(self, batch: dict) -> list[int]:
        """Batch observer: the llama.cpp pack calls it for each batch it writes.

        `batch` has batch_id, tid, ts_start, ts_end, seq_mask, n_prefill_tokens;
        the returned flow ids go on the batch slice (one per slot it carries),
        so that the request slices that claim the batch later connect to it.
        """
        self._batches.add(batch)
        return batch_flow_ids(batch)

    # -- output --------------------------------------------------------------
    def sample(self, ctx, now_ns: int) -> None:
        self._flush(now_ns - self._hold_ns)

    def _flush(self, upto: int | None) -> None:
        ready = [r for r in self._done if upto is None or r.ts_end <= upto]
        if not ready:
            return
        self._done = deque(r for r in self._done if not (upto is None or r.ts_end <= upto))
        for req in sorted(ready, key=lambda r: r.ts_arrival):
            self._write(req)
        if upto is not None:
            keep = min([r.ts_arrival for r in self._done] + [c.request.ts_arrival for c in self._conns.values()
                                                             if c.request is not None] + [upto])
            self._batches.forget_before(keep - 10 * self._hold_ns)
            if self._batches.batches:
                oldest = self._batches.batches[0].batch_id
                self._claimed = {k: v for k, v in self._claimed.items() if k >= oldest}

    def _lane(self, begin: int, end: int) -> int:
        for n, last_end in enumerate(self._lanes):
            if last_end < begin:
                self._lanes[n] = end
                return n
        self._lanes.append(end)
        return len(self._lanes) - 1

    def _write(self, req: Request) -> None:
        ctx = self._ctx
        w = ctx.writer
        t = req.timings()
        chunks = req.chunks()
        lane = self._lane(req.ts_arrival, req.ts_end)
        track = ctx.named_track(f"requests {lane}")
        args = {
            "req_id": req.req_id, "fd": req.fd, "tid": req.tid, "port": req.port, "bytes_in": req.bytes_in,
            "bytes_out": req.bytes_out, "n_writes": len(req.writes), **t, "ended_by": req.ended_by,
        }
        if req.ts_accept is not None:
            args["ts_accept"] = req.ts_accept
        if req.path is not None:
            args["path"] = req.path
        n_tokens = token_chunks(chunks)
        batch_flows = link_request(self._batches, req.ts_arrival, [c[0] for c in chunks[:n_tokens]],
                                   self._claimed)
        if batch_flows is not None:
            if batch_flows.slot >= 0:
                args["slot"] = batch_flows.slot
            args["n_batches"] = len(batch_flows.flow_ids)
            args["first_batch_id"] = batch_flows.batch_ids[0]
            self.linked += 1
            self.flows += len(batch_flows.flow_ids)
        w.begin(track, req.ts_arrival, "request", "request", args,
                flow_ids=batch_flows.flow_ids if batch_flows else ())
        for i, (ts, n) in enumerate(chunks):
            if i == 0:
                w.instant(track, ts, "first_token", "request", {"req_id": req.req_id, "bytes": n,
                                                                 "ttft_ns": t["ttft_ns"]})
            else:
                w.instant(track, ts, "chunk", "request", {"req_id": req.req_id, "bytes": n, "index": i})
        w.end(track, req.ts_end)
        self.requests += 1
        self.chunks += len(chunks)

    def finish(self, bpf, ctx) -> None:
        for conn in self._conns.values():
            if conn.request is not None and conn.request.writes:
                conn.request.ended_by = "recording_stopped"
                self.incomplete += 1
                self._done.append(conn.request)
                conn.request = None
        self._flush(None)

    def metadata(self) -> dict:
        return {"http_events": self.events, "requests": self.requests, "request_chunks": self.chunks,
                "requests_aborted": self.aborted, "requests_incomplete": self.incomplete,
                "http_orphan_writes": self.orphan_writes, "requests_linked": self.linked,
                "request_flows": self.flows}


def _tracefs() -> Path | None:
    for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(f"{p}/events/syscalls"):
            return Path(p)
    return None


def check_tracepoint_layout() -> str | None:
    """None when the syscall tracepoint records are laid out as http.bpf.c reads them."""
    root = _tracefs()
    if root is None:
        return "no syscall tracepoints (tracefs not mounted or CONFIG_FTRACE_SYSCALLS off)"
    expect = {"sys_enter_recvfrom": {"fd": 16, "ubuf": 24, "flags": 40}, "sys_enter_shutdown": {"fd": 16, "how": 24},
              "sys_enter_recvmsg": {"fd": 16, "flags": 32}, "sys_exit_read": {"ret": 16}}
    for event, fields in expect.items():
        try:
            text = (root / "events" / "syscalls" / event / "format").read_text()
        except OSError as exc:
            return f"cannot read the format of syscalls:{event}: {exc}"
        offsets = {}
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("field:"):
                continue
            decl, off = line.split(";")[0], line.split("offset:")[1].split(";")[0]
            offsets[decl.split()[-1].lstrip("*")] = int(off)
        for name, off in fields.items():
            if offsets.get(name) != off:
                return f"syscalls:{event} field {name} at offset {offsets.get(name)}, expected {off}"
    return None
