"""What `omni train` is told: one nested `TrainConfig`.

The run's own settings (held-out window, seed, promotion rule) sit at the top; each family's
settings are that family's config (`RecsConfig`, `ChannelTrainingConfig`, `NBAConfig`), whose
defaults are defined there, once: the CLI's option defaults read them. The run hands each family
its config with the run's window and seed filled in (`recommender_config`, `engagement_config`,
`decisions_config`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from models.catalog import RECOMMENDER
from models.recs import ALS_DEFAULTS


@dataclass
class RecsConfig:
    test_days: int = 28  # the held-out window at the end of the history
    k: int = 10
    max_eval_customers: int = 10_000  # evaluation sample (paired: every model scores the same customers)
    half_life_days: float = 90.0
    # the ALS baseline (ProductRecommender), as `omni train` fits it (also the two-stage model's ALS size)
    factors: int = ALS_DEFAULTS["factors"]
    regularization: float = ALS_DEFAULTS["regularization"]
    alpha: float = ALS_DEFAULTS["alpha"]
    iterations: int = ALS_DEFAULTS["iterations"]
    random_state: int = 42
    refit: bool = True  # refit the two-stage model on all history (False: return the split model)
    all_purchases: bool = True  # also evaluate the "as served" protocol
    two_stage: dict = field(default_factory=dict)  # TwoStageRecommender parameters

    def als_params(self) -> dict:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "random_state": self.random_state,
        }

    def two_stage_params(self) -> dict:
        params = {"half_life_days": self.half_life_days, "random_state": self.random_state}
        params.update(self.two_stage)
        return params


@dataclass
class ChannelTrainingConfig:
    """Settings of the channel and send-time step (`training.channel_training`): its windows, the
    samples its evaluation and validation are fitted on, and its plots."""

    test_days: int = 28  # held-out window at the end of the message history (or events)
    match_hours: int = 1  # a held-out send "matches" our hour when it is within this many hours
    heatmap_customers: int = 4
    random_state: int = 42
    # The evaluation's models are fitted and scored on a seeded random sample of this many
    # customers (all their rows) when there are more; None or 0: every customer. The registered
    # models are always refitted on everyone. A hundred thousand customers leave over a hundred
    # thousand held-out messages to score (intervals of a few tenths of a point); at a million
    # customers the evaluation's fits on everyone took as long as the refit, and on a sample this
    # size it runs beside the refit instead of after it.
    max_eval_customers: int | None = 100_000
    # What is served (each model or its rules) is chosen on a validation window (the last
    # `test_days` before the split), with models fitted before it on a seeded sample of this many
    # customers when there are more (None or 0: every customer): enough held-out messages to tell
    # the policies apart, at a fraction of a fit on everyone.
    max_validation_customers: int | None = 50_000


@dataclass
class NBAConfig:
    policy_file: str | None = None  # contact policy TOML (None: configs/contact_policy.toml)
    learner: str = "x"  # MultiArmUpliftLearner kind: x, t or dr
    guard: bool = True
    guard_folds: int = 3
    # "validated": the guard's one-sided confidence is chosen on nested splits of the training
    # messages (`ValueGuardedPolicy`); a number fixes it
    guard_confidence: float | str = "validated"
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


@dataclass
class TrainConfig:
    test_days: int = 28  # the held-out window at the end of the history (shorter for short histories)
    random_state: int = 42  # every family's seed
    recommender: RecsConfig = field(default_factory=RecsConfig)
    engagement: ChannelTrainingConfig = field(default_factory=ChannelTrainingConfig)
    decisions: NBAConfig = field(default_factory=NBAConfig)
    registered_name: str = RECOMMENDER.name
    promotion_margin: float = 0.0  # a challenger must reach the champion's score + margin ...
    promotion_margins: dict = field(default_factory=dict)  # ... or its family's own margin here

    def margin(self, family: str) -> float:
        return float(self.promotion_margins.get(family, self.promotion_margin))

    def recommender_config(self, test_days: int | None = None) -> RecsConfig:
        """The recommender's config for a run whose held-out window is `test_days` (also the
        ranker's label window), with the run's seed; ALS's size goes to the two-stage model too."""
        days = self.test_days if test_days is None else test_days
        rec = self.recommender
        return replace(
            rec,
            test_days=days,
            random_state=self.random_state,
            two_stage={
                "factors": rec.factors,
                "iterations": rec.iterations,
                "label_days": days,
                **rec.two_stage,
            },
        )

    def engagement_config(self, test_days: int) -> ChannelTrainingConfig:
        return replace(self.engagement, test_days=test_days, random_state=self.random_state)

    def decisions_config(self) -> NBAConfig:
        return replace(self.decisions, random_state=self.random_state)

    def flat_params(self) -> dict:
        """Every setting as `family.name` → value (the run's own under `run.`), for MLflow."""
        out = {
            f"run.{k}": v
            for k, v in asdict(self).items()
            if not isinstance(v, dict) or k == "promotion_margins"
        }
        for family in ("recommender", "engagement", "decisions"):
            out.update({f"{family}.{k}": v for k, v in asdict(getattr(self, family)).items()})
        return out


def recommender_params(config: TrainConfig) -> dict:
    """What defines the served recommender (not how it is judged): stored with each version."""
    return {"test_days": config.test_days, "random_state": config.random_state, **asdict(config.recommender)}
