"""The unified customer profile: what we know about each customer at one moment, and how we know it.

`CustomerProfiles.fit(tables, as_of)` computes, for every customer (customers table ∪ events ∪
messages), the fields below; `profile(customer_id)` returns them as
`{field: {"value": ..., "derived_from": "..."}}` and `profiles_frame()` as one table.

- RFM: recency (days since the last purchase), frequency (distinct orders), monetary (net spend:
  purchases minus returns), each scored 1-5 by quintile among customers with a purchase
  (`rfm_scores`: percentile rank, ties share a score; 5 = most recent / most orders / most spend).
- segment (`assign_segments`, first rule that matches):
  no purchase → `new` when first seen within `new_days`, else `dormant`;
  recency > `dormant_days` → `dormant`; recency > `at_risk_days` → `at_risk`;
  first purchase within `new_days` and at most 2 orders → `new`;
  R, F and M scores all >= 4 → `champion`; F >= 4 → `loyal`; otherwise `active`.
- value tier (`value_tiers`): net spend among purchasers, top 20 % `high`, next 30 % `medium`,
  the rest `low`; `none` without a purchase.
- predicted spend over the next 90 days and churn risk (probability of no purchase in the next 90
  days): LightGBM models trained with a time split. Features are computed from the history before
  t = as_of - 90 days only, labels from [t, as_of); 20 % of customers are held out to report the
  metrics (against "the last 90 days repeat"), then the models are refitted on everyone and applied
  to the features at `as_of`. Without 90 days of history before t they are skipped, with a note.
- price sensitivity: the share of the customer's orders bought with a price incentive. An order
  counts when (a) it is the conversion of a message whose offer is a discount, BOGO or free
  shipping, or (b) one of its lines was sold below list price (amount < 99 % of price × quantity,
  when the products table has prices; retailers that log net amounts are covered by this). Capped
  at 1; undefined without orders.
- top categories (largest shares of purchased quantity), consent per message channel (latest row
  up to `as_of`; no row = not opted in), last contact (latest message sent) and last purchase.
- preferred channel and hours: from the channel model (best consented channel) and the send-time
  model (best slot outside quiet hours) when they are given; otherwise the consented channel with
  the best smoothed open rate in the message history (the most used event channel without one)
  and the customer's three most active local hours.

Model features. `CustomerHistory` answers "what was known about these customers at time t" for
any (customer, t) pairs with sorted cumulative sums: two `searchsorted` calls per question, so
features for every past message (the uplift training rows) are as exact and as leak-free as the
ones for today. `FEATURE_COLUMNS` lists them; `CustomerProfiles.model_features(ids, now)` gives
the matrix at `now`, with the time-relative features (recency, tenure, ...) moved to `now`.

Saved to a folder as Parquet tables, npy arrays, LightGBM text models and json (never pickle).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.metrics import mean_absolute_error, roc_auc_score
from sklearn.model_selection import train_test_split

from features import columns as c
from features.codes import positions
from features.io import Tables

# the feature build and the LightGBM fits run on the Dask cluster of `omni train --dask-scheduler`, if any
from models.base import FEW_IDS, CannotTrain, read_model_meta
from models.fitting import build_customer_features, fit_estimator, fit_pool, run_tasks
from models.timestamps import NAT_US, US_PER_DAY, US_PER_SECOND, from_us, to_us

FORMAT_VERSION = 1
MONETARY_OFFER_KINDS: tuple[str, ...] = ("discount", "bogo", "free_shipping")
DEFAULT_MESSAGE_CHANNELS: tuple[str, ...] = ("email", "sms", "push", "social")
_SECONDS_BITS = 34
RATE_PRIOR_STRENGTH = 2.0  # pseudo messages at the population rate in every smoothed rate
BELOW_LIST_TOLERANCE = 0.99  # a line below 99 % of list price × quantity was sold at a discount
_MAX_JOBS = 2

# Model features (the time-relative ones are recomputed at decision time, see `model_features`).
BASE_FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "orders_30d",
    "orders_90d",
    "orders_180d",
    "spend_90d",
    "n_events",
    "events_90d",
    "tenure_days",
    "days_since_signup",
    "days_since_first_purchase",
    "return_share",
    "price_index",
    "discount_share",
    "n_messages",
    "days_since_last_message",
    "open_rate",
    "conversion_rate_unopened",
    "conversion_rate_opened",
    "conversion_rate_offer_opened",
)
TIME_RELATIVE = {
    "recency_days": "last_purchase_us",
    "tenure_days": "first_event_us",
    "days_since_signup": "signup_us",
    "days_since_first_purchase": "first_purchase_us",
    "days_since_last_message": "last_message_us",
}

# Descriptions returned with every profile field.
DERIVED_FROM: dict[str, str] = {
    "recency_days": "days from the last purchase event to the profile time",
    "frequency": "distinct orders (order_id, or timestamp when missing) before the profile time",
    "monetary": "net spend: purchase amounts minus returned amounts, whole history",
    "rfm": "quintile scores 1-5 among customers with a purchase (5 = most recent / most orders / "
    "most spend; ties share a score)",
    "segment": "RFM rules, first match: no purchase → new (first seen within {new_days} days) or "
    "dormant; recency > {dormant_days} d → dormant; > {at_risk_days} d → at_risk; first purchase "
    "within {new_days} d and <= 2 orders → new; R, F, M >= 4 → champion; F >= 4 → loyal; else active",
    "value_tier": "net spend among purchasers: top 20 % high, next 30 % medium, rest low; none "
    "without a purchase",
    "predicted_spend_90d": "LightGBM (tweedie) on history features; trained with features before "
    "t = profile time - 90 days and spend in [t, profile time)",
    "churn_risk": "probability of no purchase in the next 90 days; LightGBM trained with features "
    "before t = profile time - 90 days and purchases in [t, profile time)",
    "price_sensitivity": "share of orders bought with a price incentive: conversions of messages "
    "with a discount, BOGO or free-shipping offer, plus orders with a line sold below 99 % of list "
    "price × quantity",
    "top_categories": "categories with the largest shares of purchased quantity",
    "preferred_channel": "",  # filled per source at fit time
    "preferred_hours": "",
    "consent": "latest consent row per message channel up to the profile time; no row = not opted in",
    "last_contact": "latest message sent (messages.sent_ts) before the profile time",
    "last_purchase": "latest purchase event before the profile time",
    "timezone": "customers.timezone (UTC when unknown)",
}


# ----------------------------------------------------------------------------------------------
# As-of sums over per-customer streams


class _Stream:
    """Timestamped values per customer, summed up to any moment for many (customer, t) at once."""

    def __init__(self, codes: np.ndarray, ts_us: np.ndarray, values: np.ndarray | None = None):
        keep = ts_us != NAT_US
        every = bool(keep.all())  # then no masked copies (the events' stream is gigabytes at 1M)
        codes = (codes if every else codes[keep]).astype(np.int64)
        ts_us = ts_us if every else ts_us[keep]
        if values is None:
            values = np.ones((len(codes), 1))
        else:
            values = np.asarray(values, np.float64)
            values = values if every else values[keep]
        # one value per row comes as a vector; reshape(n, -1) cannot infer the width of 0 rows
        values = values[:, None] if values.ndim == 1 else values
        seconds = np.maximum(ts_us // US_PER_SECOND, 0)
        key = (codes << _SECONDS_BITS) | seconds
        del codes, seconds
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        del key
        self.ts = ts_us[order]
        # [0; running sums in key order], a column at a time (a running sum is the same numbers
        # whichever way it is laid out) instead of a sorted copy, the sums and a stacked copy
        self.cum = np.empty((len(order) + 1, values.shape[1]))
        self.cum[0] = 0.0
        for j in range(values.shape[1]):
            np.cumsum(values[order, j], out=self.cum[1:, j])

    def _bounds(self, codes: np.ndarray, t_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # rows of the customer strictly before t's second: leak-free even for ties at t
        t = np.maximum(np.asarray(t_us, dtype=np.int64) // US_PER_SECOND, 0)
        start = np.searchsorted(self.key, codes << _SECONDS_BITS, side="left")
        pos = np.searchsorted(self.key, (codes << _SECONDS_BITS) | t, side="left")
        return start, pos

    def sums(self, codes: np.ndarray, t_us: np.ndarray) -> np.ndarray:
        start, pos = self._bounds(codes, t_us)
        return self.cum[pos] - self.cum[start]

    def last_before(self, codes: np.ndarray, t_us: np.ndarray) -> np.ndarray:
        start, pos = self._bounds(codes, t_us)
        out = np.full(len(codes), NAT_US, dtype=np.int64)
        has = pos > start
        out[has] = self.ts[pos[has] - 1]
        return out

    def first_before(self, codes: np.ndarray, t_us: np.ndarray) -> np.ndarray:
        start, pos = self._bounds(codes, t_us)
        out = np.full(len(codes), NAT_US, dtype=np.int64)
        has = pos > start
        out[has] = self.ts[start[has]]
        return out


def message_windows_days(
    messages: pd.DataFrame, offers: pd.DataFrame | None, default_days: float
) -> np.ndarray:
    """The conversion window of every message, in days: its offer's `duration_days` (the offer's
    validity, optional in `offers`) when the message carries an offer that has one, else
    `default_days` (`--conversion-window-days`, 14 by default)."""
    out = np.full(len(messages), float(default_days))
    if offers is None or c.DURATION_DAYS not in offers or c.OFFER_ID not in messages:
        return out
    unique = offers.drop_duplicates(c.OFFER_ID)
    duration = pd.Series(
        pd.to_numeric(unique[c.DURATION_DAYS], errors="coerce").to_numpy(np.float64),
        index=unique[c.OFFER_ID].astype(str).to_numpy(),
    )
    offer = messages[c.OFFER_ID].astype(object)
    days = offer.where(offer.notna(), None).map(duration).to_numpy(np.float64, na_value=np.nan)
    usable = np.isfinite(days) & (days > 0)
    out[usable] = days[usable]
    return out


def attribute_columns(customers: pd.DataFrame | None) -> list[str]:
    """The free customer attributes of a customers table: its columns named `attr.<name>`."""
    if customers is None:
        return []
    return [col for col in customers.columns if str(col).startswith(c.ATTRIBUTE_PREFIX)]


# a categorical attribute keeps its most frequent levels, each held by at least this share of
# the customers (and at most this many levels): rarer ones are pooled into "other"
ATTRIBUTE_MIN_LEVEL_SHARE = 0.01
ATTRIBUTE_MAX_LEVELS = 20


def encode_attributes(customers: pd.DataFrame | None, index: pd.Index) -> pd.DataFrame:
    """Customer attributes (`attr.*` columns) as model features, one row per customer of `index`.

    Numeric columns (or text columns whose every present value reads as a number) become one
    float feature, missing = NaN. Text columns become indicator features `attr.<name>=<level>`
    for their most frequent levels (`ATTRIBUTE_MAX_LEVELS`, each held by at least
    `ATTRIBUTE_MIN_LEVEL_SHARE` of the customers), rarer levels `attr.<name>=other`; a missing
    value is all zeros. Attributes are taken as they are in the table at every moment of the
    history (they carry no timestamp): an attribute that was updated from later behaviour would
    leak, which is why the models keep them only where validation says they help.
    """
    columns = attribute_columns(customers)
    out: dict[str, np.ndarray] = {}
    if not columns:
        return pd.DataFrame(index=range(len(index)))
    unique = customers.drop_duplicates(c.CUSTOMER_ID)
    table = unique.set_index(unique[c.CUSTOMER_ID].astype(str).to_numpy())
    for col in columns:
        values = table[col].reindex(index)
        present = values.notna()
        if pd.api.types.is_bool_dtype(values.dropna()):
            out[str(col)] = values.astype(object).where(present, np.nan).astype(np.float64).to_numpy()
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        if bool((numeric.notna() == present).all()):
            out[str(col)] = numeric.astype(np.float64).to_numpy()
            continue
        text = values.astype(object).where(present, None).map(lambda v: None if v is None else str(v))
        counts = text.value_counts()
        keep = counts.index[counts >= max(1.0, ATTRIBUTE_MIN_LEVEL_SHARE * len(index))][:ATTRIBUTE_MAX_LEVELS]
        for level in keep:
            out[f"{col}={level}"] = (text == level).to_numpy(np.float64)
        rare = text.notna() & ~text.isin(keep)
        if rare.any():
            out[f"{col}=other"] = rare.to_numpy(np.float64)
    return pd.DataFrame(out)


MIN_GAPS_FOR_THRESHOLDS = 100
FALLBACK_THRESHOLDS = {"new_days": 60.0, "at_risk_days": 90.0, "dormant_days": 180.0}
THRESHOLD_QUANTILES = {"new_days": 0.90, "at_risk_days": 0.95, "dormant_days": 0.99}


def segment_thresholds(orders: _Stream, as_of_us: int) -> dict[str, float] | None:
    """Segment thresholds (days) from the gaps between consecutive orders of the same customer
    before `as_of`: quantiles `THRESHOLD_QUANTILES` of those gaps (at least one day each, dormant
    beyond at risk beyond new). None with fewer than `MIN_GAPS_FOR_THRESHOLDS` gaps."""
    before = orders.ts < as_of_us
    code = (orders.key >> _SECONDS_BITS)[before]
    ts = orders.ts[before]
    same = code[1:] == code[:-1]
    gaps = (ts[1:] - ts[:-1])[same] / US_PER_DAY
    gaps = gaps[gaps > 0]
    if len(gaps) < MIN_GAPS_FOR_THRESHOLDS:
        return None
    out = {name: max(1.0, float(np.quantile(gaps, q))) for name, q in THRESHOLD_QUANTILES.items()}
    out["at_risk_days"] = max(out["at_risk_days"], out["new_days"])
    out["dormant_days"] = max(out["dormant_days"], out["at_risk_days"] + 1.0)
    return out


def _days(t_us: np.ndarray, then_us: np.ndarray) -> np.ndarray:
    out = (t_us - then_us) / US_PER_DAY
    return np.where(then_us == NAT_US, np.nan, out)


def _rate(num, den, prior: float) -> np.ndarray:
    return (num + RATE_PRIOR_STRENGTH * prior) / (den + RATE_PRIOR_STRENGTH)


class CustomerHistory:
    """Events and messages as per-customer streams; `features_at(ids, times)` is leak-free.

    Everything counted for (customer, t) happened strictly before t: events by their timestamp,
    opens by `opened_ts`, a message's conversion outcome only once its window has closed
    (`sent_ts + conversion_window_days`), an offer conversion by `converted_ts`. The smoothing
    priors (population open and conversion rates) come from messages closed before `as_of`.
    """

    def __init__(
        self, tables: Tables, as_of: pd.Timestamp | None = None, conversion_window_days: float = 14.0
    ):
        events, messages = tables.events, tables.messages
        self.conversion_window_days = conversion_window_days
        ids = [events[c.CUSTOMER_ID].astype(str).unique()]
        if tables.customers is not None:
            ids.append(tables.customers[c.CUSTOMER_ID].astype(str).unique())
        if messages is not None:
            ids.append(messages[c.CUSTOMER_ID].astype(str).unique())
        self.customer_index = pd.Index(np.unique(np.concatenate(ids)))
        last = [events[c.TS].max()] + (
            [messages[c.SENT_TS].max()] if messages is not None and len(messages) else []
        )
        self.as_of = pd.Timestamp(as_of) if as_of is not None else max(last) + pd.Timedelta(seconds=1)
        as_of_us = int(to_us(self.as_of)[0])

        # ---- events
        ev_codes = self._codes(events[c.CUSTOMER_ID])
        ev_ts = to_us(events[c.TS])
        self.event_channels = tuple(sorted(events[c.CHANNEL].dropna().astype(str).unique()))
        channel_codes = pd.Categorical(events[c.CHANNEL].astype(str), categories=self.event_channels).codes
        onehot = np.zeros((len(events), 1 + len(self.event_channels)), dtype=np.float64)
        onehot[:, 0] = 1.0
        valid = channel_codes >= 0
        onehot[np.flatnonzero(valid), 1 + channel_codes[valid]] = 1.0
        self.events = _Stream(ev_codes, ev_ts, onehot)
        del onehot

        purchase = (events[c.EVENT_TYPE] == "purchase").to_numpy()
        buys = events.loc[purchase]
        amount = (
            buys[c.AMOUNT].to_numpy(np.float64, na_value=np.nan)
            if c.AMOUNT in buys
            else np.full(len(buys), np.nan)
        )
        qty = buys[c.QUANTITY].fillna(1.0).to_numpy(np.float64) if c.QUANTITY in buys else np.ones(len(buys))
        log_ratio = np.full(len(buys), np.nan)
        below_list = np.zeros(len(buys), dtype=bool)
        has_prices = tables.products is not None and c.PRICE in tables.products
        if has_prices and c.PRODUCT_ID in buys and np.isnan(amount).any():
            # a log without amounts (or with gaps) is valued at list price × quantity where the
            # products table knows the price: spend and order values stay defined
            unit = buys[c.PRODUCT_ID].map(
                tables.products.drop_duplicates(c.PRODUCT_ID).set_index(c.PRODUCT_ID)[c.PRICE]
            )
            list_amount = unit.to_numpy(np.float64, na_value=np.nan) * qty
            amount = np.where(np.isnan(amount), list_amount, amount)
        amount = np.nan_to_num(amount, nan=0.0)
        self.has_amounts = bool(np.any(amount != 0))
        if has_prices and c.PRODUCT_ID in buys and "products" not in tables.derived:
            products = tables.products
            price = buys[c.PRODUCT_ID].map(products.set_index(c.PRODUCT_ID)[c.PRICE]).to_numpy(np.float64)
            cat_median = products.groupby(c.CATEGORY)[c.PRICE].median()
            category = buys[c.PRODUCT_ID].map(products.set_index(c.PRODUCT_ID)[c.CATEGORY])
            median = category.map(cat_median).to_numpy(np.float64)
            unit = np.where(qty > 0, amount / np.where(qty > 0, qty, 1.0), np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                log_ratio = np.log(unit / median)
            log_ratio[~np.isfinite(log_ratio)] = np.nan
            below_list = np.nan_to_num(amount) < BELOW_LIST_TOLERANCE * np.nan_to_num(price * qty, nan=0.0)
        has_ratio = ~np.isnan(log_ratio)
        buy_codes = ev_codes[purchase]
        buy_ts = ev_ts[purchase]
        self.lines = _Stream(buy_codes, buy_ts, np.column_stack([np.nan_to_num(log_ratio), has_ratio]))

        # orders: one row per order at its first line (order_id, or the timestamp when missing)
        order_key = buys[c.ORDER_ID].astype(str).to_numpy() if c.ORDER_ID in buys else None
        if order_key is None or buys[c.ORDER_ID].isna().any():
            fallback = buys[c.CUSTOMER_ID].astype(str) + "@" + buys[c.TS].astype(str)
            order_key = (
                np.where(buys[c.ORDER_ID].isna(), fallback, order_key) if order_key is not None else fallback
            )
        frame = pd.DataFrame(
            {
                "key": np.asarray(order_key),
                "code": buy_codes,
                "ts": buy_ts,
                "amount": amount,
                "below": below_list,
            }
        )
        orders = frame.groupby("key", sort=False).agg(
            code=("code", "first"), ts=("ts", "min"), amount=("amount", "sum"), below=("below", "max")
        )
        self.orders = _Stream(
            orders["code"].to_numpy(),
            orders["ts"].to_numpy(),
            np.column_stack([np.ones(len(orders)), orders["amount"], orders["below"].astype(float)]),
        )
        returns = events.loc[(events[c.EVENT_TYPE] == "return").to_numpy()]
        returned = returns[c.AMOUNT].fillna(0.0).abs() if c.AMOUNT in returns else np.zeros(len(returns))
        self.returns = _Stream(self._codes(returns[c.CUSTOMER_ID]), to_us(returns[c.TS]), returned)
        signup = pd.Series(NAT_US, index=self.customer_index, dtype=np.int64)
        if tables.customers is not None and c.SIGNUP_TS in tables.customers:
            cust = tables.customers.dropna(subset=[c.SIGNUP_TS])
            signup.loc[cust[c.CUSTOMER_ID].astype(str).to_numpy()] = to_us(cust[c.SIGNUP_TS])
        self.signup_us = signup.to_numpy()
        # free customer attributes (`attr.*`), encoded once per customer
        attributes = encode_attributes(tables.customers, self.customer_index)
        self.attribute_names: list[str] = [str(col) for col in attributes.columns]
        self.attributes = attributes.to_numpy(np.float64) if len(self.attribute_names) else None

        # ---- messages
        self.message_channels: tuple[str, ...] = ()
        self.priors = {"open": 0.0, "unopened": 0.0, "opened": 0.0, "offer_opened": 0.0}
        self.channel_prior: dict[str, float] = {}
        self.sent = self.opens = self.closed = self.offer_conversions = None
        if messages is not None and len(messages):
            self._message_streams(messages, tables.offers, as_of_us)

    def _codes(self, ids) -> np.ndarray:
        # each distinct id looked up once: the rows (every event) are millions, the customers fewer
        codes = positions(
            self.customer_index, ids if isinstance(ids, pd.Series) else np.asarray(ids, dtype=object)
        )
        # unknown customers get a code with no rows: every sum is 0, every time unknown
        return np.where(codes >= 0, codes, len(self.customer_index)).astype(np.int64)

    def _message_streams(self, messages: pd.DataFrame, offers: pd.DataFrame | None, as_of_us: int) -> None:
        m_codes = self._codes(messages[c.CUSTOMER_ID])
        sent = to_us(messages[c.SENT_TS])
        opened_ts = (
            to_us(messages[c.OPENED_TS]) if c.OPENED_TS in messages else np.full(len(messages), NAT_US)
        )
        converted_ts = (
            to_us(messages[c.CONVERTED_TS]) if c.CONVERTED_TS in messages else np.full(len(messages), NAT_US)
        )
        opened = opened_ts != NAT_US
        converted = converted_ts != NAT_US
        self.message_channels = tuple(sorted(messages[c.CHANNEL].astype(str).unique()))
        ch = pd.Categorical(messages[c.CHANNEL].astype(str), categories=self.message_channels).codes
        onehot = np.zeros((len(messages), len(self.message_channels)))
        onehot[np.arange(len(messages)), ch] = 1.0
        self.sent = _Stream(m_codes, sent, np.column_stack([np.ones(len(messages)), onehot]))
        self.opens = _Stream(m_codes, opened_ts, np.column_stack([np.ones(len(messages)), onehot]))
        # the profile fit's memory peaks around here at a million customers: each message-sized
        # array is let go (or not copied) as soon as it is no longer read
        del onehot
        monetary = np.zeros(len(messages), dtype=bool)
        if offers is not None and c.OFFER_ID in messages:
            kinds = messages[c.OFFER_ID].map(offers.set_index(c.OFFER_ID)[c.KIND])
            monetary = kinds.isin(MONETARY_OFFER_KINDS).to_numpy()
        # each message's outcome is known once its own window (its offer's validity, else the
        # default window) has closed
        windows = message_windows_days(messages, offers, self.conversion_window_days)
        closes = sent + (windows * US_PER_DAY).astype(np.int64)
        closed_values = np.column_stack(
            [
                np.ones(len(messages)),
                converted,
                opened,
                opened & converted,
                ~opened & converted,
                monetary & opened,
                monetary & opened & converted,
            ]
        ).astype(np.float64, copy=False)
        # population rates for smoothing, from messages whose outcome was known at as_of (sums of
        # whole numbers: exact in any order, without a copy of the known rows)
        known = closes < as_of_us
        tot = known.astype(np.float64) @ closed_values
        self.closed = _Stream(m_codes, closes, closed_values)
        del closed_values
        self.offer_conversions = _Stream(m_codes, np.where(monetary & converted, converted_ts, NAT_US))
        self.priors = {
            "open": float(tot[2] / tot[0]) if tot[0] else 0.0,
            "unopened": float(tot[4] / (tot[0] - tot[2])) if tot[0] > tot[2] else 0.0,
            "opened": float(tot[3] / tot[2]) if tot[2] else 0.0,
            "offer_opened": float(tot[6] / tot[5]) if tot[5] else 0.0,
        }
        sent_before = sent < as_of_us
        for j, name in enumerate(self.message_channels):
            rows = sent_before & (ch == j)
            self.channel_prior[name] = float(opened[rows].mean()) if rows.any() else self.priors["open"]

    # ------------------------------------------------------------------------------------------
    def features_at(self, customer_ids, times) -> pd.DataFrame:
        """Model features (`BASE_FEATURES` + `share_<event channel>`) per (customer, time) pair.

        `times`: one timestamp for all or one per customer. Also returns the raw timestamps the
        time-relative features come from (`*_us` columns), so they can be moved to a later time.
        """
        codes = self._codes(customer_ids)
        n = len(codes)
        t = to_us(times) if not isinstance(times, pd.Timestamp) else np.full(n, to_us(times)[0])
        if len(t) == 1 and n != 1:
            t = np.full(n, t[0])
        out: dict[str, np.ndarray] = {}

        orders = self.orders.sums(codes, t)
        last_order = self.orders.last_before(codes, t)
        first_order = self.orders.first_before(codes, t)
        returned = self.returns.sums(codes, t)[:, 0]
        frequency = orders[:, 0]
        gross = orders[:, 1]
        out["recency_days"] = _days(t, last_order)
        out["frequency"] = frequency
        out["monetary"] = gross - returned
        with np.errstate(invalid="ignore", divide="ignore"):
            out["avg_order_value"] = np.where(frequency > 0, gross / np.maximum(frequency, 1), np.nan)
        for days in (30, 90, 180):
            earlier = self.orders.sums(codes, t - days * US_PER_DAY)
            out[f"orders_{days}d"] = frequency - earlier[:, 0]
            if days == 90:
                out["spend_90d"] = gross - earlier[:, 1]
        ev = self.events.sums(codes, t)
        n_events = ev[:, 0]
        out["n_events"] = n_events
        out["events_90d"] = n_events - self.events.sums(codes, t - 90 * US_PER_DAY)[:, 0]
        first_event = self.events.first_before(codes, t)
        out["tenure_days"] = _days(t, first_event)
        signup = self.signup_us[np.minimum(codes, len(self.signup_us) - 1)]
        signup = np.where(codes < len(self.signup_us), signup, NAT_US)
        signup = np.where((signup != NAT_US) & (signup < t), signup, NAT_US)
        out["days_since_signup"] = _days(t, signup)
        out["days_since_first_purchase"] = _days(t, first_order)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["return_share"] = np.where(gross > 0, returned / np.where(gross > 0, gross, 1.0), np.nan)
            lines = self.lines.sums(codes, t)
            out["price_index"] = np.where(lines[:, 1] > 0, lines[:, 0] / np.maximum(lines[:, 1], 1), np.nan)
        offer_orders = (
            self.offer_conversions.sums(codes, t)[:, 0] if self.offer_conversions is not None else np.zeros(n)
        )
        discounted = np.minimum(orders[:, 2] + offer_orders, frequency)
        out["discount_share"] = np.where(frequency > 0, discounted / np.maximum(frequency, 1), np.nan)

        if self.sent is not None:
            sent = self.sent.sums(codes, t)[:, 0]
            last_message = self.sent.last_before(codes, t)
            closed = self.closed.sums(codes, t)
            n_closed, conv, opened, opened_conv, unopened_conv, offer_opened, offer_opened_conv = closed.T
            out["n_messages"] = sent
            out["days_since_last_message"] = _days(t, last_message)
            out["open_rate"] = _rate(opened, n_closed, self.priors["open"])
            out["conversion_rate_unopened"] = _rate(unopened_conv, n_closed - opened, self.priors["unopened"])
            out["conversion_rate_opened"] = _rate(opened_conv, opened, self.priors["opened"])
            out["conversion_rate_offer_opened"] = _rate(
                offer_opened_conv, offer_opened, self.priors["offer_opened"]
            )
        else:
            last_message = np.full(n, NAT_US, dtype=np.int64)
            for name in BASE_FEATURES[BASE_FEATURES.index("n_messages") :]:
                out[name] = np.full(n, np.nan)
            out["n_messages"] = np.zeros(n)
        frame = pd.DataFrame({name: out[name] for name in BASE_FEATURES})
        with np.errstate(invalid="ignore", divide="ignore"):
            for j, ch in enumerate(self.event_channels):
                frame[f"share_{ch}"] = np.where(n_events > 0, ev[:, 1 + j] / np.maximum(n_events, 1), 0.0)
        if self.attributes is not None:
            known = codes < len(self.customer_index)
            values = np.full((n, len(self.attribute_names)), np.nan)
            values[known] = self.attributes[codes[known]]
            for j, name in enumerate(self.attribute_names):
                frame[name] = values[:, j]
        frame["last_purchase_us"] = last_order
        frame["first_purchase_us"] = first_order
        frame["first_event_us"] = first_event
        frame["signup_us"] = signup
        frame["last_message_us"] = last_message
        return frame

    def channel_open_rates(self, customer_ids, t: pd.Timestamp) -> pd.DataFrame:
        """Smoothed open rate per message channel: (opens + 2·rate_ch) / (sent + 2), before t."""
        codes = self._codes(customer_ids)
        tt = np.full(len(codes), to_us(t)[0])
        out = {}
        if self.sent is None:
            return pd.DataFrame(index=range(len(codes)))
        sent = self.sent.sums(codes, tt)
        opens = self.opens.sums(codes, tt)
        for j, ch in enumerate(self.message_channels):
            out[ch] = _rate(opens[:, 1 + j], sent[:, 1 + j], self.channel_prior[ch])
        return pd.DataFrame(out)

    def last_message_channel(self, customer_ids, t: pd.Timestamp) -> np.ndarray:
        """Channel of each customer's last message before t (None when none)."""
        codes = self._codes(customer_ids)
        out = np.full(len(codes), None, dtype=object)
        if self.sent is None:
            return out
        tt = np.full(len(codes), to_us(t)[0])
        start, pos = self.sent._bounds(codes, tt)
        has = pos > start
        # the one-hot channel columns of the last row = difference of consecutive cumulative sums
        last_row = self.sent.cum[pos[has]] - self.sent.cum[pos[has] - 1]
        out[has] = np.asarray(self.message_channels, dtype=object)[np.argmax(last_row[:, 1:], axis=1)]
        return out


# ----------------------------------------------------------------------------------------------
# Rules with known answers
def rfm_scores(recency_days, frequency, monetary) -> pd.DataFrame:
    """Quintile scores 1-5 among customers with a purchase (frequency > 0); 0 for the others.

    Score = ceil(5 · percentile rank), with ties sharing their average rank; recency is ranked
    reversed (the most recent buyer scores 5).
    """
    recency = pd.Series(np.asarray(recency_days, dtype=np.float64))
    freq = pd.Series(np.asarray(frequency, dtype=np.float64))
    money = pd.Series(np.asarray(monetary, dtype=np.float64))
    buyers = (freq > 0).to_numpy()

    def score(values: pd.Series) -> np.ndarray:
        out = np.zeros(len(values), dtype=np.int64)
        if buyers.any():
            pct = values[buyers].rank(pct=True, method="average").to_numpy()
            out[buyers] = np.clip(np.ceil(5 * pct - 1e-9), 1, 5).astype(np.int64)
        return out

    return pd.DataFrame(
        {"recency_score": score(-recency), "frequency_score": score(freq), "monetary_score": score(money)}
    )


def assign_segments(
    recency_days,
    frequency,
    days_since_first_purchase,
    days_since_first_seen,
    scores: pd.DataFrame,
    new_days: float = 60.0,
    at_risk_days: float = 90.0,
    dormant_days: float = 180.0,
) -> np.ndarray:
    """Segment per customer by the rules of the module docstring (first match wins)."""
    recency = np.asarray(recency_days, dtype=np.float64)
    freq = np.asarray(frequency, dtype=np.float64)
    first_buy = np.asarray(days_since_first_purchase, dtype=np.float64)
    first_seen = np.asarray(days_since_first_seen, dtype=np.float64)
    r, f, m = (scores[col].to_numpy() for col in ("recency_score", "frequency_score", "monetary_score"))
    no_purchase = ~(freq > 0)
    seen_recently = np.nan_to_num(first_seen, nan=0.0) <= new_days
    conditions = [
        no_purchase & seen_recently,
        no_purchase,
        recency > dormant_days,
        recency > at_risk_days,
        (first_buy <= new_days) & (freq <= 2),
        (r >= 4) & (f >= 4) & (m >= 4),
        f >= 4,
    ]
    choices = ["new", "dormant", "dormant", "at_risk", "new", "champion", "loyal"]
    return np.select(conditions, choices, default="active").astype(object)


def value_tiers(monetary, frequency) -> np.ndarray:
    """high (top 20 % of net spend among purchasers), medium (next 30 %), low (rest), none."""
    money = pd.Series(np.asarray(monetary, dtype=np.float64))
    buyers = np.asarray(frequency, dtype=np.float64) > 0
    out = np.full(len(money), "none", dtype=object)
    if buyers.any():
        # share of purchasers spending at least as much (ties: the customer's best position)
        pct = money[buyers].rank(pct=True, method="max", ascending=False).to_numpy()
        out[buyers] = np.where(pct <= 0.2, "high", np.where(pct <= 0.5, "medium", "low"))
    return out


def top_categories(category_shares: pd.DataFrame, k: int = 3) -> list[list[str]]:
    """Per row, the up to k categories with the largest positive shares (columns `cat_<name>`)."""
    cols = [col for col in category_shares.columns if col.startswith("cat_")]
    if not cols:
        return [[] for _ in range(len(category_shares))]
    names = np.array([col[4:] for col in cols], dtype=object)
    values = category_shares[cols].to_numpy(np.float64)
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    out = []
    for row, idx in enumerate(order):
        out.append([str(names[j]) for j in idx if values[row, j] > 0])
    return out


# ----------------------------------------------------------------------------------------------
class CustomerProfiles(BaseEstimator):
    """The unified profile of every customer at `as_of` (see the module docstring).

    Parameters
    ----------
    horizon_days : forecast horizon of predicted spend and churn risk (and the time-split gap).
    new_days, at_risk_days, dormant_days : segment thresholds (days). None (default): read from the
        data's own buying rhythm, the gaps between consecutive orders of the same customer before
        `as_of` (`segment_thresholds`): new while the first purchase is more recent than 90 % of
        those gaps, at risk beyond 95 % of them, dormant beyond 99 % (a grocery shopper who buys
        weekly is at risk after a few weeks, a furniture buyer after a year). Fixed values were
        60 / 90 / 180 days, which matched the generator's lifecycles and no retailer's in
        particular; they remain the fallback with fewer than `MIN_GAPS_FOR_THRESHOLDS` gaps.
    n_top_categories : categories listed per customer.
    conversion_window_days : a message's conversion outcome counts once this window has closed.
    forecast : fit the spend and churn models (else those fields are missing, with a note).
    n_estimators, learning_rate, num_leaves, min_child_samples : LightGBM settings of both models.
    replenishment_lead_days : a replenishable product is "due" from this many days before the end
        of its cycle (last purchase + replenishment_days) to half a cycle after it.
    random_state, n_jobs : LightGBM's seed and threads per model (at most 2).
    fit_workers : the forecast models are fitted on this many Python threads at once (LightGBM
        releases the GIL; the fits are independent and seeded, so the models do not depend on it;
        one at a time on the Dask cluster of `omni train --dask-scheduler`).

    Fitted attributes: as_of_, frame_ (one row per customer: display fields and timestamps),
    features_ (model features at as_of), activity_hours_ (n, 24 local-hour activity shares),
    message_channels_, replenishment_ (customer, product, last purchase, cycle), forecast_metrics_,
    feature_names_, notes_, sources_ (where preferred channel / hours came from).
    """

    def __init__(
        self,
        horizon_days: int = 90,
        new_days: float | None = None,
        at_risk_days: float | None = None,
        dormant_days: float | None = None,
        n_top_categories: int = 3,
        conversion_window_days: float = 14.0,
        forecast: bool = True,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 50,
        replenishment_lead_days: float = 3.0,
        random_state: int | None = 0,
        n_jobs: int = 1,
        fit_workers: int = 2,
    ):
        self.horizon_days = horizon_days
        self.new_days = new_days
        self.at_risk_days = at_risk_days
        self.dormant_days = dormant_days
        self.n_top_categories = n_top_categories
        self.conversion_window_days = conversion_window_days
        self.forecast = forecast
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.replenishment_lead_days = replenishment_lead_days
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.fit_workers = fit_workers

    # ------------------------------------------------------------------------------------------
    def fit(
        self,
        tables: Tables,
        as_of: pd.Timestamp | None = None,
        channel_model=None,
        send_time_model=None,
        quiet_hours: tuple[int, int] | None = (21, 8),
        customer_features: pd.DataFrame | None = None,
    ) -> CustomerProfiles:
        """Profiles of every customer at `as_of` (default: just after the last event or message).

        `tables` should be identity-stitched. `channel_model` / `send_time_model` (optional) are
        fitted `models.engagement.channel.ChannelModel` / `models.engagement.send_time.SendTimeModel`.
        `customer_features` (optional): `build_customer_features` of the same tables with every
        event counted, when the caller has built it already (`omni train` has): its activity hours
        and category shares are read instead of built again, where every event is before `as_of`.
        """
        if tables.events is None or len(tables.events) == 0:
            raise CannotTrain("profiles need an events table with at least one event")
        if not (tables.events[c.EVENT_TYPE] == "purchase").any():
            raise CannotTrain(
                "profiles need purchases: the events table holds no event of type 'purchase', so there "
                "is no recency, frequency, spend or churn to describe"
            )
        self.notes_: list[str] = []
        history = CustomerHistory(tables, as_of, self.conversion_window_days)
        self.history_ = history  # kept for training in the same process; never saved
        self.as_of_ = history.as_of
        if not history.has_amounts:
            self.notes_.append(
                "purchases carry no amounts (and no list prices to value them): monetary, spend and order "
                "values are all 0, value tiers and spend forecasts say nothing"
            )
        ids = history.customer_index.to_numpy().astype(str)
        feats = history.features_at(ids, self.as_of_)
        self.feature_names_ = [col for col in feats.columns if not col.endswith("_us")]
        self.attribute_names_ = list(history.attribute_names)
        self.features_ = feats[self.feature_names_].astype(np.float64).reset_index(drop=True)
        self.thresholds_ = self._segment_thresholds(history)

        frame = pd.DataFrame({c.CUSTOMER_ID: ids})
        for col in (
            "last_purchase_us",
            "first_purchase_us",
            "first_event_us",
            "signup_us",
            "last_message_us",
        ):
            frame[col] = feats[col].to_numpy()
        frame["recency_days"] = feats["recency_days"].to_numpy()
        frame["frequency"] = feats["frequency"].to_numpy()
        frame["monetary"] = feats["monetary"].to_numpy()
        frame["avg_order_value"] = feats["avg_order_value"].to_numpy()
        scores = rfm_scores(frame["recency_days"], frame["frequency"], frame["monetary"])
        frame = pd.concat([frame, scores], axis=1)
        first_seen = np.fmax(feats["tenure_days"].to_numpy(), feats["days_since_signup"].to_numpy())
        frame["segment"] = assign_segments(
            frame["recency_days"],
            frame["frequency"],
            feats["days_since_first_purchase"],
            first_seen,
            scores,
            self.thresholds_["new_days"],
            self.thresholds_["at_risk_days"],
            self.thresholds_["dormant_days"],
        )
        frame["value_tier"] = value_tiers(frame["monetary"], frame["frequency"])
        frame["price_sensitivity"] = feats["discount_share"].to_numpy()

        timezone = pd.Series("UTC", index=ids)
        if tables.customers is not None and c.TIMEZONE in tables.customers:
            cust = tables.customers.dropna(subset=[c.TIMEZONE])
            tz = pd.Series(cust[c.TIMEZONE].astype(str).to_numpy(), index=cust[c.CUSTOMER_ID].astype(str))
            tz = tz[~tz.index.duplicated()]
            timezone = timezone.index.to_series().map(tz).fillna("UTC")
        frame[c.TIMEZONE] = timezone.to_numpy().astype(object)

        # activity by local hour and category shares (the project's feature builder)
        every_event = customer_features is not None and tables.events[c.TS].max() < self.as_of_
        activity = (
            customer_features
            if every_event
            else build_customer_features(tables.events, tables.customers, tables.products, self.as_of_)
        )
        activity = activity.set_index(c.CUSTOMER_ID).reindex(ids)
        hour_cols = [f"hour_{h:02d}" for h in range(24)]
        self.activity_hours_ = activity[hour_cols].fillna(0.0).to_numpy(np.float32)
        cat_cols = [col for col in activity.columns if col.startswith("cat_")]
        categories = activity[cat_cols].fillna(0.0)
        frame["top_categories"] = top_categories(categories, self.n_top_categories)
        frame["bought_categories"] = top_categories(categories, len(cat_cols))

        # consent and smoothed open rates per message channel
        self.message_channels_ = (
            tuple(
                sorted(
                    set(history.message_channels)
                    | (set(tables.consent[c.CHANNEL].astype(str)) if tables.consent is not None else set())
                )
            )
            or DEFAULT_MESSAGE_CHANNELS
        )
        from models.consent import latest_consent_matrix

        consent = latest_consent_matrix(tables.consent, ids, self.message_channels_, self.as_of_)
        self.has_consent_table_ = tables.consent is not None
        if not self.has_consent_table_:
            self.notes_.append("no consent table: every message channel is taken as allowed for everyone")
        rates = history.channel_open_rates(ids, self.as_of_)
        default_rate = history.priors["open"] or 0.1
        for j, ch in enumerate(self.message_channels_):
            frame[f"consent_{ch}"] = consent[:, j]
            frame[f"open_rate_{ch}"] = rates[ch].to_numpy() if ch in rates else default_rate
        frame["last_contact_channel"] = history.last_message_channel(ids, self.as_of_)

        self.frame_ = frame
        self._preferences(channel_model, send_time_model, quiet_hours, ids, history)
        self.forecast_metrics_: dict[str, float] = {}
        self.frame_["predicted_spend_90d"] = np.nan
        self.frame_["churn_risk"] = np.nan
        self.boosters_: dict[str, lgb.Booster] = {}
        self.forecast_features_: dict[str, list[str]] = {}
        if self.forecast:
            self._fit_forecast(history, ids)
        else:
            self.notes_.append("forecast models not fitted (forecast=False)")
        self.replenishment_ = self._replenishment(tables)
        self._index()
        return self

    def _index(self) -> None:
        self.customer_index_ = pd.Index(self.frame_[c.CUSTOMER_ID].astype(str))

    def _segment_thresholds(self, history: CustomerHistory) -> dict[str, float]:
        """The segment thresholds in days: the ones given, the rest from the order gaps."""
        given = {
            "new_days": self.new_days,
            "at_risk_days": self.at_risk_days,
            "dormant_days": self.dormant_days,
        }
        if all(v is not None for v in given.values()):
            self.thresholds_source_ = "given"
            return {k: float(v) for k, v in given.items()}
        learned = segment_thresholds(history.orders, int(to_us(history.as_of)[0]))
        if learned is None:
            learned = dict(FALLBACK_THRESHOLDS)
            self.thresholds_source_ = "fallback"
            self.notes_.append(
                f"segment thresholds: fewer than {MIN_GAPS_FOR_THRESHOLDS} repeat orders to read the buying "
                f"rhythm from; fixed thresholds used (new {learned['new_days']:.0f} d, at risk "
                f"{learned['at_risk_days']:.0f} d, dormant {learned['dormant_days']:.0f} d)"
            )
        else:
            self.thresholds_source_ = "order_gaps"
        return {k: float(given[k]) if given[k] is not None else float(learned[k]) for k in given}

    def _preferences(self, channel_model, send_time_model, quiet_hours, ids, history) -> None:
        frame = self.frame_
        channels = np.asarray(self.message_channels_, dtype=object)
        consent = frame[[f"consent_{ch}" for ch in channels]].to_numpy(bool)
        rates = frame[[f"open_rate_{ch}" for ch in channels]].to_numpy(np.float64)
        best = np.argmax(np.where(consent, rates, -np.inf), axis=1)
        preferred = np.where(consent.any(axis=1), channels[best], None)
        self.sources_ = {
            "preferred_channel": "consented message channel with the highest smoothed open rate "
            "((opens + 2·channel rate) / (messages + 2)); most used event channel when none is consented",
            "preferred_hours": "the three local hours with the most events (any channel)",
        }
        share_cols = [f"share_{ch}" for ch in history.event_channels]
        if share_cols:
            shares = self.features_[share_cols].to_numpy()
            most_used = np.asarray(history.event_channels, dtype=object)[np.argmax(shares, axis=1)]
            preferred = np.where(pd.isna(preferred) & (shares.sum(axis=1) > 0), most_used, preferred)
        if channel_model is not None:
            try:
                ranked = channel_model.rank_channels(ids)
                first = ranked.loc[ranked[c.RANK] == 1].set_index(c.CUSTOMER_ID)[c.CHANNEL]
                from_model = pd.Series(ids).map(first).to_numpy(dtype=object)
                preferred = np.where(pd.isna(from_model), preferred, from_model)
                self.sources_["preferred_channel"] = (
                    "channel model: consented channel with the highest predicted engagement "
                    "(rank 1 of ChannelModel.rank_channels); history open rates where it has none"
                )
            except Exception as exc:  # a broken optional model must not stop the profiles
                self.notes_.append(f"channel model not used for the preferred channel: {exc}")
        frame["preferred_channel"] = preferred
        top_hours = np.argsort(-self.activity_hours_, axis=1, kind="stable")[:, :3]
        has_activity = self.activity_hours_.sum(axis=1) > 0
        frame["preferred_hours"] = [
            [int(h) for h in row] if ok else [] for row, ok in zip(top_hours, has_activity, strict=True)
        ]
        if send_time_model is not None:
            try:
                hours = list(frame["preferred_hours"])
                for ch in pd.unique(pd.Series(preferred).dropna()):
                    sel = np.flatnonzero(preferred == ch)
                    best_slot = send_time_model.best_slot(ids[sel], str(ch), quiet_hours)
                    for i, hour in zip(sel, best_slot["best_hour_local"].to_numpy(), strict=True):
                        hours[i] = [int(hour)]
                frame["preferred_hours"] = hours
                self.sources_["preferred_hours"] = (
                    "send-time model: best local hour for the preferred channel outside quiet hours "
                    "(SendTimeModel.best_slot); activity hours for customers without a channel"
                )
            except Exception as exc:
                self.notes_.append(f"send-time model not used for preferred hours: {exc}")

    # ------------------------------------------------------------------------------------------
    def _lgbm_params(self) -> dict:
        return {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "random_state": self.random_state,
            "n_jobs": min(max(1, self.n_jobs), _MAX_JOBS),
            "verbose": -1,
        }

    def _fit_forecast(self, history: CustomerHistory, ids: np.ndarray) -> None:
        """Spend and churn over `horizon_days`: features before t, labels from [t, t + horizon).

        Each target is learned on 80 % of the customers seen before t and judged on the other 20 %
        against its naive rule (spend: the last 90 days repeat; churn: no order in the last 90
        days). With customer attributes (`attr.*`) the model is also fitted with them, and they
        are kept only if they improve its score there (spend: MAE, churn: AUC). A model that
        does not beat its naive rule is not served: the naive rule is (churn: its churn rate on
        the training customers, per flag). The served models are then refitted on everyone.
        A target the data cannot support (no spend at all, nobody or everybody churned) is
        skipped with a note.
        """
        self.forecast_features_: dict[str, list[str]] = {}
        horizon = pd.Timedelta(days=self.horizon_days)
        t = self.as_of_ - horizon
        first_event = self.frame_["first_event_us"].to_numpy()
        t_us = int(to_us(t)[0])
        known = (first_event != NAT_US) & (first_event < t_us)
        span_days = (t_us - first_event[known].min()) / US_PER_DAY if known.any() else 0.0
        if span_days < self.horizon_days or known.sum() < 200:
            self.notes_.append(
                f"predicted spend and churn risk skipped: they need {self.horizon_days} days of history "
                f"before t = as_of - {self.horizon_days} days and >= 200 customers seen by then "
                f"({span_days:.0f} days, {int(known.sum())} customers)"
            )
            return
        train_ids = ids[known]
        x_t = history.features_at(train_ids, t)[self.feature_names_]
        codes = history._codes(train_ids)  # once: mapping string ids to codes is the slow part
        orders_t = history.orders.sums(codes, np.full(len(train_ids), t_us))
        as_of_us = int(to_us(self.as_of_)[0])
        orders_end = history.orders.sums(codes, np.full(len(train_ids), as_of_us))
        ret_t = history.returns.sums(codes, np.full(len(train_ids), t_us))[:, 0]
        ret_end = history.returns.sums(codes, np.full(len(train_ids), as_of_us))[:, 0]
        spend = np.maximum((orders_end[:, 1] - orders_t[:, 1]) - (ret_end - ret_t), 0.0)
        bought = (orders_end[:, 0] - orders_t[:, 0]) > 0
        churned = (~bought).astype(int)
        x = x_t.to_numpy(np.float64)

        stratify = churned if np.bincount(churned, minlength=2).min() >= 2 else None
        tr, te = train_test_split(
            np.arange(len(train_ids)), test_size=0.2, random_state=self.random_state, stratify=stratify
        )
        targets = []
        if spend[tr].sum() > 0 and spend[te].sum() > 0:
            targets.append("spend")
        else:
            self.notes_.append(
                "predicted spend skipped: nobody spent anything in the last "
                f"{self.horizon_days} days before the profile time (no amounts, or no purchases then)"
            )
        if len(np.unique(churned[tr])) == 2 and len(np.unique(churned[te])) == 2:
            targets.append("churn")
        else:
            self.notes_.append(
                f"churn risk skipped: {'every' if churned.all() else 'no'} customer seen before t went "
                f"{self.horizon_days} days without a purchase, so there is nothing to tell apart"
            )
        if not targets:
            return
        base = [name for name in self.feature_names_ if name not in self.attribute_names_]
        feature_sets = {"without_attributes": base}
        if self.attribute_names_:
            feature_sets["with_attributes"] = list(self.feature_names_)
        column = {name: j for j, name in enumerate(self.feature_names_)}

        def model_for(target: str):
            if target == "spend":
                return lgb.LGBMRegressor(objective="tweedie", **self._lgbm_params())
            return lgb.LGBMClassifier(objective="binary", **self._lgbm_params())

        labels = {"spend": spend, "churn": churned}
        trials = [(target, name) for target in targets for name in feature_sets]
        # the fits are independent and seeded: run them on `fit_workers` threads (LightGBM
        # releases the GIL), the models are the same
        tasks = [
            partial(
                fit_estimator,
                model_for(target),
                x[np.ix_(tr, [column[f] for f in feature_sets[name]])],
                labels[target][tr],
            )
            for target, name in trials
        ]
        with fit_pool(self.fit_workers) as pool:
            fitted = dict(zip(trials, run_tasks(tasks, pool), strict=True))

        def score(target: str, name: str) -> tuple[float, np.ndarray]:
            X_te = x[np.ix_(te, [column[f] for f in feature_sets[name]])]
            model = fitted[(target, name)]
            if target == "spend":
                pred = model.predict(X_te)
                return -mean_absolute_error(spend[te], pred), pred
            pred = model.predict_proba(X_te)[:, 1]
            return roc_auc_score(churned[te], pred), pred

        metrics: dict = {
            "split_time": t.isoformat(),
            "train_customers": int(len(tr)),
            "test_customers": int(len(te)),
            "churn_rate": float(churned[te].mean()),
        }
        naive_spend = x_t["spend_90d"].to_numpy()
        naive_flag = (x_t["orders_90d"].to_numpy() == 0).astype(float)
        served: dict[str, str] = {}
        for target in targets:
            scores = {name: score(target, name) for name in feature_sets}
            # attributes must earn their place: on a tie the model without them is kept
            chosen = max(feature_sets, key=lambda name: (scores[name][0], name == "without_attributes"))
            value, pred = scores[chosen]
            if target == "spend":
                naive_value = -mean_absolute_error(spend[te], naive_spend[te])
                metrics.update(
                    {
                        "spend_mae": -value,
                        "spend_mae_naive": -naive_value,
                        "spend_spearman": float(
                            pd.Series(pred).corr(pd.Series(spend[te]), method="spearman")
                        ),
                        "spend_mean_actual": float(spend[te].mean()),
                        "spend_mean_predicted": float(pred.mean()),
                    }
                )
            else:
                naive_value = roc_auc_score(churned[te], naive_flag[te])
                metrics.update(
                    {
                        "churn_auc": value,
                        "churn_auc_naive": naive_value,
                        "churn_brier": float(np.mean((pred - churned[te]) ** 2)),
                    }
                )
            if "with_attributes" in scores:
                unit = "MAE" if target == "spend" else "AUC"
                sign = -1.0 if target == "spend" else 1.0
                with_value = sign * scores["with_attributes"][0]
                without_value = sign * scores["without_attributes"][0]
                metrics[f"{target}_{unit.lower()}_with_attributes"] = with_value
                metrics[f"{target}_{unit.lower()}_without_attributes"] = without_value
                kept = chosen == "with_attributes"
                self.notes_.append(
                    f"customer attributes {'kept' if kept else 'left out'} for the {target} model "
                    f"({unit} {with_value:.4g} with them, {without_value:.4g} without, on the validation "
                    f"customers): {', '.join(self.attribute_names_)}"
                )
            served[target] = "model" if value > naive_value else "naive"
            metrics[f"{target}_served"] = served[target]
            if served[target] == "naive":
                self.notes_.append(
                    f"{target} model did not beat its naive rule on the validation customers "
                    f"({'MAE' if target == 'spend' else 'AUC'} {abs(value):.4g} against {abs(naive_value):.4g}): "
                    "the naive rule is served"
                )
            self.forecast_features_[target] = list(feature_sets[chosen]) if served[target] == "model" else []
        self.forecast_metrics_ = metrics

        # refit the served models on every customer of the window, then look forward from as_of
        refits = [t_ for t_ in targets if served[t_] == "model"]
        tasks = [
            partial(
                fit_estimator,
                model_for(target),
                x[:, [column[f] for f in self.forecast_features_[target]]],
                labels[target],
            )
            for target in refits
        ]
        with fit_pool(self.fit_workers) as pool:
            models = dict(zip(refits, run_tasks(tasks, pool), strict=True))
        for target in targets:
            if target in models:
                now = self.features_[self.forecast_features_[target]].to_numpy(np.float64)
                model = models[target]
                if target == "spend":
                    self.frame_["predicted_spend_90d"] = model.predict(now)
                else:
                    self.frame_["churn_risk"] = model.predict_proba(now)[:, 1]
                self.boosters_[target] = model.booster_
            elif target == "spend":
                self.frame_["predicted_spend_90d"] = self.features_["spend_90d"].to_numpy(np.float64)
            else:
                # the naive flag as a probability: the churn rate of the training customers per flag
                rate = {
                    flag: float(churned[tr][naive_flag[tr] == flag].mean())
                    if (naive_flag[tr] == flag).any()
                    else float(churned[tr].mean())
                    for flag in (0.0, 1.0)
                }
                flag_now = (self.features_["orders_90d"].to_numpy() == 0).astype(float)
                self.frame_["churn_risk"] = np.where(flag_now == 1.0, rate[1.0], rate[0.0])

    def _replenishment(self, tables: Tables) -> pd.DataFrame:
        """Last purchase of each replenishable product per customer (cycle = replenishment_days)."""
        columns = [c.CUSTOMER_ID, c.PRODUCT_ID, "last_purchase_us", "cycle_days"]
        products = tables.products
        if (
            products is None
            or c.REPLENISHMENT_DAYS not in products
            or products[c.REPLENISHMENT_DAYS].isna().all()
        ):
            return pd.DataFrame({col: [] for col in columns})
        cycle = products.dropna(subset=[c.REPLENISHMENT_DAYS])
        if c.IS_ACTIVE in cycle:
            cycle = cycle.loc[cycle[c.IS_ACTIVE].astype(bool)]
        cycle = cycle.set_index(c.PRODUCT_ID)[c.REPLENISHMENT_DAYS]
        ev = tables.events
        buys = ev.loc[
            (ev[c.EVENT_TYPE] == "purchase") & (ev[c.TS] < self.as_of_) & ev[c.PRODUCT_ID].isin(cycle.index)
        ]
        last = buys.groupby([buys[c.CUSTOMER_ID].astype(str), buys[c.PRODUCT_ID].astype(str)])[c.TS].max()
        out = last.reset_index()
        out.columns = [c.CUSTOMER_ID, c.PRODUCT_ID, "ts"]
        out["last_purchase_us"] = to_us(out["ts"])
        out["cycle_days"] = out[c.PRODUCT_ID].map(cycle).to_numpy(np.float64)
        return out[columns].sort_values([c.CUSTOMER_ID, c.PRODUCT_ID], ignore_index=True)

    # ------------------------------------------------------------------------------------------
    # queries
    def rows(self, customer_ids) -> np.ndarray:
        """Row of each customer in `frame_` (-1 when unknown)."""
        ids = np.asarray(customer_ids, dtype=object)
        if len(ids) <= FEW_IDS:
            # a request asks for one customer: a dict look-up, not a pandas index per call
            row_of = self._row_of()
            return np.array([row_of.get(str(cid), -1) for cid in ids.tolist()], dtype=np.intp)
        return self.customer_index_.get_indexer(pd.Index(pd.Series(ids).astype(str)))

    def _row_of(self) -> dict[str, int]:
        """{customer_id: row}, rebuilt when `customer_index_` is replaced (fit, load)."""
        cached = getattr(self, "_row_of_cache", None)
        if cached is None or cached[0] is not self.customer_index_:
            cached = (self.customer_index_, {cid: i for i, cid in enumerate(self.customer_index_.tolist())})
            self._row_of_cache = cached
        return cached[1]

    def refresh_consent(self, consent: pd.DataFrame | None, as_of: pd.Timestamp | None = None) -> None:
        """Re-reads consent from a (newer) consent table, latest row up to `as_of` (default: all rows).

        Consent changes daily and an opt-out must count at once: a decision job calls this with
        today's table instead of waiting for the next training.
        """
        from models.consent import latest_consent_matrix

        ids = self.frame_[c.CUSTOMER_ID].astype(str).to_numpy()
        matrix = latest_consent_matrix(consent, ids, self.message_channels_, as_of)
        for j, ch in enumerate(self.message_channels_):
            self.frame_[f"consent_{ch}"] = matrix[:, j]
        self.has_consent_table_ = consent is not None

    def model_features(self, rows: np.ndarray, now: pd.Timestamp) -> pd.DataFrame:
        """Model features of `rows` (from `rows()`, all known) with time-relative ones moved to `now`."""
        feats = self.features_.iloc[rows].reset_index(drop=True).copy()
        now_us = int(to_us(now)[0])
        for name, col in TIME_RELATIVE.items():
            if name in feats:
                feats[name] = _days(np.full(len(rows), now_us), self.frame_[col].to_numpy()[rows])
        return feats

    def model_features_at(self, rows: np.ndarray, times_us: np.ndarray) -> pd.DataFrame:
        """`model_features` with the time-relative features moved to one moment per row (int64
        µs): what these profiles, as fitted, say of each customer at each moment (the champion
        gate values what a deployed engine would have decided when past messages were sent)."""
        feats = self.features_.iloc[rows].reset_index(drop=True).copy()
        t_us = np.asarray(times_us, dtype=np.int64)
        for name, col in TIME_RELATIVE.items():
            if name in feats:
                feats[name] = _days(t_us, self.frame_[col].to_numpy()[rows])
        return feats

    def replenishment_due_at(self, customer_ids, times_us: np.ndarray) -> np.ndarray:
        """Per (customer, moment) pair: is a replenishment due then (as `due_replenishments`)?"""
        ids = np.asarray(customer_ids, dtype=object).astype(str)
        out = np.zeros(len(ids), dtype=bool)
        table = self.replenishment_
        if table.empty or len(ids) == 0:
            return out
        pairs = pd.DataFrame(
            {c.CUSTOMER_ID: ids, "_t": np.asarray(times_us, dtype=np.int64), "_pair": np.arange(len(ids))}
        )
        rows = table[[c.CUSTOMER_ID, "cycle_days", "last_purchase_us"]].assign(
            **{c.CUSTOMER_ID: table[c.CUSTOMER_ID].astype(str)}
        )
        joined = pairs.merge(rows, on=c.CUSTOMER_ID, how="inner")
        if joined.empty:
            return out
        cycle_us = (joined["cycle_days"].to_numpy() * US_PER_DAY).astype(np.int64)
        due_at = joined["last_purchase_us"].to_numpy(np.int64) + cycle_us
        lead = int(self.replenishment_lead_days * US_PER_DAY)
        t_us = joined["_t"].to_numpy()
        due = (t_us >= due_at - lead) & (t_us <= due_at + cycle_us // 2)
        out[joined["_pair"].to_numpy()[due]] = True
        return out

    def model_feature_arrays(self, rows: np.ndarray, now: pd.Timestamp) -> dict[str, np.ndarray]:
        """`model_features(rows, now)` as {column: values} without building a frame (a request)."""
        cached = getattr(self, "_feature_columns", None)
        if cached is None or cached[0] is not self.features_:
            cached = (
                self.features_,
                {name: self.features_[name].to_numpy() for name in self.features_.columns},
            )
            self._feature_columns = cached
        feats = {name: values[rows] for name, values in cached[1].items()}
        now_us = int(to_us(now)[0])
        for name, col in TIME_RELATIVE.items():
            if name in feats:
                feats[name] = _days(np.full(len(rows), now_us), self.frame_[col].to_numpy()[rows])
        return feats

    def due_replenishments(self, customer_ids, now: pd.Timestamp, k: int = 3) -> list[list[str]]:
        """Per customer, up to k products whose replenishment cycle is due at `now`, most due first.

        Due: now is between (last purchase + cycle - lead days) and (last purchase + 1.5 cycles).
        """
        ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str)
        if len(ids) <= FEW_IDS:
            return [self._due_of(cid, now, k) for cid in ids.tolist()]
        unique = pd.Index(ids.unique())
        found: list[list[str]] = [[] for _ in range(len(unique))]
        table = self.replenishment_
        if not table.empty:
            table = table.loc[table[c.CUSTOMER_ID].isin(unique)]
            now_us = int(to_us(now)[0])
            cycle_us = (table["cycle_days"].to_numpy() * US_PER_DAY).astype(np.int64)
            due_at = table["last_purchase_us"].to_numpy() + cycle_us
            lead = int(self.replenishment_lead_days * US_PER_DAY)
            due = (now_us >= due_at - lead) & (now_us <= due_at + cycle_us // 2)
            hits = table.loc[due].assign(_overdue=(now_us - due_at[due]))
            hits = hits.sort_values([c.CUSTOMER_ID, "_overdue", c.PRODUCT_ID], ascending=[True, False, True])
            hits = hits.loc[hits.groupby(c.CUSTOMER_ID, sort=False).cumcount().to_numpy() < k]
            if len(hits):
                position = unique.get_indexer(hits[c.CUSTOMER_ID].astype(str))
                products = hits[c.PRODUCT_ID].astype(str).to_numpy()
                # rows are grouped by customer: split the product column where the customer changes
                starts = np.flatnonzero(np.r_[True, position[1:] != position[:-1]])
                for first, chunk in zip(position[starts], np.split(products, starts[1:]), strict=True):
                    found[int(first)] = chunk.tolist()
        return [list(found[i]) for i in unique.get_indexer(ids)]

    def _due_of(self, customer_id: str, now: pd.Timestamp, k: int) -> list[str]:
        """`due_replenishments([customer_id], now, k)[0]` from the customer's own rows only."""
        table = self.replenishment_
        cached = getattr(self, "_replenishment_rows", None)
        if cached is None or cached[0] is not table:
            groups = table.groupby(table[c.CUSTOMER_ID].astype(str), sort=False).indices if len(table) else {}
            columns = (
                table["cycle_days"].to_numpy(),
                table["last_purchase_us"].to_numpy(),
                table[c.PRODUCT_ID].astype(str).to_numpy(),
            )
            cached = (table, dict(groups), columns)
            self._replenishment_rows = cached
        positions = cached[1].get(customer_id)
        if positions is None:
            return []
        cycle_days, last_purchase_us, product_ids = (values[positions] for values in cached[2])
        now_us = int(to_us(now)[0])
        cycle_us = (cycle_days * US_PER_DAY).astype(np.int64)
        due_at = last_purchase_us + cycle_us
        lead = int(self.replenishment_lead_days * US_PER_DAY)
        due = (now_us >= due_at - lead) & (now_us <= due_at + cycle_us // 2)
        if not due.any():
            return []
        products = product_ids[due]
        overdue = now_us - due_at[due]
        # most overdue first, then by product id (stable, as the batch's sort)
        order = np.lexsort((products, -overdue))
        return products[order][:k].tolist()

    def profiles_frame(self) -> pd.DataFrame:
        """The profile fields of every customer as one table (timestamps as UTC datetimes)."""
        frame = self.frame_
        out = pd.DataFrame({c.CUSTOMER_ID: frame[c.CUSTOMER_ID]})
        for col in (
            "segment",
            "recency_score",
            "frequency_score",
            "monetary_score",
            "recency_days",
            "frequency",
            "monetary",
            "value_tier",
            "predicted_spend_90d",
            "churn_risk",
            "price_sensitivity",
            "top_categories",
            "preferred_channel",
            "preferred_hours",
        ):
            out[col] = frame[col]
        for ch in self.message_channels_:
            out[f"consent_{ch}"] = frame[f"consent_{ch}"]
        out["last_contact_ts"] = _datetimes(frame["last_message_us"])
        out["last_contact_channel"] = frame["last_contact_channel"]
        out["last_purchase_ts"] = _datetimes(frame["last_purchase_us"])
        out[c.TIMEZONE] = frame[c.TIMEZONE]
        return out

    def _forecast_source(self, target: str) -> str:
        """Where the served spend / churn forecast comes from: the model, or its naive rule."""
        if self.forecast_metrics_.get(f"{target}_served") == "naive":
            if target == "spend":
                return (
                    "the customer's spend over the last 90 days, repeated (the LightGBM model did not beat "
                    "this rule on the validation customers)"
                )
            return (
                "churn rate of the training customers with / without an order in the last 90 days (the "
                "LightGBM model did not beat this rule on the validation customers)"
            )
        return DERIVED_FROM["predicted_spend_90d" if target == "spend" else "churn_risk"]

    def profile(self, customer_id: str) -> dict:
        """The profile of one customer: {field: {"value": ..., "derived_from": "..."}}.

        KeyError for an unknown customer.
        """
        row = self.rows([customer_id])[0]
        if row < 0:
            raise KeyError(f"unknown customer {customer_id!r}")
        r = self.frame_.iloc[row]
        thresholds = {name: round(days, 1) for name, days in self.thresholds_.items()}

        def field(value, source: str) -> dict:
            return {"value": _jsonable(value), "derived_from": source}

        forecast_note = (
            ""
            if self.forecast_metrics_
            else " (not available: "
            + "; ".join(n for n in self.notes_ if "forecast" in n or "spend" in n)
            + ")"
        )
        last_contact = None
        if r["last_message_us"] != NAT_US:
            last_contact = {
                "ts": from_us(r["last_message_us"]).isoformat(),
                "channel": r["last_contact_channel"],
            }
        return {
            "customer_id": str(r[c.CUSTOMER_ID]),
            "as_of": self.as_of_.isoformat(),
            "segment": field(
                r["segment"],
                DERIVED_FROM["segment"].format(**thresholds)
                + (
                    " (thresholds read from the gaps between consecutive orders: 90 %, 95 % and 99 % of "
                    "them are shorter)"
                    if self.thresholds_source_ == "order_gaps"
                    else ""
                ),
            ),
            "rfm": field(
                {
                    "recency_score": int(r["recency_score"]),
                    "frequency_score": int(r["frequency_score"]),
                    "monetary_score": int(r["monetary_score"]),
                },
                DERIVED_FROM["rfm"],
            ),
            "recency_days": field(r["recency_days"], DERIVED_FROM["recency_days"]),
            "frequency": field(r["frequency"], DERIVED_FROM["frequency"]),
            "monetary": field(r["monetary"], DERIVED_FROM["monetary"]),
            "value_tier": field(r["value_tier"], DERIVED_FROM["value_tier"]),
            "predicted_spend_90d": field(
                r["predicted_spend_90d"], self._forecast_source("spend") + forecast_note
            ),
            "churn_risk": field(r["churn_risk"], self._forecast_source("churn") + forecast_note),
            "price_sensitivity": field(r["price_sensitivity"], DERIVED_FROM["price_sensitivity"]),
            "top_categories": field(list(r["top_categories"]), DERIVED_FROM["top_categories"]),
            "preferred_channel": field(r["preferred_channel"], self.sources_["preferred_channel"]),
            "preferred_hours": field(
                list(r["preferred_hours"]), self.sources_["preferred_hours"] + " (local time)"
            ),
            "consent": field(
                {ch: bool(r[f"consent_{ch}"]) for ch in self.message_channels_},
                DERIVED_FROM["consent"]
                if self.has_consent_table_
                else "no consent table: every channel allowed",
            ),
            "last_contact": field(last_contact, DERIVED_FROM["last_contact"]),
            "last_purchase": field(
                None if r["last_purchase_us"] == NAT_US else from_us(r["last_purchase_us"]).isoformat(),
                DERIVED_FROM["last_purchase"],
            ),
            "timezone": field(r[c.TIMEZONE], DERIVED_FROM["timezone"]),
        }

    # ------------------------------------------------------------------------------------------
    # persistence
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        frame = self.frame_.copy()
        for col in ("top_categories", "bought_categories", "preferred_hours"):
            frame[col] = frame[col].map(json.dumps)  # lists as JSON text: a plain string column
        frame.to_parquet(folder / "profiles.parquet", index=False)
        self.features_.to_parquet(folder / "features.parquet", index=False)
        self.replenishment_.to_parquet(folder / "replenishment.parquet", index=False)
        np.save(folder / "activity_hours.npy", self.activity_hours_, allow_pickle=False)
        for name, booster in self.boosters_.items():
            booster.save_model(str(folder / f"{name}.lgb.txt"))
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "as_of": self.as_of_.isoformat(),
            "feature_names": self.feature_names_,
            "message_channels": list(self.message_channels_),
            "has_consent_table": self.has_consent_table_,
            "forecast_metrics": self.forecast_metrics_,
            "thresholds": self.thresholds_,
            "thresholds_source": self.thresholds_source_,
            "attribute_names": self.attribute_names_,
            "forecast_features": self.forecast_features_,
            "sources": self.sources_,
            "notes": self.notes_,
        }
        (folder / "profiles.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CustomerProfiles:
        folder = Path(folder)
        meta = read_model_meta(folder, "profiles.json", "profiles", (FORMAT_VERSION,))
        model = cls(**meta["params"])
        frame = pd.read_parquet(folder / "profiles.parquet")
        for col in ("top_categories", "bought_categories", "preferred_hours"):
            frame[col] = frame[col].map(json.loads)
        model.frame_ = frame
        model.features_ = pd.read_parquet(folder / "features.parquet")
        model.replenishment_ = pd.read_parquet(folder / "replenishment.parquet")
        model.activity_hours_ = np.load(folder / "activity_hours.npy", allow_pickle=False)
        model.boosters_ = {
            name: lgb.Booster(model_file=str(folder / f"{name}.lgb.txt"))
            for name in ("spend", "churn")
            if (folder / f"{name}.lgb.txt").is_file()
        }
        model.as_of_ = pd.Timestamp(meta["as_of"])
        model.feature_names_ = list(meta["feature_names"])
        model.message_channels_ = tuple(meta["message_channels"])
        model.has_consent_table_ = bool(meta["has_consent_table"])
        model.forecast_metrics_ = dict(meta["forecast_metrics"])
        # profiles saved before the thresholds were read from the data used the fixed ones
        thresholds = meta.get("thresholds") or {
            name: float(meta["params"].get(name) or FALLBACK_THRESHOLDS[name]) for name in FALLBACK_THRESHOLDS
        }
        model.thresholds_ = {k: float(v) for k, v in thresholds.items()}
        model.thresholds_source_ = meta.get("thresholds_source", "given")
        model.attribute_names_ = list(meta.get("attribute_names", []))
        model.forecast_features_ = {k: list(v) for k, v in meta.get("forecast_features", {}).items()}
        model.sources_ = dict(meta["sources"])
        model.notes_ = list(meta["notes"])
        model._index()
        return model


def _datetimes(us: pd.Series) -> pd.Series:
    values = np.asarray(us, dtype=np.int64)
    return pd.Series(pd.DatetimeIndex(values.astype("datetime64[us]")).tz_localize("UTC"))


def _jsonable(value):
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
