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
tests/integration/test_two_stage_fast.py checks that lists, scores and reasons are identical.

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

Where the code is: this module holds the recommender (parameters, fitting the sources, the public
methods, saving and loading); the batch path is `models.recs._batch`, the single-request path
`models.recs._single_request`, the top-n and list-selection helpers both use `models.recs._top_k`,
and what the rankers learn from and how the served orders are chosen `models.recs._ranker_training`.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

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
from models.recs import ALS_DEFAULTS, rules
from models.recs._batch import BATCH_ROWS, compare
from models.recs._ranker_training import (
    candidate_set,
    choose_served,
    learn_ranker,
    returning_customers,
    split_label_customers,
    window_labels,
)
from models.recs._single_request import _id_positions, recommend_one
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
)
from models.recs.list_order import LIST_KINDS, ListOrder
from models.recs.ranker import SOURCES, LambdaRankModel, row_profiles

FORMAT_VERSION = 2  # 2: the buy-again source, a ranker per list kind, the served orders
# The optional customers column naming a marketing segment (belongs in features/columns.py).
SEGMENT = getattr(c, "SEGMENT", "segment")
UNKNOWN_CATEGORY = "unknown"
# The ranker's sources and the final sources are fitted side by side (`fit_pool`) while the
# events' rows weighted by this stay under the side-by-side limit: a sources fit holds about a
# quarter of what a channel / send-time fit holds per event (at a million customers, 36M events:
# about 3.5 GB above the loaded tables against 8), so the pair runs side by side there too.
SOURCES_ROW_WEIGHT = 0.25


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
        factors: int = ALS_DEFAULTS["factors"],
        regularization: float = ALS_DEFAULTS["regularization"],
        alpha: float = ALS_DEFAULTS["alpha"],
        iterations: int = ALS_DEFAULTS["iterations"],
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
            labels = window_labels(stage, window)
            pool = returning_customers(labels["all"] // len(stage.product_ids_), stage.customer_has_history_)
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
        train, validation = split_label_customers(self, pool)
        everyone = np.union1d(train, validation)
        # held-out customers taken from a small pool: once the orders are chosen, a chosen ranker
        # learns from them too (as a model is refitted after model selection)
        pooled = len(everyone) < self.max_train_customers + self.max_validation_customers
        info["validation_customers"] = int(len(validation))
        examples = candidate_set(stage, everyone, labels)
        for kind in LIST_KINDS:
            ranker, example_info = learn_ranker(self, examples, train, kind)
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
            choice = choose_served(self, stage, examples, validation, ranker, kind)
            if choice is None:
                continue
            self.served_[kind] = choice.best
            self.new_slots_[kind] = choice.slots
            self.served_validation_[kind] = choice.table() | choice.slot_scores
            if pooled and len(validation) and choice.best.kind == "ranker":
                self._set_ranker(kind, learn_ranker(self, examples, everyone, kind)[0])

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
        labels = window_labels(stage, ev.loc[held_mask])
        pool = returning_customers(labels["all"] // len(stage.product_ids_), stage.customer_has_history_)
        return stage, labels, pool

    def _set_ranker(self, kind: str, ranker: LambdaRankModel | None) -> None:
        if kind == "all":
            self.ranker_ = ranker
        else:
            self.ranker_new_ = ranker

    def _ranker_of(self, kind: str) -> LambdaRankModel | None:
        return self.ranker_ if kind == "all" else self.ranker_new_

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

    # ================================================================== recommending
    def similar_items(
        self,
        product_ids: list[str],
        k: int = 10,
        channel: str | None = None,
        filters: rules.Filters | dict | None = None,
        exclude: list[str] | None = None,
    ) -> Recommendation:
        """What goes with `product_ids` (a product page, a cart), for nobody in particular: the list
        a new customer with exactly these products in the session gets (each item's reason names
        the product it goes with; popular products fill what the session cannot), without the
        products themselves nor `exclude` (e.g. out of stock). Unknown products only leave the
        list to popularity."""
        given = [str(p) for p in product_ids]
        return self.recommend(
            NOBODY,
            k,
            exclude=[*given, *(exclude or [])],
            context_items=given,
            channel=channel,
            filters=filters,
        )

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
        return compare(
            self, customer_ids, k, models, exclude, context_items, channel, filters, now, explained, (kind,)
        )[kind]

    def compare_kinds(
        self, customer_ids: list[str], k: int = 10, models: tuple[str, ...] = ("served",), explained=None
    ) -> dict[str, dict[str, list[Recommendation]]]:
        """`compare_many` of the default lists ("all") and of the lists without bought products
        ("new") from one set of candidates: the discovery sources never propose a bought product,
        so the "new" candidates are the default ones less the re-buys, with the same features."""
        return compare(
            self, customer_ids, k, models, None, None, None, rules.Filters(), None, explained, LIST_KINDS
        )

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
        single-request path (`models.recs._single_request`: numpy over one CSR row, no scipy matrices)."""
        filters = rules.Filters.from_dict(filters)
        precomputed = self.precomputed_
        if precomputed is not None and not context_items and now is None and filters == _PLAIN:
            # the plain request of a known customer (exclusions that are none of its candidates
            # included): the answer computed at build time, if stored
            row = self.customer_index_.get(str(customer_id), -1)
            if row >= 0:
                channel_col = rules.channel_column(self.channels_, channel)
                excluded = _id_positions(self, exclude) if exclude else None
                hit = precomputed.lookup(self, row, channel_col, k, excluded)
                if hit is not None:
                    return hit
        extra_days = 0.0
        if now is not None:
            extra_days = max(0.0, (pd.Timestamp(now) - self.as_of_).total_seconds() / 86400.0)
        return recommend_one(self, str(customer_id), k, exclude, context_items, channel, filters, extra_days)

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

    def warm(self) -> None:
        """Builds what the first single request would (popularity orders, the index look-ups), so
        a service worker answers its first request as fast as the next ones."""
        known = np.flatnonzero(self.customer_has_history_)
        if len(known):
            self.recommend(str(self.customer_ids_[known[0]]), k=10)
        self.recommend("\x00warm-up: an unknown customer", k=10)

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
NOBODY = ""  # the customer of `similar_items`: customer ids are never empty, so no one's history
PRECOMPUTED_FOLDER = "precomputed"  # `models.recs.precomputed.PrecomputedLists` inside a model folder
RANKER_NEW_FOLDER = "ranker_new"  # the ranker of the list without bought products


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
