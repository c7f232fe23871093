"""Product lists: candidate sources, the LambdaRank ranker, business rules, the two-stage
recommender that serves them, lists stored ahead for the service, and the baselines it is judged
against (popularity, ALS, EASE; repeat purchase is a source)."""

from models.recs.baselines import ProductRecommender, Recommendation
from models.recs.list_order import ListOrder, choose_order
from models.recs.precomputed import PrecomputedLists
from models.recs.rules import Filters
from models.recs.two_stage import TwoStageRecommender

__all__ = [
    "Filters",
    "ListOrder",
    "PrecomputedLists",
    "ProductRecommender",
    "Recommendation",
    "TwoStageRecommender",
    "choose_order",
]
