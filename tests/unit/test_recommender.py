"""The recommender on tiny data whose right answer is known by construction."""

import numpy as np
import pandas as pd
import pytest

from features.interactions import build_interactions
from models.base import top_k
from models.recs.baselines import ProductRecommender


def _events(rows):
    frame = pd.DataFrame(rows, columns=["customer_id", "product_id", "event_type"])
    frame["ts"] = pd.Timestamp("2026-01-01", tz="UTC")
    frame["channel"] = "web"
    return frame


def _tribe_events() -> pd.DataFrame:
    # customers 0-19 buy from group A (a0..a4), customers 20-39 from group B (b0..b4); each customer
    # skips one item of the group, which must then come first in their list.
    rows = []
    for u in range(40):
        group = "a" if u < 20 else "b"
        for i in range(5):
            if i != u % 5:
                rows.append((f"u{u}", f"{group}{i}", "purchase"))
    rows.append(("u0", "z-unpopular", "view"))
    return _events(rows)


TRIBE_ALS = dict(factors=4, iterations=20, regularization=0.01, random_state=0)


@pytest.fixture(scope="module")
def two_tribes():
    matrix = build_interactions(_tribe_events(), half_life_days=None)
    return ProductRecommender(**TRIBE_ALS).fit(matrix)


def test_recommends_the_missing_item_of_the_customers_group(two_tribes):
    for u in (1, 7, 23, 38):
        group = "a" if u < 20 else "b"
        got = two_tribes.recommend(f"u{u}", k=1)
        assert got.product_ids == [f"{group}{u % 5}"]
        assert not got.cold_start
        assert got.reasons == ["personal"]


def test_bought_items_are_never_recommended(two_tribes):
    got = two_tribes.recommend("u3", k=20)
    bought = {f"a{i}" for i in range(5) if i != 3}
    assert not bought & set(got.product_ids)


def test_unknown_customer_gets_popular_items_and_cold_start_flag(two_tribes):
    got = two_tribes.recommend("someone-new", k=3)
    assert got.cold_start
    assert got.reasons == ["popular"] * 3
    assert "z-unpopular" not in got.product_ids


def test_context_items_fold_a_new_customer_in(two_tribes):
    got = two_tribes.recommend("someone-new", k=3, context_items=["b1", "b2"])
    assert not got.cold_start
    assert set(got.product_ids) <= {"b0", "b1", "b2", "b3", "b4"}  # tribe B, carted items included


def test_exclusions_and_inactive_products(two_tribes, tmp_path):
    got = two_tribes.recommend("u1", k=3, exclude=["a1"])
    assert "a1" not in got.product_ids


def test_save_load_roundtrip_gives_identical_lists(two_tribes, tmp_path):
    two_tribes.save(tmp_path / "rec")
    loaded = ProductRecommender.load(tmp_path / "rec")
    for cid in ("u1", "u25", "nobody"):
        a, b = two_tribes.recommend(cid, k=5), loaded.recommend(cid, k=5)
        assert a.product_ids == b.product_ids
        assert np.allclose(a.scores, b.scores)


def test_inactive_products_are_filtered():
    events = _events([("u1", "p1", "purchase"), ("u2", "p2", "purchase"), ("u2", "p3", "purchase")])
    matrix = build_interactions(events, half_life_days=None)
    rec = ProductRecommender(factors=2, iterations=2).fit(matrix, inactive_product_ids=np.array(["p2"]))
    assert "p2" not in rec.recommend("u1", k=5).product_ids


def test_top_k_breaks_ties_by_index_and_skips_excluded():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
    idx, vals = top_k(scores, 3, exclude=np.array([[False, False, True, False, False]]))
    assert idx.tolist() == [[1, 4, 3]]
    assert vals.tolist() == [[3.0, 3.0, 2.0]]
    idx, _ = top_k(np.array([[1.0, 2.0]]), 5, exclude=np.array([[True, False]]))
    assert idx.tolist() == [[1, -1]]


def test_returns_cancel_purchases_in_the_matrix():
    events = _events([("u1", "p1", "purchase"), ("u1", "p1", "return"), ("u1", "p2", "view")])
    m = build_interactions(events, half_life_days=None)
    dense = m.matrix.toarray()
    assert dense[0, list(m.product_ids).index("p1")] == pytest.approx(1.0)  # 5 - 4
    assert dense[0, list(m.product_ids).index("p2")] == pytest.approx(1.0)


def test_a_shared_als_fitted_with_extra_empty_rows_serves_the_same_customers(two_tribes):
    import scipy.sparse as sp

    from models.recs.als import ALSScorer

    # the ALS of a model that also has rows for customers without events (empty rows), in
    # another order: the recommender picks each of its customers' rows by id
    matrix = build_interactions(_tribe_events(), half_life_days=None)
    ids = np.asarray(matrix.customer_ids, dtype=str)
    all_ids = np.concatenate([["zz-no-events"], ids[::-1], ["aa-no-events"]])
    rows = pd.Index(ids).get_indexer(all_ids)
    place = sp.csr_matrix(
        (np.ones(len(ids), np.float32), (np.flatnonzero(rows >= 0), rows[rows >= 0])),
        shape=(len(all_ids), len(ids)),
    )
    wide = ALSScorer(**TRIBE_ALS).fit(place @ matrix.matrix)
    shared = ProductRecommender(**TRIBE_ALS).fit(matrix, fitted_als=(wide, all_ids))
    for cid in ("u1", "u25"):
        assert np.array_equal(
            shared.als_.model_.user_factors[shared.customer_index_[cid]],
            wide.model_.user_factors[pd.Index(all_ids).get_loc(cid)],
        )
    assert shared.recommend("u7", k=1).product_ids == ["a2"]
    with pytest.raises(ValueError, match="parameters"):
        ProductRecommender(**{**TRIBE_ALS, "factors": 8}).fit(matrix, fitted_als=(wide, all_ids))
    with pytest.raises(ValueError, match="a row for every customer"):
        ProductRecommender(**TRIBE_ALS).fit(matrix, fitted_als=(wide, all_ids[:5]))
