"""Two-stage product recommendations: candidate sources, a LambdaRank ranker, then the business rules.

Stage 1 (`models.recs.candidates`): ALS on the cross-channel interaction matrix, EASE item-item
neighbours, "bought together" co-occurrence, popular and trending products per segment and
channel, replenishment items whose cycle is due, and content-based scores for products without
history each propose their best products among those the rules allow.
Stage 2 (`models.recs.ranker`): a LightGBM LambdaRank model orders the union from the sources' scores
and ranks plus customer × product features.
Then `models.recs.rules`: channel eligibility, the per-category cap and a reserved slot for a new product;
every returned product carries a reason (`personal`, `similar_to:<id>`, `bought_together:<id>`,
`replenish`, `popular`).

No leakage: `fit(..., as_of=T)` learns the ranker from candidates built on events before
T - label_days and labels (purchases) in [T - label_days, T), then refits the sources on all events
before T, which is what is served. Evaluating on [T, end) therefore never sees the test window.

One request (`recommend`, what the HTTP service calls) takes the single-request path: numpy over
slices of the customer's CSR rows (the arrays prepared at fit time, never rebuilt as scipy matrices),
a few dense vectors over the catalogue, popularity orders cached per segment and channel, and
LightGBM's `Booster.predict` on a few hundred candidates with one thread. Batch scoring
(`recommend_many`, `recommendations_frame`) runs the same steps on scipy matrices of up to 256
customers. Both do the same floating-point operations in the same order, so they cannot disagree:
tests/test_two_stage_fast.py checks that lists, scores and reasons are identical.

Context items (viewed or carted in the current session) change the list at once: ALS folds the
customer in again with them (like a cart add), the item-item sources read them with extra weight,
and, because the ranker never saw a session while training, candidates that go with the session
items are moved up explicitly after ranking (`context_rank_boost`). Context items are not returned.

Channels: the request channel filters (channel eligibility, after ranking) and never reorders, so
the same customer and context get the same order everywhere; the customer's own main channel is
what the sources and features use. The one exception is a customer we know nothing about (no
history, no context): they get popular products for their segment (the customers table's optional
`segment` column, else none) and for the channel they are on.

New products: the content source proposes products without history in the customer's favourite
categories and price band, and `new_product_slots` places in each list are kept for the best of
them, so they can be shown before anyone has bought them.

Determinism: ties everywhere break on the lower catalogue index.

Saved to a plain folder (json, npy, npz, LightGBM text), never pickle.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from features import columns as c
from features.codes import positions
from features.contract import DEFAULT_CHANNELS
from features.interactions import build_interactions
from features.io import Tables, rows_before
from models.base import read_model_meta
from models.fitting import fit_pool
from models.recs import rules
from models.recs.als import ALSScorer
from models.recs.baselines import Recommendation
from models.recs.candidates import (
    CoOccurrenceScorer,
    EASENeighbours,
    NewProductScorer,
    PurchaseHistory,
    SegmentChannelPopularity,
    basket_matrix,
    estimate_cycle_days,
    replenishment_scores,
)
from models.recs.list_order import (
    LIST_KINDS,
    MIN_GAIN,
    ListOrder,
    OrderChoice,
    choose_order,
    fusion_scores,
    ndcg_at_k,
)
from models.recs.ranker import (
    FEATURE_NAMES,
    SOURCES,
    CandidatePairs,
    CSRRow,
    LambdaRankModel,
    build_features,
    gather,
    row_profiles,
)

FORMAT_VERSION = 2  # 2: the buy-again source, a ranker per list kind, the served orders
# The optional customers column naming a marketing segment (belongs in features/columns.py).
SEGMENT = getattr(c, "SEGMENT", "segment")
UNKNOWN_CATEGORY = "unknown"
# A session item counts like a cart add when ALS folds the customer in (DEFAULT_EVENT_WEIGHTS).
CONTEXT_WEIGHT = 3.0
# A candidate at least this close to the session items (0..1) is explained by them.
CONTEXT_REASON_MIN = 0.5
# The ranker's sources and the final sources are fitted side by side (`fit_pool`) while the
# events' rows weighted by this stay under the side-by-side limit: a sources fit holds about a
# quarter of what a channel / send-time fit holds per event (at a million customers, 36M events:
# about 3.5 GB above the loaded tables against 8), so the pair runs side by side there too.
SOURCES_ROW_WEIGHT = 0.25
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
# (segment, channel, popular/trending) score vectors kept sorted for single requests.
POPULAR_CACHE_SIZE = 512


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
class _Batch:
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

    def subset(self, rows: np.ndarray) -> _Batch:
        return _Batch(
            **{
                name: take_rows(value, rows) if sp.issparse(value) else value[rows]
                for name, value in vars(self).items()
            }
        )


class TwoStageRecommender:
    """Candidates from several sources, ranked by LambdaRank, filtered by the business rules.

    Parameters (fitted attributes end in `_`):
    - `half_life_days`: recency half-life of the interaction weights (features.interactions);
    - `label_days`: length of the label window the ranker learns from, just before `as_of`;
      `min_label_customers`: fewer customers than this came back in it, and purchases held out at
      random from the whole history are learned and chosen on instead, when that gives more;
    - `n_candidates`: candidates per personal source (ALS, EASE, co-occurrence); `n_popular`,
      `n_trending`, `n_replenish`, `n_repeat` (buy again), `n_content`: per other source;
    - `factors`, `regularization`, `alpha`, `iterations`: ALS (models.recs.als.ALSScorer);
    - `ease_l2`, `ease_max_items`, `ease_neighbours`: EASE (models.recs.candidates.EASENeighbours);
      `ease_max_items=0` turns EASE off;
    - `cooc_neighbours`, `cooc_shrinkage`: co-occurrence (models.recs.candidates.CoOccurrenceScorer);
    - `popularity_days`, `trend_days`: popularity windows;
    - `replenish_due_from`: a bought replenishable product may come back from this share of its cycle;
    - `context_boost`: weight of a session item, relative to a past item, in the item-item sources;
    - `context_rank_boost`: after ranking, a candidate that goes with the session items moves up by
      up to this many standard deviations of the list's scores (the ranker never saw sessions);
    - `new_product_slots`: places in every list reserved for products without history, when the
      content source finds one that suits the customer (0 = none); kept only where they cost
      nothing on validation (`new_slots_`, per list kind: dead stock never bought costs places);
    - `max_train_customers`: customers sampled for each ranker's training set;
      `max_validation_customers`: other customers of the label window, held out to choose what
      orders the served lists (`models.recs.list_order`); `validation_share`: the share of the label
      window's customers held out when there are fewer than both maxima together;
    - `n_estimators`, `learning_rate`, `num_leaves`, `min_child_samples`: the LambdaRank model;
    - `random_state`, `num_threads` (0 = all cores).
    """

    def __init__(
        self,
        half_life_days: float = 90.0,
        label_days: int = 28,
        n_candidates: int = 100,
        n_popular: int = 50,
        n_trending: int = 20,
        n_replenish: int = 50,
        n_repeat: int = 50,
        n_content: int = 20,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 2.0,
        iterations: int = 15,
        ease_l2: float = 500.0,
        ease_max_items: int = 10_000,
        ease_neighbours: int = 200,
        cooc_neighbours: int = 100,
        cooc_shrinkage: float = 5.0,
        popularity_days: float = 90.0,
        trend_days: float = 14.0,
        replenish_due_from: float = 0.8,
        context_boost: float = 5.0,
        context_rank_boost: float = 2.0,
        new_product_slots: int = 1,
        max_train_customers: int = 3_000,
        max_validation_customers: int = 2_000,
        min_label_customers: int = 500,
        validation_share: float = 0.3,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 100,
        random_state: int = 0,
        num_threads: int = 0,
    ):
        self.half_life_days = half_life_days
        self.label_days = label_days
        self.n_candidates = n_candidates
        self.n_popular = n_popular
        self.n_trending = n_trending
        self.n_replenish = n_replenish
        self.n_repeat = n_repeat
        self.n_content = n_content
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.ease_l2 = ease_l2
        self.ease_max_items = ease_max_items
        self.ease_neighbours = ease_neighbours
        self.cooc_neighbours = cooc_neighbours
        self.cooc_shrinkage = cooc_shrinkage
        self.popularity_days = popularity_days
        self.trend_days = trend_days
        self.replenish_due_from = replenish_due_from
        self.context_boost = context_boost
        self.context_rank_boost = context_rank_boost
        self.new_product_slots = new_product_slots
        self.max_train_customers = max_train_customers
        self.max_validation_customers = max_validation_customers
        self.min_label_customers = min_label_customers
        self.validation_share = validation_share
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.random_state = random_state
        self.num_threads = num_threads

    def get_params(self) -> dict:
        return {name: getattr(self, name) for name in _PARAM_NAMES}

    # ================================================================== fitting
    def fit(
        self,
        tables: Tables | pd.DataFrame,
        products: pd.DataFrame | None = None,
        customers: pd.DataFrame | None = None,
        as_of: pd.Timestamp | None = None,
        show_progress: bool = False,
        warm_stage: TwoStageRecommender | None = None,
    ) -> TwoStageRecommender:
        """Learn from events before `as_of` (default: after the last event).

        `tables`: a `Tables` after `features.identity.stitch_identities`, or an events frame with
        optional `products` / `customers` frames. The ranker is trained on candidates as of
        `as_of - label_days` against the purchases of the following `label_days`; the sources
        are then refitted on everything before `as_of`. `warm_stage`: a recommender with the same
        parameters already fitted as of `as_of - label_days` on the same data (e.g. the model of
        a time-split evaluation); its sources are reused for the ranker's training set.
        """
        started = time.perf_counter()
        events, products, customers = _parts(tables, products, customers)
        if events is None or events.empty:
            raise ValueError("no events: nothing to learn from")
        if as_of is None:
            as_of = events[c.TS].max() + pd.Timedelta(microseconds=1)
        as_of = pd.Timestamp(as_of)
        label_start = as_of - pd.Timedelta(days=self.label_days)
        steps = tqdm(total=3, desc="two-stage", unit="step", disable=not show_progress)

        steps.set_postfix_str("sources before the label window")
        info: dict = {"as_of": as_of.isoformat(), "label_start": label_start.isoformat()}
        self.ranker_ = None
        if warm_stage is not None and (
            warm_stage.as_of_ != label_start or warm_stage.get_params() != self.get_params()
        ):
            raise ValueError("warm_stage must share the parameters and be fitted as of as_of - label_days")
        with fit_pool(2, rows=len(events), row_weight=SOURCES_ROW_WEIGHT) as pool:
            # the sources on all history do not depend on the ranker (nor it on them): with a
            # second core they are fitted beside it; the same model either way
            sources = pool.submit(self._fit_sources, events, products, customers, as_of) if pool else None
            self._fit_ranker(events, products, customers, as_of, label_start, warm_stage, info, steps)
            steps.set_postfix_str("sources on all history")
            if sources is None:
                self._fit_sources(events, products, customers, as_of)
            else:
                sources.result()
        steps.update()
        steps.close()
        info["seconds"] = round(time.perf_counter() - started, 3)
        self.training_info_ = info
        return self

    def _fit_ranker(self, events, products, customers, as_of, label_start, warm_stage, info, steps) -> None:
        """The rankers (`ranker_` for the default list, `ranker_new_` for the list of products the
        customer never bought) and the served orders (`served_`), learned from a state of the
        sources before some known purchases and chosen on customers held out of the rankers'
        training (`models.recs.list_order`).

        The known purchases are those of the label window (`label_start` to `as_of`: candidates
        as of `label_start`). When too few customers came back in it (`min_label_customers`: the
        customers of a shop like MovieLens come in bursts), they are instead purchases held out at
        random from everything before `as_of` (`_holdout_stage`), which leaves many more customers
        to learn and choose on (the note says which was used).
        """
        self.ranker_ = self.ranker_new_ = None
        # nothing to validate on: every source's vote counts the same (reciprocal-rank fusion)
        self.served_ = {kind: ListOrder.fusion(dict.fromkeys(SOURCES, 1.0)) for kind in LIST_KINDS}
        self.served_validation_ = {}
        self.new_slots_ = dict.fromkeys(LIST_KINDS, self.new_product_slots)
        stage, labels, pool = None, None, np.zeros(0, dtype=np.int64)
        if (events[c.TS] < label_start).any():
            if warm_stage is not None:
                stage = warm_stage
            else:
                stage = TwoStageRecommender(**self.get_params())._fit_sources(
                    events, products, customers, label_start
                )
            window = events[(events[c.TS] >= label_start) & (events[c.TS] < as_of)]
            labels = stage._window_labels(window)
            pool = self._returning(labels["all"] // len(stage.product_ids_), stage.customer_has_history_)
            info["label_window"] = f"purchases from {label_start} to {as_of}"
        steps.update()
        if len(pool) < self.min_label_customers:
            held = self._holdout_stage(events, products, customers, as_of)
            if held is not None and len(held[2]) > len(pool):
                returning = len(pool)
                stage, labels, pool = held
                info["label_window"] = (
                    f"purchases of {len(pool):,} customers held out at random before {as_of} (only "
                    f"{returning:,} customers came back within the {label_start} - {as_of} window)"
                )
        steps.set_postfix_str("ranker")
        if stage is not None and len(pool):
            self._learn_and_choose(stage, labels, pool, info)
        if self.ranker_ is None:
            info["ranker"] = (
                "no customer with history bought a candidate in the label window: no ranker was "
                "learned, and the served order is chosen among the sources and their fusions"
            )
        info["served"] = {kind: order.name for kind, order in self.served_.items()}
        info["new_product_slots"] = dict(self.new_slots_)
        info["served_validation_ndcg@10"] = self.served_validation_
        steps.update()

    def _learn_and_choose(
        self, stage: TwoStageRecommender, labels: dict, pool: np.ndarray, info: dict
    ) -> None:
        """Rankers from the training customers of `pool`, the served orders chosen on the others.
        Each list kind's candidates are generated once for all of them (the costly part)."""
        train, validation = self._split_label_customers(pool)
        everyone = np.union1d(train, validation)
        # held-out customers taken from a small pool: once the orders are chosen, a chosen ranker
        # learns from them too (as a model is refitted after model selection)
        pooled = len(everyone) < self.max_train_customers + self.max_validation_customers
        info["validation_customers"] = int(len(validation))
        examples = stage._candidate_set(everyone, labels)
        for kind in LIST_KINDS:
            ranker, example_info = self._learn_ranker(examples, train, kind)
            self._set_ranker(kind, ranker)
            if kind == "all":
                info.update(example_info)
                if ranker is not None:
                    info["ranker_best_iteration"] = ranker.best_iteration_
                    info["ranker_validation_ndcg@10"] = round(ranker.validation_ndcg_, 6)
                    info["feature_gain"] = ranker.feature_importance()
            else:
                info["ranker_new"] = example_info | (
                    {"best_iteration": ranker.best_iteration_} if ranker is not None else {}
                )
            choice = self._choose_served(stage, examples, validation, ranker, kind)
            if choice is None:
                continue
            self.served_[kind] = choice.best
            self.new_slots_[kind] = choice.slots
            self.served_validation_[kind] = choice.table() | choice.slot_scores
            if pooled and len(validation) and choice.best.kind == "ranker":
                self._set_ranker(kind, self._learn_ranker(examples, everyone, kind)[0])

    def _returning(self, label_rows: np.ndarray, has_history: np.ndarray) -> np.ndarray:
        """The distinct customers among `label_rows` with history before the labels."""
        rows = np.unique(label_rows)
        return rows[has_history[rows]]

    def _holdout_stage(self, events, products, customers, as_of):
        """(stage, labels, customers) from purchases held out at random: for a seeded sample of the
        customers who bought at least twice before `as_of`, a `validation_share` of their purchase
        events (at least one, never all) is held out, with every other event of a product whose
        purchases are all held out (a view of it would give the answer away); the sources are
        fitted on the rest (`stage`) and the held-out purchases are the labels: re-buys where the
        customer bought the product again, new products where not. None when nobody bought twice."""
        columns = [col for col in _SOURCE_COLUMNS if col in events.columns]
        ev = events.loc[(events[c.TS] < as_of).to_numpy(), columns].reset_index(drop=True)
        is_buy = (ev[c.EVENT_TYPE] == "purchase").to_numpy(dtype=bool, na_value=False)
        is_buy = is_buy & ev[c.PRODUCT_ID].notna().to_numpy()
        customer = positions(pd.Index(pd.unique(ev[c.CUSTOMER_ID])), ev[c.CUSTOMER_ID])
        n_buys = np.bincount(customer[is_buy], minlength=customer.max() + 1 if len(customer) else 0)
        eligible = np.flatnonzero(n_buys >= 2)
        if not len(eligible):
            return None
        rng = np.random.default_rng(self.random_state)
        n = min(len(eligible), self.max_train_customers + self.max_validation_customers)
        sampled = np.zeros(len(n_buys), dtype=bool)
        sampled[rng.choice(eligible, n, replace=False)] = True
        candidates = np.flatnonzero(is_buy & sampled[customer])
        held = candidates[rng.random(len(candidates)) < self.validation_share]
        # at least one purchase held out and one kept per sampled customer
        order = rng.permutation(candidates)
        first = order[np.unique(customer[order], return_index=True)[1]]
        held = np.union1d(held, first)
        kept_one = order[::-1][np.unique(customer[order[::-1]], return_index=True)[1]]
        held = np.setdiff1d(held, kept_one[~np.isin(kept_one, first)])
        held_mask = np.zeros(len(ev), dtype=bool)
        held_mask[held] = True
        product = positions(pd.Index(pd.unique(ev[c.PRODUCT_ID].dropna())), ev[c.PRODUCT_ID])
        pair = customer.astype(np.int64) * (product.max() + 2) + product
        still_bought = np.unique(pair[is_buy & ~held_mask])
        gone = np.setdiff1d(np.unique(pair[held_mask]), still_bought)
        hide = held_mask | (~is_buy & np.isin(pair, gone))
        stage = TwoStageRecommender(**self.get_params())._fit_sources(
            ev.loc[~hide], products, customers, as_of
        )
        labels = stage._window_labels(ev.loc[held_mask])
        pool = self._returning(labels["all"] // len(stage.product_ids_), stage.customer_has_history_)
        return stage, labels, pool

    def _set_ranker(self, kind: str, ranker: LambdaRankModel | None) -> None:
        if kind == "all":
            self.ranker_ = ranker
        else:
            self.ranker_new_ = ranker

    def _ranker_of(self, kind: str) -> LambdaRankModel | None:
        return self.ranker_ if kind == "all" else self.ranker_new_

    def _split_label_customers(self, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(training, validation) rows among `pool` (customers with history and labels):
        disjoint seeded samples of at most `max_train_customers` / `max_validation_customers`;
        from a smaller pool, `validation_share` of it is held out (none below ten customers:
        nothing could be told apart)."""
        rng = np.random.default_rng(self.random_state)
        pool = rng.permutation(pool)
        if len(pool) >= self.max_train_customers + self.max_validation_customers:
            n_valid = self.max_validation_customers
        elif len(pool) >= 10:
            n_valid = int(round(len(pool) * self.validation_share))
        else:
            n_valid = 0
        validation = np.sort(pool[:n_valid])
        train = np.sort(pool[n_valid:][: self.max_train_customers])
        return train, validation

    def _window_labels(self, window: pd.DataFrame) -> dict[str, np.ndarray]:
        """Sorted codes row · n_items + item of this (earlier) state's customers' purchases in
        `window`: "all" of them, and "new" (products the customer had not bought before)."""
        buys = window[(window[c.EVENT_TYPE] == "purchase") & window[c.PRODUCT_ID].notna()]
        row = positions(pd.Index(self.customer_ids_), buys[c.CUSTOMER_ID])
        col = positions(pd.Index(self.product_ids_), buys[c.PRODUCT_ID])
        ok = (row >= 0) & (col >= 0)
        n_items = len(self.product_ids_)
        codes = np.unique(row[ok].astype(np.int64) * n_items + col[ok])
        bought = self.last_age_days_.tocoo()
        before = np.unique(bought.row.astype(np.int64) * n_items + bought.col)
        return {"all": codes, "new": np.setdiff1d(codes, before, assume_unique=True)}

    def _learn_ranker(
        self, examples: CandidateSet, customers: np.ndarray, kind: str
    ) -> tuple[LambdaRankModel | None, dict]:
        """A LambdaRank model of the `kind` list from the candidates of `customers` in `examples`
        (one group per customer with a bought candidate: a group without one teaches LambdaRank
        nothing), and a summary of its training set; None when no customer had a candidate that
        was bought."""
        in_kind = examples.pairs(kind)
        y = examples.y[kind]
        keep_rows = np.isin(examples.customers, customers)
        positives = np.bincount(
            examples.pair_row[in_kind], weights=y[in_kind], minlength=len(examples.customers)
        )
        groups_mask = keep_rows & (positives > 0)
        pairs = in_kind & groups_mask[examples.pair_row]
        groups = np.bincount(examples.pair_row[pairs], minlength=len(examples.customers))[groups_mask]
        wanted = int(examples.labels_per_row[kind][keep_rows].sum())
        found = int(positives[keep_rows].sum())
        info = {
            "train_customers": int(keep_rows.sum()),
            "train_groups": int(len(groups)),
            "train_rows": int(pairs.sum()),
            "label_pairs": wanted,
            # share of the label purchases the candidate sources proposed: the ranker's ceiling
            "candidate_recall": round(found / wanted, 4) if wanted else float("nan"),
            "mean_candidates": round(float(pairs.sum() / max(len(groups), 1)), 1),
        }
        if not len(groups):
            return None, info
        ranker = LambdaRankModel(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            random_state=self.random_state,
            num_threads=self.num_threads,
        ).fit(examples.features[pairs], y[pairs], groups)
        return ranker, info

    def _choose_served(
        self,
        stage: TwoStageRecommender,
        examples: CandidateSet,
        rows: np.ndarray,
        ranker: LambdaRankModel | None,
        kind: str,
    ) -> OrderChoice | None:
        """The order of the `kind` list with the best nDCG@10 on the held-out customers `rows`
        (their candidates in `examples`, as served: the same blocking and sources)."""
        n_items = len(stage.product_ids_)
        keep_rows = np.isin(examples.customers, rows) & (examples.labels_per_row[kind] > 0)
        if not keep_rows.any():
            return None
        local_of = np.cumsum(keep_rows) - 1
        pairs = examples.pairs(kind) & keep_rows[examples.pair_row]
        pair_row = local_of[examples.pair_row[pairs]]
        pair_item = examples.pair_item[pairs]
        ranks = {s: r[pairs] for s, r in examples.ranks.items()}
        # what may take a place reserved for a new product, as `_reserved` says when serving
        reserved = stage.item_is_new_[pair_item] & ~np.isnan(ranks["content"])
        ranker_scores = ranker.predict(examples.features[pairs]) if ranker is not None else None
        label_codes = examples.label_codes[kind]
        relevant_rows = label_codes // n_items
        kept = np.flatnonzero(keep_rows)
        at = np.searchsorted(examples.customers[kept], relevant_rows)
        found = (at < len(kept)) & (examples.customers[kept][np.minimum(at, len(kept) - 1)] == relevant_rows)
        relevant = np.sort(at[found].astype(np.int64) * n_items + label_codes[found] % n_items)
        n_relevant = np.bincount(at[found], minlength=len(kept))

        def evaluate(order: ListOrder, slots: int = self.new_product_slots) -> float:
            score = ranker_scores if order.kind == "ranker" else fusion_scores(order, ranks, SOURCES)
            return ndcg_at_k(pair_row, pair_item, score, relevant, n_relevant, n_items, 10, reserved, slots)

        # a source that proposed nothing here is no alternative (its "list" is the tie-break alone)
        proposing = [s for s in SOURCES if np.isfinite(ranks[s]).any()]
        choice = choose_order(evaluate, proposing or list(SOURCES), has_ranker=ranker is not None)
        if self.new_product_slots > 0:
            # the places kept for products without history stay only where they cost nothing on
            # validation: in a catalogue where such products are dead stock, they only cost
            without = evaluate(choice.best, 0)
            with_slots = dict(choice.tried)[choice.best]
            choice.slots = self.new_product_slots if with_slots >= without - MIN_GAIN else 0
            choice.slot_scores = {"with_new_product_slots": with_slots, "without": without}
        return choice

    def _fit_sources(
        self,
        events: pd.DataFrame,
        products: pd.DataFrame | None,
        customers: pd.DataFrame | None,
        as_of: pd.Timestamp,
    ) -> TwoStageRecommender:
        """Everything but the ranker, from events strictly before `as_of`."""
        self.as_of_ = pd.Timestamp(as_of)
        ev = rows_before(events, c.TS, as_of, _SOURCE_COLUMNS)
        self._fit_catalogue(ev, products)
        interactions = build_interactions(
            ev, product_ids=self.product_ids_, as_of=as_of, half_life_days=self.half_life_days
        )
        # customers of the customers table without events get (empty) rows too: they are known,
        # with a segment, but cold. One sorted id order (a pandas set operation: numpy's setdiff1d
        # on unicode arrays takes seconds at this size).
        event_ids = pd.Index(np.asarray(interactions.customer_ids, dtype=str))
        if customers is not None:
            all_ids = event_ids.union(pd.Index(customers[c.CUSTOMER_ID].dropna().astype(str).unique()))
        else:
            all_ids = event_ids
        self.customer_ids_ = np.asarray(all_ids.sort_values(), dtype=str)
        position = pd.Index(self.customer_ids_).get_indexer(event_ids)
        place = sp.csr_matrix(
            (np.ones(len(position), np.float32), (position, np.arange(len(position)))),
            shape=(len(self.customer_ids_), len(position)),
        )
        self.user_items_ = (place @ interactions.matrix.astype(np.float32)).tocsr()
        self.user_items_.sort_indices()
        self.purchased_ = (place.astype(bool) @ interactions.purchased).tocsr()
        history = PurchaseHistory(half_life_days=self.half_life_days).fit(
            ev, self.customer_ids_, self.product_ids_, as_of
        )
        self.last_age_days_ = history.last_age_days_
        self.n_purchases_ = history.n_purchases_
        self.repeat_weight_ = history.repeat_weight_
        if np.isnan(self.item_cycle_days_).all():
            self.item_cycle_days_ = estimate_cycle_days(ev, self.product_ids_, as_of)
            self.cycles_estimated_ = True
        else:
            self.cycles_estimated_ = False
        self._fit_customers(ev, customers)
        self._index()
        baskets = basket_matrix(ev, self.product_ids_)
        segment_of = pd.Series(self.customer_segment_, index=self.customer_ids_)
        self.popularity_ = SegmentChannelPopularity(
            window_days=self.popularity_days, trend_days=self.trend_days
        ).fit(ev, self.product_ids_, segment_of[segment_of >= 0], len(self.segments_), self.channels_, as_of)
        del ev, interactions, place  # the fits below read none of them: free the copy of the history

        self.als_ = ALSScorer(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=self.num_threads,
        ).fit(self.user_items_)
        self._serve_single_threaded()
        self.ease_ = EASENeighbours(
            l2=self.ease_l2, max_items=self.ease_max_items, n_neighbours=self.ease_neighbours
        ).fit(self.user_items_)
        self.cooc_ = CoOccurrenceScorer(n_neighbours=self.cooc_neighbours, shrinkage=self.cooc_shrinkage).fit(
            baskets
        )
        del baskets
        seen = np.diff(self.user_items_.tocsc().indptr) > 0
        self.item_is_new_ = ~seen
        self.content_ = NewProductScorer().fit(
            self.item_category_, self.item_log_price_, self.item_is_new_ & self.item_active_
        )
        return self

    def _fit_catalogue(self, ev: pd.DataFrame, products: pd.DataFrame | None) -> None:
        """Per-product arrays over products table ∪ products seen in events, sorted by id."""
        seen = ev[c.PRODUCT_ID].dropna().astype(str).unique()
        listed = products[c.PRODUCT_ID].astype(str).to_numpy() if products is not None else np.array([], str)
        self.product_ids_ = np.union1d(listed, seen).astype(str)
        n = len(self.product_ids_)
        table = (
            products.assign(**{c.PRODUCT_ID: products[c.PRODUCT_ID].astype(str)}).drop_duplicates(
                c.PRODUCT_ID
            )
            if products is not None
            else pd.DataFrame({c.PRODUCT_ID: pd.Series([], dtype=str)})
        )
        table = table.set_index(c.PRODUCT_ID).reindex(self.product_ids_)

        def column(name, default):
            return table[name] if name in table.columns else pd.Series(default, index=table.index)

        category = (
            column(c.CATEGORY, UNKNOWN_CATEGORY).astype(object).where(lambda s: s.notna(), UNKNOWN_CATEGORY)
        )
        category = category.astype(str)
        self.categories_ = tuple(sorted(category.unique().tolist()))
        self.item_category_ = pd.Index(self.categories_).get_indexer(category).astype(np.int64)
        price = pd.to_numeric(column(c.PRICE, np.nan), errors="coerce").to_numpy(np.float64)
        self.item_price_ = price
        with np.errstate(invalid="ignore", divide="ignore"):
            self.item_log_price_ = np.where(price > 0, np.log(np.where(price > 0, price, 1.0)), np.nan)
        active = column(c.IS_ACTIVE, True).astype(object).where(lambda s: s.notna(), True)
        self.item_active_ = active.astype(bool).to_numpy()
        cycles = pd.to_numeric(column(c.REPLENISHMENT_DAYS, np.nan), errors="coerce").to_numpy(np.float64)
        self.item_cycle_days_ = np.where(cycles > 0, cycles, np.nan)
        channels = list(DEFAULT_CHANNELS)
        channels += sorted(set(ev[c.CHANNEL].dropna().astype(str).unique()) - set(channels))
        self.channels_ = tuple(channels)
        self.channel_ok_ = rules.channel_eligibility(products, self.product_ids_, self.channels_)
        assert self.channel_ok_.shape == (n, len(self.channels_) + 1)

    def _fit_customers(self, ev: pd.DataFrame, customers: pd.DataFrame | None) -> None:
        """Segment (customers table, else favourite category) and main channel of every customer."""
        n_customers = len(self.customer_ids_)
        # the contract adds an absent customers.segment as all missing: fall back then, as before
        if customers is not None and SEGMENT in customers.columns and customers[SEGMENT].notna().any():
            named = customers.dropna(subset=[SEGMENT]).drop_duplicates(c.CUSTOMER_ID)
            seg = pd.Series(named[SEGMENT].astype(str).to_numpy(), index=named[c.CUSTOMER_ID].astype(str))
            self.segments_ = tuple(sorted(seg.unique().tolist()))
            self.customer_segment_ = (
                pd.Index(self.segments_).get_indexer(seg.reindex(self.customer_ids_)).astype(np.int64)
            )
            self.segment_source_ = f"customers.{SEGMENT}"
        else:
            profiles = row_profiles(
                self.user_items_, self.item_category_, len(self.categories_), self.item_log_price_
            )
            favourite = np.argmax(profiles.affinity, axis=1)  # ties: the first category
            self.segments_ = tuple(f"category:{name}" for name in self.categories_)
            self.customer_segment_ = np.where(profiles.weight > 0, favourite, -1).astype(np.int64)
            self.segment_source_ = "favourite category"
        # main channel: where the customer has most events (ties: the earlier channel in channels_)
        n_channels = len(self.channels_)
        channel = positions(pd.Index(self.channels_), ev[c.CHANNEL])
        customer = positions(pd.Index(self.customer_ids_), ev[c.CUSTOMER_ID])
        ok = (channel >= 0) & (customer >= 0)
        counts = np.bincount(
            customer[ok] * n_channels + channel[ok], minlength=n_customers * n_channels
        ).reshape(n_customers, n_channels)
        self.customer_main_channel_ = np.where(counts.sum(axis=1) > 0, np.argmax(counts, axis=1), -1).astype(
            np.int64
        )
        assert len(self.customer_main_channel_) == n_customers

    def _serve_single_threaded(self) -> None:
        # Requests fold one customer in at a time: starting OpenMP threads for that costs about
        # a hundred times the solve itself (5 ms against 0.05 ms at 64 factors), so one thread.
        self.als_.model_.num_threads = 1

    def _index(self) -> None:
        self.customer_index_ = {cid: i for i, cid in enumerate(self.customer_ids_.tolist())}
        self.product_index_ = {pid: i for i, pid in enumerate(self.product_ids_.tolist())}
        self.customer_has_history_ = np.diff(self.user_items_.indptr) > 0
        self.precomputed_ = (
            None  # lists computed ahead belong to one fitted state (`models.recs.precomputed`)
        )

    def _candidate_set(self, customers: np.ndarray, labels: dict[str, np.ndarray]) -> CandidateSet:
        """Every candidate of `customers` (sorted rows of this, earlier, state) for the default
        list, with its features, whether the customer had bought it (`bought`: the list without
        bought products is the rest) and its label in each list kind (`labels[kind]`: codes
        row · n_items + item)."""
        n_items = len(self.product_ids_)
        rows, items, feats, bought = [], [], [], []
        ranks: dict[str, list] = {s: [] for s in SOURCES}
        for start in range(0, len(customers), 512):
            idx = customers[start : start + 512]
            batch = self._prepare(idx, None, None, rules.Filters(), 0.0)
            pairs, features = self._candidates(batch)
            rows.append(pairs.row + start)
            items.append(pairs.item)
            feats.append(features)
            bought.append(gather(batch.ages, pairs.row, pairs.item) > 0)
            for s in SOURCES:
                ranks[s].append(pairs.ranks[s])
        pair_row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        pair_item = np.concatenate(items) if items else np.zeros(0, np.int64)
        codes = pair_row * 0 if not len(pair_row) else customers[pair_row] * n_items + pair_item
        kind_labels = {kind: label[np.isin(label // n_items, customers)] for kind, label in labels.items()}
        return CandidateSet(
            customers=np.asarray(customers, dtype=np.int64),
            pair_row=pair_row,
            pair_item=pair_item,
            ranks={s: np.concatenate(v) if v else np.zeros(0) for s, v in ranks.items()},
            features=np.concatenate(feats) if feats else np.zeros((0, len(FEATURE_NAMES)), np.float32),
            bought=np.concatenate(bought) if bought else np.zeros(0, dtype=bool),
            y={kind: np.isin(codes, label).astype(np.float64) for kind, label in kind_labels.items()},
            label_codes=kind_labels,
            labels_per_row={
                kind: np.bincount(np.searchsorted(customers, label // n_items), minlength=len(customers))
                for kind, label in kind_labels.items()
            },
        )

    # ================================================================== recommending
    def recommend_many(
        self,
        customer_ids: list[str],
        k: int = 10,
        exclude: list[list[str]] | None = None,
        context_items: list[list[str]] | None = None,
        channel: str | None = None,
        filters: rules.Filters | dict | None = None,
        model: str = "served",
        now: pd.Timestamp | None = None,
    ) -> list[Recommendation]:
        """Top-k products per customer, each with a reason, after every business rule.

        `exclude` / `context_items`: per customer, ids never to return / items of the current
        session (they shape the list and are not returned themselves). `channel`: the channel
        asking (None = no channel rule, for batch). `filters`: `models.recs.rules.Filters` or a dict
        (include_categories / categories, exclude_categories, price_min, price_max,
        max_per_category, exclude_purchased). `model`: "served" (the order chosen on validation for
        the list's kind, what every caller gets), or for a comparison under the same rules "ranker"
        or one source alone ("als", "ease", "popularity", "repeat", ...). `now`: the request time
        for replenishment (default: the end of the training data).
        """
        return self.compare_many(customer_ids, k, (model,), exclude, context_items, channel, filters, now)[
            model
        ]

    def compare_many(
        self,
        customer_ids: list[str],
        k: int = 10,
        models: tuple[str, ...] = ("served",),
        exclude: list[list[str]] | None = None,
        context_items: list[list[str]] | None = None,
        channel: str | None = None,
        filters: rules.Filters | dict | None = None,
        now: pd.Timestamp | None = None,
        explained: tuple[str, ...] | None = None,
    ) -> dict[str, list[Recommendation]]:
        """`recommend_many` for several `models` at once (name → lists): the candidates are
        generated once and each model only orders them, which is what an evaluation beside the
        baselines needs. A source compared alone lists only what it proposed; the items of models
        not in `explained` (None: all) carry the model's name as their reason."""
        filters = rules.Filters.from_dict(filters)
        kind = "new" if filters.exclude_purchased else "all"
        return self._compare(
            customer_ids, k, models, exclude, context_items, channel, filters, now, explained, (kind,)
        )[kind]

    def compare_kinds(
        self, customer_ids: list[str], k: int = 10, models: tuple[str, ...] = ("served",), explained=None
    ) -> dict[str, dict[str, list[Recommendation]]]:
        """`compare_many` of the default lists ("all") and of the lists without bought products
        ("new") from one set of candidates: the discovery sources never propose a bought product,
        so the "new" candidates are the default ones less the re-buys, with the same features."""
        return self._compare(
            customer_ids, k, models, None, None, None, rules.Filters(), None, explained, LIST_KINDS
        )

    def _compare(
        self, customer_ids, k, models, exclude, context_items, channel, filters, now, explained, kinds
    ) -> dict[str, dict[str, list[Recommendation]]]:
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise ValueError(f"unknown model {unknown[0]!r}: expected one of {', '.join(MODELS)}")
        customer_ids = [str(cid) for cid in customer_ids]
        out: dict[str, dict[str, list]] = {kind: {m: [] for m in models} for kind in kinds}
        # a batch holds a few rows × catalogue arrays: bound its memory by going in chunks
        for start in range(0, len(customer_ids), BATCH_ROWS):
            part = slice(start, start + BATCH_ROWS)
            ids = customer_ids[part]
            idx = np.array([self.customer_index_.get(cid, -1) for cid in ids], dtype=np.int64)
            extra_days = 0.0
            if now is not None:
                extra_days = max(0.0, (pd.Timestamp(now) - self.as_of_).total_seconds() / 86400.0)
            batch = self._prepare(
                idx,
                context_items[part] if context_items else None,
                exclude[part] if exclude else None,
                filters,
                extra_days,
            )
            channel_col = rules.channel_column(self.channels_, channel)
            lists = {kind: {m: [None] * len(idx) for m in models} for kind in kinds}
            for r in np.flatnonzero(batch.cold):
                cold = self._cold_list(batch, r, k, channel, channel_col, filters)
                for kind in kinds:
                    for m in models:
                        lists[kind][m][r] = cold
            ranked = np.flatnonzero(~batch.cold)
            if len(ranked):
                subset = batch if len(ranked) == len(idx) else batch.subset(ranked)
                by_kind = self._ranked_lists(subset, k, channel_col, filters, models, explained, kinds)
                for kind, by_model in by_kind.items():
                    for m, ranked_lists in by_model.items():
                        for r, rec in zip(ranked, ranked_lists, strict=True):
                            lists[kind][m][r] = rec
            for kind in kinds:
                for m in models:
                    out[kind][m] += lists[kind][m]
        return out

    def recommend(
        self,
        customer_id: str,
        k: int = 10,
        exclude: list[str] | None = None,
        context_items: list[str] | None = None,
        channel: str | None = None,
        filters: rules.Filters | dict | None = None,
        now: pd.Timestamp | None = None,
    ) -> Recommendation:
        """One customer's list: the same answer as `recommend_many([customer_id], ...)[0]`, by the
        single-request path (`_recommend_one`: numpy over one CSR row, no scipy matrices)."""
        filters = rules.Filters.from_dict(filters)
        precomputed = self.precomputed_
        if (
            precomputed is not None
            and not exclude
            and not context_items
            and now is None
            and filters == _PLAIN
        ):
            # the plain request of a known customer: the answer computed at build time, if stored
            row = self.customer_index_.get(str(customer_id), -1)
            if row >= 0:
                hit = precomputed.lookup(self, row, rules.channel_column(self.channels_, channel), k)
                if hit is not None:
                    return hit
        extra_days = 0.0
        if now is not None:
            extra_days = max(0.0, (pd.Timestamp(now) - self.as_of_).total_seconds() / 86400.0)
        return self._recommend_one(str(customer_id), k, exclude, context_items, channel, filters, extra_days)

    def recommendations_frame(
        self,
        customer_ids: list[str] | None = None,
        k: int = 10,
        channel: str | None = None,
        filters: rules.Filters | dict | None = None,
        model: str = "served",
        chunk: int = BATCH_ROWS,
        show_progress: bool = False,
    ) -> pd.DataFrame:
        """customer_id, rank, product_id, score, reason for every customer (default: all known ones)."""
        ids = self.customer_ids_.tolist() if customer_ids is None else [str(x) for x in customer_ids]
        parts = []
        for start in tqdm(
            range(0, len(ids), chunk), desc="recommend", unit="chunk", disable=not show_progress
        ):
            batch = ids[start : start + chunk]
            recs = self.recommend_many(batch, k, channel=channel, filters=filters, model=model)
            lengths = [len(r.product_ids) for r in recs]
            parts.append(
                pd.DataFrame(
                    {
                        c.CUSTOMER_ID: np.repeat(np.asarray(batch, dtype=object), lengths),
                        c.RANK: np.concatenate([np.arange(1, n + 1) for n in lengths]) if batch else [],
                        c.PRODUCT_ID: [p for r in recs for p in r.product_ids],
                        c.SCORE: [s for r in recs for s in r.scores],
                        c.REASON: [x for r in recs for x in r.reasons],
                    }
                )
            )
        columns = [c.CUSTOMER_ID, c.RANK, c.PRODUCT_ID, c.SCORE, c.REASON]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
        return frame.astype(
            {
                c.CUSTOMER_ID: "string",
                c.RANK: "int32",
                c.PRODUCT_ID: "string",
                c.SCORE: "float64",
                c.REASON: "string",
            }
        )

    # ------------------------------------------------------------------ batch internals
    def _prepare(self, idx, context_items, exclude, filters: rules.Filters, extra_days: float) -> _Batch:
        """Rows, masks and purchase history of a batch: everything the sources and rules share."""
        n_rows, n_items = len(idx), len(self.product_ids_)
        history = take_rows(self.user_items_, idx)
        ages = take_rows(self.last_age_days_, idx)
        if extra_days:
            ages.data = ages.data + np.float32(extra_days)
        counts = take_rows(self.n_purchases_, idx)
        context = self._id_rows(context_items, n_rows)
        has_context = np.diff(context.indptr) > 0
        has_history = np.diff(history.indptr) > 0
        binary = history.copy()
        binary.data[:] = 1.0
        if context.nnz:
            weights = (history + CONTEXT_WEIGHT * context).tocsr()
            item_item = (binary + self.context_boost * context).tocsr()
        else:
            weights, item_item = history, binary

        # the rules before ranking: inactive, filtered, excluded, in the session, and bought when
        # the request asks for products the customer never bought
        allowed = self.item_active_
        if filters.restricts_items():
            allowed = allowed & rules.filter_mask(
                self.item_category_, self.item_price_, self.categories_, filters
            )
        block = np.repeat(~allowed[np.newaxis, :], n_rows, axis=0)
        age_rows = np.repeat(np.arange(n_rows), np.diff(ages.indptr))
        bought = ages.indices
        ratio = rules.replenishment_ratio(ages.data, self.item_cycle_days_[bought])
        due = rules.is_due(ratio, self.replenish_due_from)
        discover_block = block.copy()
        discover_block[age_rows, bought] = True
        if filters.exclude_purchased:
            block[age_rows, bought] = True
        for r, items in enumerate(exclude or []):
            for pid in items or ():
                j = self.product_index_.get(str(pid))
                if j is not None:
                    block[r, j] = True
                    discover_block[r, j] = True
        if context.nnz:
            in_session = (np.repeat(np.arange(n_rows), np.diff(context.indptr)), context.indices)
            block[in_session] = True
            discover_block[in_session] = True
        replenish = sp.csr_matrix(
            (replenishment_scores(ratio[due], self.replenish_due_from), (age_rows[due], bought[due])),
            shape=(n_rows, n_items),
        )
        replenish.sort_indices()
        repeat = take_rows(self.repeat_weight_, idx)

        known = idx >= 0
        safe = np.where(known, idx, 0)
        return _Batch(
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
            segment=np.where(known, self.customer_segment_[safe], -1),
            main_channel=np.where(known & has_history, self.customer_main_channel_[safe], -1),
        )

    def _id_rows(self, id_lists, n_rows: int) -> sp.csr_matrix:
        """A 0/1 CSR (rows × catalogue) of per-row product id lists (unknown ids are ignored)."""
        if not any(id_lists or []):
            return sp.csr_matrix((n_rows, len(self.product_ids_)), dtype=np.float32)
        rows, cols = [], []
        for r, items in enumerate(id_lists or []):
            for pid in items or ():
                j = self.product_index_.get(str(pid))
                if j is not None:
                    rows.append(r)
                    cols.append(j)
        matrix = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, len(self.product_ids_))
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def _als_scores(self, batch: _Batch) -> np.ndarray:
        model = self.als_.model_
        vectors = np.zeros((len(batch.idx), model.item_factors.shape[1]), dtype=np.float32)
        stored = (batch.idx >= 0) & ~batch.has_context
        vectors[stored] = model.user_factors[batch.idx[stored]]
        refold = np.flatnonzero(~stored & (np.diff(batch.weights.indptr) > 0))
        if len(refold):
            # a new customer, or a known one with session items: one least-squares solve each
            vectors[refold] = model.recalculate_user(np.arange(len(refold)), take_rows(batch.weights, refold))
        return vectors @ model.item_factors.T

    def _popularity(
        self, batch: _Batch, channel_code: np.ndarray, trending: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Popular (or trending) scores for each row's segment and channel, as (key of each row,
        one score vector per key): a batch has few distinct (segment, channel) pairs."""
        keys: dict[tuple[int, int], int] = {}
        key_of_row = np.empty(len(batch.idx), dtype=np.int64)
        vectors = []
        for r, key in enumerate(zip(batch.segment.tolist(), np.asarray(channel_code).tolist(), strict=True)):
            if key not in keys:
                keys[key] = len(vectors)
                vectors.append(
                    self.popularity_.trending(*key) if trending else self.popularity_.popular(*key)
                )
            key_of_row[r] = keys[key]
        return key_of_row, np.asarray(vectors).reshape(len(vectors), len(self.product_ids_))

    def _top_shared(
        self, key_of_row: np.ndarray, vectors: np.ndarray, block: np.ndarray, n: int
    ) -> np.ndarray:
        """`top_n` of positive, unblocked scores for rows that share score vectors.

        Each vector is sorted once, over a pool of its best 4n + 256 items; a row then takes its
        first n unblocked pool items. When the pool cannot prove the answer (too many blocked, or a
        tie at the pool's edge) the row falls back to the whole catalogue, so the result is always
        exactly `top_n`'s.
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
                out[r] = top_n(masked[np.newaxis, :], n)[0][0]
        return out

    def _candidates(self, batch: _Batch) -> tuple[CandidatePairs, np.ndarray]:
        """Candidate pairs of every row of `batch` (pairs.row = batch row) and their features."""
        n_rows, n_items = len(batch.idx), len(self.product_ids_)
        profiles = row_profiles(
            batch.weights, self.item_category_, len(self.categories_), self.item_log_price_
        )
        # dense sources score the whole catalogue; sparse ones only what is near the customer
        dense = {"als": self._als_scores(batch)}
        shared = {
            "popular": self._popularity(batch, batch.main_channel, trending=False),
            "trending": self._popularity(batch, batch.main_channel, trending=True),
        }
        sparse = {
            "ease": self.ease_.score_sparse(batch.item_item),
            "cooc": self.cooc_.score_sparse(batch.item_item),
            "replenish": batch.replenish,
            "repeat": batch.repeat,
            "content": self._content_scores(profiles, n_rows),
        }
        sizes = {
            "als": self.n_candidates,
            "ease": self.n_candidates,
            "cooc": self.n_candidates,
            "popular": self.n_popular,
            "trending": self.n_trending,
            "replenish": self.n_replenish,
            "repeat": self.n_repeat,
            "content": self.n_content,
        }
        tops = {}
        discover = batch.discover_block
        tops["als"] = top_n(np.where(discover, -np.inf, dense["als"]), sizes["als"])[0]
        for s, (key_of_row, vectors) in shared.items():  # a zero popularity means "never seen"
            tops[s] = self._top_shared(key_of_row, vectors, discover, sizes[s])
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
        features = self._features(
            pairs, profiles, batch.weights, batch.ages, batch.counts, batch.segment, batch.main_channel
        )
        return pairs, features

    def _features(self, pairs, profiles, weights, ages, counts, segment, main_channel) -> np.ndarray:
        """The ranker's features of candidate pairs (`models.recs.ranker.build_features`) from the
        customers' rows and this model's item and popularity tables; one call for the batch and
        the single-request paths, so the two cannot drift apart."""
        return build_features(
            pairs,
            profiles,
            weights,
            ages,
            counts,
            segment,
            main_channel,
            self.item_category_,
            self.item_log_price_,
            self.item_cycle_days_,
            self.item_is_new_,
            self.popularity_.global_,
            self.popularity_.trend_,
            self.popularity_.by_segment_,
            self.popularity_.by_channel_,
        )

    def _content_scores(self, profiles, n_rows: int) -> sp.csr_matrix:
        """Content-based scores of the products without history, as a rows × catalogue CSR."""
        new_items = self.content_.new_items_
        n_items = len(self.product_ids_)
        if not len(new_items) or not n_rows:
            return sp.csr_matrix((n_rows, n_items), dtype=np.float64)
        scores = self.content_.score(profiles.affinity, profiles.price_mu, profiles.price_sigma)
        positive = scores > 0
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(positive.sum(axis=1), out=indptr[1:])
        # new_items_ is sorted, so each row's columns come out sorted
        columns = np.broadcast_to(new_items, scores.shape)[positive]
        return sp.csr_matrix((scores[positive], columns, indptr), shape=(n_rows, n_items))

    def _context_similarity(self, batch: _Batch, pairs: CandidatePairs) -> tuple[np.ndarray, np.ndarray]:
        """How strongly each candidate goes with the session items alone (0..1), and whether
        "bought together" (rather than EASE's "similar to") says it more strongly."""
        sim = np.zeros(len(pairs.row))
        from_cooc = np.zeros(len(pairs.row), dtype=bool)
        if not batch.context.nnz:
            return sim, from_cooc
        with_context = batch.has_context[pairs.row]
        parts = []
        for scorer in (self.cooc_, self.ease_):
            scores = scorer.score_sparse(batch.context)
            top = scores.max(axis=1).toarray().ravel()
            with np.errstate(invalid="ignore", divide="ignore"):
                parts.append(np.nan_to_num(gather(scores, pairs.row, pairs.item) / top[pairs.row]))
        sim = np.where(with_context, np.maximum(parts[0], parts[1]), 0.0)
        from_cooc = parts[0] >= parts[1]
        return sim, from_cooc

    def _list_order(self, model: str, filters: rules.Filters) -> tuple[str, ListOrder]:
        """(list kind, order) of a request: the served order of its kind (the default list, or
        the list without bought products), or the one `model` names for a comparison."""
        kind = "new" if filters.exclude_purchased else "all"
        if model == "served":
            return kind, self.served_[kind]
        if model == "ranker":
            return kind, ListOrder.ranker()
        return kind, ListOrder.source(MODEL_SOURCES[model])

    def _order_scores(
        self, kind: str, order: ListOrder, pairs: CandidatePairs, features, pure: bool = False
    ) -> np.ndarray:
        """What the candidates are sorted by: the kind's ranker, or a fusion of the sources (the
        plain fusion when the ranker is asked for and none was learned). `pure`: a source alone
        keeps only what it proposed (-inf for the rest: a baseline's own list, maybe short)."""
        if order.kind == "ranker":
            ranker = self._ranker_of(kind)
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
        self,
        batch: _Batch,
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
        pairs, features = self._candidates(batch)
        context_sim, context_cooc = self._context_similarity(batch, pairs)
        own_kind = "new" if filters.exclude_purchased else "all"
        out = {}
        for kind in kinds or (own_kind,):
            kind_pairs, kind_features, sim, cooc, kind_filters = (
                pairs,
                features,
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
                kind_features, sim, cooc = features[keep], context_sim[keep], context_cooc[keep]
                kind_filters = dataclasses.replace(filters, exclude_purchased=True)
            out[kind] = self._lists_of(
                batch, kind_pairs, kind_features, sim, cooc, k, channel_col, kind_filters, models, explained
            )
        return out

    def _lists_of(
        self, batch, pairs, features, context_sim, context_cooc, k, channel_col, filters, models, explained
    ) -> dict[str, list[Recommendation]]:
        """Each model's lists from the candidates `pairs` of the rows of `batch`."""
        bounds = np.searchsorted(pairs.row, np.arange(len(batch.idx) + 1))
        out: dict[str, list[Recommendation]] = {}
        scored: dict[tuple, np.ndarray] = {}  # "served" is often the ranker: predict once
        for model in models:
            pure = model in MODEL_SOURCES
            kind, order = self._list_order(model, filters)
            if (order, pure) not in scored:
                scored[order, pure] = self._order_scores(kind, order, pairs, features, pure)
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
                order_score = order_score + self.context_rank_boost * spread[pairs.row] * context_sim
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
                items, sc, local = self._select(items, sc, local, channel_col, pairs, k, filters)
                if explained is None or model in explained:
                    reasons = self._reasons(
                        batch.weights, batch.context, q, pairs, local, items, context_sim, context_cooc
                    )
                else:
                    reasons = [model] * len(items)
                lists.append(
                    Recommendation(
                        product_ids=self.product_ids_[items].tolist(),
                        scores=[round(float(s), 6) for s in sc],
                        cold_start=False,
                        reasons=reasons,
                    )
                )
            out[model] = lists
        return out

    def _select(self, items, sc, local, channel_col, pairs, k: int, filters: rules.Filters):
        """The final list from ranked candidates (best first), shared by the batch and the
        single-request paths: channel eligibility, reserved new-product places, per-category cap."""
        if channel_col is not None:
            ok = self.channel_ok_[items, channel_col]
            items, sc, local = items[ok], sc[ok], local[ok]
        slots = self.new_slots_["new" if filters.exclude_purchased else "all"]
        reserved = self._reserved(items, local, pairs, slots)
        chosen = rules.select_positions(
            self.item_category_[items], k, filters.max_per_category, reserved, slots
        )
        return items[chosen], sc[chosen], local[chosen]

    def _reserved(self, items, local, pairs, slots: int) -> np.ndarray | None:
        """Which ranked candidates may take a place reserved for new products (None: no places)."""
        if slots <= 0:
            return None
        return self.item_is_new_[items] & ~np.isnan(pairs.ranks["content"][local])

    def _reasons(self, weights, context, q, pairs, local, items, context_sim, context_cooc) -> list[str]:
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
            ("context_cooc" if cooc else "context_ease")
            if sim >= CONTEXT_REASON_MIN
            else REASON_PRIORITY[best]
            for best, sim, cooc in zip(
                np.argmin(ranks, axis=1).tolist(),
                context_sim[local].tolist(),
                context_cooc[local].tolist(),
                strict=True,
            )
        ]
        anchors = [-1] * len(source)
        for name, scorer, matrix in (
            ("cooc", self.cooc_, weights),
            ("ease", self.ease_, weights),
            ("context_cooc", self.cooc_, context),
            ("context_ease", self.ease_, context),
        ):
            wanted = [i for i, s in enumerate(source) if s == name]
            if wanted:
                lo, hi = matrix.indptr[q], matrix.indptr[q + 1]
                found = scorer.anchors(matrix.indices[lo:hi], matrix.data[lo:hi], items[wanted])
                for i, anchor in zip(wanted, found.tolist(), strict=True):
                    anchors[i] = anchor
        reasons = []
        for s, anchor in zip(source, anchors, strict=True):
            if s == "replenish":
                reasons.append("replenish")
            elif s == "repeat":
                reasons.append("buy_again")
            elif s in ("cooc", "context_cooc") and anchor >= 0:
                reasons.append(f"bought_together:{self.product_ids_[anchor]}")
            elif s in ("ease", "context_ease") and anchor >= 0:
                reasons.append(f"similar_to:{self.product_ids_[anchor]}")
            elif s in ("popular", "trending"):
                reasons.append("popular")
            else:
                reasons.append("personal")
        return reasons

    def _cold_list(self, batch: _Batch, r: int, k, channel, channel_col, filters) -> Recommendation:
        """A customer we know nothing about (no history, no session): popular products for their
        segment and the channel they are on."""
        one = batch.subset(np.array([r]))
        ch = rules.channel_column(self.channels_, channel)
        ch = -1 if ch is None or ch >= len(self.channels_) else ch
        key_of_row, vectors = self._popularity(one, np.array([ch]), trending=False)
        score, reason = vectors[key_of_row[0]], "popular"
        block = one.block[0].copy()
        if channel_col is not None:
            # one score orders the list, so filtering the channel first cannot change the order
            block |= ~self.channel_ok_[:, channel_col]
        wanted = len(self.product_ids_) if filters.max_per_category else min(len(self.product_ids_), k)
        top_idx, top_sc = top_n(np.where(block, -np.inf, score)[np.newaxis, :], wanted)
        valid = top_idx[0] >= 0
        items, sc = top_idx[0][valid], top_sc[0][valid]
        chosen = rules.select_positions(self.item_category_[items], k, filters.max_per_category)
        items, sc = items[chosen], sc[chosen]
        return Recommendation(
            product_ids=self.product_ids_[items].tolist(),
            scores=[round(float(s), 6) for s in sc],
            cold_start=True,
            reasons=[reason] * len(items),
        )

    # ------------------------------------------------------------------ single-request path
    # An HTTP request is one customer. At that size the batch path's scipy matrices and
    # rows × catalogue arrays cost far more than the arithmetic, so `recommend` takes this path:
    # the batch path step by step on plain arrays of the customer's CSR rows (`CSRRow`), with the
    # same floating-point operations in the same order, hence exactly the answer of
    # `recommend_many([customer], ...)[0]` (tests/test_two_stage_fast.py compares the two).
    # Popularity vectors and their order are cached per (segment, channel).

    def _recommend_one(
        self,
        customer_id: str,
        k: int,
        exclude,
        context_items,
        channel: str | None,
        filters: rules.Filters,
        extra_days: float,
    ) -> Recommendation:
        ranked = self._ranked_one(customer_id, exclude, context_items, filters, extra_days)
        if isinstance(ranked, _ColdOne):
            return self._cold_one(ranked.segment, ranked.block, k, channel, filters)
        channel_col = rules.channel_column(self.channels_, channel)
        items, sc, local = self._select(
            ranked.items, ranked.scores, ranked.local, channel_col, ranked.pairs, k, filters
        )
        return Recommendation(
            product_ids=self.product_ids_[items].tolist(),
            scores=[round(float(x), 6) for x in sc],
            cold_start=False,
            reasons=self._ranked_reasons(ranked, local, items),
        )

    def _ranked_reasons(self, ranked: _RankedOne, local: np.ndarray, items: np.ndarray) -> list[str]:
        """`_reasons` of some of a ranked list's items (`local`: their candidate positions)."""
        return self._reasons(
            ranked.weights,
            ranked.context,
            0,
            ranked.pairs,
            local,
            items,
            ranked.context_sim,
            ranked.context_cooc,
        )

    def _ranked_one(
        self,
        customer_id: str,
        exclude,
        context_items,
        filters: rules.Filters,
        extra_days: float,
        model: str = "served",
    ) -> _RankedOne | _ColdOne:
        """One customer's ranked candidates, best first, before the channel and list rules
        (`_select`): what `_recommend_one` and `models.recs.precomputed` select from."""
        n_items = len(self.product_ids_)
        idx = self.customer_index_.get(customer_id, -1)
        ctx = self._id_positions(context_items)
        hist_idx, hist_val = _csr_row(self.user_items_, idx)
        has_history, has_context = len(hist_idx) > 0, len(ctx) > 0
        if has_context:
            # history + CONTEXT_WEIGHT · context, and binarised history + context_boost · context
            # (scipy's CSR sum: float32, sorted union of the columns, zeros dropped)
            weights_idx, weights_val = _add_context(hist_idx, hist_val, ctx, CONTEXT_WEIGHT)
            item_idx, item_val = _add_context(
                hist_idx, np.ones(len(hist_idx), np.float32), ctx, self.context_boost
            )
        else:
            weights_idx, weights_val = hist_idx, hist_val
            item_idx, item_val = hist_idx, np.ones(len(hist_idx), dtype=np.float32)

        # the rules before ranking (as in `_prepare`)
        allowed = self.item_active_
        if filters.restricts_items():
            allowed = allowed & rules.filter_mask(
                self.item_category_, self.item_price_, self.categories_, filters
            )
        block = ~allowed
        age_idx, age_val = _csr_row(self.last_age_days_, idx)
        if extra_days:
            age_val = age_val + np.float32(extra_days)
        ratio = rules.replenishment_ratio(age_val, self.item_cycle_days_[age_idx])
        due = rules.is_due(ratio, self.replenish_due_from)
        discover = block.copy()
        discover[age_idx] = True
        if filters.exclude_purchased:
            block[age_idx] = True
        for pid in exclude or ():
            j = self.product_index_.get(str(pid))
            if j is not None:
                block[j] = True
                discover[j] = True
        block[ctx] = True
        discover[ctx] = True
        known = idx >= 0
        segment = int(self.customer_segment_[idx]) if known else -1
        if not (has_history or has_context):
            return _ColdOne(segment, block)
        main_channel = int(self.customer_main_channel_[idx]) if known and has_history else -1

        # stage 1: each source's top candidates among the unblocked items
        weights = CSRRow(weights_idx, weights_val, n_items)
        profiles = row_profiles(weights, self.item_category_, len(self.categories_), self.item_log_price_)
        als = self._als_one(idx, has_context, weights)
        shared = {
            "popular": self._popular_order(segment, main_channel, trending=False),
            "trending": self._popular_order(segment, main_channel, trending=True),
        }
        dense = {
            "ease": _item_item_scores(self.ease_, item_idx, item_val, n_items),
            "cooc": _item_item_scores(self.cooc_, item_idx, item_val, n_items),
        }
        rep_idx = age_idx[due]
        rep_val = replenishment_scores(ratio[due], self.replenish_due_from)
        sparse = {
            "replenish": (rep_idx, rep_val),
            "repeat": _csr_row(self.repeat_weight_, idx),
            "content": self._content_one(profiles),
        }
        als_top = top_n(np.where(discover, -np.inf, als), self.n_candidates)[0][0]
        tops = {"als": als_top[als_top >= 0]}  # every other top is exactly as long as it is
        sizes = {"popular": self.n_popular, "trending": self.n_trending}
        for s, (_, order, n_positive) in shared.items():
            pool = order[:n_positive]
            tops[s] = pool[~discover[pool]][: sizes[s]]
        for s, scores in dense.items():
            tops[s] = _top_dense(scores, discover, self.n_candidates)
        sizes = {"replenish": self.n_replenish, "repeat": self.n_repeat, "content": self.n_content}
        for s, (cols, values) in sparse.items():
            tops[s] = _top_arrays(cols, values, block if s in REBUY_SOURCES else discover, sizes[s])
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
                scores[s] = _lookup(*sparse[s], items)
        pairs = CandidatePairs(
            row=np.zeros(len(items), dtype=np.int64), item=items, scores=scores, ranks=ranks
        )
        features = self._features(
            pairs,
            profiles,
            weights,
            CSRRow(age_idx, age_val, n_items),
            CSRRow(*_csr_row(self.n_purchases_, idx), n_items),
            np.array([segment], dtype=np.int64),
            np.array([main_channel], dtype=np.int64),
        )

        # stage 2 and the rules after ranking (as in `_ranked_lists`)
        order_score = self._order_scores(*self._list_order(model, filters), pairs, features)
        context = CSRRow(ctx, np.ones(len(ctx), dtype=np.float32), n_items)
        context_sim, context_cooc = self._context_similarity_one(ctx, items)
        if has_context:
            spread = order_score.std() if len(order_score) else 0.0
            order_score = order_score + self.context_rank_boost * spread * context_sim
        local = np.lexsort((items, -order_score))
        return _RankedOne(
            items[local], order_score[local], local, pairs, weights, context, context_sim, context_cooc
        )

    def warm(self) -> None:
        """Builds what the first single request would (popularity orders, the index look-ups), so
        a service worker answers its first request as fast as the next ones."""
        known = np.flatnonzero(self.customer_has_history_)
        if len(known):
            self.recommend(str(self.customer_ids_[known[0]]), k=10)
        self.recommend("\x00warm-up: an unknown customer", k=10)

    def _cold_one(self, segment: int, block: np.ndarray, k: int, channel, filters) -> Recommendation:
        """A customer we know nothing about: popular products for their segment and the request
        channel (as in `_cold_list`)."""
        ch = rules.channel_column(self.channels_, channel)
        ch = -1 if ch is None or ch >= len(self.channels_) else ch
        vec, order, _ = self._popular_order(segment, ch, trending=False)
        channel_col = rules.channel_column(self.channels_, channel)
        if channel_col is not None:
            block = block | ~self.channel_ok_[:, channel_col]
        n_items = len(self.product_ids_)
        wanted = n_items if filters.max_per_category else min(n_items, k)
        items = order[~block[order]][:wanted]
        chosen = rules.select_positions(self.item_category_[items], k, filters.max_per_category)
        items = items[chosen]
        return Recommendation(
            product_ids=self.product_ids_[items].tolist(),
            scores=[round(float(x), 6) for x in vec[items]],
            cold_start=True,
            reasons=["popular"] * len(items),
        )

    def _id_positions(self, product_ids) -> np.ndarray:
        """Sorted distinct catalogue positions of the known ids among `product_ids`."""
        found = [self.product_index_.get(str(pid)) for pid in product_ids or ()]
        found = [j for j in found if j is not None]
        return np.unique(np.array(found, dtype=np.int64)) if found else np.zeros(0, dtype=np.int64)

    def _als_one(self, idx: int, has_context: bool, weights: CSRRow) -> np.ndarray:
        """ALS scores (1 × catalogue) as `_als_scores` computes them for a batch of one."""
        model = self.als_.model_
        vectors = np.zeros((1, model.item_factors.shape[1]), dtype=np.float32)
        if idx >= 0 and not has_context:
            vectors[0] = model.user_factors[idx]
        elif weights.nnz:
            row = sp.csr_matrix((weights.data, weights.indices, weights.indptr), shape=weights.shape)
            vectors[0] = model.recalculate_user(np.arange(1), row)[0]
        return vectors @ model.item_factors.T

    def _popular_order(
        self, segment: int, channel: int, trending: bool
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(popular or trending scores for the segment and channel, the catalogue sorted by score
        descending with ties by the lower index, how many scores are positive); cached."""
        cache = getattr(self, "_popular_cache", None)
        if cache is None or cache[0] is not self.popularity_:
            cache = (self.popularity_, {})
            self._popular_cache = cache
        key = (trending, segment, channel)
        hit = cache[1].get(key)
        if hit is None:
            pop = self.popularity_
            vec = pop.trending(segment, channel) if trending else pop.popular(segment, channel)
            order = np.lexsort((np.arange(len(vec)), -vec))
            vec.flags.writeable = False
            order.flags.writeable = False
            hit = (vec, order, int(np.count_nonzero(vec > 0)))
            if len(cache[1]) >= POPULAR_CACHE_SIZE:
                cache[1].clear()
            cache[1][key] = hit
        return hit

    def _content_one(self, profiles) -> tuple[np.ndarray, np.ndarray]:
        """Positive content scores of the new products for one row: (columns, scores)."""
        new_items = self.content_.new_items_
        if not len(new_items):
            return new_items.astype(np.int64), np.zeros(0)
        scores = self.content_.score(profiles.affinity, profiles.price_mu, profiles.price_sigma)[0]
        positive = scores > 0
        return new_items[positive], scores[positive]

    def _context_similarity_one(self, ctx: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`_context_similarity` for one row whose session items are `ctx`."""
        if not len(ctx):
            return np.zeros(len(items)), np.zeros(len(items), dtype=bool)
        ones = np.ones(len(ctx), dtype=np.float32)
        parts = []
        for scorer in (self.cooc_, self.ease_):
            scores = _item_item_scores(scorer, ctx, ones, len(self.product_ids_))
            with np.errstate(invalid="ignore", divide="ignore"):
                parts.append(np.nan_to_num(scores[items].astype(np.float64) / scores.max()))
        return np.maximum(parts[0], parts[1]), parts[0] >= parts[1]

    # ================================================================== persistence
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "product_ids": self.product_ids_.astype(str),
            "customer_ids": self.customer_ids_.astype(str),
            "item_category": self.item_category_,
            "item_price": self.item_price_,
            "item_log_price": self.item_log_price_,
            "item_active": self.item_active_,
            "item_cycle_days": self.item_cycle_days_,
            "item_is_new": self.item_is_new_,
            "channel_ok": self.channel_ok_,
            "customer_segment": self.customer_segment_,
            "customer_main_channel": self.customer_main_channel_,
            "ease_items": self.ease_.items_,
            "content_new_items": self.content_.new_items_,
            **self.popularity_.arrays(),
        }
        np.savez(folder / "arrays.npz", **arrays)
        for name in ("user_items", "purchased", "last_age_days", "n_purchases", "repeat_weight"):
            sp.save_npz(folder / f"{name}.npz", getattr(self, f"{name}_"))
        sp.save_npz(folder / "ease_neighbours.npz", self.ease_.neighbours_)
        sp.save_npz(folder / "cooc_neighbours.npz", self.cooc_.neighbours_)
        self.als_.save(folder / "als.npz")
        if self.ranker_ is not None:
            self.ranker_.save(folder)
        if self.ranker_new_ is not None:
            (folder / RANKER_NEW_FOLDER).mkdir(exist_ok=True)
            self.ranker_new_.save(folder / RANKER_NEW_FOLDER)
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "as_of": self.as_of_.isoformat(),
            "categories": list(self.categories_),
            "channels": list(self.channels_),
            "segments": list(self.segments_),
            "segment_source": self.segment_source_,
            "cycles_estimated": bool(self.cycles_estimated_),
            "has_ranker": self.ranker_ is not None,
            "has_ranker_new": self.ranker_new_ is not None,
            "served": {kind: order.as_dict() for kind, order in self.served_.items()},
            "served_validation": self.served_validation_,
            "new_slots": self.new_slots_,
            "training_info": getattr(self, "training_info_", {}),
        }
        (folder / "two_stage.json").write_text(json.dumps(meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TwoStageRecommender:
        folder = Path(folder)
        meta = read_model_meta(folder, "two_stage.json", "two-stage recommender", (FORMAT_VERSION,))
        rec = cls(**meta["params"])
        with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
            rec.product_ids_ = arrays["product_ids"]
            rec.customer_ids_ = arrays["customer_ids"]
            rec.item_category_ = arrays["item_category"]
            rec.item_price_ = arrays["item_price"]
            rec.item_log_price_ = arrays["item_log_price"]
            rec.item_active_ = arrays["item_active"]
            rec.item_cycle_days_ = arrays["item_cycle_days"]
            rec.item_is_new_ = arrays["item_is_new"]
            rec.channel_ok_ = arrays["channel_ok"]
            rec.customer_segment_ = arrays["customer_segment"]
            rec.customer_main_channel_ = arrays["customer_main_channel"]
            rec.popularity_ = SegmentChannelPopularity.from_arrays(
                arrays, window_days=rec.popularity_days, trend_days=rec.trend_days
            )
            ease_items, new_items = arrays["ease_items"], arrays["content_new_items"]
        for name in ("user_items", "purchased", "last_age_days", "n_purchases", "repeat_weight"):
            matrix = sp.load_npz(folder / f"{name}.npz").tocsr()
            matrix.sort_indices()
            setattr(rec, f"{name}_", matrix)
        rec.ease_ = EASENeighbours(
            l2=rec.ease_l2, max_items=rec.ease_max_items, n_neighbours=rec.ease_neighbours
        )
        rec.ease_._finish(sp.load_npz(folder / "ease_neighbours.npz"))
        rec.ease_.items_ = ease_items
        rec.cooc_ = CoOccurrenceScorer(n_neighbours=rec.cooc_neighbours, shrinkage=rec.cooc_shrinkage)
        rec.cooc_._finish(sp.load_npz(folder / "cooc_neighbours.npz"))
        rec.als_ = ALSScorer.load(
            folder / "als.npz",
            factors=rec.factors,
            regularization=rec.regularization,
            alpha=rec.alpha,
            iterations=rec.iterations,
            random_state=rec.random_state,
            num_threads=rec.num_threads,
        )
        rec._serve_single_threaded()
        rec.content_ = NewProductScorer().fit(
            rec.item_category_, rec.item_log_price_, np.zeros(0, dtype=bool)
        )
        rec.content_.new_items_ = new_items
        rec.content_.new_category_ = rec.item_category_[new_items]
        rec.content_.new_log_price_ = rec.item_log_price_[new_items]
        rec.ranker_ = LambdaRankModel.load(folder) if meta["has_ranker"] else None
        rec.ranker_new_ = LambdaRankModel.load(folder / RANKER_NEW_FOLDER) if meta["has_ranker_new"] else None
        rec.served_ = {kind: ListOrder.from_dict(order) for kind, order in meta["served"].items()}
        rec.served_validation_ = meta["served_validation"]
        rec.new_slots_ = {kind: int(n) for kind, n in meta["new_slots"].items()}
        rec.as_of_ = pd.Timestamp(meta["as_of"])
        rec.categories_ = tuple(meta["categories"])
        rec.channels_ = tuple(meta["channels"])
        rec.segments_ = tuple(meta["segments"])
        rec.segment_source_ = meta["segment_source"]
        rec.cycles_estimated_ = bool(meta["cycles_estimated"])
        rec.training_info_ = meta.get("training_info", {})
        rec._index()
        if (folder / PRECOMPUTED_FOLDER).exists():
            # written beside the served copy by `omni build`; lists of another model stop the load
            from models.recs.precomputed import PrecomputedLists

            rec.precomputed_ = PrecomputedLists.load(folder / PRECOMPUTED_FOLDER, rec)
        return rec


_PARAM_NAMES: tuple[str, ...] = tuple(inspect.signature(TwoStageRecommender.__init__).parameters)[1:]


_PLAIN = rules.Filters()  # a request without filters
PRECOMPUTED_FOLDER = "precomputed"  # `models.recs.precomputed.PrecomputedLists` inside a model folder
RANKER_NEW_FOLDER = "ranker_new"  # the ranker of the list without bought products


class CandidateSet(NamedTuple):
    """The candidates of some customers of a label window (`TwoStageRecommender._candidate_set`):
    `pair_row` indexes `customers` (sorted), `bought` marks the customer's own bought products
    (absent from the "new" list); per list kind, `y` says which were bought in the window,
    `label_codes` are those customers' labels (row · n_items + item), `labels_per_row` their
    count per customer. `pairs(kind)`: which candidates belong to that kind's list."""

    customers: np.ndarray
    pair_row: np.ndarray
    pair_item: np.ndarray
    ranks: dict[str, np.ndarray]
    features: np.ndarray
    bought: np.ndarray
    y: dict[str, np.ndarray]
    label_codes: dict[str, np.ndarray]
    labels_per_row: dict[str, np.ndarray]

    def pairs(self, kind: str) -> np.ndarray:
        return ~self.bought if kind == "new" else np.ones(len(self.pair_row), dtype=bool)


class _RankedOne(NamedTuple):
    """One customer's ranked candidates (`TwoStageRecommender._ranked_one`): `items` best first,
    their ranker `scores`, `local` their positions in `pairs`, and what `_reasons` reads."""

    items: np.ndarray
    scores: np.ndarray
    local: np.ndarray
    pairs: CandidatePairs
    weights: CSRRow
    context: CSRRow
    context_sim: np.ndarray
    context_cooc: np.ndarray


class _ColdOne(NamedTuple):
    """A customer without history or session items: cold-start lists from their segment."""

    segment: int
    block: np.ndarray


# What the sources read of the events (`_fit_sources` and what it calls); the other columns
# (amounts, quantities, stores, a retailer's extras) are left out of its copy of the history
# (`features.io.rows_before`: no copy at all when the history is all of the events).
_SOURCE_COLUMNS: tuple[str, ...] = (c.CUSTOMER_ID, c.TS, c.CHANNEL, c.EVENT_TYPE, c.PRODUCT_ID, c.ORDER_ID)


def _parts(tables, products, customers):
    if isinstance(tables, Tables):
        return (
            tables.events,
            tables.products if products is None else products,
            (tables.customers if customers is None else customers),
        )
    return tables, products, customers


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n finite entries per row, best first, ties by the lower index; -1 / -inf pad short rows.

    Like `models.base.top_k`, but a row with fewer than n finite scores only sorts those, so the
    many "no opinion" items of a sparse source cost nothing.
    """
    scores = np.atleast_2d(scores)
    n_rows, n_items = scores.shape
    n = max(0, min(n, n_items))
    out_idx = np.full((n_rows, n), -1, dtype=np.int64)
    out_scores = np.full((n_rows, n), -np.inf)
    if n == 0:
        return out_idx, out_scores
    kth = -np.partition(-scores, n - 1, axis=1)[:, n - 1]
    for r in range(n_rows):
        row = scores[r]
        cand = np.flatnonzero(row >= kth[r]) if np.isfinite(kth[r]) else np.flatnonzero(np.isfinite(row))
        cand_scores = row[cand]
        order = np.lexsort((cand, -cand_scores))[:n]
        out_idx[r, : len(order)] = cand[order]
        out_scores[r, : len(order)] = cand_scores[order]
    return out_idx, out_scores


def top_n_sparse(scores: sp.csr_matrix, block: np.ndarray, n: int) -> np.ndarray:
    """Top-n item indices per row among the stored positive, unblocked entries of a CSR; -1 pads.

    Same order as `top_n` (score descending, ties by the lower index), but the work is proportional
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


def _item_item_scores(scorer, cols: np.ndarray, values: np.ndarray, n_items: int) -> np.ndarray:
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


def _top_dense(scores: np.ndarray, block: np.ndarray, n: int) -> np.ndarray:
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


def _top_arrays(cols: np.ndarray, values: np.ndarray, block: np.ndarray, n: int) -> np.ndarray:
    """`top_n_sparse` of one row given as (sorted columns, values)."""
    keep = (values > 0) & ~block[cols]
    cols, values = cols[keep], values[keep]
    return cols[np.lexsort((cols, -values))[: max(n, 0)]].astype(np.int64)


def _lookup(cols: np.ndarray, values: np.ndarray, items: np.ndarray) -> np.ndarray:
    """`gather` of one row given as (sorted columns, values): the value at each item, else 0."""
    out = np.zeros(len(items))
    if len(cols) == 0 or len(items) == 0:
        return out
    pos = np.minimum(np.searchsorted(cols, items), len(cols) - 1)
    hit = cols[pos] == items
    out[hit] = values[pos[hit]]
    return out
