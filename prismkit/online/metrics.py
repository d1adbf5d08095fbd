"""Prometheus exposition of a watch session (its own registry; prometheus_client's HTTP server).

Metric names (all prefixed ``prism_``): batch latency histogram (seconds, by
phase), request TTFT/TPOT/E2E histograms, expected and observed latency of the
last batch, anomaly state (1 while an episode is open), episode and alert
event counters, batches/tokens/requests counters and lost events per ring
buffer (read from the recorder's BPF maps at scrape time).

Batches are only queued on the recorder's thread (one deque append) and folded into the
metrics by `flush()`: at each scrape, and twice a second from the watch's main thread.
prometheus_client's per-batch updates (a labelled histogram, counters, gauges, each with
its lock) cost the recorder's thread ~15 us a batch with a cold cache.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

BATCH_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
REQ_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WatchMetrics:
    def __init__(self, pid: int, lost_events: Callable[[], dict[str, int]] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._pending: deque = deque()      # (dur s, phase, n_tokens, expected ns) of batches not yet folded
        self._flush_lock = threading.Lock()
        r.register(_Flusher(self))          # first (collectors are collected in registration order):
                                            # every scrape sees every batch queued before it
        self.batch_latency = Histogram("prism_batch_latency_seconds", "Observed batch (llama_decode) latency",
                                       ["phase"], buckets=BATCH_BUCKETS, registry=r)
        self.expected = Gauge("prism_batch_expected_latency_seconds",
                              "Expected latency of the last batch (workload model)", registry=r)
        self.observed = Gauge("prism_batch_observed_latency_seconds", "Observed latency of the last batch",
                              registry=r)
        self.ratio = Gauge("prism_batch_latency_ratio", "Observed / expected latency of the last batch", registry=r)
        self.anomaly = Gauge("prism_anomaly_active", "1 while an anomaly episode is open", registry=r)
        self.episodes = Counter("prism_anomaly_episodes", "Anomaly episodes opened", registry=r)
        self.alert_events = Counter("prism_alert_events", "Alert events emitted", ["event"], registry=r)
        self.batches = Counter("prism_batches", "Batches seen", registry=r)
        self.tokens = Counter("prism_tokens", "Tokens processed in batches", registry=r)
        self.requests = Counter("prism_requests", "Requests completed (seen on the server's socket)", registry=r)
        self.ttft = Histogram("prism_request_ttft_seconds", "Time to first token", buckets=REQ_BUCKETS, registry=r)
        self.tpot = Histogram("prism_request_tpot_seconds", "Time per output token", buckets=BATCH_BUCKETS,
                              registry=r)
        self.e2e = Histogram("prism_request_e2e_seconds", "Request latency", buckets=REQ_BUCKETS, registry=r)
        self.warmup = Gauge("prism_watch_warming_up", "1 while the baseline is being learned", registry=r)
        self.target_pid = Gauge("prism_target_pid", "PID being watched", registry=r)
        self.target_pid.set(pid)
        self._lost = lost_events
        if lost_events is not None:
            r.register(_LostCollector(lost_events))
        self._server = None
        self.port: int | None = None

    def on_batch(self, batch: dict, expected_ns: float | None) -> None:
        self._pending.append(((batch["ts_end"] - batch["ts_start"]) / 1e9, batch.get("phase", "all"),
                              batch.get("n_tokens") or 0, expected_ns))

    def flush(self) -> None:
        """Fold the queued batches into the metrics, in order (any thread)."""
        pending = self._pending
        if not pending:
            return
        with self._flush_lock:
            n = tokens = 0
            last = None
            while pending:
                last = pending.popleft()
                self.batch_latency.labels(last[1]).observe(last[0])
                n += 1
                tokens += last[2]
            if last is None:   # (another thread folded them meanwhile)
                return
            self.batches.inc(n)
            self.tokens.inc(tokens)
            dur, _phase, _n, expected_ns = last
            self.observed.set(dur)
            if expected_ns:
                self.expected.set(expected_ns / 1e9)
                self.ratio.set(dur * 1e9 / expected_ns)

    def on_request(self, req: dict) -> None:
        self.requests.inc()
        for h, k in ((self.ttft, "ttft_ns"), (self.tpot, "tpot_ns"), (self.e2e, "e2e_ns")):
            v = req.get(k)
            if v:
                h.observe(v / 1e9)

    def on_alert(self, alert, firing: bool) -> None:
        """firing: an episode is open after this event (one may open before the last one's
        resolution leaves: that waits for its final causes)."""
        self.alert_events.labels(alert.event).inc()
        if alert.event == "opened":
            self.episodes.inc()
        self.anomaly.set(1 if firing else 0)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        from prometheus_client import start_http_server

        res = start_http_server(port, addr=addr, registry=self.registry)
        if isinstance(res, tuple):
            self._server = res[0]
            self.port = self._server.server_address[1]
        else:
            self.port = port
        return self.port

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def close(self) -> None:
        if self._server is not None:
            try:
                self._server.shutdown()
            except Exception:
                pass


class _Flusher:
    """Not a metric: folds the queued batches in before the registry collects the others."""

    def __init__(self, metrics: WatchMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        self.metrics.flush()
        return iter(())


class _LostCollector:
    def __init__(self, fn) -> None:
        self.fn = fn

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        c = CounterMetricFamily("prism_lost_events", "Events lost in the recorder's ring buffers", labels=["buffer"])
        try:
            for buf, n in self.fn().items():
                c.add_metric([buf], n)
        except Exception:
            pass
        yield c
