"""A LightGBM model's trees as flat arrays, walked by a compiled loop: request-sized predictions.

`lightgbm.Booster.predict` sets up a C++ predictor on every call (about 100 µs), and even its
single-row fast path costs about 20 µs a call through ctypes, for a few µs of tree walking. A
decision calls a dozen such models on one row each: most of its prediction time was this overhead.
`CompiledTrees` reads the trees once (`Booster.dump_model`) into flat arrays and walks them with a
numba loop: about 3 µs for one row of a 150-tree model.

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
_WALK_ARRAYS = ("feature", "threshold", "left", "right", "flags", "node_start", "leaf_value", "leaf_start")


class CompiledTrees:
    """The first `num_iteration` trees of a booster, as arrays (see the module's docstring)."""

    def __init__(self, arrays: dict, n_features: int, output: str, sigmoid: float = 1.0):
        self.arrays = arrays
        self.n_features = n_features
        self.output = output  # "raw", "sigmoid" or "exp"
        self.sigmoid = sigmoid
        # the walk's arguments in its order, looked up once (a request pays per attribute read)
        self._walk_args = tuple(arrays[name] for name in _WALK_ARRAYS) + (_ZERO,)

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
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[np.newaxis, :]
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {X.shape}")
        if X.dtype != np.float32 and X.dtype != np.float64:
            X = X.astype(np.float64)
        raw = _walk(X, *self._walk_args)
        if self.output == "sigmoid":
            return _sigmoid(raw, self.sigmoid)
        if self.output == "exp":
            return _exp(raw)
        return raw


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
def _walk(X, feature, threshold, left, right, flags, node_start, leaf_value, leaf_start, zero):
    n_rows = X.shape[0]
    n_trees = leaf_start.shape[0]
    out = np.zeros(n_rows)
    for r in range(n_rows):
        total = 0.0
        for t in range(n_trees):
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
        out[r] = total
    return out


@njit(nogil=True, cache=True)
def _sigmoid(raw, scale):
    out = np.empty_like(raw)
    for i in range(raw.shape[0]):
        out[i] = 1.0 / (1.0 + math.exp(-scale * raw[i]))
    return out


@njit(nogil=True, cache=True)
def _exp(raw):
    # the C library's exp, as LightGBM's (numpy's own exp may differ in the last bit)
    out = np.empty_like(raw)
    for i in range(raw.shape[0]):
        out[i] = math.exp(raw[i])
    return out
