"""The single-request path of the two-stage recommender (`models.recs.two_stage`).

An HTTP request is one customer. At that size the batch path's scipy matrices and
rows × catalogue arrays cost far more than the arithmetic, so `recommend` takes this path:
the batch path (`models.recs._batch`) step by step on plain arrays of the customer's CSR rows
(`CSRRow`), with the same floating-point operations in the same order, hence exactly the answer of
`recommend_many([customer], ...)[0]` (tests/integration/test_two_stage_fast.py compares the two).
Popularity vectors and their order are cached per (segment, channel).

Every function takes the fitted recommender `rec` first; `ranked_one` and `ranked_reasons` are
also what `models.recs.precomputed` stores lists from.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from models.base import top_k
from models.recs import rules
from models.recs._batch import CONTEXT_WEIGHT, REBUY_SOURCES, features, list_order, order_scores, reasons
from models.recs._top_k import lookup, select, top_arrays, top_dense
from models.recs.baselines import Recommendation
from models.recs.candidates import replenishment_scores
from models.recs.ranker import SOURCES, CandidatePairs, CSRRow, row_profiles

# (segment, channel, popular/trending) score vectors kept sorted for single requests.
POPULAR_CACHE_SIZE = 512


class RankedOne(NamedTuple):
    """One customer's ranked candidates (`ranked_one`): `items` best first, their ranker `scores`,
    `local` their positions in `pairs`, and what `reasons` reads."""

    items: np.ndarray
    scores: np.ndarray
    local: np.ndarray
    pairs: CandidatePairs
    weights: CSRRow
    context: CSRRow
    context_sim: np.ndarray
    context_cooc: np.ndarray


class ColdOne(NamedTuple):
    """A customer without history or session items: cold-start lists from their segment."""

    segment: int
    block: np.ndarray


class _Request(NamedTuple):
    """One known or in-session customer's rows and masks (`_prepare_one`): what `Batch` holds for
    a batch, as plain arrays."""

    idx: int  # the customer's row in the model, -1 for an unknown customer
    ctx: np.ndarray  # sorted catalogue positions of the session items
    weights: CSRRow  # history + CONTEXT_WEIGHT · context
    item_idx: np.ndarray  # binarised history + context_boost · context: columns
    item_val: np.ndarray  # and values
    age_idx: np.ndarray  # bought products
    age_val: np.ndarray  # days since their last purchase, at request time
    ratio: np.ndarray  # how far into its cycle each bought product is
    due: np.ndarray  # which of them may come back (replenishment)
    block: np.ndarray  # True = a rule keeps the item out before ranking
    discover: np.ndarray  # `block` plus the bought products (the discovery sources)
    segment: int
    main_channel: int
    has_context: bool


def recommend_one(
    rec,
    customer_id: str,
    k: int,
    exclude,
    context_items,
    channel: str | None,
    filters: rules.Filters,
    extra_days: float,
) -> Recommendation:
    """`TwoStageRecommender.recommend` after its precomputed lists: the list of one request."""
    ranked = ranked_one(rec, customer_id, exclude, context_items, filters, extra_days)
    if isinstance(ranked, ColdOne):
        return _cold_one(rec, ranked.segment, ranked.block, k, channel, filters)
    channel_col = rules.channel_column(rec.channels_, channel)
    items, sc, local = select(
        rec, ranked.items, ranked.scores, ranked.local, channel_col, ranked.pairs, k, filters
    )
    return Recommendation(
        product_ids=rec.product_ids_[items].tolist(),
        scores=[round(float(x), 6) for x in sc],
        cold_start=False,
        reasons=ranked_reasons(rec, ranked, local, items),
    )


def ranked_reasons(rec, ranked: RankedOne, local: np.ndarray, items: np.ndarray) -> list[str]:
    """`reasons` of some of a ranked list's items (`local`: their candidate positions)."""
    return reasons(
        rec,
        ranked.weights,
        ranked.context,
        0,
        ranked.pairs,
        local,
        items,
        ranked.context_sim,
        ranked.context_cooc,
    )


def ranked_one(
    rec,
    customer_id: str,
    exclude,
    context_items,
    filters: rules.Filters,
    extra_days: float,
    model: str = "served",
) -> RankedOne | ColdOne:
    """One customer's ranked candidates, best first, before the channel and list rules
    (`select`): what `recommend_one` and `models.recs.precomputed` select from."""
    one = _prepare_one(rec, customer_id, exclude, context_items, filters, extra_days)
    if isinstance(one, ColdOne):
        return one
    n_items = len(rec.product_ids_)
    pairs, pair_features = _candidates_one(rec, one)
    items = pairs.item

    # stage 2 and the rules after ranking (as in `_batch._ranked_lists`)
    order_score = order_scores(rec, *list_order(rec, model, filters), pairs, pair_features)
    context = CSRRow(one.ctx, np.ones(len(one.ctx), dtype=np.float32), n_items)
    context_sim, context_cooc = _context_similarity_one(rec, one.ctx, items)
    if one.has_context:
        spread = order_score.std() if len(order_score) else 0.0
        order_score = order_score + rec.context_rank_boost * spread * context_sim
    local = np.lexsort((items, -order_score))
    return RankedOne(
        items[local], order_score[local], local, pairs, one.weights, context, context_sim, context_cooc
    )


def _prepare_one(rec, customer_id: str, exclude, context_items, filters: rules.Filters, extra_days: float):
    """The customer's rows and the rules before ranking (as in `_batch.prepare`): a `_Request`,
    or a `ColdOne` for a customer without history or session items."""
    n_items = len(rec.product_ids_)
    idx = rec.customer_index_.get(customer_id, -1)
    ctx = _id_positions(rec, context_items)
    hist_idx, hist_val = _csr_row(rec.user_items_, idx)
    has_history, has_context = len(hist_idx) > 0, len(ctx) > 0
    if has_context:
        # history + CONTEXT_WEIGHT · context, and binarised history + context_boost · context
        # (scipy's CSR sum: float32, sorted union of the columns, zeros dropped)
        weights_idx, weights_val = _add_context(hist_idx, hist_val, ctx, CONTEXT_WEIGHT)
        item_idx, item_val = _add_context(
            hist_idx, np.ones(len(hist_idx), np.float32), ctx, rec.context_boost
        )
    else:
        weights_idx, weights_val = hist_idx, hist_val
        item_idx, item_val = hist_idx, np.ones(len(hist_idx), dtype=np.float32)

    # the rules before ranking (as in `_batch.prepare`)
    allowed = rec.item_active_
    if filters.restricts_items():
        allowed = allowed & rules.filter_mask(rec.item_category_, rec.item_price_, rec.categories_, filters)
    block = ~allowed
    age_idx, age_val = _csr_row(rec.last_age_days_, idx)
    if extra_days:
        age_val = age_val + np.float32(extra_days)
    ratio = rules.replenishment_ratio(age_val, rec.item_cycle_days_[age_idx])
    due = rules.is_due(ratio, rec.replenish_due_from)
    discover = block.copy()
    discover[age_idx] = True
    if filters.exclude_purchased:
        block[age_idx] = True
    for pid in exclude or ():
        j = rec.product_index_.get(str(pid))
        if j is not None:
            block[j] = True
            discover[j] = True
    block[ctx] = True
    discover[ctx] = True
    known = idx >= 0
    segment = int(rec.customer_segment_[idx]) if known else -1
    if not (has_history or has_context):
        return ColdOne(segment, block)
    main_channel = int(rec.customer_main_channel_[idx]) if known and has_history else -1
    weights = CSRRow(weights_idx, weights_val, n_items)
    return _Request(
        idx=idx,
        ctx=ctx,
        weights=weights,
        item_idx=item_idx,
        item_val=item_val,
        age_idx=age_idx,
        age_val=age_val,
        ratio=ratio,
        due=due,
        block=block,
        discover=discover,
        segment=segment,
        main_channel=main_channel,
        has_context=has_context,
    )


def _candidates_one(rec, one: _Request) -> tuple[CandidatePairs, np.ndarray]:
    """Stage 1 for one request (as `_batch.candidates` for a batch): each source's top candidates
    among the unblocked items, as candidate pairs (items sorted), and their features."""
    n_items = len(rec.product_ids_)
    idx, weights, block, discover = one.idx, one.weights, one.block, one.discover
    segment, main_channel = one.segment, one.main_channel
    profiles = row_profiles(weights, rec.item_category_, len(rec.categories_), rec.item_log_price_)
    als = _als_one(rec, idx, one.has_context, weights)
    shared = {
        "popular": _popular_order(rec, segment, main_channel, trending=False),
        "trending": _popular_order(rec, segment, main_channel, trending=True),
    }
    dense = {
        "ease": item_item_scores(rec.ease_, one.item_idx, one.item_val, n_items),
        "cooc": item_item_scores(rec.cooc_, one.item_idx, one.item_val, n_items),
    }
    rep_idx = one.age_idx[one.due]
    rep_val = replenishment_scores(one.ratio[one.due], rec.replenish_due_from)
    sparse = {
        "replenish": (rep_idx, rep_val),
        "repeat": _csr_row(rec.repeat_weight_, idx),
        "content": _content_one(rec, profiles),
    }
    als_top = top_k(np.where(discover, -np.inf, als), rec.n_candidates)[0][0]
    tops = {"als": als_top[als_top >= 0]}  # every other top is exactly as long as it is
    sizes = {"popular": rec.n_popular, "trending": rec.n_trending}
    for s, (_, order, n_positive) in shared.items():
        pool = order[:n_positive]
        tops[s] = pool[~discover[pool]][: sizes[s]]
    for s, scores in dense.items():
        tops[s] = top_dense(scores, discover, rec.n_candidates)
    sizes = {"replenish": rec.n_replenish, "repeat": rec.n_repeat, "content": rec.n_content}
    for s, (cols, values) in sparse.items():
        tops[s] = top_arrays(cols, values, block if s in REBUY_SOURCES else discover, sizes[s])
    items = np.unique(np.concatenate(list(tops.values())))
    scores, ranks = {}, {}
    for s in SOURCES:
        top = tops[s]
        rank = np.full(len(items), np.nan)
        rank[np.searchsorted(items, top)] = np.arange(1, len(top) + 1)
        ranks[s] = rank
        if s == "als":
            scores[s] = als[0, items].astype(np.float64)
        elif s in shared:
            scores[s] = shared[s][0][items].astype(np.float64)
        elif s in dense:
            scores[s] = dense[s][items].astype(np.float64)
        else:
            scores[s] = lookup(*sparse[s], items)
    pairs = CandidatePairs(row=np.zeros(len(items), dtype=np.int64), item=items, scores=scores, ranks=ranks)
    pair_features = features(
        rec,
        pairs,
        profiles,
        weights,
        CSRRow(one.age_idx, one.age_val, n_items),
        CSRRow(*_csr_row(rec.n_purchases_, idx), n_items),
        np.array([segment], dtype=np.int64),
        np.array([main_channel], dtype=np.int64),
    )
    return pairs, pair_features


def _cold_one(rec, segment: int, block: np.ndarray, k: int, channel, filters) -> Recommendation:
    """A customer we know nothing about: popular products for their segment and the request
    channel (as in `_batch._cold_list`)."""
    ch = rules.channel_column(rec.channels_, channel)
    ch = -1 if ch is None or ch >= len(rec.channels_) else ch
    vec, order, _ = _popular_order(rec, segment, ch, trending=False)
    channel_col = rules.channel_column(rec.channels_, channel)
    if channel_col is not None:
        block = block | ~rec.channel_ok_[:, channel_col]
    n_items = len(rec.product_ids_)
    wanted = n_items if filters.max_per_category else min(n_items, k)
    items = order[~block[order]][:wanted]
    chosen = rules.select_positions(rec.item_category_[items], k, filters.max_per_category)
    items = items[chosen]
    return Recommendation(
        product_ids=rec.product_ids_[items].tolist(),
        scores=[round(float(x), 6) for x in vec[items]],
        cold_start=True,
        reasons=["popular"] * len(items),
    )


def _id_positions(rec, product_ids) -> np.ndarray:
    """Sorted distinct catalogue positions of the known ids among `product_ids`."""
    found = [rec.product_index_.get(str(pid)) for pid in product_ids or ()]
    found = [j for j in found if j is not None]
    return np.unique(np.array(found, dtype=np.int64)) if found else np.zeros(0, dtype=np.int64)


def _als_one(rec, idx: int, has_context: bool, weights: CSRRow) -> np.ndarray:
    """ALS scores (1 × catalogue) as `_batch._als_scores` computes them for a batch of one."""
    model = rec.als_.model_
    vectors = np.zeros((1, model.item_factors.shape[1]), dtype=np.float32)
    if idx >= 0 and not has_context:
        vectors[0] = model.user_factors[idx]
    elif weights.nnz:
        row = sp.csr_matrix((weights.data, weights.indices, weights.indptr), shape=weights.shape)
        vectors[0] = model.recalculate_user(np.arange(1), row)[0]
    return vectors @ model.item_factors.T


def _popular_order(rec, segment: int, channel: int, trending: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(popular or trending scores for the segment and channel, the catalogue sorted by score
    descending with ties by the lower index, how many scores are positive); cached on `rec`
    (`_popular_cache`), for as long as its popularity tables are the same object."""
    cache = getattr(rec, "_popular_cache", None)
    if cache is None or cache[0] is not rec.popularity_:
        cache = (rec.popularity_, {})
        rec._popular_cache = cache
    key = (trending, segment, channel)
    hit = cache[1].get(key)
    if hit is None:
        pop = rec.popularity_
        vec = pop.trending(segment, channel) if trending else pop.popular(segment, channel)
        order = np.lexsort((np.arange(len(vec)), -vec))
        vec.flags.writeable = False
        order.flags.writeable = False
        hit = (vec, order, int(np.count_nonzero(vec > 0)))
        if len(cache[1]) >= POPULAR_CACHE_SIZE:
            cache[1].clear()
        cache[1][key] = hit
    return hit


def _content_one(rec, profiles) -> tuple[np.ndarray, np.ndarray]:
    """Positive content scores of the new products for one row: (columns, scores)."""
    new_items = rec.content_.new_items_
    if not len(new_items):
        return new_items.astype(np.int64), np.zeros(0)
    scores = rec.content_.score(profiles.affinity, profiles.price_mu, profiles.price_sigma)[0]
    positive = scores > 0
    return new_items[positive], scores[positive]


def _context_similarity_one(rec, ctx: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_batch._context_similarity` for one row whose session items are `ctx`."""
    if not len(ctx):
        return np.zeros(len(items)), np.zeros(len(items), dtype=bool)
    ones = np.ones(len(ctx), dtype=np.float32)
    parts = []
    for scorer in (rec.cooc_, rec.ease_):
        scores = item_item_scores(scorer, ctx, ones, len(rec.product_ids_))
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append(np.nan_to_num(scores[items].astype(np.float64) / scores.max()))
    return np.maximum(parts[0], parts[1]), parts[0] >= parts[1]


def _csr_row(matrix: sp.csr_matrix, row: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns, values) stored in one row of a CSR (empty for row -1); views, not copies."""
    if row < 0:
        return matrix.indices[:0], matrix.data[:0]
    lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
    return matrix.indices[lo:hi], matrix.data[lo:hi]


def _add_context(
    cols: np.ndarray, values: np.ndarray, context: np.ndarray, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """The row `values` + weight · (1 at the `context` columns), as scipy's CSR sum computes it:
    float32, sorted union of the columns, zero sums dropped."""
    union = np.union1d(cols, context)
    out = np.zeros(len(union), dtype=np.float32)
    out[np.searchsorted(union, cols)] = values
    add = np.ones(len(context), dtype=np.float32) * weight
    out[np.searchsorted(union, context)] += add
    keep = out != 0
    return union[keep], out[keep]


def item_item_scores(scorer, cols: np.ndarray, values: np.ndarray, n_items: int) -> np.ndarray:
    """Dense float32 scores Σ_i values_i · neighbours_[cols_i, :], summed in the order scipy's
    sparse product sums them (row items in order, each neighbour row in order), so every score is
    bit for bit `scorer.score_sparse` of that row (0 where it stores nothing)."""
    neighbours = scorer.neighbours_
    starts = neighbours.indptr[cols].astype(np.int64)
    lengths = neighbours.indptr[cols + 1].astype(np.int64) - starts
    out = np.zeros(n_items, dtype=np.float32)
    total = int(lengths.sum())
    if total:
        offsets = np.cumsum(lengths) - lengths
        pos = np.arange(total) - np.repeat(offsets - starts, lengths)
        np.add.at(out, neighbours.indices[pos], np.repeat(values, lengths) * neighbours.data[pos])
    return out
