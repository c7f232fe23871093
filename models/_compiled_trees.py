"""A LightGBM model's trees as flat arrays, walked by a compiled loop: request-sized predictions.

`lightgbm.Booster.predict` sets up a C++ predictor on every call (about 100 µs), and even its
single-row fast path costs about 20 µs a call through ctypes, for a few µs of tree walking. A
decision calls a dozen such models on one row each: most of its prediction time was this overhead.
`CompiledTrees` reads the trees once (`Booster.dump_model`) into flat arrays and walks them with a
numba loop: about 3 µs for one row of a 150-tree model. `CompiledStack` walks several models in
one call (a decision's 19 uplift boosters: ~40 µs instead of ~70 µs one by one).

The walk is LightGBM's own (`Tree::NumericalDecision`): a value is compared as a double with `<=`
against the split's threshold; NaN counts as 0 unless the split sends missing values its own way,
and a split of missing type "Zero" sends every value within ±1e-35 (float32) its default way. The
trees are summed in their order, so raw scores equal `Booster.predict(raw_score=True)` bit for bit;
the objective's output function (sigmoid, exp) is applied after, as LightGBM does.

Only what these models use is compiled: numerical splits, one output per row, no linear trees,
no averaged output (random forests). `CompiledTrees.of` returns None for anything else, and the
caller keeps `Booster.predict`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# LightGBM's kZeroThreshold (1e-35f) as the double it is compared as
_ZERO = float(np.float32(1e-35))
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
_DEFAULT_LEFT = 4
# objectives whose output is the raw score, and those LightGBM passes through exp or a sigmoid
_IDENTITY = {
    "regression",
    "regression_l1",
    "huber",
    "fair",
    "quantile",
    "mape",
    "lambdarank",
    "rank_xendcg",
}
_EXP = {"poisson", "gamma", "tweedie"}
_OUTPUT_CODES = {"raw": 0, "sigmoid": 1, "exp": 2}
_WALK_ARRAYS = ("feature", "threshold", "left", "right", "flags", "node_start", "leaf_value", "leaf_start")


class CompiledTrees:
    """The first `num_iteration` trees of a booster, as arrays (see the module's docstring)."""

    def __init__(self, arrays: dict, n_features: int, output: str, sigmoid: float = 1.0):
        self.arrays = arrays
        self.n_features = n_features
        self.output = output  # "raw", "sigmoid" or "exp"
        self.sigmoid = sigmoid
        # the walk's arguments in its order, looked up once (a request pays per attribute read):
        # this model as a stack of one (`_walk_stack`)
        self._walk_args = tuple(arrays[name] for name in _WALK_ARRAYS) + (
            np.array([0, len(arrays["leaf_start"])], dtype=np.int64),
            np.array([_OUTPUT_CODES[output]], dtype=np.int8),
            np.array([sigmoid], dtype=np.float64),
            _ZERO,
        )

    @classmethod
    def of(cls, booster, num_iteration: int | None = None) -> CompiledTrees | None:
        """The booster's trees compiled, or None when they use what is not compiled here."""
        dump = booster.dump_model(num_iteration=num_iteration or None)
        if dump.get("num_tree_per_iteration", 1) != 1 or dump.get("average_output"):
            return None
        objective = str(dump.get("objective", "")).split()
        name = objective[0] if objective else ""
        sigmoid = 1.0
        if name in _IDENTITY:
            output = "raw"
        elif name in _EXP:
            output = "exp"
        elif name in ("binary", "cross_entropy", "xentropy"):
            output = "sigmoid"
            for token in objective[1:]:
                if token.startswith("sigmoid:"):
                    sigmoid = float(token.split(":", 1)[1])
        else:
            return None
        arrays = _flatten(dump["tree_info"])
        if arrays is None:
            return None
        return cls(arrays, int(dump["max_feature_idx"]) + 1, output, sigmoid)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions of rows `X` (n × features, or one row), as `Booster.predict` gives them."""
        return _walk_stack(_rows(X, self.n_features), *self._walk_args)[:, 0]


class CompiledStack:
    """Several `CompiledTrees` walked in one compiled call: (rows × models) predictions.

    A decision predicts one row with a dozen or more boosters; one call instead of one per
    booster saves the per-call dispatch. It is the walk `CompiledTrees.predict` takes (a stack of
    one), so column j equals `models[j].predict`. The models must take the same features.
    """

    def __init__(self, models: list[CompiledTrees]):
        if not models:
            raise ValueError("CompiledStack: no models")
        if len({m.n_features for m in models}) != 1:
            raise ValueError("CompiledStack: the models take different numbers of features")
        self.n_features = models[0].n_features
        self.n_models = len(models)
        parts = {name: [] for name in _WALK_ARRAYS}
        tree_start, node_base, leaf_base = [0], 0, 0
        for m in models:
            a = m.arrays
            n_trees = len(a["leaf_start"])
            parts["feature"].append(a["feature"])
            parts["threshold"].append(a["threshold"])
            parts["left"].append(a["left"])
            parts["right"].append(a["right"])
            parts["flags"].append(a["flags"])
            parts["leaf_value"].append(a["leaf_value"])
            # node and leaf offsets of the model's trees, moved past the models before it
            parts["node_start"].append(a["node_start"][:n_trees] + node_base)
            parts["leaf_start"].append(a["leaf_start"] + leaf_base)
            node_base += len(a["feature"])
            leaf_base += len(a["leaf_value"])
            tree_start.append(tree_start[-1] + n_trees)
        parts["node_start"].append(np.array([node_base], dtype=np.int64))
        arrays = {name: np.concatenate(values) for name, values in parts.items()}
        self._args = tuple(arrays[name] for name in _WALK_ARRAYS) + (
            np.asarray(tree_start, dtype=np.int64),
            np.array([_OUTPUT_CODES[m.output] for m in models], dtype=np.int8),
            np.array([m.sigmoid for m in models], dtype=np.float64),
            _ZERO,
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(rows × models): column j is `models[j].predict(X)`."""
        return _walk_stack(_rows(X, self.n_features), *self._args)


def _rows(X, n_features: int) -> np.ndarray:
    """`X` as the walk takes it: 2-d, float32 or float64, `n_features` columns."""
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[np.newaxis, :]
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"expected rows of {n_features} features, got shape {X.shape}")
    if X.dtype != np.float32 and X.dtype != np.float64:
        X = X.astype(np.float64)
    return X


def _flatten(tree_info: list[dict]) -> dict | None:
    """Every tree's internal nodes (by split index) and leaves (by leaf index) in flat arrays;
    a child < 0 is leaf ~child. None if a tree has a split or leaf that is not compiled here."""
    feature, threshold, left, right, flags, leaf_value = [], [], [], [], [], []
    node_start, leaf_start = [], []
    for tree in tree_info:
        node_start.append(len(feature))
        leaf_start.append(len(leaf_value))
        root = tree["tree_structure"]
        n_leaves = int(tree["num_leaves"])
        n_nodes = n_leaves - 1
        base = len(feature)
        feature.extend([0] * n_nodes)
        threshold.extend([0.0] * n_nodes)
        left.extend([0] * n_nodes)
        right.extend([0] * n_nodes)
        flags.extend([0] * n_nodes)
        leaves = [0.0] * n_leaves
        stack = [root]
        while stack:
            node = stack.pop()
            if "leaf_value" in node or "split_index" not in node:
                if "leaf_coeff" in node or "leaf_const" in node:
                    return None  # a linear tree
                leaves[int(node.get("leaf_index", 0))] = float(node["leaf_value"])
                continue
            if node.get("decision_type") != "<=":
                return None  # a categorical split
            at = base + int(node["split_index"])
            feature[at] = int(node["split_feature"])
            threshold[at] = float(node["threshold"])
            left[at] = _child(node["left_child"])
            right[at] = _child(node["right_child"])
            flags[at] = _MISSING[node.get("missing_type", "None")] | (
                _DEFAULT_LEFT if node.get("default_left") else 0
            )
            stack.extend((node["left_child"], node["right_child"]))
        leaf_value.extend(leaves)
    return {
        "feature": np.asarray(feature, dtype=np.int32),
        "threshold": np.asarray(threshold, dtype=np.float64),
        "left": np.asarray(left, dtype=np.int32),
        "right": np.asarray(right, dtype=np.int32),
        "flags": np.asarray(flags, dtype=np.int8),
        "node_start": np.asarray(node_start + [len(feature)], dtype=np.int64),
        "leaf_value": np.asarray(leaf_value, dtype=np.float64),
        "leaf_start": np.asarray(leaf_start, dtype=np.int64),
    }


def _child(node: dict) -> int:
    return int(node["split_index"]) if "split_index" in node else ~int(node.get("leaf_index", 0))


@njit(nogil=True, cache=True)
def _walk_stack(
    X,
    feature,
    threshold,
    left,
    right,
    flags,
    node_start,
    leaf_value,
    leaf_start,
    tree_start,
    output,
    scale,
    zero,
):
    """(rows × models): model m's trees are tree_start[m]..tree_start[m + 1] - 1, summed in their
    order, then its output function (0 raw, 1 sigmoid with `scale[m]`, 2 exp: the C library's
    exp, as LightGBM's, where numpy's own may differ in the last bit)."""
    n_rows = X.shape[0]
    n_models = tree_start.shape[0] - 1
    out = np.zeros((n_rows, n_models))
    for r in range(n_rows):
        for m in range(n_models):
            total = 0.0
            for t in range(tree_start[m], tree_start[m + 1]):
                first = node_start[t]
                if node_start[t + 1] == first:  # a tree of one leaf
                    total += leaf_value[leaf_start[t]]
                    continue
                node = 0
                while True:
                    at = first + node
                    x = np.float64(X[r, feature[at]])
                    flag = flags[at]
                    missing = flag & 3
                    if math.isnan(x) and missing != 2:
                        x = 0.0
                    if (missing == 1 and -zero <= x <= zero) or (missing == 2 and math.isnan(x)):
                        go_left = (flag & 4) != 0
                    else:
                        go_left = x <= threshold[at]
                    node = left[at] if go_left else right[at]
                    if node < 0:
                        total += leaf_value[leaf_start[t] + ~node]
                        break
            if output[m] == 1:
                total = 1.0 / (1.0 + math.exp(-scale[m] * total))
            elif output[m] == 2:
                total = math.exp(total)
            out[r, m] = total
    return out
