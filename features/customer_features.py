"""Customer profile features: one row per customer, built from every channel's events.

These feed the profile, the channel and send-time models and the ranker. All times are measured
up to `as_of`, never after it, so the same function builds leak-free training features for a
time-based split and serving features for today.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c


def local_time_parts(ts: pd.Series, timezones: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Local hour (0-23) and weekday (0 = Monday) of UTC timestamps, one IANA zone per row.

    Converted zone by zone (there are few zones and many rows), so daylight saving is exact.
    """
    hours = np.zeros(len(ts), dtype=np.int8)
    weekdays = np.zeros(len(ts), dtype=np.int8)
    tz_values = timezones.fillna("UTC").astype(str).to_numpy()
    for tz in np.unique(tz_values):
        mask = tz_values == tz
        local = ts[mask].dt.tz_convert(tz)
        hours[mask] = local.dt.hour.to_numpy()
        weekdays[mask] = local.dt.day_of_week.to_numpy()
    return hours, weekdays


def build_customer_features(
    events: pd.DataFrame,
    customers: pd.DataFrame | None = None,
    products: pd.DataFrame | None = None,
    as_of: pd.Timestamp | None = None,
    channels: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """RFM, per-channel activity, activity by local hour and category shares per customer.

    Columns: recency_days, frequency (distinct orders), monetary (net purchase amount), n_events,
    tenure_days, events_<channel> (share of the customer's events on that channel),
    hour_00..hour_23 (share of events at that local hour), cat_<category> (share of purchased
    quantity in that category). Customers of the `customers` table without events get a row too.
    """
    ev = events if as_of is None else events[events[c.TS] < as_of]
    as_of = as_of if as_of is not None else (ev[c.TS].max() + pd.Timedelta(seconds=1))
    ids = pd.Index(np.sort(ev[c.CUSTOMER_ID].astype(str).unique()), name=c.CUSTOMER_ID)
    if customers is not None:
        ids = ids.union(pd.Index(customers[c.CUSTOMER_ID].astype(str))).rename(c.CUSTOMER_ID)
    out = pd.DataFrame(index=ids)
    cust = ev[c.CUSTOMER_ID].astype(str)

    purchases = ev[ev[c.EVENT_TYPE] == "purchase"]
    returns = ev[ev[c.EVENT_TYPE] == "return"]
    pcust = purchases[c.CUSTOMER_ID].astype(str)
    last_purchase = purchases[c.TS].groupby(pcust).max()
    out["recency_days"] = ((as_of - last_purchase).dt.total_seconds() / 86400.0).reindex(ids)
    order_key = purchases[c.ORDER_ID].fillna(purchases[c.TS].astype(str)) if c.ORDER_ID in purchases else None
    if order_key is not None:
        out["frequency"] = order_key.groupby(pcust).nunique().reindex(ids).fillna(0).astype(float)
    else:
        out["frequency"] = pcust.value_counts().reindex(ids).fillna(0).astype(float)
    spend = purchases[c.AMOUNT].fillna(0).groupby(pcust).sum()
    refunds = returns[c.AMOUNT].fillna(0).abs().groupby(returns[c.CUSTOMER_ID].astype(str)).sum()
    out["monetary"] = spend.reindex(ids).fillna(0) - refunds.reindex(ids).fillna(0)
    out["n_events"] = cust.value_counts().reindex(ids).fillna(0).astype(float)
    first_seen = ev[c.TS].groupby(cust).min()
    out["tenure_days"] = ((as_of - first_seen).dt.total_seconds() / 86400.0).reindex(ids)

    channel_share = pd.crosstab(cust, ev[c.CHANNEL], normalize="index")
    for ch in channels or tuple(sorted(ev[c.CHANNEL].unique())):
        col = channel_share[ch] if ch in channel_share else pd.Series(dtype=float)
        out[f"events_{ch}"] = col.reindex(ids).fillna(0.0)

    tz = pd.Series("UTC", index=ev.index)
    if customers is not None and c.TIMEZONE in customers:
        tz_map = customers.set_index(customers[c.CUSTOMER_ID].astype(str))[c.TIMEZONE]
        tz = cust.map(tz_map).fillna("UTC")
    hours, _ = local_time_parts(ev[c.TS], tz)
    hour_share = pd.crosstab(cust.to_numpy(), hours, normalize="index")
    for h in range(24):
        col = hour_share[h] if h in hour_share else pd.Series(dtype=float)
        out[f"hour_{h:02d}"] = col.reindex(ids).fillna(0.0).to_numpy()

    if products is not None and len(purchases):
        cat = purchases[c.PRODUCT_ID].map(products.set_index(c.PRODUCT_ID)[c.CATEGORY]).fillna("unknown")
        qty = purchases[c.QUANTITY].fillna(1.0).clip(lower=0)
        cat_qty = qty.groupby([pcust, cat]).sum().unstack(fill_value=0.0)
        cat_share = cat_qty.div(cat_qty.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
        for category in sorted(cat_share.columns):
            out[f"cat_{category}"] = cat_share[category].reindex(ids).fillna(0.0)
    return out.reset_index()
