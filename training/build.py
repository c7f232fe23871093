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
    precomputed_customers: int = 0  # customers whose plain lists were computed ahead


@dataclass
class PrecomputeSettings:
    """Lists computed ahead for the recommender's plain requests (`models.precomputed`).

    `max_customers`: at most this many customers, the most recently active first (None: all with
    history; 0: none, every request takes the live path). About 2 ms of one core per customer, so
    the default cap keeps `omni build` within minutes at a million customers; the others take the
    live path. `length`: candidates kept per customer.
    """

    max_customers: int | None = 200_000
    length: int = 50
    workers: int | None = None  # processes (None: one per core, one per 2,000 customers at most)


def import_champions(
    tracking_uri: str,
    names: dict[str, str] | None = None,
    precompute: PrecomputeSettings | None = None,
) -> list[ImportedModel]:
    """Copy every champion into the BentoML store. A required model without a champion is an error;
    optional ones (e.g. no channel model for data without messages) are skipped. The recommender's
    copy gets its precomputed lists (`precompute`, default `PrecomputeSettings()`)."""
    precompute = precompute or PrecomputeSettings()
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
            precomputed = 0
            if name == "omni-recommender" and precompute.max_customers != 0:
                # inside the `create` block: if this fails, the half-made model is not kept
                precomputed = precompute_lists(Path(model.path_of(artifact)), precompute)
        imported.append(ImportedModel(name, version, tag, precomputed))
    return imported


def precompute_lists(folder: Path, settings: PrecomputeSettings) -> int:
    """Computes the lists of the two-stage recommender saved in `folder` into its `precomputed`
    sub-folder (nothing for other recommenders); returns how many customers they cover."""
    import numpy as np

    from models.precomputed import PrecomputedLists, compute_slice
    from models.two_stage import PRECOMPUTED_FOLDER, TwoStageRecommender

    if not (folder / "two_stage.json").exists():
        return 0
    recommender = TwoStageRecommender.load(folder)
    lists = PrecomputedLists(length=settings.length, max_customers=settings.max_customers)
    rows = lists.customers(recommender)
    workers = settings.workers or min(os.cpu_count() or 1, len(rows) // 2_000)  # start-up ~3 s each
    workers = max(1, min(workers, len(rows)))
    if workers == 1:
        lists.fit(recommender)
    else:
        # one customer at a time is plain Python and numpy on one core: the slices go to processes
        # that load the same saved model (spawned: no copy of this process's thread state)
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        slices = np.array_split(rows, workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            jobs = [(str(folder), settings.length, settings.max_customers, part) for part in slices]
            parts = list(pool.map(compute_slice, jobs))
        lists.fit(recommender, parts=parts)
    lists.save(folder / PRECOMPUTED_FOLDER)
    return lists.n_customers


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
