"""Tests of the unified customer profile: RFM scores, segment and tier rules, leak-free history
features, price sensitivity, consent, replenishment and persistence, with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from features.io import Tables
from models.decisions.history import CustomerHistory
from models.decisions.profile import CustomerProfiles
from models.decisions.profile_rules import assign_segments, rfm_scores, top_categories, value_tiers

T0 = pd.Timestamp("2026-01-01", tz="UTC")
AS_OF = pd.Timestamp("2026-04-01", tz="UTC")


def ts(days: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=days)


def _events(rows) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows,
        columns=[
            c.CUSTOMER_ID,
            c.TS,
            c.CHANNEL,
            c.EVENT_TYPE,
            c.PRODUCT_ID,
            c.QUANTITY,
            c.AMOUNT,
            c.ORDER_ID,
        ],
    )
    frame[c.TS] = pd.to_datetime(frame[c.TS], utc=True).astype("datetime64[us, UTC]")
    for col in (c.CUSTOMER_ID, c.CHANNEL, c.EVENT_TYPE, c.PRODUCT_ID, c.ORDER_ID):
        frame[col] = frame[col].astype("str")
    frame[c.STORE_ID] = pd.Series(np.nan, index=frame.index, dtype="str")
    return frame


@pytest.fixture()
def tiny() -> Tables:
    """Three customers with hand-countable histories.

    A: 2 orders (one of 2 lines), one line sold below list price, one return; converted a DISC10
       message; opted in to email (then out of sms). B: 1 order long ago (dormant). C: no purchase.
    """
    products = pd.DataFrame(
        {
            c.PRODUCT_ID: ["P1", "P2", "P3"],
            c.CATEGORY: ["grocery", "grocery", "books"],
            c.PRICE: [10.0, 20.0, 15.0],
            c.BRAND: ["x", "x", "y"],
            c.REPLENISHMENT_DAYS: [30.0, np.nan, np.nan],
            c.IS_ACTIVE: [True, True, True],
        }
    )
    events = _events(
        [
            ("A", ts(10), "web", "view", "P1", 1.0, 0.0, None),
            ("A", ts(10.01), "web", "purchase", "P1", 2.0, 20.0, "O1"),  # list price
            ("A", ts(10.01), "web", "purchase", "P3", 1.0, 15.0, "O1"),
            ("A", ts(60), "store", "purchase", "P2", 1.0, 16.0, "O2"),  # 16 < 0.99 * 20: discounted
            ("A", ts(70), "store", "return", "P3", 1.0, 15.0, "O1"),
            ("B", ts(-200), "web", "purchase", "P3", 1.0, 15.0, "O3"),
            ("C", ts(85), "app", "view", "P2", 1.0, 0.0, None),
        ]
    )
    messages = pd.DataFrame(
        {
            c.MESSAGE_ID: ["M1", "M2", "M3"],
            c.CUSTOMER_ID: ["A", "A", "B"],
            c.CHANNEL: ["email", "email", "sms"],
            c.SENT_TS: [ts(5), ts(55), ts(40)],
            c.CAMPAIGN_ID: ["K", "K", "K"],
            c.OFFER_ID: ["OF_DISC10", None, None],
            c.OPENED_TS: [ts(5.1), pd.NaT, pd.NaT],
            c.CLICKED_TS: [pd.NaT, pd.NaT, pd.NaT],
            c.CONVERTED_TS: [ts(10.01), pd.NaT, pd.NaT],
            c.REVENUE: [31.5, np.nan, np.nan],
        }
    )
    for col in (c.SENT_TS, c.OPENED_TS, c.CLICKED_TS, c.CONVERTED_TS):
        messages[col] = pd.to_datetime(messages[col], utc=True).astype("datetime64[us, UTC]")
    consent = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["A", "A", "A", "B"],
            c.CHANNEL: ["email", "sms", "sms", "email"],
            c.OPTED_IN: [True, True, False, False],
            c.UPDATED_TS: pd.to_datetime([ts(0), ts(0), ts(30), ts(0)], utc=True).astype(
                "datetime64[us, UTC]"
            ),
        }
    )
    customers = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["A", "B", "C"],
            c.TIMEZONE: ["Europe/Berlin", "UTC", "America/New_York"],
            c.SIGNUP_TS: pd.to_datetime([ts(-300), ts(-400), ts(80)], utc=True).astype("datetime64[us, UTC]"),
        }
    )
    offers = pd.DataFrame({c.OFFER_ID: ["OF_DISC10"], c.KIND: ["discount"], c.VALUE: [10.0], c.COST: [0.1]})
    return Tables(
        events=events,
        messages=messages,
        customers=customers,
        consent=consent,
        products=products,
        offers=offers,
    )


def test_rfm_scores_are_quintiles_among_buyers_with_shared_ties():
    scores = rfm_scores(
        recency_days=[1, 2, 3, 4, 5, np.nan],
        frequency=[5, 4, 3, 2, 1, 0],
        monetary=[10, 10, 30, 40, 50, 0],
    )
    assert scores["recency_score"].tolist() == [5, 4, 3, 2, 1, 0]  # most recent scores 5; non-buyer 0
    assert scores["frequency_score"].tolist() == [5, 4, 3, 2, 1, 0]
    # the two 10s share the average rank 1.5 of 5 → ceil(5 · 0.3) = 2
    assert scores["monetary_score"].tolist() == [2, 2, 3, 4, 5, 0]


def test_segment_rules_first_match_wins():
    recency = [np.nan, np.nan, 200, 100, 10, 5, 20, 30]
    frequency = [0, 0, 3, 3, 1, 9, 8, 2]
    first_purchase = [np.nan, np.nan, 300, 300, 10, 400, 400, 300]
    first_seen = [10, 500, 400, 400, 12, 500, 500, 400]
    scores = pd.DataFrame(
        {
            "recency_score": [0, 0, 1, 2, 4, 5, 4, 4],
            "frequency_score": [0, 0, 3, 3, 1, 5, 4, 2],
            "monetary_score": [0, 0, 3, 3, 1, 4, 2, 2],
        }
    )
    segments = assign_segments(recency, frequency, first_purchase, first_seen, scores)
    assert segments.tolist() == ["new", "dormant", "dormant", "at_risk", "new", "champion", "loyal", "active"]


def test_value_tiers_top_20_then_30_percent():
    tiers = value_tiers(monetary=list(range(1, 11)) + [0.0], frequency=[1] * 10 + [0])
    assert tiers.tolist() == ["low"] * 5 + ["medium"] * 3 + ["high"] * 2 + ["none"]


def test_top_categories_skip_zero_shares():
    shares = pd.DataFrame({"cat_books": [0.5, 0.0], "cat_grocery": [0.25, 0.0], "cat_toys": [0.25, 1.0]})
    assert top_categories(shares, k=2) == [["books", "grocery"], ["toys"]]


def test_history_features_count_only_what_happened_before_t(tiny):
    history = CustomerHistory(tiny, AS_OF)
    at_day_30 = history.features_at(["A"], ts(30)).iloc[0]
    assert at_day_30["frequency"] == 1  # order O2 (day 60) is not known on day 30
    assert at_day_30["monetary"] == pytest.approx(35.0)
    assert at_day_30["recency_days"] == pytest.approx(30 - 10.01)
    assert at_day_30["n_messages"] == 1
    # the conversion of M1 is known (converted_ts day 10.01), its window closed on day 19
    assert at_day_30["discount_share"] == pytest.approx(1.0)
    now = history.features_at(["A"], AS_OF).iloc[0]
    assert now["frequency"] == 2
    assert now["monetary"] == pytest.approx(20 + 15 + 16 - 15)
    assert now["avg_order_value"] == pytest.approx(51 / 2)
    assert now["return_share"] == pytest.approx(15 / 51)
    # an event exactly at t is not "before t"
    same_second = history.features_at(["A"], ts(10.01)).iloc[0]
    assert same_second["frequency"] == 0
    unknown = history.features_at(["nobody"], AS_OF).iloc[0]
    assert unknown["frequency"] == 0 and np.isnan(unknown["recency_days"])


def test_profile_fields_and_their_sources(tiny):
    profiles = CustomerProfiles(forecast=False).fit(tiny, as_of=AS_OF)
    a = profiles.profile("A")
    assert set(a) >= {
        "segment",
        "rfm",
        "value_tier",
        "predicted_spend_90d",
        "churn_risk",
        "price_sensitivity",
        "top_categories",
        "preferred_channel",
        "preferred_hours",
        "consent",
        "last_contact",
    }
    assert all("derived_from" in v for k, v in a.items() if isinstance(v, dict))
    assert a["frequency"]["value"] == 2
    # O1 came through the DISC10 message, O2 had a line below list price: both discounted
    assert a["price_sensitivity"]["value"] == pytest.approx(1.0)
    assert a["top_categories"]["value"] == ["grocery", "books"]  # 3 grocery units against 1 book
    assert a["consent"]["value"] == {"email": True, "sms": False}  # the later sms opt-out wins
    assert a["last_contact"]["value"]["channel"] == "email"
    assert a["preferred_channel"]["value"] == "email"
    assert a["segment"]["value"] in ("active", "champion", "loyal")
    b = profiles.profile("B")
    assert b["segment"]["value"] == "dormant"  # last purchase 290 days ago
    assert b["consent"]["value"] == {"email": False, "sms": False}
    assert profiles.profile("C")["segment"]["value"] == "new"  # no purchase, signed up 11 days ago
    assert profiles.profile("C")["value_tier"]["value"] == "none"
    assert np.isnan(profiles.frame_["predicted_spend_90d"]).all()
    with pytest.raises(KeyError):
        profiles.profile("nobody")


def test_due_replenishment(tiny):
    profiles = CustomerProfiles(forecast=False).fit(tiny, as_of=AS_OF)
    # A bought P1 (30-day cycle) on day 10.01: due from day 37 (3 days lead) to day 55
    assert profiles.due_replenishments(["A", "B"], ts(45)) == [["P1"], []]
    assert profiles.due_replenishments(["A"], ts(30)) == [[]]
    assert profiles.due_replenishments(["A"], ts(60)) == [[]]
    # one moment per (customer, moment) pair, as the champion gate asks of past messages
    moments = pd.DatetimeIndex([ts(45), ts(45), ts(30), ts(60), ts(45)]).as_unit("us").asi8
    due = profiles.replenishment_due_at(["A", "B", "A", "A", "nobody"], moments)
    assert due.tolist() == [True, False, False, False, False]


def test_model_features_move_time_relative_fields_to_now(tiny):
    profiles = CustomerProfiles(forecast=False).fit(tiny, as_of=AS_OF)
    row = profiles.rows(["A"])
    later = profiles.model_features(row, AS_OF + pd.Timedelta(days=10)).iloc[0]
    assert later["recency_days"] == pytest.approx((AS_OF - ts(60)).total_seconds() / 86400 + 10)
    assert later["frequency"] == 2
    # one moment per row: each row moved to its own
    rows = profiles.rows(["A", "A"])
    moments = pd.DatetimeIndex([AS_OF, AS_OF + pd.Timedelta(days=10)]).as_unit("us").asi8
    each = profiles.model_features_at(rows, moments)
    pd.testing.assert_series_equal(each.iloc[1], later, check_names=False)
    pd.testing.assert_series_equal(
        each.iloc[0], profiles.model_features(row, AS_OF).iloc[0], check_names=False
    )


def test_a_later_opt_out_counts_without_refitting(tiny):
    profiles = CustomerProfiles(forecast=False).fit(tiny, as_of=AS_OF)
    assert profiles.profile("A")["consent"]["value"]["email"] is True
    opt_out = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["A"],
            c.CHANNEL: ["email"],
            c.OPTED_IN: [False],
            c.UPDATED_TS: pd.to_datetime([AS_OF + pd.Timedelta(days=1)], utc=True),
        }
    )
    profiles.refresh_consent(pd.concat([tiny.consent, opt_out], ignore_index=True))
    assert profiles.profile("A")["consent"]["value"] == {"email": False, "sms": False}


def test_save_and_load_give_the_same_profiles(tiny, tmp_path):
    profiles = CustomerProfiles(forecast=False).fit(tiny, as_of=AS_OF)
    loaded = CustomerProfiles.load(profiles.save(tmp_path / "profiles"))
    for cid in ("A", "B", "C"):
        assert loaded.profile(cid) == profiles.profile(cid)
    pd.testing.assert_frame_equal(loaded.profiles_frame(), profiles.profiles_frame(), check_dtype=False)


def test_segment_thresholds_follow_the_buying_rhythm():
    from models.decisions.history import _Stream
    from models.decisions.profile_rules import segment_thresholds
    from models.timestamps import US_PER_DAY

    # 60 customers ordering every 1..10 days (gaps 1..10 days, 10 of each length, weekly shoppers)
    codes, times = [], []
    for customer in range(60):
        gap = 1 + customer % 10
        for k in range(4):
            codes.append(customer)
            times.append(1_700_000_000 * 1_000_000 + k * gap * US_PER_DAY)
    stream = _Stream(np.array(codes), np.array(times, dtype=np.int64))
    as_of = max(times) + US_PER_DAY
    got = segment_thresholds(stream, as_of)
    assert got["new_days"] == pytest.approx(np.quantile(np.repeat(np.arange(1, 11), 18), 0.90))
    assert got["new_days"] <= got["at_risk_days"] < got["dormant_days"] <= 11
    assert segment_thresholds(stream, min(times) + 1) is None  # no gap before as_of: too few to read


def test_attributes_become_features_numeric_and_categorical():
    from models.decisions.history import encode_attributes

    customers = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["A", "B", "C", "D"],
            "attr.age": ["34", None, "51", "28"],  # numbers written as text stay numbers
            "attr.segment": ["gold", "silver", None, "gold"],
            "attr.vip": [True, False, None, True],
            "other": [1, 2, 3, 4],  # not an attribute
        }
    )
    got = encode_attributes(customers, pd.Index(["A", "B", "C", "D", "E"]))
    assert list(got.columns) == ["attr.age", "attr.segment=gold", "attr.segment=silver", "attr.vip"]
    np.testing.assert_array_equal(got["attr.age"], [34, np.nan, 51, 28, np.nan])
    np.testing.assert_array_equal(got["attr.segment=gold"], [1, 0, 0, 1, 0])  # missing: all zeros
    np.testing.assert_array_equal(got["attr.vip"], [1, 0, np.nan, 1, np.nan])


def test_customer_features_built_already_give_the_same_profiles(tiny):
    from features.customer_features import build_customer_features

    built = build_customer_features(tiny.events, tiny.customers, tiny.products)
    mine = CustomerProfiles(forecast=False).fit(tiny)
    given = CustomerProfiles(forecast=False).fit(tiny, customer_features=built)
    pd.testing.assert_frame_equal(given.profiles_frame(), mine.profiles_frame())
    np.testing.assert_array_equal(given.activity_hours_, mine.activity_hours_)
    # features of every event cannot stand in for a profile at an earlier time: built again then
    middle = tiny.events[c.TS].sort_values().iloc[len(tiny.events) // 2]
    early = CustomerProfiles(forecast=False).fit(tiny, as_of=middle, customer_features=built.iloc[:0])
    rebuilt = CustomerProfiles(forecast=False).fit(tiny, as_of=middle)
    assert early.activity_hours_.sum() > 0
    np.testing.assert_array_equal(early.activity_hours_, rebuilt.activity_hours_)
