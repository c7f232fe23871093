"""`omni train`: validate → stitch identities → features → time-based evaluation → refit → MLflow registry.

The split is for measuring only: the models evaluated on the held-out window are thrown away, and
the registered models are refitted on the whole history so that the latest behaviour counts.
Nothing is registered unless every step before registration succeeded.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from features import columns as c
from features.contract import ContractConfig
from features.identity import stitch_identities
from features.io import Tables, load_tables
from training import distributed
from training.nba_training import NBAConfig, log_nba_run, train_nba
from training.profiling import StageTimer
from training.recs_training import RecsConfig, train_two_stage
from training.registry import PromotionDecision, gate
from training.report import build_report, hash_inputs, metrics_table
from training.settings import CHAMPION, REGISTERED_RECOMMENDER
from training.tracking import log_nba_model, log_recommender_model, setup_tracking

# The evaluation sample must not depend on any model setting, so challenger and champion are
# scored on exactly the same customers.
EVAL_SAMPLE_SEED = 20_240_601


@dataclass
class TrainConfig:
    test_days: int = 28  # the held-out window at the end of the history
    k: int = 10
    half_life_days: float = 90.0
    max_eval_customers: int = 10_000  # evaluation sample (paired: every model scores the same customers)
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15
    two_stage: dict = field(default_factory=dict)  # any other TwoStageRecommender parameter
    random_state: int = 42
    registered_name: str = REGISTERED_RECOMMENDER
    promotion_metric: str = "ndcg@10"  # compared between challenger and champion on the same window
    promotion_margin: float = 0.0  # the challenger must reach champion + margin
    # customers the channel and send-time evaluation is fitted and scored on (a seeded sample
    # when there are more; 0: all); see ChannelTrainingConfig.max_eval_customers
    channel_eval_customers: int = 250_000

    def als_params(self) -> dict:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "random_state": self.random_state,
        }


@dataclass
class TrainResult:
    run_id: str
    model_version: str
    metrics: dict[str, float]
    decision: PromotionDecision | None = None  # the recommender's
    decisions: list[PromotionDecision] = field(default_factory=list)  # every registered family's
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # seconds and peak RSS per stage


SERVED_MODEL = "ranker"  # which evaluated model is the one registered and served

# What each registered family is judged on when a new version challenges the champion.
CHANNEL_PROMOTION_METRIC = "channel.engagement_auc"
SEND_TIME_PROMOTION_METRICS = ("send_time.heldout_auc", "send_time.activity_hit_rate")
NBA_PROMOTION_METRICS = ("nba.guard.lower_bound", "nba.churn_auc")
REGISTERED_NBA = "omni-nba"


def recs_config(config: TrainConfig, refit: bool = True) -> RecsConfig:
    """The recommender part of a training configuration."""
    return RecsConfig(
        test_days=config.test_days,
        k=config.k,
        max_eval_customers=config.max_eval_customers,
        half_life_days=config.half_life_days,
        factors=config.factors,
        regularization=config.regularization,
        alpha=config.alpha,
        iterations=config.iterations,
        random_state=config.random_state,
        refit=refit,
        two_stage={"factors": config.factors, "iterations": config.iterations, **config.two_stage},
    )


def recommender_params(config: TrainConfig) -> dict:
    """What defines the served recommender (not how it is judged): stored with each version."""
    return {
        k: v
        for k, v in asdict(config).items()
        if not k.startswith("promotion_") and k not in ("registered_name", "channel_eval_customers")
    }


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
    fit run on that Dask cluster (`training/distributed.py`), ALS and EASE on this machine."""
    if dask_scheduler is not None and distributed.active() is None:
        with distributed.use_cluster(dask_scheduler, distributed.CONNECT_TIMEOUT_S):
            return run_training(data_dir, tracking_uri, config, contract, show_progress, timer)
    import mlflow

    from training.channel_training import (
        ChannelTrainingConfig,
        evaluate_channel_and_send_time,
        log_channel_and_send_time,
        train_channel_and_send_time,
    )

    config = config or TrainConfig()
    timer = timer or StageTimer()
    started = time.perf_counter()
    progress = tqdm(total=8, desc="train", unit="stage", disable=not show_progress)

    def step(name: str):
        progress.set_postfix_str(name)
        release_free_memory()
        return timer.stage(name)

    with step("validate"):
        tables = load_tables(
            data_dir, contract or ContractConfig()
        )  # raises DataValidationError: nothing logged
        tables = without_unread_columns(stitch_identities(tables))
    progress.update()

    client = setup_tracking(tracking_uri)
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_params({f"recommender.{k}": v for k, v in asdict(config).items()})
        summary = data_summary(tables)
        summary["input_hash"] = hash_inputs(data_dir)
        summary["data_dir"] = Path(data_dir).name  # the folder's name only: paths can be personal
        mlflow.log_dict(summary, "data_summary.json")
        mlflow.set_tag("input_hash", summary["input_hash"])
        notes = list(tables.notes)
        if (cluster := distributed.active()) is not None:
            mlflow.log_param("dask_scheduler", cluster.address)
            mlflow.set_tags({"dask.scheduler": cluster.address, "dask.workers": len(cluster.workers())})
            notes.append(distributed.LOCAL_FIT_NOTE)

        # the customer features are only logged (at registration): written to a scratch file now
        # instead of held in memory through every later stage (hundreds of MB at 1M customers)
        scratch = tempfile.TemporaryDirectory(prefix="omni-train-features-")
        feat_path = Path(scratch.name) / "customer_features.parquet"
        with step("features"):
            features = distributed.build_customer_features(tables.events, tables.customers, tables.products)
            features.to_parquet(feat_path, index=False)
            del features
        progress.update()

        with step("recommender"):
            rec, recs_metrics, eval_info = train_two_stage(tables, recs_config(config))
            metrics = {
                f"{model}.{name}": float(value)
                for model, values in recs_metrics.items()
                for name, value in values.items()
                if isinstance(value, int | float)
            }
            mlflow.log_dict(eval_info, "evaluation/recommender.json")
        progress.update()

        with step("channel_send_time"):
            channel_config = ChannelTrainingConfig(
                test_days=config.test_days,
                random_state=config.random_state,
                max_eval_customers=config.channel_eval_customers or None,
            )
            channels = train_channel_and_send_time(
                tables, random_state=config.random_state, config=channel_config
            )
            metrics.update(channels.metrics)
            notes += channels.notes
        progress.update()
        with step("next_best_action"):
            nba_config = NBAConfig(random_state=config.random_state)
            _, nba_engine, nba_metrics, nba_notes = train_nba(
                tables, rec, channels.channel_model, channels.send_time_model, nba_config
            )
            metrics.update(nba_metrics)
            notes += nba_notes
        progress.update()
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items() if np.isfinite(v)})

        with step("register"), tempfile.TemporaryDirectory(prefix="omni-train-") as tmp:
            mlflow.log_artifact(str(feat_path), artifact_path="features")
            scratch.cleanup()
            decisions = []

            version = log_recommender_model(rec.save(Path(tmp) / "recommender"), config.registered_name)
            key = f"{SERVED_MODEL}.{config.promotion_metric}"

            def rescore_recommender(params: dict) -> float:
                champion = TrainConfig(
                    **{k: v for k, v in params.items() if k in TrainConfig.__dataclass_fields__}
                )
                champion.test_days, champion.max_eval_customers = config.test_days, config.max_eval_customers
                return train_two_stage(tables, recs_config(champion, refit=False))[1][SERVED_MODEL][
                    config.promotion_metric
                ]

            decisions.append(
                gate(
                    client,
                    config.registered_name,
                    version,
                    recommender_params(config),
                    key,
                    metrics[key],
                    rescore_recommender,
                    config.promotion_margin,
                )
            )

            versions = log_channel_and_send_time(channels)
            channel_params = asdict(channel_config)

            def rescore_channels(metric: str):
                def rescore(params: dict) -> float:
                    champion_config = ChannelTrainingConfig(**params)
                    return evaluate_channel_and_send_time(tables, champion_config)[0].get(
                        metric, float("nan")
                    )

                return rescore

            for name, family_version in versions.items():
                if name.endswith("channel"):
                    metric = CHANNEL_PROMOTION_METRIC
                else:
                    metric = next(
                        (m for m in SEND_TIME_PROMOTION_METRICS if m in metrics),
                        SEND_TIME_PROMOTION_METRICS[0],
                    )
                score = metrics.get(metric, float("nan"))
                decisions.append(
                    gate(
                        client, name, family_version, channel_params, metric, score, rescore_channels(metric)
                    )
                )
            log_nba_run(nba_engine, {}, nba_notes, nba_config)
            nba_version = log_nba_model(nba_engine.save(Path(tmp) / "nba"), REGISTERED_NBA)
            nba_metric = next((m for m in NBA_PROMOTION_METRICS if m in metrics), NBA_PROMOTION_METRICS[0])
            decisions.append(
                gate(
                    client,
                    REGISTERED_NBA,
                    nba_version,
                    {k: v for k, v in asdict(nba_config).items() if k != "uplift_customers"},
                    nba_metric,
                    metrics.get(nba_metric, float("nan")),
                )
            )
            for d in decisions:
                mlflow.log_dict(d.as_dict(), f"promotion/{d.model_name}.json")
                mlflow.set_tag(f"promoted.{d.model_name}", str(d.promoted))
                if d.champion_score is not None:
                    mlflow.log_metric(
                        f"champion.{d.model_name}.{d.metric}".replace("@", "_at_"), d.champion_score
                    )
            recommender_decision = decisions[0]
            mlflow.set_tags(
                {
                    "promoted": str(recommender_decision.promoted),
                    "promotion_reason": recommender_decision.reason,
                }
            )
            channel_rows = {k: v for k, v in metrics.items() if k.startswith(("channel.", "send_time."))}
            sections = [
                (
                    "Product recommendations (held-out window)",
                    f"Split at {eval_info['split_time']}; {eval_info['protocol']}.\n\n"
                    + metrics_table(metrics, ["popularity", "als", SERVED_MODEL], "popularity"),
                ),
                (
                    "Channel and send time (held-out messages)",
                    "\n".join(f"- {k}: {v:.4f}" for k, v in sorted(channel_rows.items())) or "not evaluated",
                ),
            ]
            mlflow.log_text(
                build_report(summary, sections, [d.as_dict() for d in decisions], notes), "report.md"
            )
            mlflow.log_dict({"notes": notes}, "data_notes.json")
        progress.update()
        progress.close()
        mlflow.log_dict(timer.stages, "stage_timings.json")
        return TrainResult(
            run_id=run.info.run_id,
            model_version=version,
            metrics=metrics,
            decision=recommender_decision,
            decisions=decisions,
            notes=notes,
            seconds=time.perf_counter() - started,
            stages=dict(timer.stages),
        )


def format_result(result: TrainResult) -> str:
    models = ("popularity", "als", SERVED_MODEL)
    names = sorted(
        {k.split(".", 1)[1] for k in result.metrics if k.startswith(tuple(f"{m}." for m in models))}
    )
    lines = [f"{'metric':<22}" + "".join(f"{m:>12}" for m in models)]
    for n in names:
        lines.append(
            f"{n:<22}" + "".join(f"{result.metrics.get(f'{m}.{n}', float('nan')):>12.4f}" for m in models)
        )
    lines.append(f"run {result.run_id}, registered version {result.model_version} (alias challenger)")
    for d in result.decisions:
        verdict = "promoted to" if d.promoted else "NOT promoted to"
        lines.append(f"{d.model_name} v{d.challenger_version} {verdict} {CHAMPION}: {d.reason}")
    for key in (CHANNEL_PROMOTION_METRIC, *SEND_TIME_PROMOTION_METRICS, "send_time.matched_lift"):
        if key in result.metrics:
            lines.append(f"{key}: {result.metrics[key]:.4f}")
    lines.append(f"took {result.seconds:.1f} s")
    return "\n".join(lines + [json.dumps({"notes": result.notes})] if result.notes else lines)
