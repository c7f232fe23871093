"""Shared fixtures: one generated data set, its stitched tables, one MLflow store and one trained
model per test session; and the kind of every test, from its folder.

A fresh SQLite store costs over a second and training a few more, so they are built once and shared.
The tests live by kind: `tests/unit` (one module on hand-made data, no generated data, no store:
`make test-fast`), `tests/integration` (models and training on generated data, the MLflow store,
the command line in process) and `tests/e2e` (the service over HTTP, the Bento, an MLflow server,
every data shape through the command line); each folder's tests carry its marker (`-m unit`).
"""

import dataclasses
import os
from pathlib import Path

import pytest

from training.settings import quiet_libraries

quiet_libraries()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("omni-work")
    old = {k: os.environ.get(k) for k in ("OMNI_WORKDIR", "OMNI_TRACKING_URI", "BENTOML_HOME")}
    os.environ["OMNI_WORKDIR"] = str(path)
    os.environ["BENTOML_HOME"] = str(path / "bentoml")
    os.environ["OMNI_TRACKING_URI"] = f"sqlite:///{path / 'mlflow.db'}"
    yield path
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tracking_uri(workdir):
    return os.environ["OMNI_TRACKING_URI"]


@pytest.fixture(scope="session")
def generated_data(workdir):
    from features.synthetic import generate

    out = workdir / "data" / "small"
    generate(800, seed=7, out_dir=out)
    return out


@pytest.fixture(scope="session")
def _generated_tables(generated_data):
    from features.identity import stitch_identities
    from features.io import load_tables

    return stitch_identities(load_tables(generated_data))


def _copy_of(tables):
    return dataclasses.replace(
        tables,
        **{
            f.name: getattr(tables, f.name).copy()
            for f in dataclasses.fields(tables)
            if hasattr(getattr(tables, f.name), "copy")
        },
    )


@pytest.fixture()
def generated_tables(_generated_tables):
    """The generated data loaded and stitched (`load_tables` + `stitch_identities`), read once per
    session; each test gets its own copies of the frames, so it may change them."""
    return _copy_of(_generated_tables)


@pytest.fixture(scope="module")
def module_generated_tables(_generated_tables):
    """The same, one copy per test module (for module-scoped fixtures)."""
    return _copy_of(_generated_tables)


@pytest.fixture(scope="session")
def trained(generated_data, tracking_uri):
    from training.config import RecsConfig, TrainConfig
    from training.train import run_training

    config = TrainConfig(recommender=RecsConfig(factors=16, iterations=5))
    return run_training(generated_data, tracking_uri, config, show_progress=False)


# what `omni train` records for the families it skips on purchases without product ids or messages
SKIPPED_WITHOUT_PRODUCTS = {
    "recommender": "the events name no product (no product_id): there is nothing to recommend",
    "channel": "no messages table: channels are learned from the messages sent and their responses",
    "send_time": "no messages table: send times are learned from when messages were opened",
}


@pytest.fixture(scope="session")
def registry_without_recommender(trained, tracking_uri, workdir):
    """A second MLflow store where only the session's next-best-action champion (with the profiles)
    is registered, beside an `omni train` run whose `skipped.<family>` tags give the reasons of the
    recommender, channel and send-time families. Returns (its tracking URI, the reasons by family)."""
    import mlflow
    from mlflow import MlflowClient

    from models.catalog import NBA
    from training.pyfunc import log_pyfunc
    from training.tracking import download_model_folder, setup_tracking

    uri = f"sqlite:///{workdir / 'partial' / 'mlflow.db'}"
    nba_folder, _ = download_model_folder(tracking_uri, "omni-nba", "champion", artifact="nba")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        setup_tracking(uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        with mlflow.start_run(run_name="train"):
            mlflow.set_tags({f"skipped.{f}": reason for f, reason in SKIPPED_WITHOUT_PRODUCTS.items()})
            mlflow.set_tag("families.trained", "profiles,next_best_action")
            client.set_registered_model_alias("omni-nba", "champion", log_pyfunc(NBA, nba_folder))
    finally:
        setup_tracking(tracking_uri)  # back to the session's store for every later test
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return uri, dict(SKIPPED_WITHOUT_PRODUCTS)


@pytest.fixture(autouse=True)
def _mlflow_store_restored():
    """A test that points MLflow at a store of its own (`run_training` with another tracking URI
    does) leaves it pointing where it was before, so later tests meet the session's store whatever
    order they run in."""
    import sys

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: os.environ.get(k) for k in keys}
    mlflow = sys.modules.get("mlflow")
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) if mlflow is not None else None
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and before is not None:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server for the session (a temporary data folder, a free 127.0.0.1
    port, run as the `postgres` user when the tests run as root); yields the URL of its database
    `omni`. Skipped, with the reason, where the PostgreSQL binaries are not installed."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from _postgres import postgres_binary, throwaway_postgres

    if postgres_binary("initdb") is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed")
    with throwaway_postgres() as url:
        yield url


TEST_KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Mark every test with its kind, the name of its folder under tests/."""
    root = Path(__file__).resolve().parent
    for item in items:
        parts = item.path.resolve().relative_to(root).parts
        if len(parts) > 1 and parts[0] in TEST_KINDS:
            item.add_marker(getattr(pytest.mark, parts[0]))
