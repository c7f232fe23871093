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
- the channel of the message, its own sent / engaged counts and smoothed rate.

Two LightGBM classifiers (engagement, conversion) are trained on past messages. The most recent
`calibration_share` of them (by send time) is held out of the trees: it stops boosting early and
fits an isotonic map from raw scores to probabilities, so the probabilities are calibrated on
later data than the trees were grown on, as they will be used.

Thin history. Customers with fewer than `min_history` past messages are flagged `fallback`:
their probabilities come from the same model but rest on their segment's evidence (customers
with the same cross-channel activity profile and no or little message history; the model was
trained on such rows, every customer's first messages are), not on their own responses.

Consent. The latest consent row (by updated_ts, up to `as_of`) of each customer and channel wins;
only opted-in channels are ranked. A customer opted in nowhere gets no rows, and
`no_channel_reason` says why. Without a consent table every channel seen in the messages is
taken as allowed for everyone (the loader already notes that consent filtering is skipped), and
`notes_` says so.

Saved to a folder: LightGBM text models, npz arrays (read with `allow_pickle=False`) and json.
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

FORMAT_VERSION = 1
TARGETS: tuple[str, ...] = ("engagement", "conversion")
FALLBACK = "fallback"
PROBABILITY = "probability"
CONVERSION_PROBABILITY = "conversion_probability"
RATE_PRIOR_MESSAGES = 2.0  # pseudo messages at the channel's population rate in smoothed rates
_DAY = pd.Timedelta(days=1)
_MAX_JOBS = 2  # the reference machine has 2 cores


def latest_consent(consent: pd.DataFrame, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """The latest consent row per (customer, channel) up to `as_of`: customer_id, channel, opted_in, updated_ts."""
    rows = consent if as_of is None else consent.loc[consent[c.UPDATED_TS] < as_of]
    rows = rows.dropna(subset=[c.CUSTOMER_ID, c.CHANNEL, c.UPDATED_TS])
    rows = rows.sort_values([c.CUSTOMER_ID, c.CHANNEL, c.UPDATED_TS], kind="stable")
    latest = rows.drop_duplicates([c.CUSTOMER_ID, c.CHANNEL], keep="last")
    out = latest[[c.CUSTOMER_ID, c.CHANNEL, c.OPTED_IN, c.UPDATED_TS]].reset_index(drop=True)
    return out.assign(
        **{
            c.CUSTOMER_ID: out[c.CUSTOMER_ID].astype(str),
            c.CHANNEL: out[c.CHANNEL].astype(str),
            c.OPTED_IN: out[c.OPTED_IN].astype(bool),
        }
    )


def engagement_ts(messages: pd.DataFrame) -> pd.Series:
    """When the message was first engaged with: the earlier of open and click (NaT if neither)."""
    cols = [col for col in (c.OPENED_TS, c.CLICKED_TS) if col in messages.columns]
    if not cols:
        return pd.Series(pd.NaT, index=messages.index, dtype="datetime64[us, UTC]")
    return messages[cols].min(axis=1)


def _as_of_counts(queries: pd.DataFrame, stream: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per query row (customer_id, _t), the cumulative `columns` of `stream` over rows strictly
    before _t, plus `_first` / `_last` stream times; zeros / NaT where nothing came before.

    `stream` has customer_id, _t and increment columns; it is summed cumulatively per customer and
    joined with merge_asof (backward, exact times excluded), which is what keeps features leak-free.
    """
    if stream.empty:
        out = pd.DataFrame(0.0, index=queries.index, columns=columns)
        out["_first"] = pd.NaT
        out["_last"] = pd.NaT
        return out
    stream = stream.sort_values([c.CUSTOMER_ID, "_t"], kind="stable").reset_index(drop=True)
    cumulative = stream.groupby(c.CUSTOMER_ID, sort=False)[columns].cumsum()
    cumulative[c.CUSTOMER_ID] = stream[c.CUSTOMER_ID]
    cumulative["_last"] = stream["_t"]
    cumulative["_first"] = stream.groupby(c.CUSTOMER_ID, sort=False)["_t"].transform("min")
    cumulative["_t"] = stream["_t"]
    cumulative = cumulative.sort_values("_t", kind="stable")
    left = (
        queries[[c.CUSTOMER_ID, "_t"]].assign(_row=np.arange(len(queries))).sort_values("_t", kind="stable")
    )
    merged = pd.merge_asof(left, cumulative, on="_t", by=c.CUSTOMER_ID, allow_exact_matches=False)
    merged = merged.sort_values("_row").set_axis(queries.index)
    out = merged[columns].fillna(0.0)
    out["_first"] = merged["_first"]
    out["_last"] = merged["_last"]
    return out


def history_features(
    queries: pd.DataFrame,
    messages: pd.DataFrame | None,
    events: pd.DataFrame | None,
    customers: pd.DataFrame | None,
    message_channels: list[str],
    event_channels: list[str],
    channel_rates: dict[str, float],
) -> pd.DataFrame:
    """Customer-level features for each query (customer_id, _t), from data strictly before _t."""
    t = queries["_t"]
    out = pd.DataFrame(index=queries.index)

    if messages is not None and len(messages):
        msgs = messages[[c.CUSTOMER_ID, c.CHANNEL, c.SENT_TS]].assign(_eng=engagement_ts(messages))
        msgs[c.CUSTOMER_ID] = msgs[c.CUSTOMER_ID].astype(str)
        conv = (
            messages[c.CONVERTED_TS]
            if c.CONVERTED_TS in messages.columns
            else pd.Series(pd.NaT, index=msgs.index)
        )
        parts = []
        for ch in message_channels:
            on_ch = msgs.loc[msgs[c.CHANNEL] == ch]
            parts.append(
                pd.DataFrame({c.CUSTOMER_ID: on_ch[c.CUSTOMER_ID], "_t": on_ch[c.SENT_TS], f"sent_{ch}": 1.0})
            )
            engaged = on_ch.loc[on_ch["_eng"].notna()]
            parts.append(
                pd.DataFrame(
                    {c.CUSTOMER_ID: engaged[c.CUSTOMER_ID], "_t": engaged["_eng"], f"engaged_{ch}": 1.0}
                )
            )
        converted = msgs.loc[conv.notna()]
        parts.append(
            pd.DataFrame(
                {c.CUSTOMER_ID: converted[c.CUSTOMER_ID], "_t": conv[conv.notna()], "converted": 1.0}
            )
        )
        stream = pd.concat(parts, ignore_index=True).fillna(0.0)
        count_cols = [f"{k}_{ch}" for ch in message_channels for k in ("sent", "engaged")] + ["converted"]
        for col in count_cols:
            if col not in stream:
                stream[col] = 0.0
        counts = _as_of_counts(queries, stream, count_cols)
        sends = stream.loc[stream[[f"sent_{ch}" for ch in message_channels]].sum(axis=1) > 0]
        last_sent = _as_of_counts(queries, sends[[c.CUSTOMER_ID, "_t"]].assign(_n=1.0), ["_n"])["_last"]
        engs = stream.loc[stream[[f"engaged_{ch}" for ch in message_channels]].sum(axis=1) > 0]
        last_eng = _as_of_counts(queries, engs[[c.CUSTOMER_ID, "_t"]].assign(_n=1.0), ["_n"])["_last"]
        for ch in message_channels:
            sent, engaged = counts[f"sent_{ch}"], counts[f"engaged_{ch}"]
            out[f"sent_{ch}"] = sent
            out[f"engaged_{ch}"] = engaged
            out[f"rate_{ch}"] = (engaged + RATE_PRIOR_MESSAGES * channel_rates[ch]) / (
                sent + RATE_PRIOR_MESSAGES
            )
        out["sent_total"] = counts[[f"sent_{ch}" for ch in message_channels]].sum(axis=1)
        out["engaged_total"] = counts[[f"engaged_{ch}" for ch in message_channels]].sum(axis=1)
        out["converted_total"] = counts["converted"]
        out["days_since_message"] = (t - pd.to_datetime(last_sent, utc=True)).dt.total_seconds() / 86400.0
        out["days_since_engagement"] = (t - pd.to_datetime(last_eng, utc=True)).dt.total_seconds() / 86400.0

    if events is not None and len(events):
        ev = events[[c.CUSTOMER_ID, c.TS, c.CHANNEL, c.EVENT_TYPE]].dropna(subset=[c.CUSTOMER_ID, c.TS])
        # one stream row per customer, clock hour and channel: fewer rows, the same counts; its
        # time is the bucket's last event, so a bucket counts only once all of it is in the past
        ev = ev.assign(
            **{c.CUSTOMER_ID: ev[c.CUSTOMER_ID].astype(str)},
            _hour=ev[c.TS].dt.floor("h"),
            _purchase=(ev[c.EVENT_TYPE] == "purchase").astype(float),
        )
        grouped = ev.groupby([c.CUSTOMER_ID, "_hour", c.CHANNEL], sort=False, observed=True)
        buckets = grouped.agg(
            _t=(c.TS, "max"), _n=(c.TS, "size"), purchases=("_purchase", "sum")
        ).reset_index()
        stream = buckets[[c.CUSTOMER_ID, "_t", "purchases"]].copy()
        for ch in event_channels:
            on_ch = (buckets[c.CHANNEL] == ch).to_numpy()
            stream[f"events_{ch}"] = np.where(on_ch, buckets["_n"], 0.0)
            stream[f"active_{ch}"] = on_ch.astype(float)
        count_cols = [f"{k}_{ch}" for ch in event_channels for k in ("events", "active")] + ["purchases"]
        counts = _as_of_counts(queries, stream, count_cols)
        total = counts[[f"events_{ch}" for ch in event_channels]].sum(axis=1)
        # shares of active hours, not of events: a web visit logs many events, a store visit few
        active = counts[[f"active_{ch}" for ch in event_channels]].sum(axis=1)
        for ch in event_channels:
            out[f"events_{ch}"] = counts[f"events_{ch}"]
            out[f"share_{ch}"] = counts[f"active_{ch}"] / active.where(active > 0)
        out["events_total"] = total
        out["active_hours"] = active
        out["purchases"] = counts["purchases"]
        out["days_since_event"] = (t - pd.to_datetime(counts["_last"], utc=True)).dt.total_seconds() / 86400.0
        out["days_since_first_event"] = (
            t - pd.to_datetime(counts["_first"], utc=True)
        ).dt.total_seconds() / 86400.0

    if customers is not None and c.SIGNUP_TS in customers.columns:
        signup = customers.drop_duplicates(c.CUSTOMER_ID, keep="last")
        signup = signup.set_index(signup[c.CUSTOMER_ID].astype(str))[c.SIGNUP_TS]
        signup_ts = pd.to_datetime(queries[c.CUSTOMER_ID].map(signup), utc=True)
        # a signup "after" the query time is not known yet
        out["days_since_signup"] = ((t - signup_ts).dt.total_seconds() / 86400.0).where(signup_ts < t)
    return out.astype(np.float64)


class ChannelModel(BaseEstimator):
    """Engagement and conversion probability per customer and channel; consented channels ranked.

    Parameters
    ----------
    min_history : customers with fewer past messages are flagged `fallback` (segment-level estimate).
    n_estimators, learning_rate, num_leaves, min_child_samples : LightGBM settings (boosting stops
        early on the calibration slice).
    calibration_share : the most recent share of training messages used for early stopping and
        for the isotonic calibration instead of for growing trees.
    open_window_days, conversion_window_days : messages sent less than this before `as_of` are
        left out of the engagement / conversion training rows (their outcome may still come).
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
        open_window_days: float = 3.0,
        conversion_window_days: float = 14.0,
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
    ) -> ChannelModel:
        """Learn from messages sent before `as_of` (default: just after the last message or event),
        with features from events and messages before each message; snapshot the features and
        the consent state at `as_of` for ranking."""
        if messages is None or len(messages) == 0:
            raise ValueError("the channel model needs a messages table with at least one message")
        self.notes_: list[str] = []
        as_of = self._resolve_as_of(messages, events, as_of)
        self.as_of_ = as_of
        messages = messages.loc[messages[c.SENT_TS] < as_of].dropna(
            subset=[c.CUSTOMER_ID, c.CHANNEL, c.SENT_TS]
        )
        messages = messages.assign(**{c.CUSTOMER_ID: messages[c.CUSTOMER_ID].astype(str)})
        events = None if events is None else events.loc[events[c.TS] < as_of]
        self.channels_ = np.sort(messages[c.CHANNEL].astype(str).unique())
        self.event_channels_ = (
            np.sort(events[c.CHANNEL].dropna().astype(str).unique())
            if events is not None
            else np.array([], dtype=str)
        )
        engaged = (engagement_ts(messages) < as_of).fillna(False).to_numpy(dtype=bool)
        rates = pd.Series(engaged).groupby(messages[c.CHANNEL].astype(str).to_numpy()).mean()
        self.channel_rates_ = {ch: float(rates.get(ch, 0.0)) for ch in self.channels_}

        rows = self._training_rows(messages, events, customers, as_of)
        self.feature_names_ = [col for col in rows.columns if not col.startswith("_")]
        self.boosters_: dict[str, lgb.Booster] = {}
        self.calibrators_: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.training_info_: dict[str, dict] = {}
        for target, window in (
            ("engagement", self.open_window_days),
            ("conversion", self.conversion_window_days),
        ):
            usable = rows.loc[rows["_sent"] < as_of - pd.Timedelta(days=window)]
            self._fit_target(target, usable)

        self._snapshot(messages, events, customers, consent, as_of)
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

    def _training_rows(self, messages, events, customers, as_of) -> pd.DataFrame:
        queries = pd.DataFrame(
            {c.CUSTOMER_ID: messages[c.CUSTOMER_ID].to_numpy(), "_t": messages[c.SENT_TS].to_numpy()}
        )
        features = history_features(
            queries,
            messages,
            events,
            customers,
            list(self.channels_),
            list(self.event_channels_),
            self.channel_rates_,
        )
        features = self._add_channel_columns(features, messages[c.CHANNEL].astype(str).to_numpy())
        features["_sent"] = queries["_t"].to_numpy()
        eng = engagement_ts(messages)
        features["_y_engagement"] = (eng.notna() & (eng < as_of)).to_numpy(dtype=float)
        conv = (
            messages[c.CONVERTED_TS]
            if c.CONVERTED_TS in messages.columns
            else pd.Series(pd.NaT, index=messages.index)
        )
        features["_y_conversion"] = (conv.notna() & (conv < as_of)).to_numpy(dtype=float)
        return features

    def _add_channel_columns(self, features: pd.DataFrame, channels: np.ndarray) -> pd.DataFrame:
        """The message's channel (as a code) and its own history columns."""
        out = features.copy()
        code = pd.Categorical(channels, categories=self.channels_).codes.astype(np.float64)
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
            rate = float(y.mean()) if len(y) else 0.0
            self.boosters_.pop(target, None)
            self.calibrators_[target] = (np.array([0.0, 1.0]), np.array([rate, rate]))
            self.training_info_[target] = {"rows": int(len(rows)), "positive_rate": rate, "constant": True}
            self.notes_.append(
                f"{target}: too few rows or one outcome only; the model predicts the rate {rate:.3f}"
            )
            return
        order = np.argsort(rows["_sent"].to_numpy(), kind="stable")
        n_cal = int(round(len(rows) * self.calibration_share))
        n_cal = min(max(n_cal, 20), len(rows) // 2)
        fit_idx, cal_idx = order[: len(rows) - n_cal], order[len(rows) - n_cal :]
        x = rows[self.feature_names_].to_numpy(np.float64)
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
        categorical = [self.feature_names_.index("channel_code")]
        train = lgb.Dataset(x[fit_idx], y[fit_idx], categorical_feature=categorical, free_raw_data=True)
        valid = lgb.Dataset(x[cal_idx], y[cal_idx], categorical_feature=categorical, reference=train)
        booster = lgb.train(
            params,
            train,
            num_boost_round=self.n_estimators,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(30, verbose=False)],
        )
        raw = booster.predict(x[cal_idx], num_iteration=booster.best_iteration)
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
        base = history_features(
            queries,
            messages,
            events,
            customers,
            list(self.channels_),
            list(self.event_channels_),
            self.channel_rates_,
        )
        self.customer_features_ = base.to_numpy(np.float64)
        self.customer_feature_names_ = list(base.columns)
        self.n_messages_ = (
            base["sent_total"].to_numpy(np.int64)
            if "sent_total" in base
            else np.zeros(len(base), dtype=np.int64)
        )
        self.has_consent_table_ = consent is not None
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
    def _predict(self, target: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and the raw booster scores (which break the isotonic map's ties)."""
        thresholds, values = self.calibrators_[target]
        booster = self.boosters_.get(target)
        if booster is None:
            return np.full(len(x), values[0]), np.zeros(len(x))
        raw = booster.predict(x, num_iteration=booster.best_iteration or None)
        return np.interp(raw, thresholds, values), raw

    def _feature_rows(self, customer_ids: np.ndarray, channels: np.ndarray) -> np.ndarray:
        rows = pd.Series(customer_ids).map(self.customer_index_)
        known = rows.notna().to_numpy()
        base = np.full((len(customer_ids), len(self.customer_feature_names_)), np.nan)
        base[known] = self.customer_features_[rows[known].astype(int).to_numpy()]
        frame = pd.DataFrame(base, columns=self.customer_feature_names_)
        # an unknown customer has no history at all: counts are zero, times and shares unknown
        counts = [col for col in frame.columns if col.split("_", 1)[0] in ("sent", "engaged", "events")]
        counts += [col for col in ("converted_total", "purchases", "active_hours") if col in frame]
        frame.loc[~known, counts] = 0.0
        for ch in self.channels_:
            if f"rate_{ch}" in frame:
                frame.loc[~known, f"rate_{ch}"] = self.channel_rates_[ch]
        frame = self._add_channel_columns(frame, channels)
        return frame[self.feature_names_].to_numpy(np.float64)

    def predict_proba(self, customer_ids, channels) -> pd.DataFrame:
        """Calibrated probabilities for aligned (customer, channel) pairs, ignoring consent.

        Columns: customer_id, channel, probability (engagement), conversion_probability, fallback,
        score (the engagement booster's raw output, for ordering ties of the calibrated probability).
        """
        ids = np.asarray(pd.Series(np.asarray(customer_ids, dtype=object)).astype(str))
        chans = np.asarray(pd.Series(np.asarray(channels, dtype=object)).astype(str))
        x = self._feature_rows(ids, chans)
        engagement, raw = self._predict("engagement", x)
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
        rows = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str).map(self.customer_index_)
        out = np.ones(len(rows), dtype=bool)
        known = rows.notna().to_numpy()
        out[known] = self.n_messages_[rows[known].astype(int).to_numpy()] < self.min_history
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

    def rank_channels(self, customer_ids=None) -> pd.DataFrame:
        """Consented channels per customer ranked by engagement probability (rank 1 = best).

        Columns: customer_id, channel, rank, probability (engagement), conversion_probability,
        fallback. Customers with no allowed channel get no rows (see `no_channel_reasons`).
        `customer_ids=None` ranks every customer known at `as_of`.
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
        scored = self.predict_proba(pairs[c.CUSTOMER_ID], pairs[c.CHANNEL])
        # the isotonic map is a step function: equal probabilities are ordered by the raw score
        scored = scored.sort_values(
            [c.CUSTOMER_ID, PROBABILITY, c.SCORE, c.CHANNEL],
            ascending=[True, False, False, True],
            kind="stable",
        ).reset_index(drop=True)
        scored[c.RANK] = scored.groupby(c.CUSTOMER_ID, sort=False).cumcount().astype(np.int64) + 1
        return scored[[c.CUSTOMER_ID, c.CHANNEL, c.RANK, PROBABILITY, CONVERSION_PROBABILITY, FALLBACK]]

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
        by_customer = {cid: rows for cid, rows in consent.groupby(c.CUSTOMER_ID, sort=False)}
        reasons = [self._reason(cid, by_customer.get(cid)) for cid in missing]
        return pd.DataFrame({c.CUSTOMER_ID: missing.to_numpy(), c.REASON: reasons})

    def no_channel_reason(self, customer_id) -> str | None:
        """Why the customer has no channel to be messaged on; None when they have one."""
        reasons = self.no_channel_reasons([customer_id])
        return None if reasons.empty else str(reasons[c.REASON].iloc[0])

    def _reason(self, customer_id: str, consent: pd.DataFrame | None) -> str:
        if customer_id not in self.customer_index_:
            return "unknown customer: no consent and no history on record"
        if not self.has_consent_table_:
            return "no message channel is known (no messages were sent on any channel)"
        if consent is None or consent.empty:
            return "no consent on record: the customer has not opted in to any channel"
        opted_in = consent.loc[consent[c.OPTED_IN], c.CHANNEL].tolist()
        if opted_in:
            return (
                f"opted in only to channels without message history ({', '.join(sorted(opted_in))}): "
                "they cannot be ranked"
            )
        outs = ", ".join(
            f"{row[c.CHANNEL]} (since {pd.Timestamp(row[c.UPDATED_TS]).date().isoformat()})"
            for _, row in consent.sort_values(c.CHANNEL).iterrows()
        )
        return f"opted out of every channel: {outs}"

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
        np.savez_compressed(
            folder / "channel.npz",
            customer_ids=self.customer_ids_.astype(str),
            customer_features=self.customer_features_,
            n_messages=self.n_messages_,
            consent_customer=consent[c.CUSTOMER_ID].to_numpy().astype(str),
            consent_channel=consent[c.CHANNEL].to_numpy().astype(str),
            consent_opted_in=consent[c.OPTED_IN].to_numpy().astype(bool),
            consent_updated_us=_epoch_us(consent[c.UPDATED_TS]),
            **{f"calibration_{t}_x": self.calibrators_[t][0] for t in TARGETS},
            **{f"calibration_{t}_y": self.calibrators_[t][1] for t in TARGETS},
        )
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "as_of": self.as_of_.isoformat(),
            "channels": list(self.channels_),
            "event_channels": list(self.event_channels_),
            "channel_rates": self.channel_rates_,
            "feature_names": self.feature_names_,
            "customer_feature_names": self.customer_feature_names_,
            "has_consent_table": self.has_consent_table_,
            "boosters": sorted(self.boosters_),
            "training_info": self.training_info_,
            "notes": self.notes_,
        }
        (folder / "channel.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ChannelModel:
        folder = Path(folder)
        meta_path = folder / "channel.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"not a channel model folder (no channel.json): {folder}")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"channel model format {meta.get('format_version')} is not {FORMAT_VERSION}")
        model = cls(**meta["params"])
        model.as_of_ = pd.Timestamp(meta["as_of"])
        model.channels_ = np.asarray(meta["channels"], dtype=str)
        model.event_channels_ = np.asarray(meta["event_channels"], dtype=str)
        model.channel_rates_ = {k: float(v) for k, v in meta["channel_rates"].items()}
        model.feature_names_ = list(meta["feature_names"])
        model.customer_feature_names_ = list(meta["customer_feature_names"])
        model.has_consent_table_ = bool(meta["has_consent_table"])
        model.training_info_ = meta["training_info"]
        model.notes_ = list(meta["notes"])
        model.boosters_ = {t: lgb.Booster(model_file=str(folder / f"{t}.lgb.txt")) for t in meta["boosters"]}
        with np.load(folder / "channel.npz", allow_pickle=False) as arrays:
            model.customer_ids_ = arrays["customer_ids"].astype(str)
            model.customer_features_ = arrays["customer_features"]
            model.n_messages_ = arrays["n_messages"]
            model.calibrators_ = {
                t: (arrays[f"calibration_{t}_x"], arrays[f"calibration_{t}_y"]) for t in TARGETS
            }
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


def _epoch_us(ts: pd.Series) -> np.ndarray:
    """Microseconds since the epoch (UTC) of timestamps, as int64 (a pickle-free array)."""
    naive = pd.to_datetime(ts, utc=True).dt.tz_localize(None)
    return naive.to_numpy(dtype="datetime64[us]").astype(np.int64)
