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
The regressor is LightGBM on log(dur) (latencies span three orders of
magnitude between a one-token decode and a long prefill; the log makes the
loss relative) with an L1 loss, so that the occasional preempted batch in the
baseline does not pull the expectation up, and monotone constraints (more
tokens or more context never predicts less time).

The model also keeps the *control limits* the detector uses: fitting runs a
K-fold cross-fit on the baseline, and the out-of-fold relative errors
``dur / expected - 1`` give, per phase, the mean and standard deviation of the
one-sided relative error (LatencyPrism's mean + k sigma rule) and a few high
quantiles. Out-of-fold, because in-sample residuals of boosted trees are too
optimistic to set a limit from.

Saved as one JSON file: metadata, calibration and the LightGBM text model;
predictions after load are bit-identical.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

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
EXTRA_COLUMNS = ["seq_mask"]
# The linear cost model under the trees (non-negative coefficients, raw scale): it carries the
# model where the baseline has few batches (long prefills), the trees learn the rest.
BASE_TERMS = ["n_tokens", "n_seqs", "n_prefill_tokens", "n_decode_tokens", "prefill_x_ctx", "decode_x_ctx"]
# Latency never decreases with these (monotone constraint +1); 0 for the others.
MONOTONE = {"n_tokens", "n_prefill_tokens", "n_decode_tokens", "kv_tokens", "decode_x_ctx", "prefill_x_ctx",
            "prefill_x_tokens_x_ctx", "tokens_x_ctx"}
SIZE_BINS = [0, 1, 2, 4, 16, 64, 256, 1024, np.inf]
SIZE_LABELS = ["1", "2", "3-4", "5-16", "17-64", "65-256", "257-1024", ">1024"]
FORMAT = "prismkit.workload_model"


def _batches_of(obj) -> pd.DataFrame:
    return obj.batches if hasattr(obj, "batches") and not isinstance(obj, pd.DataFrame) else obj


def _runs(mask: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(mask, nan=0).astype(np.int64)
    starts = m & ~(m << 1)
    return np.array([bin(int(x)).count("1") for x in starts], dtype=np.float64)


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


class WorkloadModel:
    """Expected batch latency (ns) from workload columns; fit/predict like scikit-learn.

    Parameters: `columns` (workload columns to use; default: every one present
    at fit), `log_target` (fit log(dur); default True), `objective` (LightGBM
    objective on the target; default 'l1'), `n_estimators`, `learning_rate`,
    `num_leaves`, `min_child_samples`, `monotone` (monotone constraints),
    `cv_folds` (folds of the cross-fit that sets the control limits), `seed`.
    """

    def __init__(self, columns: list[str] | None = None, log_target: bool = True, objective: str = "huber",
                 n_estimators: int = 200, learning_rate: float = 0.05, num_leaves: int = 15,
                 min_child_samples: int = 5, monotone: bool = True, cv_folds: int = 5, seed: int = 0,
                 huber_alpha: float = 0.05, history: bool = False) -> None:
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
        self.booster_ = None
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

    def _base_design(self, X: pd.DataFrame) -> np.ndarray:
        terms = [t for t in BASE_TERMS if t in X.columns]
        return np.column_stack([np.ones(len(X))] + [X[t].to_numpy(np.float64) for t in terms])

    def _base_terms(self, features: list[str]) -> list[str]:
        return [t for t in BASE_TERMS if t in features]

    def _fit_base(self, X: pd.DataFrame, dur: np.ndarray) -> np.ndarray:
        """Non-negative least squares on relative error, twice (the second without outliers)."""
        from scipy.optimize import nnls

        A = self._base_design(X)
        keep = np.ones(len(dur), dtype=bool)
        coef = np.zeros(A.shape[1])
        for _ in range(2):
            w = 1.0 / dur[keep]
            scale = np.maximum(np.abs(A[keep] * w[:, None]).max(axis=0), 1e-12)
            c, _ = nnls(A[keep] * w[:, None] / scale, np.ones(keep.sum()), maxiter=50 * A.shape[1])
            coef = c / scale
            rel = A @ coef / dur - 1.0
            mad = np.median(np.abs(rel - np.median(rel)))
            keep = np.abs(rel) <= max(0.5, 5 * 1.4826 * mad)
        return coef

    def _base(self, coef: np.ndarray, X: pd.DataFrame) -> np.ndarray:
        # term by term, in a fixed order: predict_one does the same sums, so both give equal numbers
        base = np.full(len(X), coef[0])
        for j, t in enumerate(self._base_terms(list(X.columns))):
            base = base + coef[j + 1] * X[t].to_numpy(np.float64)
        return np.maximum(base, 1.0)

    def _train(self, X: pd.DataFrame, dur: np.ndarray):
        import lightgbm as lgb

        coef = self._fit_base(X, dur)
        base = self._base(coef, X)
        y, init = (np.log(dur), np.log(base)) if self.log_target else (dur, base)
        ds = lgb.Dataset(X.to_numpy(), label=y, init_score=init, feature_name=list(X.columns), free_raw_data=True,
                         params={"verbosity": -1, "min_data_in_bin": 1})
        return coef, lgb.train(self._params(list(X.columns)), ds, num_boost_round=self.n_estimators)

    def _out(self, fitted, X: pd.DataFrame) -> np.ndarray:
        coef, booster = fitted
        raw = booster.predict(X.to_numpy(), num_threads=1)
        base = self._base(coef, X)
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
        self.calibration_ = self._calibrate(X, dur, b)
        self.base_coef_, self.booster_ = self._train(X, dur)
        self.info_ = {"n_batches": int(len(b)), "phases": b["phase"].astype(str).value_counts().to_dict()
                      if "phase" in b.columns else {},
                      "dur_ns_median": float(np.median(dur))}
        return self

    def _calibrate(self, X: pd.DataFrame, dur: np.ndarray, b: pd.DataFrame) -> dict:
        """Out-of-fold relative errors -> per-phase stats of the one-sided relative error."""
        n = len(X)
        k = max(2, min(self.cv_folds, n // 10))
        # Interleaved blocks of 50 batches: folds see all workloads but not a batch's immediate neighbours.
        fold = (np.arange(n) // 50) % k
        oof = np.empty(n)
        for f in range(k):
            te = fold == f
            if te.all() or not te.any():
                continue
            oof[te] = self._out(self._train(X[~te], dur[~te]), X[te])
        rel = dur / oof - 1.0
        excess = dur - oof
        phase = b["phase"].astype(str).to_numpy() if "phase" in b.columns else np.full(n, "all")
        cal = {"all": _stats(rel, excess)}
        for ph in np.unique(phase):
            m = phase == ph
            if m.sum() >= 30:
                cal[str(ph)] = _stats(rel[m], excess[m])
        cal["oof_mape"] = float(np.mean(np.abs(1.0 / (1.0 + rel) - 1.0)))
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
        return self._out((self.base_coef_, self.booster_), X)

    def feature_row(self, batch) -> np.ndarray:
        """The feature vector (model order) of one batch given as a mapping, with plain floats (no pandas)."""
        self._check()
        get = batch.get if hasattr(batch, "get") else (lambda k, d=None: getattr(batch, k, d))
        d: dict = {}
        for c in self.columns_:
            v = get(c)
            if c == "phase":
                d["phase"] = float(PHASE_CODES.get(str(v), -1)) if v is not None else -1.0
            else:
                d[c] = float("nan") if v is None else float(v)
        if "phase" not in self.columns_ and "n_prefill_tokens" in d and "n_decode_tokens" in d:
            p, q = d["n_prefill_tokens"] > 0, d["n_decode_tokens"] > 0
            d["phase"] = 2.0 if p and q else (1.0 if p else 0.0)
        for name in self.features_:
            if name in d:
                continue
            if name == "seq_runs":
                d[name] = float(_runs(np.array([d["seq_mask"]]))[0])
            elif name == "ctx_per_seq":
                d[name] = d["kv_tokens"] / max(d["n_seqs"], 1.0)
            elif name == "prev_n_tokens":
                v = get("prev_n_tokens")
                d[name] = float("nan") if v is None else float(v)
            else:
                d[name] = float(DERIVED[name][1](d))
        return np.array([[d[f] for f in self.features_]], dtype=np.float64)

    def predict_one(self, batch) -> float:
        """Expected dur (ns) of one batch given as a mapping (dict, Series, namedtuple); no pandas.

        Equal to ``predict`` on the same row. With the history feature the
        mapping carries ``prev_n_tokens`` (the OnlineDetector adds it).
        """
        row = self.feature_row(batch)
        raw = self.booster_.predict(row, num_threads=1)
        base = np.full(1, self.base_coef_[0])
        for j, t in enumerate(self._base_terms(self.features_)):
            base = base + self.base_coef_[j + 1] * row[:, self.features_.index(t)]
        base = np.maximum(base, 1.0)
        out = np.exp(raw + np.log(base)) if self.log_target else np.maximum(raw + base, 1.0)
        return float(out[0])

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
                                              "huber_alpha", "history")}

    def save(self, path: str | os.PathLike) -> Path:
        """Write one JSON file: parameters, columns, features, calibration and the LightGBM model text."""
        self._check()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "version": 1, "params": self.get_params(), "columns": self.columns_,
               "features": self.features_, "base_coef": [float(c).hex() for c in self.base_coef_],
               "calibration": self.calibration_, "info": self.info_,
               "booster": self.booster_.model_to_string()}
        path.write_text(json.dumps(doc))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WorkloadModel":
        import lightgbm as lgb

        doc = json.loads(Path(path).read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path}: not a prismkit workload model")
        m = cls(**doc["params"])
        m.columns_, m.features_ = doc["columns"], doc["features"]
        m.calibration_, m.info_ = doc["calibration"], doc.get("info", {})
        m.base_coef_ = np.array([float.fromhex(c) for c in doc["base_coef"]])
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
    return {"n": int(len(rel)), "mean": float(pos_w.mean()), "std": float(pos_w.std()),
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
    """For each workload group: fit on every other group, evaluate on it (extrapolation to unseen workloads)."""
    b = WorkloadModel._clean(batches)
    groups = workload_groups(b)
    rows = []
    for g in sorted(groups.unique()):
        te = (groups == g).to_numpy()
        if te.sum() < min_group or (~te).sum() < 20:
            continue
        m = model_factory().fit(b[~te])
        t = m.evaluate(b[te], by=None).rename(index={"all": g})
        rows.append(t)
    out = pd.concat(rows) if rows else pd.DataFrame()
    out.index.name = "held_out_group"
    return out
