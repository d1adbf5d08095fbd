"""Scoring detectors against labels, and the two baselines.

Ground truth per batch (``batch_truth``):
- a batch that lies inside a fault label window is anomalous;
- a batch that straddles a fault window's start or end (runs across the edge)
  is *ignored*: it is partly faulty, so neither flagging it nor missing it is
  scored;
- for a label that lists its pauses (``params.pauses``: [[start_ns, end_ns],
  ...], stall faults), only batches that were in flight across a pause are
  anomalous, and the other batches inside the window are normal. "In flight
  across" means the batch spans the pause's end (the SIGCONT): the pause's
  start is stamped just before the SIGSTOP is sent and the stop can take
  effect later (tens of ms on a loaded machine), so a batch that ended inside
  the labelled pause was not stopped. A batch the pause slowed by less than
  20% of the rest of its duration (a long prefill, a short pause) is ignored;
- batches under workload labels, or under no label, are normal.

Batch level: precision, recall, F1 of the per-batch flags over the scored
batches. Window level: a fault label is detected when an anomaly overlaps it
(its pauses for a stall); an anomaly is a true alarm when it overlaps a fault
label, a false alarm otherwise. Lag of a detected label: batches from its
first anomalous batch to the batch at which the first overlapping anomaly was
raised (its alarm), and the time from the later of the label start and that
first batch's start to the end of the alarm batch (when it can be known).
The first anomalous batch of a window label is the first that overlaps it
(a batch running across the start counts: the fault reached it).

Without labels or a model, ``same_workload_ratio`` says whether some batches
really ran slower: their durations over those of batches of the same workload
elsewhere (the tests' yardstick for alarms outside any fault).

Baselines, on the same batches:
- ``rolling``: a batch is flagged when its raw latency exceeds the rolling
  median of the previous `window` batches by more than 15%; consecutive flags
  form anomalies (alarm at the first);
- ``ruptures-raw``: PELT change points on raw log latency; a segment whose
  median latency is more than 15% above the median of the whole trace is
  anomalous (all its batches flagged; offline, so its 'lag' is hindsight).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .detector import DetectorConfig, change_points, detect, prepare_batches
from .model import WorkloadModel


def batch_truth(batches: pd.DataFrame, labels: pd.DataFrame,
                pause_min_slowdown: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anomalous, ignored, label index or -1) per batch, for fault labels (see module doc)."""
    ts = batches["ts"].to_numpy(np.int64)
    end = ts + batches["dur"].to_numpy(np.int64)
    truth = np.zeros(len(ts), dtype=bool)
    ignore = np.zeros(len(ts), dtype=bool)
    which = np.full(len(ts), -1)
    for li, lab in labels.reset_index(drop=True).iterrows():
        if lab["kind"] != "fault":
            continue
        s, e = int(lab["start_ns"]), int(lab["end_ns"])
        pauses = (lab["params"] or {}).get("pauses") if isinstance(lab["params"], dict) else None
        if pauses:
            for ps, pe in pauses:
                # A stopped thread resumes only at the SIGCONT (pe), so a stalled batch spans pe; a batch
                # that ended inside [ps, pe] ran while the label says "paused" (the stop took effect
                # later than its timestamp) and is normal.
                spans = (ts < pe) & (end > pe)
                ov = pe - np.maximum(ts, ps)
                # slowed by >= pause_min_slowdown (the pause is at least that share of the rest of the batch)
                big = spans & (ov >= pause_min_slowdown * np.maximum(end - ts - ov, 1))
                truth |= big
                which[big] = li
                ignore |= spans & ~big
            continue
        inside = (ts >= s) & (end <= e)
        straddle = ((ts < s) & (end > s)) | ((ts < e) & (end > e))
        truth |= inside
        which[inside] = li
        ignore |= straddle
    ignore &= ~truth
    return truth, ignore, which


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    r = tp / (tp + fn) if tp + fn else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def _label_spans(lab) -> list[tuple[int, int]]:
    pauses = (lab["params"] or {}).get("pauses") if isinstance(lab["params"], dict) else None
    return [(int(a), int(b)) for a, b in pauses] if pauses else [(int(lab["start_ns"]), int(lab["end_ns"]))]


def score(batches: pd.DataFrame, flags: np.ndarray, anomalies: pd.DataFrame, labels: pd.DataFrame,
          min_slowdown: float | None = None, observed_ratio: np.ndarray | None = None) -> dict:
    """Batch- and window-level scores, lags, and false alarms under workload labels.

    `anomalies` needs start, end (ns) and alarm_idx. With `min_slowdown` (and
    `observed_ratio`, observed/expected per batch), fault labels whose median
    ratio over their anomalous batches is below it are left out (their batches
    ignored), to score only faults that slow batches by that much.
    """
    labels = labels.reset_index(drop=True)
    truth, ignore, which = batch_truth(batches, labels)
    flags = np.asarray(flags, dtype=bool)
    faults = labels[labels["kind"] == "fault"]
    keep = list(faults.index)
    label_slowdown = {}
    if observed_ratio is not None:
        for li in faults.index:
            m = which == li
            label_slowdown[li] = float(np.median(observed_ratio[m])) if m.any() else float("nan")
    if min_slowdown is not None and observed_ratio is not None:
        weak = [li for li in keep if not label_slowdown[li] >= min_slowdown]
        for li in weak:
            lab = faults.loc[li]
            ts = batches["ts"].to_numpy(np.int64)
            end = ts + batches["dur"].to_numpy(np.int64)
            ignore |= (ts < int(lab["end_ns"])) & (end > int(lab["start_ns"]))
        keep = [li for li in keep if li not in weak]
        truth &= ~ignore
    scored = ~ignore
    tp = int((flags & truth & scored).sum())
    fp = int((flags & ~truth & scored).sum())
    fn = int((~flags & truth & scored).sum())
    bp, br, bf = _prf(tp, fp, fn)
    # window level
    a_start = anomalies["start"].to_numpy(np.int64) if len(anomalies) else np.empty(0, np.int64)
    a_end = anomalies["end"].to_numpy(np.int64) if len(anomalies) else np.empty(0, np.int64)
    a_alarm = anomalies["alarm_idx"].to_numpy(np.int64) if len(anomalies) else np.empty(0, np.int64)
    ts = batches["ts"].to_numpy(np.int64)
    end = ts + batches["dur"].to_numpy(np.int64)
    a_true = np.zeros(len(a_start), dtype=bool)
    a_ignored = np.zeros(len(a_start), dtype=bool)
    detected, lags_b, lags_ms, per_label = 0, [], [], []
    for li, lab in labels.iterrows():
        spans = _label_spans(lab)
        ov = np.zeros(len(a_start), dtype=bool)
        for s, e in spans:
            ov |= (a_start < e) & (a_end > s)
        if lab["kind"] != "fault":
            continue
        if li not in keep:
            a_ignored |= ov
            continue
        a_true |= ov
        if len(spans) == 1 and not (isinstance(lab["params"], dict) and lab["params"].get("pauses")):
            s0, e0 = spans[0]
            first = np.nonzero((ts < e0) & (end > s0) & (truth | ignore))[0]   # straddling batches count
        else:
            first = np.nonzero(truth & (which == li))[0]
        row = {"label": li, "scenario": lab["scenario"], "detected": bool(ov.any()),
               "slowdown": label_slowdown.get(li, np.nan), "lag_batches": np.nan, "lag_ms": np.nan}
        if ov.any() and len(first):
            f0 = int(first[0])
            alarms = a_alarm[ov]
            alarms = alarms[alarms >= f0] if (alarms >= f0).any() else alarms
            al = int(alarms.min())
            row["lag_batches"] = al - f0
            t0 = max(int(lab["start_ns"]), int(ts[f0]))
            row["lag_ms"] = (int(end[al]) - t0) / 1e6
            lags_b.append(row["lag_batches"])
            lags_ms.append(row["lag_ms"])
        detected += int(ov.any())
        per_label.append(row)
    n_faults = len(keep)
    counted = ~a_ignored | a_true
    w_tp_alarms = int(a_true.sum())
    w_fp = int((~a_true & counted).sum())
    wp = w_tp_alarms / (w_tp_alarms + w_fp) if (w_tp_alarms + w_fp) else (1.0 if detected == n_faults else 0.0)
    wr = detected / n_faults if n_faults else 1.0
    wf = 2 * wp * wr / (wp + wr) if wp + wr else 0.0
    # false alarms under workload labels
    wl = labels[labels["kind"] == "workload"]
    wl_alarms, wl_batches = 0, 0
    for _, lab in wl.iterrows():
        s, e = int(lab["start_ns"]), int(lab["end_ns"])
        wl_alarms += int(((a_start < e) & (a_end > s)).sum())
        wl_batches += int((flags & (ts < e) & (end > s) & ~truth).sum())
    return {"batch_precision": bp, "batch_recall": br, "batch_f1": bf, "tp": tp, "fp": fp, "fn": fn,
            "window_precision": wp, "window_recall": wr, "window_f1": wf, "faults": n_faults,
            "faults_detected": detected, "alarms": len(a_start), "false_alarms": w_fp,
            "lag_batches_median": float(np.median(lags_b)) if lags_b else np.nan,
            "lag_ms_median": float(np.median(lags_ms)) if lags_ms else np.nan,
            "workload_label_alarms": wl_alarms, "workload_label_flagged_batches": wl_batches,
            "per_label": per_label}


def same_workload_ratio(batches: pd.DataFrame, peers: pd.DataFrame, tokens_tol: float = 0.0,
                        kv_tol: float = 0.25, min_peers: int = 5) -> tuple[float, int]:
    """How much slower `batches` ran than `peers` of the same workload, with no model involved.

    A batch's peers have its n_seqs and its sequences (seq_mask: which slots a
    batch holds matters, 3-sequence decodes took 15.5 ms on contiguous slots
    and 22 ms on the others in one session), n_tokens within `tokens_tol`
    (0: equal) and kv_tokens within `kv_tol` (+16). Returns the median of
    each batch's duration over its peers' median duration, and how many of
    `batches` had at least `min_peers` peers (NaN, 0 when none had).

    This is the yardstick for an alarm the model cannot judge: a batch that
    ran as fast as batches of the same workload was not slow, whatever the
    model expected; one that ran well slower was (a host-side slowdown the
    guest cannot see is still a slowdown).
    """
    p_tok = peers["n_tokens"].to_numpy(np.int64)
    p_seqs = peers["n_seqs"].to_numpy(np.int64)
    p_mask = peers["seq_mask"].to_numpy(np.int64)
    p_kv = peers["kv_tokens"].to_numpy(np.int64)
    p_dur = peers["dur"].to_numpy(np.float64)
    ratios = []
    for tok, seqs, mask, kv, dur in batches[["n_tokens", "n_seqs", "seq_mask", "kv_tokens", "dur"]].itertuples(
            index=False):
        same = ((np.abs(p_tok - tok) <= tokens_tol * tok) & (p_seqs == seqs) & (p_mask == mask)
                & (np.abs(p_kv - kv) <= kv_tol * kv + 16))
        if same.sum() >= min_peers:
            ratios.append(dur / np.median(p_dur[same]))
    return (float(np.median(ratios)) if ratios else float("nan")), len(ratios)


# -- baselines ----------------------------------------------------------------------------
def _runs_to_anomalies(batches: pd.DataFrame, flags: np.ndarray, alarm_at_start: bool = True) -> pd.DataFrame:
    ts = batches["ts"].to_numpy(np.int64)
    end = ts + batches["dur"].to_numpy(np.int64)
    rows = []
    f = np.asarray(flags, dtype=bool)
    if f.any():
        d = np.diff(np.concatenate([[0], f.astype(int), [0]]))
        starts, stops = np.nonzero(d == 1)[0], np.nonzero(d == -1)[0] - 1
        for a, z in zip(starts, stops):
            rows.append({"start": int(ts[a]), "end": int(end[z]), "start_idx": int(a), "end_idx": int(z),
                         "n_batches": int(z - a + 1), "alarm_idx": int(a)})
    return pd.DataFrame(rows, columns=["start", "end", "start_idx", "end_idx", "n_batches", "alarm_idx"])


def rolling_median_baseline(batches: pd.DataFrame, threshold: float = 0.15,
                            window: int = 64) -> tuple[np.ndarray, pd.DataFrame]:
    """Flag a batch whose latency exceeds the median of the previous `window` batches by `threshold`."""
    dur = batches["dur"].astype("float64")
    med = dur.shift(1).rolling(window, min_periods=min(8, window)).median()
    flags = (dur > (1 + threshold) * med).fillna(False).to_numpy(dtype=bool)
    return flags, _runs_to_anomalies(batches, flags)


def ruptures_raw_baseline(batches: pd.DataFrame, threshold: float = 0.15,
                          penalty: float | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Segments of raw log latency (PELT); segments with median > (1+threshold) x the trace median."""
    x = np.log(batches["dur"].to_numpy(np.float64))
    cps = change_points(x, penalty)
    edges = [0, *cps.tolist(), len(x)]
    ref = np.median(x)
    flags = np.zeros(len(x), dtype=bool)
    for a, z in zip(edges[:-1], edges[1:]):
        if z > a and np.median(x[a:z]) > ref + np.log1p(threshold):
            flags[a:z] = True
    return flags, _runs_to_anomalies(batches, flags)


# -- the evaluation table -----------------------------------------------------------------
METRICS = ["batch_precision", "batch_recall", "batch_f1", "window_precision", "window_recall", "window_f1",
           "lag_batches_median", "lag_ms_median", "false_alarms", "workload_label_alarms",
           "workload_label_flagged_batches", "alarms", "faults", "faults_detected"]


def evaluate_trace(trace_or_batches, labels: pd.DataFrame, model: WorkloadModel | None = None,
                   config: DetectorConfig | None = None, min_slowdown: float | None = None) -> dict:
    """Run the detector and both baselines on one trace; scores of each (see `score`)."""
    b = prepare_batches(trace_or_batches)
    res = detect(b, model, config, change_points=False)
    ratio = res.batches["ratio"].to_numpy()
    out = {"model": score(b, res.flags, res.anomalies, labels, min_slowdown, ratio)}
    f, a = rolling_median_baseline(b)
    out["rolling-median 15%"] = score(b, f, a, labels, min_slowdown, ratio)
    f, a = ruptures_raw_baseline(b)
    out["ruptures raw"] = score(b, f, a, labels, min_slowdown, ratio)
    out["_result"] = res
    return out


def eval_table(scores: dict) -> pd.DataFrame:
    """One row per method with the METRICS columns."""
    rows = {k: {m: v.get(m) for m in METRICS} for k, v in scores.items() if not k.startswith("_")}
    return pd.DataFrame(rows).T[METRICS]


def pooled(per_trace: list[dict]) -> pd.DataFrame:
    """Pool several traces' scores per method: batch counts summed, lags pooled by median of per-label lags."""
    methods = [k for k in per_trace[0] if not k.startswith("_")]
    rows = {}
    for mth in methods:
        ss = [d[mth] for d in per_trace]
        tp, fp, fn = (sum(s[k] for s in ss) for k in ("tp", "fp", "fn"))
        bp, br, bf = _prf(tp, fp, fn)
        det = sum(s["faults_detected"] for s in ss)
        nf = sum(s["faults"] for s in ss)
        al = sum(s["alarms"] for s in ss)
        fa = sum(s["false_alarms"] for s in ss)
        true_alarms = al - fa
        wp = true_alarms / (true_alarms + fa) if (true_alarms + fa) else 1.0
        wr = det / nf if nf else 1.0
        wf = 2 * wp * wr / (wp + wr) if wp + wr else 0.0
        lb = [r["lag_batches"] for s in ss for r in s["per_label"] if r["detected"] and np.isfinite(r["lag_batches"])]
        lm = [r["lag_ms"] for s in ss for r in s["per_label"] if r["detected"] and np.isfinite(r["lag_ms"])]
        rows[mth] = {"batch_precision": bp, "batch_recall": br, "batch_f1": bf, "window_precision": wp,
                     "window_recall": wr, "window_f1": wf,
                     "lag_batches_median": float(np.median(lb)) if lb else np.nan,
                     "lag_ms_median": float(np.median(lm)) if lm else np.nan,
                     "false_alarms": fa, "workload_label_alarms": sum(s["workload_label_alarms"] for s in ss),
                     "workload_label_flagged_batches": sum(s["workload_label_flagged_batches"] for s in ss),
                     "alarms": al, "faults": nf, "faults_detected": det}
    return pd.DataFrame(rows).T[METRICS]
