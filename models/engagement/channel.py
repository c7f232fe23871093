"""Preferred channel per customer: calibrated probabilities that a message on each channel is
engaged with (opened or clicked) and leads to a conversion, ranked over the consented channels.

Features (`history_features`) are counted strictly before a point in time, so a training row
(one past message) only sees what was known when it was sent, and the scoring snapshot only
what was known at `as_of`:

- message history per channel: sent, engaged (an open or click that had happened by then),
  smoothed engagement rate; totals, conversions, days since the last message and engagement;
- cross-channel activity: events per channel (store, web, app, ...) and their shares, purchases,
  days since the first and last event, days since signup. This is what lets a customer without
  message history be placed: someone who shops in the app is likely to read push.
- the channel of the message, its own sent / engaged counts and smoothed rate;
- consent (`consent_<channel>`: the latest row before then opted in) and, when an identities
  table is given, the source systems that know the customer (`known_<system>`: a loyalty card,
  an app device, ...). Consent to SMS or social and an app device say something about a person.
- the customers' free attributes (`attr.<name>` columns: age, income, gender, ...; numbers as
  they are, text as indicators of its frequent levels; `attribute_encoding`). They carry no time,
  so they are taken as they are at every moment; each target keeps them only where its
  calibration slice says they help (`attributes_used_`, with a note).

Engagement: a hierarchical logistic regression. Its profile part is one logistic regression per
channel on the customer's cross-channel profile (whether and how much they are active, their mix
of event channels smoothed with `ACTIVITY_PRIOR_HOURS` pseudo hours at the population's mix,
purchases, recency, tenure, consent and identity flags; each input clipped to the range seen in
training), shrunk by a ridge towards one model pooled over the channels (so a channel with few
messages borrows from the rest):

    logit p(i, ch) = x_i · beta_ch  +  r_ich / (info_ich + tau)

The second term is the customer's own evidence on that channel, an empirical-Bayes effect:
r = engaged - sent * p and info = sent * p (1 - p) from their messages on the channel, and
tau = 1 / sigma^2 with sigma^2, the spread of customer × channel effects, estimated by the method
of moments (a customer with three messages moves a little, one with thirty a lot). Cross-channel
activity is what places a customer without messages (an app shopper reads push); the profile part
is fitted on every message, so that estimate rests on all customers, not on a few thin ones.

Conversion: a LightGBM classifier on all the features above. For both, the most recent
`calibration_share` of training messages (by send time) is held out of the fit (it also stops
the boosting early) and fits an isotonic map from raw scores to probabilities, so the
probabilities are calibrated on later data than the models were fitted on, as they will be used.

Outcome windows. A message sent shortly before `as_of` may still be opened or converted: those
within the open / conversion window are left out of that target's training rows. The windows are
learned from the delays observed in the data (`models.engagement.send_time.outcome_window_days`: their 99th
percentile), not set to a generator's.

The engagement-ratio rule. Beside the model, each fit keeps the simple rule it is validated
against: a customer's channels ranked by their smoothed engagement rate on each, (engaged + m p) /
(sent + m), shrunk towards the channel's rate p with a strength m per channel estimated by the
method of moments (beta-binomial). `serve="rule"` answers with it through the same API
(`training.channel_training` sets it where the rule wins on a validation window).

Thin history. Customers with fewer than `min_history` past messages are flagged `fallback`:
their probabilities come from the same model but rest on the profile part (customers with the
same cross-channel activity profile, consent and identities), hardly on their own responses.

Consent. The latest consent row (by updated_ts, up to `as_of`) of each customer and channel wins;
only opted-in channels are ranked. A customer opted in nowhere gets no rows, and
`no_channel_reason` says why. Without a consent table every channel seen in the messages is
taken as allowed for everyone (the loader already notes that consent filtering is skipped), and
`notes_` says so.

Saved to a folder: the LightGBM text model, npz arrays (read with `allow_pickle=False`) and json.
Format 1 folders (a LightGBM engagement model) and format 2 (no rule, no attributes) still load and
score as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression

from features import columns as c
from features.codes import positions
from features.io import rows_before
from models.base import CannotTrain, index_rows, read_model_meta
from models.consent import latest_consent
from models.engagement.send_time import outcome_window_days
from models.engagement.shrinkage import dirichlet_prior_strength
from models.fitting import train_booster
from models.timestamps import to_us

FORMAT_VERSION = 3
# format 1: a LightGBM engagement model (scored as before); 2: no rule mode, no attributes, fixed
# outcome windows (scored as before)
_READABLE_FORMATS = (1, 2, 3)
# What is served: the model, or the engagement-ratio rule it is validated against (the training
# step serves whichever wins on a validation window; both are always fitted).
SERVE_MODES: tuple[str, ...] = ("model", "rule")
# customer attributes (`attr.<name>` columns of customers): a text attribute keeps its most
# frequent levels, each held by at least this share of the customers (at most this many levels);
# rarer ones are pooled into `attr.<name>=other`
ATTRIBUTE_MIN_LEVEL_SHARE = 0.01
ATTRIBUTE_MAX_LEVELS = 20
_MISSING = "missing:"  # prefix of a numeric attribute's missing-value indicator (engagement model)
TARGETS: tuple[str, ...] = ("engagement", "conversion")
FALLBACK = "fallback"
PROBABILITY = "probability"
CONVERSION_PROBABILITY = "conversion_probability"
RATE_PRIOR_MESSAGES = 2.0  # pseudo messages at the channel's population rate in smoothed rates
_DAY = pd.Timedelta(days=1)
_MAX_JOBS = 2  # the reference machine has 2 cores
MAX_IDENTITY_SYSTEMS = 8  # `known_<system>` features for at most this many identity source systems
# engagement model: hierarchical logistic regression + empirical-Bayes customer × channel effect
ACTIVITY_PRIOR_HOURS = 3.0  # pseudo active hours at the population's mix in smoothed activity shares
POOLED_RIDGE = 1.0  # ridge of the pooled model (standardised inputs)
# pull of each channel's coefficients towards the pooled ones: a prior sd of 0.1 per standard
# deviation of an input, which a few thousand messages on the channel overrule
GLM_RIDGE = 100.0
_GLM_ITER = 25
_MIN_SIGMA2, _MAX_SIGMA2 = 1e-4, 4.0
# What the channel model reads of the events (`history_features`, `ChannelModel.fit`).
EVENT_COLUMNS: tuple[str, ...] = (c.CUSTOMER_ID, c.TS, c.CHANNEL, c.EVENT_TYPE)
_CHUNK_ROWS = 1 << 18  # rows per chunk where a per-row matrix is built piece by piece
_NO_EVENT_DAYS = 3650.0  # "days since the last event" of a customer without events


def _check_serve(serve: str) -> None:
    if serve not in SERVE_MODES:
        raise ValueError(f"serve must be one of {', '.join(SERVE_MODES)}, got {serve!r}")


def attribute_encoding(customers: pd.DataFrame | None) -> list[dict]:
    """How the customers' free attributes (`attr.<name>` columns) become features, learned once
    at fit: a numeric column is one feature (missing = NaN; its median fills it in the engagement
    model, with a missing indicator); a text column is one indicator per frequent level (see
    ATTRIBUTE_MIN_LEVEL_SHARE) plus `=other` for the rest (missing: all zeros)."""
    if customers is None:
        return []
    columns = [col for col in customers.columns if str(col).startswith(c.ATTRIBUTE_PREFIX)]
    if not columns:
        return []
    table = customers.drop_duplicates(c.CUSTOMER_ID, keep="last")
    out = []
    for col in columns:
        values = table[col]
        present = values.notna()
        if not present.any():
            continue
        numeric = pd.to_numeric(values, errors="coerce") if not pd.api.types.is_bool_dtype(values) else None
        if numeric is not None and bool((numeric.notna() == present).all()):
            out.append(
                {
                    "column": str(col),
                    "kind": "numeric",
                    "median": float(numeric.median()),
                    "has_missing": bool((~present).any()),
                }
            )
            continue
        text = values[present].astype(str)
        counts = text.value_counts()
        floor = max(1.0, ATTRIBUTE_MIN_LEVEL_SHARE * len(values))
        levels = [str(v) for v in counts.index[counts >= floor][:ATTRIBUTE_MAX_LEVELS]]
        out.append(
            {"column": str(col), "kind": "levels", "levels": levels, "other": bool(len(levels) < len(counts))}
        )
    return out


def attribute_feature_names(encoding: list[dict]) -> list[str]:
    names = []
    for spec in encoding:
        if spec["kind"] == "numeric":
            names.append(spec["column"])
        else:
            names += [f"{spec['column']}={level}" for level in spec["levels"]]
            names += [f"{spec['column']}=other"] if spec["other"] else []
    return names


def attribute_features(customers: pd.DataFrame | None, encoding: list[dict], ids: pd.Index) -> dict:
    """The attribute features (`attribute_feature_names`) of customers `ids`, one array each
    (NaN for a customer without a row, or a missing number)."""
    out: dict[str, np.ndarray] = {}
    if not encoding:
        return out
    table = None
    if customers is not None:
        table = customers.drop_duplicates(c.CUSTOMER_ID, keep="last")
        table = table.set_index(table[c.CUSTOMER_ID].astype(str).to_numpy())
    for spec in encoding:
        col = spec["column"]
        if table is None or col not in table.columns:
            values = pd.Series(np.nan, index=ids, dtype=object)
        else:
            values = table[col].reindex(ids)
        known = pd.Series(ids).isin(table.index).to_numpy() if table is not None else np.zeros(len(ids), bool)
        if spec["kind"] == "numeric":
            out[col] = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
            continue
        text = values.astype(object).where(values.notna(), None)
        text = text.map(lambda v: None if v is None else str(v)).to_numpy(dtype=object)
        for level in spec["levels"]:
            out[f"{col}={level}"] = np.where(known, text == level, np.nan).astype(np.float64)
        if spec["other"]:
            rare = pd.notna(text) & ~np.isin(text, spec["levels"])
            out[f"{col}=other"] = np.where(known, rare, np.nan).astype(np.float64)
    return out


def engagement_ts(messages: pd.DataFrame) -> pd.Series:
    """When the message was first engaged with: the earlier of open and click (NaT if neither)."""
    cols = [col for col in (c.OPENED_TS, c.CLICKED_TS) if col in messages.columns]
    if not cols:
        return pd.Series(pd.NaT, index=messages.index, dtype="datetime64[us, UTC]")
    return messages[cols].min(axis=1)


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
        zeros = np.zeros(len(queries))
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

    if events is not None and len(events):
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
        zeros = np.zeros(len(queries))
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

    if consent is not None:
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

    if identities is not None and identity_systems:
        known = identities.dropna(subset=[c.CUSTOMER_ID, c.SOURCE_SYSTEM])
        systems = known[c.SOURCE_SYSTEM].astype(str).to_numpy(dtype=object)
        holders = known[c.CUSTOMER_ID].astype(str).to_numpy(dtype=object)
        for system in identity_systems:
            index = pd.Index(pd.unique(holders[systems == system]))
            out[f"known_{system}"] = q.per_query(index.get_indexer(q.customers) >= 0).astype(np.float64)

    if customers is not None and c.SIGNUP_TS in customers.columns:
        signup = customers.drop_duplicates(c.CUSTOMER_ID, keep="last")
        signup = signup.set_index(signup[c.CUSTOMER_ID].astype(str))[c.SIGNUP_TS]
        per_customer = pd.Series(q.customers).map(signup)
        signup_ts = pd.to_datetime(pd.Series(per_customer.array.take(q.codes), index=queries.index), utc=True)
        # a signup "after" the query time is not known yet
        out["days_since_signup"] = (
            ((t - signup_ts).dt.total_seconds() / 86400.0).where(signup_ts < t).to_numpy()
        )
    if attributes:
        for name, values in attribute_features(customers, attributes, q.customers).items():
            out[name] = q.per_query(values)
    # one float64 block filled column by column, each column freed once copied in: the frame of
    # the training rows (a row per message) is gigabytes at a million customers, and
    # DataFrame(dict) would hold it twice
    names = list(out)
    matrix = np.empty((len(queries), len(names)), dtype=np.float64, order="F")
    for j, name in enumerate(names):
        matrix[:, j] = out.pop(name)
    return pd.DataFrame(matrix, columns=names, index=queries.index, copy=False)


class ChannelModel(BaseEstimator):
    """Engagement and conversion probability per customer and channel; consented channels ranked.

    Parameters
    ----------
    min_history : customers with fewer past messages are flagged `fallback` (segment-level estimate).
    n_estimators, learning_rate, num_leaves, min_child_samples : settings of the conversion
        LightGBM (boosting stops early on the calibration slice).
    calibration_share : the most recent share of training messages used for early stopping and
        for the isotonic calibration instead of for fitting.
    open_window_days, conversion_window_days : messages sent less than this before `as_of` are
        left out of the engagement / conversion training rows (their outcome may still come).
        None (default): learned from the observed delays between send and open or click, and
        between send and conversion (`models.engagement.send_time.outcome_window_days`); the values used
        are `open_window_days_` and `conversion_window_days_`.
    max_training_rows : the conversion LightGBM learns from a random sample of at most this many
        messages (None = all); calibration still uses every calibration message. Its cost grows
        with the rows, its accuracy hardly beyond a few hundred thousand.
    fit_conversion : False leaves the conversion model out (it predicts the training rate): for a
        fit that only ranks channels, such as the validation of what is served.
    use_attributes : offer the customers' free attributes (`attr.<name>` columns) as features;
        each target keeps them only where its calibration slice (its latest training messages,
        not fitted on) says they help (`attributes_used_`).
    serve : "model" (default) or "rule": the engagement-ratio rule, each customer's smoothed
        engagement rate per channel, (engaged + m p_ch) / (sent + m_ch), shrunk towards the
        channel's rate p_ch with an empirical-Bayes strength m_ch (`rule_strength_`). The rule
        is always fitted, so the mode can be set after fitting (`set_params`); it answers the
        engagement probability (and so the ranking), the conversion probability stays the model's.
    random_state, n_jobs : LightGBM's seed and threads (at most 2; one by default: the boosters
        are small, and OpenMP threads contend badly on a busy 2-core machine).
    """

    def __init__(
        self,
        min_history: int = 3,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 100,
        calibration_share: float = 0.2,
        open_window_days: float | None = None,
        conversion_window_days: float | None = None,
        max_training_rows: int | None = 300_000,
        fit_conversion: bool = True,
        use_attributes: bool = True,
        serve: str = "model",
        random_state: int | None = 0,
        n_jobs: int = 1,
    ):
        self.min_history = min_history
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.calibration_share = calibration_share
        self.open_window_days = open_window_days
        self.conversion_window_days = conversion_window_days
        self.max_training_rows = max_training_rows
        self.fit_conversion = fit_conversion
        self.use_attributes = use_attributes
        self.serve = serve
        self.random_state = random_state
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------------------------------
    # fitting
    def fit(
        self,
        messages: pd.DataFrame,
        events: pd.DataFrame | None = None,
        consent: pd.DataFrame | None = None,
        customers: pd.DataFrame | None = None,
        as_of: pd.Timestamp | None = None,
        identities: pd.DataFrame | None = None,
    ) -> ChannelModel:
        """Learn from messages sent before `as_of` (default: just after the last message or event),
        with features from events, messages and consent before each message (and the source
        systems of `identities` that know the customer); snapshot the features and the consent
        state at `as_of` for ranking."""
        if messages is None or len(messages) == 0:
            raise CannotTrain(
                "the channel model needs messages (sends with their opens or clicks) to learn which "
                "channel each customer responds to; there are none"
            )
        _check_serve(self.serve)
        self.notes_: list[str] = []
        as_of = self._resolve_as_of(messages, events, as_of)
        self.as_of_ = as_of
        messages = messages.loc[messages[c.SENT_TS] < as_of].dropna(
            subset=[c.CUSTOMER_ID, c.CHANNEL, c.SENT_TS]
        )
        if messages.empty:
            raise CannotTrain(
                f"the channel model has no message sent before {as_of.isoformat()} with a customer, "
                "a channel and a send time to learn from"
            )
        messages = messages.assign(**{c.CUSTOMER_ID: messages[c.CUSTOMER_ID].astype(str)})
        # outcome windows learned from the delays observed by as_of (later outcomes are not known)
        eng = engagement_ts(messages)
        self.open_window_days_ = (
            float(self.open_window_days)
            if self.open_window_days is not None
            else outcome_window_days(messages[c.SENT_TS], eng.where(eng < as_of), 1.0)
        )
        if self.conversion_window_days is not None:
            self.conversion_window_days_ = float(self.conversion_window_days)
        elif c.CONVERTED_TS in messages.columns:
            conv = messages[c.CONVERTED_TS]
            self.conversion_window_days_ = outcome_window_days(
                messages[c.SENT_TS], conv.where(conv < as_of), self.open_window_days_
            )
        else:
            self.conversion_window_days_ = self.open_window_days_
        self.attribute_encoding_ = attribute_encoding(customers) if self.use_attributes else []
        # only the columns the features read, and no copy of what is all before as_of
        events = None if events is None else rows_before(events, c.TS, as_of, EVENT_COLUMNS)
        self.channels_ = np.sort(messages[c.CHANNEL].astype(str).unique())
        self.event_channels_ = (
            np.sort(events[c.CHANNEL].dropna().astype(str).unique())
            if events is not None
            else np.array([], dtype=str)
        )
        engaged = (engagement_ts(messages) < as_of).fillna(False).to_numpy(dtype=bool)
        if not engaged.any():
            raise CannotTrain(
                f"no message sent before {as_of.isoformat()} was opened or clicked (opened_ts and clicked_ts "
                "are empty or absent): the channel model has no engagement to learn which channel reaches "
                "a customer"
            )
        rates = pd.Series(engaged).groupby(messages[c.CHANNEL].astype(str).to_numpy()).mean()
        self.channel_rates_ = {ch: float(rates.get(ch, 0.0)) for ch in self.channels_}

        self.identity_systems_ = _identity_systems(identities)
        self._context = {"consent": consent, "identities": identities}  # for history_features
        windows = (("engagement", self.open_window_days_), ("conversion", self.conversion_window_days_))
        cutoffs = [as_of - pd.Timedelta(days=window) for _, window in windows]
        # A row per message is gigabytes at a million customers: when the later targets' rows
        # are all in this target's (an earlier or equal cutoff), they are taken from these (the
        # same rows in the same order) and the larger frame is let go.
        rows = self._training_rows(messages, events, customers, as_of)
        self.feature_names_ = [col for col in rows.columns if not col.startswith("_")]
        self.boosters_: dict[str, lgb.Booster] = {}
        self.glm_coef_: np.ndarray | None = None
        self.calibrators_: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.training_info_: dict[str, dict] = {}
        self.attributes_used_: dict[str, bool] = {}
        self.conversion_features_ = list(self.feature_names_)
        source = rows
        del rows
        for i, (target, _) in enumerate(windows):
            keep = (source["_sent"] < cutoffs[i]).to_numpy(dtype=bool)
            usable = source if keep.all() else source.loc[keep]
            del keep
            if all(later <= cutoffs[i] for later in cutoffs[i + 1 :]):
                source = usable
            if target == "conversion" and not self.fit_conversion:
                self._constant_target(target, usable, "not fitted (fit_conversion=False)")
            else:
                self._fit_target(target, usable)
            del usable
        del source

        self._snapshot(messages, events, customers, consent, as_of)
        del self._context
        return self

    @staticmethod
    def _resolve_as_of(messages, events, as_of) -> pd.Timestamp:
        if as_of is not None:
            as_of = pd.Timestamp(as_of)
            return as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
        last = messages[c.SENT_TS].max()
        if events is not None and len(events):
            last = max(last, events[c.TS].max())
        return last + pd.Timedelta(seconds=1)

    def _history_features(self, queries, messages, events, customers) -> pd.DataFrame:
        """`history_features` with this model's channels, rates, consent and identity systems
        (the training rows and the snapshot at `as_of` are built alike)."""
        return history_features(
            queries,
            messages,
            events,
            customers,
            list(self.channels_),
            list(self.event_channels_),
            self.channel_rates_,
            self._context["consent"],
            self._context["identities"],
            self.identity_systems_,
            self.attribute_encoding_,
        )

    def _training_rows(self, messages, events, customers, as_of) -> pd.DataFrame:
        queries = pd.DataFrame(
            {c.CUSTOMER_ID: messages[c.CUSTOMER_ID].to_numpy(), "_t": messages[c.SENT_TS].array}
        )
        features = self._history_features(queries, messages, events, customers)
        features = self._add_channel_columns(features, messages[c.CHANNEL].astype(str).to_numpy())
        features["_sent"] = queries["_t"].array  # tz-aware, not an array of Timestamp objects
        features["_customer"] = queries[c.CUSTOMER_ID].to_numpy()
        eng = engagement_ts(messages)
        features["_y_engagement"] = (eng.notna() & (eng < as_of)).to_numpy(dtype=float)
        conv = (
            messages[c.CONVERTED_TS]
            if c.CONVERTED_TS in messages.columns
            else pd.Series(pd.NaT, index=messages.index, dtype="datetime64[us, UTC]")
        )
        features["_y_conversion"] = (conv.notna() & (conv < as_of)).to_numpy(dtype=float)
        return features

    def _add_channel_columns(self, features: pd.DataFrame, channels: np.ndarray) -> pd.DataFrame:
        """The message's channel (as a code) and its own history columns."""
        out = features.copy(deep=False)  # new columns only: the others are shared (copy-on-write)
        code = pd.Index(self.channels_).get_indexer(pd.Index(channels).astype(str)).astype(np.float64)
        out["channel_code"] = np.where(code < 0, np.nan, code)
        for name in ("sent", "engaged", "rate"):
            own = np.full(len(out), np.nan)
            for ch in self.channels_:
                col = f"{name}_{ch}"
                if col in out:
                    sel = channels == ch
                    own[sel] = out.loc[sel, col].to_numpy()
            out[f"own_{name}"] = own
        return out

    def _fit_target(self, target: str, rows: pd.DataFrame) -> None:
        y = rows[f"_y_{target}"].to_numpy()
        if len(rows) < 50 or len(np.unique(y)) < 2:
            self._constant_target(target, rows, "too few rows or one outcome only")
            return
        order = np.argsort(to_us(rows["_sent"]), kind="stable")
        n_cal = int(round(len(rows) * self.calibration_share))
        n_cal = min(max(n_cal, 20), len(rows) // 2)
        fit_idx, cal_idx = order[: len(rows) - n_cal], order[len(rows) - n_cal :]
        if target == "engagement":
            self._fit_engagement(rows, fit_idx, cal_idx)
            return
        if self.max_training_rows is not None and len(fit_idx) > self.max_training_rows:
            rng = np.random.default_rng(self.random_state)
            fit_idx = np.sort(rng.choice(fit_idx, self.max_training_rows, replace=False))
        # with customer attributes: a booster with and one without them, the one with the lower
        # log loss on the calibration rows (not fitted on) kept
        attributes = set(attribute_feature_names(self.attribute_encoding_))
        candidates = [[name for name in self.feature_names_ if name not in attributes]]
        if attributes & set(self.feature_names_):
            candidates.append(list(self.feature_names_))
        best, losses = None, []
        for names in candidates:
            booster, raw = self._train_booster(rows, names, y, fit_idx, cal_idx)
            losses.append(_log_loss(y[cal_idx], raw))
            if best is None or losses[-1] < best[0]:
                best = (losses[-1], booster, raw, names)
        kept = len(candidates) > 1 and best[3] is candidates[1]
        if len(candidates) > 1:
            self._note_attributes(target, kept, "log loss", losses[0] if kept else losses[1], best[0])
        _, booster, raw, self.conversion_features_ = best
        self.attributes_used_[target] = kept
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y[cal_idx])
        self.boosters_[target] = booster
        self.calibrators_[target] = (
            np.asarray(iso.X_thresholds_, float),
            np.asarray(iso.y_thresholds_, float),
        )
        self.training_info_[target] = {
            "rows": int(len(rows)),
            "fit_rows": int(len(fit_idx)),
            "calibration_rows": int(len(cal_idx)),
            "positive_rate": float(y.mean()),
            "trees": int(booster.best_iteration or booster.current_iteration()),
            "constant": False,
        }

    def _constant_target(self, target: str, rows: pd.DataFrame, why: str) -> None:
        """`target` predicted as the training rows' rate, and a note saying why."""
        y = rows[f"_y_{target}"].to_numpy()
        rate = float(y.mean()) if len(y) else 0.0
        self.boosters_.pop(target, None)
        self.calibrators_[target] = (np.array([0.0, 1.0]), np.array([rate, rate]))
        self.training_info_[target] = {"rows": int(len(rows)), "positive_rate": rate, "constant": True}
        self.notes_.append(f"{target}: {why}; the model predicts the rate {rate:.3f}")

    def _note_attributes(self, target: str, kept: bool, metric: str, other: float, chosen: float) -> None:
        """Says whether the customer attributes were kept in `target`'s model and on what grounds."""
        names = ", ".join(spec["column"] for spec in self.attribute_encoding_)
        verdict = "kept" if kept else "left out"
        self.notes_.append(
            f"{target}: customer attributes ({names}) {verdict} on the calibration slice "
            f"({metric} {chosen:.4f} against {other:.4f} {'without' if kept else 'with'} them)"
        )

    def _train_booster(self, rows, names, y, fit_idx, cal_idx):
        """A LightGBM classifier on the columns `names`, early-stopped on the calibration rows;
        returns it and its raw scores on those rows."""
        # only the rows the booster sees (a row per message is gigabytes at a million customers)
        features = rows[names]
        x_fit = features.iloc[fit_idx].to_numpy(np.float64)
        x_cal = features.iloc[cal_idx].to_numpy(np.float64)
        del features
        params = {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "seed": 0 if self.random_state is None else int(self.random_state),
            "num_threads": min(max(1, int(self.n_jobs)), _MAX_JOBS),
            "force_col_wise": True,
            "verbose": -1,
        }
        categorical = [names.index("channel_code")]
        booster = train_booster(  # lgb.train, early-stopped on the calibration rows (Dask when active)
            params,
            x_fit,
            y[fit_idx],
            num_boost_round=self.n_estimators,
            valid=(x_cal, y[cal_idx]),
            early_stopping_rounds=30,
            categorical_feature=categorical,
        )
        return booster, booster.predict(x_cal, num_iteration=booster.best_iteration)

    def _fit_engagement(self, rows: pd.DataFrame, fit_idx: np.ndarray, cal_idx: np.ndarray) -> None:
        """The engagement model (see the module docstring): a logistic regression per channel on
        the customer's cross-channel profile, ridge-shrunk towards one pooled over the channels,
        plus an empirical-Bayes customer × channel effect from the customer's own history on the
        channel; fitted on `fit_idx`, mapped to probabilities by isotonic regression on `cal_idx`.
        With customer attributes, fitted with and without them; the one with the higher AUC on
        the calibration rows (not fitted on) is kept."""
        y = rows["_y_engagement"].to_numpy(np.float64)
        frame = rows[self.feature_names_]
        self.population_mix_ = {}
        if "active_hours" in frame:
            active = frame["active_hours"].fillna(0.0).to_numpy()[fit_idx]
            for col in (name for name in self.feature_names_ if name.startswith("share_")):
                share = frame[col].fillna(0.0).to_numpy()[fit_idx]
                self.population_mix_[col] = float((share * active).sum() / max(active.sum(), 1e-12))
        inputs = _glm_feature_names(self.feature_names_, self.attribute_encoding_)
        plain = [name for name in inputs if not _is_attribute_input(name)]
        candidates = [plain] if len(plain) == len(inputs) else [plain, inputs]
        best, scores = None, []
        for names in candidates:
            self._fit_glm(frame, rows, y, fit_idx, names)
            logit = self._engagement_logit(frame)
            scores.append(_auc(y[cal_idx], logit[cal_idx]))
            if best is None or scores[-1] > best[0]:
                best = (scores[-1], self._glm_state(), logit)
        kept = len(candidates) > 1 and best[1]["glm_features_"] is candidates[1]
        if len(candidates) > 1:
            self._note_attributes("engagement", kept, "AUC", scores[0] if kept else scores[1], best[0])
            for name, value in best[1].items():
                setattr(self, name, value)
        self.attributes_used_["engagement"] = kept
        logit = best[2]
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(logit[cal_idx], y[cal_idx])
        self.boosters_.pop("engagement", None)
        self.calibrators_["engagement"] = (
            np.asarray(iso.X_thresholds_, float),
            np.asarray(iso.y_thresholds_, float),
        )
        self.training_info_["engagement"] = {
            "rows": int(len(rows)),
            "fit_rows": int(len(fit_idx)),
            "calibration_rows": int(len(cal_idx)),
            "positive_rate": float(y.mean()),
            "model": "hierarchical logistic regression + empirical-Bayes customer x channel effect",
            "inputs": int(len(self.glm_features_)),
            "eb_sigma2": float(1.0 / self.eb_tau_) if np.isfinite(self.eb_tau_) else 0.0,
            "constant": False,
        }

    _GLM_STATE: tuple[str, ...] = (
        "glm_features_", "glm_coef_", "glm_mean_", "glm_scale_", "glm_low_", "glm_high_", "eb_tau_",
    )  # fmt: skip

    def _glm_state(self) -> dict:
        return {name: getattr(self, name) for name in self._GLM_STATE}

    def _fit_glm(self, frame, rows, y, fit_idx, inputs: list[str]) -> None:
        """The engagement model's coefficients and prior strength on the inputs `inputs`."""
        self.glm_features_ = inputs
        raw = _glm_inputs(frame, self.glm_features_, self.population_mix_, self.attribute_encoding_)
        # inputs are clipped to the range seen in training: a linear model must not extrapolate
        fit_raw = raw[fit_idx]
        self.glm_low_, self.glm_high_ = fit_raw.min(axis=0), fit_raw.max(axis=0)
        self.glm_mean_ = fit_raw.mean(axis=0)
        scale = fit_raw.std(axis=0)
        del fit_raw
        self.glm_scale_ = np.where(scale > 1e-9, scale, np.inf)  # a constant input is left out (z = 0)
        # [1, (raw - mean) / scale], computed in place: at a million customers each matrix of the
        # training rows is gigabytes (the same numbers as building it from temporaries)
        design = np.empty((len(raw), raw.shape[1] + 1))
        design[:, 0] = 1.0
        np.subtract(raw, self.glm_mean_, out=design[:, 1:])
        design[:, 1:] /= self.glm_scale_
        del raw
        code = frame["channel_code"].to_numpy().astype(np.int64)  # training rows: known channels
        n_ch, n_in = len(self.channels_), design.shape[1] - 1
        pooled_x = np.empty((len(fit_idx), n_ch + n_in))  # [one-hot channel, design[fit_idx, 1:]]
        for start in range(0, len(fit_idx), _CHUNK_ROWS):
            rows_at = fit_idx[start : start + _CHUNK_ROWS]
            pooled_x[start : start + len(rows_at), :n_ch] = np.eye(n_ch)[code[rows_at]]
            pooled_x[start : start + len(rows_at), n_ch:] = design[rows_at, 1:]
        pooled = _ridge_logistic(pooled_x, y[fit_idx], np.zeros(n_ch + n_in), POOLED_RIDGE)
        del pooled_x
        coef = np.zeros((n_ch + 1, n_in + 1))  # one row per channel, then the pooled row
        coef[n_ch] = np.concatenate([[pooled[:n_ch].mean()], pooled[n_ch:]])
        for j in range(n_ch):
            start = np.concatenate([[pooled[j]], pooled[n_ch:]])
            sel = fit_idx[code[fit_idx] == j]
            coef[j] = _ridge_logistic(design[sel], y[sel], start, GLM_RIDGE) if len(sel) else start
        self.glm_coef_ = coef

        # prior strength of the customer × channel effect: method of moments on each customer and
        # channel's history as of their last fitting row
        self.eb_tau_ = float("inf")
        profile_logit = self._profile_logit(frame)
        last = (
            pd.DataFrame({"customer": rows["_customer"].to_numpy()[fit_idx], "code": code[fit_idx]})
            .assign(_sent=to_us(rows["_sent"])[fit_idx], _row=fit_idx)
            .sort_values("_sent", kind="stable")
            .drop_duplicates(["customer", "code"], keep="last")["_row"]
            .to_numpy()
        )
        residual, info = _history_residual(frame.iloc[last], profile_logit[last])
        self.eb_tau_ = _eb_tau(residual, info)

    def _profile_logit(self, frame: pd.DataFrame) -> np.ndarray:
        """Log-odds of engagement from the customer's profile alone (the channel's coefficients;
        the pooled ones for a channel without its own)."""
        # z = (clip(raw) - mean) / scale in place, and the per-row coefficients a chunk of rows
        # at a time (the same numbers; one matrix of the rows instead of four)
        z = _glm_inputs(frame, self.glm_features_, self.population_mix_, self.attribute_encoding_)
        np.clip(z, self.glm_low_, self.glm_high_, out=z)
        z -= self.glm_mean_
        z /= self.glm_scale_
        code = frame["channel_code"].to_numpy(dtype=np.float64)
        row = np.where(np.isnan(code), len(self.glm_coef_) - 1, np.nan_to_num(code)).astype(np.int64)
        out = np.empty(len(row))
        for start in range(0, len(row), _CHUNK_ROWS):
            coef = self.glm_coef_[row[start : start + _CHUNK_ROWS]]
            out[start : start + len(coef)] = coef[:, 0] + np.einsum(
                "ij,ij->i", z[start : start + len(coef)], coef[:, 1:]
            )
        return out

    def _engagement_logit(self, frame: pd.DataFrame) -> np.ndarray:
        """Profile log-odds plus the shrunk customer × channel effect r / (info + tau)."""
        logit = self._profile_logit(frame)
        residual, info = _history_residual(frame, logit)
        return logit + residual / (info + self.eb_tau_)

    def _snapshot(self, messages, events, customers, consent, as_of) -> None:
        """Features of every known customer at `as_of`, their message counts and consent."""
        ids = [messages[c.CUSTOMER_ID].astype(str).unique()]
        for frame in (events, customers, consent):
            if frame is not None and len(frame):
                ids.append(frame[c.CUSTOMER_ID].dropna().astype(str).unique())
        self.customer_ids_ = np.unique(np.concatenate(ids)).astype(str)
        self.customer_index_ = {cid: i for i, cid in enumerate(self.customer_ids_)}
        queries = pd.DataFrame({c.CUSTOMER_ID: self.customer_ids_, "_t": as_of})
        queries["_t"] = pd.to_datetime(queries["_t"], utc=True).astype(messages[c.SENT_TS].dtype)
        base = self._history_features(queries, messages, events, customers)
        self.customer_features_ = base.to_numpy(np.float64)
        self.customer_feature_names_ = list(base.columns)
        self.n_messages_ = (
            base["sent_total"].to_numpy(np.int64)
            if "sent_total" in base
            else np.zeros(len(base), dtype=np.int64)
        )
        self.has_consent_table_ = consent is not None
        # the engagement-ratio rule's prior strength per channel: method of moments on the
        # customers' (engaged, not engaged) counts at as_of (inf: no differences beyond noise)
        self.rule_strength_ = {}
        for ch in self.channels_:
            if f"sent_{ch}" not in base:
                self.rule_strength_[str(ch)] = float("inf")
                continue
            sent, engaged = base[f"sent_{ch}"].to_numpy(), base[f"engaged_{ch}"].to_numpy()
            engaged = np.minimum(engaged, sent)
            rate = self.channel_rates_[str(ch)]
            prior = np.tile([rate, 1.0 - rate], (len(sent), 1))
            self.rule_strength_[str(ch)] = dirichlet_prior_strength(
                np.column_stack([engaged, sent - engaged]), prior
            )
        if consent is None:
            self.notes_.append(
                "no consent table: every channel seen in the messages is treated as allowed for every customer"
            )
            self.consent_ = pd.DataFrame(
                {c.CUSTOMER_ID: [], c.CHANNEL: [], c.OPTED_IN: [], c.UPDATED_TS: []}
            ).astype({c.CUSTOMER_ID: str, c.CHANNEL: str, c.OPTED_IN: bool})
        else:
            self.consent_ = latest_consent(consent, as_of)

    # ------------------------------------------------------------------------------------------
    # scoring
    def _predict(self, target: str, x: np.ndarray, serve: str = "model") -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and the raw scores (log-odds or booster scores, which break the
        isotonic map's ties); with serve="rule", the engagement-ratio rule's engagement rates and
        the channels' rates (which break the rule's ties)."""
        if target == "engagement" and serve == "rule":
            return self._rule_probability(pd.DataFrame(x, columns=self.feature_names_))
        thresholds, values = self.calibrators_[target]
        if target == "engagement" and self.glm_coef_ is not None:
            raw = self._engagement_logit(pd.DataFrame(x, columns=self.feature_names_))
            return np.interp(raw, thresholds, values), raw
        booster = self.boosters_.get(target)
        if booster is None:
            return np.full(len(x), values[0]), np.zeros(len(x))
        if target == "conversion" and self.conversion_features_ != self.feature_names_:
            x = x[:, [self.feature_names_.index(name) for name in self.conversion_features_]]
        raw = booster.predict(x, num_iteration=booster.best_iteration or None)
        return np.interp(raw, thresholds, values), raw

    def _rule_probability(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The engagement-ratio rule: (engaged + m p) / (sent + m) from the customer's own history
        on the channel, p the channel's rate and m its prior strength (`rule_strength_`); the
        channel's rate without history (an unknown channel: the channels' mean rate)."""
        rates = np.array([self.channel_rates_[str(ch)] for ch in self.channels_] + [np.nan])
        strengths = np.array([self.rule_strength_.get(str(ch), np.inf) for ch in self.channels_] + [np.inf])
        rates[-1] = np.nanmean(rates[:-1]) if len(rates) > 1 else 0.0
        code = frame["channel_code"].to_numpy(dtype=np.float64)
        at = np.where(np.isnan(code), len(rates) - 1, np.nan_to_num(code)).astype(np.int64)
        sent = frame["own_sent"].fillna(0.0).to_numpy() if "own_sent" in frame else np.zeros(len(frame))
        engaged = (
            frame["own_engaged"].fillna(0.0).to_numpy() if "own_engaged" in frame else np.zeros(len(frame))
        )
        prior, strength = rates[at], strengths[at]
        with np.errstate(invalid="ignore", divide="ignore"):
            own = (np.minimum(engaged, sent) + strength * prior) / (sent + strength)
        usable = (sent > 0) & np.isfinite(strength)
        return np.where(usable, own, prior), prior

    def _feature_rows(self, customer_ids: np.ndarray, channels: np.ndarray) -> np.ndarray:
        rows = index_rows(self.customer_index_, customer_ids)
        known = rows >= 0
        base = np.full((len(customer_ids), len(self.customer_feature_names_)), np.nan)
        base[known] = self.customer_features_[rows[known]]
        frame = pd.DataFrame(base, columns=self.customer_feature_names_)
        # an unknown customer has no history at all: counts are zero, times and shares unknown
        counts = [col for col in frame.columns if col.split("_", 1)[0] in ("sent", "engaged", "events")]
        counts += [col for col in ("converted_total", "purchases", "active_hours") if col in frame]
        counts += [col for col in frame.columns if col.startswith(("consent_", "known_"))]
        frame.loc[~known, counts] = 0.0
        for ch in self.channels_:
            if f"rate_{ch}" in frame:
                frame.loc[~known, f"rate_{ch}"] = self.channel_rates_[ch]
        frame = self._add_channel_columns(frame, channels)
        return frame[self.feature_names_].to_numpy(np.float64)

    def predict_proba(self, customer_ids, channels, serve: str | None = None) -> pd.DataFrame:
        """Calibrated probabilities for aligned (customer, channel) pairs, ignoring consent.

        Columns: customer_id, channel, probability (engagement), conversion_probability, fallback,
        score (the engagement model's raw output, for ordering ties of the calibrated probability).
        `serve`: "model" or "rule" (the engagement-ratio rule's rate as the probability, the
        channel's rate as the score); default: the model's `serve`.
        """
        ids = np.asarray(pd.Series(np.asarray(customer_ids, dtype=object)).astype(str))
        chans = np.asarray(pd.Series(np.asarray(channels, dtype=object)).astype(str))
        x = self._feature_rows(ids, chans)
        serve = self.serve if serve is None else serve
        _check_serve(serve)
        engagement, raw = self._predict("engagement", x, serve)
        return pd.DataFrame(
            {
                c.CUSTOMER_ID: ids,
                c.CHANNEL: chans,
                PROBABILITY: engagement,
                CONVERSION_PROBABILITY: self._predict("conversion", x)[0],
                FALLBACK: self.fallback(ids),
                c.SCORE: raw,
            }
        )

    def fallback(self, customer_ids) -> np.ndarray:
        """True where the customer has fewer than `min_history` messages before `as_of` (or is unknown)."""
        rows = index_rows(self.customer_index_, customer_ids)
        out = np.ones(len(rows), dtype=bool)
        known = rows >= 0
        out[known] = self.n_messages_[rows[known]] < self.min_history
        return out

    def allowed_channels(self, customer_ids) -> pd.DataFrame:
        """(customer_id, channel) pairs the model may rank: latest consent opted in, channel known."""
        ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str).drop_duplicates()
        if not self.has_consent_table_:
            known = ids.loc[ids.isin(self.customer_index_)]
            return pd.DataFrame(
                {
                    c.CUSTOMER_ID: np.repeat(known.to_numpy(), len(self.channels_)),
                    c.CHANNEL: np.tile(self.channels_, len(known)),
                }
            )
        consent = self.consent_
        allowed = consent.loc[
            consent[c.OPTED_IN] & consent[c.CHANNEL].isin(self.channels_) & consent[c.CUSTOMER_ID].isin(ids)
        ]
        return allowed[[c.CUSTOMER_ID, c.CHANNEL]].reset_index(drop=True)

    def rank_channels(self, customer_ids=None, serve: str | None = None) -> pd.DataFrame:
        """Consented channels per customer ranked by engagement probability (rank 1 = best).

        Columns: customer_id, channel, rank, probability (engagement), conversion_probability,
        fallback. Customers with no allowed channel get no rows (see `no_channel_reasons`).
        `customer_ids=None` ranks every customer known at `as_of`; `serve` as in `predict_proba`.
        """
        ids = self.customer_ids_ if customer_ids is None else customer_ids
        pairs = self.allowed_channels(ids)
        if pairs.empty:
            return pd.DataFrame(
                {
                    c.CUSTOMER_ID: pd.Series([], dtype=str),
                    c.CHANNEL: pd.Series([], dtype=str),
                    c.RANK: pd.Series([], dtype=np.int64),
                    PROBABILITY: pd.Series([], dtype=float),
                    CONVERSION_PROBABILITY: pd.Series([], dtype=float),
                    FALLBACK: pd.Series([], dtype=bool),
                }
            )
        scored = self.predict_proba(pairs[c.CUSTOMER_ID], pairs[c.CHANNEL], serve)
        # the isotonic map is a step function: equal probabilities are ordered by the raw score
        scored = scored.sort_values(
            [c.CUSTOMER_ID, PROBABILITY, c.SCORE, c.CHANNEL],
            ascending=[True, False, False, True],
            kind="stable",
        ).reset_index(drop=True)
        scored[c.RANK] = scored.groupby(c.CUSTOMER_ID, sort=False).cumcount().astype(np.int64) + 1
        return scored[[c.CUSTOMER_ID, c.CHANNEL, c.RANK, PROBABILITY, CONVERSION_PROBABILITY, FALLBACK]]

    def count_without_channel(self) -> int:
        """How many known customers get no channel at all: the rows of `no_channel_reasons()`,
        without building their texts."""
        reachable = self.allowed_channels(self.customer_ids_)[c.CUSTOMER_ID].nunique()
        return len(self.customer_ids_) - int(reachable)  # customer_ids_: unique, from _snapshot

    def no_channel_reasons(self, customer_ids=None) -> pd.DataFrame:
        """Why customers get no channel at all: customer_id, reason (only customers without one)."""
        ids = pd.Series(
            np.asarray(self.customer_ids_ if customer_ids is None else customer_ids, dtype=object)
        )
        ids = ids.astype(str).drop_duplicates()
        reachable = set(self.allowed_channels(ids)[c.CUSTOMER_ID])
        missing = ids.loc[~ids.isin(reachable)]
        if missing.empty:
            return pd.DataFrame({c.CUSTOMER_ID: pd.Series([], dtype=str), c.REASON: pd.Series([], dtype=str)})
        consent = self.consent_.loc[self.consent_[c.CUSTOMER_ID].isin(missing)]
        # texts built per consent group, not by filtering the consent table per customer (16k
        # customers without a channel took 20 s that way at 100k customers; now 0.3 s at 20k)
        consent = consent.sort_values([c.CUSTOMER_ID, c.CHANNEL], kind="stable")
        channel = consent[c.CHANNEL].astype(str)
        since = pd.to_datetime(consent[c.UPDATED_TS]).dt.date.astype(str)
        outs = (channel + " (since " + since + ")").groupby(consent[c.CUSTOMER_ID].to_numpy()).agg(", ".join)
        opted = consent[c.OPTED_IN].astype(bool).to_numpy()
        opted_in = (
            channel[opted]
            .groupby(consent[c.CUSTOMER_ID].to_numpy()[opted])
            .agg(lambda chans: ", ".join(sorted(chans)))
        )
        in_outs = outs.reindex(missing).to_numpy(dtype=object)
        in_opted = opted_in.reindex(missing).to_numpy(dtype=object)
        reasons = np.empty(len(missing), dtype=object)
        for i, (cid, out_text, in_text) in enumerate(zip(missing, in_outs, in_opted, strict=True)):
            if cid not in self.customer_index_:
                reasons[i] = "unknown customer: no consent and no history on record"
            elif not self.has_consent_table_:
                reasons[i] = "no message channel is known (no messages were sent on any channel)"
            elif pd.isna(out_text):
                reasons[i] = "no consent on record: the customer has not opted in to any channel"
            elif not pd.isna(in_text):
                reasons[i] = (
                    f"opted in only to channels without message history ({in_text}): they cannot be ranked"
                )
            else:
                reasons[i] = f"opted out of every channel: {out_text}"
        return pd.DataFrame({c.CUSTOMER_ID: missing.to_numpy(), c.REASON: reasons})

    def no_channel_reason(self, customer_id) -> str | None:
        """Why the customer has no channel to be messaged on; None when they have one."""
        reasons = self.no_channel_reasons([customer_id])
        return None if reasons.empty else str(reasons[c.REASON].iloc[0])

    # ------------------------------------------------------------------------------------------
    # persistence
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for target, booster in self.boosters_.items():
            booster.save_model(
                str(folder / f"{target}.lgb.txt"), num_iteration=booster.best_iteration or None
            )
        consent = self.consent_
        glm = (
            {
                "glm_coef": self.glm_coef_,
                "glm_mean": self.glm_mean_,
                "glm_scale": self.glm_scale_,
                "glm_low": self.glm_low_,
                "glm_high": self.glm_high_,
            }
            if self.glm_coef_ is not None
            else {}
        )
        np.savez_compressed(
            folder / "channel.npz",
            customer_ids=self.customer_ids_.astype(str),
            customer_features=self.customer_features_,
            n_messages=self.n_messages_,
            consent_customer=consent[c.CUSTOMER_ID].to_numpy().astype(str),
            consent_channel=consent[c.CHANNEL].to_numpy().astype(str),
            consent_opted_in=consent[c.OPTED_IN].to_numpy().astype(bool),
            consent_updated_us=to_us(consent[c.UPDATED_TS]),
            **{f"calibration_{t}_x": self.calibrators_[t][0] for t in TARGETS},
            **{f"calibration_{t}_y": self.calibrators_[t][1] for t in TARGETS},
            **glm,
        )
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "as_of": self.as_of_.isoformat(),
            "channels": list(self.channels_),
            "event_channels": list(self.event_channels_),
            "identity_systems": list(self.identity_systems_),
            "channel_rates": self.channel_rates_,
            "feature_names": self.feature_names_,
            "customer_feature_names": self.customer_feature_names_,
            "has_consent_table": self.has_consent_table_,
            "boosters": sorted(self.boosters_),
            "open_window_days": self.open_window_days_,
            "conversion_window_days": self.conversion_window_days_,
            "rule_strength": {k: (v if np.isfinite(v) else None) for k, v in self.rule_strength_.items()},
            "attribute_encoding": self.attribute_encoding_,
            "attributes_used": self.attributes_used_,
            "conversion_features": self.conversion_features_,
            "engagement_model": None
            if self.glm_coef_ is None
            else {
                "inputs": self.glm_features_,
                "population_mix": self.population_mix_,
                "eb_tau": self.eb_tau_ if np.isfinite(self.eb_tau_) else None,
            },
            "training_info": self.training_info_,
            "notes": self.notes_,
        }
        (folder / "channel.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ChannelModel:
        folder = Path(folder)
        meta = read_model_meta(folder, "channel.json", "channel model", _READABLE_FORMATS)
        model = cls(**meta["params"])
        model.as_of_ = pd.Timestamp(meta["as_of"])
        model.channels_ = np.asarray(meta["channels"], dtype=str)
        model.event_channels_ = np.asarray(meta["event_channels"], dtype=str)
        model.identity_systems_ = list(meta.get("identity_systems", []))
        model.channel_rates_ = {k: float(v) for k, v in meta["channel_rates"].items()}
        model.feature_names_ = list(meta["feature_names"])
        model.customer_feature_names_ = list(meta["customer_feature_names"])
        model.has_consent_table_ = bool(meta["has_consent_table"])
        model.training_info_ = meta["training_info"]
        model.notes_ = list(meta["notes"])
        # format 3; before it: the windows were parameters, no rule mode, no attributes
        model.open_window_days_ = float(meta.get("open_window_days", model.open_window_days or 3.0))
        model.conversion_window_days_ = float(
            meta.get("conversion_window_days", model.conversion_window_days or 14.0)
        )
        strengths = meta.get("rule_strength", {})
        model.rule_strength_ = {k: float("inf") if v is None else float(v) for k, v in strengths.items()}
        model.attribute_encoding_ = list(meta.get("attribute_encoding", []))
        model.attributes_used_ = dict(meta.get("attributes_used", {}))
        model.conversion_features_ = list(meta.get("conversion_features", model.feature_names_))
        _check_serve(model.serve)
        if model.serve == "rule" and "rule_strength" not in meta:
            raise ValueError("channel folder serves the rule but was saved before rule modes: retrain")
        model.boosters_ = {t: lgb.Booster(model_file=str(folder / f"{t}.lgb.txt")) for t in meta["boosters"]}
        with np.load(folder / "channel.npz", allow_pickle=False) as arrays:
            model.customer_ids_ = arrays["customer_ids"].astype(str)
            model.customer_features_ = arrays["customer_features"]
            model.n_messages_ = arrays["n_messages"]
            model.calibrators_ = {
                t: (arrays[f"calibration_{t}_x"], arrays[f"calibration_{t}_y"]) for t in TARGETS
            }
            model.glm_coef_ = arrays["glm_coef"] if "glm_coef" in arrays else None
            if model.glm_coef_ is not None:
                engagement = meta["engagement_model"]
                model.glm_mean_, model.glm_scale_ = arrays["glm_mean"], arrays["glm_scale"]
                model.glm_low_, model.glm_high_ = arrays["glm_low"], arrays["glm_high"]
                model.glm_features_ = list(engagement["inputs"])
                model.population_mix_ = {k: float(v) for k, v in engagement["population_mix"].items()}
                tau = engagement["eb_tau"]
                model.eb_tau_ = float("inf") if tau is None else float(tau)
            model.consent_ = pd.DataFrame(
                {
                    c.CUSTOMER_ID: arrays["consent_customer"].astype(str),
                    c.CHANNEL: arrays["consent_channel"].astype(str),
                    c.OPTED_IN: arrays["consent_opted_in"].astype(bool),
                    c.UPDATED_TS: pd.to_datetime(arrays["consent_updated_us"], unit="us", utc=True),
                }
            )
        model.customer_index_ = {cid: i for i, cid in enumerate(model.customer_ids_)}
        return model


def _identity_systems(identities: pd.DataFrame | None, limit: int = MAX_IDENTITY_SYSTEMS) -> list[str]:
    """The source systems named in `identities` (most customers first, at most `limit`)."""
    if identities is None or c.SOURCE_SYSTEM not in identities.columns or len(identities) == 0:
        return []
    known = identities.dropna(subset=[c.CUSTOMER_ID, c.SOURCE_SYSTEM])
    per_system = known.groupby(known[c.SOURCE_SYSTEM].astype(str))[c.CUSTOMER_ID].nunique()
    per_system = per_system.sort_values(ascending=False, kind="stable")
    return [str(s) for s in per_system.index[:limit]]


def _glm_feature_names(feature_names: list[str], encoding: list[dict] | None = None) -> list[str]:
    """Inputs of the engagement model's profile part, from the history features available:
    activity (whether any, how much, the smoothed mix over event channels), purchases, recency,
    tenure, consent and identity flags, customer attributes (a numeric one with its missing
    indicator). Message history enters through the customer effect."""
    names: list[str] = []
    if "active_hours" in feature_names:
        names += ["has_activity", "log_active_hours"]
        names += [f"mix_{col[len('share_') :]}" for col in feature_names if col.startswith("share_")]
    for col in ("purchases", "days_since_event", "days_since_signup"):
        if col in feature_names:
            names.append(f"log_{col}")
    names += [col for col in feature_names if col.startswith(("consent_", "known_"))]
    for spec in encoding or []:
        if spec["kind"] == "numeric":
            names += [spec["column"]] + ([_MISSING + spec["column"]] if spec["has_missing"] else [])
    names += [
        name for name in attribute_feature_names(encoding or []) if "=" in name and name in feature_names
    ]
    return names


def _is_attribute_input(name: str) -> bool:
    return name.startswith((c.ATTRIBUTE_PREFIX, _MISSING))


def _glm_inputs(
    frame: pd.DataFrame,
    names: list[str],
    population_mix: dict[str, float],
    encoding: list[dict] | None = None,
) -> np.ndarray:
    """The inputs `names` (see `_glm_feature_names`) computed from history-feature columns.

    The mix is each event channel's share of the customer's active hours, smoothed with
    ACTIVITY_PRIOR_HOURS pseudo hours at the population's mix: two active hours are weak evidence.
    A numeric attribute's missing values take its median (in `encoding`), beside an indicator."""
    active = frame["active_hours"].fillna(0.0).to_numpy() if "active_hours" in frame else None
    medians = {spec["column"]: spec["median"] for spec in encoding or [] if spec["kind"] == "numeric"}
    columns = []
    for name in names:
        if name in medians:
            value = frame[name].fillna(medians[name]).to_numpy()
        elif name.startswith(_MISSING):
            value = frame[name[len(_MISSING) :]].isna().to_numpy()
        elif name == "has_activity":
            value = (active > 0).astype(np.float64)
        elif name == "log_active_hours":
            value = np.log1p(active)
        elif name.startswith("mix_"):
            col = f"share_{name[len('mix_') :]}"
            share = frame[col].fillna(0.0).to_numpy()
            prior = population_mix.get(col, 0.0)
            value = (share * active + ACTIVITY_PRIOR_HOURS * prior) / (active + ACTIVITY_PRIOR_HOURS)
        elif name == "log_purchases":
            value = np.log1p(frame["purchases"].fillna(0.0).clip(lower=0.0).to_numpy())
        elif name == "log_days_since_event":
            days = frame["days_since_event"].fillna(_NO_EVENT_DAYS).clip(0.0, _NO_EVENT_DAYS)
            value = np.log1p(days.to_numpy())
        elif name == "log_days_since_signup":
            value = np.log1p(frame["days_since_signup"].fillna(0.0).clip(lower=0.0).to_numpy())
        else:
            value = frame[name].fillna(0.0).to_numpy()
        columns.append(np.asarray(value, dtype=np.float64))
    return np.column_stack(columns) if columns else np.zeros((len(frame), 0))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (ties count half); NaN with one outcome only."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _ridge_logistic(x: np.ndarray, y: np.ndarray, prior: np.ndarray, ridge: float) -> np.ndarray:
    """Logistic regression coefficients by Newton's method with the penalty ridge/2 |beta - prior|^2
    (a Gaussian prior centred on `prior`), started at `prior`."""
    beta = prior.astype(np.float64).copy()
    penalty = ridge * np.eye(len(beta))
    for _ in range(_GLM_ITER):
        p = _sigmoid(x @ beta)
        grad = x.T @ (y - p) - ridge * (beta - prior)
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-6:
            break
    return beta


def _history_residual(frame: pd.DataFrame, logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Own-channel evidence against the profile log-odds: r = engaged - sent * p and
    info = sent * p (1 - p) (zero without messages on the channel)."""
    sent = frame["own_sent"].fillna(0.0).to_numpy() if "own_sent" in frame else np.zeros(len(frame))
    engaged = frame["own_engaged"].fillna(0.0).to_numpy() if "own_engaged" in frame else np.zeros(len(frame))
    p = _sigmoid(logit)
    return engaged - sent * p, sent * p * (1.0 - p)


def _eb_tau(residual: np.ndarray, info: np.ndarray) -> float:
    """Prior precision 1/sigma^2 of the customer × channel log-odds effect by the method of moments:
    for an effect z, r ≈ info * z + noise of variance info, so E[r^2] = info + info^2 sigma^2."""
    has = info > 0
    if has.sum() < 10:
        return float("inf")
    sigma2 = float((residual[has] ** 2 - info[has]).sum() / (info[has] ** 2).sum())
    return 1.0 / float(np.clip(sigma2, _MIN_SIGMA2, _MAX_SIGMA2))
