"""A fast generator of recorder-like Perfetto traces (for benchmarks and large tests).

It writes the same shapes as the recorder (docs/trace-format.md): a clock
snapshot, process/thread/sched/request/counter tracks, interned names,
``batch`` slices with int annotations, nested ``stage`` slices, ``sched``
slices, counters, ``request`` slices with a ``first_token`` instant and flows
to the batches that served them. Packets are encoded by hand (no protobuf
classes) so a million events take a few seconds.
"""
from __future__ import annotations

import os
import struct

__all__ = ["write_recorder_like_trace"]

SEQ = 1
CLOCK_MONOTONIC = 3
CLOCK_BOOTTIME = 6
CLOCK_REALTIME = 1


def _v(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wt: int) -> bytes:
    return _v((field << 3) | wt)


def _f_varint(field: int, n: int) -> bytes:
    return _tag(field, 0) + _v(n)


def _f_bytes(field: int, data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    return _tag(field, 2) + _v(len(data)) + data


def _f_fixed64(field: int, n: int) -> bytes:
    return _tag(field, 1) + struct.pack("<Q", n & ((1 << 64) - 1))


def _f_double(field: int, x: float) -> bytes:
    return _tag(field, 1) + struct.pack("<d", x)


def _frame(packet: bytes) -> bytes:
    return b"\x0a" + _v(len(packet)) + packet


class _Enc:
    """Per-sequence interning state and packet assembly."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.cats: dict[str, int] = {}
        self.anns: dict[str, int] = {}
        self.first = True

    def _intern(self, table: dict[str, int], key: str, out: list[bytes], field: int) -> int:
        iid = table.get(key)
        if iid is None:
            iid = table[key] = len(table) + 1
            out.append(_f_bytes(field, _f_varint(1, iid) + _f_bytes(2, key)))
        return iid

    def packet(self, body: bytes, interned: list[bytes] | None = None, ts: int | None = None,
               is_event: bool = False) -> bytes:
        pkt = bytearray()
        if ts is not None:
            pkt += _f_varint(8, ts)
        pkt += _f_varint(10, SEQ)
        if self.first:
            pkt += _f_varint(13, 1)  # SEQ_INCREMENTAL_STATE_CLEARED
            pkt += _f_varint(87, 1)  # first_packet_on_sequence
            pkt += _f_bytes(59, _f_varint(58, CLOCK_MONOTONIC))  # trace_packet_defaults.timestamp_clock_id
            self.first = False
        elif is_event:
            pkt += _f_varint(13, 2)  # SEQ_NEEDS_INCREMENTAL_STATE
        pkt += body
        if interned:
            pkt += _f_bytes(12, b"".join(interned))
        return _frame(bytes(pkt))

    def event(self, ts: int, track: int, type_: int, name: str | None = None, cat: str | None = None,
              args: dict | None = None, flows: tuple = (), counter: int | float | None = None) -> bytes:
        interned: list[bytes] = []
        te = bytearray()
        if cat is not None:
            te += _f_varint(3, self._intern(self.cats, cat, interned, 1))
        if args:
            for k, val in args.items():
                ann = _f_varint(1, self._intern(self.anns, k, interned, 3))
                if isinstance(val, bool):
                    ann += _f_varint(2, int(val))
                elif isinstance(val, int):
                    ann += _f_varint(4, val)
                elif isinstance(val, float):
                    ann += _f_double(5, val)
                else:
                    ann += _f_bytes(6, str(val))
                te += _f_bytes(4, ann)
        te += _f_varint(9, type_)
        if name is not None:
            te += _f_varint(10, self._intern(self.names, name, interned, 2))
        te += _f_varint(11, track)
        if counter is not None:
            te += _f_double(44, counter) if isinstance(counter, float) else _f_varint(30, counter)
        for fid in flows:
            te += _f_fixed64(47, fid)
        return self.packet(_f_bytes(11, bytes(te)), interned, ts=ts, is_event=True)


def _track(enc: _Enc, uuid: int, *, name: str | None = None, parent: int | None = None,
           process: tuple | None = None, thread: tuple | None = None, counter: bool = False) -> bytes:
    td = bytearray(_f_varint(1, uuid))
    if name is not None:
        td += _f_bytes(2, name)
    if process is not None:
        pid, pname, cmdline = process
        pd_ = _f_varint(1, pid) + b"".join(_f_bytes(2, c) for c in cmdline) + _f_bytes(6, pname)
        td += _f_bytes(3, pd_)
    if thread is not None:
        pid, tid, tname = thread
        td += _f_bytes(4, _f_varint(1, pid) + _f_varint(2, tid) + _f_bytes(5, tname))
    if parent is not None:
        td += _f_varint(5, parent)
    if counter:
        td += _f_bytes(8, b"")
    return enc.packet(_f_bytes(60, bytes(td)))


def write_recorder_like_trace(path: str | os.PathLike, n_events: int = 1_000_000, *,
                              start_ns: int = 5_000_000_000_000, pid: int = 4242, seed: int = 1) -> dict:
    """Write a recorder-like trace with about ``n_events`` track events; returns a summary.

    The summary has ``events`` (track events written), ``batches``, ``requests``,
    ``sched``, ``counters`` and ``bytes``.
    """
    import random

    rng = random.Random(seed)
    enc = _Enc()
    out: list[bytes] = []
    clocks = b"".join(_f_bytes(1, _f_varint(1, cid) + _f_varint(2, ts)) for cid, ts in (
        (CLOCK_MONOTONIC, start_ns), (CLOCK_BOOTTIME, start_ns + 1_000_000), (CLOCK_REALTIME, 1_700_000_000_000_000_000)))
    out.append(enc.packet(_f_bytes(6, clocks + _f_varint(2, CLOCK_MONOTONIC)), ts=start_ns))
    P = 1
    out.append(_track(enc, P, process=(pid, "llama-server", ["llama-server", "-m", "tiny.gguf"])))
    tids = [pid, pid + 1, pid + 2, pid + 3]
    threads = {tid: 10 + i for i, tid in enumerate(tids)}
    scheds = {tid: 20 + i for i, tid in enumerate(tids)}
    for tid, u in threads.items():
        out.append(_track(enc, u, thread=(pid, tid, "llama-server" if tid == pid else f"worker-{tid}")))
        out.append(_track(enc, scheds[tid], name=f"sched {tid}", parent=u))
    lanes = [30 + i for i in range(4)]
    for i, u in enumerate(lanes):
        out.append(_track(enc, u, name=f"requests {i}", parent=P))
    C_NTOK, C_KV, C_CPU = 40, 41, 42
    out.append(_track(enc, C_NTOK, name="batch.n_tokens", parent=P, counter=True))
    out.append(_track(enc, C_KV, name="batch.kv_tokens", parent=P, counter=True))
    out.append(_track(enc, C_CPU, name=f"cpu.{pid}", parent=threads[pid], counter=True))
    t = start_ns + 1000
    n = 0
    out.append(enc.event(t, P, 3, "prismkit.metadata", "metadata", {
        "target_pid": pid, "target_cmdline": "llama-server -m tiny.gguf", "clock": "monotonic",
        "probes_attached": 12, "probes_failed": 0, "prismkit_version": "synthetic"}))
    n += 1
    main = threads[pid]
    kv = 0
    batch_id = 0
    n_batches = n_req = n_sched = n_ctr = 0
    req_open: list = []
    flow_next = 1
    while n < n_events - 2:
        batch_id += 1
        prefill = rng.random() < 0.05
        n_seqs = rng.randint(1, 4)
        n_prefill = rng.randint(16, 256) if prefill else 0
        n_decode = 0 if prefill else n_seqs
        ntok = n_prefill + n_decode
        kv = (kv + ntok) % 20000
        t += rng.randint(20_000, 200_000)
        flows = ()
        if batch_id % 32 == 1:
            lane = lanes[(batch_id // 32) % 4]
            rid = batch_id // 32 + 1
            fid = flow_next
            flow_next += 1
            out.append(enc.event(t - 5000, lane, 1, "request", "request", {
                "req_id": rid, "fd": 7, "bytes_in": 350, "ts_first_byte": t - 5000}, flows=(fid,)))
            req_open.append((lane, rid, fid, t - 5000))
            flows = (fid,)
            n += 1
        begin_args = {"batch_id": batch_id, "n_tokens": ntok, "n_seqs": n_seqs, "n_prefill_tokens": n_prefill,
                      "n_decode_tokens": n_decode, "kv_tokens": kv, "n_outputs": n_seqs,
                      "phase": "prefill" if prefill else "decode"}
        out.append(enc.event(t, main, 1, "llama_decode", "batch", begin_args, flows=flows))
        t1 = t + rng.randint(1000, 5000)
        out.append(enc.event(t1, main, 1, "graph_compute", "stage"))
        t2 = t1 + rng.randint(10_000, 100_000) * (4 if prefill else 1)
        out.append(enc.event(t2, main, 2))
        out.append(enc.event(t2 + 500, main, 1, "sample", "stage"))
        t3 = t2 + rng.randint(2000, 8000)
        out.append(enc.event(t3, main, 2))
        t4 = t3 + 800
        out.append(enc.event(t4, main, 2, args={"ret": 0}))
        out.append(enc.event(t4, C_NTOK, 4, counter=ntok))
        out.append(enc.event(t4, C_KV, 4, counter=kv))
        n += 8
        n_batches += 1
        n_ctr += 2
        if batch_id % 4 == 0:
            worker = tids[1 + batch_id % 3]
            s0 = t + 3000
            out.append(enc.event(s0, scheds[worker], 1, "preempted" if batch_id % 8 else "blocked", "sched", {
                "by_pid": 999, "by_comm": "kworker/0:1", "runq_wait_ns": rng.randint(1000, 90000), "cpu": batch_id % 2}))
            out.append(enc.event(s0 + rng.randint(5000, 50000), scheds[worker], 2))
            out.append(enc.event(t4, C_CPU, 4, counter=rng.random()))
            n += 3
            n_sched += 1
            n_ctr += 1
        if req_open and batch_id % 32 == 16:
            lane, rid, fid, t0 = req_open.pop(0)
            out.append(enc.event(t + 100, lane, 3, "first_token", "request", {"req_id": rid}))
            out.append(enc.event(t4 + 200, lane, 2, args={"bytes_out": 1200, "n_chunks": 16}))
            n += 2
            n_req += 1
        t = t4
    for lane, rid, fid, t0 in req_open:   # close the rest so the file ends cleanly
        t += 1000
        out.append(enc.event(t, lane, 2, args={"bytes_out": 10, "n_chunks": 1}))
        n += 1
        n_req += 1
    out.append(enc.event(t + 1000, P, 3, "prismkit.stats", "metadata", {
        "lost_events": 3, "lost_events.batches": 3, "events": n, "stop_reason": "duration"}))
    n += 1
    data = b"".join(out)
    with open(path, "wb") as f:
        f.write(data)
    return {"events": n, "batches": n_batches, "requests": n_req, "sched": n_sched, "counters": n_ctr,
            "bytes": len(data)}
