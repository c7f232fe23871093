"""Training and time-split evaluation of the two-stage recommender, beside its baselines.

`train_two_stage(tables, config)` is what `omni train` (and the benchmarks) call:

1. split in time: everything before `split_time = last event - test_days` is history, the last
   `test_days` are the test window;
2. fit the `TwoStageRecommender` with `as_of=split_time`. Inside, its rankers learn from the
   `label_days` before the split, and customers of that window held out of their training choose
   what is served (`models.recs.list_order`): the ranker, one source alone or a fusion of sources,
   separately for the default list and for the list of products the customer never bought. The
   test window is never seen;
3. score on the test window, same customers, same k, same metrics
   (`training.evaluation.ranking_metrics`): `served` (what the model chose), `ranker`, and the
   baselines `popularity`, `repeat` (the customer's own most bought, recent first), `als` and
   `ease`, each one candidate source ordering the list alone under the same rules;
4. refit the two-stage model on the whole history for serving (reusing the sources already fitted
   at the split, which are exactly the ones its ranker needs); with a second core this runs on its
   own thread beside 3, so `info["seconds"]["refit"]` overlaps the evaluation. The refit chooses
   its served orders again, on its own label window.

Two protocols, reported side by side:
- `new_products`: relevant = products a customer bought in the test window that they had not
  bought before the split; every model's list leaves the customer's bought products out (the
  `exclude_purchased` list);
- `all_purchases` (as served by default): every purchase in the test window is relevant, and
  every model may bring back products the customer bought (`repeat` does nothing else); how many
  the served list holds was learned (`info["served_rebuy_share"]`).
Customers evaluated: everyone who bought in the test window (up to `max_eval_customers`, sampled),
including customers without history before the split; they get cold-start lists from every model,
and `cold_start_share` says how many of the evaluated lists were cold starts.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from features import columns as c
from features.io import Tables
from models.base import CannotTrain
from models.fitting import fit_pool
from models.recs.two_stage import TwoStageRecommender
from training.config import RecsConfig
from training.evaluation import ranking_metrics

# What the evaluation scores side by side: the baselines (one candidate source each, under the
# same rules), the learned ranker, and what is served (the order the model chose on validation).
MODEL_NAMES = ("served", "popularity", "repeat", "als", "ease", "ranker")


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
    rows, cold = [], np.zeros(len(customer_ids), dtype=bool)
    for start in range(0, len(customer_ids), chunk):
        batch = customer_ids[start : start + chunk]
        _append_rows(rows, cold, start, batch, recommender.recommend_many(batch, k, **kwargs))
    return _frame(rows), float(cold.mean()) if len(cold) else 0.0


def _append_rows(rows: list, cold: np.ndarray, start: int, batch: list[str], recs) -> None:
    for i, (cid, rec) in enumerate(zip(batch, recs, strict=True), start):
        cold[i] = bool(rec.cold_start)
        for rank, (pid, score, reason) in enumerate(
            zip(rec.product_ids, rec.scores, rec.reasons, strict=True), 1
        ):
            rows.append((cid, rank, pid, score, reason))


def _frame(rows: list) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[c.CUSTOMER_ID, c.RANK, c.PRODUCT_ID, c.SCORE, c.REASON])


def evaluation_customers(relevant: pd.DataFrame, max_customers: int, random_state: int) -> np.ndarray:
    """The customers a protocol scores: everyone with a relevant purchase, or a seeded sample of
    `max_customers` of them (the same seed, the same customers for every model and run)."""
    customers = np.sort(relevant[c.CUSTOMER_ID].unique())
    if len(customers) > max_customers:
        rng = np.random.default_rng(random_state)
        customers = np.sort(rng.choice(customers, max_customers, replace=False))
    return customers


def evaluate_models(
    recommender: TwoStageRecommender,
    models: tuple[str, ...],
    relevant: pd.DataFrame,
    k: int,
    catalogue_size: int,
    random_state: int,
    max_customers: int,
    filters: dict | None = None,
    chunk: int = 2048,
) -> dict[str, dict[str, float]]:
    """Metrics per model name, every model scoring the same customers: the served order, the
    ranker and each baseline source (`TwoStageRecommender.compare_many`: one set of candidates per
    customer, each model only orders it, under the same rules)."""
    customers = evaluation_customers(relevant, max_customers, random_state)
    relevant = relevant[relevant[c.CUSTOMER_ID].isin(customers)]
    ids = customers.tolist()
    rows: dict[str, list] = {m: [] for m in models}
    cold = {m: np.zeros(len(ids), dtype=bool) for m in models}
    tick = time.perf_counter()
    for start in range(0, len(ids), chunk):
        batch = ids[start : start + chunk]
        lists = recommender.compare_many(batch, k, models, filters=filters, explained=("served",))
        for m in models:
            _append_rows(rows[m], cold[m], start, batch, lists[m])
    seconds = time.perf_counter() - tick
    out = {}
    for m in models:
        frame = _frame(rows[m])
        metrics = ranking_metrics(frame, relevant, k, catalogue_size=catalogue_size)
        metrics["cold_start_share"] = float(cold[m].mean()) if len(ids) else 0.0
        metrics["reasons"] = (
            frame[c.REASON].str.split(":").str[0].value_counts(normalize=True).round(4).to_dict()
        )
        out[m] = metrics
    out[models[0]]["seconds"] = seconds  # every model's lists came from the same pass
    return out


def evaluate_protocols(
    recommender: TwoStageRecommender,
    models: tuple[str, ...],
    relevant: dict[str, pd.DataFrame],
    k: int,
    catalogue_size: int,
    random_state: int,
    max_customers: int,
    chunk: int = 2048,
    served_lists: dict | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """`evaluate_models` of both protocols (`relevant["new"]`, `relevant["all"]`) from one set of
    candidates per customer (`TwoStageRecommender.compare_kinds`): the list without bought products
    scores the first, the default list the second, each on its own customer sample. `served_lists`:
    a dict that receives each protocol's served lists frame."""
    samples = {
        kind: evaluation_customers(frame, max_customers, random_state) for kind, frame in relevant.items()
    }
    ids = sorted(set().union(*(set(v.tolist()) for v in samples.values())))
    rows = {kind: {m: [] for m in models} for kind in relevant}
    cold = {kind: {m: {} for m in models} for kind in relevant}
    wanted = {kind: set(v.tolist()) for kind, v in samples.items()}
    for start in range(0, len(ids), chunk):
        batch = ids[start : start + chunk]
        lists = recommender.compare_kinds(batch, k, models, explained=("served",))
        for kind in relevant:
            for m in models:
                for cid, rec in zip(batch, lists[kind][m], strict=True):
                    if cid not in wanted[kind]:
                        continue
                    cold[kind][m][cid] = bool(rec.cold_start)
                    rows[kind][m] += [
                        (cid, rank, pid, score, reason)
                        for rank, (pid, score, reason) in enumerate(
                            zip(rec.product_ids, rec.scores, rec.reasons, strict=True), 1
                        )
                    ]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind, frame in relevant.items():
        scored = frame[frame[c.CUSTOMER_ID].isin(samples[kind])]
        out[kind] = {}
        for m in models:
            lists_frame = _frame(rows[kind][m])
            if served_lists is not None and m == "served":
                served_lists[kind] = lists_frame
            metrics = ranking_metrics(lists_frame, scored, k, catalogue_size=catalogue_size)
            flags = list(cold[kind][m].values())
            metrics["cold_start_share"] = float(np.mean(flags)) if flags else 0.0
            metrics["reasons"] = (
                lists_frame[c.REASON].str.split(":").str[0].value_counts(normalize=True).round(4).to_dict()
            )
            out[kind][m] = metrics
    return out


def rebuy_share(recommender: TwoStageRecommender, lists: pd.DataFrame) -> float:
    """Share of the items of served lists (a lists frame) that the customer had bought before: how
    many re-buys the data taught the model to show (a shop of one-off purchases: none)."""
    if lists.empty:
        return float("nan")
    bought = recommender.last_age_days_
    row = lists[c.CUSTOMER_ID].map(recommender.customer_index_).fillna(-1).astype(np.int64).to_numpy()
    item = lists[c.PRODUCT_ID].map(recommender.product_index_).fillna(-1).astype(np.int64).to_numpy()
    known = (row >= 0) & (item >= 0)
    again = np.zeros(len(lists), dtype=bool)
    again[known] = np.asarray(bought[row[known], item[known]]).ravel() > 0
    return float(again.mean())


def train_two_stage(
    tables: Tables,
    config: RecsConfig | None = None,
    show_progress: bool = False,
    champion: TwoStageRecommender | None = None,
) -> tuple[TwoStageRecommender, dict[str, dict[str, float]], dict]:
    """Evaluate the served order beside the ranker and the baselines on a time split; return the
    model to serve.

    `tables` must be identity-stitched (`features.identity.stitch_identities`). Returns
    (model, metrics, info): metrics[model][metric] for the `new_products` protocol (empty when
    nobody bought a product new to them in the test window), info with the split, timings, the
    rankers' training summary, what the split model chose to serve on its own validation window
    and the `all_purchases` protocol's metrics.
    `champion`: the registered champion, as deployed; it and the split model are both scored on
    what was bought after both were trained (`champion_window_scores`), and `info["champion"]`
    holds the two scores for the promotion gate.
    Raises `CannotTrain` when the events name no product, the history is too short for the test
    window, or nobody bought anything in it.
    """
    config = config or RecsConfig()
    started = time.perf_counter()
    events = tables.events
    if not events[c.PRODUCT_ID].notna().any():
        raise CannotTrain("the events name no product (no product_id): there is nothing to recommend")
    split_time = split_time_of(events, config.test_days)
    before = (events[c.TS] < split_time).to_numpy()
    n_train = int(before.sum())
    test_ev = events.loc[~before, [c.CUSTOMER_ID, c.EVENT_TYPE, c.PRODUCT_ID]]
    if n_train == 0 or test_ev.empty:
        raise CannotTrain(
            f"events span too short for a {config.test_days}-day test window "
            f"({events[c.TS].min()} .. {events[c.TS].max()}): use a shorter test window"
        )
    # the history before the split is not copied (at a million customers a copy of the events is
    # gigabytes): the "bought before" pairs are taken from the purchases only
    train_buys = events.loc[
        before & (events[c.EVENT_TYPE] == "purchase").to_numpy(dtype=bool, na_value=False),
        [c.CUSTOMER_ID, c.EVENT_TYPE, c.PRODUCT_ID],
    ]
    del before
    relevant_all = window_purchases(train_buys, test_ev, new_only=False)
    if relevant_all.empty:
        raise CannotTrain(
            f"no product was bought in the {config.test_days}-day test window: nothing to evaluate a "
            "recommender on"
        )
    relevant_new = window_purchases(train_buys, test_ev, new_only=True)
    product_ids, _ = catalogue(tables)
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    split_model = TwoStageRecommender(**config.two_stage_params()).fit(
        tables, as_of=split_time, show_progress=show_progress
    )
    timings["two_stage_fit"] = time.perf_counter() - tick

    def refit() -> tuple[TwoStageRecommender, float]:
        tick = time.perf_counter()
        model = TwoStageRecommender(**config.two_stage_params()).fit(
            tables, warm_stage=split_model if split_model.label_days == config.test_days else None
        )
        return model, time.perf_counter() - tick

    # The refit only reads the split model: with a second core it runs beside the evaluation
    # (ALS, EASE, numpy and LightGBM release the GIL), the same models either way.
    with fit_pool(2 if config.refit else 1, rows=len(events)) as pool:
        refitted = pool.submit(refit) if pool is not None and config.refit else None
        evaluate = dict(
            k=config.k,
            catalogue_size=len(product_ids),
            random_state=config.random_state,
            max_customers=config.max_eval_customers,
        )
        tick = time.perf_counter()
        info: dict = {
            "split_time": split_time.isoformat(),
            "test_days": config.test_days,
            "train_events": n_train,
            "test_events": int(len(test_ev)),
            "catalogue_size": int(len(product_ids)),
            "relevant_pairs": int(len(relevant_new)),
            "protocol": "new_products: test-window purchases of products the customer had not bought "
            "before, every model's list without the customer's bought products",
            "served": split_model.training_info_.get("served", {}),
        }
        relevant = {"new": relevant_new} if not relevant_new.empty else {}
        if config.all_purchases:
            relevant["all"] = relevant_all
        served_lists: dict[str, pd.DataFrame] = {}
        scored = evaluate_protocols(split_model, MODEL_NAMES, relevant, served_lists=served_lists, **evaluate)
        metrics: dict[str, dict[str, float]] = scored.get("new", {})
        if relevant_new.empty:
            info["new_products"] = "nobody bought a product new to them in the test window"
        if config.all_purchases:
            info["all_purchases"] = scored["all"]
            info["served_rebuy_share"] = round(rebuy_share(split_model, served_lists["all"]), 4)
        if champion is not None:
            info["champion"] = champion_window_scores(split_model, champion, tables, split_time, **evaluate)
        timings["evaluation"] = time.perf_counter() - tick
        info["two_stage_training"] = split_model.training_info_

        model = split_model
        if config.refit:
            model, timings["refit"] = refitted.result() if refitted is not None else refit()
    timings["total"] = time.perf_counter() - started
    info["seconds"] = {name: round(value, 2) for name, value in timings.items()}
    info["config"] = asdict(config)
    return model, metrics, info


def champion_window_scores(
    challenger: TwoStageRecommender,
    champion: TwoStageRecommender,
    tables: Tables,
    split_time: pd.Timestamp,
    k: int,
    catalogue_size: int,
    random_state: int,
    max_customers: int,
) -> dict:
    """The deployed champion and the challenger (this run's model fitted before the test window)
    scored on the same new window: the purchases after both were trained, from the later of the
    split and the champion's own cut-off to the end of the data, every purchase relevant and the
    served default list scored (nDCG@k). The champion answers as it would have served: from its
    own state, never refitted. No score when nothing was bought after the champion's training."""
    start = max(pd.Timestamp(split_time), pd.Timestamp(champion.as_of_))
    events = tables.events
    window = events.loc[events[c.TS] >= start, [c.CUSTOMER_ID, c.EVENT_TYPE, c.PRODUCT_ID]]
    relevant = window_purchases(window.iloc[:0], window, new_only=False)
    if relevant.empty:
        return {
            "score": None,
            "challenger_score": None,
            "note": f"nothing was bought after the champion's training (data up to {champion.as_of_}): "
            "it cannot be judged on new data",
        }
    evaluate = dict(
        k=k, catalogue_size=catalogue_size, random_state=random_state, max_customers=max_customers
    )
    key = f"ndcg@{k}"
    return {
        "score": float(evaluate_models(champion, ("served",), relevant, **evaluate)["served"][key]),
        "challenger_score": float(
            evaluate_models(challenger, ("served",), relevant, **evaluate)["served"][key]
        ),
        "note": f"the champion as deployed and the challenger fitted before the test window, both on the "
        f"purchases from {start:%Y-%m-%d %H:%M} (served default list, nDCG@{k})",
        "window_start": start.isoformat(),
    }


def flat_metrics(metrics: dict[str, dict]) -> dict[str, float]:
    """`model.metric` → value for the numeric metrics (what MLflow's log_metrics takes, with @ → _at_)."""
    return {
        f"{model}.{name}".replace("@", "_at_"): float(value)
        for model, values in metrics.items()
        for name, value in values.items()
        if isinstance(value, int | float)
    }
