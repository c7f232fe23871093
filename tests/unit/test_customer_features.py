"""Customer features on a hand-made history whose answers are worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from features.customer_features import build_customer_features, local_time_parts


@pytest.fixture()
def history():
    ts = pd.to_datetime(
        [
            "2026-03-01T10:00:00+00:00",  # a: view on web
            "2026-03-02T10:00:00+00:00",  # a: purchase in store, order o1
            "2026-03-02T10:05:00+00:00",  # a: purchase in store, same order o1
            "2026-03-10T18:00:00+00:00",  # a: purchase in app, order o2
            "2026-03-11T09:00:00+00:00",  # a: return in store of o2
            "2026-03-05T12:00:00+00:00",  # b: view in app only
        ]
    )
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "a", "a", "b"],
            "ts": ts,
            "channel": ["web", "store", "store", "app", "store", "app"],
            "event_type": ["view", "purchase", "purchase", "purchase", "return", "view"],
            "product_id": ["p1", "p1", "p2", "p3", "p3", "p1"],
            "quantity": [1.0, 1.0, 3.0, 1.0, -1.0, 1.0],
            "amount": [0.0, 10.0, 30.0, 20.0, -20.0, 0.0],
            "order_id": [None, "o1", "o1", "o2", "o2", None],
        }
    )
    customers = pd.DataFrame({"customer_id": ["a", "b", "c"], "timezone": ["Asia/Tokyo", "UTC", "UTC"]})
    products = pd.DataFrame({"product_id": ["p1", "p2", "p3"], "category": ["toys", "toys", "books"]})
    return events, customers, products


def test_rfm_channels_hours_and_categories(history):
    events, customers, products = history
    as_of = pd.Timestamp("2026-03-20T10:00:00+00:00")
    f = build_customer_features(events, customers, products, as_of=as_of).set_index("customer_id")
    assert list(f.index) == ["a", "b", "c"]  # c has no events but is a customer
    assert f.loc["a", "recency_days"] == pytest.approx(9 + 16 / 24)  # last purchase 03-10 18:00
    assert np.isnan(f.loc["b", "recency_days"])
    assert f.loc["a", "frequency"] == 2  # orders o1 and o2
    assert f.loc["a", "monetary"] == pytest.approx(60 - 20)
    assert f.loc["a", "n_events"] == 5
    assert f.loc["a", "events_store"] == pytest.approx(3 / 5)
    assert f.loc["b", "events_app"] == pytest.approx(1.0)
    # Tokyo is UTC+9: 10:00 UTC is 19:00 local
    assert f.loc["a", "hour_19"] == pytest.approx(3 / 5)  # 10:00, 10:00 and 10:05 UTC
    assert f.loc["b", "hour_12"] == pytest.approx(1.0)
    assert f.loc["a", "cat_toys"] == pytest.approx(4 / 5)  # quantities 1 + 3 toys, 1 book
    assert f.loc["c", "n_events"] == 0


def test_as_of_ignores_later_events(history):
    events, customers, products = history
    f = build_customer_features(events, customers, products, as_of=pd.Timestamp("2026-03-03T00:00:00+00:00"))
    f = f.set_index("customer_id")
    assert f.loc["a", "n_events"] == 3
    assert f.loc["a", "monetary"] == pytest.approx(40)
    assert f.loc["b", "n_events"] == 0


def test_local_time_respects_daylight_saving():
    # New York: EST (UTC-5) before 2026-03-08, EDT (UTC-4) after
    ts = pd.Series(pd.to_datetime(["2026-03-07T15:00:00+00:00", "2026-03-09T15:00:00+00:00"]))
    hours, weekdays = local_time_parts(ts, pd.Series(["America/New_York"] * 2))
    assert hours.tolist() == [10, 11]
    assert weekdays.tolist() == [5, 0]  # Saturday, Monday


def test_positions_and_mapped_look_up_each_distinct_value_like_pandas():
    from features.codes import mapped, positions

    values = pd.Series(["b", "a", None, "zz", "b", "a"], dtype="str")
    index = pd.Index(["a", "b", "c"])
    assert positions(index, values).tolist() == [1, 0, -1, -1, 1, 0]
    assert positions(index, pd.Series([], dtype="str")).tolist() == []
    weights = {"a": 2.0, "b": 0.5}
    assert mapped(values, weights, 0.0).tolist() == values.map(weights).fillna(0.0).tolist()
