"""Leak-free history features of the channel model: for each query (customer_id, _t), what was
known of the customer strictly before _t. A training row (one past message) only sees what was
known when it was sent, and the scoring snapshot only what was known at `as_of`:

- message history per channel: sent, engaged (an open or click that had happened by then),
  smoothed engagement rate; totals, conversions, days since the last message and engagement;
- cross-channel activity: events per channel (store, web, app, ...) and their shares, purchases,
  days since the first and last event, days since signup. This is what lets a customer without
  message history be placed: someone who shops in the app is likely to read push.
- the channel of the message, its own sent / engaged counts and smoothed rate (added by
  `ChannelModel`, which knows the message's channel);
- consent (`consent_<channel>`: the latest row before then opted in) and, when an identities
  table is given, the source systems that know the customer (`known_<system>`: a loyalty card,
  an app device, ...). Consent to SMS or social and an app device say something about a person.
- the customers' free attributes (`attr.<name>` columns: age, income, gender, ...; numbers as
  they are, text as indicators of its frequent levels; `attribute_encoding`). They carry no time,
  so they are taken as they are at every moment; each target keeps them only where its
  calibration slice says they help (`attributes_used_`, with a note).

Every stream (messages, events, consent) is joined on the queries by a backward as-of join on
integer customer codes (`_Queries`, `_AsOf`), exact times excluded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c
from features.codes import positions
from models.engagement.channel_attributes import attribute_features
from models.engagement.send_time import engagement_ts

RATE_PRIOR_MESSAGES = 2.0  # pseudo messages at the channel's population rate in smoothed rates
# What the channel model reads of the events (`history_features`, `ChannelModel.fit`).
EVENT_COLUMNS: tuple[str, ...] = (c.CUSTOMER_ID, c.TS, c.CHANNEL, c.EVENT_TYPE)


def _time_ns(values) -> np.ndarray:
    """Epoch nanoseconds (int64) of timestamps of any unit: one exact scale (us -> ns is exact) on
    which query and stream times are compared."""
    return pd.DatetimeIndex(values).as_unit("ns").asi8


class _Queries:
    """The queries' customers as integer codes and their times in ns, computed once per
    `history_features` call: every stream is joined on the codes. Sorting and merging on the
    customer id strings instead was most of the cost of the features (14 s of sorts at 100k)."""

    def __init__(self, queries: pd.DataFrame):
        codes, uniques = pd.factorize(queries[c.CUSTOMER_ID].astype(str))
        self.codes = codes.astype(np.int64)
        self.customers = pd.Index(uniques)
        self.times = _time_ns(queries["_t"])
        self.index = queries.index
        self.order = np.lexsort((self.times, self.codes))  # (customer, time) order

    def codes_of(self, ids) -> np.ndarray:
        """Codes of stream customer ids; -1 for customers that no query asks about."""
        return positions(self.customers, ids)

    def per_query(self, per_customer) -> np.ndarray:
        """A value per query from one per customer (in the order of `customers`)."""
        return np.asarray(per_customer)[self.codes]


class _AsOf:
    """A backward as-of join of a stream of customer rows on the queries, exact times excluded
    (what keeps the features leak-free): per query, the customer's stream rows strictly before the
    query time. Sums over them (`count`, `total`) and the first / last time come from running sums
    and running maxima along the stream ordered by (customer, time).

    Each query's last row before it is found by binary search on one integer key, customer code ×
    distinct times + time rank, with the queries in (customer, time) order. The increments summed
    are counts (whole numbers), so a running sum over all customers minus its value before the
    customer's first row is exact.
    """

    def __init__(self, queries: _Queries, codes: np.ndarray, times: pd.Series):
        self.times = pd.Series(times).reset_index(drop=True)
        self.index = queries.index
        n = len(queries.codes)
        keep = np.flatnonzero(codes >= 0)  # rows of customers that no query asks about: left out
        self.rows = keep
        if len(keep) == 0:
            self.found = np.zeros(n, dtype=bool)
            self.start = self.last = np.zeros(n, dtype=np.int64)
            return
        s_codes = codes[keep]
        stamps = np.concatenate([_time_ns(self.times.iloc[keep]), queries.times])
        distinct, rank = np.unique(stamps, return_inverse=True)
        s_key = s_codes * np.int64(len(distinct)) + rank[: len(keep)]
        order = np.argsort(s_key, kind="stable")
        self.rows = keep[order]  # the stream row at each sorted position
        s_key, s_codes = s_key[order], s_codes[order]
        q_order = queries.order
        q_key = queries.codes[q_order] * np.int64(len(distinct)) + rank[len(keep) :][q_order]
        last = np.empty(n, dtype=np.int64)
        last[q_order] = np.searchsorted(s_key, q_key, side="left") - 1  # the last row strictly before
        start = np.empty(n, dtype=np.int64)
        start[q_order] = np.searchsorted(s_codes, queries.codes[q_order], side="left")
        self.found = last >= start  # also False where the customer has no rows at all
        self.start, self.last = start, np.maximum(last, 0)

    def _running(self, cumulative: np.ndarray) -> np.ndarray:
        before = np.where(self.start > 0, cumulative[np.maximum(self.start - 1, 0)], 0)
        return np.where(self.found, cumulative[self.last] - before, 0).astype(np.float64)

    def count(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Number of the customer's rows (where `mask`, one per stream row) before each query."""
        if len(self.rows) == 0:
            return np.zeros(len(self.found))
        if mask is None:
            return np.where(self.found, self.last + 1 - self.start, 0).astype(np.float64)
        return self._running(np.cumsum(mask[self.rows], dtype=np.int64))

    def total(self, values: np.ndarray) -> np.ndarray:
        """Sum of `values` (whole numbers, one per stream row) over the rows before each query."""
        if len(self.rows) == 0:
            return np.zeros(len(self.found))
        return self._running(np.cumsum(np.asarray(values, dtype=np.float64)[self.rows]))

    def first_time(self) -> pd.Series:
        """The customer's first stream time (NaT without rows before the query)."""
        first = np.where(self.found, self.rows[np.minimum(self.start, max(len(self.rows) - 1, 0))], -1)
        return pd.Series(self.times.array.take(first, allow_fill=True), index=self.index)

    def last_time(self, mask: np.ndarray | None = None) -> pd.Series:
        """The time of the customer's last row (where `mask`) before each query (NaT if none)."""
        if len(self.rows) == 0:
            return pd.Series(
                self.times.array.take(np.full(len(self.found), -1), allow_fill=True), index=self.index
            )
        if mask is None:
            latest = np.where(self.found, self.rows[self.last], -1)
        else:
            position = np.maximum.accumulate(np.where(mask[self.rows], np.arange(len(self.rows)), -1))
            at = position[self.last]
            latest = np.where(self.found & (at >= self.start), self.rows[np.maximum(at, 0)], -1)
        return pd.Series(self.times.array.take(latest, allow_fill=True), index=self.index)


def _days_since(t: pd.Series, before: pd.Series) -> pd.Series:
    return (t - pd.to_datetime(before, utc=True)).dt.total_seconds() / 86400.0


def history_features(
    queries: pd.DataFrame,
    messages: pd.DataFrame | None,
    events: pd.DataFrame | None,
    customers: pd.DataFrame | None,
    message_channels: list[str],
    event_channels: list[str],
    channel_rates: dict[str, float],
    consent: pd.DataFrame | None = None,
    identities: pd.DataFrame | None = None,
    identity_systems: list[str] | None = None,
    attributes: list[dict] | None = None,
) -> pd.DataFrame:
    """Customer-level features for each query (customer_id, _t), from data strictly before _t.

    With `consent`: `consent_<channel>`, 1 where the customer's latest consent row for that
    message channel before _t opted in. With `identities`: `known_<system>`, 1 where the customer
    has an id in that source system (a loyalty card, an app device, ...; the table has no times,
    so this is the current state). With `attributes` (an `attribute_encoding`): the customers'
    free attributes (`attr.*`; also without times: taken as they are in the table)."""
    t = queries["_t"]
    q = _Queries(queries)
    out = {}
    if messages is not None and len(messages):
        out |= _message_history(q, t, messages, message_channels, channel_rates)
    if events is not None and len(events):
        out |= _event_activity(q, t, events, event_channels)
    if consent is not None:
        out |= _consent_state(q, t, consent, message_channels)
    if identities is not None and identity_systems:
        out |= _known_systems(q, identities, identity_systems)
    if customers is not None and c.SIGNUP_TS in customers.columns:
        out["days_since_signup"] = _days_since_signup(q, t, customers)
    if attributes:
        for name, values in attribute_features(customers, attributes, q.customers).items():
            out[name] = q.per_query(values)
    return _as_frame(out, queries.index)


def _message_history(
    q: _Queries, t: pd.Series, messages: pd.DataFrame, message_channels: list[str], channel_rates: dict
) -> dict[str, np.ndarray]:
    """Sent, engaged and smoothed rate per message channel; totals, conversions, days since the
    last message and engagement."""
    out = {}
    # one stream: a row per send, per engagement and per conversion, at the time it happened
    codes = q.codes_of(messages[c.CUSTOMER_ID])
    # -1: a channel that is not one of `message_channels`
    channel = pd.Index(message_channels).get_indexer(messages[c.CHANNEL].astype(str))
    counted = channel >= 0  # sends and engagements count on `message_channels` only
    eng = engagement_ts(messages).reset_index(drop=True)
    engaged = counted & eng.notna().to_numpy()
    conv = (
        messages[c.CONVERTED_TS].reset_index(drop=True)
        if c.CONVERTED_TS in messages.columns
        else pd.Series(pd.NaT, index=eng.index, dtype=eng.dtype)
    )
    converted = conv.notna().to_numpy()
    parts = ((counted, messages[c.SENT_TS].reset_index(drop=True)), (engaged, eng), (converted, conv))
    stream = _AsOf(
        q,
        np.concatenate([codes[sel] for sel, _ in parts]),
        pd.concat([ts[sel] for sel, ts in parts], ignore_index=True),
    )
    kind = np.repeat(np.arange(3), [int(sel.sum()) for sel, _ in parts])
    row_channel = np.concatenate([channel[counted], channel[engaged], np.full(converted.sum(), -1)])
    zeros = np.zeros(len(t))
    for j, ch in enumerate(message_channels):
        sent = stream.count((kind == 0) & (row_channel == j))
        engaged_on = stream.count((kind == 1) & (row_channel == j))
        out[f"sent_{ch}"] = sent
        out[f"engaged_{ch}"] = engaged_on
        out[f"rate_{ch}"] = (engaged_on + RATE_PRIOR_MESSAGES * channel_rates[ch]) / (
            sent + RATE_PRIOR_MESSAGES
        )
    # whole-number counts: the order of the additions does not matter
    out["sent_total"] = sum((out[f"sent_{ch}"] for ch in message_channels), zeros)
    out["engaged_total"] = sum((out[f"engaged_{ch}"] for ch in message_channels), zeros)
    out["converted_total"] = stream.count(kind == 2)
    out["days_since_message"] = _days_since(t, stream.last_time(kind == 0)).to_numpy()
    out["days_since_engagement"] = _days_since(t, stream.last_time(kind == 1)).to_numpy()
    return out


def _event_activity(
    q: _Queries, t: pd.Series, events: pd.DataFrame, event_channels: list[str]
) -> dict[str, np.ndarray]:
    """Events and the share of active hours per event channel; totals, purchases, days since the
    last and the first event."""
    out = {}
    ev = events[[c.CUSTOMER_ID, c.TS, c.CHANNEL, c.EVENT_TYPE]].dropna(subset=[c.CUSTOMER_ID, c.TS])
    # one stream row per customer, clock hour and channel: fewer rows, the same counts; its
    # time is the bucket's last event, so a bucket counts only once all of it is in the past.
    # Events without a channel form no bucket (as in a groupby); customers that no query asks
    # about are left out.
    ev_codes = q.codes_of(ev[c.CUSTOMER_ID])
    chan_codes, chan_names = pd.factorize(ev[c.CHANNEL])
    use = (ev_codes >= 0) & (chan_codes >= 0)
    ts = ev[c.TS].reset_index(drop=True)[use].reset_index(drop=True)
    ts_ns = _time_ns(ts)
    hour = ts_ns // 3_600_000_000_000  # floor("h")
    hour = hour - hour.min(initial=0)
    n_hours, n_chans = int(hour.max(initial=0)) + 1, max(len(chan_names), 1)
    bucket, keys = pd.factorize((ev_codes[use] * n_hours + hour) * n_chans + chan_codes[use])
    latest = np.full(len(keys), np.iinfo(np.int64).min)
    np.maximum.at(latest, bucket, ts_ns)
    n_events = np.bincount(bucket, minlength=len(keys)).astype(np.float64)
    purchase = (ev[c.EVENT_TYPE].reset_index(drop=True)[use] == "purchase").to_numpy(dtype=np.float64)
    stream = _AsOf(
        q, keys // n_chans // n_hours, pd.Series(pd.to_datetime(latest, utc=True)).astype(ts.dtype)
    )
    b_chan = np.asarray(chan_names.astype(str), dtype=object)[keys % n_chans]
    counts = {ch: stream.total(np.where(b_chan == ch, n_events, 0.0)) for ch in event_channels}
    active = {ch: stream.count(b_chan == ch) for ch in event_channels}
    zeros = np.zeros(len(t))
    # shares of active hours, not of events: a web visit logs many events, a store visit few
    active_total = sum(active.values(), zeros)
    with np.errstate(invalid="ignore", divide="ignore"):
        for ch in event_channels:
            out[f"events_{ch}"] = counts[ch]
            out[f"share_{ch}"] = np.where(active_total > 0, active[ch] / active_total, np.nan)
    out["events_total"] = sum(counts.values(), zeros)
    out["active_hours"] = active_total
    out["purchases"] = stream.total(np.bincount(bucket, weights=purchase, minlength=len(keys)))
    out["days_since_event"] = _days_since(t, stream.last_time()).to_numpy()
    out["days_since_first_event"] = _days_since(t, stream.first_time()).to_numpy()
    return out


def _consent_state(
    q: _Queries, t: pd.Series, consent: pd.DataFrame, message_channels: list[str]
) -> dict[str, np.ndarray]:
    """`consent_<channel>`: 1 where the customer's latest consent row before the query opted in."""
    out = {}
    rows = consent.dropna(subset=[c.CUSTOMER_ID, c.CHANNEL, c.UPDATED_TS])
    channel = pd.Index(message_channels).get_indexer(rows[c.CHANNEL].astype(str))
    codes = q.codes_of(rows[c.CUSTOMER_ID])
    use = np.flatnonzero((channel >= 0) & (codes >= 0))
    updated = rows[c.UPDATED_TS].astype(t.dtype).reset_index(drop=True).iloc[use].reset_index(drop=True)
    codes, channel = codes[use], channel[use]
    state = rows[c.OPTED_IN].astype(float).to_numpy()[use]
    # each row's change of state within its customer and channel (rows in time order, ties in
    # table order), so that a running sum is the latest state
    order = np.lexsort((_time_ns(updated), channel, codes))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (codes[order][1:] != codes[order][:-1]) | (channel[order][1:] != channel[order][:-1])
    change = np.empty(len(order))
    change[order] = state[order] - np.where(first, 0.0, np.r_[0.0, state[order][:-1]])
    stream = _AsOf(q, codes, updated)
    for j, ch in enumerate(message_channels):
        out[f"consent_{ch}"] = np.clip(stream.total(np.where(channel == j, change, 0.0)), 0.0, 1.0)
    return out


def _known_systems(
    q: _Queries, identities: pd.DataFrame, identity_systems: list[str]
) -> dict[str, np.ndarray]:
    """`known_<system>`: 1 where the customer has an id in that source system (current state)."""
    out = {}
    known = identities.dropna(subset=[c.CUSTOMER_ID, c.SOURCE_SYSTEM])
    systems = known[c.SOURCE_SYSTEM].astype(str).to_numpy(dtype=object)
    holders = known[c.CUSTOMER_ID].astype(str).to_numpy(dtype=object)
    for system in identity_systems:
        index = pd.Index(pd.unique(holders[systems == system]))
        out[f"known_{system}"] = q.per_query(index.get_indexer(q.customers) >= 0).astype(np.float64)
    return out


def _days_since_signup(q: _Queries, t: pd.Series, customers: pd.DataFrame) -> np.ndarray:
    """Days from the customer's signup to the query (NaN where unknown or not yet signed up)."""
    signup = customers.drop_duplicates(c.CUSTOMER_ID, keep="last")
    signup = signup.set_index(signup[c.CUSTOMER_ID].astype(str))[c.SIGNUP_TS]
    per_customer = pd.Series(q.customers).map(signup)
    signup_ts = pd.to_datetime(pd.Series(per_customer.array.take(q.codes), index=q.index), utc=True)
    # a signup "after" the query time is not known yet
    return ((t - signup_ts).dt.total_seconds() / 86400.0).where(signup_ts < t).to_numpy()


def _as_frame(out: dict[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    """The feature columns as one frame (`out` is emptied on the way)."""
    # one float64 block filled column by column, each column freed once copied in: the frame of
    # the training rows (a row per message) is gigabytes at a million customers, and
    # DataFrame(dict) would hold it twice
    names = list(out)
    matrix = np.empty((len(index), len(names)), dtype=np.float64, order="F")
    for j, name in enumerate(names):
        matrix[:, j] = out.pop(name)
    return pd.DataFrame(matrix, columns=names, index=index, copy=False)
