"""Logging a trained model to MLflow as a code-based pyfunc model (no pickle), the one way for
every family of the catalog (`models.catalog`).

Each logged model carries its saved folder as the artefact, the wrapper file MLflow loads it with
(`mlflow_<kind>.py` beside this module), a snapshot of the code that reads it (`models/` and
`features/` without the data generator) and its requirements: the catalog's packages for that
family, pinned to the versions that trained it.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from features import columns as c
from models.catalog import CHANNEL, NBA, RECOMMENDER, SEND_TIME, RegisteredModel
from training.settings import quiet_libraries

quiet_libraries()

import mlflow  # noqa: E402

_HERE = Path(__file__).resolve().parent
_PACKAGE_ROOT = _HERE.parent
# the code a logged model needs to load: these packages, less what only generates data
_SNAPSHOT_PACKAGES = ("models", "features")
_NOT_IN_SNAPSHOT = ("synthetic", "__pycache__")
# every logged model needs these beside the catalog's packages of its family
_BASE_PACKAGES = ("numpy", "pandas", "pyarrow", "scikit-learn", "mlflow")

_WRAPPERS: dict[str, str] = {
    RECOMMENDER.name: "mlflow_recommender.py",
    CHANNEL.name: "mlflow_engagement.py",
    SEND_TIME.name: "mlflow_engagement.py",
    NBA.name: "mlflow_nba.py",
}


def requirements(entry: RegisteredModel) -> list[str]:
    """`name==version` of every package loading `entry`'s model needs, as installed here."""
    names = dict.fromkeys(_BASE_PACKAGES + entry.packages)  # ordered, no repeats
    return [f"{name}=={version(name)}" for name in names]


def log_pyfunc(entry: RegisteredModel, model_dir: Path, registered_name: str | None = None) -> str:
    """Inside an active run: log the model saved in `model_dir` and register it as
    `registered_name` (default: the catalog's name); returns the new version."""
    with warnings.catch_warnings():
        # MLflow asks for an input example; the explicit signature already says everything
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        with _code_snapshot() as code_paths:
            info = mlflow.pyfunc.log_model(
                name=entry.folder,
                python_model=str(_HERE / _WRAPPERS[entry.name]),
                artifacts={entry.folder: str(model_dir)},
                code_paths=code_paths,
                pip_requirements=requirements(entry),
                signature=_signature(entry),
                registered_model_name=registered_name or entry.name,
            )
    return str(info.registered_model_version)


@contextmanager
def _code_snapshot() -> Iterator[list[str]]:
    """Copies of the packages a model's code needs, without the data generator (which no model
    reads), in a temporary folder; their paths for `code_paths`."""
    with tempfile.TemporaryDirectory(prefix="omni-code-") as tmp:
        paths = []
        for package in _SNAPSHOT_PACKAGES:
            target = Path(tmp) / package
            shutil.copytree(_PACKAGE_ROOT / package, target, ignore=shutil.ignore_patterns(*_NOT_IN_SNAPSHOT))
            paths.append(str(target))
        yield paths


def _signature(entry: RegisteredModel):
    """What the logged model's `predict` takes and returns (None: not declared)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", c.CUSTOMER_ID)])
    if entry is RECOMMENDER:
        outputs = [
            ColSpec("string", c.CUSTOMER_ID),
            ColSpec("long", c.RANK),
            ColSpec("string", c.PRODUCT_ID),
            ColSpec("double", c.SCORE),
            ColSpec("string", c.REASON),
        ]
        params = ParamSchema([ParamSpec("k", "long", 10)])
    elif entry is CHANNEL:
        outputs = [
            ColSpec("string", c.CUSTOMER_ID),
            ColSpec("string", c.CHANNEL),
            ColSpec("long", c.RANK),
            ColSpec("double", "probability"),
            ColSpec("double", "conversion_probability"),
            ColSpec("boolean", "fallback"),
        ]
        params = None
    elif entry is SEND_TIME:
        outputs = [
            ColSpec("string", c.CUSTOMER_ID),
            ColSpec("string", c.CHANNEL),
            ColSpec("string", c.TIMEZONE),
            ColSpec("long", "best_hour_local"),
            ColSpec("long", "best_weekday"),
            ColSpec("datetime", "next_send_utc"),
            ColSpec("boolean", "fallback"),
        ]
        params = ParamSchema(
            [
                ParamSpec("channel", "string", ""),
                ParamSpec("after", "string", ""),
                ParamSpec("quiet_start", "long", 21),
                ParamSpec("quiet_end", "long", 8),
            ]
        )
    else:  # the engine's decisions have many optional columns: not declared
        return None
    return ModelSignature(inputs=inputs, outputs=Schema(outputs), params=params)
