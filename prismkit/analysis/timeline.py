"""Interval arithmetic shared by the analyzers: who owns each nanosecond of a thread.

A thread's time is labelled by the highest-priority activity covering it
(off-CPU beats any stage, a stage beats "other"); `LabelTimeline.time_in`
then integrates each label over many windows at once with searchsorted, so a
breakdown of thousands of batches costs a few vectorised numpy calls.
"""
from __future__ import annotations

import numpy as np


class LabelTimeline:
    """Non-overlapping labelled segments built from possibly overlapping intervals."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, labels: np.ndarray, n_labels: int) -> None:
        """`labels` are priorities: 0 wins over 1, which wins over 2, ..."""
        self.n_labels = n_labels
        starts = np.asarray(starts, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        keep = ends > starts
        starts, ends, labels = starts[keep], ends[keep], labels[keep]
        if len(starts) == 0:
            self.bounds = np.zeros(1, dtype=np.int64)
            self.cum = np.zeros((1, n_labels), dtype=np.int64)
            self._owner = np.zeros(0, dtype=np.int64)
            return
        # Sweep: +1 at a start, -1 at an end, per label; the owner of each
        # elementary segment is the lowest label with a positive count.
        points = np.concatenate([starts, ends])
        order = np.argsort(points, kind="stable")
        points = points[order]
        deltas = np.concatenate([np.ones_like(starts), -np.ones_like(ends)])[order]
        which = np.concatenate([labels, labels])[order]
        active = np.zeros((len(points), n_labels), dtype=np.int64)
        active[np.arange(len(points)), which] = deltas
        active = np.cumsum(active, axis=0)
        bounds = np.unique(points)
        # state after the last event at each distinct time point
        idx = np.searchsorted(points, bounds, side="right") - 1
        state = active[idx] > 0
        owner = np.where(state.any(axis=1), state.argmax(axis=1), -1)
        seg_len = np.diff(bounds)
        owner = owner[:-1]
        per_label = np.zeros((len(seg_len), n_labels), dtype=np.int64)
        has = owner >= 0
        per_label[np.arange(len(seg_len))[has], owner[has]] = seg_len[has]
        self.bounds = bounds
        self.cum = np.vstack([np.zeros((1, n_labels), dtype=np.int64), np.cumsum(per_label, axis=0)])
        self._owner = owner

    def _cum_at(self, t: np.ndarray) -> np.ndarray:
        """Time owned by each label before instant t (vectorised over t)."""
        t = np.asarray(t, dtype=np.int64)
        if len(self.bounds) < 2:
            return np.zeros((len(t), self.n_labels), dtype=np.int64)
        i = np.clip(np.searchsorted(self.bounds, t, side="right") - 1, 0, len(self.bounds) - 2)
        base = self.cum[i]
        partial = np.clip(t - self.bounds[i], 0, None)
        partial = np.minimum(partial, self.bounds[i + 1] - self.bounds[i])
        before = t < self.bounds[0]
        partial[before] = 0
        out = base.copy()
        own = self._owner[i]
        rows = np.nonzero(own >= 0)[0]
        out[rows, own[rows]] += partial[rows]
        after = t >= self.bounds[-1]
        out[after] = self.cum[-1]
        return out

    def time_in(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """(n_windows, n_labels) time each label owns inside each [start, end)."""
        return self._cum_at(end) - self._cum_at(start)
