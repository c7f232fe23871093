"""Best send time per customer and channel: a 168-slot weekly grid in the customer's local time.

A slot is one hour of the local week, `slot = weekday * 24 + hour` (weekday 0 = Monday), in the
customer's IANA time zone with real daylight-saving rules (UTC when the zone is unknown). The
grid holds, for a message sent on channel `ch` during that local hour, the estimated probability
that it is engaged with (opened or clicked).

Why a mixture. A person's hour-of-day pattern is peaked somewhere (before work, lunch, evening),
not "the population's pattern plus noise". Shrinking a histogram of five active hours towards the
population's average histogram keeps the population's modes; asking "which peaked profile explains
these five hours best, and how sure are we" does not. So the hour part is an empirical-Bayes
mixture: K habit profiles (a circular Gaussian bump at each of `n_centres` centres per width, plus
a flat one) with prior weights per segment learned by EM; each customer's habit is the posterior
over profiles given their activity hours and their message outcomes. Little data leaves the
posterior at the segment's weights, a lot of data makes it the customer's own; data volume weighs
itself in.

What activity says about the habit (the observation model, all of it learned by EM):

    P(active in local hour h | profile k, channel group g)
        ∝ ((1 - beta) phi_k(h) + beta b(h)) * exp(a_g(h))

- phi_k is the habit bump; beta b(h) is off-habit activity (errands, the odd late visit), a
  population background whose share beta and shape b are re-estimated from the expected
  off-habit counts. Without it one visit far from a person's habit would overrule ten near it.
- a_g(h) are channel-group hour offsets (store, other; web and app, open around the clock, are
  the reference at 0, or the busiest group without online activity): a store is only open 8-22,
  so a store visit at 8:00 says "8:00 or earlier", while a web visit at 6:00 says 6:00. The
  offsets are Newton steps on the expected log-likelihood (ridge `OFFSET_RIDGE`); every channel
  informs one shared habit.
- Activity is fitted first on its own (`ACTIVITY_ITER` cheap iterations), so the population's
  habit weights are already in place as the prior of customers without activity when the
  (weak) evidence of message outcomes joins in.

Engagement of a message sent on channel ch in local slot (d, h) under profile k:

    logit p_k = alpha[ch] + u[i, ch]                                    level (customer's own, shrunk)
              + b_rel * phi_k(h) / max phi_k + b_log * log(24 phi_k(h))  + delta_k(h)    habit
              + b_day * log(7 q_i(d)) + v[i, d]                           weekday
              + w[ch, d, h]                                               channel timing

and the grid is the posterior mean sum_k post[i, k] * p_k. Pieces:

- Activity: every event in any channel (store, web, app, ...) says when the customer is around.
  Events are reduced to *active hours* (one per customer and clock hour), and events within
  `induced_minutes` after one of the customer's own opens or clicks are dropped: our message
  caused them, and they would pull the grid towards our past send times.
- Weekday distribution q_i: the weekend share and the split within weekdays and within the weekend
  are each shrunk towards the segment's with a Dirichlet prior whose strength is estimated by the
  method of moments on the Dirichlet-multinomial (`dirichlet_prior_strength`).
- Responses: alpha, b_rel, b_log, b_day are fitted by Newton steps on the expected log-likelihood
  inside EM's M-step. The layers delta (per profile and hour), u (customer × channel), v
  (customer × weekday) and w (channel × slot) are one-step empirical-Bayes Newton updates
  r / (info + tau) with r = sum(y - p), info = sum p(1 - p) per cell and tau = 1 / sigma^2
  estimated from the spread of the cells (`eb_newton_step`): a cell with little data stays at the
  layer below.
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

The habit bump's width is learned: a generalised EM step maximises the expected activity
log-likelihood over the width (`profile_width_`); nothing about its shape is taken from a
generator.

Rules. The model is validated against two simple rules (`training.channel_training` serves
whichever wins on a validation window): the customer's most frequent local activity hour, and one
hour for everyone (the send hour with the best shrunk engagement rate; without messages the
population's busiest hour). Both are fitted with the model; `serve` says which one the grid
follows.

The model saves to a folder (npz + json, read with `allow_pickle=False`), never pickle.
"""

from __future__ import annotations

import json
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator

from features import columns as c
from features.codes import positions
from features.customer_features import local_time_parts
from features.io import rows_before
from models.base import CannotTrain, index_rows, read_model_meta
from models.engagement.em_kernels import (
    add_message_log_likelihood,
    customer_starts,
    engagement_sums,
    info_dot,
)

FORMAT_VERSION = 3
# format 1 (learned profile shapes) and 2 (no rule modes: always served as the model) score the same way
_READABLE_FORMATS = (1, 2, 3)
HOURS = 24
DAYS = 7
SLOTS = DAYS * HOURS
DEFAULT_QUIET_HOURS: tuple[int, int] = (21, 8)  # no sends from 21:00 to 07:59 local
SEGMENTS: tuple[str, ...] = ("none", "store", "web", "app", "other")
# event channels that name a segment of their own; every other channel counts as "other"
SEGMENT_CHANNELS: tuple[str, ...] = ("store", "web", "app")
# channel groups open around the clock: their activity hours are the habit's own (hour offsets 0);
# the others (a store's opening hours, a call centre's) get learned offsets against them
OPEN_ALL_HOURS: tuple[str, ...] = ("web", "app")
FEATURES: tuple[str, ...] = ("rel_hour", "log_hour", "log_day")
# Where EM starts the coefficients. Without messages there is nothing to learn them from: the grid
# is then log(24 p(h)) + log_day * log(7 q(d)) with log_day = 1, the log-probability of activity in
# the slot (rel_hour only shapes grids of models saved before format 3 that hold no `hour_prob_`).
DEFAULT_COEF: dict[str, float] = {"rel_hour": 1.0, "log_hour": 0.0, "log_day": 1.0}
DEFAULT_BASE_RATE = 0.1
# share of activity first assumed to be off-habit (background); EM re-estimates it
INITIAL_BACKGROUND_SHARE = 0.1
# The habit bump's width (Gaussian sd, hours) is learned from activity by maximum likelihood,
# within these bounds; EM starts from INITIAL_WIDTH, which also stays where there is no activity
# to learn it from (messages only).
WIDTH_BOUNDS: tuple[float, float] = (0.25, 8.0)
INITIAL_WIDTH = 2.0
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
# ridge on the channel-group hour offsets (log scale): a group's hour with no data stays near 0
OFFSET_RIDGE = 1.0
ACTIVITY_ITER = 15  # EM iterations on activity alone before message outcomes join in
_OFFSET_STEPS = 3  # Newton steps on the offsets per EM iteration
_MAX_OFFSET_STEP = 2.0  # largest change of an offset in one Newton step (log scale)
# pseudo customers that pull a small segment's profile weights towards the population's
SEGMENT_PRIOR_COUNT = 20.0
_MAX_LOG_DENSITY = 4.0  # |log density ratio| is clipped here: an empty hour is not infinitely bad
_MIN_SIGMA2, _MAX_SIGMA2 = 1e-4, 4.0
_SCORE_CHUNK = 1024  # customers per block when building grids (block = chunk × profiles × 168)
_BEST_SLOT_CHUNK = 65_536  # customers per grid when only each one's best slot is kept
_TIE_BREAK = 1e-6  # weight of the smoothed day row that breaks ties between equal hours


def slot_index(weekdays, hours) -> np.ndarray:
    """Slot 0-167 of a local weekday (0 = Monday) and hour."""
    return np.asarray(weekdays, dtype=np.int64) * HOURS + np.asarray(hours, dtype=np.int64)


def local_slots(ts: pd.Series, timezones: pd.Series) -> np.ndarray:
    """Local slot of UTC timestamps, one IANA zone per row (DST exact; missing zone = UTC)."""
    hours, weekdays = local_time_parts(ts.reset_index(drop=True), timezones.reset_index(drop=True))
    return slot_index(weekdays, hours)


def is_quiet(hours, quiet_hours: tuple[int, int] | None) -> np.ndarray:
    """True for local hours inside the quiet window [start, end), which may cross midnight.

    (21, 8) is quiet from 21:00 to 07:59; (1, 5) from 01:00 to 04:59; None or start == end: never.
    """
    hours = np.asarray(hours)
    if quiet_hours is None:
        return np.zeros(hours.shape, dtype=bool)
    start, end = (int(h) for h in quiet_hours)
    if not (0 <= start <= 23 and 0 <= end <= 23):
        raise ValueError(f"quiet hours must be whole hours 0-23, got {quiet_hours}")
    if start == end:
        return np.zeros(hours.shape, dtype=bool)
    if start < end:
        return (hours >= start) & (hours < end)
    return (hours >= start) | (hours < end)  # crosses midnight


def parse_quiet_hours(text: str | None) -> tuple[int, int] | None:
    """'21-8' -> (21, 8); 'none', '' or None -> None (no quiet hours). ValueError otherwise."""
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    parts = text.replace(":00", "").split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"quiet hours must look like 21-8 (local START-END hours) or 'none', got {text!r}")
    quiet = (int(parts[0]), int(parts[1]))
    is_quiet(np.arange(HOURS), quiet)  # validates the range
    return quiet


def valid_timezone(name) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def circular_kernel(bandwidth_hours: float, size: int = HOURS) -> np.ndarray:
    """Circulant smoothing matrix (size × size): Gaussian weights on the circular hour distance."""
    if bandwidth_hours <= 0:
        return np.eye(size)
    idx = np.arange(size)
    dist = np.abs((idx[:, None] - idx[None, :] + size // 2) % size - size // 2)
    weights = np.exp(-0.5 * (dist / bandwidth_hours) ** 2)
    weights[dist > 3 * bandwidth_hours] = 0.0
    return weights / weights.sum(axis=1, keepdims=True)


_TIE_KERNEL = circular_kernel(3.0)


def habit_profiles(n_centres: int, widths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Habit profiles over the local hour (K × 24, rows sum to 1): a circular Gaussian bump for each
    centre ((j + 0.5) * 24 / n_centres) and width, averaged over each clock hour, then one flat
    profile. Returns (profiles, centres, widths); the flat profile has centre NaN, width inf."""
    centres = (np.arange(int(n_centres)) + 0.5) * HOURS / int(n_centres)
    points = np.arange(HOURS)[:, None] + (np.arange(12) + 0.5)[None, :] / 12  # 24 × 12 within-hour points
    rows, cs, ws = [], [], []
    for width in widths:
        for centre in centres:
            dist = np.abs((points - centre + HOURS / 2) % HOURS - HOURS / 2)
            density = np.exp(-0.5 * (dist / float(width)) ** 2).mean(axis=1)
            rows.append(density / density.sum())
            cs.append(centre)
            ws.append(float(width))
    rows.append(np.full(HOURS, 1.0 / HOURS))
    cs.append(np.nan)
    ws.append(np.inf)
    return np.asarray(rows), np.asarray(cs), np.asarray(ws)


def dirichlet_prior_strength(counts: np.ndarray, prior: np.ndarray) -> float:
    """Empirical-Bayes concentration a0 of a Dirichlet prior around `prior` (rows of probabilities).

    Method of moments on the Dirichlet-multinomial: the Pearson statistic of row i has expectation
    (J - 1)(n_i + a0)/(1 + a0). Solving the pooled equation gives a0; rows with fewer than two
    counts carry no information about dispersion and are left out. 0 = no pooling (everyone is
    their own), inf = the data show no individual differences (everyone is their segment).
    """
    n = counts.sum(axis=1)
    keep = n >= 2
    if keep.sum() < 10:
        return float("inf")
    x, n, p = counts[keep], n[keep], np.clip(prior[keep], 1e-9, None)
    df = counts.shape[1] - 1
    pearson = (((x - n[:, None] * p) ** 2) / (n[:, None] * p)).sum() / df
    total, rows = n.sum(), len(n)
    if pearson <= rows:
        return float("inf")
    if pearson >= total:
        return 0.0
    return float((total - pearson) / (pearson - rows))


def shrink_counts(counts: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    """Posterior-mean distributions (counts + a0 prior) / (n + a0); rows without counts = prior."""
    if not np.isfinite(strength):
        return prior.copy()
    n = counts.sum(axis=1, keepdims=True)
    return np.where(n > 0, (counts + strength * prior) / np.maximum(n + strength, 1e-12), prior)


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


def circular_distance(a, b) -> np.ndarray:
    """Hours between local hours on the 24-hour circle (0-12)."""
    return np.abs((np.asarray(a) - np.asarray(b) + HOURS // 2) % HOURS - HOURS // 2)


def eb_newton_step(residual: np.ndarray, info: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrunk log-odds corrections residual / (info + tau), tau = 1/sigma^2 estimated from the cells.

    `residual` = sum(y - p) and `info` = sum p(1 - p) per cell: for a small true offset z,
    residual ≈ info * z + noise of variance info, so E[residual^2] = info + info^2 sigma^2.
    """
    has = info > 0
    if not has.any():
        return np.zeros_like(residual), float("inf")
    sigma2 = ((residual[has] ** 2 - info[has]).sum()) / max((info[has] ** 2).sum(), 1e-12)
    sigma2 = float(np.clip(sigma2, _MIN_SIGMA2, _MAX_SIGMA2))
    tau = 1.0 / sigma2
    return residual / (info + tau), tau


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def _log_likelihood(y: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Bernoulli log-likelihood of y under log-odds eta, elementwise."""
    return -(y * np.logaddexp(0.0, -eta) + (1.0 - y) * np.logaddexp(0.0, eta))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def _newton_direction(r_row, i_row, channel, n_channels, per_message, sums, grad_f, hess_f) -> np.ndarray:
    """Newton direction for (alpha per channel, one coefficient per feature, one for `per_message`)
    of a weighted logistic log-likelihood, from sums over (message, profile) cells.

    With residual = w (y - p) and info = w p (1 - p) per (message, profile) and features f of the
    same shape: `r_row`, `i_row` are the residual and info summed over the profiles (one per
    message), `sums[a]` the sum of info * f_a over the profiles (one per message), `grad_f[a]` the
    sum of residual * f_a and `hess_f[a, b]` that of info * f_a * f_b over all cells.
    `per_message` is one value per message (the same for every profile); alpha enters through
    each message's channel. A channel without messages keeps its value (unit curvature).
    """
    n_feat = len(sums)
    size = n_channels + n_feat + 1
    grad = np.zeros(size)
    hess = np.zeros((size, size))
    grad[:n_channels] = np.bincount(channel, weights=r_row, minlength=n_channels)
    hess[np.arange(n_channels), np.arange(n_channels)] = np.bincount(
        channel, weights=i_row, minlength=n_channels
    )
    sums = [*sums, i_row * per_message]
    for a in range(n_feat + 1):
        j = n_channels + a
        grad[j] = grad_f[a] if a < n_feat else float((r_row * per_message).sum())
        cross = np.bincount(channel, weights=sums[a], minlength=n_channels)
        hess[:n_channels, j] = hess[j, :n_channels] = cross
        for b in range(a, n_feat + 1):
            k = n_channels + b
            if b < n_feat:
                value = hess_f[a, b] if a < n_feat else float((sums[b] * per_message).sum())
            else:
                value = (
                    float((sums[a] * per_message).sum())
                    if a < n_feat
                    else float((i_row * per_message**2).sum())
                )
            hess[j, k] = hess[k, j] = value
    hess += 1e-6 * np.eye(size) + np.diag(np.where(np.diag(hess) <= 0, 1.0, 0.0))
    return np.linalg.solve(hess, grad)


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


class SendTimeModel(BaseEstimator):
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
            engaged_at = engagement_time(messages)  # only what was known by as_of
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

    def _fit_profiles(self, group_counts: np.ndarray, response: dict | None) -> None:
        """EM for the habit-profile mixture; activity background, channel-group hour offsets and
        the engagement model are re-estimated in each M-step. `group_counts`: active hours per
        channel group, customer and local hour (groups × n × 24)."""
        n, n_ch = len(self.customer_ids_), len(self.channels_)
        active = np.flatnonzero(self.n_active_ > 0)
        group_counts = group_counts[:, active]
        kernel = circular_kernel(self.hour_bandwidth)
        learn_width = self.profile_width is None
        self._set_profiles(INITIAL_WIDTH if learn_width else float(self.profile_width))
        n_profiles = len(self.profiles_)
        self.segment_weights_ = np.full((len(SEGMENTS), n_profiles), 1.0 / n_profiles)
        self.background_ = np.full(HOURS, 1.0 / HOURS)
        self.background_share_ = INITIAL_BACKGROUND_SHARE
        self.activity_offsets_ = np.zeros((len(group_counts), HOURS))
        group_totals = group_counts.sum(axis=(1, 2))
        reference = [g for g in range(len(group_totals)) if SEGMENTS[1 + g] in OPEN_ALL_HOURS]
        if not any(group_totals[g] > 0 for g in reference):  # no online activity: the busiest group
            reference = [int(np.argmax(group_totals))]
        self.coef_ = np.array([DEFAULT_COEF[f] for f in FEATURES])
        self.alpha_ = np.full(n_ch, _logit(DEFAULT_BASE_RATE))
        self.profile_residual_ = np.zeros(self.profiles_.shape)
        self.level_ = np.zeros((n, n_ch))
        self.day_residual_ = np.zeros((n, DAYS))
        self.channel_residual_ = np.zeros((n_ch, SLOTS))
        log_day = self._log_day(np.arange(n))
        segment_one_hot = np.eye(len(SEGMENTS))[self.segment_]
        active_groups = [g for g in range(len(group_counts)) if group_totals[g] > 0]
        # one sparse (active customers × groups·24) matrix: one product per E-step and per M-step
        active_counts = sparse.csr_matrix(
            group_counts[active_groups].transpose(1, 0, 2).reshape(len(active), len(active_groups) * HOURS)
        )

        if response is not None and len(np.unique(response["y"])) < 2:
            self.notes_.append("every message has the same outcome: timing is learned from activity alone")
            response = None
        if response is not None:
            # messages in customer order: the EM kernels sum each customer's run of messages
            order = np.argsort(response["row"], kind="stable")
            response = {key: values[order] for key, values in response.items()}
            response["starts"] = customer_starts(response["row"], n)
            response["log_day"] = log_day[response["row"], response["day"]]
            y = response["y"]
            sent = np.bincount(response["channel"], minlength=n_ch)
            rate = np.bincount(response["channel"], weights=y, minlength=n_ch) / np.maximum(sent, 1)
            rate = np.clip(rate, 1e-3, 1 - 1e-3)
            self.alpha_ = np.log(rate / (1 - rate))

        # activity first (cheap: customers × profiles × 24): the population's habit weights, the
        # background and the channel offsets settle on the customers whose hours are observed;
        # they are the starting prior of customers without activity, whose weak message evidence
        # would otherwise move EM away from the uniform start only very slowly
        # (the habit width is learned here, from activity alone, and then kept: the engagement
        # layers below are defined on the profiles' shapes)
        if active_groups:
            for _ in range(ACTIVITY_ITER):
                log_post = np.log(self.segment_weights_[self.segment_[active]])
                log_post += active_counts @ self._activity_log_likelihood(active_groups)
                posterior = np.exp(log_post - _logsumexp(log_post)[:, None])
                self._m_step_activity(active_counts, posterior, active_groups, reference, kernel, learn_width)
                self._m_step_segments(posterior, segment_one_hot[active])
        elif learn_width:
            self.notes_.append(
                f"no activity to learn the habit width from: the habit profiles keep {INITIAL_WIDTH:g} h"
            )
        self.profile_width_ = float(self.profile_widths_[0])

        previous = None
        self.n_iter_ = 0
        for _ in range(max(1, int(self.n_iter))):
            self.n_iter_ += 1
            # E-step: posterior over profiles given activity hours and message outcomes
            log_post = np.log(self.segment_weights_[self.segment_])
            if active_groups:
                log_post[active] += active_counts @ self._activity_log_likelihood(active_groups)
            if response is not None:
                # the engagement parameters stay as they are until the M-step's engagement step,
                # which reads the same per-message base and hour lift
                base = self._message_base(response)
                lift = np.ascontiguousarray(self._profile_lift().T)  # 24 × profiles
                add_message_log_likelihood(
                    response["starts"], base, response["hour"], response["y"], lift, log_post
                )
            total = _logsumexp(log_post)
            posterior = np.exp(log_post - total[:, None])
            log_likelihood = float(total.sum())
            converged = previous is not None and abs(log_likelihood - previous) < 1e-6 * abs(log_likelihood)
            previous = log_likelihood

            # M-step: segment weights, activity background and offsets, engagement model
            self._m_step_activity(active_counts, posterior[active], active_groups, reference, kernel)
            self._m_step_segments(posterior, segment_one_hot)
            if response is not None:
                self._m_step_engagement(response, posterior, kernel, base, lift)
            if converged:
                break
        self.posterior_ = posterior.astype(np.float32)
        self.hour_prob_ = None
        if response is None:  # activity only: the grid is the activity probability of the slot
            counts = np.zeros((n, HOURS))
            counts[active] = group_counts.sum(axis=0)
            predictive = posterior @ self._activity_mixture()
            strength = dirichlet_prior_strength(counts[active], predictive[active])
            self.hour_prob_ = shrink_counts(counts, predictive, strength).astype(np.float32)

    def _m_step_segments(self, posterior: np.ndarray, segment_one_hot: np.ndarray) -> None:
        """Profile weights per segment: the segment's posterior counts plus SEGMENT_PRIOR_COUNT
        pseudo customers at the population's weights (a segment without customers in `posterior`
        takes the population's weights)."""
        population = posterior.sum(axis=0) + 1.0
        population /= population.sum()
        by_segment = segment_one_hot.T @ posterior + SEGMENT_PRIOR_COUNT * population
        self.segment_weights_ = by_segment / by_segment.sum(axis=1, keepdims=True)

    def _activity_mixture(self) -> np.ndarray:
        """Hour distribution of each profile's activity before channel offsets (profiles × 24):
        the habit, mixed with the background share of off-habit activity."""
        share = self.background_share_
        return (1.0 - share) * self.profiles_ + share * self.background_[None, :]

    def _activity_log_likelihood(self, groups: list[int]) -> np.ndarray:
        """log P(active in local hour h | profile k, channel group g), stacked as (groups·24) ×
        profiles: the activity mixture tilted by each group's hour offsets (e.g. a store's
        opening hours), renormalised per profile and group."""
        tilted = self._activity_mixture()[None, :, :] * np.exp(self.activity_offsets_[groups])[:, None, :]
        tilted = np.maximum(tilted, 1e-300)
        log_lik = np.log(tilted) - np.log(tilted.sum(axis=2, keepdims=True))  # groups × profiles × 24
        return log_lik.transpose(0, 2, 1).reshape(len(groups) * HOURS, -1)

    def _set_profiles(self, width: float) -> None:
        """Habit profiles with the narrowest width `width` (the others 2, 4, ... times as wide)."""
        widths = float(width) * 2.0 ** np.arange(max(1, int(self.n_widths)))
        self.profiles_, self.profile_centres_, self.profile_widths_ = habit_profiles(self.n_centres, widths)

    def _expected_activity_log_likelihood(self, width: float, by_profile: dict, groups: list[int]) -> float:
        """EM's expected activity log-likelihood sum W[k, g, h] log P_g(h | k) with habit profiles
        of width `width` (background, its share and the group offsets as they are)."""
        widths = float(width) * 2.0 ** np.arange(max(1, int(self.n_widths)))
        profiles = habit_profiles(self.n_centres, widths)[0]
        share = self.background_share_
        mixture = (1.0 - share) * profiles + share * self.background_[None, :]
        total = 0.0
        for g in groups:
            tilted = np.maximum(mixture * np.exp(self.activity_offsets_[g])[None, :], 1e-300)
            log_p = np.log(tilted) - np.log(tilted.sum(axis=1, keepdims=True))
            total += float((by_profile[g] * log_p).sum())
        return total

    def _m_step_width(self, by_profile: dict, groups: list[int]) -> None:
        """The habit width maximising the expected activity log-likelihood (a generalised EM
        step: the posterior over profiles stays the E-step's), searched on the log scale within
        WIDTH_BOUNDS."""
        from scipy.optimize import minimize_scalar

        found = minimize_scalar(
            lambda log_width: -self._expected_activity_log_likelihood(np.exp(log_width), by_profile, groups),
            bounds=tuple(np.log(WIDTH_BOUNDS)),
            method="bounded",
            options={"xatol": 1e-3},
        )
        width = float(np.exp(found.x))
        # keep the old width unless the new one is at least as likely (bounded search, no ascent guarantee)
        old = float(self.profile_widths_[0])
        if self._expected_activity_log_likelihood(width, by_profile, groups) >= (
            self._expected_activity_log_likelihood(old, by_profile, groups)
        ):
            self._set_profiles(width)

    def _m_step_activity(
        self, counts, posterior, groups: list[int], reference: list[int], kernel, learn_width: bool = False
    ) -> None:
        """Background share and shape (expected off-habit counts, smoothed), then Newton steps on
        each channel group's hour offsets (the reference groups' stay 0; ridge OFFSET_RIDGE), then
        (with `learn_width`) the habit width. `counts`: active customers × (groups·24) (sparse),
        the groups' hour counts side by side."""
        mixture = self._activity_mixture()
        weighted = np.asarray(counts.T @ posterior).T.reshape(posterior.shape[1], len(groups), HOURS)
        by_profile = {g: weighted[:, j] for j, g in enumerate(groups)}  # profiles × 24
        total = sum(m.sum() for m in by_profile.values())
        if total <= 0:
            return
        off_habit = self.background_share_ * self.background_[None, :] / np.maximum(mixture, 1e-300)
        background = sum((m * off_habit).sum(axis=0) for m in by_profile.values())
        self.background_share_ = float(np.clip(background.sum() / total, 1e-3, 0.9))
        smoothed = kernel @ (background + 1e-3 * total / HOURS)
        self.background_ = smoothed / smoothed.sum()
        mixture = self._activity_mixture()
        for g in groups:
            if g in reference:
                continue
            n_k = by_profile[g].sum(axis=1)
            observed = by_profile[g].sum(axis=0)
            offsets = self.activity_offsets_[g].copy()
            for _ in range(_OFFSET_STEPS):
                tilted = mixture * np.exp(offsets)[None, :]
                prob = tilted / tilted.sum(axis=1, keepdims=True)
                expected = n_k @ prob
                grad = observed - expected - OFFSET_RIDGE * offsets
                hess = (prob * n_k[:, None]).T @ prob - np.diag(expected) - OFFSET_RIDGE * np.eye(HOURS)
                step = np.linalg.solve(hess - 1e-9 * np.eye(HOURS), -grad)
                offsets = offsets + np.clip(step, -_MAX_OFFSET_STEP, _MAX_OFFSET_STEP)
            self.activity_offsets_[g] = offsets - offsets.mean()
        if learn_width:
            self._m_step_width(by_profile, groups)

    def _log_day(self, rows: np.ndarray, unknown: np.ndarray | None = None) -> np.ndarray:
        day = self.day_prob_[np.maximum(rows, 0)].copy()
        if unknown is not None and unknown.any():
            day[unknown] = self.segment_day_prob_[0]
        return np.clip(np.log(DAYS * day), -_MAX_LOG_DENSITY, _MAX_LOG_DENSITY)

    def _hour_features(self) -> tuple[np.ndarray, np.ndarray]:
        """Activity shape of each profile: density relative to its peak, log density vs uniform."""
        relative = self.profiles_ / self.profiles_.max(axis=1, keepdims=True)
        density = np.maximum(HOURS * self.profiles_, np.exp(-_MAX_LOG_DENSITY))  # no log(0) far from a bump
        log_density = np.clip(np.log(density), -_MAX_LOG_DENSITY, _MAX_LOG_DENSITY)
        return relative, log_density

    def _profile_lift(self) -> np.ndarray:
        """Engagement log-odds lift of each profile at each local hour (profiles × 24)."""
        relative, log_density = self._hour_features()
        return self.coef_[0] * relative + self.coef_[1] * log_density + self.profile_residual_

    def _message_base(self, response: dict) -> np.ndarray:
        """Per-message log-odds without the hour-profile lift."""
        rows, ch, day, hour = response["row"], response["channel"], response["day"], response["hour"]
        return (
            self.alpha_[ch]
            + self.level_[rows, ch]
            + self.coef_[2] * response["log_day"]
            + self.day_residual_[rows, day]
            + self.channel_residual_[ch, day * HOURS + hour]
        )

    def _m_step_engagement(
        self, response: dict, posterior: np.ndarray, kernel, base: np.ndarray, lift: np.ndarray
    ) -> None:
        """One pass over the engagement parameters, each a Newton step from the E-step's
        probabilities, updated in turn; the residuals carry each step's effect to the next
        (linearised: r -= info * change), so no layer re-absorbs what another just took.
        The sums over (message, profile) cells come from `em_kernels`, without any messages ×
        profiles array; `base` and `lift` (24 × profiles) are the E-step's, from which its
        probabilities came."""
        rows, ch, hours, days = (response[k] for k in ("row", "channel", "hour", "day"))
        starts, log_day = response["starts"], response["log_day"]
        n_ch = len(self.alpha_)
        relative, log_density = self._hour_features()
        features = [relative.T, log_density.T]  # 24 × profiles
        sums = engagement_sums(
            starts, base, hours, response["y"], ch, n_ch, log_day, lift, posterior, features
        )
        # alpha per channel and the coefficients: a Newton step on the expected log-likelihood
        step = _newton_direction(
            sums.r_row, sums.i_row, ch, n_ch, log_day, sums.feature_sums, sums.grad_f, sums.hess_f
        )
        self.alpha_ = self.alpha_ + step[:n_ch]
        self.coef_ = self.coef_ + step[n_ch:]
        # each cell's residual after that step: r - info * (step of its channel + step of log_day
        # * log_day + the features' steps), summed per hour and profile
        by_hour = step[n_ch] * features[0] + step[n_ch + 1] * features[1]  # 24 × profiles
        r_hour = (
            sums.residual_cell
            - np.tensordot(step[:n_ch], sums.info_channel_cell[:n_ch], axes=1)
            - step[n_ch + 2] * sums.info_day_cell
            - sums.info_cell * by_hour
        )

        # what the activity shape does not explain, per profile and hour (shrunk, smoothed)
        r_cell = r_hour.T @ kernel.T  # profiles × 24
        i_cell = sums.info_cell.T @ kernel.T
        new = eb_newton_step(r_cell + i_cell * self.profile_residual_, i_cell)[0]
        moved = (new - self.profile_residual_).T  # 24 × profiles
        self.profile_residual_ = new
        level = step[:n_ch][ch] + step[n_ch + 2] * log_day
        r_msg = (
            sums.r_row
            - level * sums.i_row
            - step[n_ch] * sums.feature_sums[0]
            - step[n_ch + 1] * sums.feature_sums[1]
            - info_dot(starts, base, hours, lift, posterior, moved)
        )
        i_msg = sums.i_row

        # per-message layers: customer × channel level, customer × weekday, channel × slot
        for name, cell, shape in (
            ("level_", rows * n_ch + ch, self.level_.shape),
            ("day_residual_", rows * DAYS + days, self.day_residual_.shape),
            ("channel_residual_", ch * SLOTS + days * HOURS + hours, self.channel_residual_.shape),
        ):
            old = getattr(self, name).reshape(-1)
            size = old.size
            r_cell = np.bincount(cell, weights=r_msg, minlength=size)
            i_cell = np.bincount(cell, weights=i_msg, minlength=size)
            if name == "channel_residual_":  # neighbouring hours of the week share evidence
                week = circular_kernel(self.hour_bandwidth, SLOTS)
                r_cell = (r_cell.reshape(shape) @ week.T).reshape(-1)
                i_cell = (i_cell.reshape(shape) @ week.T).reshape(-1)
            new = eb_newton_step(r_cell + i_cell * old, i_cell)[0]
            r_msg = r_msg - i_msg * (new - old)[cell]
            setattr(self, name, new.reshape(shape))

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

    def _channel_code(self, channel: str | None) -> int:
        """Index of `channel`, or -1 for a channel without message history (channel-agnostic grid)."""
        if channel is None:
            return -1
        hits = np.flatnonzero(self.channels_ == str(channel))
        return int(hits[0]) if len(hits) else -1

    def score_grid(self, customer_ids, channel: str | None) -> np.ndarray:
        """Engagement probability (a propensity without messages), customers × 168 local slots.

        Unknown customers get their segment-free prior (the `none` segment's profile weights, the
        population's weekday pattern). A channel without message history gets the average level.
        In a rule mode (`serve`), each weekday keeps the model's mean level over its hours and the
        rule's hour is its best, falling off with the distance from it (`_RULE_FALLOFF`).
        """
        grid = self._model_grid(customer_ids, channel)
        if self.serve == "model":
            return grid
        level = grid.reshape(len(grid), DAYS, HOURS).mean(axis=2)
        distance = circular_distance(np.arange(HOURS)[None, :], self.rule_hours(customer_ids)[:, None])
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

    def _model_grid(self, customer_ids, channel: str | None) -> np.ndarray:
        """The model's grid (see `score_grid`), whatever `serve` says."""
        _, rows, unknown = self._rows(customer_ids)
        known = ~unknown
        posterior = np.tile(self.segment_weights_[0], (len(rows), 1))
        posterior[known] = self.posterior_[rows[known]]
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
            window = int(self.activity_window_hours)
            if window > 0:  # activity within `window` hours either side, per hour of the window
                hour_prob = sum(np.roll(hour_prob, shift, axis=1) for shift in range(-window, window + 1))
                hour_prob /= 2 * window + 1
            hour_term = np.clip(
                np.log(np.maximum(HOURS * hour_prob, 1e-300)), -_MAX_LOG_DENSITY, _MAX_LOG_DENSITY
            )
            logit = level[:, None, None] + day_term[:, :, None] + hour_term[:, None, :]  # n × 7 × 24
            logit += _TIE_BREAK * (logit @ _TIE_KERNEL.T)
            return _sigmoid(logit).reshape(len(rows), SLOTS)
        half_lift = 0.5 * self._profile_lift()  # profiles × 24
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

    @property
    def base_logit_(self) -> float:
        return float(np.mean(self.alpha_)) if len(self.alpha_) else _logit(DEFAULT_BASE_RATE)

    def scores(self, customer_id, channel: str | None) -> np.ndarray:
        """The 168 slot scores of one customer (index = local weekday * 24 + hour)."""
        return self.score_grid([customer_id], channel)[0]

    def timezone_of(self, customer_ids) -> np.ndarray:
        _, rows, unknown = self._rows(customer_ids)
        tz = np.full(len(rows), "UTC", dtype=object)
        tz[~unknown] = self.timezones_[rows[~unknown]]
        return tz.astype(str)

    def fallback(self, customer_ids) -> np.ndarray:
        """True where the customer has fewer than `min_history` messages and active hours: their grid
        is (nearly) their segment's. Unknown customers are always fallback."""
        _, rows, unknown = self._rows(customer_ids)
        out = np.ones(len(rows), dtype=bool)
        known = rows[~unknown]
        out[~unknown] = (self.n_messages_[known] < self.min_history) & (
            self.n_active_[known] < self.min_history
        )
        return out

    def best_slot(
        self, customer_ids, channel: str | None, quiet_hours: tuple[int, int] | None = None
    ) -> pd.DataFrame:
        """The best local slot per customer (outside `quiet_hours` if given).

        Columns: customer_id, channel, timezone, best_weekday (0 = Monday), best_hour_local (0-23),
        score, fallback. Ties go to the earliest slot of the week.
        """
        ids, _, _ = self._rows(customer_ids)
        quiet = is_quiet(np.arange(SLOTS) % HOURS, quiet_hours)
        best = np.empty(len(ids), dtype=np.int64)
        score = np.empty(len(ids))
        # block by block: a grid of every customer at once is 1.3 GB per million customers
        for lo in range(0, len(ids), _BEST_SLOT_CHUNK):
            grid = self.score_grid(ids.iloc[lo : lo + _BEST_SLOT_CHUNK], channel)
            grid[:, quiet] = -np.inf
            best[lo : lo + len(grid)] = np.argmax(grid, axis=1)
            score[lo : lo + len(grid)] = grid[np.arange(len(grid)), best[lo : lo + len(grid)]]
        return pd.DataFrame(
            {
                c.CUSTOMER_ID: ids.to_numpy(),
                c.CHANNEL: pd.Series([channel] * len(ids), dtype="str"),
                c.TIMEZONE: self.timezone_of(ids),
                "best_weekday": (best // HOURS).astype(np.int64),
                "best_hour_local": (best % HOURS).astype(np.int64),
                c.SCORE: score,
                "fallback": self.fallback(ids),
            }
        )

    def next_send_times(
        self,
        customer_ids,
        channel: str | None,
        after: pd.Timestamp,
        quiet_hours: tuple[int, int] | None = DEFAULT_QUIET_HOURS,
        horizon_hours: int = SLOTS,
    ) -> pd.Series:
        """The best moment at or after `after` and before `after + horizon_hours`, per customer (UTC).

        Candidates are the starts of the customer's local clock hours from `after` on (the current
        hour counts from `after` itself), stepped in absolute time, so a local hour skipped by
        daylight saving never appears and a repeated one appears twice (the earlier wins a tie).
        Candidates inside quiet hours (local) are left out. A naive `after` is taken as UTC.
        """
        after = pd.Timestamp(after)
        after = after.tz_localize("UTC") if after.tzinfo is None else after.tz_convert("UTC")
        if horizon_hours < 1:
            raise ValueError("horizon_hours must be at least 1")
        ids, _, _ = self._rows(customer_ids)
        grid = self.score_grid(ids, channel)
        zones = self.timezone_of(ids)
        out = np.empty(len(ids), dtype="datetime64[us]")
        after_naive = np.datetime64(after.tz_localize(None).as_unit("us").to_datetime64(), "us")
        for zone in np.unique(zones):
            sel = np.flatnonzero(zones == zone)
            local_after = after.tz_convert(zone)
            hour_start = after - pd.Timedelta(
                minutes=local_after.minute,
                seconds=local_after.second,
                microseconds=local_after.microsecond,
                nanoseconds=local_after.nanosecond,
            )
            candidates = pd.date_range(hour_start, periods=int(horizon_hours), freq="h", unit="us")
            local = candidates.tz_convert(zone)
            slots = slot_index(local.day_of_week, local.hour)
            allowed = ~is_quiet(np.asarray(local.hour), quiet_hours)
            times = candidates.tz_localize(None).to_numpy().astype("datetime64[us]")
            times[0] = after_naive
            values = grid[np.ix_(sel, slots)]
            values[:, ~allowed] = -np.inf
            out[sel] = times[np.argmax(values, axis=1)]
        return pd.Series(pd.DatetimeIndex(out).tz_localize("UTC"), index=ids.to_numpy(), name="next_send_utc")

    def next_send_time(
        self,
        customer_id,
        channel: str | None,
        after: pd.Timestamp,
        quiet_hours: tuple[int, int] | None = DEFAULT_QUIET_HOURS,
        horizon_hours: int = SLOTS,
    ) -> pd.Timestamp:
        """The best send moment (UTC) at or after `after`, outside quiet hours, within the horizon."""
        return self.next_send_times([customer_id], channel, after, quiet_hours, horizon_hours).iloc[0]

    def send_plan(
        self,
        customer_ids,
        channel: str | None,
        after: pd.Timestamp,
        quiet_hours: tuple[int, int] | None = DEFAULT_QUIET_HOURS,
        horizon_hours: int = SLOTS,
    ) -> pd.DataFrame:
        """The batch table of `omni send-time`: the best slot outside quiet hours and the next moment.

        Columns: customer_id, channel, timezone, best_hour_local, best_weekday, next_send_utc, fallback.
        """
        best = self.best_slot(customer_ids, channel, quiet_hours)
        nxt = self.next_send_times(best[c.CUSTOMER_ID], channel, after, quiet_hours, horizon_hours)
        best["next_send_utc"] = nxt.to_numpy()
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
        _check_serve(model.serve)
        if model.serve != "model" and model.modal_hour_ is None:
            raise ValueError(f"send-time folder serves {model.serve!r} but holds no rule arrays: retrain")
        model.customer_index_ = {cid: i for i, cid in enumerate(model.customer_ids_)}
        model.as_of_ = pd.Timestamp(meta["as_of"])
        model.n_iter_ = int(meta["n_iter"])
        model.notes_ = list(meta["notes"])
        return model


def engagement_time(messages: pd.DataFrame) -> pd.Series:
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
