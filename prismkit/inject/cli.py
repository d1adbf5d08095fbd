"""`prism inject`: the command line of the anomaly simulator (registered in prismkit/cli.py)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ..errors import PrismError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", help="what to inject (see --list)")
    p.add_argument("--pid", type=int, default=None,
                   help="server PID (default: the server `prism target start` started)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds the window lasts (default 10)")
    p.add_argument("--labels", type=Path, default=None,
                   help="append ground-truth labels (JSON lines) to this file")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a scenario parameter (repeatable); see --list")
    p.add_argument("--params", default=None, metavar="JSON", help="scenario parameters as a JSON object")
    p.add_argument("--schedule", type=Path, default=None, help="run the windows of this JSON schedule instead")
    p.add_argument("--url", default=None, help="server URL for workload scenarios (default: found from the PID)")
    p.add_argument("--list", action="store_true", help="list the scenarios and their parameters")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def list_scenarios() -> str:
    from . import scenarios

    lines = []
    for name, cls in scenarios().items():
        lines.append(f"{name} ({cls.kind}): {cls.summary}")
        for key, spec in cls.PARAMS.items():
            lines.append(f"    {key:<16} default {spec.default!r:<20} {spec.help}")
    return "\n".join(lines)


def _params(args: argparse.Namespace) -> dict:
    params: dict = {}
    if args.params:
        try:
            params = json.loads(args.params)
        except ValueError as err:
            raise PrismError(f"--params is not valid JSON: {err}") from None
        if not isinstance(params, dict):
            raise PrismError("--params must be a JSON object")
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PrismError(f"bad parameter {item!r}: use -p KEY=VALUE")
        params[key.strip()] = value.strip()
    return params


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(list_scenarios())
        return 0
    if args.schedule is None and not args.scenario:
        raise PrismError("name a scenario (see `prism inject --list`) or pass --schedule FILE")
    if args.schedule is not None and args.scenario:
        raise PrismError("give either a scenario or --schedule, not both")
    if args.duration <= 0:
        raise PrismError(f"--duration must be > 0 (got {args.duration:g})")

    from . import make_scenario
    from .base import Stop, Target, close_guard, run_window
    from .labels import LabelWriter
    from .schedule import Window, load_schedule, run_schedule

    from ..target.server import default_pid

    pid = default_pid(args.pid)
    target = Target.from_pid(pid, url=args.url)
    if args.schedule is not None:
        if args.param or args.params:
            raise PrismError("-p/--params apply to a single scenario; put params in the schedule's windows")
        windows = load_schedule(args.schedule, target)
    else:
        windows = [Window(make_scenario(args.scenario, target, _params(args)), 0.0, args.duration)]
    labels = LabelWriter(args.labels)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[inject] {msg}", flush=True)

    stop = Stop()
    old = {}
    for sig, reason in ((signal.SIGINT, "sigint"), (signal.SIGTERM, "sigterm"), (signal.SIGHUP, "sighup")):
        old[sig] = signal.signal(sig, lambda *_a, r=reason: stop.set(r))
    try:
        log(f"target PID {target.pid} ({target.comm}), CPUs {','.join(map(str, target.cpus))}"
            + (f"; labels: {args.labels}" if args.labels else ""))
        if args.schedule is not None:
            done = run_schedule(windows, labels, stop, log)
        else:
            try:
                label = run_window(windows[0].scenario, windows[0].duration_s, stop, log)
            except BaseException as exc:
                if getattr(exc, "label", None) is not None:
                    labels.write(exc.label)  # type: ignore[attr-defined]
                raise
            done = [label] if label else []
            for lab in done:
                labels.write(lab)
    finally:
        close_guard()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    log(f"{len(done)} window(s) labelled" + (f" in {args.labels}" if args.labels else ""))
    if stop.is_set():
        print(f"prism inject: interrupted ({stop.reason}); everything was undone", file=sys.stderr)
        return 143 if stop.reason == "sigterm" else 130
    return 0
