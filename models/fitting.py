"""How models/ fit LightGBM and build customer features, on a backend the caller chooses
(`FitBackend`: this process by default; `omni train --dask-scheduler` hands in the Dask one of
`training/distributed.py`), and how independent in-process fits share the cores (`fit_pool`,
`run_tasks`).

Nothing here imports the training package: MLflow snapshots `models/` and `features/` with each
registered model, and loading or serving a model must not need it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager

# Side-by-side fits hold their working sets at the same time (at 100,000 customers the peak went
# from 3.6 to 5.7 GB). Above this many input rows (events) they run one after the other: the
# models are the same, only slower; at a million customers (36M events) the memory is what counts.
SIDE_BY_SIDE_MAX_ROWS_ENV = "OMNI_SIDE_BY_SIDE_MAX_ROWS"
SIDE_BY_SIDE_MAX_ROWS = 10_000_000


def side_by_side_max_rows() -> int:
    """Input rows up to which `fit_pool(workers, rows=...)` runs fits side by side
    (`$OMNI_SIDE_BY_SIDE_MAX_ROWS`, default 10,000,000)."""
    value = os.environ.get(SIDE_BY_SIDE_MAX_ROWS_ENV, "").strip()
    return int(value) if value else SIDE_BY_SIDE_MAX_ROWS


class FitBackend:
    """Where LightGBM fits and customer-feature builds run: this process.

    The models call `fit_estimator`, `train_booster` and `build_customer_features` below and never
    choose where they run: whoever runs them (`omni train --dask-scheduler`, through
    `training/distributed.py`) hands a backend in with `using_backend`, as scikit-learn's
    `parallel_backend` does for joblib. A subclass overrides the three methods and sets
    `distributed`; the models stay free of Dask and of the training package.
    """

    name = "local"
    distributed = False  # True: fits share a cluster's workers (one distributed fit at a time)

    def fit_estimator(self, estimator, X, y, *, sample_weight=None, **fit_kwargs):
        """`estimator.fit(X, y, ...)`; returns the fitted estimator."""
        if sample_weight is None:
            return estimator.fit(X, y, **fit_kwargs)
        return estimator.fit(X, y, sample_weight=sample_weight, **fit_kwargs)

    def train_booster(
        self,
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
        """`lgb.train` on (X, y[, group]), early-stopped on `valid` = (X, y[, group]) when given."""
        import lightgbm as lgb

        train = lgb.Dataset(
            X,
            y,
            group=group,
            feature_name=feature_name,
            categorical_feature=categorical_feature,
            free_raw_data=True,
        )
        valid_sets, callbacks = [], []
        if valid is not None:
            valid_sets = [
                lgb.Dataset(
                    valid[0],
                    valid[1],
                    group=valid[2] if len(valid) > 2 else None,
                    categorical_feature=categorical_feature,
                    reference=train,
                )
            ]
            if early_stopping_rounds:
                callbacks = [lgb.early_stopping(early_stopping_rounds, verbose=False)]
        return lgb.train(
            params, train, num_boost_round=num_boost_round, valid_sets=valid_sets, callbacks=callbacks
        )

    def build_customer_features(self, events, customers=None, products=None, as_of=None, channels=None):
        """`features.customer_features.build_customer_features`."""
        from features.customer_features import build_customer_features as build

        return build(events, customers, products, as_of, channels)


LOCAL_BACKEND = FitBackend()
_backend: FitBackend = LOCAL_BACKEND
_backend_lock = threading.Lock()


def current_backend() -> FitBackend:
    """The backend fits run on now (the local one unless a caller handed another in)."""
    return _backend


@contextmanager
def using_backend(backend: FitBackend) -> Iterator[FitBackend]:
    """Run the block's fits on `backend` (a module-wide setting, so the threads of `fit_pool` see
    it too); the previous backend comes back at the end. One non-local backend at a time."""
    global _backend
    with _backend_lock:
        if backend is not LOCAL_BACKEND and _backend is not LOCAL_BACKEND:
            raise RuntimeError(f"a fit backend is already in use ({_backend.name})")
        previous, _backend = _backend, backend
    try:
        yield backend
    finally:
        with _backend_lock:
            _backend = previous


def fit_estimator(estimator, X, y, **kwargs):
    """`estimator.fit(X, y, **kwargs)` on the current backend; returns the fitted estimator."""
    return current_backend().fit_estimator(estimator, X, y, **kwargs)


def train_booster(params: dict, X, y, **kwargs):
    """`lgb.train` (with optional early stopping) on the current backend; returns a Booster."""
    return current_backend().train_booster(params, X, y, **kwargs)


def build_customer_features(events, customers=None, products=None, as_of=None, channels=None):
    """Customer features (`features.customer_features`), built on the current backend."""
    return current_backend().build_customer_features(events, customers, products, as_of, channels)


def fits_locally() -> bool:
    """False while fits go to a distributed backend (one distributed training at a time there:
    they would share the workers' ports)."""
    return not current_backend().distributed


@contextmanager
def fit_pool(
    workers: int | None, rows: int | None = None, row_weight: float = 1.0
) -> Iterator[ThreadPoolExecutor | None]:
    """A pool of `workers` threads for independent, seeded fits, or None (fit one at a time) for
    a single worker, while fits go to the Dask cluster, or when the fits read more than
    `side_by_side_max_rows()` input `rows` (their working sets would be held at once). LightGBM
    releases the GIL, so two single-threaded fits use both cores of the reference machine; the
    models do not depend on it.

    `row_weight`: the fits' working set per input row relative to the channel and send-time
    family's, for which the limit was set (the two-stage recommender's pair holds about a quarter
    as much per event: `rows * row_weight` is compared with the limit)."""
    workers = max(1, int(workers or 1)) if fits_locally() else 1
    if rows is not None and rows * row_weight > side_by_side_max_rows():
        workers = 1
    if workers == 1:
        yield None
        return
    with ThreadPoolExecutor(workers) as pool:
        yield pool


def run_tasks(tasks: list, executor: Executor | None = None) -> list:
    """Call each task (no arguments), on `executor` when given, and return their results in order.

    LightGBM releases the GIL while it builds datasets, trains and predicts, so independent
    single-threaded fits on a thread pool use both cores of the reference machine without the
    OpenMP busy-waiting that multi-threaded LightGBM suffers from on a shared machine.
    """
    if executor is None:
        return [task() for task in tasks]
    futures = [executor.submit(task) for task in tasks]
    return [future.result() for future in futures]
