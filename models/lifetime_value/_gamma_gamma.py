"""The Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV"; Colombo & Jiang 1999).

A customer's transaction values are Gamma(p, ν) around their own mean, and ν ~ Gamma(q, γ) across
customers, so the expected value of a customer's next transaction shrinks their observed mean m
over n transactions towards the population mean p·γ / (q - 1):

    E[value | n, m] = (p (γ + n m)) / (p n + q - 1)

Fitted by maximum likelihood with analytic gradients on log parameters (q = 1 + e^θ, so that the
population mean exists). Values are divided by their median before the fit (γ is scaled back), so
the optimiser sees numbers near 1 whatever the currency.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln
from sklearn.base import BaseEstimator

PARAM_NAMES: tuple[str, ...] = ("p", "q", "gamma")
LOG_BOUND = 12.0


class GammaGammaSpendModel(BaseEstimator):
    """Gamma-Gamma: `fit(n_transactions, mean_value)` then `expected_value(n, m)`.

    Parameters
    ----------
    n_starts, max_iter, random_state : as `BetaGeoPurchaseModel`.

    Fitted attributes: params_ ({"p", "q", "gamma"}, γ in the values' currency),
    population_mean_ (p γ / (q - 1): the expected transaction value of a customer with none
    observed), log_likelihood_, converged_, n_customers_.
    """

    def __init__(self, n_starts: int = 3, max_iter: int = 500, random_state: int | None = 0):
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, n_transactions, mean_value) -> GammaGammaSpendModel:
        n = np.asarray(n_transactions, dtype=np.float64).ravel()
        m = np.asarray(mean_value, dtype=np.float64).ravel()
        if len(n) != len(m):
            raise ValueError("n_transactions and mean_value must have the same length")
        usable = np.isfinite(n) & np.isfinite(m) & (n >= 1) & (m > 0)
        n, m = n[usable], m[usable]
        if len(n) < 2:
            raise ValueError("Gamma-Gamma needs at least two customers with a positive transaction value")
        scale = float(np.median(m))
        ms = m / scale
        starts = [np.array([0.0, 0.0, 0.0])]
        rng = np.random.default_rng(self.random_state)
        starts += [rng.normal(0.0, 1.0, 3) for _ in range(max(0, self.n_starts - 1))]
        best = None
        for start in starts:
            result = minimize(
                _negative_log_likelihood,
                start,
                args=(n, ms),
                jac=True,
                method="L-BFGS-B",
                bounds=[(-LOG_BOUND, LOG_BOUND)] * 3,
                options={"maxiter": self.max_iter},
            )
            if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
                best = result
        if best is None:
            raise ValueError("Gamma-Gamma: the likelihood is not finite at any start")
        p, q, gamma = _natural(best.x)
        self.params_ = {"p": p, "q": q, "gamma": gamma * scale}
        self.population_mean_ = p * gamma * scale / (q - 1.0)
        self.log_likelihood_ = float(-best.fun)
        self.converged_ = bool(best.success)
        self.n_customers_ = len(n)
        return self

    @classmethod
    def from_params(cls, params: dict[str, float], **init) -> GammaGammaSpendModel:
        """A fitted model from saved `params_` (no refit)."""
        model = cls(**init)
        model.params_ = {name: float(params[name]) for name in PARAM_NAMES}
        p, q, gamma = (model.params_[name] for name in PARAM_NAMES)
        model.population_mean_ = p * gamma / (q - 1.0)
        return model

    def expected_value(self, n_transactions, mean_value) -> np.ndarray:
        """Expected value of each customer's next transaction; the population mean where n = 0 or
        the mean is unknown."""
        n = np.asarray(n_transactions, dtype=np.float64).ravel()
        m = np.asarray(mean_value, dtype=np.float64).ravel()
        p, q, gamma = (self.params_[name] for name in PARAM_NAMES)
        known = np.isfinite(m) & (n >= 1) & (m > 0)
        n = np.where(known, n, 0.0)
        m = np.where(known, m, 0.0)
        return p * (gamma + n * m) / (p * n + q - 1.0)


def _natural(theta: np.ndarray) -> tuple[float, float, float]:
    return float(np.exp(theta[0])), float(1.0 + np.exp(theta[1])), float(np.exp(theta[2]))


def _negative_log_likelihood(theta, n, m) -> tuple[float, np.ndarray]:
    """Minus the mean Gamma-Gamma log-likelihood of (n, m) and its gradient in
    (log p, log (q - 1), log γ)."""
    p, q, gamma = _natural(theta)
    pn = p * n
    log_total = np.log(gamma + n * m)
    ll = (
        gammaln(pn + q)
        - gammaln(pn)
        - gammaln(q)
        + q * np.log(gamma)
        + (pn - 1.0) * np.log(m)
        + pn * np.log(n)
        - (pn + q) * log_total
    )
    psi_total = digamma(pn + q)
    d_p = n * (psi_total - digamma(pn) + np.log(m) + np.log(n) - log_total)
    d_q = psi_total - digamma(q) + np.log(gamma) - log_total
    d_gamma = q / gamma - (pn + q) / (gamma + n * m)
    value = -float(np.mean(ll))
    if not np.isfinite(value):
        return np.inf, np.zeros(3)
    grad = -np.array([p * np.mean(d_p), (q - 1.0) * np.mean(d_q), gamma * np.mean(d_gamma)])
    return value, grad
