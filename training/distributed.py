"""Scale-out on a Dask cluster: `omni train --dask-scheduler ADDRESS`.

Without a scheduler nothing here changes anything: every helper calls exactly what the
single-process code called before (`estimator.fit`, `lgb.train`, `build_customer_features`).
With one, `use_cluster(address)` connects a `dask.distributed.Client` and makes it the *active
cluster* for the duration of the run; then

- `build_customer_features` splits the events (and the customers table) by a hash of the customer
  id, builds each part's features on a worker with the same function, and concatenates them. Every
  customer's events land in one part, so the result is the single-process frame, value for value;
  the only cross-customer inputs (the time `as_of`, the channel list, whether order ids exist at
  all) are decided once on the whole table and passed to every part.
- `fit_estimator` (LightGBM's sklearn classes) and `train_booster` (the native `lgb.train`) train
  through `lightgbm.dask` (`DaskLGBMClassifier` / `DaskLGBMRegressor` / `DaskLGBMRanker`, data
  parallel, one part per worker) and hand back a local, fitted model (`.to_local()`), so saving,
  registering and serving do not change. Rows are split so that no query group (ranking) straddles
  two parts and every part holds every class (classification: LightGBM encodes the labels on each
  worker, so a part missing a class would disagree with the others). Fits too small to share
  (fewer than `min_rows_per_part` rows per part) run on one worker.
- Early stopping: `lightgbm.dask` does not support it (each worker would judge its own part of the
  validation set; `DaskLGBMRanker`'s documentation says so). The cluster therefore trains the full
  `num_boost_round` trees, and the early-stopping rule (`lgb.early_stopping`: stop when the metric
  has not improved for `early_stopping_rounds` rounds, keep the best iteration) is replayed here on
  the validation rows, tree by tree, with LightGBM's metric definitions. The booster keeps the best
  iteration exactly as a locally early-stopped one does; the price is training the trees after it.

ALS and EASE (`implicit`, scipy) have no distributed backend: they fit on the machine that runs
`omni train`, and the run's notes say so.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features import columns as c
from models.fitting import LOCAL_BACKEND, FitBackend, using_backend

LOCAL_FIT_NOTE = "ALS/EASE fit locally: implicit has no distributed backend"

CONNECT_TIMEOUT_S = 10.0  # how long `omni train --dask-scheduler` waits for the scheduler and a worker

# LightGBM parameters that lightgbm.dask sets itself (threads per worker, machines) ...
_DASK_OWNED_PARAMS = {"num_threads", "num_thread", "nthread", "nthreads", "n_jobs", "num_machines"}
# ... and the network it trained over, which means nothing once the model is local
_NETWORK_PARAMS = ("machines", "local_listen_port", "time_out")


class SchedulerUnreachable(RuntimeError):
    """The Dask scheduler could not be reached (or has no workers)."""


@dataclass
class DaskContext:
    """The cluster a run uses: its client, the address it was given and its workers."""

    client: Any  # dask.distributed.Client
    address: str
    min_rows_per_part: int = 500  # a LightGBM part smaller than this is not worth a worker

    def workers(self) -> list[str]:
        """Worker addresses, sorted (a stable order, so parts go to the same workers each time)."""
        return sorted(self.client.nthreads())


_active: DaskContext | None = None
_lock = threading.Lock()


def active() -> DaskContext | None:
    """The cluster of the running `omni train`, or None (single process)."""
    return _active


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S, min_rows_per_part: int = 500) -> DaskContext:
    """A client on the scheduler at `address`, with at least one worker; `SchedulerUnreachable` if not."""
    from dask.distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SchedulerUnreachable(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        client.close()
        raise SchedulerUnreachable(f"the Dask scheduler at {address} has no workers: {exc}") from exc
    return DaskContext(client=client, address=address, min_rows_per_part=min_rows_per_part)


@contextmanager
def use_cluster(
    address_or_context: str | DaskContext, timeout: float = CONNECT_TIMEOUT_S
) -> Iterator[DaskContext]:
    """Make a cluster the active one for the block (connecting to it when given an address).

    A client this function opened is closed at the end; a given `DaskContext` is left open.
    """
    global _active
    own = isinstance(address_or_context, str)
    ctx = connect(address_or_context, timeout) if own else address_or_context
    with _lock:
        if _active is not None:
            if own:
                ctx.client.close()
            raise RuntimeError(f"a Dask cluster is already active ({_active.address})")
        _active = ctx
    try:
        with using_backend(DaskBackend(ctx)):
            yield ctx
    finally:
        with _lock:
            _active = None
        if own:
            ctx.client.close()


class DaskBackend(FitBackend):
    """The fit backend of a cluster (`models.fitting.FitBackend`): LightGBM through
    `lightgbm.dask`, customer features one customer-hash part per task."""

    name = "dask"
    distributed = True

    def __init__(self, ctx: DaskContext):
        self.ctx = ctx

    def fit_estimator(self, estimator, X, y, *, sample_weight=None, **fit_kwargs):
        local = _fit_on_cluster(self.ctx, estimator, X, y, sample_weight=sample_weight, **fit_kwargs)
        estimator.__dict__.update(local.__dict__)
        return estimator

    def train_booster(self, params: dict, X, y, **kwargs):
        return _train_booster_on_cluster(self.ctx, params, X, y, **kwargs)

    def build_customer_features(
        self, events, customers=None, products=None, as_of=None, channels=None, n_parts=None
    ):
        return _customer_features_on_cluster(self.ctx, events, customers, products, as_of, channels, n_parts)


def _backend() -> FitBackend:
    ctx = active()
    return LOCAL_BACKEND if ctx is None else DaskBackend(ctx)


# ------------------------------------------------------------------------------ features
def build_customer_features(
    events: pd.DataFrame,
    customers: pd.DataFrame | None = None,
    products: pd.DataFrame | None = None,
    as_of: pd.Timestamp | None = None,
    channels: tuple[str, ...] | None = None,
    n_parts: int | None = None,
) -> pd.DataFrame:
    """`features.customer_features.build_customer_features`, on the active cluster if there is one.

    On a cluster: one task per customer-hash part (`n_parts`, default two per worker), each
    running the same function on its customers' events; the frames are concatenated in customer
    order and a category no customer of a part bought is a 0 share there, as in one process.
    """
    backend = _backend()
    if isinstance(backend, DaskBackend):
        return backend.build_customer_features(events, customers, products, as_of, channels, n_parts)
    return backend.build_customer_features(events, customers, products, as_of, channels)


def _customer_features_on_cluster(ctx: DaskContext, events, customers, products, as_of, channels, n_parts):
    ev = events if as_of is None else events[events[c.TS] < as_of]
    as_of = as_of if as_of is not None else (ev[c.TS].max() + pd.Timedelta(seconds=1))
    channels = channels or tuple(sorted(pd.unique(ev[c.CHANNEL].astype(str))))
    has_orders = bool(c.ORDER_ID in ev and ev[c.ORDER_ID].notna().any())
    n_parts = n_parts or 2 * len(ctx.workers())

    ev_parts = _split_by_part(ev, customer_partition(ev[c.CUSTOMER_ID], n_parts), n_parts)
    cust_parts = (
        [None] * n_parts
        if customers is None
        else _split_by_part(customers, customer_partition(customers[c.CUSTOMER_ID], n_parts), n_parts)
    )
    tasks = [
        (ev_p, cust_p)
        for ev_p, cust_p in zip(ev_parts, cust_parts, strict=True)
        if len(ev_p) or (cust_p is not None and len(cust_p))
    ]
    if not tasks:  # no events and no customers: nothing to spread
        return LOCAL_BACKEND.build_customer_features(ev, customers, products, as_of, channels)

    client = ctx.client
    products_f = client.scatter(products, broadcast=True) if products is not None else None
    futures = [
        client.submit(
            _features_part,
            client.scatter(ev_p),
            None if cust_p is None else client.scatter(cust_p),
            products_f,
            as_of,
            channels,
            has_orders,
            pure=False,
        )
        for ev_p, cust_p in tasks
    ]
    frames = client.gather(futures)
    return _combine_feature_parts(frames)


def customer_partition(customer_ids: pd.Series, n_parts: int) -> np.ndarray:
    """Part number (0..n_parts-1) of each row, from a stable hash of the customer id as text."""
    codes, uniques = pd.factorize(pd.Series(customer_ids).astype(str))
    hashed = pd.util.hash_array(np.asarray(uniques, dtype=object), categorize=False)
    part_of_unique = (hashed % np.uint64(n_parts)).astype(np.int64)
    return part_of_unique[codes]


def _split_by_part(frame: pd.DataFrame, part: np.ndarray, n_parts: int) -> list[pd.DataFrame]:
    """The rows of each part, in their original order (one stable sort, not one mask per part)."""
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(n_parts + 1))
    return [frame.iloc[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _features_part(
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    products: pd.DataFrame | None,
    as_of: pd.Timestamp,
    channels: tuple[str, ...],
    has_orders: bool,
) -> pd.DataFrame:
    """One part's features (runs on a worker)."""
    from features.customer_features import build_customer_features as build_local

    if has_orders and not events[c.ORDER_ID].notna().any():
        # the whole table has order ids, this part has none: key each purchase by its time, as
        # the single-process build does for a purchase without an order id
        events = events.copy()
        events[c.ORDER_ID] = events[c.ORDER_ID].astype(object)
        purchase = events[c.EVENT_TYPE].astype(str) == "purchase"
        ts_s = events.loc[purchase, c.TS].dt.tz_convert(None).to_numpy().astype("datetime64[s]")
        events.loc[purchase, c.ORDER_ID] = ts_s.astype(np.int64).astype(str)
    return build_local(events, customers, products, as_of, channels)


def _combine_feature_parts(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    base = [col for col in frames[0].columns if not col.startswith("cat_")]
    cats = sorted({col for f in frames for col in f.columns if col.startswith("cat_")})
    out = pd.concat([f.reindex(columns=base + cats) for f in frames], ignore_index=True)
    if cats:
        out[cats] = out[cats].fillna(0.0)
    return out.sort_values(c.CUSTOMER_ID, kind="stable", ignore_index=True)


# ------------------------------------------------------------------------------ LightGBM
def fit_estimator(estimator, X, y, *, sample_weight=None, **fit_kwargs):
    """Fit a LightGBM sklearn estimator (`LGBMClassifier`, `LGBMRegressor`, `LGBMRanker`).

    Single process: `estimator.fit(X, y, ...)`. On the active cluster: the `DaskLGBM*` class with
    the same parameters, its local model copied into `estimator`. Returns the fitted `estimator`
    either way (as `fit` does), so `est = fit_estimator(est, X, y)` and `fit_estimator(est, X, y)`
    both work. `fit_kwargs` (e.g. `group`, `feature_name`, `categorical_feature`) go to `fit`.
    """
    return _backend().fit_estimator(estimator, X, y, sample_weight=sample_weight, **fit_kwargs)


def train_booster(
    params: dict,
    X,
    y,
    *,
    num_boost_round: int,
    group=None,
    valid: tuple | None = None,
    early_stopping_rounds: int | None = None,
    feature_name: Sequence[str] | str = "auto",
    categorical_feature: Sequence[int] | str = "auto",
):
    """`lgb.train` on (X, y[, group]) with optional early stopping on `valid` = (X, y[, group]).

    Single process: exactly `lgb.train(params, Dataset(...), num_boost_round, valid_sets=[valid
    Dataset referencing the training one], callbacks=[lgb.early_stopping(rounds, verbose=False)])`.
    On the active cluster: the full `num_boost_round` trees through `lightgbm.dask`, then the
    early-stopping rule replayed on `valid` (see the module's doc); `best_iteration` and
    `best_score["valid_0"]` are set as `lgb.train` sets them.
    """
    return _backend().train_booster(
        params,
        X,
        y,
        num_boost_round=num_boost_round,
        group=group,
        valid=valid,
        early_stopping_rounds=early_stopping_rounds,
        feature_name=feature_name,
        categorical_feature=categorical_feature,
    )


def _train_booster_on_cluster(
    ctx: DaskContext,
    params: dict,
    X,
    y,
    *,
    num_boost_round: int,
    group=None,
    valid: tuple | None = None,
    early_stopping_rounds: int | None = None,
    feature_name: Sequence[str] | str = "auto",
    categorical_feature: Sequence[int] | str = "auto",
):
    import lightgbm as lgb

    kind = _kind_of_objective(params.get("objective", "regression"))
    fit_kwargs: dict[str, Any] = {}
    model_params = dict(params)
    if kind == "ranker":  # a fit argument of the sklearn ranker (LightGBM warns when it is a parameter)
        for name in ("eval_at", "ndcg_eval_at", "ndcg_at", "map_eval_at", "map_at"):
            if name in model_params:
                fit_kwargs["eval_at"] = model_params.pop(name)
    estimator = {"ranker": lgb.LGBMRanker, "classifier": lgb.LGBMClassifier, "regressor": lgb.LGBMRegressor}[
        kind
    ](n_estimators=num_boost_round, **model_params)
    if feature_name != "auto":
        fit_kwargs["feature_name"] = list(feature_name)
    if categorical_feature != "auto":
        fit_kwargs["categorical_feature"] = categorical_feature
    local = _fit_on_cluster(ctx, estimator, X, y, group=group, **fit_kwargs)
    booster = local.booster_
    if valid is not None and early_stopping_rounds:
        best, scores = replay_early_stopping(
            booster, params, valid[0], valid[1], valid[2] if len(valid) > 2 else None, early_stopping_rounds
        )
        booster.best_iteration = best
        booster.best_score = {"valid_0": scores}
    return booster


def _kind_of_objective(objective) -> str:
    if objective in ("lambdarank", "rank_xendcg", "xendcg", "xe_ndcg", "xe_ndcg_mart", "xendcg_mart"):
        return "ranker"
    if objective in ("binary", "multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"):
        return "classifier"
    return "regressor"


def _fit_on_cluster(ctx: DaskContext, estimator, X, y, *, sample_weight=None, group=None, **fit_kwargs):
    """Train `estimator`'s parameters with lightgbm.dask on `ctx`; the fitted local model."""
    import dask.array as da
    import lightgbm as lgb
    from lightgbm.dask import DaskLGBMClassifier, DaskLGBMRanker, DaskLGBMRegressor

    if isinstance(estimator, lgb.LGBMRanker):
        dask_cls = DaskLGBMRanker
    elif isinstance(estimator, lgb.LGBMClassifier):
        dask_cls = DaskLGBMClassifier
    elif isinstance(estimator, lgb.LGBMRegressor):
        dask_cls = DaskLGBMRegressor
    else:
        raise TypeError(f"not a LightGBM estimator: {type(estimator).__name__}")
    if isinstance(X, pd.DataFrame) and "feature_name" not in fit_kwargs:
        fit_kwargs["feature_name"] = [str(col) for col in X.columns]
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be 2-D with one row per label: {X.shape} vs {y.shape}")
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)

    workers = ctx.workers()
    if dask_cls is DaskLGBMRanker:
        if group is None:
            raise ValueError("a ranker needs query groups")
        rows, part_groups = split_groups(
            np.asarray(group, dtype=np.int64), len(workers), ctx.min_rows_per_part
        )
    else:
        labels = y if dask_cls is DaskLGBMClassifier else None
        rows = split_rows(len(y), len(workers), ctx.min_rows_per_part, labels)
        part_groups = None

    client = ctx.client
    x_parts, y_parts, w_parts, g_parts = [], [], [], []
    for p, idx in enumerate(rows):
        target = [workers[p]]
        x_p, y_p = X[idx], y[idx]
        x_parts.append(
            da.from_delayed(client.scatter(x_p, workers=target, hash=False), x_p.shape, dtype=x_p.dtype)
        )
        y_parts.append(
            da.from_delayed(client.scatter(y_p, workers=target, hash=False), y_p.shape, dtype=y_p.dtype)
        )
        if weight is not None:
            w_p = weight[idx]
            w_parts.append(
                da.from_delayed(client.scatter(w_p, workers=target, hash=False), w_p.shape, dtype=w_p.dtype)
            )
        if part_groups is not None:
            g_p = part_groups[p]
            g_parts.append(
                da.from_delayed(client.scatter(g_p, workers=target, hash=False), g_p.shape, dtype=g_p.dtype)
            )

    params = {k: v for k, v in estimator.get_params().items() if k not in _DASK_OWNED_PARAMS}
    model = dask_cls(client=client, **params)
    kwargs = dict(fit_kwargs)
    if w_parts:
        kwargs["sample_weight"] = da.concatenate(w_parts)
    if g_parts:
        kwargs["group"] = da.concatenate(g_parts)
    # lightgbm.dask prints "Finding random open ports for workers" on every fit: keep it off stdout
    with client.as_current(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # lightgbm.dask sets the threads per worker itself and says so for every fit
        warnings.filterwarnings("ignore", message="Parameter .* will be ignored", category=UserWarning)
        model.fit(da.concatenate(x_parts), da.concatenate(y_parts), **kwargs)
    local = model.to_local()
    # the local model reports the parameters it was given (threads included), not the cluster's
    for name in (*_DASK_OWNED_PARAMS, *_NETWORK_PARAMS):
        local._other_params.pop(name, None)
        local.booster_.params.pop(name, None)
    local.set_params(**{k: v for k, v in estimator.get_params().items() if k in _DASK_OWNED_PARAMS})
    return local


def split_rows(
    n_rows: int, n_workers: int, min_rows: int, labels: np.ndarray | None = None
) -> list[np.ndarray]:
    """Row indices per part (ascending within a part).

    Without labels: contiguous, near-equal parts. With labels (classification): each class is dealt
    round-robin over the parts, so every part holds every class; never more parts than the rarest
    class has rows.
    """
    n_parts = max(1, min(n_workers, n_rows // max(min_rows, 1)))
    if labels is None:
        return [np.asarray(a, dtype=np.int64) for a in np.array_split(np.arange(n_rows), n_parts)]
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_parts = max(1, min(n_parts, int(counts.min()) if len(counts) else 1))
    order = np.argsort(codes, kind="stable")
    rank_in_class = np.empty(n_rows, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class[order] = np.arange(n_rows) - np.repeat(starts, counts)
    part = rank_in_class % n_parts
    return [np.flatnonzero(part == p) for p in range(n_parts)]


def split_groups(
    group_sizes: np.ndarray, n_workers: int, min_rows: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Contiguous parts that cut only between query groups: (row indices, group sizes) per part."""
    n_rows = int(group_sizes.sum())
    n_parts = max(1, min(n_workers, n_rows // max(min_rows, 1), len(group_sizes)))
    ends = np.cumsum(group_sizes)
    # the group boundary closest to each equal-rows cut point
    cuts = [
        int(np.searchsorted(ends, n_rows * (p + 1) / n_parts, side="left")) + 1 for p in range(n_parts - 1)
    ]
    bounds = [0, *sorted(set(min(max(cut, 1), len(group_sizes) - 1) for cut in cuts)), len(group_sizes)]
    rows, groups = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b <= a:
            continue
        start = int(ends[a - 1]) if a else 0
        rows.append(np.arange(start, int(ends[b - 1]), dtype=np.int64))
        groups.append(group_sizes[a:b].astype(np.int64))
    return rows, groups


# ------------------------------------------------------------------------------ early stopping
def replay_early_stopping(booster, params: dict, X, y, group, rounds: int) -> tuple[int, dict[str, float]]:
    """`lgb.early_stopping(rounds)` replayed on a trained booster: (best iteration, its scores).

    The raw score is accumulated tree by tree; after each iteration every metric of `params` (or
    the objective's default metric) is computed as LightGBM computes it. Like the callback, the
    first metric that has not improved for `rounds` iterations stops the replay, and its best
    iteration is the answer; reaching the last tree, the best iteration so far is.
    """
    metrics = _metrics(params)
    y = np.asarray(y, dtype=np.float64)
    n_trees = booster.current_iteration()
    raw = None
    best_iter = [0] * len(metrics)
    best_score = [-np.inf] * len(metrics)
    best_all: list[dict[str, float]] = [{} for _ in metrics]
    for t in range(n_trees):
        step = booster.predict(X, raw_score=True, start_iteration=t, num_iteration=1)
        raw = step if raw is None else raw + step
        values = {name: fn(raw, y, group) for name, fn, _ in metrics}
        for i, (name, _, higher_better) in enumerate(metrics):
            score = values[name] if higher_better else -values[name]
            if score > best_score[i]:
                best_score[i], best_iter[i], best_all[i] = score, t, values
            # the callback's order: this metric's patience, then (last tree) this metric's best
            if t - best_iter[i] >= rounds or t == n_trees - 1:
                return best_iter[i] + 1, best_all[i]
    return n_trees, {}  # no tree at all


def _param(params: dict, names: Sequence[str], default=None):
    for name in names:
        if name in params:
            return params[name]
    return default


def _metrics(params: dict) -> list[tuple[str, Any, bool]]:
    """(name as LightGBM prints it, function(raw, y, group), higher is better) per metric."""
    objective = params.get("objective", "regression")
    metric = _param(params, ("metric", "metrics", "metric_types"))
    names = [metric] if isinstance(metric, str) else list(metric or [])
    if not names:
        names = [
            {
                "lambdarank": "ndcg",
                "rank_xendcg": "ndcg",
                "binary": "binary_logloss",
                "multiclass": "multi_logloss",
                "softmax": "multi_logloss",
            }.get(objective, "l2")
        ]
    out: list[tuple[str, Any, bool]] = []
    for name in names:
        if name in ("ndcg", "lambdarank", "rank_xendcg", "xendcg"):
            ks = _param(params, ("eval_at", "ndcg_eval_at", "ndcg_at"), [1, 2, 3, 4, 5])
            for k in [ks] if isinstance(ks, int) else ks:
                out.append((f"ndcg@{k}", lambda raw, y, g, k=int(k): ndcg_at(raw, y, g, k), True))
        elif name in ("binary_logloss", "binary"):
            out.append(("binary_logloss", _binary_logloss, False))
        elif name in ("multi_logloss", "multiclass", "softmax"):
            out.append(("multi_logloss", _multi_logloss, False))
        elif name in ("l2", "mse", "mean_squared_error", "regression", "regression_l2"):
            out.append(("l2", lambda raw, y, g: float(np.mean((raw - y) ** 2)), False))
        else:
            raise NotImplementedError(f"early stopping on a Dask cluster: metric {name!r} is not replayed")
    return out


def ndcg_at(score: np.ndarray, label: np.ndarray, group: np.ndarray, k: int) -> float:
    """LightGBM's NDCG@k: gain 2^label - 1, discount 1/log2(1 + position), ties in input order,
    a query without any relevant row counts 1; the mean over queries."""
    group = np.asarray(group, dtype=np.int64)
    qid = np.repeat(np.arange(len(group)), group)
    start = np.concatenate([[0], np.cumsum(group)[:-1]])
    gain = np.exp2(label) - 1.0

    def dcg(order: np.ndarray) -> np.ndarray:
        pos = np.arange(len(order)) - np.repeat(start, group)  # position within the query (order is by query)
        keep = pos < k
        return np.bincount(
            qid[keep], weights=gain[order][keep] / np.log2(pos[keep] + 2.0), minlength=len(group)
        )

    by_score = np.lexsort((-score, qid))  # stable: ties keep their input order
    by_label = np.lexsort((-label, qid))
    best = dcg(by_label)
    got = dcg(by_score)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndcg = np.where(best > 0, got / best, 1.0)
    return float(ndcg.mean()) if len(ndcg) else float("nan")


def _binary_logloss(raw: np.ndarray, y: np.ndarray, group=None) -> float:
    p = np.clip(1.0 / (1.0 + np.exp(-raw)), 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _multi_logloss(raw: np.ndarray, y: np.ndarray, group=None) -> float:
    z = raw - raw.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(np.maximum(logp[np.arange(len(y)), y.astype(np.int64)], np.log(1e-15))))
