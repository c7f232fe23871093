"""What orders a served list, and how it is chosen on validation (`models.recs.list_order`)."""

import numpy as np
import pytest

from models.recs import rules
from models.recs.list_order import ListOrder, choose_order, fusion_scores, ndcg_at_k


def test_orders_are_named_and_round_trip():
    assert ListOrder.ranker().name == "ranker"
    assert ListOrder.source("als").name == "als"
    fused = ListOrder.fusion({"ease": 0.5, "als": 1.0, "repeat": 0.0})
    assert fused.name == "fusion(als=1,ease=0.5)"  # zero weights dropped, sources sorted
    for order in (ListOrder.ranker(), ListOrder.source("repeat"), fused):
        assert ListOrder.from_dict(order.as_dict()) == order
    with pytest.raises(ValueError):
        ListOrder.fusion({"als": 0.0})


def test_a_source_alone_orders_by_its_ranks_and_the_rest_follow_the_plain_fusion():
    ranks = {"als": np.array([2.0, 1.0, np.nan, np.nan]), "ease": np.array([np.nan, np.nan, 1.0, 2.0])}
    score = fusion_scores(ListOrder.source("als"), ranks, ("als", "ease"))
    assert list(np.argsort(-score)) == [1, 0, 2, 3]  # als's order, then ease's for the rest


def _reference_ndcg(rows, items, scores, reserved, codes, n_relevant, n_items, k, slots):
    """nDCG@k through the served path's own rule (`rules.select_positions`), row by row."""
    values = []
    relevant = set(codes.tolist())
    for r in range(len(n_relevant)):
        if n_relevant[r] == 0:
            continue
        sel = rows == r
        order = np.lexsort((items[sel], -scores[sel]))
        ranked, flags = items[sel][order], reserved[sel][order]
        final = ranked[rules.select_positions(np.zeros(len(ranked), int), k, None, flags, slots)]
        dcg = sum(1 / np.log2(p + 2) for p, i in enumerate(final) if r * n_items + i in relevant)
        values.append(dcg / sum(1 / np.log2(p + 2) for p in range(min(n_relevant[r], k))))
    return float(np.mean(values))


@pytest.mark.parametrize("slots", [0, 1])
def test_validation_ndcg_equals_the_served_lists_ndcg(slots):
    rng = np.random.default_rng(0)
    n_rows, n_items, k = 6, 40, 10
    for _ in range(100):
        sizes = rng.integers(0, 25, n_rows)
        rows = np.repeat(np.arange(n_rows), sizes)
        items = np.concatenate([rng.choice(n_items, n, replace=False) for n in sizes])
        scores = rng.random(len(rows))
        reserved = rng.random(len(rows)) < 0.1
        codes = np.unique([r * n_items + i for r in range(n_rows) for i in rng.choice(n_items, 5)])
        n_relevant = np.bincount(codes // n_items, minlength=n_rows)
        got = ndcg_at_k(rows, items, scores, codes, n_relevant, n_items, k, reserved, slots)
        want = _reference_ndcg(rows, items, scores, reserved, codes, n_relevant, n_items, k, slots)
        assert got == pytest.approx(want, abs=1e-12)


def test_the_best_order_on_validation_is_chosen_and_a_tie_goes_to_the_simpler():
    values = {"als": 0.30, "ease": 0.20, "repeat": 0.10, "ranker": 0.35}

    def evaluate(order):
        if order.kind == "ranker":
            return values["ranker"]
        weights = dict(order.weights)
        return max(values[s] for s in weights) - 0.01 * (len(weights) - 1)  # fusions only cost here

    choice = choose_order(evaluate, ["als", "ease", "repeat"], has_ranker=True)
    assert choice.best == ListOrder.ranker()
    values["ranker"] = 0.30  # as good as ALS alone: the simpler wins
    choice = choose_order(evaluate, ["als", "ease", "repeat"], has_ranker=True)
    assert choice.best == ListOrder.source("als")
    assert choice.table()["als"] == 0.30 and "ranker" in choice.table()


def test_a_fusion_is_kept_only_when_it_beats_its_parts():
    def evaluate(order):
        weights = dict(order.weights) if order.kind == "fusion" else {}
        if set(weights) == {"als", "ease"} and weights["ease"] == 0.5 * weights["als"]:
            return 0.5
        return {"als": 0.4, "ease": 0.3}.get(next(iter(weights)), 0.0) if len(weights) == 1 else 0.1

    choice = choose_order(evaluate, ["als", "ease"], has_ranker=False)
    assert choice.best == ListOrder.fusion({"als": 1.0, "ease": 0.5})


def test_the_fast_row_order_is_the_lexsort_order():
    from models.recs.list_order import _row_then_score_order

    rng = np.random.default_rng(3)
    rows = np.repeat(np.arange(50), 40)
    items = np.concatenate([np.sort(rng.choice(1000, 40, replace=False)) for _ in range(50)])
    for score in (
        rng.random(len(rows)),
        rng.integers(0, 5, len(rows)).astype(float),
        -rng.random(len(rows)) * 1e6,
    ):
        fast = _row_then_score_order(rows, items, score)
        assert np.array_equal(fast, np.lexsort((items, -score, rows)))


def test_of_two_fusions_that_tie_the_one_with_fewer_sources_wins():
    def evaluate(order):
        weights = dict(order.weights) if order.kind == "fusion" else {}
        if {"ease", "cooc"} <= set(weights):
            return 0.30  # content changes nothing once ease and cooc are there
        if set(weights) == {"ease", "content"}:
            return 0.29
        return (
            {"ease": 0.28, "content": 0.1, "cooc": 0.05}.get(next(iter(weights)), 0.0)
            if len(weights) == 1
            else 0.2
        )

    choice = choose_order(evaluate, ["ease", "content", "cooc"], has_ranker=False)
    assert choice.best.kind == "fusion" and set(dict(choice.best.weights)) == {"ease", "cooc"}
