"""What `TwoStageRecommender.fit` learns its rankers and chooses its served orders from
(`models.recs.two_stage`): an earlier state of the sources (a "stage", fitted before some known
purchases), the known purchases as labels, the candidates of the labelled customers with their
features (`CandidateSet`, built once by the batch path), a LambdaRank model per list kind from the
training customers (`learn_ranker`) and the order with the best nDCG@10 on the held-out ones
(`choose_served`, `models.recs.list_order`).

Every function takes the recommender being fitted (`rec`: its parameters) or the stage first; the
recommender itself decides what it keeps.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from features import columns as c
from features.codes import positions
from models.recs import rules
from models.recs._batch import candidates, prepare
from models.recs.list_order import MIN_GAIN, ListOrder, OrderChoice, choose_order, fusion_scores, ndcg_at_k
from models.recs.ranker import FEATURE_NAMES, SOURCES, LambdaRankModel, gather


class CandidateSet(NamedTuple):
    """The candidates of some customers of a label window (`candidate_set`):
    `pair_row` indexes `customers` (sorted), `bought` marks the customer's own bought products
    (absent from the "new" list); per list kind, `y` says which were bought in the window,
    `label_codes` are those customers' labels (row · n_items + item), `labels_per_row` their
    count per customer. `pairs(kind)`: which candidates belong to that kind's list."""

    customers: np.ndarray
    pair_row: np.ndarray
    pair_item: np.ndarray
    ranks: dict[str, np.ndarray]
    features: np.ndarray
    bought: np.ndarray
    y: dict[str, np.ndarray]
    label_codes: dict[str, np.ndarray]
    labels_per_row: dict[str, np.ndarray]

    def pairs(self, kind: str) -> np.ndarray:
        return ~self.bought if kind == "new" else np.ones(len(self.pair_row), dtype=bool)


def candidate_set(stage, customers: np.ndarray, labels: dict[str, np.ndarray]) -> CandidateSet:
    """Every candidate of `customers` (sorted rows of the earlier state `stage`) for the default
    list, with its features, whether the customer had bought it (`bought`: the list without
    bought products is the rest) and its label in each list kind (`labels[kind]`: codes
    row · n_items + item)."""
    n_items = len(stage.product_ids_)
    rows, items, feats, bought = [], [], [], []
    ranks: dict[str, list] = {s: [] for s in SOURCES}
    for start in range(0, len(customers), 512):
        idx = customers[start : start + 512]
        batch = prepare(stage, idx, None, None, rules.Filters(), 0.0)
        pairs, features = candidates(stage, batch)
        rows.append(pairs.row + start)
        items.append(pairs.item)
        feats.append(features)
        bought.append(gather(batch.ages, pairs.row, pairs.item) > 0)
        for s in SOURCES:
            ranks[s].append(pairs.ranks[s])
    pair_row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    pair_item = np.concatenate(items) if items else np.zeros(0, np.int64)
    codes = pair_row * 0 if not len(pair_row) else customers[pair_row] * n_items + pair_item
    kind_labels = {kind: label[np.isin(label // n_items, customers)] for kind, label in labels.items()}
    return CandidateSet(
        customers=np.asarray(customers, dtype=np.int64),
        pair_row=pair_row,
        pair_item=pair_item,
        ranks={s: np.concatenate(v) if v else np.zeros(0) for s, v in ranks.items()},
        features=np.concatenate(feats) if feats else np.zeros((0, len(FEATURE_NAMES)), np.float32),
        bought=np.concatenate(bought) if bought else np.zeros(0, dtype=bool),
        y={kind: np.isin(codes, label).astype(np.float64) for kind, label in kind_labels.items()},
        label_codes=kind_labels,
        labels_per_row={
            kind: np.bincount(np.searchsorted(customers, label // n_items), minlength=len(customers))
            for kind, label in kind_labels.items()
        },
    )


def window_labels(stage, window: pd.DataFrame) -> dict[str, np.ndarray]:
    """Sorted codes row · n_items + item of the (earlier) state `stage`'s customers' purchases in
    `window`: "all" of them, and "new" (products the customer had not bought before)."""
    buys = window[(window[c.EVENT_TYPE] == "purchase") & window[c.PRODUCT_ID].notna()]
    row = positions(pd.Index(stage.customer_ids_), buys[c.CUSTOMER_ID])
    col = positions(pd.Index(stage.product_ids_), buys[c.PRODUCT_ID])
    ok = (row >= 0) & (col >= 0)
    n_items = len(stage.product_ids_)
    codes = np.unique(row[ok].astype(np.int64) * n_items + col[ok])
    bought = stage.last_age_days_.tocoo()
    before = np.unique(bought.row.astype(np.int64) * n_items + bought.col)
    return {"all": codes, "new": np.setdiff1d(codes, before, assume_unique=True)}


def returning_customers(label_rows: np.ndarray, has_history: np.ndarray) -> np.ndarray:
    """The distinct customers among `label_rows` with history before the labels."""
    rows = np.unique(label_rows)
    return rows[has_history[rows]]


def split_label_customers(rec, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) rows among `pool` (customers with history and labels):
    disjoint seeded samples of at most `max_train_customers` / `max_validation_customers`;
    from a smaller pool, `validation_share` of it is held out (none below ten customers:
    nothing could be told apart)."""
    rng = np.random.default_rng(rec.random_state)
    pool = rng.permutation(pool)
    if len(pool) >= rec.max_train_customers + rec.max_validation_customers:
        n_valid = rec.max_validation_customers
    elif len(pool) >= 10:
        n_valid = int(round(len(pool) * rec.validation_share))
    else:
        n_valid = 0
    validation = np.sort(pool[:n_valid])
    train = np.sort(pool[n_valid:][: rec.max_train_customers])
    return train, validation


def learn_ranker(
    rec, examples: CandidateSet, customers: np.ndarray, kind: str
) -> tuple[LambdaRankModel | None, dict]:
    """A LambdaRank model of the `kind` list (with `rec`'s parameters) from the candidates of
    `customers` in `examples` (one group per customer with a bought candidate: a group without one
    teaches LambdaRank nothing), and a summary of its training set; None when no customer had a
    candidate that was bought."""
    in_kind = examples.pairs(kind)
    y = examples.y[kind]
    keep_rows = np.isin(examples.customers, customers)
    positives = np.bincount(examples.pair_row[in_kind], weights=y[in_kind], minlength=len(examples.customers))
    groups_mask = keep_rows & (positives > 0)
    pairs = in_kind & groups_mask[examples.pair_row]
    groups = np.bincount(examples.pair_row[pairs], minlength=len(examples.customers))[groups_mask]
    wanted = int(examples.labels_per_row[kind][keep_rows].sum())
    found = int(positives[keep_rows].sum())
    info = {
        "train_customers": int(keep_rows.sum()),
        "train_groups": int(len(groups)),
        "train_rows": int(pairs.sum()),
        "label_pairs": wanted,
        # share of the label purchases the candidate sources proposed: the ranker's ceiling
        "candidate_recall": round(found / wanted, 4) if wanted else float("nan"),
        "mean_candidates": round(float(pairs.sum() / max(len(groups), 1)), 1),
    }
    if not len(groups):
        return None, info
    ranker = LambdaRankModel(
        n_estimators=rec.n_estimators,
        learning_rate=rec.learning_rate,
        num_leaves=rec.num_leaves,
        min_child_samples=rec.min_child_samples,
        random_state=rec.random_state,
        num_threads=rec.num_threads,
    ).fit(examples.features[pairs], y[pairs], groups)
    return ranker, info


def choose_served(
    rec,
    stage,
    examples: CandidateSet,
    rows: np.ndarray,
    ranker: LambdaRankModel | None,
    kind: str,
) -> OrderChoice | None:
    """The order of the `kind` list with the best nDCG@10 on the held-out customers `rows`
    (their candidates in `examples`, as served: the same blocking and sources)."""
    n_items = len(stage.product_ids_)
    keep_rows = np.isin(examples.customers, rows) & (examples.labels_per_row[kind] > 0)
    if not keep_rows.any():
        return None
    local_of = np.cumsum(keep_rows) - 1
    pairs = examples.pairs(kind) & keep_rows[examples.pair_row]
    pair_row = local_of[examples.pair_row[pairs]]
    pair_item = examples.pair_item[pairs]
    ranks = {s: r[pairs] for s, r in examples.ranks.items()}
    # what may take a place reserved for a new product, as `_top_k.reserved_candidates` says when serving
    reserved = stage.item_is_new_[pair_item] & ~np.isnan(ranks["content"])
    ranker_scores = ranker.predict(examples.features[pairs]) if ranker is not None else None
    label_codes = examples.label_codes[kind]
    relevant_rows = label_codes // n_items
    kept = np.flatnonzero(keep_rows)
    at = np.searchsorted(examples.customers[kept], relevant_rows)
    found = (at < len(kept)) & (examples.customers[kept][np.minimum(at, len(kept) - 1)] == relevant_rows)
    relevant = np.sort(at[found].astype(np.int64) * n_items + label_codes[found] % n_items)
    n_relevant = np.bincount(at[found], minlength=len(kept))

    def evaluate(order: ListOrder, slots: int = rec.new_product_slots) -> float:
        score = ranker_scores if order.kind == "ranker" else fusion_scores(order, ranks, SOURCES)
        return ndcg_at_k(pair_row, pair_item, score, relevant, n_relevant, n_items, 10, reserved, slots)

    # a source that proposed nothing here is no alternative (its "list" is the tie-break alone)
    proposing = [s for s in SOURCES if np.isfinite(ranks[s]).any()]
    choice = choose_order(evaluate, proposing or list(SOURCES), has_ranker=ranker is not None)
    if rec.new_product_slots > 0:
        # the places kept for products without history stay only where they cost nothing on
        # validation: in a catalogue where such products are dead stock, they only cost
        without = evaluate(choice.best, 0)
        with_slots = dict(choice.tried)[choice.best]
        choice.slots = rec.new_product_slots if with_slots >= without - MIN_GAIN else 0
        choice.slot_scores = {"with_new_product_slots": with_slots, "without": without}
    return choice
