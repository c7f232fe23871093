"""Multi-arm uplift models and a value-guarded arbitration policy for next-best-action.

The arbitration question is "which action (or none) is worth the most *incrementally* for this
customer?". With per-arm outcome predictions p_k(x) (arm 0 = no action), the expected incremental
value of arm k is

    value_k(x) = (p_k(x) - p_0(x)) * margin - p_k(x) * redemption_cost_k - contact_cost_k

The redemption cost multiplies p_k, not the uplift: an offer is paid for on every redemption,
including by customers who would have bought anyway (`incremental_value`).

Pieces:

- `MultiArmUpliftLearner`: T-, X- or DR-learner built from small, strongly regularised LightGBM
  models, trained on logged, (partly) randomised actions with known or estimated propensities.
- `cross_fit_outcomes`: out-of-fold per-arm predictions on the training rows, the honest input
  for deciding whether personalising pays off.
- `ValueGuardedPolicy`: picks the arm with the highest predicted value per customer, but only if
  a cross-fitted inverse-propensity estimate on the training data shows that doing so beats the
  best *fixed* arm by a lower confidence bound; otherwise it sends the best fixed arm to everyone.
- Pure numpy evaluation helpers: `ipw_policy_value`, `ipw_policy_gain`, `qini_curve`, `qini_auc`.

Default learner: the X-learner. On Hillstrom (bench/hillstrom.py, visit, 5 split seeds) the
three kinds were compared by the guard's own yardstick, the 5-fold cross-fitted IPW gain of each
learner's personalised choice over the best fixed arm *inside the training halves*: X +0.0009
(sd 0.0011 over seeds), T +0.0006 (sd 0.0013), DR +0.0001 (sd 0.0016) visits per customer. X is
best and steadiest, though none is distinguishable from zero (the paired gain's 95% CI is about
±0.003 there). That fits its construction: the stage-2 targets (y - mu_0(x), mu_k(x) - y) have
about a sixth of the variance of the DR pseudo-outcomes under 1/3 randomisation (0.12 against
0.70 on visit: the 1/e = 3 weight triples each residual), while with randomised arms the stage-1
errors that could bias it are small. The evaluation halves, looked at only afterwards, agree:
unguarded X 0.1843, DR 0.1842, T 0.1839, against 0.1839 for "men's e-mail to everyone". "dr"
stays available for logged data whose propensities vary by customer, where double robustness
matters more than variance.
"""

from __future__ import annotations

from concurrent.futures import Executor
from functools import partial
from typing import Any

import lightgbm as lgb
import numpy as np
from lightgbm import LGBMClassifier, LGBMRegressor
from scipy.stats import norm
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils.validation import check_array, check_is_fitted

from models.fitting import (  # LightGBM fits: on the Dask cluster when one is active
    fit_estimator,
    fits_locally,
    run_tasks,
)

# Uplift signal is a few percentage points on a base rate of ~10-20%: the models must be small and
# heavily regularised, or they fit noise that then decides who gets which action.
DEFAULT_OUTCOME_PARAMS: dict[str, Any] = {
    "n_estimators": 150,
    "learning_rate": 0.03,
    "num_leaves": 8,
    "max_depth": 3,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 10.0,
}
# Effect models regress pseudo-outcomes whose variance dwarfs the effect: even fewer, shallower trees.
DEFAULT_EFFECT_PARAMS: dict[str, Any] = {
    "n_estimators": 100,
    "learning_rate": 0.02,
    "num_leaves": 4,
    "max_depth": 2,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 10.0,
}
# Leaves hold at least this share of the rows a model is fitted on (unless `min_child_samples` is
# overridden): a leaf of a few dozen customers can show a 30% "effect" by chance alone.
DEFAULT_MIN_LEAF_FRACTION = 0.05
_MIN_LEAF_ROWS = 20
_MAX_JOBS = 2  # the reference machine has 2 cores; more threads only contend
_Z95 = float(norm.ppf(0.975))
# one-sided confidences `ValueGuardedPolicy(confidence="validated")` chooses from
CONFIDENCE_GRID: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _lgbm_common(random_state: int | None, n_jobs: int) -> dict[str, Any]:
    return {"random_state": random_state, "n_jobs": min(max(1, n_jobs), _MAX_JOBS), "verbose": -1}


def _seed(random_state: int | None, offset: int) -> int | None:
    # each sub-model gets its own, reproducible seed so bagging draws differ between models
    return None if random_state is None else int(random_state) + 7919 * offset


class MultiArmUpliftLearner(BaseEstimator):
    """Uplift of K-1 actions over a control (arm 0) from logged, randomised decisions.

    Parameters
    ----------
    learner : {"x", "dr", "t"}
        - "t": one outcome model per arm; uplift_k = mu_k - mu_0.
        - "x": X-learner (Kuenzel et al. 2019), per treated arm k against control: stage-1 outcome
          models mu_0, mu_k; imputed effects y - mu_0(x) on arm-k rows and mu_k(x) - y on control
          rows; one stage-2 regressor on each; blended as g·tau_control + (1-g)·tau_treated with
          g = e_k / (e_0 + e_k), the share of arm k among the two arms' propensities.
        - "dr": DR-learner (Kennedy 2023): cross-fitted outcome models give doubly-robust
          pseudo-outcomes Gamma_k = mu_k + 1[a=k](y - mu_k)/e_k, and Gamma_k - Gamma_0 is regressed
          on x. With known propensities the pseudo-outcome is unbiased for the effect even when
          the outcome models are wrong; they only reduce its variance.
        Default "x": on Hillstrom it had the highest and steadiest cross-fitted gain inside the
        training halves, all three being within noise of the best fixed arm (module docstring;
        bench output "learner_diagnostics").
    outcome : {"binary", "continuous"}
        Binary outcomes use LightGBM classifiers (probabilities), continuous ones L2 regressors.
    outcome_params, effect_params : dict or None
        Overrides for the LightGBM outcome models and the effect (stage-2 / pseudo-outcome)
        regressors, merged over DEFAULT_OUTCOME_PARAMS / DEFAULT_EFFECT_PARAMS.
    min_leaf_fraction : float
        Each model's `min_child_samples` = this share of the rows it is fitted on (at least 20),
        unless the params above set `min_child_samples`. Scales the regularisation with the data:
        on a Hillstrom training half a leaf holds >= ~530 customers of one arm.
    n_crossfit : int
        Folds for the DR-learner's cross-fitted outcome models (and estimated propensities).
    propensity_clip : float
        Lower clip for estimated propensities; known ones are used as given.
    n_jobs : int
        LightGBM threads, capped at 2. Default 1: the models are small (tens of thousands of rows)
        and OpenMP threads that busy-wait on a shared 2-core machine cost more than they save
        (one 150-tree model: 0.25 s with 1 thread, 4.5 s with 2 while other work was running).
    random_state : int or None

    Fitted attributes
    -----------------
    n_arms_, arm_share_ (observed arm frequencies), propensity_ ("known" or "estimated"),
    outcome_models_ (one per arm), effect_models_ (per treated arm; for "x" a pair),
    propensity_model_ (only when propensities were estimated).
    """

    def __init__(
        self,
        learner: str = "x",
        outcome: str = "binary",
        outcome_params: dict[str, Any] | None = None,
        effect_params: dict[str, Any] | None = None,
        min_leaf_fraction: float = DEFAULT_MIN_LEAF_FRACTION,
        n_crossfit: int = 3,
        propensity_clip: float = 0.01,
        n_jobs: int = 1,
        random_state: int | None = None,
    ):
        self.learner = learner
        self.outcome = outcome
        self.outcome_params = outcome_params
        self.effect_params = effect_params
        self.min_leaf_fraction = min_leaf_fraction
        self.n_crossfit = n_crossfit
        self.propensity_clip = propensity_clip
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ----------------------------------------------------------------- model factories
    def _params(self, defaults: dict, overrides: dict | None, n_rows: int, offset: int) -> dict:
        params = {"min_child_samples": max(_MIN_LEAF_ROWS, int(np.ceil(self.min_leaf_fraction * n_rows)))}
        params.update(defaults)
        params.update(overrides or {})
        params.update(_lgbm_common(_seed(self.random_state, offset), self.n_jobs))
        return params

    def _outcome_model(self, offset: int, n_rows: int):
        params = self._params(DEFAULT_OUTCOME_PARAMS, self.outcome_params, n_rows, offset)
        if self.outcome == "binary":
            return LGBMClassifier(objective="binary", **params)
        return LGBMRegressor(objective="regression", **params)

    def _effect_model(self, offset: int, n_rows: int) -> LGBMRegressor:
        params = self._params(DEFAULT_EFFECT_PARAMS, self.effect_params, n_rows, offset)
        return LGBMRegressor(objective="regression", **params)

    def _predict_model(self, model, X: np.ndarray) -> np.ndarray:
        if isinstance(model, LGBMClassifier):
            proba = model.predict_proba(X)
            # a fold where an arm never converted leaves a one-class model
            return proba[:, 1] if proba.shape[1] == 2 else np.full(len(X), float(model.classes_[0]))
        return model.predict(X)

    def _fit_outcome_models(self, X, arm, y, offset: int) -> list:
        models = []
        for k in range(self.n_arms_):
            rows = arm == k
            model = self._outcome_model(offset + k, int(rows.sum()))
            fit_estimator(model, X[rows], y[rows])
            models.append(model)
        return models

    # ----------------------------------------------------------------- propensities
    def _logged_propensity(self, X, arm, propensity) -> np.ndarray:
        """Propensity of the logged arm per row, known or estimated out of fold."""
        n = len(arm)
        if propensity is not None:
            p = np.asarray(propensity, dtype=np.float64)
            if p.ndim == 0:
                out = np.full(n, float(p))
            elif p.ndim == 1 and p.shape[0] == self.n_arms_ and n != self.n_arms_:
                out = p[arm]  # one known probability per arm
            elif p.ndim == 1:
                out = p  # already the logged arm's probability per row
            else:
                out = p[np.arange(n), arm]  # (n, K) matrix
            self.propensity_ = "known"
            if np.any(out <= 0):
                raise ValueError("known propensities must be > 0 for every logged arm")
            return out
        self.propensity_ = "estimated"
        out = np.empty(n)
        folds = StratifiedKFold(self.n_crossfit, shuffle=True, random_state=_seed(self.random_state, 900))
        for i, (tr, te) in enumerate(folds.split(X, arm)):
            model = fit_estimator(self._propensity_model(901 + i, len(tr)), X[tr], arm[tr])
            out[te] = model.predict_proba(X[te])[np.arange(len(te)), arm[te]]
        self.propensity_model_ = fit_estimator(self._propensity_model(950, n), X, arm)
        return np.clip(out, self.propensity_clip, 1.0)

    def _propensity_model(self, offset: int, n_rows: int) -> LGBMClassifier:
        params = self._params(DEFAULT_OUTCOME_PARAMS, self.outcome_params, n_rows, offset)
        return LGBMClassifier(objective="multiclass", **params)

    def _arm_propensities(self, X: np.ndarray) -> np.ndarray:
        """(n, K) propensities for new rows, only used to blend the X-learner's two estimates."""
        if getattr(self, "propensity_model_", None) is not None:
            return np.clip(self.propensity_model_.predict_proba(X), self.propensity_clip, 1.0)
        # known logging probabilities: their observed frequencies (the blend is only a variance
        # heuristic; any weight in [0, 1] keeps the estimate consistent)
        return np.broadcast_to(self.arm_share_, (len(X), self.n_arms_))

    # ----------------------------------------------------------------- fit / predict
    def fit(self, X, arm, y, propensity=None) -> MultiArmUpliftLearner:
        """Fit on features X (n, d), logged arm indices 0..K-1 (0 = control) and outcomes y.

        `propensity`: None (estimated from X), a scalar, K known per-arm probabilities, the
        logged arm's probability per row (n,), or an (n, K) matrix.
        """
        if self.learner not in ("t", "x", "dr"):
            raise ValueError(f"learner must be 't', 'x' or 'dr', got {self.learner!r}")
        if self.outcome not in ("binary", "continuous"):
            raise ValueError(f"outcome must be 'binary' or 'continuous', got {self.outcome!r}")
        X = check_array(X, dtype=np.float64)
        arm = np.asarray(arm, dtype=np.int64)
        y = np.asarray(y, dtype=np.float64)
        self.n_arms_ = int(arm.max()) + 1
        if self.n_arms_ < 2 or np.any(np.bincount(arm, minlength=self.n_arms_) == 0):
            raise ValueError("every arm 0..K-1 (K >= 2) must appear in the logged data")
        self.n_features_in_ = X.shape[1]
        self.arm_share_ = np.bincount(arm, minlength=self.n_arms_) / len(arm)
        self.propensity_model_ = None
        logged_p = self._logged_propensity(X, arm, propensity)

        # the outcome models on all rows serve predict_outcomes for every kind
        self.outcome_models_ = self._fit_outcome_models(X, arm, y, offset=0)
        if self.learner == "t":
            self.effect_models_ = []
        elif self.learner == "x":
            self._fit_x(X, arm, y)
        else:
            self._fit_dr(X, arm, y, logged_p)
        return self

    def _fit_x(self, X, arm, y) -> None:
        control = arm == 0
        X_control, y_control = X[control], y[control]
        # mu_0 is only needed on treated rows and mu_k only on control rows: predicting each
        # outcome model on just those rows (not all of X) saves about a third of the predictions,
        # with the same values (LightGBM predicts each row on its own)
        mu0 = np.empty(len(arm))
        mu0[~control] = self._predict_model(self.outcome_models_[0], X[~control])
        on_treated, on_control, control_targets = [], [], []
        for k in range(1, self.n_arms_):
            treated = arm == k
            model = self._effect_model(100 + 2 * k, int(treated.sum()))
            on_treated.append(fit_estimator(model, X[treated], y[treated] - mu0[treated]))
            on_control.append(self._effect_model(101 + 2 * k, int(control.sum())))
            control_targets.append(self._predict_model(self.outcome_models_[k], X_control) - y_control)
        # the K-1 control-side models all learn from the control rows: bin them once
        fit_regressors_on_shared_rows(on_control, X_control, control_targets)
        self.effect_models_ = list(zip(on_control, on_treated, strict=True))

    def _fit_dr(self, X, arm, y, logged_p) -> None:
        n, K = len(arm), self.n_arms_
        mu_oof = np.empty((n, K))
        folds = StratifiedKFold(self.n_crossfit, shuffle=True, random_state=_seed(self.random_state, 200))
        for i, (tr, te) in enumerate(folds.split(X, arm)):
            models = self._fit_outcome_models(X[tr], arm[tr], y[tr], offset=300 + K * i)
            for k, model in enumerate(models):
                mu_oof[te, k] = self._predict_model(model, X[te])
        # doubly-robust score per arm: the model's guess, corrected on the rows that took that arm
        gamma = mu_oof.copy()
        rows = np.arange(n)
        gamma[rows, arm] += (y - mu_oof[rows, arm]) / logged_p
        self.effect_models_ = [
            fit_estimator(self._effect_model(500 + k, n), X, gamma[:, k] - gamma[:, 0]) for k in range(1, K)
        ]

    def predict_uplift(self, X) -> np.ndarray:
        """(n, K-1): predicted effect of arms 1..K-1 over control."""
        check_is_fitted(self, "outcome_models_")
        X = check_array(X, dtype=np.float64)
        if self.learner == "t":
            mu = self._outcome_matrix(X)
            return mu[:, 1:] - mu[:, [0]]
        if self.learner == "dr":
            return np.column_stack([m.predict(X) for m in self.effect_models_])
        e = self._arm_propensities(X)
        out = np.empty((len(X), self.n_arms_ - 1))
        for k, (on_control, on_treated) in enumerate(self.effect_models_, start=1):
            # weight the estimate learned on the *larger* group's counterfactuals more
            g = e[:, k] / (e[:, 0] + e[:, k])
            out[:, k - 1] = g * on_control.predict(X) + (1.0 - g) * on_treated.predict(X)
        return out

    def _outcome_matrix(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([self._predict_model(m, X) for m in self.outcome_models_])

    def predict_outcomes(self, X) -> np.ndarray:
        """(n, K): expected outcome under each arm. For "x"/"dr": mu_0(x) + predicted uplift."""
        check_is_fitted(self, "outcome_models_")
        X = check_array(X, dtype=np.float64)
        if self.learner == "t":
            out = self._outcome_matrix(X)
        else:
            mu0 = self._predict_model(self.outcome_models_[0], X)
            out = np.column_stack([mu0, mu0[:, None] + self.predict_uplift(X)])
        if self.outcome == "binary":
            out = np.clip(out, 0.0, 1.0)
        return out


def fit_regressors_on_shared_rows(models: list, X: np.ndarray, targets: list) -> list:
    """Fit LightGBM regressors that learn different targets from the same rows `X`, binning `X` once.

    `LGBMRegressor.fit` builds (bins) a Dataset on every call, about 40 % of one of these small
    models' fit. With at most `subsample_for_bin` rows LightGBM bins from every row whatever the
    seed, so one Dataset, relabelled per model, gives the same trees as separate fits (tested:
    identical model strings). Otherwise, or on the Dask cluster, each model is fitted on its own.
    Returns `models`, fitted as `fit` leaves them.
    """
    shareable = (
        len(models) > 1
        and all(type(m) is LGBMRegressor and isinstance(m.objective, str | None) for m in models)
        and len(X) <= min(m.subsample_for_bin for m in models)
        and fits_locally()
    )
    if not shareable:
        for model, target in zip(models, targets, strict=True):
            fit_estimator(model, X, target)
        return models
    X = check_array(X, dtype=np.float64, ensure_all_finite=False)
    dataset = None
    for model, target in zip(models, targets, strict=True):
        # the parameters `LGBMRegressor.fit` hands to `lgb.train`
        params = model._process_params(stage="fit")
        metric = params.get("metric")
        metric = [metric] if isinstance(metric, str | None) else metric
        params["metric"] = [m for m in metric if m is not None]
        target = np.asarray(target, dtype=np.float64)
        if dataset is None:
            dataset = lgb.Dataset(X, target, params=params, free_raw_data=False)
        else:
            dataset.set_label(target)
        booster = lgb.train(params, dataset, num_boost_round=model.n_estimators)
        # the fitted state `LGBMRegressor.fit` sets (lightgbm 4.x)
        model._Booster = booster
        model._n_features = booster.num_feature()
        model._n_features_in = X.shape[1]
        model._fitted_with_feature_names = False
        model._evals_result = {}
        model._best_iteration = booster.best_iteration
        model._best_score = booster.best_score
        model.fitted_ = True
        booster.free_dataset()
    return models


def cross_fit_outcomes(
    learner: MultiArmUpliftLearner,
    X,
    arm,
    y,
    propensity=None,
    n_splits: int = 5,
    random_state: int | None = None,
    executor: Executor | None = None,
) -> np.ndarray:
    """Out-of-fold `predict_outcomes` (n, K) for the training rows (folds stratified by arm).

    Every row is predicted by a clone that never saw it, so policy values estimated from these
    predictions on the same rows are honest. `executor` (e.g. a `ThreadPoolExecutor`): fit the
    folds on it concurrently; the folds are independent and seeded, so the result is the same.
    """
    X = check_array(X, dtype=np.float64)
    arm = np.asarray(arm, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    n_arms = int(arm.max()) + 1
    out = np.empty((len(arm), n_arms))
    p = None if propensity is None else np.asarray(propensity, dtype=np.float64)
    folds = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)

    def fold(tr: np.ndarray, te: np.ndarray) -> None:
        p_tr = p
        if p is not None and p.ndim >= 1 and p.shape[0] == len(arm) and len(arm) != n_arms:
            p_tr = p[tr]  # per-row propensities follow their rows; per-arm ones stay as they are
        model = clone(learner).fit(X[tr], arm[tr], y[tr], propensity=p_tr)
        out[te] = model.predict_outcomes(X[te])

    run_tasks([partial(fold, tr, te) for tr, te in folds.split(X, arm)], executor)
    return out


# --------------------------------------------------------------------------- arbitration values
def _per_arm(value, n_arms: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (n_arms,))


def incremental_value(outcomes, margin=1.0, redemption_cost=0.0, contact_cost=0.0) -> np.ndarray:
    """Expected incremental value (n, K) of each arm relative to arm 0 (no action; column 0 = 0).

    `outcomes` (n, K) are predicted conversion probabilities (or expected outcomes) per arm.
    Per-arm expected profit = p_k·(margin_k - redemption_cost_k) - contact_cost_k; the value is
    its difference from arm 0's, i.e. with arm 0 costing nothing:
    (p_k - p_0)·margin - p_k·redemption_cost_k - contact_cost_k. The redemption cost is paid on
    every redemption, including by customers who would have converted without the offer.
    margin, redemption_cost, contact_cost: scalars or one value per arm.
    """
    p = np.atleast_2d(np.asarray(outcomes, dtype=np.float64))
    K = p.shape[1]
    m, rc, cc = _per_arm(margin, K), _per_arm(redemption_cost, K), _per_arm(contact_cost, K)
    profit = p * (m - rc) - cc
    return profit - profit[:, [0]]


def realised_value(logged_arm, outcome, margin=1.0, redemption_cost=0.0, contact_cost=0.0) -> np.ndarray:
    """Realised profit per logged row, on the same scale as `incremental_value` (up to arm 0's
    constant): the reward to give `ValueGuardedPolicy.fit` and `ipw_policy_value`."""
    arm = np.asarray(logged_arm, dtype=np.int64)
    y = np.asarray(outcome, dtype=np.float64)
    K = int(arm.max()) + 1
    m, rc, cc = (
        _per_arm(margin, K)[arm],
        _per_arm(redemption_cost, K)[arm],
        _per_arm(contact_cost, K)[arm],
    )
    return y * (m - rc) - cc


# --------------------------------------------------------------------------- off-policy evaluation
def _logged_propensity_vector(propensity, logged_arm: np.ndarray) -> np.ndarray:
    p = np.asarray(propensity, dtype=np.float64)
    n = len(logged_arm)
    if p.ndim == 0:
        return np.full(n, float(p))
    if p.ndim == 2:  # (n, K): arms must then be column indices
        return p[np.arange(n), logged_arm.astype(np.int64)]
    return p


def _ipw_terms(chosen_arm, logged_arm, outcome, propensity) -> tuple[np.ndarray, np.ndarray]:
    chosen = np.asarray(chosen_arm)
    logged = np.asarray(logged_arm)
    y = np.asarray(outcome, dtype=np.float64)
    # arms may be any labels (e.g. action names) unless propensities come as an (n, K) matrix
    p = _logged_propensity_vector(propensity, logged)
    if not (len(chosen) == len(logged) == len(y) == len(p)):
        raise ValueError("chosen_arm, logged_arm, outcome and propensity must have the same length")
    weight = (chosen == logged) / p
    return weight, weight * y


def ipw_policy_value(
    chosen_arm, logged_arm, outcome, propensity, self_normalized: bool = False
) -> tuple[float, tuple[float, float]]:
    """Inverse-propensity estimate of a policy's mean outcome, with a 95% normal CI.

    Horvitz-Thompson: mean over rows of y·1[chosen == logged] / p(logged | x); the CI is
    mean ± 1.96·sd(terms)/sqrt(n). Self-normalised (SNIPS): sum(w·y) / sum(w), with a
    delta-method CI from the terms w·(y - value)/mean(w); a little biased, less variable.
    `propensity`: a scalar, the logged arm's probability per row (n,), or an (n, K) matrix.
    Arms may be integers or any labels (e.g. action names) compared with ==; an (n, K) matrix
    needs integer arms.
    """
    weight, terms = _ipw_terms(chosen_arm, logged_arm, outcome, propensity)
    n = len(terms)
    if self_normalized:
        if weight.sum() == 0:
            return float("nan"), (float("nan"), float("nan"))
        value = terms.sum() / weight.sum()
        terms = weight * (np.asarray(outcome, dtype=np.float64) - value) / weight.mean()
        half = _Z95 * terms.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    else:
        value = terms.mean()
        half = _Z95 * terms.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    return float(value), (float(value - half), float(value + half))


def ipw_policy_gain(
    chosen_arm, baseline_arm, logged_arm, outcome, propensity
) -> tuple[float, tuple[float, float]]:
    """Horvitz-Thompson estimate of value(policy) - value(baseline) on the same rows, 95% CI.

    Paired per-row differences: rows where both policies choose the same arm cancel, so the CI
    is far tighter than the two separate intervals suggest.
    """
    _, a = _ipw_terms(chosen_arm, logged_arm, outcome, propensity)
    _, b = _ipw_terms(baseline_arm, logged_arm, outcome, propensity)
    diff = a - b
    gain = diff.mean()
    half = _Z95 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(gain), (float(gain - half), float(gain + half))


def qini_curve(uplift_score, treated, outcome) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve (Radcliffe 2007), as scikit-uplift's `qini_curve` computes it.

    Customers sorted by decreasing score; at each distinct score threshold with N customers
    targeted, of whom N_T treated and N_C control, with summed outcomes Y_T and Y_C:
    x = N, y = Y_T - Y_C · N_T / N_C (0 while N_C = 0), i.e. the incremental outcomes gained by
    treating the top N, counted on the treated. Starts at (0, 0). Ties share one point.
    """
    score = np.asarray(uplift_score, dtype=np.float64)
    t = np.asarray(treated).astype(bool)
    y = np.asarray(outcome, dtype=np.float64)
    order = np.argsort(score, kind="mergesort")[::-1]
    score, t, y = score[order], t[order], y[order]
    cut = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    n_t = np.cumsum(t)[cut].astype(np.float64)
    y_t = np.cumsum(np.where(t, y, 0.0))[cut]
    y_c = np.cumsum(np.where(t, 0.0, y))[cut]
    n = cut + 1.0
    n_c = n - n_t
    ratio = np.divide(n_t, n_c, out=np.zeros_like(n_t), where=n_c != 0)
    return np.r_[0.0, n], np.r_[0.0, y_t - y_c * ratio]


def qini_auc(uplift_score, treated, outcome, normalize: str = "perfect") -> float:
    """Area between the Qini curve and the random-targeting line (the chord to its end point).

    normalize="perfect" (default): divided by the same area for the perfect ranking, the ranking
    by y·t - y·(1-t) that puts treated responders first and control responders last, as
    scikit-uplift's `qini_auc_score(negative_effect=True)` does: 1 = perfect, 0 = random, < 0
    worse than random. normalize="population": both axes divided by the number of customers,
    i.e. the mean, over targeting depths 0..100%, of extra outcomes per customer above random
    targeting (unit-free in x, outcome units in y; comparable across data sets of any size).
    """
    x, y = qini_curve(uplift_score, treated, outcome)
    baseline = 0.5 * x[-1] * y[-1]
    area = np.trapezoid(y, x) - baseline
    if normalize == "population":
        return float(area / x[-1] ** 2)
    if normalize != "perfect":
        raise ValueError(f"normalize must be 'perfect' or 'population', got {normalize!r}")
    t = np.asarray(treated).astype(np.float64)
    yy = np.asarray(outcome, dtype=np.float64)
    xp, yp = qini_curve(yy * t - yy * (1.0 - t), treated, outcome)
    perfect = np.trapezoid(yp, xp) - baseline
    return float(area / perfect) if perfect != 0 else float("nan")


# --------------------------------------------------------------------------- guarded policy
class ValueGuardedPolicy(BaseEstimator):
    """Per-customer arm choice that falls back to the best fixed arm unless it provably beats it.

    `fit(values, logged_arm, reward, propensity)` takes *out-of-fold* predicted values (n, K) for
    the training rows (e.g. `incremental_value(cross_fit_outcomes(...))`), the logged arms, the
    realised reward per row (e.g. `realised_value(...)`) and the logging propensities (a scalar,
    one per arm, one per row or an (n, K) matrix). On those
    rows it estimates by inverse-propensity weighting

    - the value of every fixed arm; the best one is `best_fixed_arm_`;
    - the gain of the personalised choice over that best fixed arm (paired differences),

    and personalises only if the lower confidence bound of the gain, gain - z·se with z the
    one-sided `confidence` quantile, exceeds `min_gain`. Otherwise `fallback_` is True and
    `predict` sends `best_fixed_arm_` to everyone: a personalised policy has to earn its keep
    against the best single action it could have chosen instead.

    Parameters
    ----------
    confidence : float or "validated"
        One-sided confidence of the lower bound (0.9 → z ≈ 1.28). 0.5 compares point estimates.
        "validated": chosen from `confidence_grid` on the rows themselves, by nested splits
        (`_validated_confidence`): for each of `validation_splits` folds the guard is decided on
        the other folds at every confidence of the grid, and the policy it would serve (the
        personalised choice or the best fixed arm found there) is valued by IPW on the held-out
        fold; the confidence whose decisions earn the most over the folds is kept, the strictest
        one on ties. The level then follows what the data at hand show the test's decisions to be
        worth, instead of a number set by looking at one data set's truth (the engine's former
        0.8 came from the generator's).
    min_gain : float
        Gain (reward units per customer) the lower bound must exceed.
    min_predicted_gain : float
        Personalise a customer only where the predicted value of their best arm exceeds that of
        the best fixed arm by more than this; others get the best fixed arm. Trims choices that
        rest on differences the model cannot resolve.
    self_normalized : bool
        Use self-normalised IPW for the reported values (the gain test always uses the paired
        Horvitz-Thompson differences).

    Fitted attributes
    -----------------
    confidence_ (the one used), confidence_scores_ ({confidence: held-out IPW value per row of
    its decisions}, "validated" only), n_arms_, best_fixed_arm_, fallback_ (bool),
    validation_values_ (dict: "arm_k" and "personalised" → {"value", "ci95"}), validation_gain_
    ({"gain", "ci95", "lower_bound"}), personalised_share_ (share of training rows whose arm differs from the best fixed arm).
    """

    def __init__(
        self,
        confidence: float | str = 0.9,
        min_gain: float = 0.0,
        min_predicted_gain: float = 0.0,
        self_normalized: bool = False,
        confidence_grid: tuple[float, ...] = CONFIDENCE_GRID,
        validation_splits: int = 3,
        random_state: int | None = 0,
    ):
        self.confidence = confidence
        self.min_gain = min_gain
        self.min_predicted_gain = min_predicted_gain
        self.self_normalized = self_normalized
        self.confidence_grid = confidence_grid
        self.validation_splits = validation_splits
        self.random_state = random_state

    def _test(self, values, logged, reward, p_logged) -> tuple[int, float, float]:
        """(best fixed arm, gain of the personalised choice over it, its standard error) as `fit`
        estimates them on these rows; gain -inf when nobody would deviate from the fixed arm."""
        n = len(logged)
        fixed = [ipw_policy_value(np.full(n, k), logged, reward, p_logged)[0] for k in range(values.shape[1])]
        best = int(np.argmax(fixed))
        chosen = self._personalised(values, best)
        if not np.any(chosen != best):
            return best, -np.inf, 0.0
        gain, ci = ipw_policy_gain(chosen, np.full(n, best), logged, reward, p_logged)
        return best, gain, (ci[1] - ci[0]) / (2 * _Z95)

    def _validated_confidence(self, values, logged, reward, p_logged) -> float:
        """The confidence of `confidence_grid` whose decisions are worth the most on held-out folds."""
        n = len(logged)
        grid = sorted({float(k) for k in self.confidence_grid}, reverse=True)  # strictest first
        splits = max(2, min(int(self.validation_splits), n // 2))
        folds = KFold(splits, shuffle=True, random_state=self.random_state)
        earned = dict.fromkeys(grid, 0.0)
        for fit_rows, held in folds.split(values):
            best, gain, se = self._test(
                values[fit_rows], logged[fit_rows], reward[fit_rows], p_logged[fit_rows]
            )
            policies = {
                True: self._personalised(values[held], best),
                False: np.full(len(held), best),
            }
            worth = {
                personalise: float(np.sum((policy == logged[held]) / p_logged[held] * reward[held])) / n
                for personalise, policy in policies.items()
            }
            for level in grid:
                earned[level] += worth[bool(gain - float(norm.ppf(level)) * se > self.min_gain)]
        self.confidence_scores_ = {level: earned[level] for level in grid}
        chosen = grid[0]
        for level in grid[1:]:  # a looser level must earn strictly more
            if earned[level] > earned[chosen] + 1e-12:
                chosen = level
        return chosen

    def _personalised(self, values: np.ndarray, fixed_arm: int) -> np.ndarray:
        best = values.argmax(axis=1)
        gain = values[np.arange(len(values)), best] - values[:, fixed_arm]
        return np.where(gain > self.min_predicted_gain, best, fixed_arm)

    def fit(self, values, logged_arm, reward, propensity) -> ValueGuardedPolicy:
        values = check_array(values, dtype=np.float64)
        logged = np.asarray(logged_arm, dtype=np.int64)
        reward = np.asarray(reward, dtype=np.float64)
        self.n_arms_ = values.shape[1]
        n = len(logged)
        self.confidence_scores_ = {}
        p = np.asarray(propensity, dtype=np.float64)
        if p.ndim == 1 and p.shape[0] == self.n_arms_ and n != self.n_arms_:
            propensity = p[logged]  # one known probability per arm: the logged arm's per row
        if isinstance(self.confidence, str):
            if self.confidence != "validated":
                raise ValueError(f"confidence must be a number or 'validated', got {self.confidence!r}")
            p_logged = _logged_propensity_vector(propensity, logged)
            self.confidence_ = self._validated_confidence(values, logged, reward, p_logged)
        else:
            self.confidence_ = float(self.confidence)

        fixed = {}
        for k in range(self.n_arms_):
            v, ci = ipw_policy_value(np.full(n, k), logged, reward, propensity, self.self_normalized)
            fixed[k] = (v, ci)
        self.best_fixed_arm_ = int(max(fixed, key=lambda k: fixed[k][0]))

        chosen = self._personalised(values, self.best_fixed_arm_)
        v, ci = ipw_policy_value(chosen, logged, reward, propensity, self.self_normalized)
        self.validation_values_ = {
            f"arm_{k}": {"value": fv, "ci95": list(fci)} for k, (fv, fci) in fixed.items()
        }
        self.validation_values_["personalised"] = {"value": v, "ci95": list(ci)}

        baseline = np.full(n, self.best_fixed_arm_)
        gain, gain_ci = ipw_policy_gain(chosen, baseline, logged, reward, propensity)
        se = (gain_ci[1] - gain_ci[0]) / (2 * _Z95)
        lower = gain - float(norm.ppf(self.confidence_)) * se
        self.validation_gain_ = {"gain": gain, "ci95": list(gain_ci), "lower_bound": lower}
        self.personalised_share_ = float(np.mean(chosen != self.best_fixed_arm_))
        # no deviation at all, or evidence too weak: everyone gets the best fixed arm
        self.fallback_ = bool(self.personalised_share_ == 0 or not lower > self.min_gain)
        return self

    def predict(self, values) -> np.ndarray:
        """Arm per customer from predicted values (n, K) on the scale used in `fit`."""
        check_is_fitted(self, "fallback_")
        values = check_array(values, dtype=np.float64)
        if values.shape[1] != self.n_arms_:
            raise ValueError(f"expected {self.n_arms_} arms, got {values.shape[1]}")
        if self.fallback_:
            return np.full(len(values), self.best_fixed_arm_, dtype=np.int64)
        return self._personalised(values, self.best_fixed_arm_).astype(np.int64)
