"""Top-n and list selection of the two-stage recommender (`models.recs.two_stage`).

The fast top-n paths of the candidate sources, each exactly `models.base.top_k`'s answer (score
descending, ties by the lower catalogue index) at the cost of what the source stores rather than of
the catalogue: rows that share a popularity vector (`top_shared`), CSR rows (`top_n_sparse`), one
row as a dense vector (`top_dense`) or as (columns, values) (`top_arrays`); then the final list of
ranked candidates (`select`), shared by the batch and the single-request paths.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.base import top_k
from models.recs import rules


def top_shared(key_of_row: np.ndarray, vectors: np.ndarray, block: np.ndarray, n: int) -> np.ndarray:
    """`top_k` of positive, unblocked scores for rows that share score vectors.

    Each vector is sorted once, over a pool of its best 4n + 256 items; a row then takes its
    first n unblocked pool items. When the pool cannot prove the answer (too many blocked, or a
    tie at the pool's edge) the row falls back to the whole catalogue, so the result is always
    exactly `top_k`'s.
    """
    out = np.full((len(key_of_row), n), -1, dtype=np.int64)
    for q, vec in enumerate(vectors):
        rows = np.flatnonzero(key_of_row == q)
        positive = np.flatnonzero(vec > 0)
        size = min(len(positive), 4 * n + 256)
        if size == 0 or not len(rows):
            continue
        pool = positive
        if size < len(positive):
            pool = positive[np.argpartition(-vec[positive], size - 1)[:size]]
        pool = pool[np.lexsort((pool, -vec[pool]))]
        whole = size == len(positive)
        allowed = ~block[np.ix_(rows, pool)]
        for j, r in enumerate(rows.tolist()):
            chosen = pool[allowed[j]][:n]
            if len(chosen) == n or whole:
                if whole or vec[chosen[-1]] > vec[pool[-1]]:
                    out[r, : len(chosen)] = chosen
                    continue
            masked = np.where(block[r] | (vec <= 0), -np.inf, vec)
            out[r] = top_k(masked[np.newaxis, :], n)[0][0]
    return out


def top_n_sparse(scores: sp.csr_matrix, block: np.ndarray, n: int) -> np.ndarray:
    """Top-n item indices per row among the stored positive, unblocked entries of a CSR; -1 pads.

    Same order as `top_k` (score descending, ties by the lower index), but the work is proportional
    to the stored entries, not to the catalogue.
    """
    n_rows = scores.shape[0]
    out = np.full((n_rows, max(n, 0)), -1, dtype=np.int64)
    if n <= 0 or scores.nnz == 0:
        return out
    if not scores.has_sorted_indices:
        scores = scores.sorted_indices()
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(scores.indptr))
    cols, values = scores.indices, scores.data
    keep = (values > 0) & ~block[rows, cols]
    rows, cols, values = rows[keep], cols[keep], values[keep]
    # The sorts are stable and the columns already ascend within each row, so ties keep the
    # lower index first without a column key.
    if values.dtype == np.float32:
        # One int64 key, the row in the high bits and the score descending in the low ones
        # (positive float32 bit patterns order like the floats): one sort instead of a two-key
        # lexsort, under half the time on the evaluation's EASE rows.
        descending = np.uint32(0xFFFFFFFF) - values.view(np.uint32)
        order = np.argsort((rows << 32) | descending.astype(np.int64), kind="stable")
    else:
        order = np.lexsort((-values, rows))
    rows, cols = rows[order], cols[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    chosen = rank < n
    out[rows[chosen], rank[chosen]] = cols[chosen]
    return out


def top_dense(scores: np.ndarray, block: np.ndarray, n: int) -> np.ndarray:
    """`top_n_sparse` of one row given as a dense vector (0 = not stored)."""
    cand = np.flatnonzero((scores > 0) & ~block)
    if n <= 0:
        return cand[:0]
    if len(cand) > n:
        # only what can make the top n is sorted: every score at least the n-th largest (ties kept)
        values = scores[cand]
        kth = np.partition(values, len(values) - n)[len(values) - n]
        cand = cand[values >= kth]
    return cand[np.lexsort((cand, -scores[cand]))[:n]]


def top_arrays(cols: np.ndarray, values: np.ndarray, block: np.ndarray, n: int) -> np.ndarray:
    """`top_n_sparse` of one row given as (sorted columns, values)."""
    keep = (values > 0) & ~block[cols]
    cols, values = cols[keep], values[keep]
    return cols[np.lexsort((cols, -values))[: max(n, 0)]].astype(np.int64)


def lookup(cols: np.ndarray, values: np.ndarray, items: np.ndarray) -> np.ndarray:
    """`gather` of one row given as (sorted columns, values): the value at each item, else 0."""
    out = np.zeros(len(items))
    if len(cols) == 0 or len(items) == 0:
        return out
    pos = np.minimum(np.searchsorted(cols, items), len(cols) - 1)
    hit = cols[pos] == items
    out[hit] = values[pos[hit]]
    return out


def select(rec, items, sc, local, channel_col, pairs, k: int, filters: rules.Filters):
    """The final list from ranked candidates (best first) of the fitted recommender `rec`, shared
    by the batch and the single-request paths: channel eligibility, reserved new-product places,
    per-category cap."""
    if channel_col is not None:
        ok = rec.channel_ok_[items, channel_col]
        items, sc, local = items[ok], sc[ok], local[ok]
    slots = rec.new_slots_["new" if filters.exclude_purchased else "all"]
    is_reserved = reserved_candidates(rec, items, local, pairs, slots)
    chosen = rules.select_positions(
        rec.item_category_[items], k, filters.max_per_category, is_reserved, slots
    )
    return items[chosen], sc[chosen], local[chosen]


def reserved_candidates(rec, items, local, pairs, slots: int) -> np.ndarray | None:
    """Which ranked candidates may take a place reserved for new products (None: no places)."""
    if slots <= 0:
        return None
    return rec.item_is_new_[items] & ~np.isnan(pairs.ranks["content"][local])
