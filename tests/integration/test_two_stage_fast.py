"""The single-request path of `TwoStageRecommender` (what `recommend` and the HTTP service use) gives
exactly the batch path's answer: same products, order, scores and reasons, on generated data.

The single-request path recomputes each source on plain arrays of one customer's rows; these tests
compare it with `recommend_many` (scipy matrices over a batch) request by request, with and without
session items, exclusions, filters and a channel, and check its building blocks bit for bit.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from models.recs._single_request import item_item_scores
from models.recs._top_k import top_dense, top_n_sparse


@pytest.fixture(scope="module")
def model(small_recommender):
    return small_recommender


def _batch_of_one(model, cid, k, exclude=(), context_items=(), **kwargs):
    return model.recommend_many(
        [cid], k, exclude=[list(exclude)], context_items=[list(context_items)], **kwargs
    )[0]


def _variants(model, rng, n):
    """n requests cycling through session items, exclusions, filters, channels and `now`."""
    sold = np.flatnonzero(~model.item_is_new_ & model.item_active_)
    categories = list(model.categories_)
    channels = [None, "web", "store", "app", "email", "not-a-channel"]
    out = []
    for i in range(n):
        kwargs = {"k": (10, 5, 20)[i % 3], "channel": channels[i % len(channels)]}
        if i % 4 == 1:
            kwargs["context_items"] = model.product_ids_[rng.choice(sold, 1 + i % 3, replace=False)].tolist()
        if i % 5 == 2:
            kwargs["exclude"] = model.product_ids_[rng.choice(sold, 5, replace=False)].tolist() + ["nope"]
        if i % 6 == 3:
            kwargs["filters"] = {"max_per_category": 2, "price_max": float(np.nanmedian(model.item_price_))}
        if i % 7 == 4:
            kwargs["filters"] = {"categories": categories[: max(1, len(categories) // 2)]}
        if i % 11 == 5:
            kwargs["filters"] = {"exclude_categories": categories[:1], "exclude_purchased": True}
        if i % 13 == 6:
            kwargs["now"] = model.as_of_ + np.timedelta64(3 + i % 20, "D")
        out.append(kwargs)
    return out


def test_single_requests_equal_the_batch_path(model):
    rng = np.random.default_rng(0)
    known = model.customer_ids_[model.customer_has_history_]
    without_events = model.customer_ids_[~model.customer_has_history_]
    ids = rng.choice(known, 300, replace=False).tolist() + without_events[:5].tolist() + ["nobody", "new-1"]
    seen = {"context": 0, "cold": 0, "reasons": set()}
    for cid, kwargs in zip(ids, _variants(model, rng, len(ids)), strict=True):
        fast = model.recommend(cid, **kwargs)
        assert fast == _batch_of_one(model, cid, **kwargs), (cid, kwargs)
        seen["context"] += "context_items" in kwargs
        seen["cold"] += fast.cold_start
        seen["reasons"] |= {r.split(":")[0] for r in fast.reasons}
    # the comparison covered session items, cold starts and every kind of reason
    assert seen["context"] > 50 and seen["cold"] >= 5
    assert {"personal", "popular", "similar_to", "bought_together"} <= seen["reasons"]


def test_single_requests_equal_one_large_batch(model):
    ids = model.customer_ids_[:400].tolist() + ["nobody"]
    batch = model.recommend_many(ids, k=10, channel="web")  # chunks of 256 rows
    assert [model.recommend(cid, k=10, channel="web") for cid in ids] == batch


def test_item_item_scores_are_the_sparse_product_bit_for_bit(model):
    rng = np.random.default_rng(1)
    n_items = len(model.product_ids_)
    for scorer in (model.ease_, model.cooc_):
        for _ in range(30):
            cols = np.sort(rng.choice(n_items, rng.integers(1, 40), replace=False))
            values = rng.choice(np.array([1.0, 5.0, 6.0], dtype=np.float32), len(cols))
            row = sp.csr_matrix((values, cols, [0, len(cols)]), shape=(1, n_items))
            expected = scorer.score_sparse(row).toarray()[0]
            got = item_item_scores(scorer, cols, values, n_items)
            assert got.dtype == np.float32 and np.array_equal(got, expected)
            block = rng.random(n_items) < 0.1
            expected_top = top_n_sparse(scorer.score_sparse(row), block[np.newaxis, :], 25)[0]
            assert np.array_equal(top_dense(got, block, 25), expected_top[expected_top >= 0])


def test_anchors_name_the_strongest_contribution_lowest_id_on_ties(model):
    def reference(scorer, items, weights, targets):  # the per-target loop the vectorised one replaced
        out = np.full(len(targets), -1, dtype=np.int64)
        order = np.argsort(items, kind="stable")
        items_sorted, weights_sorted = np.asarray(items)[order], np.asarray(weights)[order]
        t = scorer.neighbours_t_
        for q, j in enumerate(np.asarray(targets).tolist()):
            lo, hi = t.indptr[j], t.indptr[j + 1]
            if lo == hi or not len(items):
                continue
            cand = t.indices[lo:hi]
            pos = np.minimum(np.searchsorted(items_sorted, cand), len(items_sorted) - 1)
            hit = items_sorted[pos] == cand
            if not hit.any():
                continue
            contribution = t.data[lo:hi][hit] * weights_sorted[pos[hit]]
            if contribution.max() <= 0:
                continue
            out[q] = cand[hit][int(np.argmax(contribution))]
        return out

    rng = np.random.default_rng(2)
    n_items = len(model.product_ids_)
    for scorer in (model.ease_, model.cooc_):
        for _ in range(50):
            items = rng.choice(n_items, rng.integers(0, 30), replace=False)
            weights = rng.choice(np.array([1.0, 3.0, 0.5], dtype=np.float32), len(items))  # ties
            targets = rng.choice(n_items, 12)
            got = scorer.anchors(items, weights, targets)
            assert np.array_equal(got, reference(scorer, items, weights, targets))


def test_without_a_ranker_the_fused_order_is_the_same(model):
    import copy

    fused = copy.copy(model)
    fused.ranker_ = None  # reciprocal-rank fusion of the sources, as when there was nothing to learn
    rng = np.random.default_rng(3)
    ids = rng.choice(model.customer_ids_[model.customer_has_history_], 60, replace=False).tolist()
    for cid, kwargs in zip(ids, _variants(model, rng, len(ids)), strict=True):
        assert fused.recommend(cid, **kwargs) == _batch_of_one(fused, cid, **kwargs), (cid, kwargs)
