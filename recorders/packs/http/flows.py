"""Which batches served a request, from times and batch attributes only.

The llama.cpp pack reports each batch (llama_decode call) with the sequence
slots it carried (`seq_mask`) and its prefill token count. The socket side
knows when a request arrived and when each of its token chunks was written.
What ties them (llama-server, continuous batching):
- a request's prompt is processed in a batch that starts after the request
  arrived, carries prefill tokens and ends before the first token's chunk is
  written (that batch samples the first token);
- while the request generates, its slot is in every batch with one token, so
  the request's batches are the n consecutive batches from that prefill
  batch on, n = its token count;
- the k-th token's chunk is written after the k-th of those batches ended
  (and, unless the HTTP thread lags, before the next one ended).
So the start is the prefill batch after arrival for which the n batches from
it satisfy causality for every chunk and have a slot in common; among those,
the start with the fewest chunks written "one batch late" wins, and a link is
only made when that winner is unique. Which slot is whose cannot be told when
all slots stay busy (every batch carries every slot), and is not needed.

Flow ids: each batch gets one id per sequence it carries (`batch_flow_ids`,
put on the llama.cpp pack's batch slice); the k-th request that claims a batch
takes its k-th id, so every id joins one request slice to one batch slice and
Perfetto draws an arrow from the request to each batch that served it.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

FLOW_NAMESPACE = 0x4854 << 40  # "HT": keeps these ids apart from other packs' flows
MAX_SLOTS = 32


def batch_flow_id(batch_id: int, k: int) -> int:
    return FLOW_NAMESPACE | (int(batch_id) << 5) | (k & (MAX_SLOTS - 1))


def slots_of(mask: int) -> list[int]:
    return [s for s in range(MAX_SLOTS) if mask >> s & 1]


def batch_flow_ids(batch: dict) -> list[int]:
    """One flow id per sequence the batch carries: the k-th request that claims it takes the k-th."""
    n = bin(int(batch.get("seq_mask") or 0)).count("1") or int(batch.get("n_seqs") or 1)
    return [batch_flow_id(batch["batch_id"], k) for k in range(min(n, MAX_SLOTS))]


@dataclass(frozen=True)
class Batch:
    ts_start: int
    ts_end: int
    batch_id: int
    seq_mask: int
    n_prefill_tokens: int


@dataclass
class Link:
    slot: int          # -1 when several slots fit
    batch_ids: list[int]
    flow_ids: list[int]
    score: float


class BatchLog:
    """Recent batches of the engine thread, in time order."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self._starts: list[int] = []

    def __len__(self) -> int:
        return len(self.batches)

    def add(self, batch: dict) -> None:
        b = Batch(int(batch["ts_start"]), int(batch["ts_end"]), int(batch["batch_id"]),
                  int(batch.get("seq_mask") or 0), int(batch.get("n_prefill_tokens") or 0))
        if self.batches and b.ts_start < self.batches[-1].ts_start:
            i = bisect.bisect(self._starts, b.ts_start)
            self.batches.insert(i, b)
            self._starts.insert(i, b.ts_start)
        else:
            self.batches.append(b)
            self._starts.append(b.ts_start)

    def forget_before(self, ts: int) -> None:
        i = bisect.bisect_left(self._starts, ts)
        if i:
            del self.batches[:i]
            del self._starts[:i]

    def between(self, t0: int, t1: int) -> list[Batch]:
        """Batches that start at or after t0 and end at or before t1."""
        i = bisect.bisect_left(self._starts, t0)
        out = []
        for b in self.batches[i:]:
            if b.ts_start > t1:
                break
            if b.ts_end <= t1:
                out.append(b)
        return out


def link_request(log: BatchLog, ts_arrival: int, token_ts: list[int],
                 claimed: dict[int, int] | None = None) -> Link | None:
    """The batches that served a request, or None when not derivable.

    `token_ts`: when each token's chunk was written (chunks that carry no
    token, such as a closing summary event, left out). `claimed`: batch_id ->
    how many requests already claimed that batch; a batch serves at most as
    many requests as it carries sequences.
    """
    n = len(token_ts)
    if not n or not len(log):
        return None
    batches = log.batches
    lo = bisect.bisect_left(log._starts, ts_arrival)
    candidates: list[tuple[int, int, int]] = []  # (soft penalty, -start index, start index)
    for j in range(lo, len(batches)):
        p = batches[j]
        if p.ts_end > token_ts[0]:
            break
        if p.n_prefill_tokens <= 0 or j + n > len(batches):
            continue
        run = batches[j:j + n]
        # Causality: the k-th token's chunk is written after the batch that sampled it ended.
        if any(b.ts_end > t for b, t in zip(run, token_ts)):
            continue
        # A generating slot is in every batch: some slot is in all of the run.
        common = ~0
        for b in run:
            common &= b.seq_mask
        if not common:
            continue
        # Unlikely but possible: the chunk was written only after the next batch had ended too.
        soft = sum(1 for k in range(n) if j + k + 1 < len(batches) and batches[j + k + 1].ts_end < token_ts[k])
        if claimed and any(claimed.get(b.batch_id, 0) >= bin(b.seq_mask).count("1") for b in run):
            continue
        candidates.append((soft, -j, j))
    if not candidates:
        return None
    candidates.sort()
    soft, _, j = candidates[0]
    if len(candidates) > 1 and candidates[1][0] == soft:
        return None  # two starts fit equally well
    run = batches[j:j + n]
    common = ~0
    for b in run:
        common &= b.seq_mask
    slots = slots_of(common)
    if len(slots) > 1 and j > 0:
        # The request's slot joined at its prefill batch: prefer slots the batch before lacked.
        slots = [s for s in slots if not batches[j - 1].seq_mask >> s & 1] or slots
    ids = [b.batch_id for b in run]
    flows = []
    for b in run:
        k = claimed.get(b.batch_id, 0) if claimed is not None else 0
        flows.append(batch_flow_id(b.batch_id, k))
        if claimed is not None:
            claimed[b.batch_id] = k + 1
    return Link(slots[0] if len(slots) == 1 else -1, ids, flows, soft)


def _union(batches: list[Batch]) -> int:
    mask = 0
    for b in batches:
        mask |= b.seq_mask
    return mask
