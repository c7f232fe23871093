"""The unified customer profile: what we know about each customer at one moment, and how we know it.

`CustomerProfiles.fit(tables, as_of)` computes, for every customer (customers table ∪ events ∪
messages), the fields below; `profile(customer_id)` returns them as
`{field: {"value": ..., "derived_from": "..."}}` and `profiles_frame()` as one table.

- RFM scores, segment and value tier: the rules with known answers of
  `models.decisions.profile_rules` (`rfm_scores`, `assign_segments`, `value_tiers`).
- predicted spend over the next 90 days and churn risk (probability of no purchase in the next 90
  days): LightGBM models trained with a time split (`models.decisions._forecast`).
- lifetime value: expected purchases over the next 365 days, the probability of still being an
  active buyer and the expected (undiscounted) value of those purchases, `clv_365d`: BG/NBD and
  Gamma-Gamma (`models.lifetime_value.LifetimeValueModel`; customers without a purchase get the
  first-purchase rate the data show).
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

Model features come from the as-of customer history (`models.decisions.history.CustomerHistory`,
leak-free); `CustomerProfiles.model_features(ids, now)` gives the matrix at `now`, with the
time-relative features (recency, tenure, ...) moved to `now`.

Saved to a folder as Parquet tables, npy arrays, LightGBM text models and json (never pickle).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from features import columns as c
from features.io import Tables
from models.base import FEW_IDS, CannotTrain, read_model_meta
from models.consent import latest_consent_matrix
from models.decisions._forecast import _SpendChurnForecast
from models.decisions.history import TIME_RELATIVE, CustomerHistory, _days
from models.decisions.profile_rules import (
    FALLBACK_THRESHOLDS,
    MIN_GAPS_FOR_THRESHOLDS,
    assign_segments,
    rfm_scores,
    segment_thresholds,
    top_categories,
    value_tiers,
)

# the feature build runs on the fit backend of whoever runs the fit (e.g. the Dask cluster of
# `omni train --dask-scheduler`)
from models.fitting import build_customer_features
from models.lifetime_value import LifetimeValueModel
from models.timestamps import NAT_US, US_PER_DAY, from_us, to_us

FORMAT_VERSION = 1
CLV_HORIZON_DAYS = 365
# the lifetime-value columns of `frame_` (profiles saved before they existed load them as NaN)
LIFETIME_VALUE_COLUMNS: tuple[str, ...] = (
    "expected_purchases_365d",
    "prob_active",
    "expected_order_value",
    "clv_365d",
)
DEFAULT_MESSAGE_CHANNELS: tuple[str, ...] = ("email", "sms", "push", "social")

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
class CustomerProfiles(_SpendChurnForecast, BaseEstimator):
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

        frame = self._rules_frame(ids, feats)
        frame[c.TIMEZONE] = _timezones(tables, ids)
        self._activity(tables, customer_features, ids, frame)
        self._consent_and_open_rates(tables, history, ids, frame)

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
        self._fit_lifetime_value(tables, ids)
        self.replenishment_ = self._replenishment(tables)
        self._index()
        return self

    def _fit_lifetime_value(self, tables: Tables, ids: np.ndarray) -> None:
        """Expected purchases, probability of being active, order value and CLV over 365 days
        (`LifetimeValueModel`); `lifetime_value_` keeps its parameters and rates (saved)."""
        for col in LIFETIME_VALUE_COLUMNS:
            self.frame_[col] = np.nan
        self.lifetime_value_: dict | None = None
        frame = self.frame_
        # first seen: the first event or the sign-up, whichever came first (unknown: from the start)
        first_event = frame["first_event_us"].to_numpy(np.int64)
        signup = frame["signup_us"].to_numpy(np.int64)
        known_event, known_signup = first_event != NAT_US, signup != NAT_US
        first_seen = np.where(
            known_event & known_signup,
            np.minimum(first_event, signup),
            np.where(known_event, first_event, signup),
        )
        try:
            model = LifetimeValueModel(horizon_days=CLV_HORIZON_DAYS, random_state=self.random_state).fit(
                tables.events, self.as_of_, tables.products, pd.Series(first_seen, index=ids)
            )
        except ValueError as exc:  # e.g. no purchase before as_of: the other fields still stand
            self.notes_.append(f"lifetime value not fitted: {exc}")
            return
        predicted = model.predict(ids)
        frame["expected_purchases_365d"] = predicted["expected_purchases"].to_numpy()
        frame["prob_active"] = predicted["prob_active"].to_numpy()
        frame["expected_order_value"] = predicted["expected_order_value"].to_numpy()
        frame["clv_365d"] = predicted["expected_value"].to_numpy()
        self.notes_ += [f"lifetime value: {note}" for note in model.notes_]
        self.lifetime_value_ = model.summary()

    def _rules_frame(self, ids: np.ndarray, feats: pd.DataFrame) -> pd.DataFrame:
        """The profile table's first columns: the timestamps the time-relative features come from,
        RFM and its scores, segment, value tier and price sensitivity."""
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
        return frame

    def _activity(
        self, tables: Tables, customer_features: pd.DataFrame | None, ids: np.ndarray, frame: pd.DataFrame
    ) -> None:
        """Activity by local hour (`activity_hours_`) and the top and bought categories (the
        project's feature builder)."""
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

    def _consent_and_open_rates(
        self, tables: Tables, history: CustomerHistory, ids: np.ndarray, frame: pd.DataFrame
    ) -> None:
        """Consent and smoothed open rates per message channel (`message_channels_`), and the
        channel of the last contact."""
        self.message_channels_ = (
            tuple(
                sorted(
                    set(history.message_channels)
                    | (set(tables.consent[c.CHANNEL].astype(str)) if tables.consent is not None else set())
                )
            )
            or DEFAULT_MESSAGE_CHANNELS
        )
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

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """`frame_[name].iloc[rows].to_numpy()` (text as Python strings, `to_numpy(dtype=object)`).

        A request reads a handful of fields of one customer: `frame_[name]` and a pyarrow take
        cost 50-400 µs per column, more than the decision itself. Each column is converted once
        (text as codes into its distinct values, so not one string object per customer) and
        kept until `frame_` is replaced or changed (`_frame_changed`: fit, refresh_consent).
        """
        cached = getattr(self, "_columns_cache", None)
        if cached is None or cached[0] is not self.frame_:
            cached = (self.frame_, {})
            self._columns_cache = cached
        found = cached[1].get(name)
        if found is None:
            found = _column_lookup(self.frame_[name])
            cached[1][name] = found
        values, codes = found
        rows = np.asarray(rows, dtype=np.intp)
        return values[rows] if codes is None else values[codes[rows]]

    def _frame_changed(self) -> None:
        """Columns of `frame_` were replaced in place: `take` converts them again."""
        self._columns_cache = None

    def refresh_consent(self, consent: pd.DataFrame | None, as_of: pd.Timestamp | None = None) -> None:
        """Re-reads consent from a (newer) consent table, latest row up to `as_of` (default: all rows).

        Consent changes daily and an opt-out must count at once: a decision job calls this with
        today's table instead of waiting for the next training.
        """
        ids = self.frame_[c.CUSTOMER_ID].astype(str).to_numpy()
        matrix = latest_consent_matrix(consent, ids, self.message_channels_, as_of)
        for j, ch in enumerate(self.message_channels_):
            self.frame_[f"consent_{ch}"] = matrix[:, j]
        self._frame_changed()
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
            matrix = self.features_.to_numpy()
            cached = (
                self.features_,
                {name: self.features_[name].to_numpy() for name in self.features_.columns},
                # the features are float64 (`fit`): one row of them is one take of this matrix
                (list(self.features_.columns), matrix) if matrix.dtype == np.float64 else None,
            )
            self._feature_columns = cached
        if cached[2] is not None and len(rows) <= FEW_IDS:
            names, matrix = cached[2]
            block = matrix[np.asarray(rows, dtype=np.intp)]
            feats = {name: block[:, j] for j, name in enumerate(names)}
        else:
            feats = {name: values[rows] for name, values in cached[1].items()}
        now_us = int(to_us(now)[0])
        for name, col in TIME_RELATIVE.items():
            if name not in feats:
                continue
            then = self.take(col, rows)
            if len(rows) == 1:
                # `_days` of one value, in Python (the same float: the µs difference is exact)
                value = int(then[0])
                feats[name] = np.array([np.nan if value == NAT_US else (now_us - value) / US_PER_DAY])
            else:
                feats[name] = _days(np.full(len(rows), now_us), then)
        return feats

    def due_replenishments(self, customer_ids, now: pd.Timestamp, k: int = 3) -> list[list[str]]:
        """Per customer, up to k products whose replenishment cycle is due at `now`, most due first.

        Due: now is between (last purchase + cycle - lead days) and (last purchase + 1.5 cycles).
        """
        raw = np.asarray(customer_ids, dtype=object)
        if len(raw) <= FEW_IDS and all(type(cid) is str for cid in raw.tolist()):
            # a request's ids, already strings: no Series (a few hundred µs for one id)
            return [self._due_of(cid, now, k) for cid in raw.tolist()]
        ids = pd.Series(raw).astype(str)
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
            *LIFETIME_VALUE_COLUMNS,
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

    def _lifetime_value_sources(self, has_purchase: bool) -> dict[str, str]:
        """How each lifetime-value field of a customer (with or without a purchase) was derived."""
        fitted = getattr(self, "lifetime_value_", None)
        if fitted is None:
            reason = "; ".join(n for n in self.notes_ if n.startswith("lifetime value")) or (
                "these profiles were saved before lifetime value existed"
            )
            return {name: f"not available: {reason}" for name in LIFETIME_VALUE_COLUMNS}
        days = CLV_HORIZON_DAYS
        order_value = (
            "Gamma-Gamma spend model (own maximum-likelihood fit) on the mean value of the customer's "
            "repeat transactions, shrunk towards the population mean "
            f"{fitted['population_order_value']:.2f}"
            if fitted.get("gamma_gamma")
            else "the mean value of every transaction (too few repeat buyers for the spend model)"
        )
        if has_purchase:
            purchases = (
                f"BG/NBD purchase model (own maximum-likelihood fit, time in weeks): expected transactions "
                f"(distinct orders, else distinct days) in the {days} days after the profile time, from the "
                "customer's repeat transactions, the time of the last one and the time since the first"
            )
            active = "BG/NBD probability that the customer is still an active buyer at the profile time"
        else:
            rate = fitted["first_purchase"]
            window = f"{rate['window_days']:.0f}"
            purchases = (
                f"no purchase yet: of the {rate['customers']} customers seen without a purchase {window} days "
                f"before the profile time, transactions made in those days per customer, scaled to {days} days"
            )
            active = (
                f"no purchase yet: the share of the {rate['customers']} customers seen without a purchase "
                f"{window} days before the profile time who bought within those days"
            )
        return {
            "expected_purchases_365d": purchases,
            "prob_active": active,
            "expected_order_value": order_value,
            "clv_365d": f"expected purchases over {days} days × expected order value ({order_value}); "
            "not discounted",
        }

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
            **{
                name: field(r[name], source)
                for name, source in self._lifetime_value_sources(bool(r["frequency"] > 0)).items()
            },
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
            "lifetime_value": self.lifetime_value_,
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
        for col in LIFETIME_VALUE_COLUMNS:  # profiles saved before lifetime value existed
            if col not in frame:
                frame[col] = np.nan
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
        model.lifetime_value_ = meta.get("lifetime_value")
        model.notes_ = list(meta["notes"])
        model._index()
        return model


def _column_lookup(column: pd.Series) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, codes) of `CustomerProfiles.take`: a text column as its distinct values (plus
    its missing value last, as `to_numpy(dtype=object)` gives it) and each row's code; any
    other column as `to_numpy()` itself (no copy) and None."""
    if not isinstance(column.dtype, pd.StringDtype):
        return column.to_numpy(), None
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    missing = column.isna().to_numpy()
    na = column[missing].iloc[:1].to_numpy(dtype=object)
    values = np.concatenate([np.asarray(uniques, dtype=object), na if len(na) else np.array([None], object)])
    return values, np.where(missing, len(values) - 1, codes).astype(np.intp)


def _timezones(tables: Tables, ids: np.ndarray) -> np.ndarray:
    """customers.timezone per customer of `ids` (UTC when unknown)."""
    timezone = pd.Series("UTC", index=ids)
    if tables.customers is not None and c.TIMEZONE in tables.customers:
        cust = tables.customers.dropna(subset=[c.TIMEZONE])
        tz = pd.Series(cust[c.TIMEZONE].astype(str).to_numpy(), index=cust[c.CUSTOMER_ID].astype(str))
        tz = tz[~tz.index.duplicated()]
        timezone = timezone.index.to_series().map(tz).fillna("UTC")
    return timezone.to_numpy().astype(object)


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
