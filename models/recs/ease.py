"""EASE: Embarrassingly Shallow Autoencoders (Steck, WWW 2019), an item-item model in closed form.

EASE learns one dense item×item weight matrix B that reconstructs each customer's row from the
other items of that row:

    min_B ||X − X·B||² + λ·||B||²   subject to diag(B) = 0

whose solution is, with P = (XᵀX + λI)⁻¹,

    B = I − P · diag(1 / diag(P)),   i.e. B_ij = −P_ij / P_jj  (i ≠ j),  B_jj = 0.

Scores are `user_items @ B`, so any row of items (a known customer, a new customer, a session)
is scored the same way, without folding-in or retraining.

Memory: B is dense, n_items² numbers. `B_` is kept as float32 (4·n² bytes: 1,700 items ≈ 11 MB,
10,000 ≈ 0.4 GB, 30,000 ≈ 3.6 GB) and fitting inverts a float64 Gram matrix (8·n² bytes, about two
such matrices at the peak: 30,000 items ≈ 14 GB) in O(n³) time. `fit` therefore refuses catalogues
above `max_items` (default 30,000) with a ValueError instead of exhausting the machine; raise it
knowingly, or restrict the catalogue (e.g. to the most interacted-with products) first.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from models.base import ItemScorer


class EASEScorer(ItemScorer):
    """EASE item-item model.

    Parameters
    - `l2`: λ, the L2 penalty on B (the one hyper-parameter; larger λ = smoother, more popular
      items). Steck reports a few hundred for MovieLens-sized data.
    - `binarize`: treat every interaction as 1 (implicit feedback), both when fitting and when
      scoring. With False, interaction weights are used as they are.
    - `max_items`: largest catalogue `fit` accepts (see the module docstring on memory).
    - `random_state`: unused (EASE is deterministic); accepted so every scorer takes it.

    Fitted attributes: `B_` (n_items × n_items, float32, zero diagonal), `n_items_`.
    """

    def __init__(
        self,
        l2: float = 500.0,
        binarize: bool = True,
        max_items: int = 30_000,
        random_state: int | None = None,
    ):
        self.l2 = l2
        self.binarize = binarize
        self.max_items = max_items
        self.random_state = random_state

    def _prepare(self, matrix: sp.spmatrix) -> sp.csr_matrix:
        matrix = sp.csr_matrix(matrix, dtype=np.float64)
        if self.binarize:
            matrix = matrix.copy()
            matrix.eliminate_zeros()
            matrix.data[:] = 1.0
        return matrix

    def fit(self, interactions: sp.csr_matrix) -> EASEScorer:
        n_items = interactions.shape[1]
        if n_items > self.max_items:
            need_gb = 2 * 8 * n_items**2 / 1e9
            raise ValueError(
                f"EASE needs a dense {n_items}×{n_items} matrix (about {need_gb:.1f} GB while fitting); "
                f"max_items is {self.max_items}. Restrict the catalogue or raise max_items knowingly."
            )
        if self.l2 <= 0:
            raise ValueError(f"l2 must be positive (it makes XᵀX + λI invertible), got {self.l2}")
        x = self._prepare(interactions)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices(n_items)] += self.l2
        p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        # B_ij = -P_ij / P_jj, in place on P; then the zero diagonal.
        p /= -np.diag(p)[np.newaxis, :]
        p[np.diag_indices(n_items)] = 0.0
        self.B_ = p.astype(np.float32)
        self.n_items_ = n_items
        return self

    def score(self, user_items: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        """`user_items @ B_`; `user_index` is ignored (EASE scores any row from its items alone)."""
        if user_items.shape[1] != self.n_items_:
            raise ValueError(f"user_items has {user_items.shape[1]} columns, the model {self.n_items_} items")
        x = self._prepare(user_items).astype(np.float32)
        return np.asarray(x @ self.B_)
