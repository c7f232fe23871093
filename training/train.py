"""`omni train`: validate → stitch identities → features → every model family the data support → registry.

Each family (`training.families`: recommender, channel, send time, profiles, next-best-action)
says what it needs, is evaluated on a time split beside its baselines (the models evaluated on
the held-out window are thrown away) and refitted on the whole history, so that the latest
behaviour counts. A family the data cannot support is skipped with its reason; the run stops
(exit 2, nothing registered) only when no family can be trained. Nothing is registered unless
every family's step before registration finished.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features import columns as c
from features.contract import ContractConfig
from features.identity import stitch_identities
from features.io import Tables, load_tables
from training import distributed
from training.config import TrainConfig
from training.families import (
    FAMILIES,
    FAMILY_STAGES,
    FamilyOutcome,
    NothingTrained,
    TrainContext,
    held_out_windows,
)
from training.profiling import StageTimer
from training.progress import StageBar
from training.registry import PromotionDecision, gate
from training.report import hash_inputs, render_markdown, run_record_of, training_report
from training.settings import CHAMPION
from training.tracking import setup_tracking


@dataclass
class TrainResult:
    run_id: str
    model_version: str | None  # the recommender's (None: not trained)
    metrics: dict[str, float]
    decision: PromotionDecision | None = None  # the recommender's
    decisions: list[PromotionDecision] = field(default_factory=list)  # every registered family's
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # seconds and peak RSS per stage
    skipped: dict[str, str] = field(default_factory=dict)  # family → why it was not trained
    versions: dict[str, str] = field(default_factory=dict)  # registered name → new version


# the progress bar's stages: reading the data, the feature build, each family stage, registering
STAGES: tuple[str, ...] = ("validate", "features", *FAMILY_STAGES, "register")
SERVED_MODEL = "served"  # which evaluated recommender is the one registered and served
REPORT_MODELS = ("popularity", "repeat", "als", "ease", "ranker", SERVED_MODEL)


# Columns of the contract that no model reads (ids of rows, stores, campaigns): left out of the
# frames kept in memory for the whole run (at a million customers, about a gigabyte of strings).
UNREAD_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": (c.STORE_ID,),
    "messages": (c.MESSAGE_ID, c.CAMPAIGN_ID),
}


def without_unread_columns(tables: Tables) -> Tables:
    """`tables` without `UNREAD_COLUMNS` (the frames are not copied: pandas' copy-on-write)."""
    changes = {}
    for name, columns in UNREAD_COLUMNS.items():
        frame = getattr(tables, name)
        if frame is not None and any(col in frame.columns for col in columns):
            changes[name] = frame.drop(columns=[col for col in columns if col in frame.columns])
    return dataclasses.replace(tables, **changes) if changes else tables


def data_summary(tables: Tables) -> dict:
    ev = tables.events
    return {
        "tables": {
            name: int(len(df)) for name in tables.present() if (df := getattr(tables, name)) is not None
        },
        "events_from": ev[c.TS].min().isoformat(),
        "events_to": ev[c.TS].max().isoformat(),
        "customers_with_events": int(ev[c.CUSTOMER_ID].nunique()),
        "products_with_events": int(ev[c.PRODUCT_ID].nunique()),
    }


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system between stages (glibc's `malloc_trim`): the
    threads of side-by-side fits leave freed memory in their own arenas, and the next stage's
    peak would sit on top of it. A no-op where the C library has no such call."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_training(
    data_dir: str | Path,
    tracking_uri: str,
    config: TrainConfig | None = None,
    contract: ContractConfig | None = None,
    show_progress: bool = True,
    timer: StageTimer | None = None,
    dask_scheduler: str | None = None,
) -> TrainResult:
    """One `omni train` run; with `dask_scheduler` (an address) the feature build and every LightGBM
    fit run on that Dask cluster (`training/distributed.py`), ALS and EASE on this machine.
    Raises `NothingTrained` (nothing registered) when no family can be trained on the data."""
    if dask_scheduler is not None and distributed.active() is None:
        with distributed.use_cluster(dask_scheduler, distributed.CONNECT_TIMEOUT_S):
            return run_training(data_dir, tracking_uri, config, contract, show_progress, timer)
    import mlflow

    config = config or TrainConfig()
    timer = timer or StageTimer()
    started = time.perf_counter()
    progress = StageBar("train", STAGES, enabled=show_progress)

    @contextlib.contextmanager
    def step(name: str):
        release_free_memory()
        # the bar moves as each stage ends, one step per name of STAGES: a run that ends well
        # ends at n/n (it used to count its updates by hand, and stopped short when stages changed)
        with progress.stage(name), timer.stage(name):
            yield

    with step("validate"):
        tables = load_tables(data_dir, contract or ContractConfig())  # DataValidationError: nothing logged
        tables = without_unread_columns(stitch_identities(tables))
    # the service and the scoring commands accept any source id the identities table knows
    from training.live import link_identities

    link_identities(tables)

    client = setup_tracking(tracking_uri)
    with mlflow.start_run(run_name="train") as run:
        summary, notes = _log_inputs(tables, data_dir, config)
        windows = held_out_windows(tables, config.test_days)
        if windows.note:
            notes.append(windows.note)
        mlflow.log_param("test_days_used", windows.test_days)

        # the customer features are only logged (at registration): written to a scratch file now
        # instead of held in memory through every later stage (hundreds of MB at 1M customers)
        scratch = tempfile.TemporaryDirectory(prefix="omni-train-features-")
        feat_path = Path(scratch.name) / "customer_features.parquet"
        with step("features"):
            features = distributed.build_customer_features(tables.events, tables.customers, tables.products)
            features.to_parquet(feat_path, index=False)
            del features

        context = TrainContext(tables, config, windows.test_days, tracking_uri=tracking_uri)
        context.shared["customer_features_path"] = feat_path  # read again by the profiles
        for stage in FAMILY_STAGES:
            with step(stage):
                for family in FAMILIES:
                    if family.stage == stage:
                        context.outcomes[family.name] = family.fit(context)
        outcomes = context.outcomes
        metrics, skipped = _log_outcomes(outcomes, notes)

        with step("register"), tempfile.TemporaryDirectory(prefix="omni-train-") as tmp:
            mlflow.log_artifact(str(feat_path), artifact_path="features")
            scratch.cleanup()
            decisions, versions = register_families(context, client, Path(tmp))
            recommender_decision = _log_decisions(decisions, config)
            report = _training_report(
                tables, summary, outcomes, metrics, decisions, notes, timer, run, config
            )
            mlflow.log_text(render_markdown(report), "report.md")
            mlflow.log_dict({"notes": notes}, "data_notes.json")
        progress.close()
        mlflow.log_dict(timer.stages, "stage_timings.json")
        return TrainResult(
            run_id=run.info.run_id,
            model_version=versions.get(config.registered_name),
            metrics=metrics,
            decision=recommender_decision,
            decisions=decisions,
            notes=notes,
            seconds=time.perf_counter() - started,
            stages=dict(timer.stages),
            skipped=skipped,
            versions=versions,
        )


def _log_inputs(tables: Tables, data_dir: str | Path, config: TrainConfig) -> tuple[dict, list[str]]:
    """Inside the run: the configuration, a summary of the data (no paths: they can be personal)
    and where the fits run; returns the summary and the run's first notes."""
    import mlflow

    mlflow.log_params(config.flat_params())
    summary = data_summary(tables)
    summary["input_hash"] = hash_inputs(data_dir)
    summary["data_dir"] = Path(data_dir).name  # the folder's name only
    mlflow.log_dict(summary, "data_summary.json")
    mlflow.set_tag("input_hash", summary["input_hash"])
    notes = list(tables.notes)
    if (cluster := distributed.active()) is not None:
        mlflow.log_param("dask_scheduler", cluster.address)
        mlflow.set_tags({"dask.scheduler": cluster.address, "dask.workers": len(cluster.workers())})
        notes.append(distributed.LOCAL_FIT_NOTE)
    return summary, notes


def _log_outcomes(
    outcomes: dict[str, FamilyOutcome], notes: list[str]
) -> tuple[dict[str, float], dict[str, str]]:
    """Inside the run: every family's metrics, which families trained and why the others did not
    (tags `skipped.<family>`, `families.json`); `notes` gains the families' notes. Returns (metrics,
    skipped). `NothingTrained` when no family trained."""
    import mlflow

    metrics = {k: v for o in outcomes.values() for k, v in o.metrics.items()}
    for o in outcomes.values():
        notes += [n for n in o.notes if n not in notes]
    skipped = {name: o.reason for name, o in outcomes.items() if not o.trained}
    trained = [name for name, o in outcomes.items() if o.trained]
    mlflow.set_tags({f"skipped.{name}": reason[:5000] for name, reason in skipped.items()})
    mlflow.set_tag("families.trained", ",".join(trained))
    mlflow.log_dict(
        {
            f.name: {
                "requires": f.requires,
                "trained": outcomes[f.name].trained,
                "reason": outcomes[f.name].reason,
            }
            for f in FAMILIES
        },
        "families.json",
    )
    mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items() if np.isfinite(v)})
    if "recommender" in outcomes and outcomes["recommender"].trained:
        mlflow.log_dict(outcomes["recommender"].extra["info"], "evaluation/recommender.json")
    if not trained:
        mlflow.log_dict({"notes": notes}, "data_notes.json")
        raise NothingTrained(
            "no model family could be trained on this data: "
            + "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        )
    return metrics, skipped


def _log_decisions(decisions: list[PromotionDecision], config: TrainConfig) -> PromotionDecision | None:
    """Inside the run: each promotion decision (json, tag, the champion's score); returns the
    recommender's, whose outcome is also the run's `promoted` tag."""
    import mlflow

    for d in decisions:
        mlflow.log_dict(d.as_dict(), f"promotion/{d.model_name}.json")
        mlflow.set_tag(f"promoted.{d.model_name}", str(d.promoted))
        if d.champion_score is not None:
            mlflow.log_metric(f"champion.{d.model_name}.{d.metric}".replace("@", "_at_"), d.champion_score)
    recommender_decision = next((d for d in decisions if d.model_name == config.registered_name), None)
    if recommender_decision is not None:
        mlflow.set_tags(
            {"promoted": str(recommender_decision.promoted), "promotion_reason": recommender_decision.reason}
        )
    return recommender_decision


def register_families(
    context: TrainContext, client, folder: Path
) -> tuple[list[PromotionDecision], dict[str, str]]:
    """Log and register every trained family's model (profiles travel inside the next-best-action
    engine), then let the gate decide on each against its champion as deployed."""
    decisions, versions = [], {}
    config = context.config
    for family in FAMILIES:
        outcome = context.outcomes[family.name]
        if not outcome.trained or family.name == "profiles":
            continue
        name = config.registered_name if family.name == "recommender" else family.registered_name
        version = family.register(outcome, folder, name)
        versions[name] = version
        champion = outcome.extra.get("champion") or {}
        note = context.champion_notes.get(family.name) or champion.get("note", "")
        score = outcome.metrics.get(outcome.promotion_metric, float("nan"))
        if champion.get("challenger_score") is not None:
            score = champion["challenger_score"]
        decisions.append(
            gate(
                client,
                name,
                version,
                outcome.params,
                outcome.promotion_metric,
                score,
                champion.get("score"),
                config.margin(family.name),
                note=note or "this family's champion is not yet scored on new data",
                # a champion this code cannot read is replaced; one without new data stays
                promote_unscored=family.name in context.champion_notes or "score" not in champion,
            )
        )
    return decisions, versions


def _training_report(tables, summary, outcomes, metrics, decisions, notes, timer, run, config):
    """The run's report content (`training.report`): KPIs from its tables, models beside baselines."""
    from models.decisions.contact_policy import load_contact_policy

    record = run_record_of(
        outcomes,
        metrics,
        [d.as_dict() for d in decisions],
        notes,
        timer.stages,
        run.info.run_id,
        summary["input_hash"],
    )
    policy = load_contact_policy(config.decisions.policy_file)
    return training_report(tables, summary, record, outcomes, policy, config.decisions.conversion_window_days)


def format_result(result: TrainResult) -> str:
    models = REPORT_MODELS
    names = sorted(
        {k.split(".", 1)[1] for k in result.metrics if k.startswith(tuple(f"{m}." for m in models))}
    )
    lines = [f"{'metric':<28}" + "".join(f"{m:>12}" for m in models)]
    for n in names:
        lines.append(
            f"{n:<28}" + "".join(f"{result.metrics.get(f'{m}.{n}', float('nan')):>12.4f}" for m in models)
        )
    lines.append(f"run {result.run_id}: registered {result.versions or 'nothing'} (alias challenger)")
    for d in result.decisions:
        verdict = "promoted to" if d.promoted else "NOT promoted to"
        lines.append(f"{d.model_name} v{d.challenger_version} {verdict} {CHAMPION}: {d.reason}")
    for family, reason in result.skipped.items():
        lines.append(f"skipped {family}: {reason}")
    for key in ("channel.engagement_auc", "send_time.heldout_auc", "send_time.activity_hit_rate"):
        if key in result.metrics:
            lines.append(f"{key}: {result.metrics[key]:.4f}")
    lines.append(f"took {result.seconds:.1f} s")
    return "\n".join(lines + [json.dumps({"notes": result.notes})] if result.notes else lines)
