"""Uplift learners, the value-guarded policy and the IPW / Qini helpers on answers known by construction.

The synthetic experiment: three arms assigned at random (1/3 each); arm 1 lifts the conversion
rate by 0.4 for customers with x0 > 0 and does nothing for the others; arm 2 helps nobody.
"""

import numpy as np
import pytest

from models.decisions.uplift import (
    MultiArmUpliftLearner,
    ValueGuardedPolicy,
    cross_fit_outcomes,
    fit_regressors_on_shared_rows,
    incremental_value,
    ipw_policy_gain,
    ipw_policy_value,
    qini_auc,
    qini_curve,
    realised_value,
)

PROPENSITY = np.full(3, 1 / 3)
CONTACT_COST = [0.0, 0.15, 0.15]  # sending arm 1 or 2 costs 0.15; doing nothing is free


def _experiment(n=6000, effect=0.4, heterogeneous=True, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    arm = rng.integers(0, 3, size=n)
    base = 0.2 + 0.05 * (X[:, 1] > 0)  # a prognostic feature that is not an effect modifier
    helped = (X[:, 0] > 0) if heterogeneous else np.ones(n, dtype=bool)
    p = base + effect * ((arm == 1) & helped)
    y = (rng.random(n) < p).astype(float)
    return X, arm, y


@pytest.fixture(scope="module")
def experiment():
    return _experiment()


@pytest.mark.parametrize("kind", ["t", "x", "dr"])
def test_learner_recovers_uplift_sign_per_group(experiment, kind):
    X, arm, y = experiment
    model = MultiArmUpliftLearner(learner=kind, random_state=0).fit(X, arm, y, propensity=PROPENSITY)
    uplift = model.predict_uplift(X)
    outcomes = model.predict_outcomes(X)
    assert uplift.shape == (len(X), 2) and outcomes.shape == (len(X), 3)
    np.testing.assert_allclose(outcomes[:, 1:] - outcomes[:, [0]], uplift, atol=1e-9)
    pos, neg = X[:, 0] > 0.3, X[:, 0] < -0.3
    # true effects 0.4 and 0; the small, heavily shrunk models pull both towards the mean effect
    # (and chance gives the x0 < -0.3 group an observed effect of +0.04 in this sample)
    assert uplift[pos, 0].mean() > 0.25
    assert abs(uplift[neg, 0].mean()) < 0.15
    assert uplift[pos, 0].mean() - uplift[neg, 0].mean() > 0.15
    assert abs(uplift[:, 1].mean()) < 0.05  # arm 2 helps nobody
    assert np.mean(uplift[pos, 0] > uplift[pos, 1]) > 0.95


def test_learner_estimates_propensities_and_handles_continuous_outcomes(experiment):
    X, arm, y = experiment
    spend = y * 50.0  # a continuous outcome with the same structure, effect 20 for x0 > 0
    model = MultiArmUpliftLearner(learner="dr", outcome="continuous", random_state=0).fit(X, arm, spend)
    assert model.propensity_ == "estimated"
    uplift = model.predict_uplift(X)
    assert uplift[X[:, 0] > 0.3, 0].mean() > 12
    assert abs(uplift[X[:, 0] < -0.3, 0].mean()) < 7.5


def test_learner_is_reproducible(experiment):
    X, arm, y = experiment
    a = MultiArmUpliftLearner(random_state=3).fit(X, arm, y, PROPENSITY).predict_uplift(X[:50])
    b = MultiArmUpliftLearner(random_state=3).fit(X, arm, y, PROPENSITY).predict_uplift(X[:50])
    np.testing.assert_array_equal(a, b)


def test_cross_fit_on_a_thread_pool_gives_the_same_outcomes(experiment):
    from concurrent.futures import ThreadPoolExecutor

    X, arm, y = experiment
    learner = MultiArmUpliftLearner(random_state=1)
    serial = cross_fit_outcomes(learner, X, arm, y, PROPENSITY, n_splits=3, random_state=0)
    with ThreadPoolExecutor(2) as pool:
        threaded = cross_fit_outcomes(
            learner, X, arm, y, PROPENSITY, n_splits=3, random_state=0, executor=pool
        )
    np.testing.assert_array_equal(serial, threaded)


def test_regressors_on_shared_rows_are_the_models_fit_gives(experiment):
    from lightgbm import LGBMRegressor

    X, arm, y = experiment
    rng = np.random.default_rng(0)
    targets = [y - 0.3, rng.normal(size=len(y)), X[:, 0] * y]

    def regressors():
        return [
            LGBMRegressor(
                n_estimators=30, num_leaves=4, subsample=0.8, subsample_freq=1, random_state=s, verbose=-1
            )
            for s in (1, 2, 3)
        ]

    shared = fit_regressors_on_shared_rows(regressors(), X, targets)
    for model, separate, target in zip(shared, regressors(), targets, strict=True):
        separate.fit(X, target)
        assert model.booster_.model_to_string() == separate.booster_.model_to_string()
        np.testing.assert_array_equal(model.predict(X), separate.predict(X))
        assert model.n_features_in_ == separate.n_features_in_ == X.shape[1]
        assert sorted(vars(model)) == sorted(vars(separate))


def test_incremental_value_charges_redemption_cost_on_every_redemption():
    # uplift 0.02 × margin 10 = 0.2 gained, but 0.12 redemptions × 2 = 0.24 paid: a loss
    values = incremental_value([[0.10, 0.12]], margin=10.0, redemption_cost=[0.0, 2.0])
    np.testing.assert_allclose(values, [[0.0, 0.2 - 0.24]])
    rewards = realised_value(
        [0, 1, 1], [1, 1, 0], margin=10.0, redemption_cost=[0.0, 2.0], contact_cost=[0, 0.5]
    )
    np.testing.assert_allclose(rewards, [10.0, 7.5, -0.5])


def test_guarded_policy_targets_the_helped_group(experiment):
    X, arm, y = experiment
    learner = MultiArmUpliftLearner(random_state=0)
    oof = cross_fit_outcomes(learner, X, arm, y, PROPENSITY, n_splits=3, random_state=0)
    reward = realised_value(arm, y, contact_cost=CONTACT_COST)
    policy = ValueGuardedPolicy().fit(incremental_value(oof, contact_cost=CONTACT_COST), arm, reward, 1 / 3)
    # fixed: arm 1 is worth 0.5·0.4 - 0.15 = 0.05 over control; targeting x0 > 0 only: 0.125
    assert policy.best_fixed_arm_ == 1
    assert not policy.fallback_
    assert policy.validation_gain_["lower_bound"] > 0
    assert set(policy.validation_values_) == {"arm_0", "arm_1", "arm_2", "personalised"}

    chosen = policy.predict(
        incremental_value(learner.fit(X, arm, y, PROPENSITY).predict_outcomes(X), contact_cost=CONTACT_COST)
    )
    assert np.mean(chosen[X[:, 0] > 0.3] == 1) > 0.95
    assert np.mean(chosen[X[:, 0] < -0.3] == 0) > 0.95
    assert not np.any(chosen == 2)


def test_guarded_policy_falls_back_without_heterogeneity():
    X, arm, y = _experiment(heterogeneous=False, effect=0.1, seed=1)
    learner = MultiArmUpliftLearner(random_state=0)
    oof = cross_fit_outcomes(learner, X, arm, y, PROPENSITY, n_splits=3, random_state=0)
    policy = ValueGuardedPolicy().fit(incremental_value(oof), arm, y, 1 / 3)
    assert policy.best_fixed_arm_ == 1
    assert policy.fallback_
    assert policy.validation_gain_["lower_bound"] <= 0
    values = incremental_value(learner.fit(X, arm, y, PROPENSITY).predict_outcomes(X))
    np.testing.assert_array_equal(policy.predict(values), np.ones(len(X)))


def test_min_predicted_gain_keeps_the_best_fixed_arm():
    values = np.array([[0.0, 0.05, 0.06], [0.0, 0.05, 0.20], [0.0, 0.05, 0.01]])
    logged = np.array([0, 1, 2, 1, 2, 0])
    reward = np.array([0, 1, 1, 0, 1, 0.0])  # IPW: arm 0 → 0, arm 1 → 0.5, arm 2 → 1.0
    fit_values = np.tile(values, (2, 1))
    # without a threshold the third customer (arm 1 predicted 0.04 above arm 2) would deviate
    loose = ValueGuardedPolicy(confidence=0.5).fit(fit_values, logged, reward, 1 / 3)
    assert loose.best_fixed_arm_ == 2 and loose.personalised_share_ == pytest.approx(1 / 3)
    strict = ValueGuardedPolicy(min_predicted_gain=0.05, confidence=0.5).fit(
        fit_values, logged, reward, 1 / 3
    )
    assert strict.personalised_share_ == 0 and strict.fallback_
    np.testing.assert_array_equal(strict.predict(values), [2, 2, 2])


def test_ipw_value_of_fixed_policy_is_the_arm_mean():
    logged = np.array([0, 1, 2, 1, 0, 2])
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    # arm 1 was logged on rows 1 and 3 (mean outcome 0.5): terms 0,0,0,3,0,0 → mean 0.5
    value, (lo, hi) = ipw_policy_value(np.ones(6), logged, y, 1 / 3)
    assert value == pytest.approx(0.5)
    half = 1.96 * np.std([0, 0, 0, 3, 0, 0], ddof=1) / np.sqrt(6)
    assert lo == pytest.approx(0.5 - half, abs=1e-3) and hi == pytest.approx(0.5 + half, abs=1e-3)
    snips, _ = ipw_policy_value(np.ones(6), logged, y, 1 / 3, self_normalized=True)
    assert snips == pytest.approx(0.5)
    # the same propensity given per row or as an (n, K) matrix
    assert ipw_policy_value(np.ones(6), logged, y, np.full(6, 1 / 3))[0] == pytest.approx(0.5)
    assert ipw_policy_value(np.ones(6), logged, y, np.full((6, 3), 1 / 3))[0] == pytest.approx(0.5)
    # actions may be labels, as in a policy CSV
    names = np.array(["none", "mens", "womens"])
    assert ipw_policy_value(names[np.ones(6, int)], names[logged], y, 1 / 3)[0] == pytest.approx(0.5)
    # gain of "arm 2 for all" over "arm 1 for all": 0.5 - 0.5 = 0
    gain, _ = ipw_policy_gain(np.full(6, 2), np.ones(6), logged, y, 1 / 3)
    assert gain == pytest.approx(0.0)


def test_qini_curve_by_hand():
    x, y = qini_curve([3, 2, 1, 0], treated=[1, 0, 1, 0], outcome=[1, 0, 0, 1])
    np.testing.assert_allclose(x, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(y, [0, 1, 1, 1, 0])


def test_qini_auc_perfect_beats_random(experiment):
    X, arm, y = experiment
    treated = arm == 1
    keep = arm != 2
    t, yy = treated[keep], y[keep]
    perfect = yy * t - yy * (1 - t)
    assert qini_auc(perfect, t, yy) == pytest.approx(1.0)
    true_uplift = (X[keep, 0] > 0).astype(float) + 1e-3 * X[keep, 0]  # the true ranking, ties broken
    # far below 1: the perfect curve ranks on the realised outcomes, not on what x can tell
    assert qini_auc(true_uplift, t, yy) > 0.1
    assert qini_auc(true_uplift, t, yy, normalize="population") > 0.02
    rng = np.random.default_rng(0)
    random_scores = [qini_auc(rng.random(t.size), t, yy) for _ in range(20)]
    assert abs(np.mean(random_scores)) < 0.05


def test_validated_confidence_personalises_only_where_held_out_folds_pay():
    # targeting pays: every level of the grid personalises on held-out folds, the strictest is kept
    X, arm, y = _experiment(seed=2)
    learner = MultiArmUpliftLearner(random_state=0)
    oof = cross_fit_outcomes(learner, X, arm, y, PROPENSITY, n_splits=3, random_state=0)
    reward = realised_value(arm, y, contact_cost=CONTACT_COST)
    values = incremental_value(oof, contact_cost=CONTACT_COST)
    helped = ValueGuardedPolicy(confidence="validated").fit(values, arm, reward, 1 / 3)
    assert not helped.fallback_
    assert set(helped.confidence_scores_) == {0.5, 0.6, 0.7, 0.8, 0.9, 0.95}
    assert helped.confidence_ == 0.95  # all levels decided alike: ties go to the strictest
    # nothing to target: personalising never earns more on held-out folds, the guard falls back
    X, arm, y = _experiment(heterogeneous=False, effect=0.1, seed=1)
    oof = cross_fit_outcomes(learner, X, arm, y, PROPENSITY, n_splits=3, random_state=0)
    flat = ValueGuardedPolicy(confidence="validated").fit(incremental_value(oof), arm, y, PROPENSITY)
    assert flat.fallback_ and flat.best_fixed_arm_ == 1
    # the held-out score of a level is the IPW value of the decisions it took, per row
    assert max(flat.confidence_scores_.values()) == pytest.approx(flat.confidence_scores_[flat.confidence_])
    with pytest.raises(ValueError, match="validated"):
        ValueGuardedPolicy(confidence="loose").fit(values, arm, reward, 1 / 3)


@pytest.mark.parametrize("kind", ["t", "x", "dr"])
def test_one_row_predictions_equal_the_batch_ones(experiment, kind):
    """A request's row goes through every booster in one compiled call (`CompiledStack`); the
    batch through LightGBM: the same numbers, bit for bit."""
    from models.decisions._learning import _BoosterUplift

    X, arm, y = experiment
    learner = MultiArmUpliftLearner(learner=kind, random_state=0).fit(X, arm, y, propensity=PROPENSITY)
    boosters = _BoosterUplift.from_learner(learner)
    rows = np.vstack([X[:40], [[np.nan, 0.0, 1e-36]]])
    batch = boosters.predict_outcomes(rows)
    assert boosters._stacked() is not None
    for i in range(len(rows)):
        assert np.array_equal(boosters.predict_outcomes(rows[i : i + 1]), batch[i : i + 1])
