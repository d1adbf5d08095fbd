"""One-row predictions of a LightGBM booster for the online detector.

`row_predictor(booster, n_features)` gives a function of one row (a list of floats) that
returns what ``booster.predict`` would for it, by the fastest of:

1. `_forest.Forest` (prismkit/detect/_forest.c): the trees as one flat array of 24-byte
   nodes, built here from ``Booster.dump_model()``. With a cold cache (a thread woken on a
   CPU the server just used) LightGBM's own layout costs ~100 us a row for 200 trees, the
   flat one ~17 (benchmarks/bench_detector_predict.py, side by side). Used only after it
   reproduced ``booster.predict`` exactly on probe rows built from the trees' own
   thresholds (with NaN, zero and the neighbouring floats).
2. LightGBM's single-row fast path (LGBM_BoosterPredictForMatSingleRowFast).
3. ``booster.predict`` itself.

`row_model(model)` goes one step further for WorkloadModel.predict_one: the features, the
trees and the cost base of one batch in one C call (`_forest.RowModel`), or None where the
model has something it does not implement.
"""
from __future__ import annotations

import ctypes
import math
import struct
import threading
import weakref
from typing import Callable

import numpy as np

try:
    from . import _forest
except ImportError:  # the optional native part was not built
    _forest = None

NODE = struct.Struct("<diihBB4x")   # _forest.c's Node: threshold, left, right, feature, default_left, missing_type
MISSING_TYPES = {"None": 0, "Zero": 1, "NaN": 2}


class _Unsupported(Exception):
    pass


def forest_arrays(model: dict) -> tuple[bytes, bytes, bytes]:
    """(nodes, leaves, roots) of Booster.dump_model()'s trees, nodes in preorder (children
    after their parent); raises _Unsupported for what _forest.c does not implement."""
    if model.get("num_class", 1) != 1 or model.get("num_tree_per_iteration", 1) != 1:
        raise _Unsupported("more than one tree per iteration")
    nodes: list[bytes] = []
    leaves: list[float] = []
    roots: list[int] = []

    def leaf(t: dict) -> int:
        if "leaf_coeff" in t:
            raise _Unsupported("linear trees")
        leaves.append(float(t["leaf_value"]))
        return ~(len(leaves) - 1)

    def node(t: dict) -> int:
        if "split_index" not in t:
            return leaf(t)
        if t.get("decision_type") != "<=":
            raise _Unsupported(f"decision type {t.get('decision_type')!r} (categorical splits)")
        i = len(nodes)
        nodes.append(b"")   # (its children get the next indices)
        left, right = node(t["left_child"]), node(t["right_child"])
        nodes[i] = NODE.pack(float(t["threshold"]), left, right, int(t["split_feature"]),
                             bool(t["default_left"]), MISSING_TYPES[t.get("missing_type", "None")])
        return i

    for tree in model["tree_info"]:
        roots.append(node(tree["tree_structure"]))
    return b"".join(nodes), struct.pack(f"<{len(leaves)}d", *leaves), struct.pack(f"<{len(roots)}i", *roots)


def probe_rows(model: dict, n_features: int, n: int = 256, seed: int = 0) -> np.ndarray:
    """Rows that take every kind of branch: each feature drawn from its split thresholds, the
    floats just above and below them, zero, -0.0, a denormal, NaN and values beyond them."""
    values: list[list[float]] = [[0.0, -0.0, 1e-40, math.nan, -1e9, 1e9] for _ in range(n_features)]

    def walk(t: dict) -> None:
        if "split_index" in t:
            thr = float(t["threshold"])
            values[t["split_feature"]] += [thr, math.nextafter(thr, math.inf), math.nextafter(thr, -math.inf)]
            walk(t["left_child"])
            walk(t["right_child"])

    for tree in model["tree_info"]:
        walk(tree["tree_structure"])
    rng = np.random.default_rng(seed)
    return np.array([[v[rng.integers(len(v))] for v in values] for _ in range(n)], dtype=np.float64)


def compile_forest(booster, n_features: int):
    """A _forest.Forest that predicts exactly as booster.predict, or None (no native part,
    an unsupported model, or any difference on the probe rows)."""
    if _forest is None or _forest.NODE_SIZE != NODE.size:   # (a layout the C file no longer has)
        return None
    try:
        model = booster.dump_model()
        forest = _forest.Forest(*forest_arrays(model), n_features)
        X = probe_rows(model, n_features)
        want = booster.predict(X, num_threads=1)
        got = np.array([forest.predict(row) for row in X.tolist()])
    except (_Unsupported, ValueError, KeyError, struct.error):
        return None
    return forest if np.array_equal(got, want, equal_nan=True) else None


class _SingleRowPredictor:
    """LightGBM's single-row fast path for one booster (LGBM_BoosterPredictForMatSingleRowFast).

    Booster.predict's Python-side set-up per call (parameter strings, array checks, a
    predictor object) cost ~150-200 us of the ~0.5 ms a batch took on the recorder's thread.
    The fast path sets up once and then only passes a pointer. Same trees, same output. One
    set-up per thread (LightGBM's FastConfig is not thread-safe).
    """

    def __init__(self, booster, n_features: int) -> None:
        from lightgbm.basic import _LIB

        self._lib = _LIB
        self._booster = booster
        self._n = n_features
        self._local = threading.local()

    def _state(self):
        st = getattr(self._local, "st", None)
        if st is None:
            from lightgbm.basic import _c_str, _safe_call

            cfg = ctypes.c_void_p()
            _safe_call(self._lib.LGBM_BoosterPredictForMatSingleRowFastInit(
                self._booster._handle, ctypes.c_int(0),   # C_API_PREDICT_NORMAL, as Booster.predict
                ctypes.c_int(0), ctypes.c_int(-1),        # all iterations (the best one, as Booster.predict)
                ctypes.c_int(1), ctypes.c_int32(self._n),  # float64 rows of n features
                _c_str("num_threads=1"), ctypes.byref(cfg)))
            out = np.zeros(1, dtype=np.float64)
            st = self._local.st = (cfg, out, out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), ctypes.c_int64(0))
            weakref.finalize(self, self._lib.LGBM_FastConfigFree, cfg)
        return st

    def __call__(self, values: list[float]) -> float:
        cfg, out, out_p, n = self._state()
        row = np.array([values], dtype=np.float64)
        if self._lib.LGBM_BoosterPredictForMatSingleRowFast(cfg, row.ctypes.data_as(ctypes.c_void_p),
                                                           ctypes.byref(n), out_p) != 0:
            raise RuntimeError("LightGBM single-row prediction failed")
        return float(out[0])


_PREDICTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def row_predictor(booster, n_features: int) -> Callable[[list[float]], float]:
    """predict(values) -> float for one row of n_features floats; built once per booster."""
    try:
        return _PREDICTORS[booster]
    except KeyError:
        pass
    except TypeError:   # not weak-referenceable: build one each time
        return _build(booster, n_features)
    fn = _PREDICTORS[booster] = _build(booster, n_features)
    return fn


def _build(booster, n_features: int) -> Callable[[list[float]], float]:
    forest = compile_forest(booster, n_features)
    if forest is not None:
        return forest.predict
    try:
        from lightgbm.basic import _LIB

        if hasattr(_LIB, "LGBM_BoosterPredictForMatSingleRowFast"):
            return _SingleRowPredictor(booster, n_features)
    except Exception:
        pass
    return lambda values: float(booster.predict(np.array([values], dtype=np.float64), num_threads=1)[0])


# the derived features RowModel computes, with the columns they read in the order
# model.DERIVED multiplies them (tests/test_detect.py checks RowModel against the Python path)
_PRODUCTS = {"decode_x_ctx": ("n_decode_tokens", "kv_tokens"),
             "prefill_x_ctx": ("n_prefill_tokens", "kv_tokens"),
             "prefill_x_tokens_x_ctx": ("n_prefill_tokens", "n_tokens", "kv_tokens"),
             "tokens_x_ctx": ("n_tokens", "kv_tokens")}


def row_model(model):
    """A `_forest.RowModel` computing ``model.predict_one(batch)`` for a dict batch, or None
    (no native part, no flat forest for the booster, or a feature it does not implement)."""
    from . import model as m

    if _forest is None or not hasattr(_forest, "RowModel"):
        return None
    if tuple(sorted(m.PHASE_CODES, key=m.PHASE_CODES.get)) != getattr(_forest, "PHASE_NAMES", None):
        return None     # (the C file codes the phases as model.py did when it was built)
    fn = row_predictor(model.booster_, len(model.features_))
    forest = getattr(fn, "__self__", None)
    if not isinstance(forest, _forest.Forest):
        return None
    cols = list(model.columns_)
    idx = {c: i for i, c in enumerate(cols)}
    derived_phase = "phase" not in idx and "n_prefill_tokens" in idx and "n_decode_tokens" in idx
    ops = []
    for name in model.features_:
        if name in idx:
            ops.append((_forest.OP_COL, idx[name], -1, -1))
        elif name == "phase" and derived_phase:
            ops.append((_forest.OP_PHASE, -1, -1, -1))
        elif name == "prev_n_tokens":
            ops.append((_forest.OP_PREV, -1, -1, -1))
        elif name in _PRODUCTS and all(c in idx for c in _PRODUCTS[name]):
            ins = [idx[c] for c in _PRODUCTS[name]]
            ops.append((_forest.OP_PRODUCT, ins[0], ins[1], ins[2] if len(ins) > 2 else -1))
        elif name == "ctx_per_seq" and "kv_tokens" in idx and "n_seqs" in idx:
            ops.append((_forest.OP_CTX_PER_SEQ, idx["kv_tokens"], idx["n_seqs"], -1))
        elif name == "seq_runs" and "seq_mask" in idx:
            ops.append((_forest.OP_SEQ_RUNS, idx["seq_mask"], -1, -1))
        else:
            return None
    weighted = bool(model.min_support) and "n_tokens" in model.features_
    try:
        return _forest.RowModel(
            forest, tuple(cols), idx.get("phase", -1), idx.get("n_prefill_tokens", -1),
            idx.get("n_decode_tokens", -1), tuple(ops), m._ubatch_sizes_cached, int(model.n_ubatch),
            tuple(idx.get(c, -1) for c in m.UBATCH_INPUTS), idx.get("kv_tokens", -1), idx.get("n_tokens", -1),
            int("phase" in model.features_), dict(model.support_) if weighted else None,
            float(model.min_support or 1), tuple(float(t) for t in model.base_coef_), bool(model.log_target),
            np.exp, np.log)
    except (TypeError, ValueError, OverflowError):
        return None
