"""A marketer's KPIs, computed from the data: plain tables on the contract's frames.

Every KPI is one function of plain DataFrames with the data contract's columns
(`features.columns`) that returns a DataFrame. When the data cannot give a KPI (no messages table,
no purchase amounts, no timestamps of opens, ...) it raises `NotComputable`, whose message says in
words what is missing; `compute_kpis` runs them all and keeps, for each, its table or that reason,
so a report shows what it can and says plainly why the rest is absent. Nothing here assumes the
generated data: a grocery chain's till log (one channel, no messages, no views) gives revenue,
orders, repeat purchases and cohorts, and says why there is nothing to say about messages.

Definitions (said again in the report beside each table):
- an *order* is one `order_id`, or one (customer, timestamp) when the id is missing; its channel is
  the channel of its first line and its value the sum of its purchase lines' `amount`;
- *revenue* is the sum of purchase amounts (gross), *returns* the amounts of `return` events (their
  absolute value: retailers log them with either sign), *net revenue* the difference;
- periods are calendar months in UTC (`PERIOD`);
- a message *converts* when its customer makes a purchase within `attribution_days` after it was
  sent (14 days by default, `omni train --conversion-window-days`'s default); messages whose window
  is not over at the end of the data are left out. The campaign system's own attribution
  (`messages.converted_ts`), when logged, is shown beside it;
- a customer's *journey* is the channel of their first touch (a message received, or a product
  view, cart or search on a channel) within `journey_days` before an order, then the channel of the
  order; an order without such a touch is "no touch recorded".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features import columns as c
from models.decisions.contact_policy import local_hour_and_weekday
from models.timestamps import to_us

PERIOD = "M"  # calendar months (UTC)
ALL_CHANNELS = "all channels"
ALL_MONTHS = "all months"  # the rows of a monthly table that sum up the whole history
NO_TOUCH = "no touch recorded"
ATTRIBUTION_DAYS = 14.0
JOURNEY_DAYS = 7.0
BROWSE_EVENTS = ("view", "add_to_cart", "search", "wishlist")
COHORT_MONTHS = 12
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class NotComputable(ValueError):
    """The data cannot give this figure; the message says why, in words a marketer reads."""


# ------------------------------------------------------------------------------------ building blocks
def _purchases(events: pd.DataFrame) -> pd.DataFrame:
    """The purchase lines of `events` (NotComputable when there are none)."""
    if events is None or len(events) == 0:
        raise NotComputable("the events table is empty")
    lines = events.loc[(events[c.EVENT_TYPE] == "purchase").to_numpy(dtype=bool, na_value=False)]
    if lines.empty:
        raise NotComputable("the events hold no purchase (event_type 'purchase')")
    return lines


def orders(events: pd.DataFrame) -> pd.DataFrame:
    """One row per order: customer_id, order (its key), ts (its first line), channel (its first
    line's), revenue (the sum of its lines' amounts), period."""
    lines = _purchases(events)
    order_ids = lines[c.ORDER_ID] if c.ORDER_ID in lines else pd.Series(pd.NA, index=lines.index)
    missing = order_ids.isna().to_numpy()
    frame = pd.DataFrame(
        {
            c.CUSTOMER_ID: lines[c.CUSTOMER_ID].astype(str).to_numpy(),
            "order": order_ids.astype(object).where(~missing, "").to_numpy(),
            # no order id: one order per customer and moment (as the profiles count orders)
            "moment": np.where(missing, to_us(lines[c.TS]), 0),
            c.TS: lines[c.TS].array,
            c.CHANNEL: lines[c.CHANNEL].astype(str).to_numpy(),
            c.AMOUNT: _amounts(lines),
        }
    ).sort_values(c.TS, kind="stable")
    grouped = frame.groupby([c.CUSTOMER_ID, "order", "moment"], sort=False)
    out = grouped.agg(ts=(c.TS, "first"), channel=(c.CHANNEL, "first"), revenue=(c.AMOUNT, "sum"))
    out = out.reset_index().drop(columns="moment").sort_values(c.TS, kind="stable", ignore_index=True)
    out["order"] = np.arange(len(out))  # a number per order: what was an id is not needed again
    out["period"] = period_of(out[c.TS])
    return out


def _orders_of(events: pd.DataFrame, order_table: pd.DataFrame | None) -> pd.DataFrame:
    """`order_table` when the caller built it already (`orders(events)`), else `orders(events)`."""
    return orders(events) if order_table is None else order_table


def _amounts(lines: pd.DataFrame) -> np.ndarray:
    if c.AMOUNT not in lines:
        return np.zeros(len(lines))
    return lines[c.AMOUNT].astype("float64").fillna(0.0).to_numpy()


def _has_amounts(events: pd.DataFrame) -> bool:
    lines = _purchases(events)
    return c.AMOUNT in lines and bool((lines[c.AMOUNT].fillna(0.0) != 0).any())


def last_complete_month(events: pd.DataFrame) -> pd.Period:
    """The last calendar month (UTC) the data cover to its last day."""
    end = pd.Timestamp(events[c.TS].max()).tz_convert("UTC").tz_localize(None)
    month = end.to_period(PERIOD)
    return month if end.day == month.days_in_month else month - 1


def partial_months(events: pd.DataFrame) -> list[str]:
    """Notes on the first and last months when the data cover only part of them."""
    ts = events[c.TS]
    start = pd.Timestamp(ts.min()).tz_convert("UTC").tz_localize(None)
    end = pd.Timestamp(ts.max()).tz_convert("UTC").tz_localize(None)
    notes = []
    if start.day != 1:
        notes.append(
            f"the data begin on {start:%Y-%m-%d}: the figures of {start:%Y-%m} cover only part of the month"
        )
    if end.to_period(PERIOD) != last_complete_month(events):
        notes.append(
            f"the data end on {end:%Y-%m-%d}: the figures of {end:%Y-%m} cover only part of the month "
            "(left out of the cohorts)"
        )
    return notes


def period_of(ts: pd.Series) -> pd.Series:
    """The calendar month (UTC) of each timestamp, as text ('2026-03')."""
    naive = pd.to_datetime(ts, utc=True).dt.tz_convert("UTC").dt.tz_localize(None)
    return naive.dt.to_period(PERIOD).astype(str)


def _returns(events: pd.DataFrame) -> pd.DataFrame:
    rows = events.loc[(events[c.EVENT_TYPE] == "return").to_numpy(dtype=bool, na_value=False)]
    return pd.DataFrame(
        {
            "period": period_of(rows[c.TS]).to_numpy(),
            c.CHANNEL: rows[c.CHANNEL].astype(str).to_numpy(),
            "returns": np.abs(_amounts(rows)),
        }
    )


# ------------------------------------------------------------------------------------------- KPIs
def revenue_by_channel(events: pd.DataFrame, order_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per month and channel (and all channels together): orders, buyers, revenue, returns, net
    revenue, average order value (AOV = revenue / orders) and the channel's share of the month's
    revenue."""
    if not _has_amounts(events):
        raise NotComputable("purchase events carry no amount: revenue and order values are unknown")
    o = _orders_of(events, order_table)
    per_channel = o.groupby(["period", c.CHANNEL]).agg(
        orders=("order", "size"), buyers=(c.CUSTOMER_ID, "nunique"), revenue=("revenue", "sum")
    )
    overall = o.groupby("period").agg(
        orders=("order", "size"), buyers=(c.CUSTOMER_ID, "nunique"), revenue=("revenue", "sum")
    )
    overall[c.CHANNEL] = ALL_CHANNELS
    overall = overall.set_index(c.CHANNEL, append=True)
    table = pd.concat([per_channel, overall]).sort_index()
    returns = _returns(events)
    returned = pd.concat(
        [
            returns.groupby(["period", c.CHANNEL])["returns"].sum(),
            returns.assign(**{c.CHANNEL: ALL_CHANNELS}).groupby(["period", c.CHANNEL])["returns"].sum(),
        ]
    )
    table["returns"] = returned.reindex(table.index, fill_value=0.0).to_numpy()
    table["net_revenue"] = table["revenue"] - table["returns"]
    table["aov"] = table["revenue"] / table["orders"]
    month_revenue = table.xs(ALL_CHANNELS, level=c.CHANNEL)["revenue"]
    table["revenue_share"] = table["revenue"] / table.index.get_level_values("period").map(month_revenue)
    return table.reset_index()


def channel_totals(events: pd.DataFrame, order_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per channel over the whole history: buyers, orders, revenue, AOV and revenue share (the
    row 'all channels' holds the totals; a customer buying in two channels counts in both)."""
    if not _has_amounts(events):
        raise NotComputable("purchase events carry no amount: revenue and order values are unknown")
    o = _orders_of(events, order_table)
    per = o.groupby(c.CHANNEL).agg(
        buyers=(c.CUSTOMER_ID, "nunique"), orders=("order", "size"), revenue=("revenue", "sum")
    )
    per = per.sort_values("revenue", ascending=False)
    total = pd.DataFrame(
        {"buyers": [o[c.CUSTOMER_ID].nunique()], "orders": [len(o)], "revenue": [o["revenue"].sum()]},
        index=pd.Index([ALL_CHANNELS], name=c.CHANNEL),
    )
    table = pd.concat([per, total])
    table["aov"] = table["revenue"] / table["orders"]
    table["revenue_share"] = table["revenue"] / float(o["revenue"].sum() or np.nan)
    return table.reset_index().rename(columns={"index": c.CHANNEL})


def repeat_purchase(events: pd.DataFrame, order_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per month: buyers, first-time buyers (first order in the data), returning buyers (ordered in
    an earlier month) and the returning share; the last row, 'whole history', gives the repeat
    purchase rate: the share of buyers with two orders or more."""
    o = _orders_of(events, order_table)
    first = o.groupby(c.CUSTOMER_ID)["period"].transform("min")
    o = o.assign(returning=o["period"] != first)
    per = o.groupby("period").agg(buyers=(c.CUSTOMER_ID, "nunique"))
    per["returning_buyers"] = o.loc[o["returning"]].groupby("period")[c.CUSTOMER_ID].nunique()
    per["returning_buyers"] = per["returning_buyers"].fillna(0).astype(int)
    per["first_time_buyers"] = per["buyers"] - per["returning_buyers"]
    per["returning_share"] = per["returning_buyers"] / per["buyers"]
    per["repeat_rate"] = np.nan
    counts = o.groupby(c.CUSTOMER_ID).size()
    overall = pd.DataFrame(
        {
            "buyers": [int(len(counts))],
            "returning_buyers": [int((counts >= 2).sum())],
            "first_time_buyers": [int((counts == 1).sum())],
            "returning_share": [np.nan],
            "repeat_rate": [float((counts >= 2).mean())],
        },
        index=pd.Index(["whole history"], name="period"),
    )
    return pd.concat([per, overall]).reset_index()


def cohort_retention(
    events: pd.DataFrame, months: int = COHORT_MONTHS, order_table: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Customers by the month of their first order in the data (the cohort), and the share of each
    cohort ordering again in each later month (month 0 is the cohort's own month, 100 %). Months
    the data do not cover to their last day are empty, not zero (nor a low share of a few days)."""
    o = _orders_of(events, order_table)
    month = pd.PeriodIndex(o["period"], freq=PERIOD)
    index = month.year * 12 + month.month - 1
    o = o.assign(month_index=np.asarray(index))
    cohort = o.groupby(c.CUSTOMER_ID)["month_index"].transform("min")
    o = o.assign(cohort=cohort, age=o["month_index"] - cohort)
    complete = last_complete_month(events)
    last = complete.year * 12 + complete.month - 1
    o = o.loc[o["cohort"] <= last]
    if o.empty:
        raise NotComputable(
            "the data do not cover one calendar month to its end: there is no cohort to follow"
        )
    active = o.loc[o["age"] <= months].drop_duplicates([c.CUSTOMER_ID, "age"])
    counts = active.groupby(["cohort", "age"]).size().unstack("age", fill_value=0)
    sizes = counts[0]
    shares = counts.div(sizes, axis=0)
    for age in range(months + 1):
        if age not in shares:
            shares[age] = 0.0
    shares = shares[list(range(months + 1))]
    # a month after the end of the data is unknown, not a month without orders
    observed = np.arange(months + 1)[None, :] <= (last - shares.index.to_numpy())[:, None]
    shares = shares.where(observed)
    shares.columns = [f"month_{age}" for age in shares.columns]
    cohorts = pd.PeriodIndex.from_ordinals(
        [pd.Period(year=i // 12, month=i % 12 + 1, freq=PERIOD).ordinal for i in shares.index], freq=PERIOD
    )
    out = shares.reset_index(drop=True)
    out.insert(0, "customers", sizes.to_numpy())
    out.insert(0, "cohort", cohorts.astype(str))
    return out


def cross_channel_value(events: pd.DataFrame, order_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Customers by the number of channels they bought in (1, 2, 3 or more): customers, their
    share, revenue per customer, orders per customer and AOV; the last row compares cross-channel
    customers (2 or more) with single-channel ones as a ratio of revenue per customer."""
    if not _has_amounts(events):
        raise NotComputable("purchase events carry no amount: customer value is unknown")
    o = _orders_of(events, order_table)
    per_customer = o.groupby(c.CUSTOMER_ID).agg(
        channels=(c.CHANNEL, "nunique"), orders=("order", "size"), revenue=("revenue", "sum")
    )
    if per_customer["channels"].max() < 2:
        only = str(o[c.CHANNEL].iloc[0])
        raise NotComputable(
            f"every purchase is in one channel ({only}): there are no cross-channel customers to compare"
        )
    groups = {
        "1 channel": per_customer["channels"] == 1,
        "2 channels": per_customer["channels"] == 2,
        "3+ channels": per_customer["channels"] >= 3,
        "cross-channel (2+)": per_customer["channels"] >= 2,
    }
    rows = {
        name: {
            "customers": int(mask.sum()),
            "orders": float(per_customer.loc[mask, "orders"].sum()),
            "revenue": float(per_customer.loc[mask, "revenue"].sum()),
        }
        for name, mask in groups.items()
        if mask.any()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["customer_share"] = table["customers"] / len(per_customer)
    table["revenue_per_customer"] = table["revenue"] / table["customers"]
    table["orders_per_customer"] = table["orders"] / table["customers"]
    table["aov"] = table["revenue"] / table["orders"]
    single = table["revenue_per_customer"].get("1 channel", np.nan)
    table["value_vs_single"] = table["revenue_per_customer"] / single
    return table.rename_axis("group").reset_index()


def _touches(events: pd.DataFrame, messages: pd.DataFrame | None) -> pd.DataFrame:
    """Every touch before a purchase: customer_id, ts, touch ('<channel> message' or '<channel>
    view'); sorted by time."""
    parts = []
    browse = events.loc[events[c.EVENT_TYPE].isin(BROWSE_EVENTS).to_numpy(dtype=bool, na_value=False)]
    if len(browse):
        parts.append(
            pd.DataFrame(
                {
                    c.CUSTOMER_ID: browse[c.CUSTOMER_ID].astype(str).to_numpy(),
                    c.TS: browse[c.TS].array,
                    "touch": (browse[c.CHANNEL].astype(str) + " browse").to_numpy(),
                }
            )
        )
    if messages is not None and len(messages):
        parts.append(
            pd.DataFrame(
                {
                    c.CUSTOMER_ID: messages[c.CUSTOMER_ID].astype(str).to_numpy(),
                    c.TS: messages[c.SENT_TS].array,
                    "touch": (messages[c.CHANNEL].astype(str) + " message").to_numpy(),
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=[c.CUSTOMER_ID, c.TS, "touch"])
    return pd.concat(parts, ignore_index=True).sort_values(c.TS, kind="stable", ignore_index=True)


def top_journeys(
    events: pd.DataFrame,
    messages: pd.DataFrame | None = None,
    days: float = JOURNEY_DAYS,
    top: int = 10,
    order_table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The most common journeys: the first touch (a message received or a browse event: view,
    cart, search, wishlist) within `days` before an order, then the order's channel. Columns:
    first_touch, purchase_channel, orders, order_share, revenue; the `top` flows by orders."""
    touches = _touches(events, messages)
    if touches.empty:
        raise NotComputable(
            "the data record no touch before a purchase (no product views, carts or searches, no messages): "
            "there is no journey to follow, only the channel of purchase"
        )
    o = _orders_of(events, order_table)
    window = pd.Timedelta(days=days)
    left = o.assign(start=o[c.TS] - window).sort_values("start", kind="stable")
    right = touches.rename(columns={c.TS: "touch_ts"})
    # the earliest touch at or after (order time - window) ...
    joined = pd.merge_asof(
        left,
        right,
        left_on="start",
        right_on="touch_ts",
        by=c.CUSTOMER_ID,
        direction="forward",
    )
    # ... that came before the order
    before = joined["touch_ts"].notna() & (joined["touch_ts"] <= joined[c.TS])
    joined["first_touch"] = joined["touch"].where(before, NO_TOUCH)
    flows = joined.groupby(["first_touch", c.CHANNEL]).agg(
        orders=("order", "size"), revenue=("revenue", "sum")
    )
    flows["order_share"] = flows["orders"] / len(joined)
    flows = flows.sort_values("orders", ascending=False).head(top).reset_index()
    return flows.rename(columns={c.CHANNEL: "purchase_channel"})[
        ["first_touch", "purchase_channel", "orders", "order_share", "revenue"]
    ]


def message_conversion(
    messages: pd.DataFrame | None,
    events: pd.DataFrame,
    attribution_days: float = ATTRIBUTION_DAYS,
    order_table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per month of sending and channel (and all channels together; period 'all months': the whole
    history): messages, customers messaged,
    open rate, click rate, conversion rate (a purchase within `attribution_days` after the send),
    the campaign system's own conversion rate (`converted_ts` logged; empty when never logged) and
    revenue of the attributed orders per message. Messages whose window runs past the end of the
    data are left out."""
    if messages is None or len(messages) == 0:
        raise NotComputable("no messages table: nothing was sent that could convert")
    end = events[c.TS].max()
    window = pd.Timedelta(days=attribution_days)
    closed = messages.loc[(messages[c.SENT_TS] + window <= end).to_numpy(dtype=bool, na_value=False)]
    if closed.empty:
        raise NotComputable(
            f"every message was sent in the last {attribution_days:g} days of the data: no conversion "
            "window has closed yet"
        )
    frame = pd.DataFrame(
        {
            "row": np.arange(len(closed)),
            c.CUSTOMER_ID: closed[c.CUSTOMER_ID].astype(str).to_numpy(),
            c.SENT_TS: closed[c.SENT_TS].array,
            c.CHANNEL: closed[c.CHANNEL].astype(str).to_numpy(),
            "opened": _logged(closed, c.OPENED_TS),
            "clicked": _logged(closed, c.CLICKED_TS),
            "logged_conversion": _logged(closed, c.CONVERTED_TS),
        }
    ).sort_values(c.SENT_TS, kind="stable")
    try:
        o = _orders_of(events, order_table)[[c.CUSTOMER_ID, c.TS, "revenue"]].sort_values(c.TS, kind="stable")
    except NotComputable:
        o = pd.DataFrame({c.CUSTOMER_ID: [], c.TS: pd.Series([], dtype=events[c.TS].dtype), "revenue": []})
    # the first order after the send, within the window (a purchase at the very moment of sending
    # was not caused by it)
    joined = pd.merge_asof(
        frame,
        o.rename(columns={c.TS: "order_ts"}),
        left_on=c.SENT_TS,
        right_on="order_ts",
        by=c.CUSTOMER_ID,
        direction="forward",
        allow_exact_matches=False,
        tolerance=window,
    )
    joined["converted"] = joined["order_ts"].notna()
    joined["attributed_revenue"] = joined["revenue"].where(joined["converted"], 0.0).fillna(0.0)
    joined["period"] = period_of(joined[c.SENT_TS])
    has_logged = bool(joined["logged_conversion"].any()) or (
        c.CONVERTED_TS in closed and closed[c.CONVERTED_TS].notna().any()
    )

    def summarise(groups) -> pd.DataFrame:
        out = groups.agg(
            messages=("row", "size"),
            customers=(c.CUSTOMER_ID, "nunique"),
            open_rate=("opened", "mean"),
            click_rate=("clicked", "mean"),
            conversion_rate=("converted", "mean"),
            logged_conversion_rate=("logged_conversion", "mean"),
            revenue_per_message=("attributed_revenue", "mean"),
        )
        if not has_logged:
            out["logged_conversion_rate"] = np.nan
        for col in ("open_rate", "click_rate"):
            if not _column_logged(closed, c.OPENED_TS if col == "open_rate" else c.CLICKED_TS):
                out[col] = np.nan
        return out

    per = summarise(joined.groupby(["period", c.CHANNEL]))
    overall = summarise(joined.groupby("period"))
    overall[c.CHANNEL] = ALL_CHANNELS
    whole = summarise(joined.assign(period=ALL_MONTHS).groupby(["period", c.CHANNEL]))
    together = summarise(joined.assign(period=ALL_MONTHS).groupby("period"))
    together[c.CHANNEL] = ALL_CHANNELS
    table = pd.concat([per, overall.set_index(c.CHANNEL, append=True)]).sort_index()
    totals = pd.concat([whole, together.set_index(c.CHANNEL, append=True)])
    return pd.concat([table, totals]).reset_index()


def _column_logged(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(frame[column].notna().any())


def _logged(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame:
        return np.zeros(len(frame), dtype=bool)
    return frame[column].notna().to_numpy()


def _local_time(ts: pd.Series, customer_ids: pd.Series, customers: pd.DataFrame | None):
    """Local hour and weekday of each timestamp in its customer's time zone (UTC where unknown)."""
    zones = np.full(len(ts), "UTC", dtype=object)
    if customers is not None and c.TIMEZONE in customers and len(customers):
        lookup = customers.drop_duplicates(c.CUSTOMER_ID).set_index(customers[c.CUSTOMER_ID].astype(str))
        found = customer_ids.astype(str).map(lookup[c.TIMEZONE]).to_numpy(dtype=object)
        known = pd.notna(found)
        zones[known] = found[known]
    return local_hour_and_weekday(to_us(ts), zones)


def engagement_by_hour(messages: pd.DataFrame | None, customers: pd.DataFrame | None) -> pd.DataFrame:
    """Message engagement by the customer's local hour and weekday of sending: one row per (weekday,
    hour) with messages, opens, clicks, open rate and click rate. Local time from
    customers.timezone (UTC for customers whose zone is unknown)."""
    if messages is None or len(messages) == 0:
        raise NotComputable("no messages table: there is no message engagement to look at")
    if not _column_logged(messages, c.OPENED_TS):
        raise NotComputable("the messages table logs no open (opened_ts is empty): engagement is unknown")
    hours, weekdays = _local_time(messages[c.SENT_TS], messages[c.CUSTOMER_ID], customers)
    frame = pd.DataFrame(
        {
            "weekday": weekdays,
            "hour": hours,
            "opened": _logged(messages, c.OPENED_TS),
            "clicked": _logged(messages, c.CLICKED_TS),
        }
    )
    grid = frame.groupby(["weekday", "hour"]).agg(
        messages=("opened", "size"), opens=("opened", "sum"), clicks=("clicked", "sum")
    )
    full = pd.MultiIndex.from_product([range(7), range(24)], names=["weekday", "hour"])
    grid = grid.reindex(full, fill_value=0)
    grid["open_rate"] = grid["opens"] / grid["messages"].where(grid["messages"] > 0)
    grid["click_rate"] = grid["clicks"] / grid["messages"].where(grid["messages"] > 0)
    return grid.reset_index()


def activity_by_hour(
    events: pd.DataFrame, customers: pd.DataFrame | None, order_table: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Purchases by the customer's local hour and weekday: one row per (weekday, hour) with orders
    and their share of all orders (when customers are active, for data without messages)."""
    o = _orders_of(events, order_table)
    hours, weekdays = _local_time(o[c.TS], o[c.CUSTOMER_ID], customers)
    frame = pd.DataFrame({"weekday": weekdays, "hour": hours})
    grid = frame.groupby(["weekday", "hour"]).size().rename("orders")
    full = pd.MultiIndex.from_product([range(7), range(24)], names=["weekday", "hour"])
    grid = grid.reindex(full, fill_value=0).to_frame()
    grid["order_share"] = grid["orders"] / max(int(grid["orders"].sum()), 1)
    return grid.reset_index()


# ------------------------------------------------------------------------------------------ all of them
@dataclass
class Kpis:
    """Each KPI's table (`tables`), or why the data cannot give it (`missing`); `settings` holds
    the definitions' parameters, for the report to state."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    settings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. months the data cover only in part

    def get(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)


KPI_TITLES: dict[str, str] = {
    "channel_totals": "Revenue and customers by channel",
    "revenue_by_channel": "Revenue, orders and average order value by month and channel",
    "repeat_purchase": "Repeat purchases",
    "cohort_retention": "Retention by monthly cohort",
    "cross_channel_value": "Cross-channel against single-channel customers",
    "top_journeys": "Top journeys: first touch, then purchase",
    "message_conversion": "Message conversion by month and channel",
    "engagement_by_hour": "Message engagement by local hour of sending",
    "activity_by_hour": "Purchases by local hour",
}


def compute_kpis(
    events: pd.DataFrame,
    messages: pd.DataFrame | None = None,
    customers: pd.DataFrame | None = None,
    attribution_days: float = ATTRIBUTION_DAYS,
    journey_days: float = JOURNEY_DAYS,
) -> Kpis:
    """Every KPI of this module on the (identity-stitched) tables; what cannot be computed is kept
    with its reason."""
    result = Kpis(settings={"attribution_days": attribution_days, "journey_days": journey_days})
    if events is not None and len(events):
        result.notes = partial_months(events)
    try:
        o = orders(events)  # built once, read by most KPIs
    except NotComputable:
        o = None
    runs = {
        "channel_totals": lambda: channel_totals(events, o),
        "revenue_by_channel": lambda: revenue_by_channel(events, o),
        "repeat_purchase": lambda: repeat_purchase(events, o),
        "cohort_retention": lambda: cohort_retention(events, order_table=o),
        "cross_channel_value": lambda: cross_channel_value(events, o),
        "top_journeys": lambda: top_journeys(events, messages, journey_days, order_table=o),
        "message_conversion": lambda: message_conversion(messages, events, attribution_days, o),
        "engagement_by_hour": lambda: engagement_by_hour(messages, customers),
        "activity_by_hour": lambda: activity_by_hour(events, customers, o),
    }
    for name, run in runs.items():
        try:
            result.tables[name] = run()
        except NotComputable as exc:
            result.missing[name] = str(exc)
    return result
