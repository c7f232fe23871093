"""MLflow tracking and model registry: one place that knows about experiments, runs and aliases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from training.settings import EXPERIMENT_NAME, default_artifact_root, quiet_libraries, work_dir

quiet_libraries()

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402


def setup_tracking(tracking_uri: str, experiment: str = EXPERIMENT_NAME) -> MlflowClient:
    """Point MLflow at the store and make sure the experiment exists.

    For the local SQLite store the artefacts go under the working folder (MLflow would otherwise
    put them under the current directory); a tracking server decides for itself.
    """
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if client.get_experiment_by_name(experiment) is None:
        location = None
        if tracking_uri.startswith("sqlite:"):
            root = default_artifact_root()
            root.mkdir(parents=True, exist_ok=True)
            location = root.as_uri()
        client.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return client


def registry_client(tracking_uri: str) -> MlflowClient:
    """A client for an existing store; LookupError if the registry is unreachable or empty."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise LookupError(f"no MLflow store at {tracking_uri}: run `omni train` first")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def latest_skip_reasons(tracking_uri: str, experiment: str = EXPERIMENT_NAME) -> dict[str, str]:
    """family → reason for each model family the latest `omni train` run skipped (its
    `skipped.<family>` tags; the family names of `training.families`). Empty when there is no store,
    no such run or the store cannot be read: a missing reason only makes a message shorter, so a
    failed look-up never stops the command that asked."""
    try:
        client = registry_client(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return {}
        runs = client.search_runs(
            [found.experiment_id],
            filter_string="attributes.run_name = 'train'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    except Exception:  # noqa: BLE001 - a reason is extra information, never worth an error
        return {}
    if not runs:
        return {}
    tags = runs[0].data.tags
    return {key.removeprefix("skipped."): value for key, value in tags.items() if key.startswith("skipped.")}


def download_model_folder(
    tracking_uri: str, name: str, alias: str, artifact: str = "recommender"
) -> tuple[Path, str]:
    """Local copy of the aliased version's artefact folder; returns (folder, version).

    Copies are cached per store and version under the working folder, downloaded to a temporary
    sibling and renamed into place, so several service workers starting at once never see half a
    model. LookupError with the reason when the alias or the artefact does not exist.
    """
    client = registry_client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as exc:
        raise LookupError(
            f"no model '{name}@{alias}' in the registry at {tracking_uri}: run `omni train` first"
        ) from exc
    store_key = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    cache = work_dir() / "cache" / "models" / store_key / f"{name}-v{mv.version}"
    folder = cache / "artifacts" / artifact
    if not folder.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
        # `models:/` URIs resolve through the *global* registry URI, whatever tracking_uri says;
        # left unset, MLflow 3 would open (and create) ./mlflow.db in the current directory.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp), tracking_uri=tracking_uri
            )
            if not (tmp / "artifacts" / artifact).exists():
                raise LookupError(f"model '{name}' version {mv.version} has no '{artifact}' artefact folder")
            try:
                os.replace(tmp, cache)
            except OSError:
                if not folder.exists():  # another worker did not win the race either: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, str(mv.version)


def log_benchmark(
    run_name: str, result: dict, tracking_uri: str | None = None, max_metrics: int = 500
) -> None:
    """Log a benchmark's JSON to the `omni-bench` experiment: every numeric leaf as a metric
    (nested keys joined by '.'), the whole result as an artefact. Never raises: a benchmark's
    figures are already on disk, MLflow is the second copy."""
    import re

    from training.settings import default_tracking_uri

    flat: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, bool):
            return
        elif isinstance(value, int | float) and len(flat) < max_metrics:
            name = re.sub(r"[^0-9A-Za-z_\-. /]", "_", prefix.replace("@", "_at_"))
            flat[name] = float(value)

    walk("", result)
    try:
        setup_tracking(tracking_uri or default_tracking_uri(), experiment="omni-bench")
        with mlflow.start_run(run_name=run_name):
            mlflow.log_metrics({k: v for k, v in flat.items() if v == v})
            mlflow.log_dict(result, f"{run_name}.json")
    except Exception as exc:  # noqa: BLE001 - report, never lose the benchmark over it
        print(f"warning: could not log {run_name} to MLflow: {exc}")


def save_benchmark(
    run_name: str, result: dict, out: str | Path, tracking_uri: str | None = None, to_mlflow: bool = True
) -> str:
    """A benchmark's result: JSON written to `out` (a temporary file, then moved) and logged to
    MLflow (`log_benchmark`). Returns the JSON text."""
    out = Path(out)
    text = json.dumps(result, indent=2, default=str)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(out)
    if to_mlflow:
        log_benchmark(run_name, result, tracking_uri)
    return text
