"""Empirical-Bayes shrinkage shared by the engagement wing's models: the strength of a Dirichlet
prior estimated by the method of moments (`dirichlet_prior_strength`), the posterior-mean
distributions it gives (`shrink_counts`), and one-step shrunk log-odds corrections of cells whose
spread is estimated from the cells themselves (`eb_newton_step`).
"""

from __future__ import annotations

import numpy as np

_MIN_SIGMA2, _MAX_SIGMA2 = 1e-4, 4.0


def dirichlet_prior_strength(counts: np.ndarray, prior: np.ndarray) -> float:
    """Empirical-Bayes concentration a0 of a Dirichlet prior around `prior` (rows of probabilities).

    Method of moments on the Dirichlet-multinomial: the Pearson statistic of row i has expectation
    (J - 1)(n_i + a0)/(1 + a0). Solving the pooled equation gives a0; rows with fewer than two
    counts carry no information about dispersion and are left out. 0 = no pooling (everyone is
    their own), inf = the data show no individual differences (everyone is their segment).
    """
    n = counts.sum(axis=1)
    keep = n >= 2
    if keep.sum() < 10:
        return float("inf")
    x, n, p = counts[keep], n[keep], np.clip(prior[keep], 1e-9, None)
    df = counts.shape[1] - 1
    pearson = (((x - n[:, None] * p) ** 2) / (n[:, None] * p)).sum() / df
    total, rows = n.sum(), len(n)
    if pearson <= rows:
        return float("inf")
    if pearson >= total:
        return 0.0
    return float((total - pearson) / (pearson - rows))


def shrink_counts(counts: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    """Posterior-mean distributions (counts + a0 prior) / (n + a0); rows without counts = prior."""
    if not np.isfinite(strength):
        return prior.copy()
    n = counts.sum(axis=1, keepdims=True)
    return np.where(n > 0, (counts + strength * prior) / np.maximum(n + strength, 1e-12), prior)


def eb_newton_step(residual: np.ndarray, info: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrunk log-odds corrections residual / (info + tau), tau = 1/sigma^2 estimated from the cells.

    `residual` = sum(y - p) and `info` = sum p(1 - p) per cell: for a small true offset z,
    residual ≈ info * z + noise of variance info, so E[residual^2] = info + info^2 sigma^2.
    """
    has = info > 0
    if not has.any():
        return np.zeros_like(residual), float("inf")
    sigma2 = ((residual[has] ** 2 - info[has]).sum()) / max((info[has] ** 2).sum(), 1e-12)
    sigma2 = float(np.clip(sigma2, _MIN_SIGMA2, _MAX_SIGMA2))
    tau = 1.0 / sigma2
    return residual / (info + tau), tau
