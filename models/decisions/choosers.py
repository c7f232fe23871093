"""Channel and send-time choosers of the next-best-action engine: the models when given, a
history-based fallback otherwise.

Channel and send time. p_open per (customer, channel) comes from a `ChannelChooser`: the channel
model's engagement probability when one is given (`ChannelModelChooser`), else the customer's
smoothed open rate per channel from the message history (`HistoryOpenRates`). The send time is the
best allowed slot from a `SendTimeChooser`'s weekly local scores: the send-time model's engagement
grid (`SendTimeModelChooser`) or the customer's activity hours (`ActivityHoursChooser`, everyone's
hours for a customer without events); consent,
quiet hours, caps and cooldowns are applied in one place, `models.decisions.contact_policy`.
`decide_one` (the HTTP route) scores the channel model's probabilities once per channel
(`ChannelModelChooser`).
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from models.base import FEW_IDS
from models.decisions.profile import CustomerProfiles


# ----------------------------------------------------------------------------------------------
# Channel and send-time choosers: the models when given, a history-based fallback otherwise
class ChannelChooser(Protocol):
    """Probability that a message on `channel` is opened, per customer."""

    name: str

    def open_probability(self, customer_ids: np.ndarray, channel: str) -> np.ndarray: ...


class SendTimeChooser(Protocol):
    """Scores of the 168 local weekly hour slots (weekday * 24 + hour) per customer; higher = better."""

    name: str

    def slot_scores(self, customer_ids: np.ndarray, channel: str) -> np.ndarray: ...


class HistoryOpenRates:
    """Fallback: each customer's smoothed open rate per channel from the message history."""

    name = "history_open_rates"

    def __init__(self, profiles: CustomerProfiles):
        self.profiles = profiles

    def open_probability(self, customer_ids, channel: str) -> np.ndarray:
        rows = self.profiles.rows(customer_ids)
        col = f"open_rate_{channel}"
        frame = self.profiles.frame_
        default = float(np.nanmean(frame[col])) if col in frame else 0.1
        out = np.full(len(rows), default if np.isfinite(default) else 0.1)
        if col in frame:
            known = rows >= 0
            out[known] = frame[col].to_numpy(np.float64)[rows[known]]
        return out


class ChannelModelChooser:
    """Adapter: `models.engagement.channel.ChannelModel.predict_proba(...)['probability']` (engagement)."""

    name = "channel_model"

    def __init__(self, model):
        self.model = model
        self._tables: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        ids = getattr(model, "customer_ids_", None)
        self._row_of = (
            None if ids is None else {str(cid): i for i, cid in enumerate(np.asarray(ids).tolist())}
        )

    def _score(self, ids: np.ndarray, channel: str) -> np.ndarray:
        scored = self.model.predict_proba(ids, np.full(len(ids), channel, dtype=object))
        return scored["probability"].to_numpy(np.float64)

    def _table(self, channel: str) -> np.ndarray:
        """The probability of every customer the model knows, scored once per channel: the model's
        per-call cost (building a feature frame) is paid once, not on every decision."""
        table = self._tables.get(channel)
        if table is None:
            with self._lock:
                table = self._tables.get(channel)
                if table is None:
                    ids = np.asarray(self.model.customer_ids_, dtype=object)
                    table = self._score(ids, channel)
                    table.flags.writeable = False
                    self._tables[channel] = table
        return table

    def warm(self, channels) -> None:
        """Scores the tables of `channels` now (e.g. at service start-up)."""
        if self._row_of is not None:
            for ch in channels:
                self._table(str(ch))

    def open_probability(self, customer_ids, channel: str) -> np.ndarray:
        ids = np.asarray(customer_ids, dtype=object)
        if self._row_of is None or len(ids) == 0:
            return self._score(ids, channel)
        if channel not in self._tables and FEW_IDS < len(ids) <= len(self._row_of) // 2:
            # a batch for a fraction of the customers (e.g. the training summary's sample) is
            # scored as it is, rows on their own as for unknown customers below: building the
            # table would score every customer the model knows (millions) for it
            return self._score(ids, channel)
        if len(ids) == 1:  # a request's customer: one look-up
            row = self._row_of.get(str(ids[0]), -1)
            if row >= 0:
                return self._table(channel)[row : row + 1].copy()
        rows = np.fromiter((self._row_of.get(str(cid), -1) for cid in ids.tolist()), np.int64, len(ids))
        out = np.empty(len(ids))
        known = rows >= 0
        out[known] = self._table(channel)[rows[known]]
        if not known.all():
            out[~known] = self._score(ids[~known], channel)
        return out


class ActivityHoursChooser:
    """Fallback: the customer's share of events per local hour (any channel), the same every day;
    everyone's mean share per local hour for customers without events (and, with a small weight,
    to break ties between hours a customer was never seen at). The population's hours are read
    from the data, not assumed (an earlier fixed bump around 10:00 was the generator's default)."""

    name = "activity_hours"

    def __init__(self, profiles: CustomerProfiles):
        self.profiles = profiles
        activity = np.asarray(profiles.activity_hours_, dtype=np.float64)
        totals = activity.sum(axis=0) if activity.size else np.zeros(24)
        # a flat floor: an hour nobody was active at is still a possible (last) choice
        prior = totals / totals.sum() if totals.sum() > 0 else np.full(24, 1.0 / 24)
        self.prior = 0.99 * prior + 0.01 / 24

    def slot_scores(self, customer_ids, channel: str) -> np.ndarray:
        rows = self.profiles.rows(customer_ids)
        prior = self.prior
        scores = np.tile(prior, (len(rows), 1))
        known = rows >= 0
        activity = self.profiles.activity_hours_[rows[known]].astype(np.float64)
        # a little of the prior breaks ties between hours the customer was never seen at
        scores[known] = activity + 0.05 * prior
        return np.tile(scores, (1, 7))


class SendTimeModelChooser:
    """Adapter: `models.engagement.send_time.SendTimeModel.score_grid` (engagement per local weekly slot)."""

    name = "send_time_model"

    def __init__(self, model):
        self.model = model

    def slot_scores(self, customer_ids, channel: str) -> np.ndarray:
        return self.model.score_grid(np.asarray(customer_ids, dtype=object), channel)
