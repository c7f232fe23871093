"""The BG/NBD purchase model (Fader, Hardie & Lee 2005, "Counting your customers the easy way") and
its modified form MBG/NBD (Batislam, Denizel & Filiztekin 2007), the default here.

While alive, a customer buys as a Poisson process of rate λ ~ Gamma(r, α); after each purchase
they drop out with probability p ~ Beta(a, b). From a buyer's repeat transactions x, the time of
the last one t_x and the time T since the first (any one time unit), the model gives the
probability of being alive and the expected number of purchases in the next t.

BG/NBD lets customers drop out only after a *repeat* purchase, so every one-time buyer is alive
with probability 1 however long ago they bought: a profile field nobody can act on. MBG/NBD lets
them drop out right after the first purchase too, so P(alive) of a one-time buyer falls with the
time since that purchase. On The Complete Journey's held-out half year it also predicts purchases
slightly better (`bench/clv.py`); BG/NBD stays available (`variant="bgnbd"`).

Fitted by maximum likelihood with analytic gradients on log parameters (L-BFGS-B), in log space
throughout (`gammaln`, `betaln`, `logaddexp`): a customer with one purchase (x = 0) or with hundreds
neither overflows nor divides by zero. The conditional expectation's Gauss hypergeometric function
is evaluated after Euler's transformation, 2F1(r+x, b+x+k; c; z) (1 - z)^(r+x) = (1 - z)^(a-1)
2F1(c-r-x, a-1; c; z) with c = a+b+x-1+k (k = 0 for BG/NBD, 1 for MBG/NBD), whose upper
parameters no longer grow with x, so the series converges fast and nothing overflows for heavy
buyers.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1
from sklearn.base import BaseEstimator

PARAM_NAMES: tuple[str, ...] = ("r", "alpha", "a", "b")
VARIANTS: tuple[str, ...] = ("mbgnbd", "bgnbd")
LOG_BOUND = 12.0  # |log parameter| ≤ 12: e^12 ≈ 160,000, far beyond any fitted value seen
# a = 1 is a removable singularity of the conditional expectation: evaluated just beside it
_A_NEAR_ONE = 1e-6


class BetaGeoPurchaseModel(BaseEstimator):
    """(M)BG/NBD: `fit(frequency, recency, T)` then `prob_alive` and `expected_purchases`.

    Parameters
    ----------
    variant : "mbgnbd" (default: one-time buyers may drop out too) or "bgnbd" (module docstring).
    n_starts : optimiser starts; the first from r = α = a = b = 1, the others drawn around it on the
        log scale (seeded by `random_state`); the best likelihood wins.
    max_iter : L-BFGS-B iterations per start.
    random_state : seed of the extra starts.

    Fitted attributes: params_ ({"r", "alpha", "a", "b"}), log_likelihood_ (mean per customer),
    converged_, n_customers_.
    """

    def __init__(
        self, variant: str = "mbgnbd", n_starts: int = 3, max_iter: int = 500, random_state: int | None = 0
    ):
        self.variant = variant
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, frequency, recency, T, sample_weight=None) -> BetaGeoPurchaseModel:
        x, t_x, big_t = _check_rft(frequency, recency, T)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        if len(x) == 0:
            raise ValueError("BG/NBD needs at least one buyer")
        weight = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        weight = weight / weight.sum()
        starts = [np.zeros(4)]
        rng = np.random.default_rng(self.random_state)
        starts += [rng.normal(0.0, 1.0, 4) for _ in range(max(0, self.n_starts - 1))]
        best = None
        for start in starts:
            result = minimize(
                _negative_log_likelihood,
                start,
                args=(x, t_x, big_t, weight, self._k()),
                jac=True,
                method="L-BFGS-B",
                bounds=[(-LOG_BOUND, LOG_BOUND)] * 4,
                options={"maxiter": self.max_iter},
            )
            if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
                best = result
        if best is None:
            raise ValueError("BG/NBD: the likelihood is not finite at any start")
        self.params_ = dict(zip(PARAM_NAMES, np.exp(best.x).tolist(), strict=True))
        self.log_likelihood_ = float(-best.fun)
        self.converged_ = bool(best.success)
        self.n_customers_ = len(x)
        return self

    @classmethod
    def from_params(cls, params: dict[str, float], **init) -> BetaGeoPurchaseModel:
        """A fitted model from saved `params_` (no refit)."""
        model = cls(**init)
        model.params_ = {name: float(params[name]) for name in PARAM_NAMES}
        return model

    def _k(self) -> int:
        """1 when customers may drop out after their first purchase (MBG/NBD), else 0."""
        return 1 if self.variant == "mbgnbd" else 0

    def _params(self) -> tuple[float, float, float, float]:
        p = self.params_
        return p["r"], p["alpha"], p["a"], p["b"]

    def prob_alive(self, frequency, recency, T) -> np.ndarray:
        """P(still alive at T | x, t_x, T); under BG/NBD 1 for a customer without a repeat purchase."""
        x, t_x, big_t = _check_rft(frequency, recency, T)
        r, alpha, a, b = self._params()
        k = self._k()
        can_drop = (x > 0) | (k == 1)
        log_odds = np.full(len(x), -np.inf)  # log of the "dropped out after the last purchase" odds
        xr = x[can_drop]
        log_odds[can_drop] = (
            np.log(a)
            - np.log(b + xr - 1.0 + k)
            + (r + xr) * (np.log(alpha + big_t[can_drop]) - np.log(alpha + t_x[can_drop]))
        )
        return expit(-log_odds)

    def expected_purchases(self, t: float, frequency, recency, T) -> np.ndarray:
        """E[purchases in (T, T + t] | x, t_x, T]: the conditional expectation of (M)BG/NBD."""
        x, t_x, big_t = _check_rft(frequency, recency, T)
        r, alpha, a, b = self._params()
        if abs(a - 1.0) < _A_NEAR_ONE:
            a = 1.0 + _A_NEAR_ONE
        t = float(t)
        if t <= 0:
            return np.zeros(len(x))
        z = t / (alpha + big_t + t)
        c = a + b + x - 1.0 + self._k()
        # (1 - z)^(r+x) 2F1(r+x, b+x+k; c; z) after Euler's transformation (module docstring); an
        # extreme fit (a in the thousands) overflows it, and the fallback below takes over
        with np.errstate(invalid="ignore", over="ignore"):
            tail = np.power(1.0 - z, a - 1.0) * hyp2f1(c - r - x, a - 1.0, c, z)
            numerator = (c / (a - 1.0)) * (1.0 - tail)
        expected = numerator * self.prob_alive(x, t_x, big_t)
        bad = ~np.isfinite(expected) | (expected < 0)
        if bad.any():
            # a hypergeometric value out of range (c ≤ 0 only under BG/NBD, for x = 0 when a + b < 1):
            # the purchase rate while alive, times the chance of being alive, times t
            rate = (r + x[bad]) / (alpha + big_t[bad])
            expected[bad] = rate * t * self.prob_alive(x[bad], t_x[bad], big_t[bad])
        return expected

    def expected_purchases_new_customer(self, t: float) -> float:
        """E[repeat purchases in (0, t]] of a customer who has just made a first purchase."""
        return float(self.expected_purchases(t, [0.0], [0.0], [0.0])[0])


def _check_rft(frequency, recency, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(frequency, dtype=np.float64).ravel()
    t_x = np.asarray(recency, dtype=np.float64).ravel()
    big_t = np.asarray(T, dtype=np.float64).ravel()
    if not (len(x) == len(t_x) == len(big_t)):
        raise ValueError("frequency, recency and T must have the same length")
    if not (np.isfinite(x).all() and np.isfinite(t_x).all() and np.isfinite(big_t).all()):
        raise ValueError("frequency, recency and T must be finite")
    if (x < 0).any() or (t_x < 0).any() or (t_x > big_t + 1e-9).any():
        raise ValueError("need frequency ≥ 0 and 0 ≤ recency ≤ T")
    return x, np.minimum(t_x, big_t), big_t


def _negative_log_likelihood(theta, x, t_x, big_t, weight, k) -> tuple[float, np.ndarray]:
    """Minus the weighted mean (M)BG/NBD log-likelihood and its gradient in (log r, log α, log a,
    log b); k = 1 for MBG/NBD (a customer may drop out after any purchase, the first included),
    0 for BG/NBD (after a repeat purchase only)."""
    r, alpha, a, b = np.exp(theta)
    can_drop = (x > 0) | (k == 1)
    xs = np.where(can_drop, x, 1.0)  # keeps the dropout term defined where it is not used
    base = betaln(a, b)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    log_at, log_atx = np.log(alpha + big_t), np.log(alpha + t_x)
    # alive at T, and dropped out right after the last purchase (at t_x)
    a2 = betaln(a, b + x + k) - base - (r + x) * log_at
    a3 = betaln(a + 1.0, b + xs - 1.0 + k) - base - (r + x) * log_atx
    a3 = np.where(can_drop, a3, -np.inf)
    ll = a1 + np.logaddexp(a2, a3)
    w = np.where(can_drop, expit(a3 - a2), 0.0)  # the dropout term's share of the likelihood
    psi_ab, psi_end = digamma(a + b), digamma(a + b + x + k)
    d_r = digamma(r + x) - digamma(r) + np.log(alpha) - (1.0 - w) * log_at - w * log_atx
    d_alpha = r / alpha - (r + x) * ((1.0 - w) / (alpha + big_t) + w / (alpha + t_x))
    d_a2_a = psi_ab - psi_end
    d_a3_a = digamma(a + 1.0) - digamma(a) + psi_ab - psi_end
    d_a = (1.0 - w) * d_a2_a + w * d_a3_a
    psi_b = digamma(b)
    d_a2_b = digamma(b + x + k) - psi_end - psi_b + psi_ab
    d_a3_b = digamma(b + xs - 1.0 + k) - psi_end - psi_b + psi_ab
    d_b = (1.0 - w) * d_a2_b + np.where(can_drop, w * d_a3_b, 0.0)
    value = -float(weight @ ll)
    if not np.isfinite(value):
        return np.inf, np.zeros(4)
    grad = -np.array([r * (weight @ d_r), alpha * (weight @ d_alpha), a * (weight @ d_a), b * (weight @ d_b)])
    return value, grad
