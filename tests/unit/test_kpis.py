"""The marketer's KPIs (`training.kpis`) on hand-made frames whose answers are known by construction."""

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from training.kpis import (
    ALL_CHANNELS,
    ALL_MONTHS,
    NO_TOUCH,
    NotComputable,
    activity_by_hour,
    channel_totals,
    cohort_retention,
    compute_kpis,
    cross_channel_value,
    engagement_by_hour,
    message_conversion,
    orders,
    partial_months,
    repeat_purchase,
    revenue_by_channel,
    top_journeys,
)

T0 = pd.Timestamp("2026-01-01T00:00:00Z")


def ts(days: float, hours: float = 0.0) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=days, hours=hours)


def events_frame(rows) -> pd.DataFrame:
    """rows: (customer, day, channel, event_type, amount, order_id or None)."""
    return pd.DataFrame(
        {
            c.CUSTOMER_ID: [r[0] for r in rows],
            c.TS: pd.to_datetime([ts(r[1]) for r in rows], utc=True),
            c.CHANNEL: [r[2] for r in rows],
            c.EVENT_TYPE: [r[3] for r in rows],
            c.PRODUCT_ID: ["P1"] * len(rows),
            c.QUANTITY: [1.0] * len(rows),
            c.AMOUNT: [float(r[4]) for r in rows],
            c.ORDER_ID: pd.array([r[5] for r in rows], dtype="string"),
        }
    )


def messages_frame(rows, end_day: float = 400) -> pd.DataFrame:
    """rows: (customer, day sent, channel, opened, clicked, converted logged)."""
    sent = pd.to_datetime([ts(r[1]) for r in rows], utc=True)
    hour = pd.Timedelta(hours=1)
    return pd.DataFrame(
        {
            c.MESSAGE_ID: [f"M{i}" for i in range(len(rows))],
            c.CUSTOMER_ID: [r[0] for r in rows],
            c.CHANNEL: [r[2] for r in rows],
            c.SENT_TS: sent,
            c.OFFER_ID: pd.array([None] * len(rows), dtype="string"),
            c.OPENED_TS: pd.Series([s + hour if r[3] else pd.NaT for s, r in zip(sent, rows, strict=True)]),
            c.CLICKED_TS: pd.Series(
                [s + 2 * hour if r[4] else pd.NaT for s, r in zip(sent, rows, strict=True)]
            ),
            c.CONVERTED_TS: pd.Series(
                [s + 3 * hour if r[5] else pd.NaT for s, r in zip(sent, rows, strict=True)]
            ),
        }
    )


def test_orders_group_lines_by_order_id_and_by_moment_without_one():
    ev = events_frame(
        [
            ("A", 1, "web", "purchase", 10, "O1"),
            ("A", 1, "web", "purchase", 5, "O1"),  # a second line of the same order
            ("A", 2, "store", "purchase", 7, None),  # no id: one order per customer and moment
            ("A", 2, "store", "purchase", 3, None),
            ("B", 3, "app", "purchase", 20, None),
            ("B", 3, "app", "view", 0, None),  # not a purchase
        ]
    )
    o = orders(ev).sort_values(["customer_id", "ts"]).reset_index(drop=True)
    assert o["revenue"].tolist() == [15.0, 10.0, 20.0]
    assert o["channel"].tolist() == ["web", "store", "app"]


def test_revenue_by_channel_and_totals_with_returns_and_aov():
    ev = events_frame(
        [
            ("A", 1, "web", "purchase", 10, "O1"),
            ("A", 1, "web", "purchase", 30, "O1"),
            ("B", 2, "store", "purchase", 60, "O2"),
            ("B", 5, "store", "return", -20, None),  # sign as the retailer logs it: absolute value
            ("C", 40, "web", "purchase", 50, "O3"),  # February
        ]
    )
    table = revenue_by_channel(ev).set_index(["period", "channel"])
    january = table.loc[("2026-01", ALL_CHANNELS)]
    assert (january["orders"], january["buyers"], january["revenue"]) == (2, 2, 100.0)
    assert january["returns"] == 20.0 and january["net_revenue"] == 80.0 and january["aov"] == 50.0
    assert table.loc[("2026-01", "web"), "revenue_share"] == pytest.approx(0.4)
    assert table.loc[("2026-01", "store"), "returns"] == 20.0
    assert table.loc[("2026-02", "web"), "revenue"] == 50.0
    totals = channel_totals(ev).set_index("channel")
    assert totals.loc["web", "orders"] == 2 and totals.loc["web", "aov"] == 45.0
    assert totals.loc[ALL_CHANNELS, "revenue_share"] == pytest.approx(1.0)


def test_repeat_purchase_rate_and_returning_buyers():
    ev = events_frame(
        [
            ("A", 1, "web", "purchase", 10, "O1"),
            ("A", 35, "web", "purchase", 10, "O2"),  # returns in February
            ("B", 2, "web", "purchase", 10, "O3"),
            ("C", 36, "web", "purchase", 10, "O4"),  # first order in February
            ("C", 37, "web", "purchase", 10, "O5"),
        ]
    )
    table = repeat_purchase(ev).set_index("period")
    assert table.loc["2026-02", "buyers"] == 2 and table.loc["2026-02", "returning_buyers"] == 1
    assert table.loc["2026-02", "returning_share"] == 0.5
    whole = table.loc["whole history"]
    assert whole["repeat_rate"] == pytest.approx(2 / 3)  # A and C ordered twice, B once


def test_cohort_retention_shares_and_unobserved_months():
    rows = [(f"J{i}", 3, "web", "purchase", 10, f"J{i}a") for i in range(4)]  # January cohort of 4
    rows += [("J0", 33, "web", "purchase", 10, "J0b"), ("J1", 34, "web", "purchase", 10, "J1b")]  # Feb
    rows += [("J0", 62, "web", "purchase", 10, "J0c")]  # March
    rows += [("F0", 40, "web", "purchase", 10, "F0a")]  # February cohort of 1
    rows += [("X", 91, "web", "view", 0, None)]  # the data end on 1 April: April is partial
    table = cohort_retention(events_frame(rows), months=3).set_index("cohort")
    assert table.loc["2026-01", "customers"] == 4
    assert table.loc["2026-01", "month_0"] == 1.0
    assert table.loc["2026-01", "month_1"] == 0.5 and table.loc["2026-01", "month_2"] == 0.25
    # month 3 of January is April: the data cover one day of it, so it is unknown, not 0 %
    assert np.isnan(table.loc["2026-01", "month_3"])
    assert table.loc["2026-02", "month_1"] == 0.0 and np.isnan(table.loc["2026-02", "month_2"])
    notes = partial_months(events_frame(rows))
    assert any("2026-04" in n and "part of the month" in n for n in notes)


def test_cross_channel_value_compares_revenue_per_customer():
    ev = events_frame(
        [
            ("A", 1, "web", "purchase", 10, "O1"),
            ("B", 1, "web", "purchase", 20, "O2"),
            ("C", 1, "web", "purchase", 30, "O3"),
            ("C", 2, "store", "purchase", 30, "O4"),
        ]
    )
    table = cross_channel_value(ev).set_index("group")
    assert table.loc["1 channel", "revenue_per_customer"] == 15.0
    assert table.loc["2 channels", "revenue_per_customer"] == 60.0
    assert table.loc["cross-channel (2+)", "value_vs_single"] == 4.0
    with pytest.raises(NotComputable, match="one channel"):
        cross_channel_value(events_frame([("A", 1, "store", "purchase", 10, "O1")]))


def test_journeys_take_the_first_touch_within_the_window_before_the_order():
    ev = events_frame(
        [
            ("A", 0, "app", "view", 0, None),  # 10 days before: outside the 7-day window
            ("A", 5, "web", "view", 0, None),  # the first touch inside the window
            ("A", 9, "app", "view", 0, None),
            ("A", 10, "store", "purchase", 40, "O1"),
            ("B", 10, "store", "purchase", 40, "O2"),
            ("B", 11, "web", "view", 0, None),  # after the order: not its touch
        ]
    )
    messages = messages_frame([("B", 8.5, "email", False, False, False)])
    flows = top_journeys(ev, messages).set_index(["first_touch", "purchase_channel"])
    assert flows.loc[("web browse", "store"), "orders"] == 1
    assert flows.loc[("email message", "store"), "orders"] == 1
    assert flows["order_share"].sum() == pytest.approx(1.0)
    # an order with no touch before it in the window
    untouched = top_journeys(ev.loc[[3, 4, 5]])
    assert untouched.set_index(["first_touch", "purchase_channel"]).loc[(NO_TOUCH, "store"), "orders"] == 2


def test_message_conversion_counts_a_purchase_within_the_window_after_the_send():
    ev = events_frame(
        [
            ("A", 3, "web", "purchase", 30, "O1"),  # 2 days after A's message: converts
            ("B", 30, "web", "purchase", 20, "O2"),  # 20 days after B's: too late
            ("C", 10, "web", "purchase", 25, "O3"),  # at the very moment C's message was sent
            ("E", 60, "web", "view", 0, None),  # the data end on day 60
        ]
    )
    messages = messages_frame(
        [
            ("A", 1, "email", True, True, True),
            ("B", 10, "email", True, False, False),
            ("C", 10, "sms", False, False, False),
            ("D", 55, "sms", True, False, False),  # its 14-day window is still open: left out
        ]
    )
    table = message_conversion(messages, ev).set_index(["period", "channel"])
    whole = table.loc[(ALL_MONTHS, ALL_CHANNELS)]
    assert whole["messages"] == 3
    assert whole["conversion_rate"] == pytest.approx(1 / 3)
    assert whole["open_rate"] == pytest.approx(2 / 3) and whole["click_rate"] == pytest.approx(1 / 3)
    assert whole["logged_conversion_rate"] == pytest.approx(1 / 3)
    assert whole["revenue_per_message"] == pytest.approx(10.0)
    assert table.loc[(ALL_MONTHS, "email"), "conversion_rate"] == 0.5
    assert table.loc[(ALL_MONTHS, "sms"), "conversion_rate"] == 0.0
    # a longer window catches B's purchase too
    longer = message_conversion(messages, ev, attribution_days=25).set_index(["period", "channel"])
    assert longer.loc[(ALL_MONTHS, "email"), "conversion_rate"] == 1.0


def test_engagement_and_activity_by_hour_use_the_customers_local_time():
    customers = pd.DataFrame({c.CUSTOMER_ID: ["A", "B"], c.TIMEZONE: ["America/New_York", "Asia/Tokyo"]})
    # 15:00 UTC on a Thursday: 10:00 in New York, 00:00 (Friday) in Tokyo
    messages = messages_frame([("A", 0, "email", True, False, False), ("B", 0, "email", False, False, False)])
    messages[c.SENT_TS] = pd.Timestamp("2026-01-01T15:00:00Z")
    grid = engagement_by_hour(messages, customers).set_index(["weekday", "hour"])
    assert grid.loc[(3, 10), "messages"] == 1 and grid.loc[(3, 10), "open_rate"] == 1.0
    assert grid.loc[(4, 0), "messages"] == 1 and grid.loc[(4, 0), "open_rate"] == 0.0
    assert grid["messages"].sum() == 2 and len(grid) == 7 * 24
    ev = events_frame([("A", 0, "web", "purchase", 10, "O1")])
    ev[c.TS] = pd.Timestamp("2026-01-01T15:00:00Z")
    activity = activity_by_hour(ev, customers).set_index(["weekday", "hour"])
    assert activity.loc[(3, 10), "order_share"] == 1.0
    # a customer whose zone is unknown is read in UTC
    unknown = activity_by_hour(ev.assign(**{c.CUSTOMER_ID: "Z"}), customers).set_index(["weekday", "hour"])
    assert unknown.loc[(3, 15), "orders"] == 1


def test_a_till_log_without_messages_views_or_amounts_says_what_cannot_be_computed():
    """A real retailer's shape: one channel, purchases only, no messages, no amounts."""
    ev = events_frame([("A", 1, "store", "purchase", 0, None), ("A", 40, "store", "purchase", 0, None)])
    kpis = compute_kpis(ev, messages=None, customers=None)
    assert "amount" in kpis.missing["channel_totals"] and "amount" in kpis.missing["revenue_by_channel"]
    assert "no messages table" in kpis.missing["message_conversion"]
    assert "no messages table" in kpis.missing["engagement_by_hour"]
    assert "no touch" in kpis.missing["top_journeys"]
    assert kpis.get("repeat_purchase") is not None and kpis.get("activity_by_hour") is not None
    # a messages table without opens logged: engagement is unknown, conversion is not
    messages = messages_frame([("A", 1, "email", False, False, False)])
    messages[c.OPENED_TS] = pd.NaT
    more = compute_kpis(ev, messages=messages)
    assert "opened_ts" in more.missing["engagement_by_hour"]
    assert np.isnan(more.get("message_conversion")["open_rate"]).all()
    # no purchase at all
    none = compute_kpis(events_frame([("A", 1, "web", "view", 0, None)]))
    assert all("no purchase" in none.missing[name] for name in ("repeat_purchase", "cohort_retention"))
