"""The model families `omni train` trains, each behind one small interface (`ModelFamily`).

A family says which tables and columns it needs (`requires`, checked before any fit by
`missing`), trains (evaluates itself on the time split beside its baselines, then refits on all
history: `train`) and registers its model (`register`). While its held-out models are at hand,
`train` also scores the registered champion, loaded as deployed (`TrainContext.champion`), beside
them on the data after both were trained, and leaves both scores in `FamilyOutcome.extra
["champion"]` for the promotion gate (`training.registry.gate`). `omni train` trains every
family the data support; a family whose data cannot support it is skipped with a one-line reason
(`FamilyOutcome.reason`), printed and logged to MLflow, and the run exits 2 only when no family
could be trained (`NothingTrained`).

The families, in training order (a later one may use an earlier one's model):
- `recommender` (omni-recommender): which products;
- `channel` (omni-channel) and `send_time` (omni-send-time): which channel, and when (one fit of
  the engagement stage trains both, `training.channel_training`);
- `profiles` and `next_best_action` (omni-nba: the profiles live in the engine's folder): who the
  customer is and what to do next (one fit, `training.nba_training`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features import columns as c
from features.io import Tables
from models.base import CannotTrain
from models.catalog import CHANNEL, NBA, RECOMMENDER, SEND_TIME, RegisteredModel


class NothingTrained(ValueError):
    """No family could be trained on this data (each one's reason is in the message)."""


@dataclass
class FamilyOutcome:
    """What training one family gave: its model and figures, or why it was skipped."""

    family: str
    registered_name: str | None = None
    model: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    reason: str | None = None  # why it was skipped (None: trained)
    promotion_metric: str | None = None  # the metric the champion gate compares (a key of `metrics`)
    params: dict = field(default_factory=dict)  # what defines the model (stored with its version)
    # what `register` needs besides, and "champion": {"score", "challenger_score", "note"} (the
    # deployed champion and the challenger on the same new window) for the gate
    extra: dict = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return self.reason is None and self.model is not None

    def skip_line(self) -> str:
        return f"skipped {self.family}: {self.reason}"


@dataclass
class TrainContext:
    """What every family of one run shares: the data, the windows, the run's settings and the
    models trained so far (`outcomes`), and stages whose one fit serves two families."""

    tables: Tables
    config: Any  # training.train.TrainConfig
    test_days: int
    tracking_uri: str | None = None  # where the champions are (None: no registry, nothing to compare)
    outcomes: dict[str, FamilyOutcome] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    champion_notes: dict[str, str] = field(default_factory=dict)

    def model(self, family: str):
        outcome = self.outcomes.get(family)
        return outcome.model if outcome is not None and outcome.trained else None

    def champion(self, family: ModelFamily, loader):
        """The family's registered champion, loaded with `loader(folder)`, to be scored on this
        run's window while the run's own held-out models are at hand; None when there is none, or
        when this code cannot read it (`champion_notes` says why: such a champion is replaced)."""
        from training.registry import current_version
        from training.tracking import download_model_folder, registry_client

        if self.tracking_uri is None:
            return None
        try:
            client = registry_client(self.tracking_uri)
            if current_version(client, family.registered_name) is None:
                return None
            folder, version = download_model_folder(
                self.tracking_uri, family.registered_name, "champion", artifact=family.artifact
            )
        except LookupError:
            return None
        try:
            return loader(folder)
        except (ValueError, KeyError, OSError) as exc:
            self.champion_notes[family.name] = (
                f"the champion (version {version}) cannot be read by this code: {exc}"
            )
            return None


class ModelFamily(ABC):
    """One family: `name`, the registered model that holds it (`entry`, from `models.catalog`)
    and what it `requires`."""

    name: str
    entry: RegisteredModel
    requires: str

    @property
    def registered_name(self) -> str:
        return self.entry.name

    @property
    def artifact(self) -> str:
        return self.entry.folder

    def missing(self, tables: Tables) -> str | None:
        """Why `tables` lack what this family needs (checked before any fit), or None."""
        return None

    @abstractmethod
    def train(self, context: TrainContext) -> FamilyOutcome:
        """Evaluate on the time split beside the baselines, refit on all history; raises
        `CannotTrain` with the reason when the data cannot support the model after all."""

    def register(self, outcome: FamilyOutcome, folder: Path, registered_name: str | None = None) -> str:
        """Inside the active MLflow run: save the model under `folder`, log it and register it (as
        `registered_name`, default the catalog's name); returns the version."""
        from training.pyfunc import log_pyfunc

        return log_pyfunc(self.entry, outcome.model.save(folder / self.entry.folder), registered_name)

    def fit(self, context: TrainContext) -> FamilyOutcome:
        """`train`, or the outcome of a skip with the reason: what the data lack, or what the fit
        found it could not learn (`CannotTrain`)."""
        reason = self.missing(context.tables)
        if reason is None:
            try:
                return self.train(context)
            except CannotTrain as exc:
                reason = str(exc)
        return FamilyOutcome(family=self.name, registered_name=self.registered_name, reason=reason)


def has_rows(frame: pd.DataFrame | None) -> bool:
    return frame is not None and len(frame) > 0


def purchases(tables: Tables) -> np.ndarray:
    return (tables.events[c.EVENT_TYPE] == "purchase").to_numpy(dtype=bool, na_value=False)


def finite(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)}


# ------------------------------------------------------------------------------ windows
@dataclass(frozen=True)
class Windows:
    """The held-out window every family evaluates on (`test_days`, at the end of the history);
    `note` says when it had to be shorter than configured."""

    test_days: int
    note: str | None = None


def held_out_windows(tables: Tables, test_days: int) -> Windows:
    """`test_days` as configured, or shorter when the history is short: the families choose and
    tune on a window of the same length before the test window, and at least half of the history
    must stay to learn from (three weeks of history: 5-day windows, 11 days to learn from)."""
    ts = tables.events[c.TS]
    span_days = (ts.max() - ts.min()).total_seconds() / 86400.0
    if span_days >= 4 * test_days:
        return Windows(test_days)
    days = max(1, int(span_days // 4))
    note = (
        f"the history spans {span_days:.1f} days, too short for {test_days}-day held-out windows: "
        f"the test and validation windows are {days} days each"
    )
    return Windows(days, note)


# ================================================================================== the families
class RecommenderFamily(ModelFamily):
    """Which products: the two-stage recommender, serving on each list what won on validation."""

    name = "recommender"
    entry = RECOMMENDER
    requires = "events with product_id and purchase events (a products table is optional)"

    def missing(self, tables: Tables) -> str | None:
        events = tables.events
        if not events[c.PRODUCT_ID].notna().any():
            return "the events name no product (no product_id): there is nothing to recommend"
        buys = purchases(tables) & events[c.PRODUCT_ID].notna().to_numpy()
        if not buys.any():
            return "no purchase event names a product: there is nothing to learn what people buy from"
        if events.loc[buys, c.PRODUCT_ID].nunique() < 2:
            return "every purchase is of one and the same product: there is nothing to rank"
        return None

    def train(self, context: TrainContext) -> FamilyOutcome:
        from models.recs.two_stage import TwoStageRecommender
        from training.config import recommender_params, recs_config
        from training.recs_training import train_two_stage

        champion = context.champion(self, TwoStageRecommender.load)
        model, metrics, info = train_two_stage(
            context.tables, recs_config(context.config, context.test_days), champion=champion
        )
        flat = {f"{m}.{k}": v for m, values in metrics.items() for k, v in values.items()}
        flat |= {
            f"{m}.all_purchases.{k}": v
            for m, values in info.get("all_purchases", {}).items()
            for k, v in values.items()
        }
        if "served_rebuy_share" in info:
            flat["served.all_purchases.rebuy_share"] = info["served_rebuy_share"]
        k = context.config.k
        return FamilyOutcome(
            family=self.name,
            registered_name=self.registered_name,
            model=model,
            metrics=finite(flat),
            promotion_metric=f"served.all_purchases.ndcg@{k}",
            params=recommender_params(context.config),
            extra={"info": info, "champion": info.pop("champion", None)},
        )


class ChannelFamily(ModelFamily):
    """Which channel reaches a customer: learned from message responses, or the engagement-ratio
    rule when the model does not beat it on validation."""

    name = "channel"
    entry = CHANNEL
    requires = "a messages table (consent and customers optional)"

    def missing(self, tables: Tables) -> str | None:
        if not has_rows(tables.messages):
            return (
                "no messages table: without a contact history there are no message responses to learn "
                "which channel reaches a customer"
            )
        return None

    def train(self, context: TrainContext) -> FamilyOutcome:
        result = engagement_stage(context)
        if result.channel_model is None:
            prefix = "channel model skipped: "
            reason = next((n[len(prefix) :] for n in result.notes if n.startswith(prefix)), None)
            raise CannotTrain(reason or "the channel model could not be learned from these messages")
        return FamilyOutcome(
            family=self.name,
            registered_name=self.registered_name,
            model=result.channel_model,
            metrics=finite({k: v for k, v in result.metrics.items() if k.startswith("channel.")}),
            # what is served (the model or the engagement-ratio rule) is what is judged
            promotion_metric="channel.served.engagement_auc",
            params=engagement_params(context),
            # the deployed champion and this run's model fitted before the test window, on the
            # same new messages (None: no champion)
            extra={"champion": (result.champion or {}).get(self.name)},
        )


class SendTimeFamily(ModelFamily):
    """When to send: learned from activity and message opens, or the customer's modal hour or the
    global best hour when the model does not beat them on validation."""

    name = "send_time"
    entry = SEND_TIME
    requires = "events or messages with timestamps (customers.timezone optional)"

    def train(self, context: TrainContext) -> FamilyOutcome:
        result = engagement_stage(context)
        metrics = finite({k: v for k, v in result.metrics.items() if k.startswith("send_time.")})
        # what is served (the model or a modal-hour rule) is what is judged; a rule has no AUC
        choices = ("send_time.served.matched_stratified_rate_matched", "send_time.served.activity_hit_rate")
        metric = next((m for m in choices if m in metrics), choices[0])
        # the deployed champion and this run's model fitted before the test window, on the same
        # new messages, or active hours when the window has too few matched sends (None: no champion)
        champion = (result.champion or {}).get(self.name)
        if champion is not None and champion.get("score") is not None:
            metric = f"send_time.served.{champion['metric']}"
        return FamilyOutcome(
            family=self.name,
            registered_name=self.registered_name,
            model=result.send_time_model,
            metrics=metrics,
            notes=list(result.notes),
            promotion_metric=metric,
            params=engagement_params(context),
            extra={"engagement": result, "champion": champion},
        )

    def register(self, outcome: FamilyOutcome, folder: Path, registered_name: str | None = None) -> str:
        from training.channel_training import log_engagement_run

        log_engagement_run(outcome.extra["engagement"])  # the stage's plots and notes, once
        return super().register(outcome, folder, registered_name)


def engagement_params(context: TrainContext) -> dict:
    from dataclasses import asdict

    return asdict(engagement_config(context))


def engagement_config(context: TrainContext):
    from training.channel_evaluation import ChannelTrainingConfig

    config = context.config
    return ChannelTrainingConfig(
        test_days=context.test_days,
        random_state=config.random_state,
        max_eval_customers=config.channel_eval_customers or None,
    )


def engagement_stage(context: TrainContext):
    """The channel and send-time models of this run: one fit serves both families (memoised).
    Each family's registered champion is judged on the same new window as this run's model fitted
    before it; the champions are loaded (`context.champion`) only once the stage's fits are done."""
    if "engagement" not in context.shared:
        from models.engagement.channel import ChannelModel
        from models.engagement.send_time import SendTimeModel
        from training.channel_training import train_channel_and_send_time

        champions = {"send_time": lambda: context.champion(SendTimeFamily(), SendTimeModel.load)}
        if has_rows(context.tables.messages):
            champions["channel"] = lambda: context.champion(ChannelFamily(), ChannelModel.load)
        context.shared["engagement"] = train_channel_and_send_time(
            context.tables,
            random_state=context.config.random_state,
            config=engagement_config(context),
            champions=champions if context.tracking_uri is not None else None,
        )
    return context.shared["engagement"]


class ProfilesFamily(ModelFamily):
    """Who the customer is: RFM, segments, value, churn risk and preferences (registered with the
    next-best-action engine, whose folder holds them)."""

    name = "profiles"
    entry = NBA
    requires = "purchase events (messages, offers and customers attributes optional)"

    def missing(self, tables: Tables) -> str | None:
        if not purchases(tables).any():
            return "no purchase events: profiles learn what customers buy and spend"
        return None

    def train(self, context: TrainContext) -> FamilyOutcome:
        profiles, _engine, metrics, notes = decisions_stage(context)
        return FamilyOutcome(
            family=self.name,
            registered_name=self.registered_name,
            model=profiles,
            metrics=finite({k: v for k, v in metrics.items() if k.startswith("profile.")}),
            notes=[n for n in notes if n.startswith("profiles:")],
        )

    def register(self, outcome: FamilyOutcome, folder: Path, registered_name: str | None = None) -> str:
        raise NotImplementedError("profiles are registered inside the next-best-action engine")


class NextBestActionFamily(ModelFamily):
    """What to do next: uplift learners under the contact policy, guarded by the best fixed action."""

    name = "next_best_action"
    entry = NBA
    requires = "purchase events; messages (and offers) to learn uplift from"

    def missing(self, tables: Tables) -> str | None:
        if not purchases(tables).any():
            return "no purchase events: next-best-action values what a contact adds to buying"
        return None

    def train(self, context: TrainContext) -> FamilyOutcome:
        from dataclasses import asdict

        from models.decisions.nba import NextBestActionEngine

        profiles, engine, metrics, notes = decisions_stage(context)
        nba_metrics = finite({k: v for k, v in metrics.items() if not k.startswith("profile.")})
        metric = next(
            (m for m in ("nba.guard.lower_bound", "nba.churn_auc") if m in nba_metrics),
            "nba.guard.lower_bound",
        )
        config = context.shared["nba_config"]
        # the deployed engine, as it would have decided (its own state; the recommender, channel
        # and send-time models are not needed to say what it would have sent), and this run's
        # engine fitted before the new window, both valued on that window's logged messages
        champion = context.champion(self, NextBestActionEngine.load)
        scores = None
        if champion is not None:
            from training.nba_training import champion_window_scores

            scores = champion_window_scores(context.tables, champion, profiles, config, context.test_days)
            if scores.pop("unreadable", False):  # loaded, but this code cannot decide with it: replaced
                context.champion_notes[self.name] = scores["note"]
            elif scores.get("score") is not None:
                metric = "nba.window_value"
                nba_metrics[metric] = float(scores["challenger_score"])
        return FamilyOutcome(
            family=self.name,
            registered_name=self.registered_name,
            model=engine,
            metrics=nba_metrics,
            notes=[n for n in notes if not n.startswith("profiles:")],
            promotion_metric=metric,
            params={k: v for k, v in asdict(config).items() if k != "uplift_customers"},
            extra={"config": config, "notes": notes, "champion": scores},
        )

    def register(self, outcome: FamilyOutcome, folder: Path, registered_name: str | None = None) -> str:
        from training.nba_training import log_nba_run

        log_nba_run(outcome.model, {}, outcome.extra["notes"], outcome.extra["config"])
        return super().register(outcome, folder, registered_name)


def decisions_stage(context: TrainContext):
    """Profiles and the next-best-action engine of this run: one fit serves both families."""
    if "decisions" not in context.shared:
        from training.nba_training import NBAConfig, train_nba

        config = NBAConfig(
            random_state=context.config.random_state,
            conversion_window_days=context.config.conversion_window_days,
        )
        context.shared["nba_config"] = config
        # the run's customer features (written by its features stage): not built a second time
        features_path = context.shared.get("customer_features_path")
        features = None
        if features_path is not None and Path(features_path).exists():
            import pyarrow.parquet as pq

            columns = pq.read_schema(features_path).names
            read = [col for col in columns if col == c.CUSTOMER_ID or col.startswith(("hour_", "cat_"))]
            features = pd.read_parquet(features_path, columns=read)
        context.shared["decisions"] = train_nba(
            context.tables,
            context.model("recommender"),
            context.model("channel"),
            context.model("send_time"),
            config,
            customer_features=features,
        )
    return context.shared["decisions"]


FAMILIES: tuple[ModelFamily, ...] = (
    RecommenderFamily(),
    ChannelFamily(),
    SendTimeFamily(),
    ProfilesFamily(),
    NextBestActionFamily(),
)
FAMILY_NAMES: tuple[str, ...] = tuple(f.name for f in FAMILIES)
