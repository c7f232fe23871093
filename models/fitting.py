"""How models/ fit LightGBM and build customer features: in process, or on the Dask cluster of
`omni train --dask-scheduler` while one is active (`training/distributed.py` does the work).

`training` is imported only when a fit runs: MLflow snapshots `models/` and `features/` with each
registered model, and loading or serving a model must not need the training package.
"""

from __future__ import annotations


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
