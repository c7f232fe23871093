"""How models/ fit LightGBM and build customer features: in process, or on the Dask cluster of
`omni train --dask-scheduler` while one is active (`training/distributed.py` does the work); and
how independent in-process fits share the cores (`fit_pool`, `run_tasks`).

`training` is imported only when a fit runs: MLflow snapshots `models/` and `features/` with each
registered model, and loading or serving a model must not need the training package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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


def fit_estimator(estimator, X, y, **kwargs):
    """`estimator.fit(X, y, **kwargs)`, or the same fit through lightgbm.dask; returns the fitted estimator."""
    from training.distributed import fit_estimator as fit

    return fit(estimator, X, y, **kwargs)


def train_booster(params: dict, X, y, **kwargs):
    """`lgb.train` (with optional early stopping), or the same through lightgbm.dask; returns a Booster."""
    from training.distributed import train_booster as train

    return train(params, X, y, **kwargs)


def build_customer_features(events, customers=None, products=None, as_of=None, channels=None):
    """`features.customer_features.build_customer_features`, per customer part on the cluster if active."""
    from training.distributed import build_customer_features as build

    return build(events, customers, products, as_of, channels)


def fits_locally() -> bool:
    """False while LightGBM fits go to the Dask cluster of `omni train --dask-scheduler` (one
    distributed training at a time there: they would share the workers' ports)."""
    try:
        from training.distributed import active
    except ImportError:  # a serving install without the training package fits nothing remotely
        return True
    return active() is None


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
