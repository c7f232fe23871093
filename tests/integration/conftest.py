"""Integration tests: models fitted on the session's generated data, training runs logged to MLflow
stores, the command line called in process.

Tests that register models under the session's names use `own_store`, so the session's champions
(which later tests serve) stay where they are.
"""

import os

import pytest


@pytest.fixture()
def own_store(tmp_path, tracking_uri):
    """A fresh SQLite MLflow store of this test's own, made the active one; afterwards MLflow
    points at the session's store again. Yields its tracking URI."""
    from training.tracking import setup_tracking

    uri = f"sqlite:///{tmp_path / 'own-store' / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        setup_tracking(uri)
        yield uri
    finally:
        setup_tracking(tracking_uri)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def small_recommender(_generated_tables):
    """One small two-stage recommender fitted on the session's generated data, shared by the tests
    of its request paths and of the lists stored ahead (do not change it: build your own to). Two
    places in every list are kept for new products, whatever validation chose, so that the
    reserved places are exercised."""
    from models.recs.two_stage import TwoStageRecommender

    model = TwoStageRecommender(
        factors=16,
        iterations=5,
        n_estimators=40,
        ease_l2=50.0,
        num_threads=1,
        random_state=0,
        new_product_slots=2,
    ).fit(_generated_tables)
    model.new_slots_ = {"all": 2, "new": 2}
    return model
