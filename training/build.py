"""`omni build`: import the registry's champion models into the BentoML model store, then build the Bento.

The service loads its models from the BentoML store only (`serving/service.py`), so what runs is
exactly what was imported here: the MLflow `champion` of each registered model. Each import is
tagged `<name>:v<mlflow version>` and labelled with its source; importing a version again (after
a rollback, say) replaces the stored copy so that it becomes the store's latest.

Every model is optional (data without product ids train no recommender, data without messages no
channel model), as long as one is there. Each build ends with its manifest, the store's model
`omni-build` (`served.json`): the tag of every model it imported, and for every model it could not,
the family and the reason the last `omni train` recorded for skipping it. The service serves
exactly the manifest's models and answers a missing family's routes with that reason, without
needing MLflow at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from models.catalog import CATALOG, RECOMMENDER, by_name
from training.settings import CHAMPION, quiet_libraries

quiet_libraries()

import bentoml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# registered name → the artefact folder inside the logged MLflow model
SERVED_MODELS: dict[str, str] = {entry.name: entry.folder for entry in CATALOG}
BUILD_MANIFEST = "omni-build"  # the BentoML store's record of the last build (see the module doc)
MANIFEST_FILE = "served.json"


@dataclass
class ImportedModel:
    name: str
    mlflow_version: str
    bento_tag: str
    precomputed_customers: int = 0  # customers whose plain lists were computed ahead


@dataclass
class PrecomputeSettings:
    """Lists computed ahead for the recommender's plain requests (`models.recs.precomputed`).

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
    on_missing=None,
) -> list[ImportedModel]:
    """Copy every champion into the BentoML store, then write the build's manifest. A model without
    a champion is left out (a family the last `omni train` skipped): `on_missing` gets one line per
    such model saying which and why. LookupError, with every family's reason, when there is no
    model at all (nothing is imported then). The recommender's copy gets its precomputed lists
    (`precompute`, default `PrecomputeSettings()`)."""
    precompute = precompute or PrecomputeSettings()
    from training.scoring import missing_model_message
    from training.tracking import download_model_folder, latest_skip_reasons, registry_client

    registry_client(tracking_uri)  # a clear LookupError when the store does not exist
    wanted = names or SERVED_MODELS
    found: dict[str, tuple[Path, str]] = {}
    missing: dict[str, str] = {}  # name → message
    reasons: dict[str, str] = {}
    for name, artifact in wanted.items():
        try:
            found[name] = download_model_folder(tracking_uri, name, CHAMPION, artifact=artifact)
        except LookupError as exc:
            if not missing:
                reasons = latest_skip_reasons(tracking_uri)
            family = by_name(name).family
            missing[name] = missing_model_message(family, reasons, str(exc))
    if not found:
        raise LookupError(
            "no model to serve: "
            + "; ".join(f"{name}: {message}" for name, message in missing.items())
            + " (run `omni train` on data that supports at least one model family)"
        )
    imported = []
    for name, artifact in wanted.items():
        if name not in found:
            continue
        folder, version = found[name]
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
            if name == RECOMMENDER.name and precompute.max_customers != 0:
                # inside the `create` block: if this fails, the half-made model is not kept
                precomputed = precompute_lists(Path(model.path_of(artifact)), precompute)
        imported.append(ImportedModel(name, version, tag, precomputed))
    write_manifest(imported, list(missing), reasons)
    for name, message in missing.items():
        if on_missing is not None:
            on_missing(f"{name}: {message}")
    return imported


def write_manifest(imported: list[ImportedModel], missing: list[str], skipped: dict[str, str]) -> str:
    """Record the build in the BentoML store (model `omni-build`, file `served.json`): the tag of
    each imported model, the names of the missing ones and the skip reasons (family → reason) the
    last `omni train` recorded; older manifests are removed. Returns the manifest's tag."""
    import json

    manifest = {
        "models": {m.name: m.bento_tag for m in imported},
        "missing": list(missing),
        # only the training run's reasons (about the data's shape): no registry address and no
        # path, the service shows them to its clients
        "skipped": dict(skipped),
    }
    with bentoml.models.create(BUILD_MANIFEST, labels={"kind": "build-manifest"}) as model:
        Path(model.path_of(MANIFEST_FILE)).write_text(json.dumps(manifest, indent=2))
        tag = model.tag
    for old in bentoml.models.list(BUILD_MANIFEST):
        if old.tag != tag:
            try:
                bentoml.models.delete(old.tag)
            except bentoml.exceptions.NotFound:
                pass
    return str(tag)


def served_build_tag() -> str | None:
    """The tag of the last build's manifest (a new one per `omni build`), None before the first."""
    try:
        return str(bentoml.models.get(f"{BUILD_MANIFEST}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None


def served_manifest(tag: str | None = None) -> dict:
    """The last build's manifest, or the build `tag`'s ({"models": {name: tag}, "missing": [name],
    "skipped": {family: reason}}); without one (a store filled before manifests existed) the latest
    import of every model."""
    import json

    try:
        model = bentoml.models.get(tag or f"{BUILD_MANIFEST}:latest")
    except bentoml.exceptions.NotFound:
        models = {}
        for name in SERVED_MODELS:
            try:
                models[name] = str(bentoml.models.get(f"{name}:latest").tag)
            except bentoml.exceptions.NotFound:
                continue
        return {"models": models, "missing": [n for n in SERVED_MODELS if n not in models], "skipped": {}}
    return json.loads(Path(model.path_of(MANIFEST_FILE)).read_text())


def precompute_lists(folder: Path, settings: PrecomputeSettings) -> int:
    """Computes the lists of the two-stage recommender saved in `folder` into its `precomputed`
    sub-folder (nothing for other recommenders); returns how many customers they cover."""
    import numpy as np

    from models.recs.precomputed import PrecomputedLists
    from models.recs.two_stage import PRECOMPUTED_FOLDER, TwoStageRecommender

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
            parts = list(pool.map(_precompute_slice, jobs))
        lists.fit(recommender, parts=parts)
    lists.save(folder / PRECOMPUTED_FOLDER)
    return lists.n_customers


def _precompute_slice(job: tuple) -> dict:
    """`PrecomputedLists.compute_part` in another process: (model folder, length, max_customers,
    customer rows) -> the part, for `PrecomputedLists.fit(..., parts=...)`."""
    from models.recs.precomputed import PrecomputedLists
    from models.recs.two_stage import TwoStageRecommender

    folder, length, max_customers, rows = job
    recommender = TwoStageRecommender.load(folder)
    return PrecomputedLists(length=length, max_customers=max_customers).compute_part(recommender, rows)


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


def load_served_model(name: str, manifest: dict | None = None) -> tuple[Path, str]:
    """(artefact folder, MLflow version) of `name` as the last build imported it (`manifest`,
    default `served_manifest()`); LookupError if that build did not import it."""
    manifest = served_manifest() if manifest is None else manifest
    tag = manifest["models"].get(name)
    if tag is None:
        raise LookupError(f"model '{name}' is not in the BentoML model store: run `omni build` first")
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise LookupError(
            f"model '{tag}' of the last `omni build` is no longer in the BentoML model store: "
            "run `omni build` again"
        ) from exc
    artifact = SERVED_MODELS[name]
    return Path(model.path_of(artifact)), str(model.info.labels.get("mlflow_version", "?"))


def missing_served_message(family: str, name: str, manifest: dict) -> str:
    """Why the service has no model of `family` (registered as `name`): the reason the last
    `omni train` recorded for skipping it, as `omni build` read it, else what the build saw."""
    from training.scoring import missing_model_message

    if name in manifest.get("missing", ()):
        detail = f"the registry had no champion of {name} when `omni build` ran"
    else:
        detail = f"the BentoML model store has no {name}: run `omni build`"
    return missing_model_message(family, manifest.get("skipped") or {}, detail)
