"""Online: watch a live server, run the detector on every batch as it completes, alert in milliseconds.

    from prismkit.online import Watcher, WatchConfig
    w = Watcher(WatchConfig(pid=1234, output="out/watch.pftrace", alerts_jsonl="out/alerts.jsonl"))
    w.start(); ...; summary = w.stop()

The detector is prismkit.detect's OnlineDetector (the offline detector fed one
batch at a time); this package adds the live plumbing: a batch observer that
only enqueues, a detector thread, alert episodes and their sinks (terminal,
JSON lines, webhook, Prometheus), warm-up learning and --follow-port.
"""
from __future__ import annotations

from .alerts import Alert, AlertManager, JsonlSink, TerminalSink, WebhookSink
from .watch import WatchConfig, Watcher

__all__ = ["Alert", "AlertManager", "JsonlSink", "TerminalSink", "WatchConfig", "Watcher", "WebhookSink"]
