"""Popularity baseline: every customer gets the most interacted-with products."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.base import ItemScorer


class PopularityScorer(ItemScorer):
    """Scores each product by the number of distinct customers who interacted with it.

    Counting customers rather than summing weights keeps one heavy buyer from making an item
    "popular". `fit` stores `item_scores_` (normalised to [0, 1]).
    """

    def __init__(self, by_customers: bool = True):
        self.by_customers = by_customers

    def fit(self, interactions: sp.csr_matrix) -> PopularityScorer:
        interactions = sp.csr_matrix(interactions)
        if self.by_customers:
            counts = np.asarray((interactions > 0).sum(axis=0)).ravel().astype(np.float64)
        else:
            counts = np.asarray(interactions.sum(axis=0)).ravel().astype(np.float64)
        top = counts.max() if counts.size else 0.0
        self.item_scores_ = counts / top if top > 0 else counts
        return self

    def score(self, user_items: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        return np.tile(self.item_scores_, (user_items.shape[0], 1))
