"""The small interface every item-scoring model implements (in the spirit of `implicit`).

A model is fitted on a customer×product interaction matrix (CSR, rows = customers, columns =
products, values = interaction weights) and then scores products for rows of such a matrix.
Scoring from *rows* rather than from customer indices is what lets one interface serve known
customers, new customers with a few session items, and batch scoring alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp


class CannotTrain(ValueError):
    """Raised by a fit when the data at hand cannot support the model (too few rows, no products,
    no outcome to learn from, ...). The message says why in words a user can act on; `omni train`
    skips that family with this message instead of stopping (and exits 2 only when no family
    can be trained)."""


class ItemScorer(ABC):
    """Base class: `fit(interactions)` then `score(user_items, user_index)`."""

    @abstractmethod
    def fit(self, interactions: sp.csr_matrix) -> ItemScorer:
        """Learn from the full interaction matrix; returns self."""

    @abstractmethod
    def score(self, user_items: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        """Dense scores (n_rows × n_items) for each row of `user_items`.

        `user_index` gives, per row, the customer's row in the fitted matrix, or -1 for a
        customer the model has not seen (scored from `user_items` alone). None means all unseen.
        """


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices and scores per row, ties broken by the lower item index.

    `exclude` is a boolean mask of the same shape (True = never return). Rows with fewer than k
    eligible items return fewer valid entries; missing slots carry index -1 and score -inf.
    Deterministic ties matter: the same request must give the same list on every channel.

    The project's one top-k: the baselines and the two-stage recommender's sources
    (`models.recs`) both use it. Floating-point scores are compared in their own type (a float32
    row is not copied to float64: the same order, half the memory), and a row with fewer than k
    finite scores only sorts those, so the many "no opinion" items of a sparse source cost nothing.
    """
    scores = np.atleast_2d(np.asarray(scores))
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    if exclude is not None:
        scores = np.where(np.atleast_2d(exclude), -np.inf, scores)
    n_rows, n_items = scores.shape
    k = max(0, min(k, n_items))
    out_idx = np.full((n_rows, k), -1, dtype=np.int64)
    out_scores = np.full((n_rows, k), -np.inf)
    if k == 0:
        return out_idx, out_scores
    # the k-th best score per row; every item at or above it is a candidate (ties included), then an
    # exact sort by (score desc, index asc) on that small set. A row whose k-th best is -inf has
    # fewer than k finite scores: only those are candidates.
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    for row in range(n_rows):
        values = scores[row]
        if kth[row] == -np.inf:
            cand = np.flatnonzero(np.isfinite(values))
        else:
            cand = np.flatnonzero(values >= kth[row])
        cand_scores = values[cand]
        order = np.lexsort((cand, -cand_scores))[:k]
        chosen, chosen_scores = cand[order], cand_scores[order]
        valid = np.isfinite(chosen_scores)
        n_valid = int(valid.sum())
        out_idx[row, :n_valid] = chosen[valid]
        out_scores[row, :n_valid] = chosen_scores[valid]
    return out_idx, out_scores


# Questions about at most this many customers (one request) take dict look-ups instead of pandas.
FEW_IDS = 16


def isin_few(values, choices) -> np.ndarray:
    """`np.isin(values, choices)`; a request's few values by a set look-up (np.isin on an object
    array sorts and costs ~10 µs however small)."""
    values = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if len(values) <= FEW_IDS and values.ndim == 1:
        wanted = set(np.asarray(choices, dtype=object).ravel().tolist())
        return np.fromiter((v in wanted for v in values.tolist()), dtype=bool, count=len(values))
    return np.isin(values, choices)


_FLOAT64_MAX = float(np.finfo(np.float64).max)


def nan_to_num_few(values) -> np.ndarray:
    """`np.nan_to_num` of float64 `values` (NaN -> 0, ±inf -> ± the largest float64); a request's
    few values in Python (`np.nan_to_num` costs ~8 µs however small)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) > FEW_IDS:
        return np.nan_to_num(x)
    return np.array(
        [
            0.0 if v != v else (_FLOAT64_MAX if v == np.inf else (-_FLOAT64_MAX if v == -np.inf else v))
            for v in x.tolist()
        ],
        dtype=np.float64,
    )


def index_rows(index: dict, ids, small: int = 256) -> np.ndarray:
    """Row of each id in `index` (id string → row), -1 for an unknown id.

    A request asks for one or a few customers: looking them up in the dict directly costs
    microseconds, while `Series.map(dict)` first turns the whole dict (every customer) into a
    Series, several milliseconds per call. Large batches still go through pandas.
    """
    ids = np.asarray(ids, dtype=object).ravel()
    if len(ids) == 1:  # one request's customer: a dozen questions per decision
        return np.array([index.get(str(ids[0]), -1)], dtype=np.int64)
    if len(ids) <= small:
        return np.fromiter((index.get(str(i), -1) for i in ids), dtype=np.int64, count=len(ids))
    import pandas as pd

    return pd.Series(ids).astype(str).map(index).fillna(-1).astype(np.int64).to_numpy()


def read_model_meta(folder, filename: str, what: str, readable_formats: tuple[int, ...]) -> dict:
    """The JSON description a model folder opens with (every model class saves one), checked: a
    folder without it or written in a format this code cannot read is refused with a clear error."""
    import json
    from pathlib import Path

    meta_path = Path(folder) / filename
    if not meta_path.is_file():
        raise FileNotFoundError(f"not a {what} folder (no {filename}): {folder}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") not in readable_formats:
        raise ValueError(
            f"{what} format {meta.get('format_version')} is not one of {readable_formats}: retrain"
        )
    return meta
