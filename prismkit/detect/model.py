"""``WorkloadModel``: expected batch latency from the workload alone.

    m = WorkloadModel().fit(baseline.batches)     # a normal recording of this server/model/machine
    m.predict(trace.batches)                      # expected dur (ns) of each batch
    m.evaluate(held_out_batches)                  # MAPE, share within 10%, by workload group
    m.save("model.json"); WorkloadModel.load("model.json")

Features come from the workload columns of the batches table only
(``n_tokens, n_seqs, n_prefill_tokens, n_decode_tokens, kv_tokens, phase``,
whichever are present at fit time) plus derived terms after LatencyPrism:
decode x context (``n_decode_tokens * kv_tokens``), prefill x context and
prefill x tokens x context (attention over the prompt), context per sequence.
Under the trees sits a physical cost model (the *base*), fitted first with a
robust (soft-L1) non-negative least squares on relative error: llama.cpp runs
a batch as micro-batches over consecutive sequence ids (``ubatch_sizes``),
each a full pass over the weights costing ``one_token_pass`` for one token
(matrix-vector kernels) or ``pass_fixed + max(pass_floor, per_token * m)``
for m tokens (weights streamed once, or compute-bound), plus attention:
``per_ctx * kv_tokens + prefill_x_ctx * n_prefill_tokens * kv_tokens``. The
base is what extrapolates to batch sizes and contexts the baseline did not
run. The regressor is LightGBM on log(dur) with log(base) as the starting
point (latencies span three orders of magnitude between a one-token decode
and a long prefill; the log makes the loss relative), with a Huber loss, so
that the occasional preempted batch in the baseline does not pull the
expectation up, and monotone constraints (more tokens or more context never
predicts less time). Trees do not extrapolate: a batch whose shape (phase x
token count) the baseline ran fewer than ``min_support`` times gets
proportionally less of the trees' correction, none for a shape never seen.

The model also keeps the *control limits* the detector uses: fitting runs a
K-fold cross-fit on the baseline, and the out-of-fold relative errors
``dur / expected - 1`` give, per phase, the mean and standard deviation of the
one-sided relative error (LatencyPrism's mean + k sigma rule) and a few high
quantiles, and the out-of-fold log residuals in time order (centred on their
phase's median, at most ``CUSUM_SAMPLE``) from which the detector's CUSUM
sets its decision interval. Out-of-fold, because in-sample residuals of
boosted trees are too optimistic to set a limit from. Version-2 files saved
before the CUSUM sample existed still load; the detector then falls back to a
normal approximation from their quantiles.

Saved as one JSON file (format version 2): metadata, calibration, the base's
parameters, the trees' support and the LightGBM text model; predictions after
load are bit-identical. Version-1 files (linear base) are refused with a
one-line message: refit them.
"""
from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .forest import row_model, row_predictor

WORKLOAD_COLUMNS = ["n_tokens", "n_seqs", "n_prefill_tokens", "n_decode_tokens", "kv_tokens", "phase"]
PHASE_CODES = {"decode": 0, "prefill": 1, "mixed": 2}
# Derived terms: name -> (inputs, function of the input columns).
DERIVED = {
    "decode_x_ctx": (("n_decode_tokens", "kv_tokens"), lambda d: d["n_decode_tokens"] * d["kv_tokens"]),
    "prefill_x_ctx": (("n_prefill_tokens", "kv_tokens"), lambda d: d["n_prefill_tokens"] * d["kv_tokens"]),
    "prefill_x_tokens_x_ctx": (("n_prefill_tokens", "n_tokens", "kv_tokens"),
                               lambda d: d["n_prefill_tokens"] * d["n_tokens"] * d["kv_tokens"]),
    "tokens_x_ctx": (("n_tokens", "kv_tokens"), lambda d: d["n_tokens"] * d["kv_tokens"]),
    "ctx_per_seq": (("kv_tokens", "n_seqs"), lambda d: d["kv_tokens"] / np.maximum(d["n_seqs"], 1)),
    # Which server slots the batch holds: llama.cpp splits a batch whose sequences are not
    # contiguous in the KV cache into more work; the number of contiguous slot runs captures it.
    "seq_runs": (("seq_mask",), lambda d: _runs(d["seq_mask"])),
}
# Optional composition columns used when present (more columns of the batches table).
EXTRA_COLUMNS = ["seq_mask", "prefill_mask"]
# Columns only the cost base reads (not tree features).
BASE_ONLY = {"prefill_mask"}
# The physical cost base under the trees, see ubatch_sizes() and WorkloadModel._base():
# sum over the batch's micro-batches of pass(m) + per_ctx * kv_tokens + prefill_x_ctx * n_prefill_tokens * kv_tokens,
# pass(1) = one_token_pass, pass(m >= 2) = pass_fixed + max(pass_floor, per_token * m).
BASE_PARAMS = ["pass_fixed", "pass_floor", "per_token", "one_token_pass", "per_ctx", "prefill_x_ctx"]
N_UBATCH = 512          # llama.cpp's default micro-batch size (-ub)
RIDGE_FLOOR = 1e-3      # ridge on pass_floor / median dur in the base fit, per sqrt(batch) (see _fit_base)
# Latency never decreases with these (monotone constraint +1); 0 for the others.
MONOTONE = {"n_tokens", "n_prefill_tokens", "n_decode_tokens", "kv_tokens", "decode_x_ctx", "prefill_x_ctx",
            "prefill_x_tokens_x_ctx", "tokens_x_ctx"}
SIZE_BINS = [0, 1, 2, 4, 16, 64, 256, 1024, np.inf]
SIZE_LABELS = ["1", "2", "3-4", "5-16", "17-64", "65-256", "257-1024", ">1024"]
FORMAT = "prismkit.workload_model"
FORMAT_VERSION = 2
FAST_CHECKS = 64        # predict_one's first native answers checked against the Python path
CUSUM_SAMPLE = 20_000   # out-of-fold residuals kept (time order) for the detector's CUSUM calibration


def _batches_of(obj) -> pd.DataFrame:
    return obj.batches if hasattr(obj, "batches") and not isinstance(obj, pd.DataFrame) else obj


def _runs(mask: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(mask, nan=0).astype(np.int64)
    starts = m & ~(m << 1)
    return np.array([bin(int(x)).count("1") for x in starts], dtype=np.float64)


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


@functools.lru_cache(maxsize=8192)
def _ubatch_sizes_cached(*args, n_ubatch: int = 512) -> tuple[int, ...]:
    """ubatch_sizes for one batch on the online path: a live server repeats the same few batch shapes."""
    return ubatch_sizes(*args, n_ubatch=n_ubatch)


def _chunks(n: int, size: int) -> tuple[int, ...]:
    return tuple([size] * (n // size) + ([n % size] if n % size else []))


def ubatch_sizes(n_tokens, n_seqs=None, n_prefill=None, n_decode=None, seq_mask=None, prefill_mask=None,
                 n_ubatch: int = N_UBATCH) -> tuple[int, ...]:
    """Token counts of the micro-batches (ubatches) llama.cpp runs one batch as; each is a full graph pass.

    With one KV stream per sequence (llama-server's default), llama.cpp splits
    a batch "equally" over *consecutive* sequence ids: a micro-batch takes the
    same number of tokens from each sequence of a run of consecutive slots
    (one token each while a decoding sequence is in it), so slots {0, 2, 3}
    decode as passes of 1 and 2 tokens, and a prompt beside decoding
    sequences runs as one pass of one token per sequence, then a pass with
    the rest of the prompt (at most `n_ubatch` tokens a pass). The server
    queues the decoding sequences' tokens first, then the prompts'.
    Sequences are read from ``seq_mask`` / ``prefill_mask`` (bit i = slot i)
    when they agree with the counts, else taken as consecutive; without
    ``n_prefill_tokens``/``n_decode_tokens`` the batch is one sequence.
    """
    nt = _num(n_tokens)
    if not nt or nt <= 0:
        return ()
    npf, ndc = _num(n_prefill), _num(n_decode)
    if npf is None or ndc is None:
        return _chunks(int(nt), n_ubatch)
    npf, ndc = max(int(npf), 0), max(int(ndc), 0)
    ns = _num(n_seqs)
    sm, pm = _num(seq_mask), _num(prefill_mask)
    ids = [i for i in range(64) if int(sm) >> i & 1] if sm and sm > 0 else []
    dec: list[int] = []
    pre: list[int] = []
    if ids and (ns is None or len(ids) == int(ns)):
        pre = [i for i in ids if pm and pm > 0 and int(pm) >> i & 1]
        dec = [i for i in ids if i not in pre]
        if len(dec) != ndc or bool(pre) != (npf > 0):
            ids = []
    if not ids:
        nseq = max(int(ns or 1), 1)
        nd = min(ndc, nseq) if ndc else 0
        npre = max(nseq - nd, 1) if npf else 0
        dec, pre = list(range(nd or (1 if ndc else 0))), list(range(nd, nd + npre))
    toks: dict[int, int] = {}
    for seqs, n in ((dec, ndc), (pre, npf)):
        if seqs and n > 0:
            q, r = divmod(n, len(seqs))
            for j, i in enumerate(seqs):
                toks[i] = toks.get(i, 0) + q + (1 if j < r else 0)
    toks = {i: t for i, t in toks.items() if t > 0}
    order = list(dict.fromkeys(dec + pre))
    out = []
    while toks and len(out) < 4096:
        cur, last = [], None
        for i in order:
            if i in toks and (last is None or i == last + 1):
                cur.append(i)
                last = i
        k = max(1, min(min(toks[i] for i in cur), n_ubatch // len(cur)))
        out.append(k * len(cur))
        for i in cur:
            toks[i] -= k
            if toks[i] <= 0:
                del toks[i]
    return tuple(out)


UBATCH_INPUTS = ["n_tokens", "n_seqs", "n_prefill_tokens", "n_decode_tokens", "seq_mask", "prefill_mask"]


def ubatch_matrix(batches: pd.DataFrame, columns: list[str], n_ubatch: int = N_UBATCH) -> np.ndarray:
    """ubatch_sizes of every batch, as rows of a float64 matrix padded with zeros."""
    n = len(batches)
    cols = [c for c in UBATCH_INPUTS if c in columns]
    vals = {c: pd.to_numeric(batches[c], errors="coerce").to_numpy(np.float64) if c in cols else np.full(n, np.nan)
            for c in UBATCH_INPUTS}
    keys = list(zip(*(vals[c] for c in UBATCH_INPUTS)))
    sizes: dict = {}
    rows = []
    for k in keys:
        kk = tuple(None if x != x else x for x in k)   # NaN -> None: one dict key for all missing values
        u = sizes.get(kk)
        if u is None:
            u = sizes[kk] = ubatch_sizes(*kk, n_ubatch=n_ubatch)
        rows.append(u)
    width = max([len(r) for r in rows] + [1])
    U = np.zeros((n, width))
    for j, r in enumerate(rows):
        U[j, :len(r)] = r
    return U


def workload_columns(batches: pd.DataFrame, extra: bool = True) -> list[str]:
    """The workload columns present (with at least one non-null value), plus EXTRA_COLUMNS if `extra`."""
    cols = WORKLOAD_COLUMNS + (EXTRA_COLUMNS if extra else [])
    return [c for c in cols if c in batches.columns and batches[c].notna().any()]


def phase_codes(phase: pd.Series) -> np.ndarray:
    return phase.astype(object).map(PHASE_CODES).fillna(-1).to_numpy(dtype=np.float64)


def workload_features(batches: pd.DataFrame, columns: list[str], history: bool = True) -> pd.DataFrame:
    """The model's feature matrix (float64) from the given workload columns of `batches`."""
    missing = [c for c in columns if c not in batches.columns]
    if missing:
        raise ValueError(f"batches lack workload columns {missing} the model was fitted with")
    d = {}
    for c in columns:
        if c in BASE_ONLY:
            continue
        if c == "phase":
            d["phase"] = phase_codes(batches["phase"])
        else:
            d[c] = pd.to_numeric(batches[c], errors="coerce").to_numpy(dtype=np.float64)
    if "phase" not in columns and {"n_prefill_tokens", "n_decode_tokens"} <= set(columns):
        p, q = d["n_prefill_tokens"] > 0, d["n_decode_tokens"] > 0
        d["phase"] = np.where(p & q, 2.0, np.where(p, 1.0, 0.0))
    for name, (inputs, fn) in DERIVED.items():
        if set(inputs) <= set(columns):
            d[name] = fn(d)
    if history and "n_tokens" in columns:
        d["prev_n_tokens"] = previous_n_tokens(batches)
    return pd.DataFrame(d, index=batches.index)


def previous_n_tokens(batches: pd.DataFrame) -> np.ndarray:
    """n_tokens of the batch before each one on the same thread (NaN for the first).

    The engine's step after a large batch is slower (the compute graph is
    rebuilt for the new shape): a workload effect the batch's own columns miss.
    A `prev_n_tokens` column, when given, is used as is (the online path).
    """
    if "prev_n_tokens" in batches.columns:
        return pd.to_numeric(batches["prev_n_tokens"], errors="coerce").to_numpy(np.float64)
    if "ts" not in batches.columns or len(batches) == 0:
        return np.full(len(batches), np.nan)
    df = pd.DataFrame({"ts": batches["ts"].to_numpy(np.int64),
                       "tid": batches["tid"].to_numpy() if "tid" in batches.columns else 0,
                       "n": pd.to_numeric(batches["n_tokens"], errors="coerce").to_numpy(np.float64)})
    df = df.sort_values(["tid", "ts"], kind="stable")
    prev = df.groupby("tid", sort=False)["n"].shift(1)
    return prev.sort_index().to_numpy(np.float64)


def size_bin(n_tokens: pd.Series) -> pd.Series:
    return pd.cut(pd.to_numeric(n_tokens), SIZE_BINS, labels=SIZE_LABELS).astype(str)


def workload_groups(batches: pd.DataFrame) -> pd.Series:
    """phase x batch-size bin, e.g. 'decode/3-4', 'mixed/65-256' (what evaluate() reports by)."""
    phase = batches["phase"].astype(str) if "phase" in batches.columns else pd.Series("all", index=batches.index)
    if "n_tokens" in batches.columns:
        return phase + "/" + size_bin(batches["n_tokens"])
    return phase


def error_table(observed: np.ndarray, expected: np.ndarray, groups: pd.Series | None = None) -> pd.DataFrame:
    """MAPE, median APE, share within 10% and median ratio, overall and by group."""
    obs = np.asarray(observed, dtype=np.float64)
    exp = np.asarray(expected, dtype=np.float64)
    ape = np.abs(exp - obs) / obs
    df = pd.DataFrame({"group": "all" if groups is None else np.asarray(groups, dtype=object), "ape": ape,
                       "ratio": obs / exp})

    def summ(g: pd.DataFrame) -> pd.Series:
        return pd.Series({"n": len(g), "mape": g["ape"].mean(), "median_ape": g["ape"].median(),
                          "within_10pct": (g["ape"] <= 0.10).mean(), "median_ratio": g["ratio"].median()})

    rows = [summ(g).rename(k) for k, g in df.groupby("group", sort=True)] if groups is not None else []
    rows.append(summ(df).rename("all"))
    out = pd.DataFrame(rows)
    out["n"] = out["n"].astype(int)
    out.index.name = "group"
    return out


def _shape_bin(n: float) -> str:
    if not n == n or n <= 0:
        return "-"
    return str(int(n)) if n <= 8 else f"2^{math.ceil(math.log2(n))}"


def shape_keys(X: np.ndarray, features: list[str]) -> list[str] | None:
    """The batch shape the trees' support is counted by: phase code and token count (exact up to 8,
    then by powers of two), from feature rows; None without an n_tokens feature."""
    if "n_tokens" not in features:
        return None
    nt = X[:, features.index("n_tokens")]
    ph = X[:, features.index("phase")] if "phase" in features else np.zeros(len(X))
    return [f"{int(p) if p == p else -1}:{_shape_bin(n)}" for p, n in zip(ph.tolist(), nt.tolist())]


class WorkloadModel:
    """Expected batch latency (ns) from workload columns; fit/predict like scikit-learn.

    Parameters: `columns` (workload columns to use; default: every one present
    at fit), `log_target` (fit log(dur); default True), `objective` (LightGBM
    objective on the target; default 'l1'), `n_estimators`, `learning_rate`,
    `num_leaves`, `min_child_samples`, `monotone` (monotone constraints),
    `cv_folds` (folds of the cross-fit that sets the control limits), `seed`,
    `n_ubatch` (the server's micro-batch size, llama.cpp's -ub), `min_support`
    (training batches of a shape for the trees' full correction; 0: always full).
    """

    def __init__(self, columns: list[str] | None = None, log_target: bool = True, objective: str = "huber",
                 n_estimators: int = 200, learning_rate: float = 0.05, num_leaves: int = 15,
                 min_child_samples: int = 5, monotone: bool = True, cv_folds: int = 5, seed: int = 0,
                 huber_alpha: float = 0.05, history: bool = False, n_ubatch: int = N_UBATCH,
                 min_support: int = 10) -> None:
        self.columns = list(columns) if columns is not None else None
        self.log_target = log_target
        self.objective = objective
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.monotone = monotone
        self.cv_folds = cv_folds
        self.seed = seed
        self.huber_alpha = huber_alpha
        self.history = history
        self.n_ubatch = n_ubatch
        self.min_support = min_support
        self.booster_ = None
        self.support_: dict = {}
        self.base_coef_: np.ndarray | None = None
        self.columns_: list[str] | None = None
        self.features_: list[str] | None = None
        self.calibration_: dict | None = None
        self.info_: dict = {}

    # -- fitting ----------------------------------------------------------------
    def _params(self, features: list[str]) -> dict:
        p = {"objective": self.objective, "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
             "min_child_samples": self.min_child_samples, "min_child_weight": 0.0, "verbosity": -1,
             "seed": self.seed, "deterministic": True, "num_threads": 1, "force_row_wise": True}
        if self.objective == "huber":
            p["alpha"] = self.huber_alpha
        if self.monotone and self.objective not in ("l1", "regression_l1", "mae", "quantile"):
            p["monotone_constraints"] = [1 if f in MONOTONE else 0 for f in features]
            p["monotone_constraints_method"] = "advanced"
        return p

    # -- the cost base ------------------------------------------------------------
    def base_inputs(self, batches: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the cost base reads: (ubatch matrix, kv_tokens, n_prefill_tokens * kv_tokens), NaN as 0."""
        b, cols = batches, self.columns_
        n = len(b)

        def col(c):
            if c not in cols or c not in b.columns:
                return np.zeros(n)
            return np.nan_to_num(pd.to_numeric(b[c], errors="coerce").to_numpy(np.float64), nan=0.0)

        kv = col("kv_tokens")
        return ubatch_matrix(b, cols, self.n_ubatch), kv, col("n_prefill_tokens") * kv

    @staticmethod
    def _base(theta: np.ndarray, Z: tuple) -> np.ndarray:
        """pass(1) = one_token_pass, pass(m>=2) = pass_fixed + max(pass_floor, per_token*m), summed over
        the ubatches, + per_ctx * kv_tokens + prefill_x_ctx * n_prefill_tokens * kv_tokens (ns).

        A pass streams the weights once (a floor that a one-token pass, llama.cpp's matrix-vector
        kernels, pays less of than the matrix-matrix kernels) or is compute-bound (per token); attention
        reads each sequence's context. Column by column in a fixed order, so that one row and many rows
        give equal numbers.
        """
        U, kv, pk = Z
        fixed, floor, per_token, one, per_ctx, pre_ctx = (float(t) for t in theta)
        s = np.zeros(U.shape[0])
        for j in range(U.shape[1]):
            u = U[:, j]
            s = s + np.where(u == 1, one, np.where(u > 0, fixed + np.maximum(floor, per_token * u), 0.0))
        return np.maximum(s + per_ctx * kv + pre_ctx * pk, 1.0)

    def _fit_base(self, Z: tuple, dur: np.ndarray) -> np.ndarray:
        """Robust (soft-L1) non-negative least squares of the relative error of the cost base."""
        from scipy.optimize import least_squares

        U, kv, pk = Z
        n_pass = (U > 0).sum(axis=1)
        one = (U == 1).any(axis=1)
        big = U.max(axis=1) >= 64
        med = float(np.median(dur))
        single = (n_pass == 1) & (U[:, 0] == 1)
        g0 = float(np.median(dur[single])) if single.sum() >= 5 else 0.5 * med
        c0 = float(np.median(dur[big] / U[big].sum(axis=1))) if big.sum() >= 3 else 0.05 * g0
        theta0 = np.array([0.5 * g0, g0, c0, g0, 0.0, 0.0])
        scale = np.array([med, med, max(c0, 1.0), med, max(med / max(kv.max(), 1.0), 1e-9),
                          max(med / max(pk.max(), 1.0), 1e-12)])

        # A tiny ridge on pass_floor (the weight-streaming floor of a multi-token pass): it only
        # matters where the data leave it free. A baseline with prompts but no multi-sequence decode
        # (one client) has no pass below the prompts' compute-bound sizes, so any floor up to
        # per_token x the shortest prompt fits, and the start value (a one-token pass) made a 4-token
        # pass cost fixed + one-token pass: 2.5x the observed one (decode/2-4 predicted at 0.37x on
        # the sample baseline fitted on its one-sequence batches; with the ridge 0.9-1.1x), which
        # hides faults under that load. Where small multi-token passes were seen, the data fix it.
        ridge = np.zeros(len(theta0))
        ridge[BASE_PARAMS.index("pass_floor")] = RIDGE_FLOOR * math.sqrt(len(dur))

        def resid(x):
            return np.concatenate([self._base(x * scale, Z) / dur - 1.0, ridge * x])

        r = least_squares(resid, theta0 / scale, bounds=(0.0, np.inf), loss="soft_l1", f_scale=0.05,
                          x_scale=1.0, max_nfev=200 * len(theta0))
        theta = r.x * scale
        if not one.any():                 # no one-token pass seen: the roofline's value for one token
            theta[3] = theta[0] + theta[2]
        return theta

    # -- fitting (continued) ------------------------------------------------------
    def _train(self, X: pd.DataFrame, Z: tuple, dur: np.ndarray):
        import lightgbm as lgb

        theta = self._fit_base(Z, dur)
        base = self._base(theta, Z)
        y, init = (np.log(dur), np.log(base)) if self.log_target else (dur, base)
        ds = lgb.Dataset(X.to_numpy(), label=y, init_score=init, feature_name=list(X.columns), free_raw_data=True,
                         params={"verbosity": -1, "min_data_in_bin": 1})
        keys = shape_keys(X.to_numpy(), list(X.columns))
        support = {} if keys is None else {str(k): int(v) for k, v in pd.Series(keys).value_counts().items()}
        return theta, lgb.train(self._params(list(X.columns)), ds, num_boost_round=self.n_estimators), support

    def _tree_weight(self, support: dict, X: np.ndarray) -> np.ndarray:
        """How much of the trees' correction a batch gets: min(1, training batches of its shape /
        min_support). A shape the baseline never ran (a new batch size, prompts of a new length) is
        predicted by the cost base alone: trees do not extrapolate, the base's physics does."""
        keys = shape_keys(X, self.features_)
        if keys is None or not self.min_support:
            return np.ones(len(X))
        return np.array([min(1.0, support.get(k, 0) / self.min_support) for k in keys])

    def _out(self, fitted, X: pd.DataFrame, Z: tuple) -> np.ndarray:
        theta, booster, support = fitted
        A = X.to_numpy()
        raw = booster.predict(A, num_threads=1) * self._tree_weight(support, A)
        base = self._base(theta, Z)
        return np.exp(raw + np.log(base)) if self.log_target else np.maximum(raw + base, 1.0)

    @staticmethod
    def _clean(batches: pd.DataFrame) -> pd.DataFrame:
        b = _batches_of(batches)
        if "dur" not in b.columns:
            raise ValueError("batches need a 'dur' column")
        return b[pd.to_numeric(b["dur"], errors="coerce").fillna(0) > 0]

    def fit(self, batches, y=None) -> "WorkloadModel":
        """Fit on a normal recording's batches (a DataFrame or a Trace); `y` defaults to batches.dur."""
        b = self._clean(batches) if y is None else _batches_of(batches)
        cols = self.columns or workload_columns(b)
        if not cols:
            raise ValueError(f"batches have none of the workload columns {WORKLOAD_COLUMNS}")
        if len(b) < 20:
            raise ValueError(f"need at least 20 batches to fit a workload model (got {len(b)})")
        X = workload_features(b, cols, self.history)
        dur = (pd.to_numeric(b["dur"]) if y is None else pd.Series(np.asarray(y), index=b.index)).to_numpy(np.float64)
        self.columns_, self.features_ = cols, list(X.columns)
        Z = self.base_inputs(b)
        self.calibration_ = self._calibrate(X, Z, dur, b)
        self.base_coef_, self.booster_, self.support_ = self._train(X, Z, dur)
        self.info_ = {"n_batches": int(len(b)), "phases": b["phase"].astype(str).value_counts().to_dict()
                      if "phase" in b.columns else {},
                      "dur_ns_median": float(np.median(dur)),
                      "base": dict(zip(BASE_PARAMS, map(float, self.base_coef_)))}
        return self

    def _calibrate(self, X: pd.DataFrame, Z: tuple, dur: np.ndarray, b: pd.DataFrame) -> dict:
        """Out-of-fold relative errors -> per-phase stats of the one-sided relative error."""
        n = len(X)
        k = max(2, min(self.cv_folds, n // 10))
        # Interleaved blocks of 50 batches: folds see all workloads but not a batch's immediate neighbours
        # (shorter blocks when there are fewer than 50 per fold: with one block every fold was empty but
        # the first, which was then never predicted).
        block = min(50, max(1, n // k))
        fold = (np.arange(n) // block) % k
        oof = np.full(n, np.nan)
        for f in range(k):
            te = fold == f
            if te.all() or not te.any():
                continue
            zt, zv = tuple(z[~te] for z in Z), tuple(z[te] for z in Z)
            oof[te] = self._out(self._train(X[~te], zt, dur[~te]), X[te], zv)
        rel = dur / oof - 1.0
        excess = dur - oof
        phase = b["phase"].astype(str).to_numpy() if "phase" in b.columns else np.full(n, "all")
        cal = {"all": _stats(rel, excess)}
        for ph in np.unique(phase):
            m = phase == ph
            if m.sum() >= 30:
                cal[str(ph)] = _stats(rel[m], excess[m])
        cal["oof_mape"] = float(np.mean(np.abs(1.0 / (1.0 + rel) - 1.0)))
        # The CUSUM's in-control sample: log(dur / expected) minus its phase's median, in time order
        # (the detector sets its decision interval from the excursions of a CUSUM run over it, which
        # keeps the autocorrelation and the bursts of normal operation).
        lr = np.log(np.where(oof > 0, dur / np.where(oof > 0, oof, 1.0), np.nan))
        centred = np.full(n, np.nan)
        for key, st in cal.items():
            if isinstance(st, dict) and key != "all":
                centred[phase == key] = lr[phase == key] - st.get("log_q50", 0.0)
        rest = np.isnan(centred)
        centred[rest] = lr[rest] - cal["all"].get("log_q50", 0.0)
        order = np.argsort(pd.to_numeric(b["ts"]).to_numpy(), kind="stable") if "ts" in b.columns else np.arange(n)
        seq = centred[order]
        seq = seq[np.isfinite(seq)][-CUSUM_SAMPLE:]
        cal["cusum_resid"] = [round(float(v), 5) for v in seq]
        return cal

    # -- prediction ---------------------------------------------------------------
    def _check(self) -> None:
        if self.booster_ is None:
            raise RuntimeError("WorkloadModel is not fitted: call fit() or WorkloadModel.load()")

    def features(self, batches) -> pd.DataFrame:
        self._check()
        return workload_features(_batches_of(batches), self.columns_, self.history)[self.features_]

    def predict(self, batches) -> np.ndarray:
        """Expected dur (ns, float64) of each batch."""
        X = self.features(batches)
        if len(X) == 0:
            return np.empty(0)
        return self._out((self.base_coef_, self.booster_, self.support_), X, self.base_inputs(_batches_of(batches)))

    def feature_row(self, batch) -> np.ndarray:
        """The feature vector (model order) of one batch given as a mapping, with plain floats (no pandas)."""
        return self._row(batch)[0]

    def _row_values(self, batch) -> tuple[dict, tuple, float, float]:
        """One batch's feature values (by name), its ubatch sizes, kv_tokens and prefill tokens,
        as plain floats (no numpy: on the online path each numpy call costs microseconds)."""
        self._check()
        get = batch.get if hasattr(batch, "get") else (lambda k, d=None: getattr(batch, k, d))
        d: dict = {}
        for c in self.columns_:
            v = get(c)
            if c == "phase":
                d["phase"] = float(PHASE_CODES.get(str(v), -1)) if v is not None else -1.0
            else:
                try:
                    d[c] = float("nan") if v is None else float(v)
                except (TypeError, ValueError):
                    d[c] = float("nan")
        if "phase" not in self.columns_ and "n_prefill_tokens" in d and "n_decode_tokens" in d:
            p, q = d["n_prefill_tokens"] > 0, d["n_decode_tokens"] > 0
            d["phase"] = 2.0 if p and q else (1.0 if p else 0.0)
        for name in self.features_:
            if name in d:
                continue
            if name == "seq_runs":
                m = d["seq_mask"]
                m = int(m) if m == m else 0  # NaN -> 0, as _runs does
                d[name] = float(bin(m & ~(m << 1)).count("1"))
            elif name == "ctx_per_seq":
                d[name] = d["kv_tokens"] / max(d["n_seqs"], 1.0)
            elif name == "prev_n_tokens":
                v = get("prev_n_tokens")
                d[name] = float("nan") if v is None else float(v)
            else:
                d[name] = float(DERIVED[name][1](d))
        ub = _ubatch_sizes_cached(*(d.get(c) if c in self.columns_ else None for c in UBATCH_INPUTS),
                                  n_ubatch=self.n_ubatch)
        kv0 = d.get("kv_tokens", 0.0)
        kv0 = kv0 if kv0 == kv0 else 0.0   # NaN -> 0
        pf0 = d.get("n_prefill_tokens", 0.0)
        pf0 = pf0 if pf0 == pf0 else 0.0
        return d, ub, kv0, pf0

    def _row(self, batch) -> tuple[np.ndarray, tuple]:
        d, ub, kv0, pf0 = self._row_values(batch)
        row = np.array([[d[f] for f in self.features_]], dtype=np.float64)
        U = np.array([ub if ub else (0.0,)], dtype=np.float64)
        return row, (U, np.array([kv0]), np.array([pf0 * kv0]))

    def prepare_one(self) -> None:
        """Build predict_one's one-row predictor now (prismkit/detect/forest.py: tens of ms)."""
        self._check()
        row_predictor(self.booster_, len(self.features_))
        self._row_model()

    def _row_model(self):
        """predict_one in C (forest.row_model) for this booster, or None; built once."""
        cached = self.__dict__.get("_row_model_cache")
        if cached is None or cached[0] is not self.booster_:
            cached = self._row_model_cache = [self.booster_, row_model(self), 0]   # [booster, RowModel, checked]
        return cached[1]

    def predict_one(self, batch, prev_n_tokens=None) -> float:
        """Expected dur (ns) of one batch given as a mapping (dict, Series, namedtuple); no pandas.

        Equal to ``predict`` on the same row (the same float operations in the same order, on
        Python floats instead of one-row arrays). With the history feature the mapping carries
        ``prev_n_tokens``, or it is passed here (the OnlineDetector's).

        For a dict, where the native part is built, one C call does it all (forest.row_model:
        ~3 us, against ~20 in Python, and far less after a cold wakeup). Its first
        FAST_CHECKS answers are checked against the Python path's, bit for bit; on any
        difference it is dropped with a warning.
        """
        fast = self._row_model() if type(batch) is dict else None
        if fast is not None:
            try:
                got = fast.predict(batch) if prev_n_tokens is None else fast.predict(batch, prev_n_tokens)
            except (TypeError, ValueError, OverflowError):   # (the Python path says what is wrong)
                got = None
            if got is not None:
                cached = self._row_model_cache
                if cached[2] >= FAST_CHECKS:
                    return got
                want = self._predict_one_py(batch, prev_n_tokens)
                if got == want or (got != got and want != want):
                    cached[2] += 1
                    return got
                import warnings

                warnings.warn(f"the native predict_one gave {got!r} where Python gives {want!r}: "
                              f"prismkit uses the Python path for this model", RuntimeWarning, stacklevel=2)
                cached[1] = None
                return want
        return self._predict_one_py(batch, prev_n_tokens)

    def _predict_one_py(self, batch, prev_n_tokens=None) -> float:
        if prev_n_tokens is not None:
            get = batch.get if hasattr(batch, "get") else (lambda k, d=None: getattr(batch, k, d))
            batch = {**{c: get(c) for c in self.columns_}, "prev_n_tokens": prev_n_tokens}
        d, ub, kv0, pf0 = self._row_values(batch)
        values = [d[f] for f in self.features_]
        raw = row_predictor(self.booster_, len(values))(values)
        if self.min_support and "n_tokens" in self.features_:   # _tree_weight (shape_keys) for one row
            p = d["phase"] if "phase" in self.features_ else 0.0
            key = f"{int(p) if p == p else -1}:{_shape_bin(d['n_tokens'])}"
            raw = raw * min(1.0, self.support_.get(key, 0) / self.min_support)
        fixed, floor, per_token, one, per_ctx, pre_ctx = self._base_coef_floats()
        acc = 0.0                                   # _base for one row
        for u in (ub if ub else (0.0,)):
            u = float(u)
            acc = acc + (one if u == 1 else (fixed + max(floor, per_token * u) if u > 0 else 0.0))
        base = max(acc + per_ctx * kv0 + pre_ctx * (pf0 * kv0), 1.0)
        if self.log_target:
            return float(np.exp(np.float64(raw) + np.log(np.float64(base))))
        return float(max(raw + base, 1.0))

    def _base_coef_floats(self) -> tuple[float, ...]:
        cached = getattr(self, "_base_coef_cache", None)
        if cached is None or cached[0] is not self.base_coef_:
            cached = self._base_coef_cache = (self.base_coef_, tuple(float(t) for t in self.base_coef_))
        return cached[1]

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, batches, by: str | None = "group") -> pd.DataFrame:
        """Errors on (held-out) batches: n, MAPE, median APE, share within 10%, median ratio.

        One row per workload group (phase x batch-size bin, `by='group'`),
        per phase (`by='phase'`), or only overall (`by=None`); last row 'all'.
        """
        b = self._clean(batches)
        exp = self.predict(b)
        groups = None if by is None else (workload_groups(b) if by == "group" else b[by].astype(str))
        return error_table(b["dur"].to_numpy(np.float64), exp, groups)

    def score(self, batches) -> float:
        """MAPE on `batches` (lower is better)."""
        return float(self.evaluate(batches, by=None).loc["all", "mape"])

    # -- persistence ---------------------------------------------------------------------
    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("columns", "log_target", "objective", "n_estimators", "learning_rate",
                                              "num_leaves", "min_child_samples", "monotone", "cv_folds", "seed",
                                              "huber_alpha", "history", "n_ubatch", "min_support")}

    def save(self, path: str | os.PathLike) -> Path:
        """Write one JSON file: parameters, columns, features, calibration and the LightGBM model text."""
        self._check()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "params": self.get_params(), "columns": self.columns_,
               "features": self.features_, "base": "ubatch_roofline", "base_params": BASE_PARAMS,
               "base_coef": [float(c).hex() for c in self.base_coef_],
               "calibration": self.calibration_, "info": self.info_, "support": self.support_,
               "booster": self.booster_.model_to_string()}
        path.write_text(json.dumps(doc))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WorkloadModel":
        import lightgbm as lgb

        doc = json.loads(Path(path).read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path}: not a prismkit workload model")
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: workload model format version {doc.get('version')}, this prismkit reads "
                             f"version {FORMAT_VERSION} (refit it: prism eval model BASELINE --save {path})")
        m = cls(**doc["params"])
        m.columns_, m.features_ = doc["columns"], doc["features"]
        m.calibration_, m.info_ = doc["calibration"], doc.get("info", {})
        m.base_coef_ = np.array([float.fromhex(c) for c in doc["base_coef"]])
        m.support_ = {str(k): int(v) for k, v in doc.get("support", {}).items()}
        m.booster_ = lgb.Booster(model_str=doc["booster"])
        return m

    def __repr__(self) -> str:
        state = f"fitted on {self.info_.get('n_batches')} batches, features {self.features_}" \
            if self.booster_ is not None else "not fitted"
        return f"WorkloadModel({state})"


def _stats(rel: np.ndarray, excess: np.ndarray, winsor: float | None = None) -> dict:
    """Stats of the relative error, of its one-sided (positive) part, and of the excess time (ns).

    ``mean``/``std`` (what the control limits use) are those of the one-sided
    error winsorized at its `winsor` quantile (default: the top 1%, and at
    least the 10 largest): a handful of scheduler hiccups in the baseline (a
    10 ms preemption of an 8 ms batch) must not set the limit for everything
    else; they are the persistence rule's business.
    ``mean_raw``/``std_raw`` keep the plain values.
    """
    ok = np.isfinite(rel) & np.isfinite(excess)
    rel, excess = rel[ok], excess[ok]
    if not len(rel):
        return {"n": 0, "mean": 0.0, "std": 0.0}
    pos = np.maximum(rel, 0.0)
    if winsor is None:
        winsor = max(0.8, min(0.99, 1.0 - 10.0 / len(pos)))
    pos_w = np.minimum(pos, np.quantile(pos, winsor))
    q = np.quantile(rel, [0.5, 0.9, 0.99, 0.999])
    xq = np.quantile(np.maximum(excess, 0.0), [0.99, 0.999])
    lr = np.log1p(rel[rel > -1.0])
    return {"n": int(len(rel)), "mean": float(pos_w.mean()), "std": float(pos_w.std()),
            "log_q50": float(np.median(lr)) if len(lr) else 0.0,
            "mean_raw": float(pos.mean()), "std_raw": float(pos.std()),
            "rel_mean": float(rel.mean()), "rel_std": float(rel.std()), "q50": float(q[0]), "q90": float(q[1]),
            "q99": float(q[2]), "q999": float(q[3]), "excess_q99_ns": float(xq[0]),
            "excess_q999_ns": float(xq[1])}


def holdout_split(batches: pd.DataFrame, test_frac: float = 0.3, how: str = "time",
                  seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test split of batches: 'time' (the last `test_frac`), 'random', or 'blocks' (every k-th block of 50)."""
    b = _batches_of(batches).sort_values("ts")
    n = len(b)
    if how == "time":
        cut = int(round(n * (1 - test_frac)))
        return b.iloc[:cut], b.iloc[cut:]
    if how == "random":
        m = np.random.default_rng(seed).random(n) < test_frac
    elif how == "blocks":
        every = max(2, int(round(1 / test_frac)))
        m = (np.arange(n) // 50) % every == every - 1
    else:
        raise ValueError("how must be 'time', 'random' or 'blocks'")
    return b[~m], b[m]


def leave_group_out(batches, model_factory=WorkloadModel, min_group: int = 20) -> pd.DataFrame:
    """For each workload group: fit on every other group, evaluate on it (extrapolation to unseen workloads).

    One row per held-out group, then 'all': the errors pooled over every held-out batch.
    """
    b = WorkloadModel._clean(batches)
    groups = workload_groups(b)
    obs, exp, names = [], [], []
    for g in sorted(groups.unique()):
        te = (groups == g).to_numpy()
        if te.sum() < min_group or (~te).sum() < 20:
            continue
        m = model_factory().fit(b[~te])
        obs.append(b[te]["dur"].to_numpy(np.float64))
        exp.append(m.predict(b[te]))
        names += [g] * int(te.sum())
    if not obs:
        return pd.DataFrame()
    out = error_table(np.concatenate(obs), np.concatenate(exp), pd.Series(names))
    out.index.name = "held_out_group"
    return out
