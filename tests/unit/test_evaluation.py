"""Ranking metrics on cases whose answer is worked out by hand."""

import math

import pandas as pd
import pytest

from training.evaluation import ranking_metrics


def _recs(rows):
    return pd.DataFrame(rows, columns=["customer_id", "product_id", "rank"])


def test_perfect_and_empty_lists():
    rel = pd.DataFrame({"customer_id": ["a", "a", "b"], "product_id": ["x", "y", "z"]})
    recs = _recs([("a", "x", 1), ("a", "y", 2), ("b", "q", 1)])
    m = ranking_metrics(recs, rel, k=2, catalogue_size=10)
    # a: both hits at ranks 1-2 → ndcg 1, recall 1, AP 1; b: nothing → 0
    assert m["ndcg@2"] == pytest.approx(0.5)
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx(0.5)
    assert m["coverage"] == pytest.approx(3 / 10)


def test_hit_at_second_rank():
    rel = pd.DataFrame({"customer_id": ["a"], "product_id": ["y"]})
    recs = _recs([("a", "x", 1), ("a", "y", 2), ("a", "w", 3)])
    m = ranking_metrics(recs, rel, k=3)
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(3))
    assert m["map"] == pytest.approx(0.5)
    assert m["precision@3"] == pytest.approx(1 / 3)


def test_map_divides_by_all_relevant_items():
    rel = pd.DataFrame({"customer_id": ["a"] * 4, "product_id": ["x", "y", "z", "w"]})
    recs = _recs([("a", "x", 1)])
    assert ranking_metrics(recs, rel, k=1)["map"] == pytest.approx(1 / 4)


def test_customer_without_recommendations_counts_as_zero():
    rel = pd.DataFrame({"customer_id": ["a", "b"], "product_id": ["x", "x"]})
    recs = _recs([("a", "x", 1)])
    assert ranking_metrics(recs, rel, k=5)["recall@5"] == pytest.approx(0.5)


def test_no_relevant_items_is_an_error():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        ranking_metrics(_recs([("a", "x", 1)]), pd.DataFrame(columns=["customer_id", "product_id"]))
