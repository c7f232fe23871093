"""Training and time-split evaluation of the two-stage recommender, beside popularity and ALS.

`train_two_stage(tables, config)` is what `omni train` (and the benchmark) call:

1. split in time like `training.train`: everything before `split_time = last event - test_days`
   is history, the last `test_days` are the test window;
2. fit the `TwoStageRecommender` with `as_of=split_time` (its ranker learns from the
   `label_days` before the split, so the test window is never seen) and the baselines on the
   history (`ProductRecommender`: popularity and ALS; the ALS is the two-stage model's own ALS
   source when that was fitted on the same matrix with the same parameters, see `shared_als`);
3. score all three on the test window, same customers, same k, same metrics
   (`training.evaluation.ranking_metrics`);
4. refit the two-stage model on the whole history for serving (reusing the sources already fitted
   at the split, which are exactly the ones its ranker needs); with a second core this runs on its
   own thread beside 2-3, so `info["seconds"]["refit"]` overlaps the baselines and evaluation.

Two protocols, reported side by side:
- `new_products` (the headline, like `omni train`): relevant = products a customer bought in the
  test window that they had not bought before the split; every model leaves bought products out
  (the two-stage model's "due replenishment comes back" rule is switched off, so the comparison is
  like for like);
- `all_purchases` (as served): every purchase in the test window is relevant, and the two-stage
  model may bring back due replenishment items; the baselines cannot, so this one favours it.
Customers evaluated: everyone who bought in the test window (up to `max_eval_customers`, sampled),
including customers without history before the split; they get cold-start lists from every model,
and `cold_start_share` says how many of the evaluated lists were cold starts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features import columns as c
from features.interactions import build_interactions
from features.io import Tables
from models.fitting import fit_pool
from models.recommender import ProductRecommender
from models.two_stage import TwoStageRecommender
from training.evaluation import ranking_metrics

MODEL_NAMES = ("popularity", "als", "ranker")


@dataclass
class RecsConfig:
    test_days: int = 28  # the held-out window at the end of the history
    k: int = 10
    max_eval_customers: int = 10_000  # evaluation sample (paired: every model scores the same customers)
    half_life_days: float = 90.0
    # the ALS baseline (ProductRecommender), as `omni train` fits it
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15
    random_state: int = 42
    refit: bool = True  # refit the two-stage model on all history (False: return the split model)
    all_purchases: bool = True  # also evaluate the "as served" protocol
    two_stage: dict = field(default_factory=dict)  # TwoStageRecommender parameters

    def als_params(self) -> dict:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "random_state": self.random_state,
        }

    def two_stage_params(self) -> dict:
        params = {"half_life_days": self.half_life_days, "random_state": self.random_state}
        params.update(self.two_stage)
        return params


def time_split(events: pd.DataFrame, test_days: int) -> tuple[pd.Timestamp, pd.DataFrame, pd.DataFrame]:
    """Everything before `split_time` trains, everything from it on tests.

    split_time = (last event + 1 µs) - test_days: the end of the history is the instant after the
    last event, which is also the default `as_of` of a full refit, so the refit's label window
    starts exactly at the split (one microsecond later than `training.train.time_split`).
    """
    split_time = split_time_of(events, test_days)
    before = events[c.TS] < split_time
    return split_time, events[before], events[~before]


def split_time_of(events: pd.DataFrame, test_days: int) -> pd.Timestamp:
    """`time_split`'s split time: (last event + 1 µs) - test_days."""
    return events[c.TS].max() + pd.Timedelta(microseconds=1) - pd.Timedelta(days=test_days)


def catalogue(tables: Tables) -> tuple[np.ndarray, np.ndarray]:
    """All product ids (products table ∪ events) and the inactive ones (as `training.train` does)."""
    seen = tables.events[c.PRODUCT_ID].dropna().astype(str).unique()
    if tables.products is None:
        return np.sort(seen), np.array([], dtype=str)
    listed = tables.products[c.PRODUCT_ID].astype(str).to_numpy()
    inactive = tables.products.loc[~tables.products[c.IS_ACTIVE].astype(bool), c.PRODUCT_ID].astype(str)
    return np.union1d(listed, seen), inactive.to_numpy()


def window_purchases(train_events: pd.DataFrame, test_events: pd.DataFrame, new_only: bool) -> pd.DataFrame:
    """(customer_id, product_id) bought in the test window; with `new_only`, not bought before the split."""
    buys = test_events.loc[
        (test_events[c.EVENT_TYPE] == "purchase") & test_events[c.PRODUCT_ID].notna(),
        [c.CUSTOMER_ID, c.PRODUCT_ID],
    ].astype(str)
    buys = buys.drop_duplicates()
    if new_only:
        before = train_events.loc[
            (train_events[c.EVENT_TYPE] == "purchase") & train_events[c.PRODUCT_ID].notna(),
            [c.CUSTOMER_ID, c.PRODUCT_ID],
        ].astype(str)
        before = before.drop_duplicates().assign(_before=True)
        buys = buys.merge(before, on=[c.CUSTOMER_ID, c.PRODUCT_ID], how="left")
        buys = buys[buys["_before"].isna()].drop(columns="_before")
    return buys.reset_index(drop=True)


def lists_frame(recommender, customer_ids: list[str], k: int, chunk: int = 256, **kwargs):
    """customer_id, rank, product_id, score, reason for each customer, and the share of cold starts.

    Works with any recommender whose `recommend_many(ids, k, **kwargs)` returns `Recommendation`s.
    """
    frame, cold = _lists(recommender, customer_ids, k, chunk, **kwargs)
    return frame, float(cold.mean()) if len(cold) else 0.0


def _lists(recommender, customer_ids: list[str], k: int, chunk: int = 256, **kwargs):
    """The lists frame and a cold-start flag per customer (in `customer_ids` order)."""
    rows, cold = [], np.zeros(len(customer_ids), dtype=bool)
    for start in range(0, len(customer_ids), chunk):
        batch = customer_ids[start : start + chunk]
        for i, (cid, rec) in enumerate(
            zip(batch, recommender.recommend_many(batch, k, **kwargs), strict=True), start
        ):
            cold[i] = bool(rec.cold_start)
            for rank, (pid, score, reason) in enumerate(
                zip(rec.product_ids, rec.scores, rec.reasons, strict=True), 1
            ):
                rows.append((cid, rank, pid, score, reason))
    frame = pd.DataFrame(rows, columns=[c.CUSTOMER_ID, c.RANK, c.PRODUCT_ID, c.SCORE, c.REASON])
    return frame, cold


class ListsCache:
    """Lists already computed per (model name, recommend keyword arguments), reused by the second
    evaluation protocol: the same customers mostly appear in both, and a recommender's list does
    not depend on which protocol scores it."""

    def __init__(self):
        self._frames: dict[str, list[pd.DataFrame]] = {}
        self._cold: dict[str, dict[str, bool]] = {}

    def lists(self, name: str, recommender, customer_ids: list[str], k: int, **kwargs):
        key = f"{name}|{k}|{sorted(kwargs.items())!r}"
        frames = self._frames.setdefault(key, [])
        cold = self._cold.setdefault(key, {})
        missing = [cid for cid in customer_ids if cid not in cold]
        if missing:
            frame, flags = _lists(recommender, missing, k, **kwargs)
            frames.append(frame)
            cold.update(zip(missing, flags.tolist(), strict=True))
        if not frames:
            return _lists(recommender, [], k, **kwargs)[0], 0.0
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        wanted = frame[frame[c.CUSTOMER_ID].isin(pd.Index(customer_ids))].reset_index(drop=True)
        share = float(np.mean([cold[cid] for cid in customer_ids])) if customer_ids else 0.0
        return wanted, share


def evaluate_models(
    models: dict,
    relevant: pd.DataFrame,
    k: int,
    catalogue_size: int,
    random_state: int,
    max_customers: int,
    cache: ListsCache | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per model name; `models` maps a name to (recommender, recommend_many keyword arguments).

    `cache`: lists computed by an earlier call (another protocol) are reused."""
    cache = cache or ListsCache()
    customers = np.sort(relevant[c.CUSTOMER_ID].unique())
    if len(customers) > max_customers:
        rng = np.random.default_rng(random_state)
        customers = np.sort(rng.choice(customers, max_customers, replace=False))
        relevant = relevant[relevant[c.CUSTOMER_ID].isin(customers)]
    out = {}
    for name, (recommender, kwargs) in models.items():
        started = time.perf_counter()
        frame, cold_share = cache.lists(name, recommender, customers.tolist(), k, **kwargs)
        metrics = ranking_metrics(frame, relevant, k, catalogue_size=catalogue_size)
        metrics["cold_start_share"] = cold_share
        metrics["reasons"] = (
            frame[c.REASON].str.split(":").str[0].value_counts(normalize=True).round(4).to_dict()
        )
        metrics["seconds"] = time.perf_counter() - started
        out[name] = metrics
    return out


def shared_als(model: TwoStageRecommender, matrix, config: RecsConfig):
    """(ALS scorer, its customer ids) of the two-stage model's ALS source when it is the ALS
    baseline already: the same parameters fitted on the same interaction matrix (the two-stage
    model adds only empty rows for customers without events). Fitting it again would only cost
    time (at 1M customers, over a minute). None when anything differs."""
    als = getattr(model, "als_", None)
    if als is None or {k: getattr(als, k) for k in config.als_params()} != config.als_params():
        return None
    if not np.array_equal(model.product_ids_, np.asarray(matrix.product_ids, dtype=str)):
        return None
    rows = pd.Index(model.customer_ids_).get_indexer(np.asarray(matrix.customer_ids, dtype=str))
    if (rows < 0).any():
        return None
    mine = model.user_items_[rows]
    theirs = sp.csr_matrix(matrix.matrix, dtype=np.float32)
    if mine.shape != theirs.shape or (mine != theirs).nnz or model.user_items_.nnz != theirs.nnz:
        return None
    return als, model.customer_ids_


def train_two_stage(
    tables: Tables, config: RecsConfig | None = None, show_progress: bool = False
) -> tuple[TwoStageRecommender, dict[str, dict[str, float]], dict]:
    """Evaluate popularity, ALS and the two-stage ranker on a time split; return the model to serve.

    `tables` must be identity-stitched (`features.identity.stitch_identities`). Returns
    (model, metrics, info): metrics[model][metric] for the `new_products` protocol, info with the
    split, timings, the ranker's training summary and the `all_purchases` protocol's metrics.
    Raises ValueError when the history is too short for the test window.
    """
    config = config or RecsConfig()
    started = time.perf_counter()
    events = tables.events
    # the history before the split is not copied (at a million customers a copy of the events is
    # gigabytes): the baselines' matrix reads it through a mask, the "bought before" pairs are
    # taken from the purchases only
    split_time = split_time_of(events, config.test_days)
    before = (events[c.TS] < split_time).to_numpy()
    n_train = int(before.sum())
    test_ev = events.loc[~before, [c.CUSTOMER_ID, c.EVENT_TYPE, c.PRODUCT_ID]]
    if n_train == 0 or test_ev.empty:
        raise ValueError(
            f"events span too short for a {config.test_days}-day test window "
            f"({events[c.TS].min()} .. {events[c.TS].max()}): use a shorter test window"
        )
    product_ids, inactive = catalogue(tables)
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    split_model = TwoStageRecommender(**config.two_stage_params()).fit(
        tables, as_of=split_time, show_progress=show_progress
    )
    timings["two_stage_fit"] = time.perf_counter() - tick

    train_buys = events.loc[
        before & (events[c.EVENT_TYPE] == "purchase").to_numpy(dtype=bool, na_value=False),
        [c.CUSTOMER_ID, c.EVENT_TYPE, c.PRODUCT_ID],
    ]
    relevant = window_purchases(train_buys, test_ev, new_only=True)
    del before
    if relevant.empty:
        raise ValueError("no purchases of new products in the test window: nothing to evaluate")

    def refit() -> tuple[TwoStageRecommender, float]:
        tick = time.perf_counter()
        model = TwoStageRecommender(**config.two_stage_params()).fit(
            tables, warm_stage=split_model if split_model.label_days == config.test_days else None
        )
        return model, time.perf_counter() - tick

    # The refit only reads the split model: with a second core it runs beside the baselines and
    # the evaluation (ALS, EASE, numpy and LightGBM release the GIL), the same models either way.
    with fit_pool(2 if config.refit else 1, rows=len(events)) as pool:
        refitted = pool.submit(refit) if pool is not None and config.refit else None

        tick = time.perf_counter()
        train_matrix = build_interactions(
            events,
            product_ids=product_ids,
            as_of=split_time,
            half_life_days=config.half_life_days,
            before=split_time,
        )
        shared = shared_als(split_model, train_matrix, config)
        baseline = ProductRecommender(**config.als_params()).fit(train_matrix, inactive, fitted_als=shared)
        timings["baselines_fit"] = time.perf_counter() - tick

        models = {
            "popularity": (baseline, {"model": "popularity"}),
            "als": (baseline, {"model": "als"}),
            "ranker": (split_model, {"filters": {"allow_due_repurchase": False}}),
        }
        evaluate = dict(
            k=config.k,
            catalogue_size=len(product_ids),
            random_state=config.random_state,
            max_customers=config.max_eval_customers,
            cache=ListsCache(),
        )
        tick = time.perf_counter()
        metrics = evaluate_models(models, relevant, **evaluate)
        info: dict = {
            "split_time": split_time.isoformat(),
            "test_days": config.test_days,
            "train_events": n_train,
            "test_events": int(len(test_ev)),
            "catalogue_size": int(len(product_ids)),
            "relevant_pairs": int(len(relevant)),
            "protocol": "new_products: test-window purchases of products the customer had not bought before",
            "als_baseline": "the two-stage model's ALS source (same matrix and parameters)"
            if shared is not None
            else "fitted on its own",
        }
        if config.all_purchases:
            models["ranker"] = (split_model, {})
            info["all_purchases"] = evaluate_models(
                models, window_purchases(train_buys, test_ev, new_only=False), **evaluate
            )
        timings["evaluation"] = time.perf_counter() - tick
        info["two_stage_training"] = split_model.training_info_

        model = split_model
        if config.refit:
            model, timings["refit"] = refitted.result() if refitted is not None else refit()
    timings["total"] = time.perf_counter() - started
    info["seconds"] = {name: round(value, 2) for name, value in timings.items()}
    info["config"] = asdict(config)
    return model, metrics, info


def flat_metrics(metrics: dict[str, dict]) -> dict[str, float]:
    """`model.metric` → value for the numeric metrics (what MLflow's log_metrics takes, with @ → _at_)."""
    return {
        f"{model}.{name}".replace("@", "_at_"): float(value)
        for model, values in metrics.items()
        for name, value in values.items()
        if isinstance(value, int | float)
    }
