"""`omni report`, and the page `omni train` leaves for the service: where the report's inputs come
from and where the report goes.

Inputs: a data folder (validated and identity-stitched as `omni train` reads it), the latest
`omni train` run of the MLflow store (its metrics, the policies served, timings, decisions), the
customer profiles of the champion next-best-action model, the contact policy (control group, quiet
hours) and the live store's contact ledger (decisions committed and messages sent since training).
Each is optional but the data: a missing one leaves its part of the report saying why.

Outputs: `report.html` and `report.md` in the folder asked for (each written to a temporary file,
then moved), a copy in the working folder's `report/` (what `GET /report` serves), and both logged
as artefacts of the training run they describe.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from models.catalog import CATALOG, NBA
from training.report import (
    REPORT_HTML,
    REPORT_MD,
    ReportContent,
    RunRecord,
    gather,
    hash_inputs,
    latest_report_dir,
    render_markdown,
)
from training.settings import CHAMPION, EXPERIMENT_NAME

RUN_FOLDER = "report"  # the run's artefact folder `omni report` logs to


@dataclass
class WrittenReport:
    """Where the report went: the files, the run it was logged to (None: not logged, `notes` say
    why) and what the report could not show."""

    files: list[Path]
    run_id: str | None
    notes: list[str] = field(default_factory=list)


def latest_training_run(tracking_uri: str) -> str | None:
    """The id of the latest `omni train` run of the store, None when there is none."""
    from training.tracking import registry_client

    try:
        client = registry_client(tracking_uri)
    except LookupError:
        return None
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.run_name = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def champion_versions(tracking_uri: str) -> dict[str, str]:
    """registered name → champion version, for every catalogued model that has one."""
    from mlflow.exceptions import MlflowException

    from training.tracking import registry_client

    try:
        client = registry_client(tracking_uri)
    except LookupError:
        return {}
    versions = {}
    for entry in CATALOG:
        try:
            versions[entry.name] = str(client.get_model_version_by_alias(entry.name, CHAMPION).version)
        except MlflowException:
            continue
    return versions


def champion_profiles(tracking_uri: str):
    """(the champion next-best-action model's profiles table, None) or (None, why there is none,
    without the store's address: the page is served to clients)."""
    from models.decisions.profile import CustomerProfiles
    from training.scoring import missing_model_message
    from training.tracking import download_model_folder, latest_skip_reasons

    try:
        folder, version = download_model_folder(tracking_uri, NBA.name, CHAMPION, artifact=NBA.folder)
    except LookupError:
        detail = f"the MLflow store has no {NBA.name} champion (run `omni train`)"
        return None, missing_model_message("profiles", latest_skip_reasons(tracking_uri), detail)
    try:
        return CustomerProfiles.load(folder / "profiles").profiles_frame(), None
    except (ValueError, KeyError, OSError) as exc:
        return (
            None,
            f"the profiles of {NBA.name} v{version} cannot be read by this code ({exc}): run `omni train`",
        )


def live_contacts():
    """(the live store's contacts, None) or (None, why they are not counted)."""
    from training.live import LiveStoreUnavailable, open_store

    try:
        with open_store() as store:
            return store.contacts(), None
    except LiveStoreUnavailable as exc:
        return None, f"contacts logged since training are not counted: {exc}"


def write_atomic(path: Path, text: str) -> None:
    """`text` to `path` through a temporary file in the same folder (created with the process's
    umask, as any file it writes), moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish(
    content: ReportContent, out_dir: Path | None, tracking_uri: str | None, run_id: str | None
) -> WrittenReport:
    """Renders `content` to `report.md` and `report.html` in `out_dir` (None: only the working
    folder's copy), the copy `GET /report` serves, and logs both to the run `run_id` (None: not
    logged) under `report/`."""
    from training.report_page import render_html

    markdown, page = render_markdown(content), render_html(content)
    files, notes = [], []
    for folder in [f for f in (out_dir, latest_report_dir()) if f is not None]:
        for name, text in ((REPORT_MD, markdown), (REPORT_HTML, page)):
            write_atomic(Path(folder) / name, text)
            files.append(Path(folder) / name)
    logged = None
    if run_id is not None and tracking_uri is not None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        with tempfile.TemporaryDirectory(prefix="omni-report-") as tmp:
            for name, text in ((REPORT_MD, markdown), (REPORT_HTML, page)):
                (Path(tmp) / name).write_text(text, encoding="utf-8")
                # beside the report.md the run logged when it trained, not over it
                client.log_artifact(run_id, str(Path(tmp) / name), artifact_path=RUN_FOLDER)
        logged = run_id
    return WrittenReport(files, logged, notes)


def write_report(
    data_dir: Path,
    tracking_uri: str,
    out_dir: Path,
    policy=None,
    lift_window_days: float = 90.0,
    attribution_days: float | None = None,
    contract=None,
) -> WrittenReport:
    """`omni report`: the report of `data_dir` with the store's latest training run and champions
    (see the module docstring); `policy`: the contact policy (`ContactPolicy`; None: the default
    file's). Raises `features.problems.DataValidationError` when the data break the contract."""
    from mlflow import MlflowClient

    from features.contract import ContractConfig
    from features.identity import stitch_identities
    from features.io import load_tables
    from models.decisions.contact_policy import load_contact_policy
    from training.config import NBAConfig
    from training.train import data_summary

    tables = stitch_identities(load_tables(data_dir, contract or ContractConfig()))
    policy = policy if policy is not None else load_contact_policy()
    summary = data_summary(tables)
    summary["input_hash"] = hash_inputs(data_dir)
    notes = list(tables.notes)
    run_id = latest_training_run(tracking_uri)
    record, log_to = None, None
    if run_id is not None:
        record = RunRecord.from_mlflow(MlflowClient(tracking_uri=tracking_uri), run_id)
        if record.input_hash and record.input_hash != summary["input_hash"]:
            notes.append(
                f"these data (input hash {summary['input_hash'][:12]}…) are not the data of the latest training run "
                f"({record.input_hash[:12]}…): the KPIs and the lift describe these data, the models' figures that "
                "run (the report is not logged to it)"
            )
        else:
            log_to = run_id
    else:
        notes.append("no `omni train` run in the MLflow store: the models' quality is not reported")
    if attribution_days is None:
        attribution_days = NBAConfig.conversion_window_days
        if record is not None:
            attribution_days = float(record.params.get("decisions.conversion_window_days", attribution_days))
    profiles, profiles_missing = champion_profiles(tracking_uri)
    contacts, why = live_contacts()
    if why:
        notes.append(why)
    content = gather(
        tables,
        summary,
        policy,
        record,
        profiles_frame=profiles,
        profiles_missing=profiles_missing,
        contacts=contacts,
        attribution_days=attribution_days,
        lift_window_days=lift_window_days,
        versions=champion_versions(tracking_uri),
        notes=notes,
    )
    written = publish(content, out_dir, tracking_uri, log_to)
    written.notes = notes + written.notes
    return written
