"""Scale-out on Dask (`training/distributed.py`), on a local cluster of 2 worker processes.

The feature build on the cluster must give the single-process frame exactly; the LightGBM fits
(through lightgbm.dask, data parallel over both workers) must be about as good as the local ones,
keep early stopping, and come back as ordinary local models; `omni train --dask-scheduler` runs
end to end and says where it ran; an unreachable scheduler is a clear error.
"""

import json
import socket
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from features import columns as c
from features.customer_features import build_customer_features
from models.recs.ranker import FEATURE_NAMES, LambdaRankModel
from training import distributed as D
from training.cli import main


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as local:
        yield local


@pytest.fixture(scope="module")
def ctx(cluster):
    context = D.connect(cluster.scheduler_address)
    context.client.wait_for_workers(2, timeout=60)
    yield context
    context.client.close()


@pytest.fixture
def on_cluster(ctx):
    with D.use_cluster(ctx):
        yield ctx


@pytest.fixture(scope="module")
def tables(module_generated_tables):
    return module_generated_tables


def _train_parts_ran_on(ctx, fit) -> set[str]:
    """The workers that ran LightGBM's training tasks during `fit()`."""
    from dask.distributed import get_task_stream

    with get_task_stream(client=ctx.client) as stream:
        fit()
    return {t["worker"] for t in stream.data if "_train_part" in str(t["key"])}


# ------------------------------------------------------------------------------ features
def test_customer_features_on_the_cluster_equal_the_local_ones(tables, on_cluster):
    local = build_customer_features(tables.events, tables.customers, tables.products)
    spread = D.build_customer_features(tables.events, tables.customers, tables.products, n_parts=5)
    pd.testing.assert_frame_equal(spread, local, check_exact=True)
    # a time split (as the profile model and the evaluation use it) and a fixed channel list
    as_of = tables.events[c.TS].quantile(0.6)
    channels = ("web", "app", "store")
    local = build_customer_features(tables.events, tables.customers, tables.products, as_of, channels)
    spread = D.build_customer_features(tables.events, tables.customers, tables.products, as_of, channels)
    pd.testing.assert_frame_equal(spread, local, check_exact=True)


def test_a_part_without_order_ids_counts_orders_as_one_process_does(tables, on_cluster):
    events = tables.events.copy()
    part = D.customer_partition(events[c.CUSTOMER_ID], 3)
    events[c.ORDER_ID] = events[c.ORDER_ID].astype(object)
    events.loc[part == 0, c.ORDER_ID] = None  # this part has no order id at all; the others do
    # two purchases in the same second without an order id are one order for the local build
    first = events.index[(part == 0) & (events[c.EVENT_TYPE] == "purchase")][0]
    events = pd.concat([events, events.loc[[first]]], ignore_index=True)
    local = build_customer_features(events, tables.customers, tables.products)
    spread = D.build_customer_features(events, tables.customers, tables.products, n_parts=3)
    pd.testing.assert_frame_equal(spread, local, check_exact=True)


def test_without_a_cluster_the_helpers_are_the_local_functions(tables):
    assert D.active() is None
    pd.testing.assert_frame_equal(
        D.build_customer_features(tables.events, tables.customers, tables.products),
        build_customer_features(tables.events, tables.customers, tables.products),
        check_exact=True,
    )


# ------------------------------------------------------------------------------ partitions
def test_query_groups_never_straddle_parts():
    sizes = np.random.default_rng(0).integers(1, 40, size=300)
    rows, groups = D.split_groups(sizes, 2, 100)
    assert len(rows) == 2
    assert np.array_equal(np.concatenate(rows), np.arange(sizes.sum()))
    assert np.array_equal(np.concatenate(groups), sizes)
    for r, g in zip(rows, groups, strict=True):
        assert len(r) == g.sum()
    # too few rows to share: one part
    assert len(D.split_groups(sizes, 2, 10**6)[0]) == 1


def test_every_part_holds_every_class():
    labels = np.array([0] * 1000 + [1] * 30 + [2] * 5)
    parts = D.split_rows(len(labels), 2, 10, labels)
    assert len(parts) == 2
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    for p in parts:
        assert set(labels[p]) == {0, 1, 2}
    assert len(D.split_rows(len(labels), 4, 10, np.array([0] * 1034 + [1]))) == 1  # a class of one row


# ------------------------------------------------------------------------------ early stopping
def _ranking_data(n_groups: int, seed: int):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(10, 40, size=n_groups)
    X = rng.normal(size=(sizes.sum(), len(FEATURE_NAMES))).astype(np.float32)
    relevance = X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=1.0, size=len(X))
    y = (relevance > 1.5).astype(int) + (relevance > 2.5).astype(int)
    return X, y, sizes


def _binary_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[:, 5] = rng.integers(0, 4, size=n)  # a categorical column
    logit = X[:, 0] - 0.7 * X[:, 1] + 0.5 * (X[:, 5] == 2) + X[:, 2] * X[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def test_replayed_early_stopping_matches_lightgbm():
    X, y, g = _ranking_data(300, 1)
    cut = g[:250].sum()
    params = LambdaRankModel(min_child_samples=20, num_threads=1)._params()
    rounds = 15
    stopped = lgb.train(
        params,
        lgb.Dataset(X[:cut], y[:cut], group=g[:250]),
        num_boost_round=200,
        valid_sets=[lgb.Dataset(X[cut:], y[cut:], group=g[250:])],
        callbacks=[lgb.early_stopping(rounds, verbose=False)],
    )
    full = lgb.train(params, lgb.Dataset(X[:cut], y[:cut], group=g[:250]), num_boost_round=200)
    best, scores = D.replay_early_stopping(full, params, X[cut:], y[cut:], g[250:], rounds)
    assert best == stopped.best_iteration
    assert scores["ndcg@10"] == pytest.approx(stopped.best_score["valid_0"]["ndcg@10"], abs=1e-9)

    Xb, yb = _binary_data(4000, 2)
    params = {"objective": "binary", "learning_rate": 0.2, "num_leaves": 15, "verbose": -1, "seed": 0}
    params["num_threads"] = 1  # OpenMP threads on a busy 2-core machine cost more than they give
    stopped = lgb.train(
        params,
        lgb.Dataset(Xb[:3000], yb[:3000]),
        num_boost_round=300,
        valid_sets=[lgb.Dataset(Xb[3000:], yb[3000:])],
        callbacks=[lgb.early_stopping(rounds, verbose=False)],
    )
    full = lgb.train(params, lgb.Dataset(Xb[:3000], yb[:3000]), num_boost_round=300)
    best, scores = D.replay_early_stopping(full, params, Xb[3000:], yb[3000:], None, rounds)
    assert best == stopped.best_iteration < 300
    assert scores["binary_logloss"] == pytest.approx(
        stopped.best_score["valid_0"]["binary_logloss"], rel=1e-9
    )


# ------------------------------------------------------------------------------ LightGBM fits
def test_classifier_and_regressor_fits_use_both_workers_and_match_local_quality(ctx):
    X, y = _binary_data(8000, 3)
    X_test, y_test = _binary_data(4000, 4)
    params = {"n_estimators": 120, "learning_rate": 0.05, "num_leaves": 15, "random_state": 0, "verbose": -1}
    params["n_jobs"] = 1
    local = D.fit_estimator(lgb.LGBMClassifier(objective="binary", **params), X, y)
    with D.use_cluster(ctx):
        model = lgb.LGBMClassifier(objective="binary", **params)
        workers = _train_parts_ran_on(ctx, lambda: D.fit_estimator(model, X, y))
    assert len(workers) == 2
    assert type(model) is lgb.LGBMClassifier and model.n_jobs == 1  # a plain local model
    assert "machines" not in model.booster_.params
    auc_local = roc_auc_score(y_test, local.predict_proba(X_test)[:, 1])
    auc_dask = roc_auc_score(y_test, model.predict_proba(X_test)[:, 1])
    assert auc_dask == pytest.approx(auc_local, abs=0.02)

    target = X[:, 0] * 2 + np.sin(X[:, 1]) + np.random.default_rng(5).normal(scale=0.3, size=len(X))
    local = D.fit_estimator(lgb.LGBMRegressor(**params), X, target)
    with D.use_cluster(ctx):
        spread = D.fit_estimator(lgb.LGBMRegressor(**params), pd.DataFrame(X).add_prefix("f"), target)
    assert spread.feature_name_ == [f"f{i}" for i in range(X.shape[1])]  # a frame's names are kept
    truth = X_test[:, 0] * 2 + np.sin(X_test[:, 1])
    mse_local = np.mean((local.predict(X_test) - truth) ** 2)
    mse_dask = np.mean((spread.predict(pd.DataFrame(X_test).add_prefix("f")) - truth) ** 2)
    assert mse_dask < mse_local * 1.3 + 0.01


def test_multiclass_fit_on_the_cluster_keeps_every_class(on_cluster):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(3000, 4))
    arm = (X[:, 0] > 0).astype(int) + (X[:, 1] > 1).astype(int) * 2  # 4 arms, one rare
    model = D.fit_estimator(lgb.LGBMClassifier(objective="multiclass", n_estimators=40, verbose=-1), X, arm)
    proba = model.predict_proba(X)
    assert list(model.classes_) == [0, 1, 2, 3]
    assert proba.shape == (3000, 4)
    assert (proba.argmax(axis=1) == arm).mean() > 0.9


def test_ranker_on_the_cluster_early_stops_and_ranks_as_well(ctx, tmp_path):
    X, y, g = _ranking_data(600, 7)
    X_test, y_test, g_test = _ranking_data(300, 8)
    local = LambdaRankModel(min_child_samples=20, random_state=1, num_threads=1).fit(X, y, g)
    with D.use_cluster(ctx):
        spread = LambdaRankModel(min_child_samples=20, random_state=1, num_threads=1)
        workers = _train_parts_ran_on(ctx, lambda: spread.fit(X, y, g))
    assert len(workers) == 2
    assert 1 <= spread.best_iteration_ <= spread.n_estimators
    assert np.isfinite(spread.validation_ndcg_)
    ndcg_local = D.ndcg_at(local.predict(X_test), y_test, g_test, 10)
    ndcg_dask = D.ndcg_at(spread.predict(X_test), y_test, g_test, 10)
    assert ndcg_dask == pytest.approx(ndcg_local, abs=0.03)
    # saving and loading (what serving does) is unchanged
    spread.save(tmp_path)
    loaded = LambdaRankModel.load(tmp_path)
    np.testing.assert_allclose(loaded.predict(X_test), spread.predict(X_test), rtol=1e-6)


def test_a_fit_on_one_worker_is_the_local_fit(ctx):
    X, y, g = _ranking_data(200, 9)
    local = LambdaRankModel(min_child_samples=20, random_state=3, num_threads=1).fit(X, y, g)
    one_part = D.DaskContext(client=ctx.client, address=ctx.address, min_rows_per_part=10**9)
    with D.use_cluster(one_part):
        spread = LambdaRankModel(min_child_samples=20, random_state=3, num_threads=1).fit(X, y, g)
    assert spread.best_iteration_ == local.best_iteration_
    assert spread.validation_ndcg_ == pytest.approx(local.validation_ndcg_, abs=1e-12)
    np.testing.assert_array_equal(spread.predict(X), local.predict(X))


def test_booster_with_categorical_feature_and_early_stopping_on_the_cluster(on_cluster):
    X, y = _binary_data(10_000, 10)
    X_test, y_test = _binary_data(4000, 11)
    params = {"objective": "binary", "learning_rate": 0.1, "num_leaves": 15, "seed": 0, "verbose": -1}
    params["num_threads"] = 1  # the workers' thread count replaces it on the cluster
    booster = D.train_booster(
        params,
        X[:8000],
        y[:8000],
        num_boost_round=400,
        valid=(X[8000:], y[8000:]),
        early_stopping_rounds=20,
        categorical_feature=[5],
    )
    assert booster.num_trees() == 400  # the cluster trains every round ...
    assert 1 <= booster.best_iteration < 400  # ... and keeps the early-stopped best
    assert set(booster.best_score["valid_0"]) == {"binary_logloss"}
    assert roc_auc_score(y_test, booster.predict(X_test, num_iteration=booster.best_iteration)) > 0.7


# ------------------------------------------------------------------------------ omni train
def test_omni_train_with_dask_scheduler_end_to_end(cluster, generated_data, workdir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # its own store: the session's champions stay put
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(generated_data),
            "--tracking-uri",
            uri,
            "--factors",
            "16",
            "--iterations",
            "5",
            "--dask-scheduler",
            cluster.scheduler_address,
        ],
    )
    assert result.exit_code == 0, result.output
    assert D.active() is None  # the cluster is only active during the run
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("omni").experiment_id])
    assert run.data.params["dask_scheduler"] == cluster.scheduler_address
    assert run.data.tags["dask.scheduler"] == cluster.scheduler_address
    assert run.data.tags["dask.workers"] == "2"
    assert run.data.metrics["channel.engagement_auc"] > 0.55
    assert run.data.metrics["profile.churn_auc"] > 0.6
    notes_file = client.download_artifacts(run.info.run_id, "data_notes.json", str(tmp_path))
    notes = json.loads(Path(notes_file).read_text())["notes"]
    assert D.LOCAL_FIT_NOTE in notes
    for name in ("omni-recommender", "omni-channel", "omni-send-time", "omni-nba"):
        assert client.get_model_version_by_alias(name, "champion")


def test_unreachable_scheduler_is_a_clear_error(generated_data, tmp_path, monkeypatch):
    monkeypatch.setattr(D, "CONNECT_TIMEOUT_S", 2.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(
        main, ["train", "--data", str(generated_data), "--tracking-uri", uri, "--dask-scheduler", address]
    )
    assert result.exit_code == 2
    assert f"cannot reach the Dask scheduler at {address}" in result.output
    assert "nothing was trained" in result.output
    assert not (tmp_path / "mlflow.db").exists()
    assert D.active() is None
