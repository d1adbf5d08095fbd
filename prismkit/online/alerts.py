"""Alert episodes and their sinks.

One alert per anomaly episode, not one per batch: the detector's alarm opens
it, flagged batches update it (at most every `update_every_s`, and once when
the root-cause evidence is in), and the detector's close resolves it. Each
event carries observed and expected latency, slowdown, the batches and
requests affected, the SLO impact and the top causes.

Sinks: `TerminalSink` (one line per event), `JsonlSink` (one JSON object per
line, flushed), `WebhookSink` (HTTP POST in its own thread, retries with
backoff, never blocks the caller), and the Prometheus exporter in metrics.py.
Each sink records when every event left it (``time.monotonic_ns()`` right
after the write returned; for the webhook, once the request was written to the
socket, of the attempt the receiver accepted) so that the alert path can be measured from
the batch's uretprobe timestamp (same clock, CLOCK_MONOTONIC).
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import sys
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from prismkit.errors import PrismError


@dataclass
class Alert:
    """One event of an anomaly episode (what every sink receives)."""

    alert_id: str
    event: str                   # 'opened' | 'updated' | 'resolved'
    seq: int                     # event number within the episode
    doc: dict                    # the JSON body
    ref_ns: int                  # ts_end of the batch the event is about (CLOCK_MONOTONIC)
    created_ns: int = field(default_factory=time.monotonic_ns)

    def to_json(self) -> str:
        return json.dumps(self.doc, separators=(",", ":"), default=_jsonable)


def _jsonable(o):
    try:
        return float(o)
    except Exception:
        return str(o)


class Sink:
    name = "sink"

    def __init__(self) -> None:
        #: (alert_id, event, ref_ns, sent_ns) of every event that left this sink
        self.sent: deque = deque(maxlen=100_000)
        self.errors = 0

    def emit(self, alert: Alert) -> None:
        raise NotImplementedError

    def _done(self, alert: Alert, sent_ns: int | None = None) -> None:
        self.sent.append((alert.alert_id, alert.event, alert.ref_ns, sent_ns or time.monotonic_ns()))

    def close(self) -> None:
        pass

    def latencies_ms(self, event: str = "opened") -> list[float]:
        return [(s - r) / 1e6 for _a, e, r, s in list(self.sent) if e == event]


class TerminalSink(Sink):
    name = "terminal"

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self._write = write or (lambda s: print(s, file=sys.stderr, flush=True))

    def emit(self, alert: Alert) -> None:
        self._write(format_alert(alert))
        self._done(alert)


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, path) -> None:
        super().__init__()
        self.path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._f = open(self.path, "a", buffering=1 << 16)

    def emit(self, alert: Alert) -> None:
        self._f.write(alert.to_json() + "\n")
        self._f.flush()
        self._done(alert)

    def close(self) -> None:
        try:
            self._f.close()
        except Exception:
            pass


class WebhookSink(Sink):
    """POST each event as JSON to `url`; retries with exponential backoff; never blocks the caller.

    One kept-alive HTTP/1.1 connection (re-opened when the receiver closes it or
    fails). When that connection is idle, `emit` writes the request straight
    into its socket without waiting (MSG_DONTWAIT: the alert leaves at once,
    with no thread hand-off on the alert path) and the sender thread reads the
    answer; otherwise, and for https, the sender thread does the whole POST.
    `rt_priority` runs the sender thread SCHED_FIFO.
    """

    name = "webhook"

    def __init__(self, url: str, timeout_s: float = 2.0, retries: int = 4, backoff_s: float = 0.2,
                 rt_priority: int | None = None) -> None:
        super().__init__()
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PrismError(f"webhook URL must be http(s)://host[:port]/path (got {url!r})")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = self._host if parts.port is None else f"{self._host}:{parts.port}"
        self._head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      "Content-Length: ").encode()
        self._sock: socket.socket | None = None
        self._idle = threading.Lock()   # held while a request is in flight on the connection
        self._order = threading.Lock()  # guards _queued
        self._queued = 0                # "post" events not delivered yet
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.rt_priority = rt_priority
        self.failed = 0
        self.direct = 0                 # events written from emit() itself
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="prism-webhook", daemon=True)
        self._thread.start()

    def _request(self, alert: Alert) -> bytes:
        body = alert.to_json().encode()
        return self._head + str(len(body)).encode() + b"\r\n\r\n" + body

    def emit(self, alert: Alert) -> None:
        sock = self._sock
        if sock is not None and not self._https and self._idle.acquire(blocking=False):
            with self._order:
                if self._queued:   # an earlier event still waits for the thread: keep the order
                    self._idle.release()
                    self._queued += 1
                    self._q.put(("post", alert, None, 0, 0))
                    return
            req = self._request(alert)
            try:
                n = sock.send(req, socket.MSG_DONTWAIT)
            except OSError:
                n = 0
            sent_ns = time.monotonic_ns()
            self.direct += n == len(req)
            self._q.put(("answer", alert, req, n, sent_ns))   # the thread finishes it and releases _idle
            return
        with self._order:
            self._queued += 1
        self._q.put(("post", alert, None, 0, 0))

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._https:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
        return sock

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None

    def _answer(self) -> None:
        """Read the answer to the request in flight; raise if it is not a success."""
        resp = http.client.HTTPResponse(self._sock)
        resp.begin()
        resp.read()
        if resp.will_close:
            self._drop()
        if resp.status >= 300:
            raise OSError(f"webhook answered HTTP {resp.status}")

    def _post(self, req: bytes) -> int:
        """Send `req` on the connection (opening it if needed) and read the answer; returns when it left."""
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(req)
            sent_ns = time.monotonic_ns()
            self._answer()
        except Exception:
            self._drop()
            raise
        return sent_ns

    def _deliver(self, alert: Alert, req: bytes | None, n_sent: int, sent_ns: int) -> None:
        """Finish one event: the rest of a direct write and its answer, or a whole POST, with retries."""
        req = req or self._request(alert)
        try:
            if n_sent:  # emit() wrote (part of) it already: finish that write, read the answer
                if n_sent < len(req):
                    self._sock.sendall(req[n_sent:])
                    sent_ns = time.monotonic_ns()
                self._answer()
                self._done(alert, sent_ns)
                return
        except Exception:
            self.errors += 1
            self._drop()
        for attempt in range(self.retries + 1):
            try:
                # "left the sink": the accepted request's bytes were written to the socket
                self._done(alert, self._post(req))
                return
            except (OSError, http.client.HTTPException, ValueError):
                self.errors += 1
                if attempt == self.retries:
                    self.failed += 1
                    return
                time.sleep(self.backoff_s * (2 ** attempt))

    def _run(self) -> None:
        if self.rt_priority:
            try:
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(self.rt_priority))
            except OSError:
                pass  # normal scheduling: still correct, only slower under load
        try:  # connect ahead of the first alert (a receiver that is not up yet is retried per event)
            self._sock = self._connect()
        except OSError:
            self._sock = None
        while True:
            item = self._q.get()
            if item is None:
                break
            kind, alert, req, n_sent, sent_ns = item
            if kind == "post":
                self._idle.acquire()
            try:
                self._deliver(alert, req, n_sent, sent_ns)
            finally:
                if kind == "post":
                    with self._order:
                        self._queued -= 1
                self._idle.release()
        self._drop()

    def close(self, timeout: float = 5.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)


def format_alert(alert: Alert) -> str:
    d = alert.doc
    head = {"opened": "ANOMALY", "updated": "anomaly", "resolved": "resolved"}[alert.event]
    line = (f"[watch] {head} {alert.alert_id}: batch latency {d['observed_ms']:.1f} ms vs expected "
            f"{d['expected_ms']:.1f} ms (x{d['slowdown']:.2f}, max x{d['max_ratio']:.1f}), "
            f"{d['batches']['flagged']} batches, {d['requests']['affected']} requests")
    slo = d.get("slo") or {}
    if slo.get("ttft_violations") or slo.get("tpot_violations"):
        line += f", SLO misses TTFT {slo.get('ttft_violations', 0)} TPOT {slo.get('tpot_violations', 0)}"
    if alert.event == "resolved":
        line += f", lasted {d['duration_ms']:.0f} ms"
    causes = d.get("causes") or []
    if causes:
        line += "; causes: " + ", ".join(f"{c['cause']} ({c.get('evidence', '')})" for c in causes[:3])
    return line


class AlertManager:
    """Turns detector verdicts into episode events and hands them to the sinks.

    `on_verdict` is called on the detector thread; synchronous sinks (terminal,
    JSON lines, Prometheus) are written there, the webhook has its own thread,
    cause analysis runs on an enrichment thread and comes back as an update.
    """

    def __init__(self, sinks: list[Sink], pid: int, slo_ttft_ms: float | None = None,
                 slo_tpot_ms: float | None = None, update_every_s: float = 1.0,
                 causes: Callable[[dict], list[dict]] | None = None, metrics=None,
                 resolve_after_s: float = 0.5, min_excess_ms: float = 2.0, min_slowdown: float = 0.0) -> None:
        self.sinks = sinks
        self.pid = pid
        self.slo_ttft_ms = slo_ttft_ms
        self.slo_tpot_ms = slo_tpot_ms
        self.update_every_s = update_every_s
        self.resolve_after_s = resolve_after_s
        self.min_excess_ms = min_excess_ms
        self.min_slowdown = min_slowdown
        self._pending = None      # a detector anomaly that has not yet cost min_excess_ms (or reached min_slowdown)
        self.suppressed = 0       # detector anomalies that closed below them (no alert)
        self.causes_fn = causes
        self.metrics = metrics
        self.episodes: list[dict] = []        # every episode's latest document (bounded below)
        self.events: deque = deque(maxlen=1000)
        self._open: dict | None = None
        self._last_update = 0.0
        self._seq = 0
        self._lock = threading.RLock()
        self._enrich_q: queue.SimpleQueue = queue.SimpleQueue()
        self._resolving: list[dict] = []      # episodes over, waiting for their final causes
        self.causes_cpu_ns: list[tuple[str, int]] = []   # (kind, CPU time of the thread) per cause analysis
        self._enricher = threading.Thread(target=self._enrich_loop, name="prism-causes", daemon=True)
        self._enricher.start()
        self.recent_requests: deque = deque(maxlen=4096)   # dicts from the http pack (ts_arrival, ts_end, ttft_ns, ...)

    @property
    def active(self) -> dict | None:
        return self._open

    # -- detector thread -------------------------------------------------------------
    def on_verdict(self, v, batch: dict, ring: deque) -> None:
        """`v`: the detector's Verdict for `batch`; `ring`: recent batches (for the affected slots).

        The detector's anomalies that follow one another within `resolve_after_s`
        are one episode (one alert): its close only arms the resolve timer.
        """
        with self._lock:
            st = self._open
            if v.alarm is not None:
                if st is not None and st["closing_at"] is not None:
                    st["an"], st["closing_at"] = v.alarm, None       # same episode, continues
                    self._add_mask(st, v.alarm, ring)
                    self._emit_locked("updated", batch["ts_end"])
                    self._enrich(st, "grow")     # (it may have another cause than the start)
                else:
                    self._pending = v.alarm
            an = self._pending
            if an is not None and self._open is None:
                # alert policy: an anomaly opens an alert once it has cost `min_excess_ms` and its batches
                # together ran at least `min_slowdown` slower than expected (checked at every flagged batch,
                # so the alert leaves at the batch that crosses both). The detector's persistence rule
                # fires on 3 of 4 batches beyond its enter limit and flags back over the batches above
                # its lower stay limit: on its own it alerted on a 6-9% drift for 150 ms.
                if (an.sum_obs - an.sum_exp) / 1e6 >= self.min_excess_ms and \
                        an.sum_obs >= (1.0 + self.min_slowdown) * an.sum_exp:
                    self._pending = None
                    self._opened(an, batch, ring)
                elif v.closed is an:
                    self._pending = None
                    self.suppressed += 1
            elif st is not None and v.flagged:
                st["seq_mask"] |= int(batch.get("seq_mask") or 0)
                if time.monotonic() - self._last_update >= self.update_every_s:
                    self._emit_locked("updated", batch["ts_end"])
            if v.closed is not None and self._open is not None and self._open["an"] is v.closed:
                self._open["closed"].append(v.closed)
                self._open["closing_at"] = time.monotonic()
        self.tick()

    def tick(self) -> None:
        """Resolve an episode whose last anomaly closed `resolve_after_s` ago (any thread)."""
        with self._lock:
            st = self._open
            if st is not None and st["closing_at"] is not None and \
                    time.monotonic() - st["closing_at"] >= self.resolve_after_s:
                self._open = None
                if self.causes_fn is not None and self._enricher.is_alive():
                    self._resolving.append(st)   # resolved by the enrichment thread, with the causes of all of it
                    self._enrich(st, "final")
                else:
                    self._emit_locked("resolved", time.monotonic_ns(), st)

    def close_now(self) -> None:
        with self._lock:
            if self._open is not None:
                self._emit_locked("resolved", time.monotonic_ns())
                self._open = None

    def _enrich(self, st: dict, kind: str) -> None:
        """Queue a cause analysis of episode st: 'open', 'grow' (it went on after a pause) or
        'final' (then resolve it). One 'grow' at a time: a later one covers more anyway."""
        if self.causes_fn is None or (kind == "grow" and st.get("growing")):
            return
        if kind == "grow":
            st["growing"] = True
        self._enrich_q.put((kind, st))

    @staticmethod
    def _add_mask(st: dict, an, ring: deque) -> None:
        for b in ring:
            if b["ts_start"] >= an.start_ts:
                st["seq_mask"] |= int(b.get("seq_mask") or 0)

    def _opened(self, an, batch: dict, ring: deque) -> None:
        self._seq += 1
        st = {"an": an, "closed": [], "closing_at": None, "id": f"prism-{self.pid}-{self._seq}", "n": 0,
              "seq_mask": 0, "first_batch_id": None, "alarm_batch_id": batch.get("batch_id"), "causes": None,
              "start_ns": an.start_ts}
        self._add_mask(st, an, ring)
        for b in ring:
            if b["ts_start"] >= an.start_ts:
                st["first_batch_id"] = b.get("batch_id")
                break
        self._open = st
        st["path_ms"] = {"to_observer": (batch.get("t_obs", 0) - batch["ts_end"]) / 1e6,
                         "to_detector": (batch.get("t_deq", 0) - batch.get("t_obs", 0)) / 1e6,
                         "to_alert": (time.monotonic_ns() - batch.get("t_deq", 0)) / 1e6}
        self._emit_locked("opened", batch["ts_end"])
        self._enrich(st, "open")

    @staticmethod
    def _parts(st: dict) -> list:
        """The detector anomalies of episode st."""
        return list(st["closed"]) + ([] if st["an"] in st["closed"] else [st["an"]])

    def _doc(self, event: str, st: dict) -> dict:
        parts = self._parts(st)
        sum_obs = sum(a.sum_obs for a in parts)
        sum_exp = sum(a.sum_exp for a in parts)
        n_flagged = sum(a.n_flagged for a in parts)
        start = st["start_ns"]
        end = max(max(a.end_ts, a.alarm_ts) for a in parts)
        n = max(n_flagged, 1)
        an = st["an"]
        reqs = self._requests(start, end, st["seq_mask"])
        return {
            "alert_id": st["id"], "event": event, "status": "resolved" if event == "resolved" else "firing",
            "seq": st["n"], "target_pid": self.pid, "trigger": parts[0].trigger,
            "start_ns": start, "end_ns": end, "alarm_ns": parts[0].alarm_ts, "duration_ms": (end - start) / 1e6,
            "observed_ms": sum_obs / n / 1e6, "expected_ms": sum_exp / n / 1e6,
            "slowdown": sum_obs / sum_exp if sum_exp > 0 else float("nan"),
            "max_ratio": max(a.max_ratio for a in parts), "confidence": max(a.confidence for a in parts),
            "excess_ms": (sum_obs - sum_exp) / 1e6, "detector_anomalies": len(parts),
            "batches": {"flagged": n_flagged, "first_batch_id": st["first_batch_id"],
                        "alarm_batch_id": st["alarm_batch_id"], "first_idx": parts[0].start_idx,
                        "last_idx": an.end_idx},
            "requests": reqs,
            "slo": self._slo(reqs, (sum_obs - sum_exp) / 1e6),
            "causes": st.get("causes") or [],
            "alert_path_ms": st.get("path_ms"),   # alarm batch's ts_end -> recorder callback -> detector -> alert
            "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _requests(self, start: int, end: int, seq_mask: int) -> dict:
        done = [r for r in list(self.recent_requests)
                if r.get("ts_end", 0) >= start and r.get("ts_arrival", 0) <= end]
        in_flight_slots = bin(seq_mask).count("1")
        return {"affected": max(len(done), in_flight_slots), "completed": len(done),
                "slots": [i for i in range(64) if seq_mask >> i & 1],
                "req_ids": [r.get("req_id") for r in done[:50]]}

    def _slo(self, reqs: dict, excess_ms: float) -> dict:
        out = {"slo_ttft_ms": self.slo_ttft_ms, "slo_tpot_ms": self.slo_tpot_ms,
               # a sequence in every flagged batch waits this much longer than expected
               "added_latency_ms_max": excess_ms}
        ids = set(reqs["req_ids"])
        rs = [r for r in list(self.recent_requests) if r.get("req_id") in ids]
        if self.slo_ttft_ms is not None:
            out["ttft_violations"] = sum(1 for r in rs if (r.get("ttft_ns") or 0) / 1e6 > self.slo_ttft_ms)
        if self.slo_tpot_ms is not None:
            out["tpot_violations"] = sum(1 for r in rs if (r.get("tpot_ns") or 0) / 1e6 > self.slo_tpot_ms)
        return out

    def _emit_locked(self, event: str, ref_ns: int, st: dict | None = None) -> None:
        st = self._open if st is None else st
        if st is None:
            return
        doc = self._doc(event, st)
        st["n"] += 1
        self._last_update = time.monotonic()
        alert = Alert(st["id"], event, doc["seq"], doc, ref_ns)
        for s in self.sinks:
            try:
                s.emit(alert)
            except Exception as exc:  # a sink's failure must not stop detection
                s.errors += 1
                print(f"[watch] alert sink {s.name} failed: {exc}", file=sys.stderr)
        if self.metrics is not None:
            # (an episode resolved by close_now is still self._open while its resolution is sent)
            firing = self._open is not None and not (event == "resolved" and st is self._open)
            self.metrics.on_alert(alert, firing=firing)
        self.events.append(alert)
        if event == "opened":
            self.episodes.append(doc)
            del self.episodes[:-1000]
        else:
            for i in range(len(self.episodes) - 1, -1, -1):
                if self.episodes[i]["alert_id"] == st["id"]:
                    self.episodes[i] = doc
                    break

    # -- enrichment thread --------------------------------------------------------------
    def _enrich_loop(self) -> None:
        while True:
            item = self._enrich_q.get()
            if item is None:
                return
            kind, st = item
            end_ns, excess_ns = self._episode_now(st)
            ctx = {"pid": self.pid, "start_ns": st["start_ns"], "end_ns": end_ns, "excess_ns": excess_ns,
                   "current": lambda st=st: self._episode_now(st),
                   "kind": kind, "kept": st.get("kept") or []}
            cpu0 = time.thread_time_ns()
            try:
                causes = self.causes_fn(ctx)
            except Exception as exc:   # (the earlier causes stay, if any)
                causes = [] if st.get("causes") else \
                    [{"cause": "unknown", "evidence": f"cause analysis failed: {exc}", "score": 0.0}]
            self.causes_cpu_ns.append((kind, time.thread_time_ns() - cpu0))
            with self._lock:
                if causes or not st.get("causes"):
                    st["causes"] = causes
                    st["kept"] = [c for c in causes if c.get("source") in ("proc", "prismkit.rootcause")] or \
                        st.get("kept")
                if kind == "grow":
                    st["growing"] = False
                if kind == "final":
                    self._emit_locked("resolved", time.monotonic_ns(), st)
                    self._resolving.remove(st)
                elif st is self._open:
                    self._emit_locked("updated", time.monotonic_ns())

    def _episode_now(self, st: dict) -> tuple[int, float]:
        """(end_ns, excess_ns) of episode st as it stands now."""
        with self._lock:
            parts = self._parts(st)
            return (max(max(a.end_ts, a.alarm_ts) for a in parts),
                    float(sum(a.sum_obs - a.sum_exp for a in parts)))

    def close(self) -> None:
        self._enrich_q.put(None)
        self._enricher.join(5.0)
        with self._lock:
            for st in self._resolving:     # the enrichment thread did not get to them
                self._emit_locked("resolved", time.monotonic_ns(), st)
            self._resolving.clear()
        close_causes = getattr(self.causes_fn, "close", None)
        if close_causes is not None:
            close_causes()          # e.g. the root-cause worker process
        for s in self.sinks:
            s.close()

