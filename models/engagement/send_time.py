"""Best send time per customer and channel: a 168-slot weekly grid in the customer's local time.

A slot is one hour of the local week, `slot = weekday * 24 + hour` (weekday 0 = Monday), in the
customer's IANA time zone with real daylight-saving rules (UTC when the zone is unknown;
`models.engagement.local_time`). The grid holds, for a message sent on channel `ch` during that
local hour, the estimated probability that it is engaged with (opened or clicked).

Why a mixture. A person's hour-of-day pattern is peaked somewhere (before work, lunch, evening),
not "the population's pattern plus noise". Shrinking a histogram of five active hours towards the
population's average histogram keeps the population's modes; asking "which peaked profile explains
these five hours best, and how sure are we" does not. So the hour part is an empirical-Bayes
mixture: K habit profiles (a circular Gaussian bump at each of `n_centres` centres per width, plus
a flat one) with prior weights per segment learned by EM; each customer's habit is the posterior
over profiles given their activity hours and their message outcomes. Little data leaves the
posterior at the segment's weights, a lot of data makes it the customer's own; data volume weighs
itself in.

The mixture's observation model of activity, its engagement model of message outcomes and its EM
are in `models.engagement.send_time_em`. What it is fitted on:

- Activity: every event in any channel (store, web, app, ...) says when the customer is around.
  Events are reduced to *active hours* (one per customer and clock hour), and events within
  `induced_minutes` after one of the customer's own opens or clicks are dropped: our message
  caused them, and they would pull the grid towards our past send times.
- Weekday distribution q_i: the weekend share and the split within weekdays and within the weekend
  are each shrunk towards the segment's with a Dirichlet prior whose strength is estimated by the
  method of moments on the Dirichlet-multinomial (`dirichlet_prior_strength`).
- Segments (what a thin customer falls back to): the dominant activity channel (store, web, app,
  other), or `none` for customers without events, whose profile weights start at the
  population's and move with their message responses (`SEGMENT_PRIOR_COUNT` pseudo customers
  keep a small segment near the population).

With only a transaction log (no messages) there are no responses to learn the link from activity
to engagement, and the grid is the probability of the customer being active in the slot, on a
log-odds scale centred on `DEFAULT_BASE_RATE` (a propensity, not a calibrated probability, the same
for every channel): logit = base + log(24 p_i(h)) + log(7 q_i(d)), where p_i is the customer's own
hour distribution of activity shrunk towards the mixture's predictive one (sum_k post[i, k] times the
profile's habit-plus-background) with a Dirichlet prior whose strength is estimated by the method
of moments: a customer with a few active hours gets the mixture's smooth answer, one with hundreds
their own histogram (`hour_prob_`); with `activity_window_hours` > 0, the activity within that many
hours either side of the slot's hour instead (chosen on validation by the training step).

Since training. Every scoring method takes `live_activity` (the live store's `message_activity`;
its opens and clicks after `as_of` count): each engagement is an active hour of the customer, in
their local time, that the fit has not seen. The customer's posterior over habit profiles takes it
in the way the E-step takes an active hour (times the profile's activity probability of that hour),
and with only a transaction log their hour distribution adds it to the counts it was shrunk from
(the same Dirichlet strength). A rule keeps its hour, except that a customer the fit saw no
activity of gets the modal hour of their live engagements.

Rules. The model is validated against two simple rules (`training.channel_training` serves
whichever wins on a validation window): the customer's most frequent local activity hour, and one
hour for everyone (the send hour with the best shrunk engagement rate; without messages the
population's busiest hour). Both are fitted with the model; `serve` says which one the grid
follows.

The model saves to a folder (npz + json, read with `allow_pickle=False`), never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from features import columns as c
from features.codes import positions
from features.io import rows_before
from features.live_store import ENGAGED
from models.base import CannotTrain, index_rows, read_model_meta
from models.engagement.local_time import (
    DAYS,
    DEFAULT_QUIET_HOURS,
    HOURS,
    SLOTS,
    circular_distance,
    is_quiet,
    local_hour_starts,
    local_slots,
    valid_timezone,
)
from models.engagement.send_time_em import (
    FEATURES,
    MAX_LOG_DENSITY,
    SEGMENT_CHANNELS,
    SEGMENTS,
    HabitMixture,
    circular_kernel,
)
from models.engagement.shrinkage import dirichlet_prior_strength, shrink_counts

FORMAT_VERSION = 3
# format 1 (learned profile shapes) and 2 (no rule modes: always served as the model) score the same way
_READABLE_FORMATS = (1, 2, 3)
# What is served: the model's grid, or one of the two simple rules it is validated against (the
# training step serves whichever wins on a validation window): the customer's most frequent
# local activity hour, or one hour for everyone (the send hour with the best engagement rate in
# the messages, or without messages the population's most frequent activity hour).
SERVE_MODES: tuple[str, ...] = ("model", "customer_modal_hour", "global_best_hour")
# In a rule mode the grid keeps the model's level per weekday and falls off by this share per
# hour of circular distance from the rule's hour: the rule's hour is the day's best, the nearest
# allowed one next (quiet hours), and the weekday still comes from the model.
_RULE_FALLOFF = 1e-4
# outcome windows (`outcome_window_days`): the share of observed delays a window must cover
OUTCOME_WINDOW_QUANTILE = 0.99
_SCORE_CHUNK = 1024  # customers per block when building grids (block = chunk × profiles × 168)
_BEST_SLOT_CHUNK = 65_536  # customers per grid when only each one's best slot is kept
_TIE_BREAK = 1e-6  # weight of the smoothed day row that breaks ties between equal hours
_TIE_KERNEL = circular_kernel(3.0)  # how that day row is smoothed


def weekday_distributions(day_counts: np.ndarray, segment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment (segments × 7) and shrunk customer (n × 7) weekday distributions of activity.

    Shrunk in two levels, each with its own estimated prior strength: the weekend share (the
    pattern that varies most between people), then the split within weekdays and within the
    weekend. The `none` segment (no activity) gets the population's distribution.
    """
    seg_prob = np.zeros((len(SEGMENTS), DAYS))
    population = day_counts.sum(axis=0) + 1.0
    seg_prob[0] = population / population.sum()
    for s in range(1, len(SEGMENTS)):
        total = day_counts[segment == s].sum(axis=0) + 1.0
        seg_prob[s] = total / total.sum()
    prior = seg_prob[segment]
    weekend = slice(5, 7)
    weekdays = slice(0, 5)
    split_counts = np.column_stack([day_counts[:, weekdays].sum(1), day_counts[:, weekend].sum(1)])
    split_prior = np.column_stack([prior[:, weekdays].sum(1), prior[:, weekend].sum(1)])
    split = shrink_counts(split_counts, split_prior, dirichlet_prior_strength(split_counts, split_prior))
    parts = []
    for block, share in ((weekdays, split[:, :1]), (weekend, split[:, 1:])):
        block_prior = prior[:, block] / prior[:, block].sum(axis=1, keepdims=True)
        block_counts = day_counts[:, block]
        within = shrink_counts(block_counts, block_prior, dirichlet_prior_strength(block_counts, block_prior))
        parts.append(share * within)
    return seg_prob, np.hstack(parts)


def outcome_window_days(sent: pd.Series, outcome: pd.Series, default: float) -> float:
    """How long after a send its outcome (an open, a conversion) can still come, learned from the
    data: the OUTCOME_WINDOW_QUANTILE quantile of the observed delays (outcome - sent), at least
    one hour; `default` where no outcome was observed (then nothing is learned from the outcome
    either way). Models leave messages sent less than this before `as_of` out of their training
    rows (their outcome may still come), and evaluations wait this long after a window."""
    delay = (pd.to_datetime(outcome, utc=True) - pd.to_datetime(sent, utc=True)).dt.total_seconds()
    delay = delay.to_numpy(dtype=np.float64, na_value=np.nan)
    delay = delay[np.isfinite(delay) & (delay >= 0)]
    if len(delay) == 0:
        return float(default)
    return max(1.0 / 24.0, float(np.quantile(delay, OUTCOME_WINDOW_QUANTILE)) / 86400.0)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _resolve_as_of(events, messages, as_of) -> pd.Timestamp:
    if as_of is not None:
        as_of = pd.Timestamp(as_of)
        return as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    last = [
        frame[col].max()
        for frame, col in ((events, c.TS), (messages, c.SENT_TS))
        if frame is not None and len(frame)
    ]
    return max(last) + pd.Timedelta(seconds=1)


def _check_serve(serve: str) -> None:
    if serve not in SERVE_MODES:
        raise ValueError(f"serve must be one of {', '.join(SERVE_MODES)}, got {serve!r}")


# What `SendTimeModel.fit` reads of the events.
_EVENT_COLUMNS: tuple[str, ...] = (c.CUSTOMER_ID, c.TS, c.CHANNEL)


class SendTimeModel(HabitMixture, BaseEstimator):
    """Weekly send-time grids per customer and channel (see the module docstring).

    Parameters
    ----------
    profile_width : width (hours, Gaussian sd) of the narrowest habit profile; the others are
        2, 4, ... times as wide (`n_widths` in all). None (default): learned from the activity
        hours by maximum likelihood inside EM (`profile_widths_`); a number fixes it.
    n_widths, n_centres : habit profiles: one per width and centre (centres evenly spaced over the
        day), plus a flat one.
    hour_bandwidth : Gaussian kernel width (hours) that smooths the background activity and the
        residuals across neighbouring hours.
    n_iter : EM iterations at most (it stops earlier when the log-likelihood settles).
    induced_minutes : events this soon after one of the customer's opens or clicks are taken as
        caused by the message and left out of the activity counts.
    min_history : a customer with fewer messages *and* fewer active hours than this is flagged
        `fallback` (their grid is essentially their segment's).
    open_window_days : messages sent this close to `as_of` are not learned from (their opens may
        not be in yet). None (default): learned from the observed delays between send and open or
        click (`outcome_window_days`); the value used is `open_window_days_`.
    serve : what the grid serves: "model" (default), or a rule it was validated against,
        "customer_modal_hour" or "global_best_hour" (see SERVE_MODES; both are always fitted, so
        the mode can be set after fitting with `set_params`).
    activity_window_hours : without messages, the grid scores the probability of activity within
        this many hours either side of the slot's hour (0: in that hour). A scoring setting (no
        refit needed); the training step chooses it on a validation window.
    random_state : accepted for a uniform interface; the fit is deterministic.
    """

    def __init__(
        self,
        profile_width: float | None = None,
        n_widths: int = 1,
        n_centres: int = 24,
        hour_bandwidth: float = 1.0,
        n_iter: int = 12,
        induced_minutes: float = 60.0,
        min_history: int = 3,
        open_window_days: float | None = None,
        serve: str = "model",
        activity_window_hours: int = 0,
        random_state: int | None = None,
    ):
        self.profile_width = profile_width
        self.n_widths = n_widths
        self.n_centres = n_centres
        self.hour_bandwidth = hour_bandwidth
        self.n_iter = n_iter
        self.induced_minutes = induced_minutes
        self.min_history = min_history
        self.open_window_days = open_window_days
        self.serve = serve
        self.activity_window_hours = activity_window_hours
        self.random_state = random_state

    # ------------------------------------------------------------------------------------------
    # fitting
    def fit(
        self,
        events: pd.DataFrame | None = None,
        messages: pd.DataFrame | None = None,
        customers: pd.DataFrame | None = None,
        as_of: pd.Timestamp | None = None,
    ) -> SendTimeModel:
        """Learn from events (any channel) and messages sent before `as_of` (default: just after
        the last record). Either table may be None; `customers` gives time zones (UTC if absent)."""
        if (events is None or len(events) == 0) and (messages is None or len(messages) == 0):
            raise CannotTrain(
                "the send-time model needs events or messages with timestamps to learn from; there are none"
            )
        _check_serve(self.serve)
        as_of = _resolve_as_of(events, messages, as_of)
        self.notes_: list[str] = []
        self.as_of_ = as_of
        # only the columns read below, and no copy of what is all before as_of
        ev = None if events is None else rows_before(events, c.TS, as_of, _EVENT_COLUMNS)
        msgs = None if messages is None else rows_before(messages, c.SENT_TS, as_of)

        self._fit_customers(ev, msgs, customers)
        active = self._active_hours(ev, msgs)
        group_counts = self._fit_activity(active)
        response = self._response_data(msgs, as_of)
        self._fit_profiles(group_counts, response)
        return self

    def _fit_customers(self, events, messages, customers) -> None:
        ids = [
            frame[c.CUSTOMER_ID].dropna().astype(str).unique()
            for frame in (customers, events, messages)
            if frame is not None and len(frame)
        ]
        self.customer_ids_ = np.unique(np.concatenate(ids)).astype(str)
        self.customer_index_ = {cid: i for i, cid in enumerate(self.customer_ids_)}
        tz = np.full(len(self.customer_ids_), "UTC", dtype=object)
        if customers is not None and c.TIMEZONE in customers.columns:
            zones = customers.drop_duplicates(c.CUSTOMER_ID, keep="last")
            zones = zones.set_index(zones[c.CUSTOMER_ID].astype(str))[c.TIMEZONE]
            mapped = pd.Series(self.customer_ids_).map(zones)
            valid_names = {z for z in mapped.dropna().unique() if valid_timezone(z)}
            good = mapped.isin(valid_names).to_numpy()
            tz[good] = mapped[good].to_numpy()
            bad = int((mapped.notna() & ~mapped.isin(valid_names)).sum())
            if bad:
                self.notes_.append(f"{bad} customers have an unknown time zone: UTC is used for them")
        else:
            self.notes_.append("no customer time zones: every customer's local time is taken as UTC")
        self.timezones_ = tz.astype(str)

    def _customer_rows(self, ids: pd.Series) -> np.ndarray:
        """Rows of ids that are all known: each distinct id looked up once (`features.codes`);
        hashing every row's id string was a large share of a fit's time at a million customers."""
        return positions(pd.Index(self.customer_ids_), ids)

    def _active_hours(self, events, messages) -> pd.DataFrame:
        """One row per customer and clock hour with activity in any channel (message-induced events
        removed): customer row, local slot, segment channel group."""
        if events is None or len(events) == 0:
            return pd.DataFrame(
                {"row": np.array([], dtype=np.int64), "slot": np.array([], dtype=np.int64), "group": []}
            )
        ev = events[[c.CUSTOMER_ID, c.TS, c.CHANNEL]].dropna(subset=[c.CUSTOMER_ID, c.TS])
        ev = ev.assign(**{c.CUSTOMER_ID: ev[c.CUSTOMER_ID].astype(str)})
        if messages is not None and len(messages) and self.induced_minutes > 0:
            ev = self._drop_induced(ev, messages)
        ev = ev.assign(_hour=ev[c.TS].dt.floor("h")).drop_duplicates([c.CUSTOMER_ID, "_hour"])
        group = ev[c.CHANNEL].astype(str).where(ev[c.CHANNEL].isin(SEGMENT_CHANNELS), "other")
        rows = self._customer_rows(ev[c.CUSTOMER_ID])
        slots = local_slots(ev[c.TS], pd.Series(self.timezones_[rows]))
        return pd.DataFrame({"row": rows, "slot": slots, "group": group.to_numpy()})

    def _drop_induced(self, ev: pd.DataFrame, messages: pd.DataFrame) -> pd.DataFrame:
        engaged = pd.concat(
            [
                messages[[c.CUSTOMER_ID, col]].rename(columns={col: "_eng"})
                for col in (c.OPENED_TS, c.CLICKED_TS, c.CONVERTED_TS)
                if col in messages.columns
            ]
        ).dropna()
        if engaged.empty:
            return ev
        engaged = engaged.assign(**{c.CUSTOMER_ID: engaged[c.CUSTOMER_ID].astype(str)}).sort_values("_eng")
        ordered = ev.sort_values(c.TS).reset_index(drop=True)
        ordered["_ts"] = ordered[c.TS]
        merged = pd.merge_asof(
            ordered, engaged, left_on="_ts", right_on="_eng", by=c.CUSTOMER_ID, direction="backward"
        )
        gap = merged["_ts"] - merged["_eng"]
        induced = (gap.notna() & (gap < pd.Timedelta(minutes=self.induced_minutes))).to_numpy(dtype=bool)
        if induced.any():
            self.notes_.append(
                f"{int(induced.sum()):,} events within {self.induced_minutes:g} min after an open or click "
                "are taken as message-induced and left out of the activity counts"
            )
        return ordered.loc[~induced, [c.CUSTOMER_ID, c.TS, c.CHANNEL]]

    def _fit_activity(self, active: pd.DataFrame) -> np.ndarray:
        """Segments and the weekday distributions; returns the hour-of-day counts per channel group
        (groups × n × 24, groups = SEGMENTS[1:])."""
        n = len(self.customer_ids_)
        rows, slots = active["row"].to_numpy(np.int64), active["slot"].to_numpy(np.int64)
        hour_counts = np.bincount(rows * HOURS + slots % HOURS, minlength=n * HOURS).reshape(n, HOURS)
        day_counts = np.bincount(rows * DAYS + slots // HOURS, minlength=n * DAYS).reshape(n, DAYS)
        self.n_active_ = hour_counts.sum(axis=1)
        # the customer-modal-hour rule: the most frequent local activity hour (ties: the hour the
        # population is busier at; -1 without activity: the global hour is used)
        population = hour_counts.sum(axis=0).astype(np.float64)
        self.population_modal_hour_ = int(np.argmax(population)) if population.sum() > 0 else -1
        tie_break = 0.5 * population / max(population.max(), 1.0)  # less than one active hour
        modal = np.argmax(hour_counts + tie_break[None, :], axis=1)
        self.modal_hour_ = np.where(self.n_active_ > 0, modal, -1).astype(np.int64)

        # segment: the channel group with most active hours; none without activity
        groups = len(SEGMENTS) - 1
        group_code = pd.Categorical(active["group"], categories=SEGMENTS[1:]).codes.astype(np.int64)
        group_counts = np.bincount(rows * groups + group_code, minlength=n * groups).reshape(n, groups)
        self.segment_ = np.where(self.n_active_ > 0, 1 + np.argmax(group_counts, axis=1), 0).astype(np.int64)
        self.segment_day_prob_, self.day_prob_ = weekday_distributions(day_counts, self.segment_)
        cell = (group_code * n + rows) * HOURS + slots % HOURS
        return np.bincount(cell, minlength=groups * n * HOURS).reshape(groups, n, HOURS).astype(np.float64)

    def _response_data(self, messages: pd.DataFrame | None, as_of: pd.Timestamp) -> dict | None:
        n = len(self.customer_ids_)
        self.n_messages_ = np.zeros(n, dtype=np.int64)
        self.channels_ = np.array([], dtype=str)
        self.global_best_hour_ = self.population_modal_hour_
        self.open_window_days_ = float(self.open_window_days or 0.0)
        if messages is None or len(messages) == 0:
            self.notes_.append(
                "no messages: send times are learned from activity times alone; scores are the probability "
                "of the customer being active in the slot (a propensity, not a calibrated engagement "
                "probability), equal for all channels"
            )
            return None
        self.channels_ = np.sort(messages[c.CHANNEL].dropna().astype(str).unique())
        self.n_messages_ = np.bincount(self._customer_rows(messages[c.CUSTOMER_ID].dropna()), minlength=n)
        if self.open_window_days is None:
            engaged_at = engagement_ts(messages)  # only what was known by as_of
            self.open_window_days_ = outcome_window_days(
                messages[c.SENT_TS], engaged_at.where(engaged_at < as_of), 1.0
            )
        cutoff = as_of - pd.Timedelta(days=self.open_window_days_)
        msgs = messages.loc[messages[c.SENT_TS] < cutoff].dropna(subset=[c.CUSTOMER_ID, c.SENT_TS, c.CHANNEL])
        if len(msgs) == 0:
            self.notes_.append("no message outcomes observed yet: send times are learned from activity alone")
            if self.global_best_hour_ < 0:  # nothing but sends: the hour most of them go out
                sent = messages.dropna(subset=[c.CUSTOMER_ID, c.SENT_TS])
                rows = self._customer_rows(sent[c.CUSTOMER_ID])
                hours = local_slots(sent[c.SENT_TS], pd.Series(self.timezones_[rows])) % HOURS
                self.global_best_hour_ = int(np.argmax(np.bincount(hours, minlength=HOURS)))
            return None
        rows = self._customer_rows(msgs[c.CUSTOMER_ID])
        slots = local_slots(msgs[c.SENT_TS], pd.Series(self.timezones_[rows]))
        y = engaged_before(msgs, as_of).astype(np.float64)
        self.global_best_hour_ = self._best_send_hour(slots % HOURS, y)
        return {
            "row": rows,
            "channel": pd.Categorical(msgs[c.CHANNEL].astype(str), categories=self.channels_).codes.astype(
                np.int64
            ),
            "hour": slots % HOURS,
            "day": slots // HOURS,
            "y": y,
        }

    def _best_send_hour(self, hours: np.ndarray, y: np.ndarray) -> int:
        """The global-best-hour rule: the local send hour with the highest engagement rate, each
        hour's rate shrunk towards the overall rate with an empirical-Bayes prior (an hour with
        few sends stays near the average). Ties (e.g. no difference between hours beyond noise):
        the population's busiest activity hour, then the hour most sends went out."""
        sent = np.bincount(hours, minlength=HOURS).astype(np.float64)
        engaged = np.bincount(hours, weights=y, minlength=HOURS)
        overall = float(engaged.sum() / max(sent.sum(), 1.0))
        counts = np.column_stack([engaged, sent - engaged])
        prior = np.tile([overall, 1.0 - overall], (HOURS, 1))
        strength = dirichlet_prior_strength(counts, prior)
        rate = shrink_counts(counts, prior, strength)[:, 0]
        tie = sent / max(sent.max(), 1.0)
        if self.population_modal_hour_ >= 0:
            tie = tie + 2.0 * (np.arange(HOURS) == self.population_modal_hour_)
        best = np.flatnonzero(rate >= rate.max() - 1e-12)
        return int(best[np.argmax(tie[best])])

    # ------------------------------------------------------------------------------------------
    # scoring
    def _rows(self, customer_ids) -> tuple[pd.Series, np.ndarray, np.ndarray]:
        ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str)
        if len(ids) <= 256:  # a request: the dict lookup is microseconds
            rows = index_rows(self.customer_index_, ids.to_numpy())
        else:  # a batch: one hash lookup in an index of the customers, kept with them
            if getattr(self, "_id_lookup", (None,))[0] is not self.customer_ids_:
                self._id_lookup = (self.customer_ids_, pd.Index(self.customer_ids_))
            rows = self._id_lookup[1].get_indexer(ids).astype(np.int64)
        return ids, rows, rows < 0

    def _row_codes(self, customer_ids) -> tuple[np.ndarray, np.ndarray]:
        """`_rows` without the ids: (rows, unknown). A request's ids, already strings, skip the
        Series `_rows` builds (a few hundred µs for one id)."""
        ids = np.asarray(customer_ids, dtype=object)
        if len(ids) <= 256 and all(type(cid) is str for cid in ids.tolist()):
            rows = index_rows(self.customer_index_, ids)
            return rows, rows < 0
        _, rows, unknown = self._rows(customer_ids)
        return rows, unknown

    def _channel_code(self, channel: str | None) -> int:
        """Index of `channel`, or -1 for a channel without message history (channel-agnostic grid)."""
        if channel is None:
            return -1
        # a dict of the channels, rebuilt when `channels_` is replaced (a request asks per grid)
        kept = self.__dict__.get("_channel_codes_kept")
        if kept is None or kept[0] is not self.channels_:
            codes: dict[str, int] = {}
            for i, name in enumerate(np.asarray(self.channels_).tolist()):
                codes.setdefault(str(name), i)  # the first of equal names, as before
            kept = (self.channels_, codes)
            self._channel_codes_kept = kept
        return kept[1].get(str(channel), -1)

    def _live_hours(self, customer_ids, live_activity: pd.DataFrame | None) -> np.ndarray | None:
        """Opens and clicks after `as_of` per row of `customer_ids` and local hour (n × 24), or None."""
        if live_activity is None or not len(live_activity):
            return None
        live = live_activity.loc[
            (live_activity["kind"] == ENGAGED) & (live_activity[c.TS] >= self.as_of_), [c.CUSTOMER_ID, c.TS]
        ]
        # active hours, as the fit counts them: one per customer and clock hour (an open and the
        # click that follows it are one)
        live = live.assign(**{c.CUSTOMER_ID: live[c.CUSTOMER_ID].astype(str), c.TS: live[c.TS].dt.floor("h")})
        live = live.drop_duplicates()
        ids = np.asarray(pd.Series(np.asarray(customer_ids, dtype=object)).astype(str))
        unique, inverse = np.unique(ids, return_inverse=True)
        pos = pd.Index(unique).get_indexer(live[c.CUSTOMER_ID].astype(str))
        live = live.loc[pos >= 0]
        if live.empty:
            return None
        pos = pos[pos >= 0]
        zones = pd.Series(self.timezone_of(unique)[pos])
        hours = local_slots(live[c.TS].reset_index(drop=True), zones) % HOURS
        counts = np.zeros((len(unique), HOURS))
        np.add.at(counts, (pos, hours), 1.0)
        return counts[inverse]

    def score_grid(
        self, customer_ids, channel: str | None, live_activity: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Engagement probability (a propensity without messages), customers × 168 local slots.

        Unknown customers get their segment-free prior (the `none` segment's profile weights, the
        population's weekday pattern). A channel without message history gets the average level.
        In a rule mode (`serve`), each weekday keeps the model's mean level over its hours and the
        rule's hour is its best, falling off with the distance from it (`_RULE_FALLOFF`).
        """
        live = self._live_hours(customer_ids, live_activity)
        grid = self._model_grid(customer_ids, channel, live)
        if self.serve == "model":
            return grid
        level = grid.reshape(len(grid), DAYS, HOURS).mean(axis=2)
        hours = self.rule_hours(customer_ids)
        if live is not None and self.serve == "customer_modal_hour":
            _, rows, unknown = self._rows(customer_ids)
            no_activity = unknown.copy()
            no_activity[~unknown] = self.modal_hour_[rows[~unknown]] < 0
            engaged = no_activity & (live.sum(axis=1) > 0)
            hours[engaged] = np.argmax(live[engaged], axis=1)
        distance = circular_distance(np.arange(HOURS)[None, :], hours[:, None])
        return (level[:, :, None] * (1.0 - _RULE_FALLOFF * distance[:, None, :])).reshape(len(grid), SLOTS)

    def rule_hours(self, customer_ids, mode: str | None = None) -> np.ndarray:
        """The local hour a rule picks per customer (`mode`, default `serve`): the customer's most
        frequent activity hour ("customer_modal_hour"; the global hour for customers without
        activity or unknown) or the same hour for everyone ("global_best_hour")."""
        mode = self.serve if mode is None else mode
        _check_serve(mode)
        if mode == "model":
            raise ValueError("rule_hours: the model has no single hour; pass a rule mode")
        if getattr(self, "modal_hour_", None) is None:
            raise ValueError("this send-time model was saved before rule modes (format < 3): retrain")
        _, rows, unknown = self._rows(customer_ids)
        hours = np.full(len(rows), self.global_best_hour_, dtype=np.int64)
        if mode == "customer_modal_hour":
            modal = self.modal_hour_[rows[~unknown]]
            hours[~unknown] = np.where(modal >= 0, modal, self.global_best_hour_)
        return hours

    def _model_grid(self, customer_ids, channel: str | None, live: np.ndarray | None = None) -> np.ndarray:
        """The model's grid (see `score_grid`), whatever `serve` says; `live`: `_live_hours`."""
        rows, unknown = self._row_codes(customer_ids)
        known = ~unknown
        if len(rows) == 1 and known[0]:
            # a request's known customer: their posterior as the tile below would hold it
            posterior = self.posterior_[rows].astype(np.result_type(self.segment_weights_))
        else:
            posterior = np.tile(self.segment_weights_[0], (len(rows), 1))
            posterior[known] = self.posterior_[rows[known]]
        with_live = None if live is None else np.flatnonzero(live.sum(axis=1) > 0)
        if with_live is not None and len(with_live) and getattr(self, "background_", None) is not None:
            prior_posterior = posterior[with_live].astype(np.float64)
            # the E-step's update by active hours: times P(hour | profile), renormalised
            mixture = self._activity_mixture()
            log_lik = np.log(
                np.maximum(mixture / mixture.sum(axis=1, keepdims=True), 1e-300)
            )  # profiles × 24
            # the posterior is kept in float32: a weight below its smallest normal number was stored
            # as 0 but is not impossible (enough new hours must be able to move it)
            floor = float(np.finfo(np.float32).tiny)
            log_post = np.log(np.maximum(prior_posterior, floor)) + live[with_live] @ log_lik.T
            log_post -= log_post.max(axis=1, keepdims=True)
            updated = np.exp(log_post)
            posterior[with_live] = updated / updated.sum(axis=1, keepdims=True)
        else:
            with_live = None
        ch = self._channel_code(channel)
        level = np.full(len(rows), self.alpha_[ch] if ch >= 0 else self.base_logit_)
        day_term = self.coef_[2] * self._log_day(rows, unknown)
        if known.any():
            day_term[known] += self.day_residual_[rows[known]]
            if ch >= 0:
                level[known] += self.level_[rows[known], ch]
        if self.hour_prob_ is not None:  # activity only (see the module docstring)
            hour_prob = np.tile(self.segment_weights_[0] @ self._activity_mixture(), (len(rows), 1))
            hour_prob[known] = self.hour_prob_[rows[known]]
            if with_live is not None:
                hour_prob[with_live] = self._hour_prob_with_live(
                    hour_prob[with_live],
                    prior_posterior,
                    posterior[with_live],
                    rows[with_live],
                    live[with_live],
                )
            window = int(self.activity_window_hours)
            if window > 0:  # activity within `window` hours either side, per hour of the window
                hour_prob = sum(np.roll(hour_prob, shift, axis=1) for shift in range(-window, window + 1))
                hour_prob /= 2 * window + 1
            hour_term = np.clip(
                np.log(np.maximum(HOURS * hour_prob, 1e-300)), -MAX_LOG_DENSITY, MAX_LOG_DENSITY
            )
            logit = level[:, None, None] + day_term[:, :, None] + hour_term[:, None, :]  # n × 7 × 24
            logit += _TIE_BREAK * (logit @ _TIE_KERNEL.T)
            return _sigmoid(logit).reshape(len(rows), SLOTS)
        half_lift = self._half_lift()  # profiles × 24
        channel_term = self.channel_residual_[ch].reshape(DAYS, HOURS) if ch >= 0 else 0.0
        grid = np.empty((len(rows), SLOTS))
        for lo in range(0, len(rows), _SCORE_CHUNK):
            hi = min(lo + _SCORE_CHUNK, len(rows))
            static = level[lo:hi, None, None] + day_term[lo:hi, :, None] + channel_term  # n × 7 × 24
            # sigmoid(x) = 0.5 (1 + tanh(x / 2)), in place on the n × profiles × 7 × 24 block;
            # halving is exact, so halving the parts and the sum gives the same numbers
            tanh = (0.5 * static)[:, None, :, :] + half_lift[None, :, None, :]
            np.tanh(tanh, out=tanh)
            tanh += 1.0
            day_rows = 0.5 * np.einsum("nk,nkdh->ndh", posterior[lo:hi], tanh)
            # hours far from every habit bump score the same (its tails vanish); among them the
            # one nearer the customer's better hours wins (quiet hours: the nearest allowed hour):
            # a tiny share of the day's row smoothed over neighbouring hours
            day_rows += _TIE_BREAK * (day_rows @ _TIE_KERNEL.T)
            grid[lo:hi] = day_rows.reshape(hi - lo, SLOTS)
        return grid

    def _half_lift(self) -> np.ndarray:
        """Half of `_profile_lift`, kept while the parameters it is made of stay equal: a request
        asks for it once per grid (a dozen numpy calls), the fit changes them between steps."""
        # kept while the parameters are the same arrays (fit and load replace them, never change
        # them in place); they are made read-only when kept, so a change in place would fail
        # loudly instead of leaving a stale lift
        parts = (self.coef_, self.profiles_, self.profile_residual_)
        kept = self.__dict__.get("_half_lift_kept")
        if kept is not None and all(a is b for a, b in zip(kept[0], parts, strict=True)):
            return kept[1]
        half_lift = 0.5 * self._profile_lift()
        for a in parts:
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
        self._half_lift_kept = (parts, half_lift)
        return half_lift

    def _hour_prob_with_live(self, hour_prob, prior_posterior, posterior, rows, live) -> np.ndarray:
        """The activity-only hour distribution with live active hours added: the fitted counts
        (recovered from the shrunk histogram (counts + s prior) / (n + s)) plus the live ones,
        shrunk with the same strength s towards the posterior's predictive after the live hours."""
        mixture = self._activity_mixture()
        predictive = posterior @ mixture
        strength = getattr(self, "activity_strength_", None)
        if strength is None or not np.isfinite(strength):  # no customer differs from the mixture
            return predictive
        n = np.where(rows >= 0, self.n_active_[np.maximum(rows, 0)], 0).astype(np.float64)[:, None]
        counts = np.maximum(hour_prob * (n + strength) - strength * (prior_posterior @ mixture), 0.0)
        counts[rows < 0] = 0.0
        return (counts + live + strength * predictive) / (n + live.sum(axis=1, keepdims=True) + strength)

    def scores(
        self, customer_id, channel: str | None, live_activity: pd.DataFrame | None = None
    ) -> np.ndarray:
        """The 168 slot scores of one customer (index = local weekday * 24 + hour)."""
        return self.score_grid([customer_id], channel, live_activity)[0]

    def timezone_of(self, customer_ids) -> np.ndarray:
        _, rows, unknown = self._rows(customer_ids)
        tz = np.full(len(rows), "UTC", dtype=object)
        tz[~unknown] = self.timezones_[rows[~unknown]]
        return tz.astype(str)

    def fallback(self, customer_ids, live_activity: pd.DataFrame | None = None) -> np.ndarray:
        """True where the customer has fewer than `min_history` messages and active hours (opens
        and clicks since `as_of` in `live_activity` count as active hours): their grid is (nearly)
        their segment's."""
        _, rows, unknown = self._rows(customer_ids)
        messages, active = np.zeros(len(rows)), np.zeros(len(rows))
        known = rows[~unknown]
        messages[~unknown] = self.n_messages_[known]
        active[~unknown] = self.n_active_[known]
        live = self._live_hours(customer_ids, live_activity)
        if live is not None:
            active += live.sum(axis=1)
        return (messages < self.min_history) & (active < self.min_history)

    def best_slot(
        self,
        customer_ids,
        channel: str | None,
        quiet_hours: tuple[int, int] | None = None,
        live_activity: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """The best local slot per customer (outside `quiet_hours` if given).

        Columns: customer_id, channel, timezone, best_weekday (0 = Monday), best_hour_local (0-23),
        score, fallback. Ties go to the earliest slot of the week.
        """
        ids, _, _ = self._rows(customer_ids)
        best, score, _ = self._scan(ids, channel, quiet_hours, live_activity)
        return self._slot_frame(ids, channel, best, score, live_activity)

    def _slot_frame(self, ids: pd.Series, channel, best, score, live_activity) -> pd.DataFrame:
        """`best_slot`'s table from the best slots and their scores."""
        return pd.DataFrame(
            {
                c.CUSTOMER_ID: ids.to_numpy(),
                c.CHANNEL: pd.Series([channel] * len(ids), dtype="str"),
                c.TIMEZONE: self.timezone_of(ids),
                "best_weekday": (best // HOURS).astype(np.int64),
                "best_hour_local": (best % HOURS).astype(np.int64),
                c.SCORE: score,
                "fallback": self.fallback(ids, live_activity),
            }
        )

    def next_send_times(
        self,
        customer_ids,
        channel: str | None,
        after: pd.Timestamp,
        quiet_hours: tuple[int, int] | None = DEFAULT_QUIET_HOURS,
        horizon_hours: int = SLOTS,
        live_activity: pd.DataFrame | None = None,
    ) -> pd.Series:
        """The best moment at or after `after` and before `after + horizon_hours`, per customer (UTC).

        Candidates are the starts of the customer's local clock hours from `after` on (the current
        hour counts from `after` itself), stepped in absolute time, so a local hour skipped by
        daylight saving never appears and a repeated one appears twice (the earlier wins a tie).
        Candidates inside quiet hours (local) are left out. A naive `after` is taken as UTC.
        """
        ids, _, _ = self._rows(customer_ids)
        _, _, out = self._scan(
            ids, channel, quiet_hours, live_activity, _utc(after, horizon_hours), horizon_hours
        )
        return pd.Series(pd.DatetimeIndex(out).tz_localize("UTC"), index=ids.to_numpy(), name="next_send_utc")

    def _scan(
        self, ids: pd.Series, channel, quiet_hours, live_activity, after=None, horizon_hours: int = SLOTS
    ):
        """(best slot, its score, next moment or None without `after`) of each customer, from one
        grid per block: a grid of every customer at once is 1.3 GB per million customers."""
        best = np.empty(len(ids), dtype=np.int64)
        score = np.empty(len(ids))
        nxt = None if after is None else np.empty(len(ids), dtype="datetime64[us]")
        for lo in range(0, len(ids), _BEST_SLOT_CHUNK):
            block = ids.iloc[lo : lo + _BEST_SLOT_CHUNK]
            grid = self.score_grid(block, channel, live_activity)
            best[lo : lo + len(block)], score[lo : lo + len(block)] = _best_in_grid(grid, quiet_hours)
            if nxt is not None:
                zones = self.timezone_of(block)
                nxt[lo : lo + len(block)] = _next_in_grid(grid, zones, after, quiet_hours, horizon_hours)
        return best, score, nxt

    def next_send_time(
        self,
        customer_id,
        channel: str | None,
        after: pd.Timestamp,
        quiet_hours: tuple[int, int] | None = DEFAULT_QUIET_HOURS,
        horizon_hours: int = SLOTS,
        live_activity: pd.DataFrame | None = None,
    ) -> pd.Timestamp:
        """The best send moment (UTC) at or after `after`, outside quiet hours, within the horizon."""
        return self.next_send_times(
            [customer_id], channel, after, quiet_hours, horizon_hours, live_activity
        ).iloc[0]

    def answer_one(
        self,
        customer_id,
        channel: str | None,
        after: pd.Timestamp | None,
        quiet_hours: tuple[int, int] | None = DEFAULT_QUIET_HOURS,
        live_activity: pd.DataFrame | None = None,
    ) -> dict:
        """One customer's `best_slot` row, `next_send_time` after `after` (None when `after` is
        None) and `scores`, from one grid (a request of the service).

        Keys: timezone, best_weekday, best_hour_local, score, fallback, next_send_utc, scores."""
        ids, _, _ = self._rows([customer_id])
        grid = self.score_grid(ids, channel, live_activity)
        best, score = _best_in_grid(grid, quiet_hours)
        zones = self.timezone_of(ids)
        nxt = None
        if after is not None:
            moment = _next_in_grid(grid, zones, _utc(after, SLOTS), quiet_hours, SLOTS)[0]
            nxt = pd.Timestamp(moment).tz_localize("UTC")
        return {
            c.TIMEZONE: str(zones[0]),
            "best_weekday": int(best[0] // HOURS),
            "best_hour_local": int(best[0] % HOURS),
            c.SCORE: float(score[0]),
            "fallback": bool(self.fallback(ids, live_activity)[0]),
            "next_send_utc": nxt,
            "scores": grid[0],
        }

    def send_plan(
        self,
        customer_ids,
        channel: str | None,
        after: pd.Timestamp,
        quiet_hours: tuple[int, int] | None = DEFAULT_QUIET_HOURS,
        horizon_hours: int = SLOTS,
        live_activity: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """The batch table of `omni send-time`: the best slot outside quiet hours and the next moment.

        Columns: customer_id, channel, timezone, best_hour_local, best_weekday, next_send_utc, fallback.
        `live_activity`: opens and clicks since training (see the module docstring).
        """
        ids, _, _ = self._rows(customer_ids)
        slot, score, nxt = self._scan(
            ids, channel, quiet_hours, live_activity, _utc(after, horizon_hours), horizon_hours
        )  # the best slot and the next moment from one grid per block
        best = self._slot_frame(ids, channel, slot, score, live_activity)
        best["next_send_utc"] = pd.DatetimeIndex(nxt).tz_localize("UTC").to_numpy()
        columns = [c.CUSTOMER_ID, c.CHANNEL, c.TIMEZONE, "best_hour_local", "best_weekday", "next_send_utc"]
        return best[[*columns, "fallback"]]

    # ------------------------------------------------------------------------------------------
    # persistence
    _ARRAYS: tuple[str, ...] = (
        "customer_ids_", "timezones_", "segment_", "n_active_", "n_messages_", "day_prob_",
        "segment_day_prob_", "channels_", "profiles_", "segment_weights_", "posterior_", "coef_",
        "alpha_", "profile_residual_", "level_", "day_residual_", "channel_residual_",
    )  # fmt: skip
    # format 2: the activity observation model (not needed to score; absent from format 1)
    _ACTIVITY_ARRAYS: tuple[str, ...] = (
        "profile_centres_", "profile_widths_", "background_", "activity_offsets_",
    )  # fmt: skip
    # format 3: the rules (absent before: such a model serves as "model" only), and the activity-only
    # hour distributions (absent with messages)
    _RULE_ARRAYS: tuple[str, ...] = ("modal_hour_",)
    _OPTIONAL_ARRAYS: tuple[str, ...] = ("hour_prob_",)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = self._ARRAYS + self._ACTIVITY_ARRAYS + self._RULE_ARRAYS
        arrays = {name.rstrip("_"): getattr(self, name) for name in names}
        arrays |= {
            n.rstrip("_"): getattr(self, n) for n in self._OPTIONAL_ARRAYS if getattr(self, n) is not None
        }
        for name in ("customer_ids", "timezones", "channels"):
            arrays[name] = np.asarray(arrays[name]).astype(str)  # unicode arrays, no objects
        np.savez_compressed(folder / "send_time.npz", **arrays)
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "as_of": self.as_of_.isoformat(),
            "n_iter": self.n_iter_,
            "background_share": self.background_share_,
            "profile_width": self.profile_width_,
            "open_window_days": self.open_window_days_,
            "global_best_hour": int(self.global_best_hour_),
            "activity_strength": getattr(self, "activity_strength_", None),
            "segments": list(SEGMENTS),
            "features": list(FEATURES),
            "notes": self.notes_,
        }
        (folder / "send_time.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SendTimeModel:
        folder = Path(folder)
        meta = read_model_meta(folder, "send_time.json", "send-time model", _READABLE_FORMATS)
        model = cls(**meta["params"])
        with np.load(folder / "send_time.npz", allow_pickle=False) as arrays:
            for name in cls._ARRAYS:
                setattr(model, name, arrays[name.rstrip("_")])
            for name in cls._ACTIVITY_ARRAYS + cls._RULE_ARRAYS + cls._OPTIONAL_ARRAYS:
                setattr(model, name, arrays[name.rstrip("_")] if name.rstrip("_") in arrays else None)
        model.background_share_ = float(meta.get("background_share", float("nan")))
        widths = model.profile_widths_
        model.profile_width_ = float(
            meta.get("profile_width", widths[0] if widths is not None and len(widths) else float("nan"))
        )
        model.open_window_days_ = float(meta.get("open_window_days", model.open_window_days or 0.0))
        model.global_best_hour_ = int(meta.get("global_best_hour", -1))
        model.activity_strength_ = meta.get("activity_strength")
        _check_serve(model.serve)
        if model.serve != "model" and model.modal_hour_ is None:
            raise ValueError(f"send-time folder serves {model.serve!r} but holds no rule arrays: retrain")
        model.customer_index_ = {cid: i for i, cid in enumerate(model.customer_ids_)}
        model.as_of_ = pd.Timestamp(meta["as_of"])
        model.n_iter_ = int(meta["n_iter"])
        model.notes_ = list(meta["notes"])
        return model


def engagement_ts(messages: pd.DataFrame) -> pd.Series:
    """When the message was first engaged with: the earlier of open and click (NaT if neither)."""
    cols = [col for col in (c.OPENED_TS, c.CLICKED_TS) if col in messages.columns]
    if not cols:
        return pd.Series(pd.NaT, index=messages.index, dtype="datetime64[us, UTC]")
    return messages[cols].min(axis=1)


def engaged_before(messages: pd.DataFrame, as_of: pd.Timestamp) -> np.ndarray:
    """True where the message was opened or clicked before `as_of` (later opens are not known yet)."""
    engaged = np.zeros(len(messages), dtype=bool)
    for col in (c.OPENED_TS, c.CLICKED_TS):
        if col in messages.columns:
            engaged |= (messages[col].notna() & (messages[col] < as_of)).to_numpy(dtype=bool)
    return engaged


def _best_in_grid(grid: np.ndarray, quiet_hours: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best slot outside `quiet_hours` (ties: the earliest of the week) and its score."""
    quiet = is_quiet(np.arange(SLOTS) % HOURS, quiet_hours)
    masked = np.where(quiet[None, :], -np.inf, grid)
    best = np.argmax(masked, axis=1)
    return best, masked[np.arange(len(masked)), best]


def _next_in_grid(grid: np.ndarray, zones: np.ndarray, after: pd.Timestamp, quiet_hours, horizon_hours: int):
    """Each row's best local hour start from `after` (UTC) on, within the horizon, outside quiet
    hours (ties: the earliest), as datetime64[us] in UTC (see `SendTimeModel.next_send_times`)."""
    out = np.empty(len(grid), dtype="datetime64[us]")
    for zone in np.unique(zones):
        sel = np.flatnonzero(zones == zone)
        times, slots, hours = local_hour_starts(after, zone, horizon_hours)
        allowed = ~is_quiet(hours, quiet_hours)
        values = grid[np.ix_(sel, slots)]
        values[:, ~allowed] = -np.inf
        out[sel] = times[np.argmax(values, axis=1)]
    return out


def _utc(after, horizon_hours: int) -> pd.Timestamp:
    """`after` in UTC (a naive one is taken as UTC), with the horizon checked."""
    if horizon_hours < 1:
        raise ValueError("horizon_hours must be at least 1")
    after = pd.Timestamp(after)
    return after.tz_localize("UTC") if after.tzinfo is None else after.tz_convert("UTC")
