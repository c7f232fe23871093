"""Default places: the working folder, the demo data, the MLflow store. One module so every command agrees.

Everything generated (data, MLflow store, artefacts, batch outputs) goes under the working folder,
`./work` by default or `$OMNI_WORKDIR`, which git ignores.
"""

from __future__ import annotations

import os
from pathlib import Path

EXPERIMENT_NAME = "omni"
CHAMPION = "champion"
CHALLENGER = "challenger"


def work_dir() -> Path:
    return Path(os.environ.get("OMNI_WORKDIR", "work")).resolve()


def default_data_dir() -> Path:
    return work_dir() / "data" / "demo"


def default_tracking_uri() -> str:
    return os.environ.get("OMNI_TRACKING_URI") or f"sqlite:///{work_dir() / 'mlflow.db'}"


def default_artifact_root() -> Path:
    return work_dir() / "mlartifacts"


def quiet_libraries() -> None:
    """Environment that keeps MLflow, BentoML and OpenBLAS quiet and offline; call before importing them."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
