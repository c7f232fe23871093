"""Customer profile features: one row per customer, built from every channel's events.

These feed the profile, the channel and send-time models and the ranker. All times are measured
up to `as_of`, never after it, so the same function builds leak-free training features for a
time-based split and serving features for today. Aggregation runs on integer codes with
`np.bincount`, not on string group-bys: this is the step that sees every event (tens of millions
of rows at a million customers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c
from features.io import rows_before


def local_time_parts(ts: pd.Series, timezones: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Local hour (0-23) and weekday (0 = Monday) of UTC timestamps, one IANA zone per row.

    Converted zone by zone (there are few zones and many rows), so daylight saving is exact.
    """
    tz_codes, tz_names = pd.factorize(pd.Series(timezones).fillna("UTC").astype(str), sort=True)
    return local_time_parts_by_code(ts, tz_codes, tz_names)


def local_time_parts_by_code(ts: pd.Series, tz_codes: np.ndarray, tz_names) -> tuple[np.ndarray, np.ndarray]:
    """`local_time_parts` with the zones already as codes into `tz_names`: at tens of millions
    of events the zone is looked up per customer, not per event."""
    hours = np.zeros(len(ts), dtype=np.int8)
    weekdays = np.zeros(len(ts), dtype=np.int8)
    for code, tz in enumerate(tz_names):
        mask = tz_codes == code
        if not mask.any():
            continue
        local = ts[mask].dt.tz_convert(tz)
        hours[mask] = local.dt.hour.to_numpy()
        weekdays[mask] = local.dt.day_of_week.to_numpy()
    return hours, weekdays


def _share_matrix(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int, weights=None) -> np.ndarray:
    """Row-normalised counts (n_rows × n_cols); rows without any count stay 0."""
    flat = np.bincount(rows * n_cols + cols, weights=weights, minlength=n_rows * n_cols).reshape(
        n_rows, n_cols
    )
    totals = flat.sum(axis=1, keepdims=True)
    return np.divide(flat, totals, out=np.zeros_like(flat, dtype=np.float64), where=totals > 0)


def build_customer_features(
    events: pd.DataFrame,
    customers: pd.DataFrame | None = None,
    products: pd.DataFrame | None = None,
    as_of: pd.Timestamp | None = None,
    channels: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """RFM, per-channel activity, activity by local hour and category shares per customer.

    Columns: customer_id, recency_days (since the last purchase; NaN without one), frequency
    (distinct orders), monetary (net purchase amount), n_events, tenure_days (since the first
    event), events_<channel> (share of the customer's events on that channel), hour_00..hour_23
    (share of events at that local hour), cat_<category> (share of purchased quantity in that
    category). Customers of the `customers` table without events get a row too.
    """
    # no copy of the events when all of them are before as_of (a profile refit on all history)
    ev = events if as_of is None else rows_before(events, c.TS, as_of)
    as_of = as_of if as_of is not None else (ev[c.TS].max() + pd.Timedelta(seconds=1))
    # customer ids hashed once per distinct id (factorize), not once per event
    ev_codes, ev_uniques = pd.factorize(ev[c.CUSTOMER_ID].astype(str))
    ev_uniques = np.asarray(ev_uniques, dtype=str)
    ids = pd.Index(np.sort(ev_uniques), name=c.CUSTOMER_ID)
    if customers is not None:
        ids = ids.union(pd.Index(customers[c.CUSTOMER_ID].astype(str))).rename(c.CUSTOMER_ID)
    n = len(ids)
    row = ids.get_indexer(ev_uniques)[ev_codes]
    out: dict[str, np.ndarray] = {}

    # comparisons on the string column itself: no per-event Python strings (gigabytes at 1M customers)
    is_purchase = (ev[c.EVENT_TYPE] == "purchase").to_numpy(dtype=bool, na_value=False)
    is_return = (ev[c.EVENT_TYPE] == "return").to_numpy(dtype=bool, na_value=False)
    # seconds since the epoch, from the UTC values (dt.tz_convert(None) drops the zone, not the time)
    ts_s = ev[c.TS].dt.tz_convert(None).to_numpy().astype("datetime64[s]").astype(np.int64)
    as_of_s = int(pd.Timestamp(as_of).timestamp())

    last_purchase = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last_purchase, row[is_purchase], ts_s[is_purchase])
    out["recency_days"] = np.where(
        last_purchase > np.iinfo(np.int64).min, (as_of_s - last_purchase) / 86400.0, np.nan
    )
    if c.ORDER_ID in ev and ev[c.ORDER_ID].notna().any():
        # a purchase without an order id is its own order (keyed by its time); orders as integer
        # codes, the missing ones after the named ones
        codes, names = pd.factorize(ev[c.ORDER_ID][is_purchase])
        missing = codes < 0
        if missing.any():
            time_codes, _ = pd.factorize(ts_s[is_purchase][missing])
            codes[missing] = len(names) + time_codes
        n_codes = int(codes.max(initial=0)) + 1
        order_rows = np.unique(row[is_purchase].astype(np.int64) * n_codes + codes) // n_codes
        out["frequency"] = np.bincount(order_rows, minlength=n).astype(float)
    else:
        out["frequency"] = np.bincount(row[is_purchase], minlength=n).astype(float)
    amount = ev[c.AMOUNT].fillna(0.0).to_numpy(dtype=np.float64)
    spend = np.bincount(row[is_purchase], weights=amount[is_purchase], minlength=n)
    refunds = np.bincount(row[is_return], weights=np.abs(amount[is_return]), minlength=n)
    out["monetary"] = spend - refunds
    out["n_events"] = np.bincount(row, minlength=n).astype(float)
    first_seen = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, row, ts_s)
    out["tenure_days"] = np.where(
        first_seen < np.iinfo(np.int64).max, (as_of_s - first_seen) / 86400.0, np.nan
    )

    ch_codes, ch_names = pd.factorize(ev[c.CHANNEL].astype(str))
    ch_share = _share_matrix(row, ch_codes, n, max(len(ch_names), 1))
    for ch in channels or tuple(sorted(ch_names)):
        j = list(ch_names).index(ch) if ch in ch_names else None
        out[f"events_{ch}"] = ch_share[:, j] if j is not None else np.zeros(n)

    # each customer's zone (UTC when unknown), then per event through its customer's row
    tz_of_customer = pd.Series("UTC", index=ids)
    if customers is not None and c.TIMEZONE in customers:
        known = customers.drop_duplicates(c.CUSTOMER_ID)
        tz_map = known.set_index(known[c.CUSTOMER_ID].astype(str))[c.TIMEZONE]
        tz_of_customer = pd.Series(tz_map.reindex(ids).to_numpy(), index=ids).fillna("UTC")
    tz_codes, tz_names = pd.factorize(tz_of_customer.astype(str), sort=True)
    hours, _ = local_time_parts_by_code(ev[c.TS], tz_codes[row], tz_names)
    hour_share = _share_matrix(row, hours.astype(np.int64), n, 24)
    for h in range(24):
        out[f"hour_{h:02d}"] = hour_share[:, h]

    if products is not None and is_purchase.any():
        cat_of = products.set_index(products[c.PRODUCT_ID].astype(str))[c.CATEGORY].astype(str)
        cat_of = cat_of[~cat_of.index.duplicated(keep="last")]  # as Series.map does with repeats
        # categories through product codes: one lookup per distinct product, not per purchase
        product_codes, product_names = pd.factorize(ev[c.PRODUCT_ID][is_purchase].astype(str))
        names_cat = pd.Series(product_names).map(cat_of).fillna("unknown").to_numpy(dtype=object)
        cats = np.where(product_codes >= 0, names_cat[np.maximum(product_codes, 0)], "unknown")
        cat_codes, cat_names = pd.factorize(cats, sort=True)
        qty = ev[c.QUANTITY].fillna(1.0).clip(lower=0).to_numpy(dtype=np.float64)[is_purchase]
        cat_share = _share_matrix(row[is_purchase], cat_codes, n, len(cat_names), weights=qty)
        for j, category in enumerate(cat_names):
            out[f"cat_{category}"] = cat_share[:, j]
    frame = pd.DataFrame(out, index=ids)
    return frame.reset_index()
