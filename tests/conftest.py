"""Shared fixtures: one generated data set, one MLflow store and one trained model per test session.

A fresh SQLite store costs over a second and training a few more, so they are built once and shared.
"""

import os

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
def trained(generated_data, tracking_uri):
    from training.train import TrainConfig, run_training

    config = TrainConfig(factors=16, iterations=5)
    return run_training(generated_data, tracking_uri, config, show_progress=False)
