"""Training of the next-best-action stack: unified profiles, then the uplift engine with its guard.

`train_nba(tables, recommender, channel_model, send_time_model, config)` returns
`(profiles, engine, metrics, notes)`:

- profiles: `models.decisions.profile.CustomerProfiles` at the end of the history (RFM, segments, value tiers,
  90-day spend and churn models trained on a time split, price sensitivity, preferences, consent);
- engine: `models.decisions.nba.NextBestActionEngine` with uplift models learned from the logged messages
  and the contact policy of `config.policy_file` (default `configs/contact_policy.toml`);
- metrics: flat {name: float} for MLflow (forecast quality, training messages per arm, the guard's
  comparison with the NBA baseline, the best fixed action: the cross-fitted value per message of
  the engine's personalised choice beside the best fixed action's, the gain and its lower bound,
  whether the fixed action is served; uplift per arm; decision mix over a sample of customers
  when `summarise_decisions`);
- notes: what was missing or skipped and what that means (e.g. no messages table → no uplift, the
  engine only sends replenishment reminders and win-backs valued with an assumed uplift).

`tables` must already be identity-stitched (`features.identity.stitch_identities`), as
`training.train.run_training` does. `log_nba_run` logs everything into the active MLflow run.

`champion_window_scores` scores the registered champion engine, as deployed, and this run's
engine fitted before the new window on the same window's logged messages, for the promotion gate
(`training.families.NextBestActionFamily`).

Raises `models.base.CannotTrain` (with the reason) only when no profile can be built: no events,
or no purchase among them. Everything short of that trains: a part the data cannot support is
skipped with a note (no messages: no uplift; too short a history: no spend / churn forecast; ...).
Offers may carry `duration_days`: a message with such an offer converts within it, the others
within `conversion_window_days` (`omni train --conversion-window-days`).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from features import columns as c
from features.io import Tables, rows_before
from models.base import CannotTrain
from models.decisions.contact_policy import load_contact_policy
from models.decisions.decision_core import NO_ACTION
from models.decisions.nba import NextBestActionEngine
from models.decisions.off_policy import logged_window
from models.decisions.profile import CustomerProfiles
from training.config import NBAConfig


def train_nba(
    tables: Tables,
    recommender=None,
    channel_model=None,
    send_time_model=None,
    config: NBAConfig | None = None,
    customer_features: pd.DataFrame | None = None,
) -> tuple[CustomerProfiles, NextBestActionEngine, dict[str, float], list[str]]:
    """Fit profiles and the next-best-action engine on stitched `tables` (see the module docstring);
    `customer_features`: the tables' customer features when built already (`CustomerProfiles.fit`)."""
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
        tables,
        channel_model=channel_model,
        send_time_model=send_time_model,
        quiet_hours=policy.quiet_hours,
        customer_features=customer_features,
    )
    profile_seconds = time.perf_counter() - started
    notes += [f"profiles: {n}" for n in profiles.notes_]
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
        elif name.endswith("_served"):  # "model" or "naive"
            metrics[f"profile.{name}_model"] = float(value == "model")
    for name, days in getattr(profiles, "thresholds_", {}).items():
        metrics[f"profile.segment_{name}"] = float(days)
    for segment, share in profiles.frame_["segment"].value_counts(normalize=True).items():
        metrics[f"profile.segment_share.{segment}"] = float(share)
    m = engine.metrics_
    if "training_messages" in m:
        metrics["nba.training_messages"] = float(m["training_messages"])
        metrics["nba.open_rate"] = float(m["open_rate"])
        for arm, rate in m["conversion_rate_by_arm"].items():
            metrics[f"nba.conversion_rate.{arm}"] = float(rate)
    if "training_rows" in m:
        metrics["nba.training_rows"] = float(m["training_rows"])
    if "control" in m:
        metrics["nba.control_rows"] = float(m["control"]["control_rows"])
    for arm, estimate in m.get("arm_uplift", {}).get("arms", {}).items():
        metrics[f"nba.uplift.{arm}"] = float(estimate["uplift"])
        metrics[f"nba.uplift_lower.{arm}"] = float(estimate["ci95"][0])
    if "guard" in m:
        guard = m["guard"]
        # the NBA baseline is the best fixed action: both values side by side, per training message
        metrics["nba.guard.fallback"] = float(guard["fallback"])
        metrics["nba.guard.served_fixed_action"] = float(guard["fallback"])
        metrics["nba.guard.best_fixed_value"] = float(guard["best_fixed_value"])
        metrics["nba.guard.personalised_value"] = float(guard["personalised_value"])
        metrics["nba.guard.gain"] = float(guard["validation_gain"]["gain"])
        metrics["nba.guard.lower_bound"] = float(guard["validation_gain"]["lower_bound"])
        metrics["nba.guard.confidence"] = float(guard["confidence"])
        metrics["nba.guard.personalised_share"] = float(guard["personalised_share"])
    if "attributes" in m:
        metrics["nba.attributes_kept"] = float(m["attributes"]["kept"])
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


# ---------------------------------------------------------------------------------- champion gate
def tables_before(tables: Tables, moment: pd.Timestamp) -> Tables:
    """`tables` as they were at `moment`: events, messages sent, consent rows and customers who
    signed up before it (what a model trained then could have seen: a customer who signed up
    later is unknown to it; later opens and conversions of earlier messages are left to the
    history's own as-of rules, which count nothing after the profiles' time)."""
    changes = {"events": rows_before(tables.events, c.TS, moment)}
    if tables.messages is not None:
        changes["messages"] = rows_before(tables.messages, c.SENT_TS, moment)
    if tables.consent is not None and c.UPDATED_TS in tables.consent:
        changes["consent"] = rows_before(tables.consent, c.UPDATED_TS, moment)
    customers = tables.customers
    if customers is not None and c.SIGNUP_TS in customers:
        signup = customers[c.SIGNUP_TS]
        known = (signup.isna() | (signup < moment)).to_numpy(dtype=bool, na_value=True)
        if not known.all():
            changes["customers"] = customers.loc[known]
    return dataclasses.replace(tables, **changes)


def champion_window_scores(
    tables: Tables,
    champion: NextBestActionEngine,
    profiles: CustomerProfiles,
    config: NBAConfig,
    test_days: int,
) -> dict:
    """The deployed champion engine and the challenger scored on the same new window, for the
    promotion gate: {"score" (the champion's), "challenger_score", "note", ...}.

    The window: the messages sent from the later of the run's split (`test_days` before the last
    event) and the champion's own training time, whose conversion window has closed
    (`models.decisions.off_policy.logged_window`, read from `tables` with this run's `profiles`). The
    challenger is this run's configuration fitted on the data before the window (`tables_before`);
    the champion is scored as deployed, from its own state, never refitted. Each engine says what it would have
    sent each of these customers at that moment (`NextBestActionEngine.message_choices`), and that
    is valued off-policy by the guard's estimator, doubly robust: inverse propensity weighting
    with exposure propensities estimated on the window, and as outcome model the mean of both
    engines' predicted conversions (neither saw the window); profit per row in currency, offer
    costs per redemption, message costs. So the two numbers are comparable. No score (None, with the reason in the
    note) when no message of the window can be valued yet, or when the challenger cannot be
    fitted on the data before it: the champion then stays."""
    events = tables.events
    split = events[c.TS].max() + pd.Timedelta(microseconds=1) - pd.Timedelta(days=test_days)
    champion_as_of = pd.Timestamp(champion.profiles_.as_of_)
    start = max(split, champion_as_of)
    policy = load_contact_policy(config.policy_file)
    window, why = logged_window(
        tables,
        profiles,
        start,
        policy=policy,
        conversion_window_days=config.conversion_window_days,
        max_messages=config.max_training_messages,
        random_state=config.random_state,
        n_jobs=config.n_jobs,
    )
    if window is None:
        return {
            "score": None,
            "challenger_score": None,
            "note": f"no message sent since the champion's training (data up to {champion_as_of:%Y-%m-%d %H:%M}) "
            f"can be valued yet ({why}): it cannot be judged on new data",
        }
    try:
        _, challenger, _, _ = train_nba(
            tables_before(tables, start),
            config=dataclasses.replace(config, summarise_decisions=False, uplift_customers=None),
        )
    except CannotTrain as exc:
        return {
            "score": None,
            "challenger_score": None,
            "note": f"the challenger cannot be fitted on the data before the new window ({exc}): the champion "
            "cannot be compared with it",
        }
    choices, outcomes = {}, []
    for name, engine in (("champion", champion), ("challenger", challenger)):
        # on a message's own channel; a control row (not contacted) on any channel
        try:
            choices[name] = engine.message_choices(window.customer_id, window.sent_us, window.channel)
            outcomes.append(engine.outcomes_at(window.customer_id, window.sent_us, window.labels))
        except (KeyError, ValueError, AttributeError, IndexError) as exc:
            if name == "challenger":
                raise
            # a champion this code loads but cannot decide with (saved by an older version)
            return {
                "score": None,
                "challenger_score": None,
                "note": f"the champion cannot be scored by this code: {type(exc).__name__}: {exc}",
                "unreadable": True,
            }
    # the doubly robust estimate's outcome model: both engines' predictions, averaged (neither is
    # favoured; both were fitted before the window)
    stacked = np.stack(outcomes)
    known = np.isfinite(stacked).sum(axis=0)
    predicted = np.where(known > 0, np.nansum(stacked, axis=0) / np.maximum(known, 1), np.nan)
    values = {name: window.value(*choices[name], outcomes=predicted) for name in choices}
    estimator = (
        "doubly robust: inverse propensity weighted, with both engines' predicted conversions"
        if np.isfinite(predicted).any()
        else "inverse propensity weighted"
    )
    diff = values["challenger"].terms - values["champion"].terms
    half = 1.959964 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    champ, chall = values["champion"], values["challenger"]
    return {
        "score": champ.value,
        "challenger_score": chall.value,
        "note": f"the champion as deployed and the challenger fitted before the window, both on the {len(window)} "
        f"logged {'rows' if window.mode == 'offers_control' else 'messages'} from {start:%Y-%m-%d %H:%M} "
        f"(profit per row, {estimator}): challenger - champion {diff.mean():+.4g} "
        f"[{diff.mean() - half:+.4g}, {diff.mean() + half:+.4g}]; sends {chall.sends:.1%} against "
        f"{champ.sends:.1%}",
        "window_start": start.isoformat(),
        "window_rows": len(window),
        "window_mode": window.mode,
        "gain": float(diff.mean()),
        "gain_ci95": [float(diff.mean() - half), float(diff.mean() + half)],
        "sends": {"champion": champ.sends, "challenger": chall.sends},
        "unvalued": {"champion": champ.unvalued, "challenger": chall.unvalued},
    }
