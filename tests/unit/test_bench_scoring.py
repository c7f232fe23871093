"""The scoring helpers of bench/complete_journey.py on tiny hand-made frames (no data set, no CLI)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import columns as c

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import complete_journey as cj  # noqa: E402


def purchases(rows) -> pd.DataFrame:
    """(customer, product, naive time) rows as the benchmark's purchase log."""
    frame = pd.DataFrame(rows, columns=[c.CUSTOMER_ID, c.PRODUCT_ID, c.TS])
    return frame.assign(**{c.TS: pd.to_datetime(frame[c.TS])})


TRAIN = purchases(
    [
        ("a", "p1", "2017-01-01 10:00"),
        ("a", "p1", "2017-03-01 10:30"),
        ("a", "p2", "2017-03-20 18:00"),
        ("b", "p1", "2017-02-01 09:00"),
        ("b", "p3", "2017-02-02 09:10"),
        ("c", "p3", "2017-02-03 23:00"),
    ]
)
TEST = purchases(
    [
        ("a", "p1", "2017-04-02 10:00"),  # a re-buy
        ("a", "p3", "2017-04-02 10:20"),  # new to a; same hour slot as the row above
        ("b", "p2", "2017-04-03 23:30"),  # new to b
        ("d", "p1", "2017-04-03 12:00"),  # no history before the split: not evaluated
    ]
)
SPLIT = pd.Timestamp("2017-04-01")


def test_evaluated_customers_need_history_and_a_window_purchase():
    assert cj.evaluated_customers(TRAIN, TEST).tolist() == ["a", "b"]


def test_relevant_sets_of_the_two_protocols():
    customers = cj.evaluated_customers(TRAIN, TEST)
    new = cj.relevant_pairs(TRAIN, TEST, customers, new_only=True)
    every = cj.relevant_pairs(TRAIN, TEST, customers, new_only=False)
    assert sorted(map(tuple, new.to_numpy())) == [("a", "p3"), ("b", "p2")]
    assert sorted(map(tuple, every.to_numpy())) == [("a", "p1"), ("a", "p3"), ("b", "p2")]


def test_split_time_leaves_the_last_days_to_the_test_window():
    ts = pd.Series(pd.to_datetime(["2017-01-01 00:00", "2017-01-30 12:00"]))
    split = cj.split_time_of(ts, 28)
    assert (ts < split).tolist() == [True, False]
    assert split == pd.Timestamp("2017-01-02 12:00:00.000001")


def test_repeat_weights_recent_purchases_more():
    customers = np.array(["a", "b", "z"])
    lists = cj.repeat_lists(TRAIN, customers, k=10, as_of=SPLIT, half_life_days=90.0)
    a = lists[lists[c.CUSTOMER_ID] == "a"].sort_values(c.RANK)[c.PRODUCT_ID].tolist()
    # p1: two purchases 90 and 31 days old (0.5 + 0.79) beats p2 bought once 12 days ago (0.91)
    assert a == ["p1", "p2"]
    # a shorter half-life lets the single recent purchase win
    short = cj.repeat_lists(TRAIN, customers, k=10, as_of=SPLIT, half_life_days=10.0)
    assert short[short[c.CUSTOMER_ID] == "a"].sort_values(c.RANK)[c.PRODUCT_ID].tolist() == ["p2", "p1"]
    assert "z" not in set(lists[c.CUSTOMER_ID])  # no history, no list
    assert lists.groupby(c.CUSTOMER_ID)[c.RANK].apply(list).to_dict()["b"] == [1, 2]


def test_popularity_counts_distinct_buyers_and_leaves_own_purchases_out():
    customers = np.array(["a", "c"])
    plain = cj.popularity_lists(TRAIN, customers, k=2, exclude_bought=False)
    # p1 and p3 have two buyers each (a's second p1 does not count), p2 one; ties: smaller id
    assert plain[plain[c.CUSTOMER_ID] == "c"][c.PRODUCT_ID].tolist() == ["p1", "p3"]
    new = cj.popularity_lists(TRAIN, customers, k=2, exclude_bought=True)
    assert new[new[c.CUSTOMER_ID] == "a"][c.PRODUCT_ID].tolist() == ["p3"]  # a bought p1 and p2
    assert new[new[c.CUSTOMER_ID] == "c"][c.PRODUCT_ID].tolist() == ["p1", "p2"]


def test_score_gives_zero_to_customers_without_a_list():
    relevant = pd.DataFrame({c.CUSTOMER_ID: ["a", "b"], c.PRODUCT_ID: ["p3", "p2"]})
    lists = cj.lists_frame(["a"], [["p3", "p9"]])
    metrics = cj.score(lists, relevant, k=2)
    assert metrics["recall@2"] == pytest.approx(0.5)  # a: 1 of 1, b: no list
    assert metrics["ndcg@2"] == pytest.approx(0.5)
    assert cj.score(cj.lists_frame([], []), relevant, k=2)["ndcg@2"] == 0.0


def test_rebuy_share_counts_list_rows_bought_before_the_split():
    lists = cj.lists_frame(["a", "b"], [["p1", "p3"], ["p2", "p3"]])
    assert cj.rebuy_share(lists, TRAIN, np.array(["a", "b"])) == pytest.approx(0.5)
    assert cj.rebuy_share(lists, TRAIN, np.array(["a"])) == pytest.approx(0.5)


def test_circular_distance_wraps_midnight():
    assert cj.circular_distance([23, 0, 5, 12], [0, 23, 5, 0]).tolist() == [1, 1, 0, 12]


def test_hour_slots_are_distinct_per_customer_and_clock_hour():
    slots = cj.hour_slots(TEST)
    a = slots[slots[c.CUSTOMER_ID] == "a"]
    assert a["hour"].tolist() == [10]  # 10:00 and 10:20 are one slot
    assert len(slots) == 3


def test_modal_hours_and_hit_rate_with_fallback():
    global_hour, per_customer = cj.modal_hours(cj.hour_slots(TRAIN))
    assert global_hour == 9  # b's two slots at 9, a at 10 and 18, c at 23
    assert per_customer.to_dict() == {"a": 10, "b": 9, "c": 23}
    truth = pd.DataFrame({c.CUSTOMER_ID: ["a", "b", "b", "z"], "hour": [11, 0, 8, 9]})
    # a: 11 vs 10 hit; b: 0 vs 9 miss, 8 vs 9 hit; z: no own hour, global 9: hit
    rate = cj.hour_hit_rate(truth["hour"], truth[c.CUSTOMER_ID], per_customer, fallback=global_hour)
    assert rate == pytest.approx(3 / 4)
    # without a fallback, a customer without a prediction is a miss; -1 (no such wall time) too
    truth.loc[0, "hour"] = -1
    rate = cj.hour_hit_rate(truth["hour"], truth[c.CUSTOMER_ID], per_customer)
    assert rate == pytest.approx(1 / 4)


def test_hours_in_zones_converts_wall_times_to_each_customers_zone():
    slots = pd.Series(pd.to_datetime(["2017-12-10 10:00", "2017-12-10 23:00", "2017-07-01 12:00"]))
    customers = pd.Series(["a", "b", "c"])
    zones = pd.Series({"a": "America/Chicago", "b": "UTC"})  # c: no plan, the source zone
    hours = cj.hours_in_zones(slots, customers, "America/Chicago", zones)
    assert hours.tolist() == [10, 5, 12]  # 23:00 CST is 05:00 UTC the next day


def test_cli_tail_drops_progress_bars_and_keeps_the_error():
    import _cli

    text = (
        "train:   0%|          | 0/8 [00:00<?, ?stage/s]\rtrain:  25%|██▌       | 2/8 "
        "[00:02<00:09,  1.54s/stage, recommender]error: no purchases; nothing was registered\n"
        "\rtrain:  25%|██▌       | 2/8 [00:07<00:21,  3.51s/stage, recommender]\n"
    )
    assert _cli.tail(text) == "error: no purchases; nothing was registered"


def test_movielens_served_lists_are_scored_as_they_come():
    import movielens as ml

    train = pd.DataFrame({c.CUSTOMER_ID: [1, 1, 2], c.PRODUCT_ID: [10, 11, 10], "rating": 4.0, c.TS: 0})
    test = pd.DataFrame({c.CUSTOMER_ID: [1, 2], c.PRODUCT_ID: [12, 11], "rating": 4.0, c.TS: 0})
    problem = ml.Problem.build(train, test)
    export = ml.user_export(train)
    assert list(export.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert export["timestamp"].iloc[0] == "1970-01-01T00:00:00Z"
    # the served frame has text ids (as `omni recommend` writes them); user 1's list repeats a
    # training item (10), which the protocol counts as a miss
    served = pd.DataFrame(
        {c.CUSTOMER_ID: ["1", "1", "2"], c.PRODUCT_ID: ["10", "12", "11"], c.RANK: [1, 2, 1]}
    )
    row = ml.score_served(problem, train, served)
    assert row["training_items_share"] == pytest.approx(1 / 3)
    assert row[f"recall@{ml.K}"] == pytest.approx(1.0)
    assert row[f"ndcg@{ml.K}"] == pytest.approx((1 / np.log2(3) + 1.0) / 2)
    assert row["users_with_list"] == 2
    assert all(v is None for v in ml.score_served(problem, train, None).values())
