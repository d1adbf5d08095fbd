"""Compact storage of slice arguments, and the lazy ``slices['args']`` column.

Arguments (debug annotations) stay in the decoder's flat arrays, grouped by
event (``ev_offsets[r]:ev_offsets[r+1]`` are event r's entries). The ``args`` column of the
slices DataFrame is an :class:`ArgsArray`: each element reads as a ``dict``
(or ``None`` when the slice has none), built only when it is looked at, so a
million slices cost a few bytes each until you ask for their dicts.
Vectorized access to one key: :meth:`ArgStore.column` (``Trace.arg``).
"""
from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray, ExtensionDtype

from . import _backend

A_INT, A_UINT, A_DOUBLE, A_BOOL, A_STR, A_PTR, A_JSON, A_OBJ, A_NONE = range(9)


class ArgStore:
    """All slices' arguments, as the decoder left them (grouped by event, no copy).

    Entries ``ev_offsets[r]:ev_offsets[r+1]`` belong to event row r; a slice's
    arguments are its BEGIN event's entries, then its END event's (END wins on
    a repeated key).
    """

    def __init__(self, ev_offsets: np.ndarray, ar_ev: np.ndarray, key: np.ndarray, type_: np.ndarray,
                 val: np.ndarray, strings: list, objects: list, begin_rows: np.ndarray, end_rows: np.ndarray,
                 e2s: np.ndarray) -> None:
        self.ev_offsets = np.ascontiguousarray(ev_offsets, dtype=np.int32)
        self.ar_ev = np.ascontiguousarray(ar_ev, dtype=np.int32)
        self.key = np.ascontiguousarray(key, dtype=np.int32)
        self.type = np.ascontiguousarray(type_, dtype=np.int8)
        self.val = np.ascontiguousarray(val, dtype=np.int64)
        self.strings = strings
        self.objects = objects
        self.begin_rows = np.ascontiguousarray(begin_rows, dtype=np.int32)
        self.end_rows = np.ascontiguousarray(end_rows, dtype=np.int32)
        self.e2s = np.ascontiguousarray(e2s, dtype=np.int32)
        self._codes: dict[str, int] | None = None

    @property
    def n_slices(self) -> int:
        return len(self.begin_rows)

    def dicts(self, rows) -> list:
        rows = np.asarray(rows, dtype=np.int64)
        return _backend.build_args(np.ascontiguousarray(self.begin_rows[rows]),
                                   np.ascontiguousarray(self.end_rows[rows]), self.ev_offsets, self.key,
                                   self.type, self.val, self.strings, self.objects)

    def count(self, rows) -> np.ndarray:
        """Number of argument entries of each slice row."""
        rows = np.asarray(rows, dtype=np.int64)
        off = self.ev_offsets
        b = self.begin_rows[rows]
        e = self.end_rows[rows]
        n = off[b + 1] - off[b]
        has_e = e >= 0
        ee = np.where(has_e, e, 0)
        return n + np.where(has_e, off[ee + 1] - off[ee], 0)

    def code(self, key: str) -> int:
        if self._codes is None:
            used = np.unique(self.key) if len(self.key) else []
            self._codes = {self.strings[c]: int(c) for c in used if c >= 0}
        return self._codes.get(key, -1)

    def _entries_of(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        m = np.zeros(len(self.ev_offsets) - 1, dtype=bool)
        m[self.begin_rows[rows]] = True
        e = self.end_rows[rows]
        m[e[e >= 0]] = True
        return np.nonzero(m[self.ar_ev])[0] if len(self.ar_ev) else np.empty(0, dtype=np.int64)

    def keys(self, rows=None) -> list[str]:
        """Argument names used by these slice rows (all slices by default), sorted."""
        if rows is None:
            codes = np.unique(self.key[self.e2s[self.ar_ev] >= 0]) if len(self.key) else []
        else:
            codes = np.unique(self.key[self._entries_of(rows)])
        return sorted(self.strings[c] for c in codes if c >= 0)

    def slice_of_entry(self) -> np.ndarray:
        return self.e2s[self.ar_ev] if len(self.ar_ev) else np.empty(0, dtype=np.int64)

    def values(self, entries: np.ndarray):
        """Decode entries to a numpy array (int64, float64, bool or object)."""
        types = self.type[entries]
        raw = self.val[entries]
        kinds = set(np.unique(types).tolist())
        if kinds <= {A_INT, A_UINT, A_PTR}:
            if A_UINT in kinds or A_PTR in kinds:
                u = raw.view(np.uint64)
                if len(u) and (u > np.iinfo(np.int64).max).any():
                    return u.copy()
            return raw.copy()
        if kinds <= {A_BOOL}:
            return raw != 0
        if kinds <= {A_DOUBLE}:
            return raw.view(np.float64).copy()
        if kinds <= {A_INT, A_UINT, A_DOUBLE, A_BOOL}:
            out = raw.astype(np.float64)
            d = types == A_DOUBLE
            out[d] = raw[d].view(np.float64)
            return out
        out = np.empty(len(entries), dtype=object)
        strings, objects = self.strings, self.objects
        for i, (t, x) in enumerate(zip(types.tolist(), raw.tolist())):
            if t == A_INT:
                out[i] = x
            elif t in (A_UINT, A_PTR):
                out[i] = x & ((1 << 64) - 1)
            elif t == A_DOUBLE:
                out[i] = float(np.int64(x).view(np.float64))
            elif t == A_BOOL:
                out[i] = x != 0
            elif t in (A_STR, A_JSON):
                out[i] = strings[x]
            elif t == A_OBJ:
                out[i] = objects[x]
            else:
                out[i] = None
        return out

    def column(self, key: str, rows, default=np.nan):
        """Values of argument ``key`` for slice ``rows`` (numpy array aligned with rows).

        Integer-valued keys come back as int64 when every row has the key, else
        float64 with NaN (or ``default``); strings as object arrays with None.
        When the same key is on both BEGIN and END, the END value wins.
        """
        rows = np.asarray(rows, dtype=np.int64)
        kc = self.code(key)
        n = len(rows)
        if kc < 0 or n == 0:
            return np.full(n, default, dtype=float if isinstance(default, float) else object)
        ent = np.nonzero(self.key == kc)[0]
        sl = self.e2s[self.ar_ev[ent]]
        pos = np.full(self.n_slices + 1, -1, dtype=np.int64)   # pos[-1] stays -1 for e2s == -1
        pos[rows] = np.arange(n)
        where = pos[sl]            # sl == -1 -> pos[-1] == -1
        keep = where >= 0
        ent, where = ent[keep], where[keep]
        vals = self.values(ent)
        present = np.zeros(n, dtype=bool)
        present[where] = True
        if present.all() and vals.dtype != object:
            out = np.empty(n, dtype=vals.dtype)
            out[where] = vals
            return out
        if vals.dtype.kind in "iuf" and isinstance(default, float):
            out = np.full(n, default, dtype=np.float64)
        else:
            out = np.full(n, None if isinstance(default, float) and vals.dtype == object else default, dtype=object)
        out[where] = vals
        return out

    def long_table(self) -> pd.DataFrame:
        """One row per (slice, argument): slice_id, key, value (END entries after BEGIN ones)."""
        sl = self.slice_of_entry()
        ent = np.nonzero(sl >= 0)[0]
        ent = ent[np.argsort(sl[ent], kind="stable")]
        return pd.DataFrame({
            "slice_id": sl[ent],
            "key": pd.array([self.strings[k] for k in self.key[ent].tolist()], dtype=object),
            "value": pd.Series(self.values(ent) if len(ent) else np.empty(0, dtype=object), dtype=object),
        })


def _unique_categories(strings: list) -> pd.Index:
    return pd.Index(strings, dtype=object)


class ArgsDtype(ExtensionDtype):
    name = "prismkit.args"
    type = dict
    kind = "O"
    na_value = None

    @classmethod
    def construct_array_type(cls):
        return ArgsArray

    @classmethod
    def construct_from_string(cls, string):
        if string == cls.name:
            return cls()
        raise TypeError(f"Cannot construct a '{cls.__name__}' from '{string}'")


class ArgsArray(ExtensionArray):
    """Lazy column of argument dicts: element i is ``store.dicts([rows[i]])[0]``."""

    _dtype = ArgsDtype()

    def __init__(self, store: ArgStore | None, rows: np.ndarray, extra: dict | None = None) -> None:
        self._store = store
        rows = np.asarray(rows)
        self._rows = rows if rows.dtype in (np.int32, np.int64) else rows.astype(np.int64)

    # -- construction ------------------------------------------------------
    @classmethod
    def _from_sequence(cls, scalars, *, dtype=None, copy=False):
        if isinstance(scalars, ArgsArray):
            return scalars.copy() if copy else scalars
        return _MaterializedArgs(list(scalars))

    @classmethod
    def _from_factorized(cls, values, original):
        return _MaterializedArgs(list(values))

    @classmethod
    def _concat_same_type(cls, to_concat):
        stores = {id(a._store) for a in to_concat if isinstance(a, ArgsArray) and not isinstance(a, _MaterializedArgs)}
        if len(stores) == 1 and all(not isinstance(a, _MaterializedArgs) for a in to_concat):
            return ArgsArray(to_concat[0]._store, np.concatenate([a._rows for a in to_concat]))
        out: list = []
        for a in to_concat:
            out.extend(a._materialize())
        return _MaterializedArgs(out)

    # -- basics ------------------------------------------------------------
    @property
    def dtype(self):
        return self._dtype

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        return self._rows.nbytes

    def _materialize(self) -> list:
        if len(self._rows) == 0:
            return []
        return self._store.dicts(self._rows)

    def __getitem__(self, item):
        if isinstance(item, numbers.Integral):
            return self._store.dicts(self._rows[[int(item)]])[0]
        if isinstance(item, tuple) and len(item) == 1:
            item = item[0]
        item = pd.api.indexers.check_array_indexer(self, item) if not isinstance(item, slice) else item
        return type(self)(self._store, self._rows[item])

    def __iter__(self):
        step = 65536
        for i in range(0, len(self._rows), step):
            yield from self._store.dicts(self._rows[i:i + step])

    def isna(self):
        return self._store.count(self._rows) == 0

    def take(self, indices, allow_fill=False, fill_value=None):
        indices = np.asarray(indices, dtype=np.int64)
        if allow_fill:
            if fill_value is not None:
                vals = [fill_value if i < 0 else v for i, v in zip(indices, self._store.dicts(self._rows[np.where(indices < 0, 0, indices)]))]
                return _MaterializedArgs(vals)
            if (indices < -1).any():
                raise ValueError("invalid take index")
            rows = np.where(indices < 0, -1, self._rows[np.where(indices < 0, 0, indices)] if len(self._rows) else -1)
            if (rows < 0).any():
                return _MaterializedArgs([None if r < 0 else d for r, d in zip(rows, self._store.dicts(np.where(rows < 0, 0, rows)))])
            return type(self)(self._store, rows)
        return type(self)(self._store, self._rows[indices])

    def copy(self):
        return type(self)(self._store, self._rows.copy())

    def to_numpy(self, dtype=None, copy=False, na_value=None):
        out = np.empty(len(self), dtype=object)
        out[:] = self._materialize() if len(self) else []
        return out

    def __array__(self, dtype=None, copy=None):
        return self.to_numpy()

    def __eq__(self, other):
        vals = self._materialize()
        if isinstance(other, (ExtensionArray, list, np.ndarray, pd.Series)):
            return np.array([a == b for a, b in zip(vals, list(other))], dtype=bool)
        return np.array([a == other for a in vals], dtype=bool)

    def _values_for_factorize(self):
        return np.array([repr(sorted(d.items())) if d else None for d in self._materialize()], dtype=object), None

    def _formatter(self, boxed=False):
        return repr

    def __repr__(self) -> str:
        n = len(self)
        head = self._store.dicts(self._rows[:5]) if n else []
        return f"<ArgsArray len={n}> {head}{' ...' if n > 5 else ''}"

    def get(self, key: str, default=np.nan):
        """Vectorized: the value of ``key`` for each element (see ArgStore.column)."""
        return self._store.column(key, self._rows, default)


class _MaterializedArgs(ArgsArray):
    """An ArgsArray that holds plain Python dicts (after concat with foreign data, fill, ...)."""

    def __init__(self, values: list) -> None:
        self._values = list(values)
        self._store = None
        self._rows = np.arange(len(self._values), dtype=np.int64)

    def _materialize(self) -> list:
        return list(self._values)

    def __getitem__(self, item):
        if isinstance(item, numbers.Integral):
            return self._values[int(item)]
        if isinstance(item, tuple) and len(item) == 1:
            item = item[0]
        if isinstance(item, slice):
            return _MaterializedArgs(self._values[item])
        item = pd.api.indexers.check_array_indexer(self, item)
        if item.dtype == bool:
            item = np.nonzero(item)[0]
        return _MaterializedArgs([self._values[i] for i in item])

    def __iter__(self):
        return iter(list(self._values))

    def isna(self):
        return np.array([not v for v in self._values], dtype=bool)

    def take(self, indices, allow_fill=False, fill_value=None):
        out = []
        for i in np.asarray(indices, dtype=np.int64):
            out.append(fill_value if (allow_fill and i < 0) else self._values[i])
        return _MaterializedArgs(out)

    def copy(self):
        return _MaterializedArgs(self._values)

    @property
    def nbytes(self) -> int:
        return 8 * len(self._values)

    def __repr__(self) -> str:
        return f"<ArgsArray len={len(self)}> {self._values[:5]}{' ...' if len(self) > 5 else ''}"

    def get(self, key: str, default=np.nan):
        return np.array([(v or {}).get(key, default) for v in self._values], dtype=object)
