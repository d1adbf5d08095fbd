"""Anomalies vs workload shifts, online and offline with one core.

    model = WorkloadModel.load("baseline-model.json")
    res = prismkit.detect(trace, model)        # offline: feeds OnlineDetector batch by batch
    res.anomalies, res.workload_shifts, res.change_points, res.batches (per-batch flags)

    det = OnlineDetector(model)                # online: one batch at a time, O(1) work and memory
    for batch in stream:
        v = det.update(batch)
        if v.alarm: ...                        # raised at this batch
        v.flagged                              # batch indices flagged now (may reach back a few batches)

The rule (LatencyPrism's control limit, plus persistence, hysteresis and a CUSUM):

- residual: relative error ``e = dur / expected - 1`` (one-sided: only slower
  than expected counts);
- control limits per phase from the model's out-of-fold errors on normal
  data: ``L = mean + k * std`` of the one-sided relative error (enter),
  ``L_in = mean + k_in * std`` (stay), ``L_severe = mean + k_severe * std``
  together with an excess time beyond ``severe_excess`` x the 99th
  percentile of the excess (dur - expected) of normal batches: a stall costs
  more time than the scheduler hiccups a busy machine gives normal batches;
- mean and std are those of the one-sided error winsorized at its 99th
  percentile (and at least its 10 largest values; see model._stats): rare
  hiccups in the baseline do not widen the limits;
- an anomaly opens when ``m`` of the last ``n`` batches exceed ``L``
  (persistence: one slow batch is not an alarm), when the CUSUM below
  crosses ``h`` (a smaller slowdown that persists), or when one batch exceeds
  ``L_severe`` (a stall); on opening, the run of batches above ``L_in`` (above
  ``L`` for a single severe batch) just before it is flagged too, so the
  flags start where the slowdown started (the alarm itself is not
  back-dated: lag is measured at the alarm);
- while open, every batch above ``L_in`` is flagged (above ``L`` while an
  anomaly opened by one severe batch has not become persistent); once
  ``close_quiet`` of the last ``close_after`` batches since its alarm (3 of
  5: most of them; the window's median) are at or below that limit it goes
  quiet: no batch is flagged, and it closes after ``close_after`` more
  batches, ending at its last flagged batch, unless the alarm rule (m of n,
  or a severe batch) fires meanwhile, which resumes it (flags back over the
  run of batches above the stay limit that ends there): the after-effects of
  a fault (on a fresh recording, 1.2-1.4x for 5 batches just after a CPU hog
  stopped) stay part of it instead of raising a second alarm.
  Why a majority and not a run of quiet
  batches: after a fault the workload is often one the baseline never ran
  (the queue that built up during the fault drains as multi-sequence
  prefills), where the model's errors spread wider both ways; about half
  of those normal batches land above the stay limit, so a run of 5 quiet
  batches in a row took ~30 batches to come, all flagged while the anomaly
  stayed open (the fresh-recording test, a model fitted on ~100-200 batches:
  up to 39 normal batches flagged after a 5 s fault). A real slowdown keeps
  most batches above the stay limit, so it does not close early: on the
  sample traces the flags are those of 5 in a row but one (a stall's
  anomaly ends 4 batches sooner), F1 unchanged.

- a one-sided CUSUM on the log ratio ``x = log(dur / expected)`` catches
  small persistent slowdowns (20-30%) that stay under ``L`` most of the time,
  so that m of n fires late or never: ``S_t = max(0, S_{t-1} + clip(x_t -
  ref, -c, c))``, an anomaly opens (trigger 'cusum') when ``S_t > h``. Why a
  CUSUM: it is the quickest detector of a persistent mean shift for a given
  false-alarm rate (Page; Lorden), with O(1) work and memory per batch.
  ``ref = median + log(1 + cusum_shift) / 2`` per phase (the reference value
  for a shift of ``cusum_shift``, 20% by default: the slowdown the detector
  must catch); ``c = cusum_clip * log(1 + cusum_shift)`` bounds what one
  batch adds (a preempted or stalled batch counts no more than half the
  target shift's evidence beyond ref: single slow batches are the severe
  rule's business, and the residuals' right tail is heavy). ``h`` is set for
  an in-control average run length of ``cusum_arl0`` batches from the
  model's out-of-fold residuals on normal data in time order (see
  cusum_from_calibration): the CUSUM is run over them and the tail of its
  excursion heights is extrapolated, which keeps what a normal-theory
  formula would miss (autocorrelation about 0.3, bursts of slow batches on a
  busy machine). ``cusum_arl0 = 1e4``: on the baseline's own out-of-fold
  residuals the m-of-n rule alarms about once per 1.5e3 batches, so the
  CUSUM adds little to the in-control alarm rate. S is held at 0 while an
  anomaly is open and restarts from 0 when it closes. On a CUSUM alarm (and
  a persistent one) the flags reach back over the batches above ``L_in``
  since the CUSUM's excursion began (the last time S was 0: where the
  slowdown started, as far as the CUSUM can tell), within ``lookback``.
  Models saved without the out-of-fold sample run without the CUSUM.
  Opt-in (``DetectorConfig(cusum=True)``): on the sample traces it cuts the
  lag on a +27% CPU-contention window from 14 to 5 batches but lowers batch
  F1 from 0.992 to 0.939 (3 false alarms instead of 1: short +10-22% runs of
  single-sequence decodes outside any label), so the default stays m of n.

Defaults (k=3, k_in=0.5, 3 of 4, k_severe=12, severe_excess=4) were chosen on
a separate set of labelled recordings from the sample traces'; see
prismkit/detect/evaluate.py for how detections are scored.

Workload shifts are found on the *expected* latency (the workload seen
through the model): the mean of log(expected) over the last ``shift_window``
batches against the window before it; a change beyond ``shift_threshold`` is a
workload shift, placed where the change is largest, and reported with whether
the observed latency followed (``explained``). They are never anomalies: an
anomaly needs observed latency beyond what the workload explains.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .model import WorkloadModel, _batches_of


@dataclass(frozen=True)
class DetectorConfig:
    k: float = 3.0                  # enter limit: mean + k * std of the one-sided relative error
    k_in: float = 0.5               # stay limit inside an anomaly (hysteresis)
    k_severe: float | None = 12.0   # a single batch beyond mean + k_severe * std opens an anomaly ...
    severe_excess: float = 4.0      # ... if it also lost more time than this x the q99 excess of normal batches
    m: int = 3                      # persistence: m of ...
    n: int = 4                      # ... the last n batches beyond the enter limit
    close_after: int = 5            # window of the close rule (batches since the anomaly's alarm) ...
    close_quiet: int = 3            # ... of which this many at or below the stay limit close it
    min_limit: float = 0.05         # floor of the enter limit (relative error)
    min_limit_in: float = 0.03      # floor of the stay limit
    cusum: bool = False             # opt-in: the one-sided CUSUM on log(dur / expected) (small persistent
                                    # slowdowns; faster on +20-30% faults, more false alarms: see docstring)
    cusum_shift: float = 0.2        # slowdown it is tuned for (ratio - 1): reference = median + log(1 + shift) / 2
    cusum_clip: float = 0.5         # a batch moves the CUSUM by at most this x log(1 + shift)
    cusum_arl0: float = 1e4         # in-control batches between false CUSUM alarms (sets the decision interval)
    lookback: int = 64              # how far back flags may reach when an anomaly opens
    shift_window: int = 48          # batches per window of the workload-shift test
    shift_threshold: float = 0.25   # |change| of mean log(expected) that makes a shift (0.25 ~ 28%)
    shift_tolerance: float = 0.15   # observed change within this (log) of expected: 'explained'
    max_history: int = 10_000       # anomalies / shifts kept by an online detector

    def replace(self, **kw) -> "DetectorConfig":
        return replace(self, **kw)


@dataclass
class Limits:
    mean: float
    std: float
    enter: float
    stay: float
    severe: float
    severe_excess_ns: float = 0.0


@dataclass
class CusumParams:
    ref: dict            # phase -> reference (log ratio): the phase's in-control median + log(1 + shift) / 2
    clip: float          # each batch's increment is clipped to [-clip, clip]
    h: float             # decision interval: alarm when S > h

    def reference(self, phase) -> float:
        r = self.ref.get(str(phase))
        return self.ref.get("all", 0.0) if r is None else r


def _cusum_path_heights(z: np.ndarray, drift: float, clip: float) -> np.ndarray:
    """Heights of the excursions (from 0 back to 0) of S = max(0, S + clip(z - drift))."""
    s, top, out = 0.0, 0.0, []
    for v in z.tolist():
        s = max(0.0, s + min(max(v - drift, -clip), clip))
        if s > 0.0:
            top = max(top, s)
        elif top > 0.0:
            out.append(top)
            top = 0.0
    if top > 0.0:
        out.append(top)
    return np.asarray(out)


def cusum_from_calibration(calibration: dict, config: DetectorConfig) -> CusumParams | None:
    """Reference, clip and decision interval of the CUSUM from a model's calibration (None: switched off).

    With the model's out-of-fold sample (``cusum_resid``): the CUSUM is run over
    it, and the tail of its excursion heights (the largest 10%, at least 10) is
    fitted with an exponential, P(H > x) = p_u exp(-theta (x - u)); with r
    excursions per batch, the false-alarm rate at h is r p_u exp(-theta (h - u)),
    set to 1 / arl0. Without that sample (model files saved before it existed,
    or fewer than 20 excursions) the CUSUM is off (None): a normal approximation
    of these heavy-tailed, autocorrelated residuals sets h far too low. h is at
    least 2 x clip, so that no fewer than three batches can raise it.
    """
    if not config.cusum or not calibration:
        return None
    delta = math.log1p(config.cusum_shift)
    clip = config.cusum_clip * delta
    ref = {}
    for key, st in calibration.items():
        if isinstance(st, dict) and st.get("n", 0):
            med = st.get("log_q50")
            if med is None:
                med = math.log1p(float(st.get("q50", 0.0)))
            ref[str(key)] = float(med) + delta / 2
    if "all" not in ref:
        return None
    h = math.nan
    sample = calibration.get("cusum_resid")
    if sample is not None and len(sample) >= 200:
        z = np.asarray(sample, dtype=np.float64)
        heights = np.sort(_cusum_path_heights(z[np.isfinite(z)], delta / 2, clip))[::-1]
        if len(heights) >= 20:
            top = heights[:max(10, len(heights) // 10)]
            u = float(top[-1])
            theta = 1.0 / max(float(np.mean(top - u)), 1e-9)
            rate = len(heights) / len(z) * len(top) / len(heights)      # r * p_u
            h = u + math.log(max(rate * config.cusum_arl0, 1.0)) / theta
    if not math.isfinite(h):
        return None
    return CusumParams(ref, clip, max(h, 2.0 * clip))


def limits_from_calibration(calibration: dict, config: DetectorConfig) -> dict[str, Limits]:
    """Per-phase control limits (and 'all' as the fallback) from a model's calibration."""
    out = {}
    for key, st in calibration.items():
        if not isinstance(st, dict):
            continue
        mu, sd = float(st["mean"]), float(st["std"])
        enter = max(mu + config.k * sd, config.min_limit)
        stay = min(max(mu + config.k_in * sd, config.min_limit_in), enter)
        severe = math.inf if config.k_severe is None else max(mu + config.k_severe * sd, enter)
        sev_x = config.severe_excess * float(st.get("excess_q99_ns", 0.0) or 0.0)
        out[key] = Limits(mu, sd, enter, stay, severe, sev_x)
    return out


@dataclass
class Anomaly:
    anomaly_id: int
    start_idx: int
    start_ts: int
    alarm_idx: int
    alarm_ts: int                  # when it was raised: end of the alarm batch
    trigger: str                   # 'persistent' | 'severe'
    end_idx: int = -1
    end_ts: int = -1               # end of the last flagged batch
    n_flagged: int = 0
    sum_obs: float = 0.0
    sum_exp: float = 0.0
    max_ratio: float = 0.0
    evidence: float = 0.0          # sum over flagged batches of min(z - k, 5), z in std units
    open: bool = True

    @property
    def slowdown(self) -> float:
        return self.sum_obs / self.sum_exp if self.sum_exp > 0 else float("nan")

    @property
    def confidence(self) -> float:
        """1 - exp(-evidence / 3): about 0.8 for one batch far out, near 1 for a long anomaly."""
        return 1.0 - math.exp(-max(self.evidence, 0.0) / 3.0)

    def row(self) -> dict:
        return {"anomaly_id": self.anomaly_id, "start": self.start_ts, "end": self.end_ts,
                "start_idx": self.start_idx, "end_idx": self.end_idx, "n_batches": self.end_idx - self.start_idx + 1,
                "n_flagged": self.n_flagged, "slowdown": self.slowdown, "max_ratio": self.max_ratio,
                "confidence": self.confidence, "alarm_idx": self.alarm_idx, "alarm_ts": self.alarm_ts,
                "trigger": self.trigger, "duration_ms": (self.end_ts - self.start_ts) / 1e6}


@dataclass
class WorkloadShift:
    idx: int                       # first batch of the new workload
    ts: int
    detected_idx: int
    expected_before_ms: float
    expected_after_ms: float
    observed_before_ms: float
    observed_after_ms: float
    workload_before: dict
    workload_after: dict
    explained: bool

    def row(self) -> dict:
        r = {"idx": self.idx, "ts": self.ts, "detected_idx": self.detected_idx,
             "expected_before_ms": self.expected_before_ms, "expected_after_ms": self.expected_after_ms,
             "expected_change": self.expected_after_ms / self.expected_before_ms,
             "observed_before_ms": self.observed_before_ms, "observed_after_ms": self.observed_after_ms,
             "observed_change": self.observed_after_ms / self.observed_before_ms, "explained": self.explained}
        for c in self.workload_before:
            r[f"{c}_before"] = self.workload_before[c]
            r[f"{c}_after"] = self.workload_after[c]
        return r


@dataclass
class Verdict:
    """What one batch did to the detector."""

    index: int
    expected: float
    rel_error: float
    exceed: bool
    flagged: list[int] = field(default_factory=list)   # batch indices flagged now (this one and back-dated)
    cusum: float = 0.0                                  # the CUSUM statistic after this batch
    alarm: Anomaly | None = None                        # an anomaly raised at this batch
    closed: Anomaly | None = None                       # an anomaly that ended (at an earlier batch)
    shift: WorkloadShift | None = None


SHIFT_COLUMNS = ["n_seqs", "n_tokens", "kv_tokens"]


class _ShiftTest:
    """Two adjacent windows of log(expected), log(observed) and workload columns: O(1) per batch."""

    def __init__(self, w: int, threshold: float, tolerance: float) -> None:
        self.w, self.thr, self.tol = w, threshold, tolerance
        self.buf: deque = deque(maxlen=2 * w)      # (idx, ts, (1, log_exp, log_obs, *workload))
        # running sums as plain lists: on the online path a handful of numpy calls per batch cost
        # more than the arithmetic (same float operations, element by element)
        self.sum_a = [0.0] * (3 + len(SHIFT_COLUMNS))
        self.sum_b = [0.0] * (3 + len(SHIFT_COLUMNS))
        self.best: tuple | None = None
        self.age = 0
        self.quiet_until = -1

    def push(self, idx: int, ts: int, log_exp: float, log_obs: float, work: tuple) -> WorkloadShift | None:
        w = self.w
        vec = (1.0, float(log_exp), float(log_obs), *map(float, work))
        sum_a, sum_b = self.sum_a, self.sum_b
        if len(self.buf) == 2 * w:
            old = self.buf[0][2]
            for j, x in enumerate(old):
                sum_a[j] -= x
        if len(self.buf) >= w:
            mid = self.buf[-w][2]        # leaves window B (recent) for window A
            for j, x in enumerate(mid):
                sum_a[j] += x
                sum_b[j] -= x
        self.buf.append((idx, ts, vec))
        for j, x in enumerate(vec):
            sum_b[j] += x
        if len(self.buf) < 2 * w:
            return None
        d = sum_b[1] / sum_b[0] - sum_a[1] / sum_a[0]
        boundary_idx, boundary_ts = self.buf[w][0], self.buf[w][1]
        out = None
        if abs(d) > self.thr and boundary_idx > self.quiet_until:
            if self.best is None or abs(d) > abs(self.best[0]):
                a, b = np.array(sum_a) / sum_a[0], np.array(sum_b) / sum_b[0]
                self.best = (d, boundary_idx, boundary_ts, a, b)
            self.age += 1
        if self.best is not None and (abs(d) <= self.thr or self.age > w or boundary_idx <= self.quiet_until):
            out = self._emit(idx)
        return out

    def _emit(self, idx: int) -> WorkloadShift:
        d, bidx, bts, a, b = self.best
        self.best, self.age = None, 0
        self.quiet_until = bidx + self.w
        d_obs = b[2] - a[2]
        return WorkloadShift(
            idx=int(bidx), ts=int(bts), detected_idx=int(idx),
            expected_before_ms=math.exp(a[1]) / 1e6, expected_after_ms=math.exp(b[1]) / 1e6,
            observed_before_ms=math.exp(a[2]) / 1e6, observed_after_ms=math.exp(b[2]) / 1e6,
            workload_before={c: float(a[3 + i]) for i, c in enumerate(SHIFT_COLUMNS)},
            workload_after={c: float(b[3 + i]) for i, c in enumerate(SHIFT_COLUMNS)},
            explained=bool(abs(d_obs - d) <= self.tol))

    def flush(self, idx: int) -> WorkloadShift | None:
        return self._emit(idx) if self.best is not None else None


class OnlineDetector:
    """The detector, one batch at a time (constant work and memory per batch).

    `model` gives expected latencies and control limits (its calibration on
    normal data); `calibration` overrides the limits (a dict like
    ``model.calibration_``). ``update(batch)`` takes a mapping with ``ts``,
    ``dur`` and the model's workload columns; ``step(...)`` takes an
    expectation computed elsewhere (the offline path predicts all batches at
    once, which gives the same numbers).
    """

    def __init__(self, model: WorkloadModel | None = None, config: DetectorConfig | None = None,
                 calibration: dict | None = None, on_alarm=None) -> None:
        self.model = model
        self.config = config or DetectorConfig()
        cal = calibration if calibration is not None else (model.calibration_ if model is not None else None)
        if cal is None:
            raise ValueError("OnlineDetector needs a fitted model or a calibration")
        self.limits = limits_from_calibration(cal, self.config)
        self.cusum = cusum_from_calibration(cal, self.config)
        self._s = 0.0                 # CUSUM statistic
        self._s_start = -1            # first batch of the CUSUM's current excursion (-1: S is 0)
        self.on_alarm = on_alarm
        c = self.config
        # ring entries: [idx, ts, end, e, exceed, flagged, obs, exp, z, stay limit, enter limit]
        self._ring: deque = deque(maxlen=max(c.lookback, c.n))
        self._n_exceed_window: deque = deque(maxlen=c.n)
        self._count = 0
        self._i = 0
        self._open: Anomaly | None = None
        self._quiet: deque = deque(maxlen=c.close_after)   # open anomaly: 1 per batch at or below the stay limit
        self._lull = -1               # batches since the majority rule went quiet (-1: not quiet)
        self._next_id = 0
        self._shift = _ShiftTest(c.shift_window, c.shift_threshold, c.shift_tolerance)
        self._prev_tokens: dict = {}
        self.anomalies: deque = deque(maxlen=c.max_history)
        self.shifts: deque = deque(maxlen=c.max_history)

    def _lim(self, phase) -> Limits:
        return self.limits.get(str(phase)) or self.limits["all"]

    def update(self, batch) -> Verdict:
        """Predict and score one batch (a dict, Series or namedtuple with ts, dur and workload columns)."""
        if self.model is None:
            raise ValueError("update() needs a model; use step() with an expectation")
        get = batch.get if hasattr(batch, "get") else (lambda k, d=None: getattr(batch, k, d))
        tid = get("tid", 0)
        prev = self._prev_tokens.get(tid, np.nan)
        if "n_tokens" in self.model.columns_:
            if tid not in self._prev_tokens and len(self._prev_tokens) >= 1024:
                self._prev_tokens.pop(next(iter(self._prev_tokens)))
            self._prev_tokens[tid] = float(get("n_tokens"))
        exp = self.model.predict_one(batch, prev_n_tokens=prev)
        work = tuple(float(get(c, np.nan)) for c in SHIFT_COLUMNS)
        return self.step(int(get("ts")), int(get("dur")), exp, get("phase", "all"), work)

    def step(self, ts: int, dur: int, expected: float, phase="all", workload: tuple | None = None) -> Verdict:
        c = self.config
        i = self._i
        self._i += 1
        lim = self._lim(phase)
        e = dur / expected - 1.0
        exceed = e > lim.enter
        z = (e - lim.mean) / lim.std if lim.std > 0 else (math.inf if e > lim.mean else 0.0)
        v = Verdict(index=i, expected=expected, rel_error=e, exceed=bool(exceed))
        end = ts + dur
        entry = [i, ts, end, e, exceed, False, float(dur), float(expected), z, lim.stay, lim.enter]
        # persistence window
        if len(self._n_exceed_window) == c.n:
            self._count -= self._n_exceed_window[0]
        self._n_exceed_window.append(int(exceed))
        self._count += int(exceed)
        self._ring.append(entry)
        cs = self.cusum
        if cs is not None and self._open is None and dur > 0 and expected > 0:
            x = math.log(dur / expected) - cs.reference(phase)
            self._s = max(0.0, self._s + min(max(x, -cs.clip), cs.clip))
            if self._s <= 0.0:
                self._s_start = -1
            elif self._s_start < 0:
                self._s_start = i
        v.cusum = self._s

        if self._open is None:
            severe = e > lim.severe and dur - expected > lim.severe_excess_ns
            drifted = cs is not None and self._s > cs.h
            if self._count >= c.m or severe or drifted:
                persistent = self._count >= c.m
                trigger = "persistent" if persistent else ("cusum" if drifted else "severe")
                an = Anomaly(self._next_id, i, ts, i, end, trigger)
                self._next_id += 1
                # back-date the flags over the run of batches above the stay limit that ends here
                # (a single severe batch: only over batches beyond the enter limit), and for a
                # persistent or CUSUM alarm over the batches above the stay limit since the CUSUM's
                # excursion began (where the slowdown started, as far as the CUSUM can tell)
                run = []
                for ent in reversed(self._ring):
                    if ent[3] > (ent[10] if trigger == "severe" else ent[9]):
                        run.append(ent)
                    else:
                        break
                if trigger != "severe" and self._s_start >= 0:
                    seen = {ent[0] for ent in run}
                    run += [ent for ent in reversed(self._ring)
                            if ent[0] >= self._s_start and ent[0] not in seen and ent[3] > ent[9]]
                    run.sort(key=lambda ent: -ent[0])
                for ent in reversed(run):
                    self._flag(an, ent, v)
                if trigger == "cusum":
                    an.evidence += 3.0        # a CUSUM crossing counts as much as one batch 3 sigma beyond L
                if not run:                   # (cannot happen: the alarm batch is above its limit)
                    run = [entry]
                    self._flag(an, entry, v)
                an.start_idx, an.start_ts = run[-1][0], run[-1][1]
                self._s, self._s_start = 0.0, -1
                self._open = an
                self._quiet.clear()
                self._lull = -1
                v.alarm = an
                if self.on_alarm is not None:
                    self.on_alarm(an)
        else:
            an = self._open
            if an.trigger == "severe" and self._count >= c.m:
                an.trigger = "persistent"
            if self._lull >= 0:
                # quiet since the majority rule: nothing is flagged; the alarm rule (m of n, severe)
                # resumes the anomaly within close_after batches, else it closes
                if self._count >= c.m or (e > lim.severe and dur - expected > lim.severe_excess_ns):
                    self._lull = -1
                    self._quiet.clear()
                    run = []
                    for ent in reversed(self._ring):
                        if ent[5] or ent[3] <= (ent[10] if self._count < c.m else ent[9]):
                            break
                        run.append(ent)
                    for ent in reversed(run):
                        self._flag(an, ent, v)
                else:
                    self._lull += 1
                    if self._lull >= c.close_after:
                        v.closed = self._close()
            # after a single severe batch only batches beyond the enter limit count, until it persists
            elif e > (lim.enter if an.trigger == "severe" else lim.stay):
                self._flag(an, entry, v)
                self._quiet.append(0)
            else:
                self._quiet.append(1)
                if sum(self._quiet) >= c.close_quiet:
                    self._lull = 0
        if workload is not None and expected > 0 and dur > 0:
            sh = self._shift.push(i, ts, math.log(expected), math.log(dur), workload)
            if sh is not None:
                self.shifts.append(sh)
                v.shift = sh
        return v

    def _flag(self, an: Anomaly, ent: list, v: Verdict) -> None:
        if ent[5]:
            return
        ent[5] = True
        v.flagged.append(ent[0])
        an.n_flagged += 1
        an.end_idx, an.end_ts = ent[0], ent[2]
        an.sum_obs += ent[6]
        an.sum_exp += ent[7]
        an.max_ratio = max(an.max_ratio, ent[6] / ent[7])
        an.evidence += min(max(ent[8] - self.config.k, 0.0), 5.0) if math.isfinite(ent[8]) else 5.0

    def _close(self) -> Anomaly:
        an = self._open
        an.open = False
        self._open = None
        self._quiet.clear()
        self._lull = -1
        self._s, self._s_start = 0.0, -1
        self.anomalies.append(an)
        return an

    def finish(self) -> Verdict:
        """End of stream: close an open anomaly and report a pending shift."""
        v = Verdict(index=self._i, expected=float("nan"), rel_error=float("nan"), exceed=False)
        if self._open is not None:
            v.closed = self._close()
        sh = self._shift.flush(self._i)
        if sh is not None:
            self.shifts.append(sh)
            v.shift = sh
        return v

    @property
    def open_anomaly(self) -> Anomaly | None:
        return self._open


# -- offline ----------------------------------------------------------------------------
@dataclass
class DetectionResult:
    batches: pd.DataFrame          # per batch: expected, ratio, rel_error, limit, exceed, flag, anomaly_id
    anomalies: pd.DataFrame
    workload_shifts: pd.DataFrame
    change_points: pd.DataFrame
    config: DetectorConfig
    model: WorkloadModel

    @property
    def flags(self) -> np.ndarray:
        return self.batches["flag"].to_numpy(dtype=bool)

    def summary(self) -> str:
        b = self.batches
        return (f"{len(b)} batches, {int(b['flag'].sum())} flagged in {len(self.anomalies)} anomalies; "
                f"{len(self.workload_shifts)} workload shifts; {len(self.change_points)} change points")


ANOMALY_COLUMNS = ["anomaly_id", "start", "end", "start_idx", "end_idx", "n_batches", "n_flagged", "slowdown",
                   "max_ratio", "confidence", "alarm_idx", "alarm_ts", "trigger", "duration_ms"]


def prepare_batches(trace_or_batches) -> pd.DataFrame:
    """Batches in time order with a 0..N-1 index (the detector's batch index)."""
    b = _batches_of(trace_or_batches)
    b = b[pd.to_numeric(b["dur"], errors="coerce").fillna(-1) > 0]
    return b.sort_values("ts", kind="stable").reset_index(drop=True)


def run_detector(batches: pd.DataFrame, expected: np.ndarray, model: WorkloadModel | None,
                 config: DetectorConfig, calibration: dict | None = None) -> tuple[np.ndarray, OnlineDetector, list]:
    """Feed batches (time order) and their expectations to an OnlineDetector; per-batch flags."""
    det = OnlineDetector(model, config, calibration=calibration)
    n = len(batches)
    flags = np.zeros(n, dtype=bool)
    ts = batches["ts"].to_numpy(np.int64)
    dur = batches["dur"].to_numpy(np.int64)
    phase = batches["phase"].astype(str).to_numpy() if "phase" in batches.columns else np.full(n, "all")
    work = np.column_stack([pd.to_numeric(batches[c], errors="coerce").to_numpy(np.float64)
                            if c in batches.columns else np.full(n, np.nan) for c in SHIFT_COLUMNS])
    anomalies = []
    for i in range(n):
        v = det.step(int(ts[i]), int(dur[i]), float(expected[i]), phase[i], tuple(work[i]))
        if v.flagged:
            flags[v.flagged] = True
        if v.alarm is not None:
            anomalies.append(v.alarm)
    det.finish()
    return flags, det, anomalies


def detect(trace_or_batches, model: WorkloadModel | None = None, config: DetectorConfig | None = None, *,
           change_points: bool = True, fit_fraction: float = 0.3, **overrides) -> DetectionResult:
    """Offline detection over a whole trace: the online detector fed batch by batch.

    `model`: a WorkloadModel fitted on a normal recording of the same
    server/model/machine. Without one, a model is fitted on the first
    `fit_fraction` of this trace's batches, which assumes that part is normal.
    Keyword overrides go to DetectorConfig (e.g. ``k=4, m=2``).
    """
    config = (config or DetectorConfig()).replace(**overrides) if overrides else (config or DetectorConfig())
    b = prepare_batches(trace_or_batches)
    if model is None:
        cut = max(40, int(len(b) * fit_fraction))
        model = WorkloadModel().fit(b.iloc[:cut])
    expected = model.predict(b) if len(b) else np.empty(0)
    flags, det, anomalies = run_detector(b, expected, model, config)
    out = b.copy()
    out["expected"] = expected
    out["ratio"] = out["dur"] / out["expected"]
    out["rel_error"] = out["ratio"] - 1.0
    lims = [det._lim(p) for p in (out["phase"].astype(str) if "phase" in out.columns else ["all"] * len(out))]
    out["limit"] = [lm.enter for lm in lims]
    out["limit_stay"] = [lm.stay for lm in lims]
    out["exceed"] = out["rel_error"] > out["limit"]
    out["flag"] = flags
    out["anomaly_id"] = -1
    rows = []
    for an in anomalies:
        rows.append(an.row())
        seg = slice(an.start_idx, an.end_idx + 1)
        idx = np.arange(len(out))[seg]
        out.loc[idx[flags[seg]], "anomaly_id"] = an.anomaly_id
    anom = pd.DataFrame(rows, columns=ANOMALY_COLUMNS)
    shifts = pd.DataFrame([s.row() for s in det.shifts])
    if len(shifts) and len(anom):
        s_ts = shifts["ts"].to_numpy()
        shifts["during_anomaly"] = [bool(((anom["start"] <= t) & (anom["end"] >= t)).any()) for t in s_ts]
    elif len(shifts):
        shifts["during_anomaly"] = False
    cps = residual_change_points(out) if change_points and len(out) >= 20 else _empty_cps()
    return DetectionResult(out, anom, shifts, cps, config, model)


# -- change points (ruptures, offline) ------------------------------------------------------
def _empty_cps() -> pd.DataFrame:
    return pd.DataFrame(columns=["kind", "idx", "ts", "mean_before", "mean_after", "change"])


def change_points(signal: np.ndarray, penalty: float | None = None, block: int = 8, min_blocks: int = 2,
                  penalty_factor: float = 30.0, max_points: int = 4000) -> np.ndarray:
    """Change points of a 1-D series with ruptures (PELT, L2 cost); indices into `signal`.

    The series is first reduced to medians of `block` batches (more for long
    series: at most `max_points` blocks), so that single slow batches and the
    short-range texture of model errors are not level shifts; the penalty
    defaults to `penalty_factor` * sigma^2 * log(n) (BIC-like), sigma from the
    median absolute difference of neighbouring blocks (robust to the shifts
    being looked for).
    """
    import ruptures as rpt

    x = np.asarray(signal, dtype=np.float64)
    x = np.where(np.isfinite(x), x, np.nanmedian(x) if np.isfinite(x).any() else 0.0)
    n = len(x)
    block = max(block, int(math.ceil(n / max_points)))
    m = n // block
    if m < 2 * min_blocks + 1:
        return np.empty(0, dtype=int)
    y = np.median(x[: m * block].reshape(m, block), axis=1)
    sigma = max(1.4826 * np.median(np.abs(np.diff(y))) / math.sqrt(2), 1e-3)
    pen = penalty if penalty is not None else penalty_factor * sigma ** 2 * math.log(len(y))
    algo = rpt.Pelt(model="l2", min_size=min_blocks, jump=1).fit(y)
    bkps = np.asarray(algo.predict(pen=pen)[:-1], dtype=int)
    return np.minimum(bkps * block, n - 1)


def _segments_table(kind: str, x: np.ndarray, cps: np.ndarray, ts: np.ndarray) -> list[dict]:
    rows = []
    edges = [0, *cps.tolist(), len(x)]
    for j, cp in enumerate(cps):
        before = x[edges[j]:cp]
        after = x[cp:edges[j + 2]]
        mb, ma = float(np.median(before)), float(np.median(after))
        rows.append({"kind": kind, "idx": int(cp), "ts": int(ts[cp]), "mean_before": mb, "mean_after": ma,
                     "change": ma - mb})
    return rows


def residual_change_points(b: pd.DataFrame, penalty: float | None = None) -> pd.DataFrame:
    """ruptures on log(observed/expected) ('residual') and on log(expected) ('workload')."""
    ts = b["ts"].to_numpy(np.int64)
    resid = np.log(np.clip(b["ratio"].to_numpy(np.float64), 1e-3, None))
    resid = np.clip(resid, -1.0, 1.0)   # one stalled batch is not a level shift
    logexp = np.log(b["expected"].to_numpy(np.float64))
    rows = _segments_table("residual", resid, change_points(resid, penalty), ts)
    rows += _segments_table("workload", logexp, change_points(logexp, penalty), ts)
    return pd.DataFrame(rows, columns=_empty_cps().columns) if rows else _empty_cps()


__all__ = ["Anomaly", "DetectionResult", "DetectorConfig", "OnlineDetector", "Verdict", "WorkloadShift",
           "change_points", "detect", "limits_from_calibration", "prepare_batches", "run_detector"]
