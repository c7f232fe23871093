"""Product lists: candidate sources, the LambdaRank ranker, business rules, the two-stage
recommender that serves them, lists stored ahead for the service, and the baselines it is judged
against (popularity, ALS, EASE; repeat purchase is a source)."""

from models._faces import lazy_face

# The ALS settings every ALS of the project starts from (the scorer, the ALS baseline, the
# two-stage model's ALS source, `omni train`'s defaults): said once, here, where reading them
# costs no import.
ALS_DEFAULTS: dict[str, float] = {"factors": 64, "regularization": 0.05, "alpha": 2.0, "iterations": 15}

__all__, __getattr__, __dir__ = lazy_face(
    __name__,
    {
        "Filters": "rules",
        "ListOrder": "list_order",
        "PrecomputedLists": "precomputed",
        "ProductRecommender": "baselines",
        "Recommendation": "baselines",
        "TwoStageRecommender": "two_stage",
        "choose_order": "list_order",
    },
)
