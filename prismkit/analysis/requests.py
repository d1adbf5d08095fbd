"""Per-request latency: where each request's end-to-end time goes, and SLOs.

    rb = RequestBreakdown(trace)
    rb.per_request()              # queue, prefill, decode, stalls, streaming: sum = E2E
    rb.distributions()            # TTFT / TPOT / E2E percentiles
    rb.slo_attainment(ttft_ms=500, tpot_ms=50)

Requests come from the server's socket (the http pack); the batches that
served a request are found through the sequence slot it occupied: its prefill
batch is the last one with prefilling slots that ended before its first token,
and its other batches are those carrying that slot until it ended.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PARTS = ["queue_ns", "prefill_ns", "decode_ns", "stall_ns", "streaming_ns"]


def _bits(mask: int) -> list[int]:
    return [i for i in range(32) if mask >> i & 1]


class RequestBreakdown:
    def __init__(self, trace) -> None:
        self.trace = trace
        self._per_request: pd.DataFrame | None = None

    def per_request(self) -> pd.DataFrame:
        if self._per_request is not None:
            return self._per_request
        req = self.trace.requests.copy()
        cols = [*req.columns, "slot", "n_batches", *PARTS]
        b = self.trace.batches
        if req.empty:
            self._per_request = pd.DataFrame(columns=cols)
            return self._per_request
        req = req.sort_values("ts_arrival").reset_index(drop=True)
        for c in ("slot", "n_batches", *PARTS):
            req[c] = np.nan
        if b.empty or "seq_mask" not in b.columns:
            return self._finish(req)
        b = b.sort_values("ts").reset_index(drop=True)
        b_start = b["ts"].to_numpy()
        b_end = (b["ts"] + b["dur"]).to_numpy()
        seq_mask = b["seq_mask"].fillna(0).astype(np.int64).to_numpy()
        prefill_mask = b.get("prefill_mask", pd.Series(0, index=b.index)).fillna(0).astype(np.int64).to_numpy()
        busy_until: dict[int, int] = {}  # slot -> end of the request occupying it
        for i in req.sort_values("ts_first_token").index:
            r = req.loc[i]
            ft, end, arr = r["ts_first_token"], r["ts_end"], r["ts_arrival"]
            if pd.isna(ft):
                continue
            # prefill batch: the last batch with prefilling slots ending before the first token
            cand = np.nonzero((b_end <= ft) & (b_start >= arr) & (prefill_mask != 0))[0]
            if len(cand) == 0:
                continue
            pb = cand[-1]
            free = [s for s in _bits(int(prefill_mask[pb])) if busy_until.get(s, -1) <= b_start[pb]]
            slot = (free or _bits(int(prefill_mask[pb])))[0]
            busy_until[slot] = int(end)
            # Its batches: from its first prefilling batch (chunked prefill may take several)
            # to its end, every batch that carries its slot.
            carries = ((seq_mask >> slot) & 1) == 1
            starts = np.nonzero((b_start >= arr) & (((prefill_mask >> slot) & 1) == 1))[0]
            first_idx = starts[0] if len(starts) else pb
            mine = np.nonzero((np.arange(len(b)) >= first_idx) & (b_end <= end) & carries)[0]
            if len(mine) == 0:
                continue
            prefill = ((prefill_mask[mine] >> slot) & 1) == 1
            dur = b_end[mine] - b_start[mine]
            first, last = mine[0], mine[-1]
            req.loc[i, "slot"] = slot
            req.loc[i, "n_batches"] = len(mine)
            req.loc[i, "queue_ns"] = b_start[first] - arr
            req.loc[i, "prefill_ns"] = dur[prefill].sum()
            req.loc[i, "decode_ns"] = dur[~prefill].sum()
            req.loc[i, "stall_ns"] = (b_end[last] - b_start[first]) - dur.sum()
            req.loc[i, "streaming_ns"] = end - b_end[last]
        return self._finish(req)

    def _finish(self, req: pd.DataFrame) -> pd.DataFrame:
        self._per_request = req
        return req

    def distributions(self, qs=(50, 90, 99)) -> pd.DataFrame:
        r = self.trace.requests
        rows = {}
        for col, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E")):
            vals = r[col].dropna() / 1e6 if col in r.columns else pd.Series(dtype=float)
            rows[name] = {f"p{q}": (np.percentile(vals, q) if len(vals) else np.nan) for q in qs}
            rows[name]["mean"] = vals.mean() if len(vals) else np.nan
            rows[name]["n"] = len(vals)
        out = pd.DataFrame(rows).T
        out.index.name = "request latency (ms)"
        return out

    def slo_attainment(self, ttft_ms: float | None = None, tpot_ms: float | None = None) -> pd.DataFrame:
        """Share of requests meeting each SLO and both."""
        r = self.trace.requests
        if r.empty:
            return pd.DataFrame(columns=["slo", "threshold_ms", "met", "total", "attainment"])
        rows, ok_all = [], pd.Series(True, index=r.index)
        for col, thr in (("ttft", ttft_ms), ("tpot", tpot_ms)):
            if thr is None:
                continue
            ok = (r[col] / 1e6 <= thr) | (r[col].isna() & (col == "tpot"))
            ok_all &= ok
            rows.append({"slo": col.upper(), "threshold_ms": thr, "met": int(ok.sum()), "total": len(r),
                         "attainment": ok.mean()})
        if len(rows) > 1:
            rows.append({"slo": "both", "threshold_ms": np.nan, "met": int(ok_all.sum()), "total": len(r),
                         "attainment": ok_all.mean()})
        return pd.DataFrame(rows)
