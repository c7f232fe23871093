"""The batch path of the two-stage recommender (`models.recs.two_stage`): `recommend_many`,
`compare_many`, `compare_kinds` and `recommendations_frame` score customers in batches of up to
`BATCH_ROWS` rows on scipy matrices.

A batch is prepared once (`prepare`: the customers' rows, the session items, the rules that apply
before ranking) and shared by the sources (`candidates`), the ranker's features (`features`), the
order of each list (`list_order`, `order_scores`) and the reasons (`reasons`); the last three are
the single-request path's too (`models.recs._single_request`), so the two cannot drift apart.
Every function takes the fitted recommender `rec` first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.base import top_k
from models.recs import rules
from models.recs._top_k import select, top_n_sparse, top_shared
from models.recs.baselines import Recommendation
from models.recs.candidates import replenishment_scores
from models.recs.list_order import ListOrder, fusion_scores
from models.recs.ranker import SOURCES, CandidatePairs, build_features, gather, row_profiles

# A session item counts like a cart add when ALS folds the customer in (DEFAULT_EVENT_WEIGHTS).
CONTEXT_WEIGHT = 3.0
# A candidate at least this close to the session items (0..1) is explained by them.
CONTEXT_REASON_MIN = 0.5
# Which source explains an item best when several rank it equally well (first wins).
REASON_PRIORITY: tuple[str, ...] = (
    "replenish",
    "repeat",
    "cooc",
    "ease",
    "als",
    "content",
    "popular",
    "trending",
)

# The sources that propose products the customer bought (a re-buy); every other source discovers:
# it proposes only products the customer never bought, so how many re-buys a list holds is up to
# these two sources and the order chosen on validation.
REBUY_SOURCES: frozenset[str] = frozenset({"replenish", "repeat"})
# What `recommend_many(model=...)` may order a list by: the served order (chosen on validation),
# the learned ranker, or one candidate source alone (the baselines, under the same rules);
# "popularity" is the popular source's name in reports.
MODEL_SOURCES: dict[str, str] = {"popularity": "popular", **{s: s for s in SOURCES}}
MODELS = ("served", "ranker", *MODEL_SOURCES)
# Rows scored together: a batch holds several rows × catalogue arrays (256 × 20,000 floats = 41 MB each).
BATCH_ROWS = 256


def take_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """Rows of a CSR (a row index of -1 gives an empty row), without scipy's fancy-indexing overhead.

    Column order inside each row is kept, so rows of a matrix with sorted indices stay sorted.
    """
    rows = np.asarray(rows, dtype=np.int64)
    known = rows >= 0
    safe = np.where(known, rows, 0)
    starts = np.where(known, matrix.indptr[safe], 0)
    lengths = np.where(known, matrix.indptr[safe + 1], 0) - starts
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    pos = np.arange(indptr[-1]) - np.repeat(indptr[:-1] - starts, lengths)
    return sp.csr_matrix(
        (matrix.data[pos], matrix.indices[pos], indptr), shape=(len(rows), matrix.shape[1]), copy=False
    )


@dataclass
class Batch:
    """One batch of requests, prepared once and shared by the sources, the features and the rules."""

    idx: np.ndarray  # the customer's row in the model, -1 for an unknown customer
    history: sp.csr_matrix  # stored interaction weights
    context: sp.csr_matrix  # 1 for each session item
    weights: sp.csr_matrix  # history + CONTEXT_WEIGHT · context: ALS fold-in, profiles, anchors
    item_item: sp.csr_matrix  # binarised history + context_boost · context: EASE and co-occurrence
    ages: sp.csr_matrix  # days since the last purchase of each bought product, at request time
    counts: sp.csr_matrix  # purchases per bought product
    block: np.ndarray  # rows × items, True = a rule keeps the item out before ranking
    # `block` plus every product the row's customer bought: what the discovery sources (all but
    # buy again and replenishment) may not propose, so a bought product comes back only as a re-buy
    discover_block: np.ndarray
    replenish: sp.csr_matrix  # how due each bought replenishable product is (due ones only)
    repeat: sp.csr_matrix  # recency-weighted purchases of each bought product (buy again)
    has_context: np.ndarray
    cold: np.ndarray  # no history and no session: popular items
    segment: np.ndarray
    main_channel: np.ndarray

    def subset(self, rows: np.ndarray) -> Batch:
        return Batch(
            **{
                name: take_rows(value, rows) if sp.issparse(value) else value[rows]
                for name, value in vars(self).items()
            }
        )


def compare(
    rec, customer_ids, k, models, exclude, context_items, channel, filters, now, explained, kinds
) -> dict[str, dict[str, list[Recommendation]]]:
    """Each list kind's and model's lists of `customer_ids` (`TwoStageRecommender.compare_many` and
    `compare_kinds`), batch by batch."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}: expected one of {', '.join(MODELS)}")
    customer_ids = [str(cid) for cid in customer_ids]
    out: dict[str, dict[str, list]] = {kind: {m: [] for m in models} for kind in kinds}
    # a batch holds a few rows × catalogue arrays: bound its memory by going in chunks
    for start in range(0, len(customer_ids), BATCH_ROWS):
        part = slice(start, start + BATCH_ROWS)
        ids = customer_ids[part]
        idx = np.array([rec.customer_index_.get(cid, -1) for cid in ids], dtype=np.int64)
        extra_days = 0.0
        if now is not None:
            extra_days = max(0.0, (pd.Timestamp(now) - rec.as_of_).total_seconds() / 86400.0)
        batch = prepare(
            rec,
            idx,
            context_items[part] if context_items else None,
            exclude[part] if exclude else None,
            filters,
            extra_days,
        )
        channel_col = rules.channel_column(rec.channels_, channel)
        lists = {kind: {m: [None] * len(idx) for m in models} for kind in kinds}
        for r in np.flatnonzero(batch.cold):
            cold = _cold_list(rec, batch, r, k, channel, channel_col, filters)
            for kind in kinds:
                for m in models:
                    lists[kind][m][r] = cold
        ranked = np.flatnonzero(~batch.cold)
        if len(ranked):
            subset = batch if len(ranked) == len(idx) else batch.subset(ranked)
            by_kind = _ranked_lists(rec, subset, k, channel_col, filters, models, explained, kinds)
            for kind, by_model in by_kind.items():
                for m, ranked_lists in by_model.items():
                    for r, recommendation in zip(ranked, ranked_lists, strict=True):
                        lists[kind][m][r] = recommendation
        for kind in kinds:
            for m in models:
                out[kind][m] += lists[kind][m]
    return out


def prepare(rec, idx, context_items, exclude, filters: rules.Filters, extra_days: float) -> Batch:
    """Rows, masks and purchase history of a batch: everything the sources and rules share."""
    n_rows, n_items = len(idx), len(rec.product_ids_)
    history = take_rows(rec.user_items_, idx)
    ages = take_rows(rec.last_age_days_, idx)
    if extra_days:
        ages.data = ages.data + np.float32(extra_days)
    counts = take_rows(rec.n_purchases_, idx)
    context = _id_rows(rec, context_items, n_rows)
    has_context = np.diff(context.indptr) > 0
    has_history = np.diff(history.indptr) > 0
    binary = history.copy()
    binary.data[:] = 1.0
    if context.nnz:
        weights = (history + CONTEXT_WEIGHT * context).tocsr()
        item_item = (binary + rec.context_boost * context).tocsr()
    else:
        weights, item_item = history, binary

    # the rules before ranking: inactive, filtered, excluded, in the session, and bought when
    # the request asks for products the customer never bought
    allowed = rec.item_active_
    if filters.restricts_items():
        allowed = allowed & rules.filter_mask(rec.item_category_, rec.item_price_, rec.categories_, filters)
    block = np.repeat(~allowed[np.newaxis, :], n_rows, axis=0)
    age_rows = np.repeat(np.arange(n_rows), np.diff(ages.indptr))
    bought = ages.indices
    ratio = rules.replenishment_ratio(ages.data, rec.item_cycle_days_[bought])
    due = rules.is_due(ratio, rec.replenish_due_from)
    discover_block = block.copy()
    discover_block[age_rows, bought] = True
    if filters.exclude_purchased:
        block[age_rows, bought] = True
    for r, items in enumerate(exclude or []):
        for pid in items or ():
            j = rec.product_index_.get(str(pid))
            if j is not None:
                block[r, j] = True
                discover_block[r, j] = True
    if context.nnz:
        in_session = (np.repeat(np.arange(n_rows), np.diff(context.indptr)), context.indices)
        block[in_session] = True
        discover_block[in_session] = True
    replenish = sp.csr_matrix(
        (replenishment_scores(ratio[due], rec.replenish_due_from), (age_rows[due], bought[due])),
        shape=(n_rows, n_items),
    )
    replenish.sort_indices()
    repeat = take_rows(rec.repeat_weight_, idx)

    known = idx >= 0
    safe = np.where(known, idx, 0)
    return Batch(
        idx=idx,
        history=history,
        context=context,
        weights=weights,
        item_item=item_item,
        ages=ages,
        counts=counts,
        block=block,
        discover_block=discover_block,
        replenish=replenish,
        repeat=repeat,
        has_context=has_context,
        cold=~(has_history | has_context),
        segment=np.where(known, rec.customer_segment_[safe], -1),
        main_channel=np.where(known & has_history, rec.customer_main_channel_[safe], -1),
    )


def _id_rows(rec, id_lists, n_rows: int) -> sp.csr_matrix:
    """A 0/1 CSR (rows × catalogue) of per-row product id lists (unknown ids are ignored)."""
    if not any(id_lists or []):
        return sp.csr_matrix((n_rows, len(rec.product_ids_)), dtype=np.float32)
    rows, cols = [], []
    for r, items in enumerate(id_lists or []):
        for pid in items or ():
            j = rec.product_index_.get(str(pid))
            if j is not None:
                rows.append(r)
                cols.append(j)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, len(rec.product_ids_))
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _als_scores(rec, batch: Batch) -> np.ndarray:
    model = rec.als_.model_
    vectors = np.zeros((len(batch.idx), model.item_factors.shape[1]), dtype=np.float32)
    stored = (batch.idx >= 0) & ~batch.has_context
    vectors[stored] = model.user_factors[batch.idx[stored]]
    refold = np.flatnonzero(~stored & (np.diff(batch.weights.indptr) > 0))
    if len(refold):
        # a new customer, or a known one with session items: one least-squares solve each
        vectors[refold] = model.recalculate_user(np.arange(len(refold)), take_rows(batch.weights, refold))
    return vectors @ model.item_factors.T


def _popularity(rec, batch: Batch, channel_code: np.ndarray, trending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Popular (or trending) scores for each row's segment and channel, as (key of each row,
    one score vector per key): a batch has few distinct (segment, channel) pairs."""
    keys: dict[tuple[int, int], int] = {}
    key_of_row = np.empty(len(batch.idx), dtype=np.int64)
    vectors = []
    for r, key in enumerate(zip(batch.segment.tolist(), np.asarray(channel_code).tolist(), strict=True)):
        if key not in keys:
            keys[key] = len(vectors)
            vectors.append(rec.popularity_.trending(*key) if trending else rec.popularity_.popular(*key))
        key_of_row[r] = keys[key]
    return key_of_row, np.asarray(vectors).reshape(len(vectors), len(rec.product_ids_))


def candidates(rec, batch: Batch) -> tuple[CandidatePairs, np.ndarray]:
    """Candidate pairs of every row of `batch` (pairs.row = batch row) and their features."""
    n_rows, n_items = len(batch.idx), len(rec.product_ids_)
    profiles = row_profiles(batch.weights, rec.item_category_, len(rec.categories_), rec.item_log_price_)
    # dense sources score the whole catalogue; sparse ones only what is near the customer
    dense = {"als": _als_scores(rec, batch)}
    shared = {
        "popular": _popularity(rec, batch, batch.main_channel, trending=False),
        "trending": _popularity(rec, batch, batch.main_channel, trending=True),
    }
    sparse = {
        "ease": rec.ease_.score_sparse(batch.item_item),
        "cooc": rec.cooc_.score_sparse(batch.item_item),
        "replenish": batch.replenish,
        "repeat": batch.repeat,
        "content": _content_scores(rec, profiles, n_rows),
    }
    sizes = {
        "als": rec.n_candidates,
        "ease": rec.n_candidates,
        "cooc": rec.n_candidates,
        "popular": rec.n_popular,
        "trending": rec.n_trending,
        "replenish": rec.n_replenish,
        "repeat": rec.n_repeat,
        "content": rec.n_content,
    }
    tops = {}
    discover = batch.discover_block
    tops["als"] = top_k(np.where(discover, -np.inf, dense["als"]), sizes["als"])[0]
    for s, (key_of_row, vectors) in shared.items():  # a zero popularity means "never seen"
        tops[s] = top_shared(key_of_row, vectors, discover, sizes[s])
    for s, scores in sparse.items():
        tops[s] = top_n_sparse(scores, batch.block if s in REBUY_SOURCES else discover, sizes[s])
    row_base = np.arange(n_rows)[:, None] * n_items
    codes = np.unique(np.concatenate([(row_base + t)[t >= 0] for t in tops.values()]))
    pair_row, pair_item = codes // n_items, codes % n_items
    scores, ranks = {}, {}
    for s in SOURCES:
        top = tops[s]
        ok = top >= 0
        rank = np.full(len(codes), np.nan)
        rank[np.searchsorted(codes, (row_base + top)[ok])] = np.broadcast_to(
            np.arange(1, top.shape[1] + 1), top.shape
        )[ok]
        ranks[s] = rank
        if s in dense:
            scores[s] = dense[s][pair_row, pair_item].astype(np.float64)
        elif s in shared:
            key_of_row, vectors = shared[s]
            scores[s] = vectors[key_of_row[pair_row], pair_item].astype(np.float64)
        else:
            scores[s] = gather(sparse[s], pair_row, pair_item)
    pairs = CandidatePairs(row=pair_row, item=pair_item, scores=scores, ranks=ranks)
    pair_features = features(
        rec, pairs, profiles, batch.weights, batch.ages, batch.counts, batch.segment, batch.main_channel
    )
    return pairs, pair_features


def features(rec, pairs, profiles, weights, ages, counts, segment, main_channel) -> np.ndarray:
    """The ranker's features of candidate pairs (`models.recs.ranker.build_features`) from the
    customers' rows and the recommender's item and popularity tables; one call for the batch and
    the single-request paths, so the two cannot drift apart."""
    return build_features(
        pairs,
        profiles,
        weights,
        ages,
        counts,
        segment,
        main_channel,
        rec.item_category_,
        rec.item_log_price_,
        rec.item_cycle_days_,
        rec.item_is_new_,
        rec.popularity_.global_,
        rec.popularity_.trend_,
        rec.popularity_.by_segment_,
        rec.popularity_.by_channel_,
    )


def _content_scores(rec, profiles, n_rows: int) -> sp.csr_matrix:
    """Content-based scores of the products without history, as a rows × catalogue CSR."""
    new_items = rec.content_.new_items_
    n_items = len(rec.product_ids_)
    if not len(new_items) or not n_rows:
        return sp.csr_matrix((n_rows, n_items), dtype=np.float64)
    scores = rec.content_.score(profiles.affinity, profiles.price_mu, profiles.price_sigma)
    positive = scores > 0
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(positive.sum(axis=1), out=indptr[1:])
    # new_items_ is sorted, so each row's columns come out sorted
    columns = np.broadcast_to(new_items, scores.shape)[positive]
    return sp.csr_matrix((scores[positive], columns, indptr), shape=(n_rows, n_items))


def _context_similarity(rec, batch: Batch, pairs: CandidatePairs) -> tuple[np.ndarray, np.ndarray]:
    """How strongly each candidate goes with the session items alone (0..1), and whether
    "bought together" (rather than EASE's "similar to") says it more strongly."""
    sim = np.zeros(len(pairs.row))
    from_cooc = np.zeros(len(pairs.row), dtype=bool)
    if not batch.context.nnz:
        return sim, from_cooc
    with_context = batch.has_context[pairs.row]
    parts = []
    for scorer in (rec.cooc_, rec.ease_):
        scores = scorer.score_sparse(batch.context)
        top = scores.max(axis=1).toarray().ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append(np.nan_to_num(gather(scores, pairs.row, pairs.item) / top[pairs.row]))
    sim = np.where(with_context, np.maximum(parts[0], parts[1]), 0.0)
    from_cooc = parts[0] >= parts[1]
    return sim, from_cooc


def list_order(rec, model: str, filters: rules.Filters) -> tuple[str, ListOrder]:
    """(list kind, order) of a request: the served order of its kind (the default list, or
    the list without bought products), or the one `model` names for a comparison."""
    kind = "new" if filters.exclude_purchased else "all"
    if model == "served":
        return kind, rec.served_[kind]
    if model == "ranker":
        return kind, ListOrder.ranker()
    return kind, ListOrder.source(MODEL_SOURCES[model])


def order_scores(
    rec, kind: str, order: ListOrder, pairs: CandidatePairs, features, pure: bool = False
) -> np.ndarray:
    """What the candidates are sorted by: the kind's ranker, or a fusion of the sources (the
    plain fusion when the ranker is asked for and none was learned). `pure`: a source alone
    keeps only what it proposed (-inf for the rest: a baseline's own list, maybe short)."""
    if order.kind == "ranker":
        ranker = rec._ranker_of(kind)
        if ranker is not None:
            return ranker.predict(features)
        order = ListOrder.fusion(dict.fromkeys(SOURCES, 1.0))
    score = fusion_scores(order, pairs.ranks, SOURCES)
    if pure:
        proposed = np.zeros(len(score), dtype=bool)
        for s, _ in order.weights:
            proposed |= ~np.isnan(pairs.ranks[s])
        score[~proposed] = -np.inf
    return score


def _ranked_lists(
    rec,
    batch: Batch,
    k: int,
    channel_col,
    filters: rules.Filters,
    models: tuple[str, ...],
    explained: tuple[str, ...] | None = None,
    kinds: tuple[str, ...] | None = None,
) -> dict[str, dict[str, list[Recommendation]]]:
    """Each list kind's and model's lists of the (known or in-session) rows of `batch`, from
    one set of candidates (kinds: the kind of `filters`, or both from a batch prepared without
    `exclude_purchased`: the "new" candidates are then the default ones less the bought
    products, which only the re-buy sources propose). A source compared alone lists only what
    it proposed. Lists of models not in `explained` (None: every model) give the model's name
    as each item's reason: explaining (finding each item's anchor) costs more than ordering,
    and a comparison needs no reasons."""
    pairs, pair_features = candidates(rec, batch)
    context_sim, context_cooc = _context_similarity(rec, batch, pairs)
    own_kind = "new" if filters.exclude_purchased else "all"
    out = {}
    for kind in kinds or (own_kind,):
        kind_pairs, kind_features, sim, cooc, kind_filters = (
            pairs,
            pair_features,
            context_sim,
            context_cooc,
            filters,
        )
        if kind != own_kind:
            # the default candidates less the customer's bought products
            keep = ~(gather(batch.ages, pairs.row, pairs.item) > 0)
            kind_pairs = CandidatePairs(
                row=pairs.row[keep],
                item=pairs.item[keep],
                scores={s: v[keep] for s, v in pairs.scores.items()},
                ranks={s: v[keep] for s, v in pairs.ranks.items()},
            )
            kind_features, sim, cooc = pair_features[keep], context_sim[keep], context_cooc[keep]
            kind_filters = dataclasses.replace(filters, exclude_purchased=True)
        out[kind] = _lists_of(
            rec, batch, kind_pairs, kind_features, sim, cooc, k, channel_col, kind_filters, models, explained
        )
    return out


def _lists_of(
    rec, batch, pairs, pair_features, context_sim, context_cooc, k, channel_col, filters, models, explained
) -> dict[str, list[Recommendation]]:
    """Each model's lists from the candidates `pairs` of the rows of `batch`."""
    bounds = np.searchsorted(pairs.row, np.arange(len(batch.idx) + 1))
    out: dict[str, list[Recommendation]] = {}
    scored: dict[tuple, np.ndarray] = {}  # "served" is often the ranker: predict once
    for model in models:
        pure = model in MODEL_SOURCES
        kind, order = list_order(rec, model, filters)
        if (order, pure) not in scored:
            scored[order, pure] = order_scores(rec, kind, order, pairs, pair_features, pure)
        order_score = scored[order, pure]
        if batch.context.nnz:
            # The ranker never saw a session (training rows have none), so the session's pull is
            # added explicitly: up to `context_rank_boost` standard deviations of the row's scores.
            spread = np.array(
                [
                    order_score[lo:hi].std() if hi > lo else 0.0
                    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
                ]
            )
            order_score = order_score + rec.context_rank_boost * spread[pairs.row] * context_sim
        lists = []
        for q in range(len(batch.idx)):
            lo, hi = bounds[q], bounds[q + 1]
            items, sc = pairs.item[lo:hi], order_score[lo:hi]
            order = np.lexsort((items, -sc))
            local = np.arange(lo, hi)[order]
            items, sc = items[order], sc[order]
            if pure:
                proposed = np.isfinite(sc)
                items, sc, local = items[proposed], sc[proposed], local[proposed]
            items, sc, local = select(rec, items, sc, local, channel_col, pairs, k, filters)
            if explained is None or model in explained:
                item_reasons = reasons(
                    rec, batch.weights, batch.context, q, pairs, local, items, context_sim, context_cooc
                )
            else:
                item_reasons = [model] * len(items)
            lists.append(
                Recommendation(
                    product_ids=rec.product_ids_[items].tolist(),
                    scores=[round(float(s), 6) for s in sc],
                    cold_start=False,
                    reasons=item_reasons,
                )
            )
        out[model] = lists
    return out


def reasons(rec, weights, context, q, pairs, local, items, context_sim, context_cooc) -> list[str]:
    """Why each item is there: the session item it goes with, else the source that ranks it best.

    Item-item sources name their anchor (the customer's item that contributes most), so the
    reason reads "bought_together:<id>" or "similar_to:<id>". `weights` / `context`: the
    batch's CSR rows (or one `CSRRow` each, q = 0).
    """
    if len(local) == 0:
        return []
    # a list holds k items: plain Python per item is cheaper here than numpy string arrays
    ranks = np.stack([pairs.ranks[s][local] for s in REASON_PRIORITY], axis=1)
    ranks[np.isnan(ranks)] = np.inf  # not proposed by the source
    source = [
        ("context_cooc" if cooc else "context_ease") if sim >= CONTEXT_REASON_MIN else REASON_PRIORITY[best]
        for best, sim, cooc in zip(
            np.argmin(ranks, axis=1).tolist(),
            context_sim[local].tolist(),
            context_cooc[local].tolist(),
            strict=True,
        )
    ]
    anchors = [-1] * len(source)
    for name, scorer, matrix in (
        ("cooc", rec.cooc_, weights),
        ("ease", rec.ease_, weights),
        ("context_cooc", rec.cooc_, context),
        ("context_ease", rec.ease_, context),
    ):
        wanted = [i for i, s in enumerate(source) if s == name]
        if wanted:
            lo, hi = matrix.indptr[q], matrix.indptr[q + 1]
            found = scorer.anchors(matrix.indices[lo:hi], matrix.data[lo:hi], items[wanted])
            for i, anchor in zip(wanted, found.tolist(), strict=True):
                anchors[i] = anchor
    out = []
    for s, anchor in zip(source, anchors, strict=True):
        if s == "replenish":
            out.append("replenish")
        elif s == "repeat":
            out.append("buy_again")
        elif s in ("cooc", "context_cooc") and anchor >= 0:
            out.append(f"bought_together:{rec.product_ids_[anchor]}")
        elif s in ("ease", "context_ease") and anchor >= 0:
            out.append(f"similar_to:{rec.product_ids_[anchor]}")
        elif s in ("popular", "trending"):
            out.append("popular")
        else:
            out.append("personal")
    return out


def _cold_list(rec, batch: Batch, r: int, k, channel, channel_col, filters) -> Recommendation:
    """A customer we know nothing about (no history, no session): popular products for their
    segment and the channel they are on."""
    one = batch.subset(np.array([r]))
    ch = rules.channel_column(rec.channels_, channel)
    ch = -1 if ch is None or ch >= len(rec.channels_) else ch
    key_of_row, vectors = _popularity(rec, one, np.array([ch]), trending=False)
    score, reason = vectors[key_of_row[0]], "popular"
    block = one.block[0].copy()
    if channel_col is not None:
        # one score orders the list, so filtering the channel first cannot change the order
        block |= ~rec.channel_ok_[:, channel_col]
    wanted = len(rec.product_ids_) if filters.max_per_category else min(len(rec.product_ids_), k)
    top_idx, top_sc = top_k(np.where(block, -np.inf, score)[np.newaxis, :], wanted)
    valid = top_idx[0] >= 0
    items, sc = top_idx[0][valid], top_sc[0][valid]
    chosen = rules.select_positions(rec.item_category_[items], k, filters.max_per_category)
    items, sc = items[chosen], sc[chosen]
    return Recommendation(
        product_ids=rec.product_ids_[items].tolist(),
        scores=[round(float(s), 6) for s in sc],
        cold_start=True,
        reasons=[reason] * len(items),
    )
