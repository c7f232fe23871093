"""Matrix factorisation with implicit's alternating least squares (Hu, Koren & Volinsky, 2008)."""

from __future__ import annotations

import os
from pathlib import Path

# implicit spawns its own threads; OpenBLAS threads on top of them only contend (implicit warns).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from models.base import ItemScorer  # noqa: E402
from models.recs import ALS_DEFAULTS  # noqa: E402

_PARAMS = ("factors", "regularization", "alpha", "iterations", "random_state", "num_threads")


class ALSScorer(ItemScorer):
    """implicit ALS on a weighted interaction matrix.

    `alpha` scales interaction weights into confidences (implicit 0.7 uses alpha·w for observed
    pairs and 1 for unobserved ones, so good settings pair a large regularisation with alpha). New customers and
    customers with fresh session items are folded in with one least-squares solve
    (`recalculate_user`), so their scores reflect what they just did without retraining.
    """

    def __init__(
        self,
        factors: int = ALS_DEFAULTS["factors"],
        regularization: float = ALS_DEFAULTS["regularization"],
        alpha: float = ALS_DEFAULTS["alpha"],
        iterations: int = ALS_DEFAULTS["iterations"],
        random_state: int = 0,
        num_threads: int = 0,
    ):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    def _new_model(self):
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=self.num_threads,
            calculate_training_loss=False,
        )

    def fit(self, interactions: sp.csr_matrix, show_progress: bool = False) -> ALSScorer:
        interactions = sp.csr_matrix(interactions, dtype=np.float32)
        self.model_ = self._new_model()
        self.model_.fit(interactions, show_progress=show_progress)
        self.n_items_ = interactions.shape[1]
        return self

    def rows_of(self, rows: np.ndarray) -> ALSScorer:
        """The same fitted model keeping only the customers at `rows` (in that order): the item
        factors are shared, so a model fitted on a superset of customers serves a subset without
        a second fit."""
        scorer = type(self)(**{name: getattr(self, name) for name in _PARAMS})
        scorer.model_ = scorer._new_model()
        scorer.model_.user_factors = self.model_.user_factors[np.asarray(rows, dtype=np.int64)]
        scorer.model_.item_factors = self.model_.item_factors
        scorer.n_items_ = self.n_items_
        return scorer

    def score(self, user_items: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        user_items = sp.csr_matrix(user_items, dtype=np.float32)
        n_rows = user_items.shape[0]
        if user_index is None:
            user_index = np.full(n_rows, -1)
        user_index = np.asarray(user_index)
        item_factors = self.model_.item_factors
        vectors = np.zeros((n_rows, item_factors.shape[1]), dtype=np.float32)
        known = user_index >= 0
        if known.any():
            vectors[known] = self.model_.user_factors[user_index[known]]
        for row in np.flatnonzero(~known):
            if user_items[row].nnz:
                # userid is ignored when recalculating; only the given items matter.
                vectors[row] = self.model_.recalculate_user(0, user_items[row])
        return vectors @ item_factors.T

    def save(self, path: str | Path) -> None:
        self.model_.save(str(path))

    @classmethod
    def load(cls, path: str | Path, **params) -> ALSScorer:
        from implicit.cpu.als import AlternatingLeastSquares

        scorer = cls(**params)
        scorer.model_ = AlternatingLeastSquares.load(str(path))
        scorer.n_items_ = scorer.model_.item_factors.shape[0]
        return scorer
