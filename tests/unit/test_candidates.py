"""Candidate sources (models/recs/candidates.py) on tiny data whose right answer is known by construction."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.recs.candidates import (
    CoOccurrenceScorer,
    EASENeighbours,
    NewProductScorer,
    PurchaseHistory,
    SegmentChannelPopularity,
    basket_matrix,
    estimate_cycle_days,
    replenishment_scores,
    top_per_row,
)

END = pd.Timestamp("2026-03-01", tz="UTC")


def _events(rows):
    """rows: (customer, product, event_type, days before END, channel, order_id)."""
    frame = pd.DataFrame(
        rows, columns=["customer_id", "product_id", "event_type", "days", "channel", "order_id"]
    )
    frame["ts"] = END - pd.to_timedelta(frame.pop("days"), unit="D")
    return frame


def test_top_per_row_keeps_the_largest_with_ties_to_the_lower_column():
    m = sp.csr_matrix(np.array([[0.1, 0.5, 0.5, 0.2], [0.0, 0.0, 0.3, 0.0]]))
    got = top_per_row(m, 2).toarray()
    assert got.tolist() == [[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.3, 0.0]]
    got = top_per_row(sp.csr_matrix(np.array([[0.5, 0.5, 0.5]])), 2).toarray()
    assert got.tolist() == [[0.5, 0.5, 0.0]]


def test_baskets_are_orders_or_one_customers_day_on_a_channel():
    events = _events(
        [
            ("u1", "a", "purchase", 5, "web", "o1"),
            ("u1", "b", "purchase", 5, "web", "o1"),
            ("u1", "c", "purchase", 5, "web", "o2"),
            ("u2", "a", "add_to_cart", 3.0, "app", None),  # one cart session: a and b
            ("u2", "b", "add_to_cart", 3.0, "app", None),
            ("u2", "c", "add_to_cart", 1.0, "app", None),  # another day
            ("u2", "c", "view", 1.0, "app", None),  # views are not baskets
        ]
    )
    baskets = basket_matrix(events, np.array(["a", "b", "c"]))
    rows = sorted(tuple(r) for r in baskets.toarray().astype(int).tolist())
    assert rows == [(0, 0, 1), (0, 0, 1), (1, 1, 0), (1, 1, 0)]


def test_cooccurrence_finds_what_is_bought_together():
    # "lamp" always goes with "bulb"; "book" is bought alone or with anything at random
    rows = []
    for u in range(20):
        rows += [
            (f"u{u}", "lamp", "purchase", 10, "web", f"o{u}"),
            (f"u{u}", "bulb", "purchase", 10, "web", f"o{u}"),
        ]
        rows += [
            (f"u{u}", "book", "purchase", 5, "web", f"p{u}"),
            (f"u{u}", ["pen", "mug"][u % 2], "purchase", 5, "web", f"p{u}"),
        ]
    ids = np.array(["book", "bulb", "lamp", "mug", "pen"])
    scorer = CoOccurrenceScorer(n_neighbours=2).fit(basket_matrix(_events(rows), ids))
    lamp, bulb = 2, 1
    assert np.argmax(scorer.neighbours_[lamp].toarray()) == bulb
    scores = scorer.score(sp.csr_matrix(([1.0], ([0], [lamp])), shape=(1, 5)))
    assert np.argmax(scores[0]) == bulb
    # the customer's lamp explains the bulb; nothing of theirs explains the mug
    anchors = scorer.anchors(np.array([lamp, 0]), np.array([1.0, 1.0]), np.array([bulb, 3]))
    assert anchors[0] == lamp


def test_ease_neighbours_link_a_tribes_items_and_respect_max_items():
    # customers 0-9 use items 0-3, customers 10-19 items 4-7; item 8 is used once
    rows, cols = [], []
    for u in range(20):
        base = 0 if u < 10 else 4
        for i in range(4):
            if i != u % 4:
                rows.append(u)
                cols.append(base + i)
    rows.append(0)
    cols.append(8)
    x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(20, 9))
    ease = EASENeighbours(l2=1.0, n_neighbours=3).fit(x)
    neighbours_of_1 = set(ease.neighbours_[1].indices.tolist())
    assert neighbours_of_1 <= {0, 2, 3, 8} and {0, 2, 3} & neighbours_of_1
    assert not neighbours_of_1 & {4, 5, 6, 7}
    small = EASENeighbours(l2=1.0, max_items=4).fit(x)
    assert len(small.items_) == 4
    assert small.neighbours_[8].nnz == 0  # the rarest item is outside the fitted catalogue
    # a customer of tribe A without item 3 is pointed at item 3
    row = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 0], [0, 1, 2])), shape=(1, 9))
    assert np.argmax(ease.score(row)[0]) == 3


def test_popularity_per_channel_segment_and_trend():
    rows = []
    for u in range(10):  # store customers buy "tent" long ago, web customers buy "kite" recently
        rows.append((f"s{u}", "tent", "purchase", 60, "store", None))
        rows.append((f"w{u}", "kite", "purchase", 3, "web", None))
    rows += [("w0", "tent", "view", 3, "web", None)]
    events = _events(rows)
    segment = pd.Series({**{f"s{u}": 0 for u in range(10)}, **{f"w{u}": 1 for u in range(10)}})
    pop = SegmentChannelPopularity(window_days=90, trend_days=14).fit(
        events, np.array(["kite", "tent"]), segment, 2, ("store", "web"), END
    )
    kite, tent = 0, 1
    assert pop.by_channel_[0, tent] == 1.0 and pop.by_channel_[0, kite] == 0.0
    assert np.argmax(pop.popular(segment=-1, channel=1)) == kite
    assert np.argmax(pop.popular(segment=0, channel=0)) == tent
    assert pop.trend_[kite] > 0 > pop.trend_[tent]
    assert np.argmax(pop.trending()) == kite
    again = SegmentChannelPopularity.from_arrays(pop.arrays())
    assert np.array_equal(again.popular(1, 1), pop.popular(1, 1))


def test_purchase_history_and_cycles():
    rows = [(f"u{u}", "soap", "purchase", d, "store", None) for u in range(6) for d in (45, 35, 25, 15)]
    rows += [(f"u{u}", "sofa", "purchase", 40, "store", None) for u in range(6)]
    events = _events(rows)
    customers, products = np.array([f"u{u}" for u in range(6)]), np.array(["soap", "sofa"])
    history = PurchaseHistory().fit(events, customers, products, END)
    assert history.last_age_days_[0, 0] == pytest.approx(15.0)
    assert history.n_purchases_[0, 0] == 4 and history.n_purchases_[0, 1] == 1
    cycles = estimate_cycle_days(events, products, END)
    assert cycles[0] == pytest.approx(10.0) and np.isnan(cycles[1])


def test_replenishment_scores_are_zero_before_due_and_peak_at_one_cycle():
    got = replenishment_scores(np.array([0.5, 0.8, 1.0, 3.0, np.nan]), due_from=0.8)
    assert got[0] == 0.0 and got[4] == 0.0
    assert got[2] == pytest.approx(1.0)
    assert 0 < got[3] < got[1] < got[2]


def test_new_products_match_favourite_category_and_price_band():
    # items: 0 old, 1 new toy at 10, 2 new toy at 200, 3 new book at 10
    category = np.array([0, 0, 0, 1])
    log_price = np.log(np.array([10.0, 10.0, 200.0, 10.0]))
    scorer = NewProductScorer().fit(category, log_price, np.array([False, True, True, True]))
    assert scorer.new_items_.tolist() == [1, 2, 3]
    scores = scorer.score(np.array([[0.9, 0.1]]), np.array([np.log(11.0)]), np.array([0.2]))[0]
    assert np.argmax(scores) == 0  # the cheap toy: right category, right price
    assert scores[0] > scores[2] and scores[0] > scores[1]
