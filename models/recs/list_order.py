"""What orders a served product list, and how it is chosen on validation.

The two-stage recommender proposes candidates from several sources (ALS, EASE, bought together,
popular, trending, due replenishment, buy again, new products) and can order them in more than one
way: by its learned LambdaRank ranker, or by a weighted reciprocal-rank fusion of the sources'
own orders (one source alone is a fusion with a single weight: the ALS baseline is "order the
candidates by ALS"). Which order is served is not assumed: `choose_order` scores every
alternative on a validation window carved from the training data (customers held out of the
ranker's own training) and keeps the best, so the served list never loses there to a simple
baseline it could have been. Two lists are chosen separately, because the best answer differs:
- `all`: the default list, where products the customer already bought may come back (how many
  follows from the data: buy-again and replenishment compete with the rest on the same footing);
- `new`: the list of products the customer never bought (`exclude_purchased`).

Everything here is numpy over candidate pairs (`models.recs.ranker.CandidatePairs`), so the same code
scores a validation batch and orders a request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# Reciprocal-rank fusion constant (the usual 60): a source's k-th item counts 1 / (60 + k).
RRF_K = 60.0
# Every fusion adds the sources' plain fusion times this, so items the weighted sources do not
# rank still come in a sensible order after the ones they do (and a list is never left short).
# 1/(60·61) is the smallest gap between two ranks of one source; this term stays far below it.
TIE_BREAK = 1e-6
# Weights tried for each source when a fusion is searched (relative to the best single source's 1).
FUSION_WEIGHTS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
# A challenger order must beat the incumbent by this much nDCG to replace it: orders that tie on
# validation are told apart by noise only, and the simpler one (a single source, then a fusion,
# then the ranker) is kept.
MIN_GAIN = 1e-9
LIST_KINDS: tuple[str, ...] = ("all", "new")


@dataclass(frozen=True)
class ListOrder:
    """How a list is ordered: `kind` "ranker" (the learned ranker of that list kind) or "fusion"
    (weights per source of their reciprocal ranks)."""

    kind: str
    weights: tuple[tuple[str, float], ...] = ()

    @classmethod
    def ranker(cls) -> ListOrder:
        return cls("ranker")

    @classmethod
    def source(cls, name: str) -> ListOrder:
        return cls("fusion", ((name, 1.0),))

    @classmethod
    def fusion(cls, weights: Mapping[str, float]) -> ListOrder:
        kept = tuple(sorted((s, float(w)) for s, w in weights.items() if w > 0))
        if not kept:
            raise ValueError("a fusion needs at least one positive weight")
        return cls("fusion", kept)

    @property
    def name(self) -> str:
        """ "ranker", a source's name when it orders alone, else "fusion(als=1,ease=0.5)"."""
        if self.kind == "ranker":
            return "ranker"
        if len(self.weights) == 1:
            return self.weights[0][0]
        return "fusion(" + ",".join(f"{s}={w:g}" for s, w in self.weights) + ")"

    @property
    def complexity(self) -> tuple[int, int]:
        """(single source 0, fusion 1, ranker 2; then the number of sources): what a tie on
        validation is settled by, the simpler order winning."""
        return (2, 0) if self.kind == "ranker" else (0 if len(self.weights) == 1 else 1, len(self.weights))

    def as_dict(self) -> dict:
        return {"kind": self.kind, "weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, values: Mapping) -> ListOrder:
        if values["kind"] == "ranker":
            return cls.ranker()
        if values["kind"] != "fusion":
            raise ValueError(f"unknown list order kind {values['kind']!r}")
        return cls.fusion(values["weights"])


def fusion_scores(order: ListOrder, ranks: Mapping[str, np.ndarray], sources: Sequence[str]) -> np.ndarray:
    """Σ weight / (RRF_K + rank) over the order's sources (a source that did not propose an item
    adds nothing), plus `TIE_BREAK` times the plain fusion of every source."""
    n = len(next(iter(ranks.values()))) if ranks else 0
    weights = dict(order.weights)
    score = np.zeros(n)
    plain = np.zeros(n)
    for s in sources:
        rr = 1.0 / (RRF_K + np.nan_to_num(ranks[s], nan=np.inf))
        plain += rr
        if s in weights:
            score += weights[s] * rr
    return score + TIE_BREAK * plain


def ndcg_at_k(
    pair_row: np.ndarray,
    pair_item: np.ndarray,
    score: np.ndarray,
    relevant: np.ndarray,
    n_relevant: np.ndarray,
    n_items: int,
    k: int = 10,
    reserved: np.ndarray | None = None,
    slots: int = 0,
) -> float:
    """Mean nDCG@k over the rows with at least one relevant item, of lists ordered by `score`
    (ties: the lower item index, as served). `relevant`: sorted codes row · n_items + item;
    `n_relevant`: per row (relevant items the candidates missed count in the ideal DCG).
    `reserved` (per pair) and `slots`: places kept for reserved items (new products) as
    `models.recs.rules.select_positions` keeps them without a category cap: when the top k holds
    fewer than `slots` of them, the best ones further down replace the last ordinary items."""
    rows_with = np.flatnonzero(n_relevant > 0)
    if len(rows_with) == 0:
        return float("nan")
    order = _row_then_score_order(pair_row, pair_item, score)
    row, item = pair_row[order], pair_item[order]
    starts = np.searchsorted(row, row, side="left")
    rank = np.arange(len(row)) - starts
    if reserved is not None and slots > 0 and reserved.any():
        res = reserved[order]
        n_rows = len(n_relevant)
        in_top = np.bincount(row[res & (rank < k)], minlength=n_rows)
        beyond = np.bincount(row[res], minlength=n_rows) - in_top
        # per pair: its row's reserved places still to fill (no more than there are items for)
        missing = np.minimum(np.maximum(0, slots - in_top), beyond)[row]
        cut = k - missing
        # the reserved items after the cut, in ranked order, fill the places from the cut on
        late = res & (rank >= cut)
        late_before_row = np.searchsorted(np.flatnonzero(late), starts)  # late items of earlier rows
        nth = np.cumsum(late) - 1 - late_before_row
        rank = np.where(rank < cut, rank, np.where(late & (nth < missing), cut + nth, k))
    top = rank < k
    row, item, rank = row[top], item[top], rank[top]
    codes = row.astype(np.int64) * n_items + item
    pos = np.minimum(np.searchsorted(relevant, codes), max(len(relevant) - 1, 0))
    hit = (relevant[pos] == codes) if len(relevant) else np.zeros(len(codes), dtype=bool)
    dcg = np.bincount(row[hit], weights=1.0 / np.log2(rank[hit] + 2.0), minlength=len(n_relevant))
    discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    ideal = discounts[np.minimum(n_relevant[rows_with], k) - 1]
    return float(np.mean(dcg[rows_with] / ideal))


def _row_then_score_order(pair_row: np.ndarray, pair_item: np.ndarray, score: np.ndarray) -> np.ndarray:
    """`np.lexsort((pair_item, -score, pair_row))`: rows ascending, each by score descending, ties
    by the lower item. Candidates come sorted by row then item, so one stable argsort of a float
    key (row, then the score scaled into [0, 1)) gives the same order about ten times faster
    (a search scores dozens of orders); any other input takes the lexsort."""
    in_order = len(pair_row) < 2 or bool(
        np.all((np.diff(pair_row) > 0) | ((np.diff(pair_row) == 0) & (np.diff(pair_item) > 0)))
    )
    finite = np.isfinite(score).all()
    if not (in_order and finite and len(pair_row)):
        return np.lexsort((pair_item, -score, pair_row))
    span = float(score.max() - score.min())
    scaled = (score - score.min()) / (2.0 * span) if span > 0 else np.zeros(len(score))
    key = pair_row.astype(np.float64) - scaled
    # the key keeps the order exactly while its spacing stays well above float64 resolution
    if (
        span > 0
        and np.min(np.abs(np.diff(np.unique(scaled)))) * 1e3 < np.abs(key).max() * np.finfo(float).eps
    ):
        return np.lexsort((pair_item, -score, pair_row))
    return np.argsort(key, kind="stable")


@dataclass
class OrderChoice:
    """The order kept and every order tried, with its validation nDCG@k (best first); `slots`:
    the places kept for new products in the served list (decided by the caller)."""

    best: ListOrder
    tried: list[tuple[ListOrder, float]]
    slots: int = 0
    slot_scores: dict[str, float] = field(default_factory=dict)

    def table(self) -> dict[str, float]:
        return {order.name: round(score, 6) for order, score in self.tried}


def choose_order(
    evaluate: Callable[[ListOrder], float],
    sources: Sequence[str],
    has_ranker: bool,
    search_fusion: bool = True,
) -> OrderChoice:
    """The best order on validation among: each source alone, the plain fusion of all sources, a
    fusion searched greedily from the best single source (each other source added at each weight
    of `FUSION_WEIGHTS` while it helps, then every source it does as well without dropped), and
    the ranker when there is one. `evaluate(order)` gives
    the validation nDCG (NaN: could not be scored, never chosen)."""
    scores: dict[ListOrder, float] = {}

    def score(order: ListOrder) -> float:
        if order not in scores:
            value = float(evaluate(order))
            scores[order] = value if np.isfinite(value) else -np.inf
        return scores[order]

    for s in sources:
        score(ListOrder.source(s))
    score(ListOrder.fusion(dict.fromkeys(sources, 1.0)))
    if has_ranker:
        score(ListOrder.ranker())
    if search_fusion:
        singles = sorted(sources, key=lambda s: (-scores[ListOrder.source(s)], sources.index(s)))
        weights = {singles[0]: 1.0}
        current = score(ListOrder.fusion(weights))
        for s in singles[1:]:
            best_w, best_score = None, current
            for w in FUSION_WEIGHTS:
                value = score(ListOrder.fusion({**weights, s: w}))
                if value > best_score + MIN_GAIN:
                    best_w, best_score = w, value
            if best_w is not None:
                weights[s], current = best_w, best_score
        # then drop every source the fusion does as well without (added early, made redundant
        # by a later one): of orders that tie, the one with fewer sources is served
        for s in sorted(weights, key=lambda s: -sources.index(s)):
            if len(weights) > 1:
                rest = {name: w for name, w in weights.items() if name != s}
                if score(ListOrder.fusion(rest)) >= current - MIN_GAIN:
                    weights = rest
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0].complexity, kv[0].name))
    best = ranked[0][0]
    # a more complex order must beat every simpler one by MIN_GAIN, not just tie it
    for order, value in ranked[1:]:
        if order.complexity < best.complexity and value >= scores[best] - MIN_GAIN:
            best = order
    tried = [(o, v if np.isfinite(v) else float("nan")) for o, v in ranked]
    return OrderChoice(best=best, tried=tried)
