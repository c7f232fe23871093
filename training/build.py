"""`omni build`: import the registry's champion models into the BentoML model store, then build the Bento.

The service loads its models from the BentoML store only (`serving/service.py`), so what runs is
exactly what was imported here: the MLflow `champion` of each registered model. Each import is
tagged `<name>:v<mlflow version>` and labelled with its source; importing a version again (after
a rollback, say) replaces the stored copy so that it becomes the store's latest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from training.settings import CHAMPION, quiet_libraries

quiet_libraries()

import bentoml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# registered name → the artefact folder inside the logged MLflow model
SERVED_MODELS: dict[str, str] = {
    "omni-recommender": "recommender",
    "omni-channel": "channel",
    "omni-send-time": "send_time",
    "omni-nba": "nba",
}
REQUIRED_MODELS = ("omni-recommender",)


@dataclass
class ImportedModel:
    name: str
    mlflow_version: str
    bento_tag: str


def import_champions(tracking_uri: str, names: dict[str, str] | None = None) -> list[ImportedModel]:
    """Copy every champion into the BentoML store. A required model without a champion is an error;
    optional ones (e.g. no channel model for data without messages) are skipped."""
    from training.tracking import download_model_folder, registry_client

    registry_client(tracking_uri)  # a clear LookupError when the store does not exist
    imported = []
    for name, artifact in (names or SERVED_MODELS).items():
        try:
            folder, version = download_model_folder(tracking_uri, name, CHAMPION, artifact=artifact)
        except LookupError:
            if name in REQUIRED_MODELS:
                raise
            continue
        tag = f"{name}:v{version}"
        try:
            bentoml.models.delete(tag)
        except bentoml.exceptions.NotFound:
            pass
        with bentoml.models.create(
            tag,
            labels={"source": "mlflow", "mlflow_model": name, "mlflow_version": version, "alias": CHAMPION},
            metadata={"tracking_store": "sqlite" if tracking_uri.startswith("sqlite") else "server"},
        ) as model:
            shutil.copytree(folder, model.path_of(artifact))
        imported.append(ImportedModel(name, version, tag))
    return imported


def build_bento() -> str:
    """`bentoml build` offline from bentofile.yaml; returns its output. uv must be on PATH (STACK.md)."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(
        [str(bin_dir / "bentoml"), "build", "-f", "bentofile.yaml", "."],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def load_served_model(name: str) -> tuple[Path, str]:
    """(artefact folder, MLflow version) of the latest import of `name`; LookupError if never imported."""
    try:
        model = bentoml.models.get(f"{name}:latest")
    except bentoml.exceptions.NotFound as exc:
        raise LookupError(
            f"model '{name}' is not in the BentoML model store: run `omni build` first"
        ) from exc
    artifact = SERVED_MODELS[name]
    return Path(model.path_of(artifact)), str(model.info.labels.get("mlflow_version", "?"))
