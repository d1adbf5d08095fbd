"""Ground-truth labels: one JSON line per injected window (DESIGN.md).

    {"start_ns": int, "end_ns": int, "kind": "fault" | "workload",
     "scenario": "cpu_contention", "params": {...}}

Times are CLOCK_MONOTONIC nanoseconds (time.monotonic_ns(), the clock of the
trace's batches). Writers append, so one labels file can collect the windows
of several `prism inject` runs during one recording.

    df = read_labels("out/labels.jsonl")        # one row per window
    pauses = expand_pauses(df)                  # stall episodes -> one row per pause
    batches["label"] = label_batches(batches, df)   # which window each batch overlaps
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PrismError

COLUMNS = ["start_ns", "end_ns", "kind", "scenario", "params"]
KINDS = ("fault", "workload")


def validate_label(label: dict) -> None:
    """Raise PrismError unless `label` follows the DESIGN.md format."""
    missing = [k for k in COLUMNS if k not in label]
    if missing:
        raise PrismError(f"label lacks {', '.join(missing)}: {label}")
    if not isinstance(label["start_ns"], int) or not isinstance(label["end_ns"], int):
        raise PrismError(f"label times must be integers (ns): {label}")
    if label["end_ns"] < label["start_ns"]:
        raise PrismError(f"label ends before it starts: {label}")
    if label["kind"] not in KINDS:
        raise PrismError(f"label kind must be one of {KINDS}: {label['kind']!r}")
    if not isinstance(label["scenario"], str) or not isinstance(label["params"], dict):
        raise PrismError(f"label scenario must be a string and params an object: {label}")


class LabelWriter:
    """Appends labels to a JSONL file, one flushed and fsync'd line each."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path else None
        self.written: list[dict] = []
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a"):
                    pass
            except OSError as err:
                raise PrismError(f"cannot write labels to {self.path}: {err.strerror}") from None

    def write(self, label: dict) -> None:
        validate_label(label)
        self.written.append(label)
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(label, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """The labels file as a DataFrame: start_ns, end_ns (int64), kind, scenario, params (dict), dur_ns.

    Sorted by start_ns. Raises PrismError on a missing file or a malformed line.
    """
    rows = []
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise PrismError(f"cannot read labels {path}: {err.strerror}") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            label = json.loads(line)
        except ValueError:
            raise PrismError(f"{path}:{lineno}: not JSON") from None
        try:
            validate_label(label)
        except PrismError as err:
            raise PrismError(f"{path}:{lineno}: {err}") from None
        rows.append({k: label[k] for k in COLUMNS})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["start_ns"] = df["start_ns"].astype("int64")
    df["end_ns"] = df["end_ns"].astype("int64")
    df["dur_ns"] = df["end_ns"] - df["start_ns"]
    return df.sort_values("start_ns", kind="stable").reset_index(drop=True)


def expand_pauses(labels: pd.DataFrame) -> pd.DataFrame:
    """Replace each stall episode by one row per pause (start_ns/end_ns of that pause).

    Other labels pass through unchanged. The pause rows keep the episode's
    params and get `episode` (the index of the episode row).
    """
    rows = []
    for idx, row in labels.iterrows():
        pauses = row["params"].get("pauses") if row["scenario"] == "stall" else None
        if not pauses:
            rows.append({**row.to_dict(), "episode": idx})
            continue
        for a, b in pauses:
            rows.append({**row.to_dict(), "start_ns": int(a), "end_ns": int(b), "dur_ns": int(b) - int(a),
                         "episode": idx})
    out = pd.DataFrame(rows, columns=[*labels.columns, "episode"])
    return out.sort_values("start_ns", kind="stable").reset_index(drop=True)


def label_batches(batches: pd.DataFrame, labels: pd.DataFrame, pauses: bool = True) -> pd.Series:
    """For each batch (ts, dur), the index into `labels` of the window it overlaps (-1: none).

    With `pauses` (default) a batch counts as in a stall episode only if it
    overlaps one of the episode's pauses. A batch overlapping several windows
    gets the first (earliest) one.
    """
    lab = expand_pauses(labels) if pauses else labels.assign(episode=labels.index)
    ts = batches["ts"].to_numpy(dtype=np.int64)
    te = ts + batches["dur"].to_numpy(dtype=np.int64)
    out = np.full(len(batches), -1, dtype=np.int64)
    for s, e, ep in zip(lab["start_ns"].to_numpy(), lab["end_ns"].to_numpy(), lab["episode"].to_numpy()):
        hit = (ts <= e) & (te >= s) & (out < 0)
        out[hit] = ep
    return pd.Series(out, index=batches.index, name="label")
