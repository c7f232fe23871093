"""Training of the next-best-action stack: unified profiles, then the uplift engine with its guard.

`train_nba(tables, recommender, channel_model, send_time_model, config)` returns
`(profiles, engine, metrics, notes)`:

- profiles: `models.profile.CustomerProfiles` at the end of the history (RFM, segments, value tiers,
  90-day spend and churn models trained on a time split, price sensitivity, preferences, consent);
- engine: `models.nba.NextBestActionEngine` with uplift models learned from the logged messages
  and the contact policy of `config.policy_file` (default `configs/contact_policy.toml`);
- metrics: flat {name: float} for MLflow (forecast quality, training messages per arm, the guard's
  validation gain and lower bound, decision mix over a sample of customers when `summarise_decisions`);
- notes: what was missing or skipped and what that means (e.g. no messages table → no uplift, the
  engine only sends replenishment reminders and win-backs valued with an assumed uplift).

`tables` must already be identity-stitched (`features.identity.stitch_identities`), as
`training.train.run_training` does. `log_nba_run` logs everything into the active MLflow run.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from features.io import Tables
from models.contact_policy import load_contact_policy
from models.nba import NO_ACTION, NextBestActionEngine
from models.profile import CustomerProfiles


@dataclass
class NBAConfig:
    policy_file: str | None = None  # contact policy TOML (None: configs/contact_policy.toml)
    learner: str = "x"  # MultiArmUpliftLearner kind: x, t or dr
    guard: bool = True
    guard_folds: int = 3
    guard_confidence: float = 0.8
    max_training_messages: int | None = 200_000  # random sample to learn from (cost grows with it)
    min_arm_rows: int = 200
    conversion_window_days: float = 14.0
    forecast_horizon_days: int = 90
    uplift_customers: list[str] | None = None  # learn uplift only from these customers' messages
    summarise_decisions: bool = True  # decide once for a sample of customers, for the metrics
    # The decision mix is a share, so a fixed-size random sample estimates it to within about
    # ±0.7 points (95 %) whatever the customer count; deciding for all 1M customers would cost minutes.
    summary_customers: int = 20_000
    random_state: int = 42
    n_jobs: int = 1


def train_nba(
    tables: Tables,
    recommender=None,
    channel_model=None,
    send_time_model=None,
    config: NBAConfig | None = None,
) -> tuple[CustomerProfiles, NextBestActionEngine, dict[str, float], list[str]]:
    """Fit profiles and the next-best-action engine on stitched `tables` (see the module docstring)."""
    config = config or NBAConfig()
    started = time.perf_counter()
    policy = load_contact_policy(config.policy_file)
    notes: list[str] = []
    profiles = CustomerProfiles(
        horizon_days=config.forecast_horizon_days,
        conversion_window_days=config.conversion_window_days,
        random_state=config.random_state,
        n_jobs=config.n_jobs,
    ).fit(
        tables, channel_model=channel_model, send_time_model=send_time_model, quiet_hours=policy.quiet_hours
    )
    profile_seconds = time.perf_counter() - started
    notes += [f"profiles: {n}" for n in profiles.notes_]
    if tables.messages is None or len(tables.messages) == 0:
        notes.append(
            "nba: uplift skipped, there is no messages table (no logged contacts to learn from); the engine "
            "only decides replenishment reminders and win-backs, each valued with an assumed relative uplift "
            "of the customer's purchase probability (reason code prior_uplift_no_model), and sends no offers"
        )
    engine = NextBestActionEngine(
        policy=policy,
        learner=config.learner,
        conversion_window_days=config.conversion_window_days,
        guard=config.guard,
        guard_folds=config.guard_folds,
        guard_confidence=config.guard_confidence,
        min_arm_rows=config.min_arm_rows,
        max_training_messages=config.max_training_messages,
        random_state=config.random_state,
        n_jobs=config.n_jobs,
    ).fit(
        tables, profiles, recommender, channel_model, send_time_model, train_customers=config.uplift_customers
    )
    notes += [f"nba: {n}" for n in engine.notes_]
    if channel_model is None:
        notes.append("nba: no channel model; p_open per channel = the customer's smoothed open rate history")
    if send_time_model is None:
        notes.append("nba: no send-time model; send times follow the customer's activity hours")
    if recommender is None:
        notes.append("nba: no recommender; messages carry no product ids (replenishment items excepted)")

    metrics: dict[str, float] = {
        "nba.profile_seconds": profile_seconds,
        "nba.train_seconds": time.perf_counter() - started - profile_seconds,
        "nba.customers": float(len(profiles.frame_)),
    }
    for name, value in profiles.forecast_metrics_.items():
        if isinstance(value, int | float):
            metrics[f"profile.{name}"] = float(value)
    for segment, share in profiles.frame_["segment"].value_counts(normalize=True).items():
        metrics[f"profile.segment_share.{segment}"] = float(share)
    m = engine.metrics_
    if "training_messages" in m:
        metrics["nba.training_messages"] = float(m["training_messages"])
        metrics["nba.open_rate"] = float(m["open_rate"])
        for arm, rate in m["conversion_rate_by_arm"].items():
            metrics[f"nba.conversion_rate.{arm}"] = float(rate)
    if "guard" in m:
        metrics["nba.guard.fallback"] = float(m["guard"]["fallback"])
        metrics["nba.guard.gain"] = float(m["guard"]["validation_gain"]["gain"])
        metrics["nba.guard.lower_bound"] = float(m["guard"]["validation_gain"]["lower_bound"])
        metrics["nba.guard.personalised_share"] = float(m["guard"]["personalised_share"])
    if config.summarise_decisions:
        ids = profiles.frame_["customer_id"].to_numpy()
        if len(ids) > config.summary_customers:
            rng = np.random.default_rng(config.random_state)
            ids = np.sort(rng.choice(ids, config.summary_customers, replace=False))
        t0 = time.perf_counter()
        # the summary counts actions and gains only: the recommended items (most of the cost of a
        # decision) are left out, they change no action (nba.decide_seconds_per_1000 times this call)
        decisions = engine.decide(ids, items=False)
        metrics["nba.decide_seconds_per_1000"] = (time.perf_counter() - t0) / len(ids) * 1000
        metrics["nba.summary_customers"] = float(len(ids))
        for action, share in decisions["action"].value_counts(normalize=True).items():
            metrics[f"nba.action_share.{action}"] = float(share)
        sends = decisions["action"] != NO_ACTION
        metrics["nba.expected_gain_total"] = float(decisions["expected_gain"].sum())
        metrics["nba.expected_gain_per_send"] = (
            float(decisions.loc[sends, "expected_gain"].mean()) if sends.any() else 0.0
        )
    return profiles, engine, metrics, notes


def log_nba_run(
    engine: NextBestActionEngine, metrics: dict[str, float], notes: list[str], config: NBAConfig | None = None
) -> None:
    """Log params, metrics, notes, the engine's diagnostics and its saved folder (artifact `nba/`)
    into the active MLflow run."""
    import mlflow

    config = config or NBAConfig()
    params = {f"nba.{k}": v for k, v in asdict(config).items() if k != "uplift_customers"}
    mlflow.log_params(params)
    mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
    mlflow.log_dict({"notes": notes}, "nba/notes.json")
    mlflow.log_dict(json.loads(json.dumps(engine.metrics_, default=float)), "nba/diagnostics.json")
    with tempfile.TemporaryDirectory(prefix="omni-nba-") as tmp:
        folder = engine.save(Path(tmp) / "nba")
        mlflow.log_artifacts(str(folder), artifact_path="nba")
