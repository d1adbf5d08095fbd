"""The recorder's CPU per scheduler record: BCC's per-record callbacks vs the bulk drain.

    .venv/bin/python -m benchmarks.bench_sched_drain [--batch 85 1000] [--records 4000] [--cold]

A BPF program on syscalls:sys_enter_getppid submits one struct sched_event per
getppid() of this process (a few tids, comms and CPUs, both reasons), into a ring
buffer of the recorder's default size. Each round fills it with --batch records
(untimed), then times the consumer's drain on this thread's CPU clock:

  per-record   BCC's open_ring_buffer: libbpf -> ctypes -> BCC's wrapper -> the sched
               pack's former callback (one TraceWriter.slice per record, C encoder);
               `bpf.ring_buffer_consume()` is timed
  bulk         the sched pack now: RingReader.drain_fixed, then one
               encode_sched_events call (decoding and encoding in C) and one
               TraceWriter.write_encoded; `SchedPack._drain(reader)` is timed, and its
               two parts (reading the buffer, writing the slices) apart

--cold waits 50 ms (the engine's poll interval) and reads 64 MiB before each timed
drain, evicting the caches as the recorder finds them on a busy host (the server's
compute in between): the fixed costs of a drain (Python calls, dict look-ups, the
writer's write(2) at each 0.1 s flush) weigh more there than in a warm loop; this
reproduces the figures measured inside a recording.

Needs root and BPF. Prints us per record and per drain for each batch size (the demo
load drains ~85 records per 50 ms poll). No asserts; a few seconds of one CPU.
"""
from __future__ import annotations

import argparse
import ctypes as ct
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROGRAM = r"""
struct sched_event {
    u64 ts_off; u64 ts_on; u64 runq_ns;
    u32 tid; u32 by_pid; u32 cpu; u32 reason;
    char by_comm[16];
};
BPF_RINGBUF_OUTPUT(sched_events, 256);
BPF_ARRAY(seq, u64, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_PID) return 0;
    int z = 0;
    u64 *c = seq.lookup(&z);
    if (!c) return 0;
    u64 n = (*c)++;
    struct sched_event *ev = sched_events.ringbuf_reserve(sizeof(*ev));
    if (!ev) return 0;
    u64 now = bpf_ktime_get_ns();
    ev->ts_off = now - 30000 - (n % 13) * 1000;
    ev->ts_on = now;
    ev->runq_ns = n % 3 ? 30000 : 2000;
    ev->tid = 1000 + n % 6;
    ev->by_pid = n % 4 ? 0 : 4242;
    ev->cpu = n % 2;
    ev->reason = n % 3 ? 1 : 2;
    bpf_get_current_comm(ev->by_comm, sizeof(ev->by_comm));
    ev->by_comm[0] = 'a' + n % 4;
    sched_events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
    return 0;
}
"""


class _SchedEvent(ct.Structure):
    _fields_ = [("ts_off", ct.c_uint64), ("ts_on", ct.c_uint64), ("runq_ns", ct.c_uint64),
                ("tid", ct.c_uint32), ("by_pid", ct.c_uint32), ("cpu", ct.c_uint32), ("reason", ct.c_uint32),
                ("by_comm", ct.c_char * 16)]


_REASONS = {1: "preempted", 2: "blocked"}


def _per_record_callback(pack):
    """The sched pack's callback before the bulk drain (git 7dde8fa), on `pack`'s state."""
    from recorders.packs.sched.pack import _comm

    def on_event(_cpu, data, _size) -> None:
        ev = _SchedEvent.from_address(data)
        pack.events += 1
        reason = ev.reason
        pack.by_reason[reason] = pack.by_reason.get(reason, 0) + 1
        tid = ev.tid
        track = pack._sched_tracks.get(tid) or pack._track(tid)
        raw = ev.by_comm
        comm = pack._comms.get(raw)
        if comm is None:
            comm = pack._comms[raw] = _comm(raw)
        ts_off = ev.ts_off
        pack._ctx.writer.slice(track, ts_off, ev.ts_on - ts_off, _REASONS.get(reason, "off_cpu"), "sched",
                               {"by_pid": ev.by_pid, "by_comm": comm, "runq_wait_ns": ev.runq_ns, "cpu": ev.cpu})
    return on_event


def _pack(path: Path):
    from recorders.engine import RecordingContext
    from recorders.packs.sched.pack import SchedPack
    from recorders.trace_writer import TraceWriter

    writer = TraceWriter(path)
    target = SimpleNamespace(pid=os.getpid(), thread_name=lambda tid: f"t{tid}")
    pack = SchedPack()
    pack._ctx = RecordingContext(writer, target, writer.process_track(os.getpid(), "bench"), {})
    return pack, writer


def _fill(n: int) -> None:
    for _ in range(n):
        os.getppid()


POLL_S = 0.05  # the engine's drain interval


def _timed(fn, evict: bytearray | None) -> int:
    if evict is not None:  # as in a recording: a drain every poll interval, caches cold
        time.sleep(POLL_S)  # (so the writer flushes every other drain, as at the demo load)
        zlib.crc32(evict)   # read it all: the caches hold none of the drain's code and data
    t0 = time.thread_time_ns()
    fn()
    return time.thread_time_ns() - t0


def bench(batch: int, records: int, tmp: Path, cold: bool = False) -> dict[str, float]:
    evict = bytearray(64 << 20) if cold else None  # twice the L3 of the machines this runs on
    from bcc import BPF

    from recorders import ringbuf

    rounds = max(records // batch, 3)
    text = f"#define TARGET_PID {os.getpid()}\n{PROGRAM}".encode()
    out: dict[str, float] = {}

    bpf = BPF(text=text)
    try:
        pack, writer = _pack(tmp / "per_record.pftrace")
        bpf[b"sched_events"].open_ring_buffer(_per_record_callback(pack))
        _fill(batch)
        bpf.ring_buffer_consume()  # warm-up: tracks created, names interned
        ns = 0
        for _ in range(rounds):
            _fill(batch)
            ns += _timed(bpf.ring_buffer_consume, evict)
        writer.close()
        assert pack.events == (rounds + 1) * batch, pack.events
        out["per-record"] = ns / (rounds * batch) / 1000
    finally:
        bpf.cleanup()

    bpf = BPF(text=text)
    try:
        pack, writer = _pack(tmp / "bulk.pftrace")
        reader = ringbuf.open_ring_reader(bpf, "sched_events")
        _fill(batch)
        pack._drain(reader)
        total = read = 0
        for _ in range(rounds):
            _fill(batch)
            total += _timed(lambda: pack._drain(reader), evict)
            _fill(batch)  # the read alone, then the write alone, on the next batch
            raw = []
            read += _timed(lambda: raw.append(reader.drain_fixed(56)), evict)
        writer.close()
        write = total - read
        reader.close()
        assert pack.events == (rounds + 1) * batch, pack.events
        out["bulk"] = total / (rounds * batch) / 1000
        out["bulk: read"] = read / (rounds * batch) / 1000
        out["bulk: write"] = write / (rounds * batch) / 1000
    finally:
        bpf.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[85, 1000], help="records per drain")
    ap.add_argument("--records", type=int, default=4000, help="records timed per path and batch size")
    ap.add_argument("--cold", action="store_true", help="evict the caches before each timed drain")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (BPF)")
    print("caches evicted before each drain" if args.cold else "warm caches (drains back to back)")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'records/drain':>13}  {'per-record':>10}  {'bulk':>8}  {'(read':>8}  {'write)':>8}  "
              f"{'bulk per drain':>14}  speed-up")
        for batch in args.batch:
            r = bench(batch, args.records, Path(tmp), args.cold)
            print(f"{batch:>13}  {r['per-record']:>7.2f} us  {r['bulk']:>5.2f} us  {r['bulk: read']:>5.2f} us  "
                  f"{r['bulk: write']:>5.2f} us  {r['bulk'] * batch:>11.1f} us  x{r['per-record'] / r['bulk']:.1f}")


if __name__ == "__main__":
    main()
