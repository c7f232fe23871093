"""The as-of customer history: what was known about each customer at any moment.

Model features. `CustomerHistory` answers "what was known about these customers at time t" for
any (customer, t) pairs with sorted cumulative sums: two `searchsorted` calls per question, so
features for every past message (the uplift training rows) are as exact and as leak-free as the
ones for today. `BASE_FEATURES` lists them; `models.decisions.profile.CustomerProfiles.model_features(ids,
now)` gives the matrix at `now`, with the time-relative features (recency, tenure, ...) moved to `now`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c
from features.codes import positions
from features.io import Tables
from models.timestamps import NAT_US, US_PER_DAY, US_PER_SECOND, to_us

MONETARY_OFFER_KINDS: tuple[str, ...] = ("discount", "bogo", "free_shipping")
_SECONDS_BITS = 34
RATE_PRIOR_STRENGTH = 2.0  # pseudo messages at the population rate in every smoothed rate
BELOW_LIST_TOLERANCE = 0.99  # a line below 99 % of list price × quantity was sold at a discount

# Model features (the time-relative ones are recomputed at decision time, see
# `CustomerProfiles.model_features`).
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
