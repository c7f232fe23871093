"""What `omni train` is told: one `TrainConfig` (CLI options and their defaults), and the parts
of it each family reads (`recs_config`: the recommender's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from models.catalog import RECOMMENDER
from training.recs_training import RecsConfig


@dataclass
class TrainConfig:
    test_days: int = 28  # the held-out window at the end of the history (shorter for short histories)
    k: int = 10
    half_life_days: float = 90.0
    max_eval_customers: int = 10_000  # evaluation sample (paired: every model scores the same customers)
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15
    two_stage: dict = field(default_factory=dict)  # any other TwoStageRecommender parameter
    random_state: int = 42
    registered_name: str = RECOMMENDER.name
    promotion_margin: float = 0.0  # a challenger must reach the champion's score + margin ...
    promotion_margins: dict = field(default_factory=dict)  # ... or its family's own margin here
    # customers the channel and send-time evaluation is fitted and scored on (a seeded sample
    # when there are more; 0: all); see ChannelTrainingConfig.max_eval_customers
    channel_eval_customers: int = 100_000
    # how long after a message a purchase counts as its conversion, unless the message's offer
    # says otherwise (offers.duration_days)
    conversion_window_days: float = 14.0

    def als_params(self) -> dict:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "random_state": self.random_state,
        }

    def margin(self, family: str) -> float:
        return float(self.promotion_margins.get(family, self.promotion_margin))


def recs_config(config: TrainConfig, test_days: int | None = None, refit: bool = True) -> RecsConfig:
    """The recommender part of a training configuration (`test_days`: the run's held-out window,
    also the ranker's label window)."""
    days = config.test_days if test_days is None else test_days
    return RecsConfig(
        test_days=days,
        k=config.k,
        max_eval_customers=config.max_eval_customers,
        half_life_days=config.half_life_days,
        factors=config.factors,
        regularization=config.regularization,
        alpha=config.alpha,
        iterations=config.iterations,
        random_state=config.random_state,
        refit=refit,
        two_stage={
            "factors": config.factors,
            "iterations": config.iterations,
            "label_days": days,
            **config.two_stage,
        },
    )


def recommender_params(config: TrainConfig) -> dict:
    """What defines the served recommender (not how it is judged): stored with each version."""
    return {
        k: v
        for k, v in asdict(config).items()
        if not k.startswith("promotion_")
        and k not in ("registered_name", "channel_eval_customers", "conversion_window_days")
    }
