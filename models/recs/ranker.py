"""Second stage: features of (customer, candidate product) pairs and a LightGBM LambdaRank model over them.

The candidate sources (`models.recs.candidates`) each propose products with a score; the ranker learns,
from what customers bought after a cut-off, how to weigh those scores against what is known about
the customer and the product. One group per customer (LambdaRank optimises nDCG within a group).

Features (`FEATURE_NAMES`, all numeric, NaN = not known, which LightGBM routes on its own):
- per source: its score and its rank among that source's candidates (NaN when it did not propose it);
- customer × product: the customer's own (recency-weighted) interaction weight with it, their affinity for the product's category, the product's log price
  minus the customer's usual log price (and that gap in units of their spread), days since the
  customer last bought the product and its category, how often they bought it, how far into its
  replenishment cycle they are, the product's popularity in the customer's segment and on the
  customer's main channel;
- product: overall popularity, trend, log price, replenishment cycle, "no history yet";
- customer: total interaction weight, distinct products, number of sources that proposed the item.

The channel a request comes from is deliberately not a feature: the same customer and context must
get the same order on every channel, so the channel only filters (see `models.recs.rules`). The
customer's own main channel, which does not change between requests, stands in for it.

Building features is numpy only (gathers from CSR rows and per-item arrays), so one request's few
hundred candidates cost well under a millisecond; the same code builds the training set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

# Candidate sources, in the order their features appear.
SOURCES: tuple[str, ...] = ("als", "ease", "cooc", "popular", "trending", "replenish", "repeat", "content")

FEATURE_NAMES: tuple[str, ...] = (
    *(f"{s}_score" for s in SOURCES),
    *(f"{s}_rank" for s in SOURCES),
    "own_weight",
    "category_affinity",
    "log_price_gap",
    "price_gap_z",
    "days_since_item",
    "times_bought_item",
    "days_since_category",
    "replenish_ratio",
    "segment_popularity",
    "main_channel_popularity",
    "item_popularity",
    "item_trend",
    "log_price",
    "cycle_days",
    "is_new",
    "customer_weight",
    "customer_items",
    "n_sources",
)


class CSRRow:
    """One CSR row as plain arrays: what `gather`, `row_profiles` and `build_features` read of a
    one-row `csr_matrix` (indptr, indices, data, shape, nnz), without building a scipy matrix.

    `indices` must be sorted and unique, as in a canonical CSR. The single-request path of
    `models.recs.two_stage` (`models.recs._single_request`) passes these, so a request costs no scipy construction.
    """

    __slots__ = ("indices", "data", "indptr", "shape", "nnz")

    def __init__(self, indices: np.ndarray, data: np.ndarray, n_cols: int):
        self.indices = indices
        self.data = data
        self.nnz = len(indices)
        self.indptr = np.array([0, self.nnz], dtype=np.int64)
        self.shape = (1, n_cols)


def as_csr(matrix):
    """`matrix` as a CSR: CSR matrices and `CSRRow`s as they are, anything else converted."""
    if isinstance(matrix, CSRRow) or (sp.issparse(matrix) and matrix.format == "csr"):
        return matrix
    return sp.csr_matrix(matrix)


@dataclass
class RowProfiles:
    """What the batch rows (customers, with their session items) look like, one entry per row.

    `affinity` (rows × categories): share of the row's interaction weight per category;
    `price_mu` / `price_sigma`: weighted mean and spread of the log prices in the row (NaN when empty);
    `weight`, `n_items`: total interaction weight and distinct products.
    """

    affinity: np.ndarray
    price_mu: np.ndarray
    price_sigma: np.ndarray
    weight: np.ndarray
    n_items: np.ndarray


def row_profiles(
    rows: sp.csr_matrix, item_category: np.ndarray, n_categories: int, item_log_price: np.ndarray
):
    """`RowProfiles` from interaction rows (bincounts over the stored entries: no per-row loop)."""
    rows = as_csr(rows)
    n_rows, n_cat = rows.shape[0], max(n_categories, 1)
    row = np.repeat(np.arange(n_rows), np.diff(rows.indptr))
    w = rows.data.astype(np.float64)
    by_cat = np.bincount(row * n_cat + item_category[rows.indices], weights=w, minlength=n_rows * n_cat)
    by_cat = by_cat.reshape(n_rows, n_cat)
    weight = by_cat.sum(axis=1)
    logp = item_log_price[rows.indices]
    priced = np.isfinite(logp)
    wp = np.where(priced, w, 0.0)
    logp = np.where(priced, logp, 0.0)
    w_priced = np.bincount(row, weights=wp, minlength=n_rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        affinity = np.where(weight[:, None] > 0, by_cat / weight[:, None], 0.0)
        mu = np.bincount(row, weights=wp * logp, minlength=n_rows) / w_priced
        second = np.bincount(row, weights=wp * logp**2, minlength=n_rows) / w_priced
        sigma = np.sqrt(np.maximum(second - mu**2, 0.0))
    return RowProfiles(
        affinity=affinity,
        price_mu=np.where(w_priced > 0, mu, np.nan),
        price_sigma=np.where(w_priced > 0, sigma, np.nan),
        weight=weight,
        n_items=np.diff(rows.indptr).astype(np.float64),
    )


def gather(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """matrix[rows[q], cols[q]] for every q (0 where not stored).

    The CSR must have sorted column indices and no duplicates; then (row, column) keys of its
    entries are sorted and one binary search finds every pair.
    """
    out = np.zeros(len(rows))
    if len(rows) == 0 or matrix.nnz == 0:
        return out
    n_cols = matrix.shape[1]
    if matrix.shape[0] == 1:  # one row (a request): its column indices are the keys
        keys, wanted = matrix.indices, np.asarray(cols, dtype=np.int64)
    else:
        keys = (
            np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr)) * n_cols
            + matrix.indices
        )
        wanted = np.asarray(rows, dtype=np.int64) * n_cols + np.asarray(cols, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    hit = keys[pos] == wanted
    out[hit] = matrix.data[pos[hit]]
    return out


@dataclass
class CandidatePairs:
    """The candidates of a batch: one entry per (row, item), sorted by row then item.

    `scores[source]` / `ranks[source]`: the source's score of the item for that row (0 if none) and
    the item's 1-based rank among the source's candidates (NaN when the source did not propose it).
    """

    row: np.ndarray
    item: np.ndarray
    scores: dict[str, np.ndarray]
    ranks: dict[str, np.ndarray]


def build_features(
    pairs: CandidatePairs,
    profiles: RowProfiles,
    own_weights: sp.csr_matrix,
    last_age_days: sp.csr_matrix,
    n_purchases: sp.csr_matrix,
    row_segment: np.ndarray,
    row_main_channel: np.ndarray,
    item_category: np.ndarray,
    item_log_price: np.ndarray,
    item_cycle_days: np.ndarray,
    item_is_new: np.ndarray,
    item_popularity: np.ndarray,
    item_trend: np.ndarray,
    segment_popularity: np.ndarray,
    channel_popularity: np.ndarray,
) -> np.ndarray:
    """The feature matrix (pairs × `FEATURE_NAMES`, float32).

    `own_weights`: the batch rows of the interaction matrix (with the session items);
    `last_age_days` / `n_purchases` are the batch rows of `PurchaseHistory` (CSR, rows × items;
    ages already moved to the request time); `segment_popularity` (segments × items) and
    `channel_popularity` (channels × items) are indexed by `row_segment` / `row_main_channel`
    (-1 = unknown, NaN feature).
    """
    r, i = pairs.row, pairs.item
    cat = item_category[i]
    cols: dict[str, np.ndarray] = {}
    for s in SOURCES:
        cols[f"{s}_score"] = pairs.scores[s]
        cols[f"{s}_rank"] = pairs.ranks[s]
    cols["own_weight"] = gather(own_weights, r, i)
    cols["category_affinity"] = profiles.affinity[r, cat]
    gap = item_log_price[i] - profiles.price_mu[r]
    cols["log_price_gap"] = gap
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["price_gap_z"] = np.abs(gap) / np.maximum(profiles.price_sigma[r], 0.1)
    age = gather(last_age_days, r, i)
    cols["days_since_item"] = np.where(age > 0, age, np.nan)
    cols["times_bought_item"] = gather(n_purchases, r, i)
    cols["days_since_category"] = _days_since_category(last_age_days, item_category, r, cat)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["replenish_ratio"] = cols["days_since_item"] / item_cycle_days[i]
    seg, ch = row_segment[r], row_main_channel[r]
    cols["segment_popularity"] = _indexed(segment_popularity, seg, i)
    cols["main_channel_popularity"] = _indexed(channel_popularity, ch, i)
    cols["item_popularity"] = item_popularity[i]
    cols["item_trend"] = item_trend[i]
    cols["log_price"] = item_log_price[i]
    cols["cycle_days"] = item_cycle_days[i]
    cols["is_new"] = item_is_new[i].astype(np.float64)
    cols["customer_weight"] = np.log1p(profiles.weight[r])
    cols["customer_items"] = profiles.n_items[r]
    cols["n_sources"] = np.sum([~np.isnan(pairs.ranks[s]) for s in SOURCES], axis=0).astype(np.float64)
    # float64 columns side by side, then one cast (the same rounding as filling a float32 matrix)
    return np.stack([np.asarray(cols[name], dtype=np.float64) for name in FEATURE_NAMES], axis=1).astype(
        np.float32
    )


def _indexed(table: np.ndarray, group: np.ndarray, item: np.ndarray) -> np.ndarray:
    out = np.full(len(item), np.nan)
    ok = (group >= 0) & (group < len(table))
    if ok.any():
        out[ok] = table[group[ok], item[ok]]
    return out


def _days_since_category(
    last_age_days: sp.csr_matrix, item_category: np.ndarray, pair_row: np.ndarray, pair_cat: np.ndarray
) -> np.ndarray:
    """Days since the row's most recent purchase in the pair's category (NaN: never)."""
    ages = as_csr(last_age_days)
    n_rows = ages.shape[0]
    n_cat = int(item_category.max()) + 1 if len(item_category) else 1
    best = np.full(n_rows * n_cat, np.inf)
    if ages.nnz:
        row = np.repeat(np.arange(n_rows), np.diff(ages.indptr))
        np.minimum.at(best, row * n_cat + item_category[ages.indices], ages.data)
    out = best[pair_row * n_cat + pair_cat]
    return np.where(np.isfinite(out), out, np.nan)


# ------------------------------------------------------------------------------ the model
class LambdaRankModel:
    """LightGBM LambdaRank on candidate features, one query group per customer.

    A share `validation_share` of the groups (drawn with `random_state`) is held out for early
    stopping on nDCG@`eval_at`; the booster keeps the best iteration. Training is deterministic
    (`deterministic`, row-wise histograms, fixed seeds). Saved as LightGBM's text model plus a
    small json, never pickle.
    """

    def __init__(
        self,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 100,
        feature_fraction: float = 0.9,
        early_stopping_rounds: int = 30,
        validation_share: float = 0.1,
        eval_at: int = 10,
        truncation_level: int = 20,
        random_state: int = 0,
        num_threads: int = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_share = validation_share
        self.eval_at = eval_at
        self.truncation_level = truncation_level
        self.random_state = random_state
        self.num_threads = num_threads

    def _params(self) -> dict:
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [self.eval_at],
            # pairs are formed for the top `truncation` positions only: lists are 10 long, and the
            # pair count (truncation × group size) is what LambdaRank's time goes into
            "lambdarank_truncation_level": self.truncation_level,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "feature_fraction_seed": self.random_state,
            "seed": self.random_state,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }

    def fit(self, features: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray) -> LambdaRankModel:
        """Rows grouped contiguously by customer; `group_sizes` the rows per group, in order."""
        from models.fitting import train_booster

        group_sizes = np.asarray(group_sizes, dtype=np.int64)
        if group_sizes.sum() != len(features) or len(features) != len(labels):
            raise ValueError("features, labels and group_sizes do not describe the same rows")
        if len(group_sizes) == 0:
            raise ValueError("no training groups: no customer with a candidate that was bought")
        n_groups = len(group_sizes)
        rng = np.random.default_rng(self.random_state)
        n_valid = int(round(n_groups * self.validation_share)) if n_groups >= 20 else 0
        is_valid = np.zeros(n_groups, dtype=bool)
        is_valid[rng.choice(n_groups, n_valid, replace=False)] = True
        row_valid = np.repeat(is_valid, group_sizes)
        names = list(FEATURE_NAMES)
        # lgb.train with early stopping on the held-out groups (on the Dask cluster when one is active)
        booster = train_booster(
            self._params(),
            features[~row_valid],
            labels[~row_valid],
            group=group_sizes[~is_valid],
            num_boost_round=self.n_estimators,
            valid=(features[row_valid], labels[row_valid], group_sizes[is_valid]) if n_valid else None,
            early_stopping_rounds=self.early_stopping_rounds,
            feature_name=names,
        )
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        self.booster_ = booster
        self.feature_names_ = names
        self.validation_ndcg_ = (
            float(booster.best_score["valid_0"][f"ndcg@{self.eval_at}"]) if n_valid else float("nan")
        )
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0)
        # one thread for request-sized inputs: OpenMP start-up costs more than the trees
        threads = 1 if len(features) < 20_000 else self.num_threads
        return self.booster_.predict(features, num_iteration=self.best_iteration_, num_threads=threads)

    def feature_importance(self) -> dict[str, float]:
        """Total gain per feature, largest first."""
        gains = self.booster_.feature_importance(importance_type="gain", iteration=self.best_iteration_)
        pairs = sorted(zip(self.feature_names_, gains.tolist(), strict=True), key=lambda p: -p[1])
        return {name: round(gain, 3) for name, gain in pairs}

    def params(self) -> dict:
        return {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "early_stopping_rounds": self.early_stopping_rounds,
            "validation_share": self.validation_share,
            "eval_at": self.eval_at,
            "truncation_level": self.truncation_level,
            "random_state": self.random_state,
            "num_threads": self.num_threads,
        }

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.booster_.save_model(str(folder / "ranker.txt"), num_iteration=self.best_iteration_)
        meta = {
            "params": self.params(),
            "best_iteration": self.best_iteration_,
            "feature_names": self.feature_names_,
            "validation_ndcg": self.validation_ndcg_,
        }
        (folder / "ranker.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> LambdaRankModel:
        import lightgbm as lgb

        folder = Path(folder)
        meta = json.loads((folder / "ranker.json").read_text())
        if list(meta["feature_names"]) != list(FEATURE_NAMES):
            raise ValueError("the saved ranker was trained on other features: retrain")
        model = cls(**meta["params"])
        model.booster_ = lgb.Booster(model_file=str(folder / "ranker.txt"))
        model.best_iteration_ = int(meta["best_iteration"])
        model.feature_names_ = list(meta["feature_names"])
        model.validation_ndcg_ = float(meta["validation_ndcg"])
        return model
