"""`models._compiled_trees`: LightGBM's predictions, bit for bit, from the compiled walk."""

import lightgbm as lgb
import numpy as np
import pytest

from models._compiled_trees import CompiledStack, CompiledTrees


def _rows(n: int, seed: int) -> np.ndarray:
    """Features with every case a split must route: NaN, exact zeros, values within ±1e-35,
    negatives and large values."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)) * 10
    X[rng.random(X.shape) < 0.15] = 0.0
    X[rng.random(X.shape) < 0.05] = 1e-36
    X[rng.random(X.shape) < 0.05] = -1e-36
    X[rng.random(X.shape) < 0.15] = np.nan
    X[:, 5] = np.where(rng.random(n) < 0.5, np.nan, X[:, 5])  # a feature mostly missing
    return X


def _fit(objective: str, y, X, **params) -> lgb.Booster:
    base = {"objective": objective, "verbose": -1, "num_leaves": 15, "min_data_in_leaf": 5, "seed": 0}
    return lgb.train({**base, **params}, lgb.Dataset(X, y), num_boost_round=30)


@pytest.mark.parametrize(
    ("objective", "params"),
    [
        ("regression", {}),
        ("binary", {}),
        ("binary", {"sigmoid": 0.7}),
        ("tweedie", {}),
        ("regression", {"zero_as_missing": True}),
        ("regression", {"use_missing": False}),
    ],
)
def test_predictions_equal_lightgbm_bit_for_bit(objective, params):
    X = _rows(3000, 0)
    signal = np.nan_to_num(X[:, 0]) - 0.5 * np.nan_to_num(X[:, 1]) + np.isnan(X[:, 2]) * 3
    if objective == "binary":
        y = (signal + np.random.default_rng(1).normal(size=len(X)) > 0).astype(float)
    elif objective == "tweedie":
        y = np.exp(signal / 10)
    else:
        y = signal
    booster = _fit(objective, y, X, **params)
    compiled = CompiledTrees.of(booster)
    assert compiled is not None
    test = _rows(500, 2)
    expected = booster.predict(test)
    assert np.array_equal(compiled.predict(test), expected)
    # one row, as a request asks, and float32 rows as the ranker builds them
    assert np.array_equal(compiled.predict(test[3]), expected[3:4])
    assert np.array_equal(compiled.predict(test.astype(np.float32)), booster.predict(test.astype(np.float32)))


def test_a_stack_of_models_equals_each_model():
    """Models of different objectives, sizes (one of a single leaf per tree) and iteration counts,
    walked in one call: each column equals that model's own predictions, bit for bit."""
    X = _rows(2000, 8)
    signal = np.nan_to_num(X[:, 0]) - np.nan_to_num(X[:, 3])
    models = [
        CompiledTrees.of(_fit("binary", (signal > 0).astype(float), X, sigmoid=0.7)),
        CompiledTrees.of(_fit("regression", signal, X, zero_as_missing=True), num_iteration=None),
        CompiledTrees.of(_fit("tweedie", np.exp(signal / 10), X)),
        CompiledTrees.of(_fit("regression", np.zeros(len(X)), X)),  # every tree a single leaf
        CompiledTrees.of(_fit("regression", signal, X), num_iteration=5),
    ]
    stack = CompiledStack(models)
    test = _rows(300, 9)
    both = stack.predict(test)
    assert both.shape == (300, len(models))
    for j, model in enumerate(models):
        assert np.array_equal(both[:, j], model.predict(test))
        assert np.array_equal(stack.predict(test[7])[0, j], model.predict(test[7])[0])
    with pytest.raises(ValueError, match="features"):
        stack.predict(test[:, :3])


def test_the_first_iterations_only():
    X = _rows(2000, 3)
    y = np.nan_to_num(X[:, 0])
    booster = _fit("regression", y, X)
    compiled = CompiledTrees.of(booster, num_iteration=7)
    assert np.array_equal(compiled.predict(X), booster.predict(X, num_iteration=7))


def test_a_ranker_equals_lightgbm():
    rng = np.random.default_rng(4)
    X = _rows(1200, 5)
    y = rng.integers(0, 3, size=len(X))
    booster = lgb.train(
        {"objective": "lambdarank", "verbose": -1, "min_data_in_leaf": 5, "seed": 0},
        lgb.Dataset(X, y, group=[40] * 30),
        num_boost_round=20,
    )
    assert np.array_equal(CompiledTrees.of(booster).predict(X), booster.predict(X))


def test_what_is_not_compiled_is_refused():
    X = _rows(1500, 6)
    X[:, 4] = np.random.default_rng(7).integers(0, 5, size=len(X))
    y = np.nan_to_num(X[:, 0])
    categorical = lgb.train(
        {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5, "cat_smooth": 1},
        lgb.Dataset(X, y + (X[:, 4] == 2) * 20, categorical_feature=[4]),
        num_boost_round=10,
    )
    assert any(
        t["tree_structure"].get("decision_type") == "==" for t in categorical.dump_model()["tree_info"]
    )
    assert CompiledTrees.of(categorical) is None
    multiclass = _fit("multiclass", (np.nan_to_num(X[:, 0]) > 0).astype(int) + (X[:, 4] > 2), X, num_class=3)
    assert CompiledTrees.of(multiclass) is None
    linear = _fit("regression", y, np.nan_to_num(X), linear_tree=True)
    assert CompiledTrees.of(linear) is None
    with pytest.raises(ValueError, match="6 features"):
        CompiledTrees.of(_fit("regression", y, X)).predict(np.zeros((2, 5)))
