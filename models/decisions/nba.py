"""Next-best-action: per customer, the action, channel, send time, items and offer worth the most.

Actions. For every customer the engine weighs *no action* against a message on each allowed
channel carrying either no offer (a product message with recommended items, a replenishment
reminder when an item's cycle is due, or win-back when the customer is dormant) or one of the
offers of the `offers` table (a content offer sent to a high-value customer is labelled service
content: a customer who does not need a discount). Labels follow the arbitration; they do not
change the arithmetic.

Arbitration on incremental value. For action a (arm) on channel ch for customer i:

    P(convert | a, ch) = mu_0 + p_open(i, ch) * (mu_a - mu_0)
    expected gain      = (P(convert | a, ch) - mu_0) * order_value * margin_rate     (incremental margin)
                         - cost_a * P(convert | a, ch)                              (offer cost)
                         - message_cost(ch)                                         (contact cost)

with mu_0 the conversion probability without the message and mu_a the one of a customer who has
seen the message. `cost_a` is `offers.cost`, currency per redemption (what a campaign system
records: the discount or reward paid out when the offer is used), whatever the order's size. It
counts on every redemption, including by customers who would have bought anyway (P(convert | a)
includes mu_0): that is `models.decisions.uplift.incremental_value`. Every conversion in the window after an
offer message is taken as a redemption, opened or not, because that is how the logged revenue is
booked (net of the offer). A customer for whom nothing has a gain above the policy's
`min_expected_gain` gets no action, with the reason.

Conversion window. A message converts within its offer's `duration_days` (the offer's validity,
optional in `offers`) when it has one, else within `conversion_window_days` (default 14); a
message is learned from only once its own window has closed.

Where the uplift comes from (the identification choice). The logged messages carry offers drawn
at random (an explore share of sends) or no offer, and a 5 % holdout got no message at all. The
holdout cannot serve as control for the messages' conversion label: that label is the messaging
system's attribution within 14 days, which has no counterpart for a customer who was not messaged,
and any-purchase-within-14-days is not comparable either (on the generated data messaged "sure
things" buy at 75 % against 32 % in the holdout, a gap no message causes). Instead the engine uses
*exposure*: a message that was not opened was not seen, so it acts like no message. The uplift
learner (`MultiArmUpliftLearner`, X-learner by default) is trained on arms

    0 = message not opened (control), 1 = opened, no offer, 1 + j = opened with offer j,

with features known at the send time (`models.decisions.history.CustomerHistory`, leak-free), and outcome
"converted within the window". Opening is not randomised, so it is adjusted for by the features
(customer-level: history, open and conversion rates); the offer is randomised by the logging
policy independently of the customer, so among opened messages the offer comparison is a
randomised one. The propensities of the exposure arms are estimated, never taken from the truth:
P(not opened | x) = 1 - p_open(x) from a cross-fitted LightGBM open model, P(arm 1 + j | x) =
p_open(x) * share of that arm among opened messages. They weight the guard's IPW estimates (the
X-learner only uses the arms' shares to blend its two estimates). Assumption to keep in mind: an
unopened message has no effect (it may, through the subject line or the preview).

Arms that fewer than `min_arm_rows` exposed messages carry are not learned and never sent (an
offer, or the plain message when every opened message carried an offer).

Without opens in the messages table the engine trains on sent messages with "no offer" as the base
arm (p_open = 1) and assumes a plain message has no effect: it can then only choose offers against
a plain message (`mode_ = "plain_base"`).

When every message carries an offer (a campaign system that logs only offer sends) there is no
message without offer to compare with: the offers are learned against each other and against
customers who were not contacted in the same period (`mode_ = "offers_control"`, see
`_control_training_data`): per message, one customer seen before its send time and without any
message within its window on either side is drawn as control at that same moment, and the outcome
of both is "a purchase within the window" from the events. Arms: 0 not contacted, then the offers
as sent (intent to treat, p_open = 1); P(sent | x) is estimated by a cross-fitted model. The
assumption, stated in the note: given the history features, whether a customer was contacted at
that moment is unrelated to whether they would have bought anyway. The note also gives what was
learned: the arms, their rows, and each arm's average uplift over the control with its 95 %
interval (a doubly robust estimate from the guard's cross-fitted outcomes; every mode reports it).

Customer attributes (`customers.attr.*`, `CustomerProfiles.attribute_names_`) are offered to the
uplift learners: the guard's cross-fitted outcomes are computed with and without them, and they
are kept only if the personalised policy's cross-fitted value is higher with them (note and
`metrics_["attributes"]`).

Without a messages table there is no uplift model at all (`mode_ = "rules"`):
replenishment reminders and win-backs only, valued with an *assumed* relative uplift
(`prior_relative_uplift`) of the purchase probability from the churn model, never offers (their
cost is certain, their effect unknown); every such decision carries the reason `prior_uplift_no_model`.

Guard: the NBA baseline is the best fixed action. `ValueGuardedPolicy` is fitted on cross-fitted
(out-of-fold) values of the training messages at the exposure level with the estimated
propensities: personalised choices are used only if their IPW gain over the best *fixed* arm (e.g.
"no action for everyone" or "the 10 % discount to everyone seen") has a one-sided lower confidence
bound above 0; otherwise the best fixed arm itself is served, to every customer the contact policy
(and the offer's eligibility rules) allows, whatever the model predicts for them (no arm at all
when the best fixed arm is "not exposed"). The reward carries a control variate (see
`_fit_guard`). The confidence is chosen on the training rows (`guard_confidence="validated"`):
nested splits of the guard's cross-fitted rows value the decisions each level of a grid (0.5 to
0.95) would take on held-out rows, and the level whose decisions earn the most is kept, the
strictest on ties. It was a fixed 0.8, set by looking at the generated data's truth (on ~100k
training messages there the gain's standard error is about 0.15 per message against true gains of
0.2-0.3); now the data at hand decide how much evidence personalising needs. Both values, the
personalised choice's and the best fixed action's, are in `metrics_["guard"]`.

Judged on new data. The promotion gate (`training.nba_training.champion_window_scores`) asks a
deployed engine what it would have sent each customer of a later window's logged messages, at
that message's moment and on its channel, from its own state (`message_choices`: the arbitration
of `decide` without the timing rules), and values those choices off-policy on the logged
messages (`logged_window`, `LoggedWindow.value`): the guard's estimator with the window's own
exposure propensities, doubly robust with the engines' predicted conversions (`outcomes_at`).

Channel and send time. p_open per (customer, channel) comes from a `ChannelChooser`: the channel
model's engagement probability when one is given (`ChannelModelChooser`), else the customer's
smoothed open rate per channel from the message history (`HistoryOpenRates`). The send time is the
best allowed slot from a `SendTimeChooser`'s weekly local scores: the send-time model's engagement
grid (`SendTimeModelChooser`) or the customer's activity hours (`ActivityHoursChooser`, everyone's
hours for a customer without events); consent,
quiet hours, caps and cooldowns are applied in one place, `models.decisions.contact_policy`.

Batch. `decide(customer_ids, now)` is vectorised (numpy over customers × channels × arms, LightGBM
on the whole batch, sorted-array ledger look-ups); one decision per distinct customer. Every send
is re-checked by `audit_sends` before it is returned (a breach becomes no action with the rule as
reason), and with `record=True` the sends go into the ledger, so caps hold across batches.
`decide_one` (the HTTP route) runs the same `_decide_arrays` for one customer without the DataFrame
around it: dict look-ups in the ledger and the profiles instead of pandas indexes, the channel
model's probabilities scored once per channel (`ChannelModelChooser`), the recommender's
single-request path; it decides exactly as `decide` (tests/test_nba_fast.py).

Saved to a folder: LightGBM text models, Parquet, json, and the profiles' folder. Never pickle.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.model_selection import StratifiedKFold

from features import columns as c
from features.io import Tables
from models.base import FEW_IDS, read_model_meta
from models.decisions.contact_policy import (
    ContactLedger,
    ContactPolicy,
    audit_sends,
    in_control_group,
    load_contact_policy,
    next_send_times,
    offer_eligibility,
)
from models.decisions.history import CustomerHistory, message_windows_days
from models.decisions.profile import CustomerProfiles
from models.decisions.uplift import (
    _Z95,
    MultiArmUpliftLearner,
    ValueGuardedPolicy,
    cross_fit_outcomes,
)
from models.fitting import (  # on the Dask cluster of `omni train` when one is active
    fit_estimator,
    fit_pool,
    run_tasks,
)
from models.timestamps import NAT_US, US_PER_DAY, US_PER_HOUR, US_PER_SECOND, to_us

FORMAT_VERSION = 1
NO_ACTION = "no_action"
PRODUCT_MESSAGE = "product_message"
OFFER = "offer"
REPLENISHMENT = "replenishment"
WIN_BACK = "win_back"
SERVICE_CONTENT = "service_content"
ACTIONS: tuple[str, ...] = (NO_ACTION, PRODUCT_MESSAGE, OFFER, REPLENISHMENT, WIN_BACK, SERVICE_CONTENT)
# Actions whose message shows recommended products (replenishment shows the due items instead).
ITEM_ACTIONS: tuple[str, ...] = (PRODUCT_MESSAGE, OFFER, WIN_BACK, SERVICE_CONTENT)
DECISION_COLUMNS: tuple[str, ...] = (
    c.CUSTOMER_ID,
    "action",
    c.CHANNEL,
    "send_at",
    c.OFFER_ID,
    "product_ids",
    "expected_gain",
    "reasons",
    "uplift",
    "incremental_margin",
    "offer_cost",
    "contact_cost",
    "p_open",
    "p_convert",
)
DEFAULT_PRIOR_RELATIVE_UPLIFT = {"product_message": 0.0, "replenishment": 0.10, "win_back": 0.05}
ORDER_VALUE_PRIOR_ORDERS = 1.0  # a customer's order value is shrunk towards the mean by one order
_BATCH = 200_000  # customers per block inside decide (bounds the customers × channels × arms arrays)
_RECOMMEND_BATCH = 2_000
_MAX_JOBS = 2
MISSING = -1e9  # sentinel for unknown feature values (see `_model_matrix`)
CONTROL_DRAWS = 10  # tries per message to find a customer not contacted around its send time


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


# ----------------------------------------------------------------------------------------------
# The arithmetic, pure
def arbitrate(
    mu: np.ndarray,
    p_open: np.ndarray,
    order_value: np.ndarray,
    margin_rate: float,
    offer_cost: np.ndarray,
    message_cost: np.ndarray,
    arm_allowed: np.ndarray | None = None,
    channel_allowed: np.ndarray | None = None,
    min_gain: float = 0.0,
    forced_arm: int | None = None,
) -> dict[str, np.ndarray]:
    """The best (channel, arm) per customer and its expected gain with the parts.

    mu (n, K): conversion probability without the message (column 0) and after seeing arm k;
    p_open (n, C): probability the message is seen, per channel; order_value (n,); offer_cost (K,)
    in currency per redemption, as `offers.cost` holds it (0 for arms 0 and 1): it is paid on every
    conversion after the offer, P(convert | arm, channel) per send, whatever the order's size;
    message_cost (C,); arm_allowed (n, K) and channel_allowed (n, C) booleans; `forced_arm`:
    only that arm may be sent (the guard's fallback; pass min_gain=-inf to send it to every
    allowed customer). Arm 0 is "no action" and is never sent.

    Returns arrays: send (bool), arm, channel (index, -1 = none), gain, uplift (= P(convert) - mu_0),
    p_convert, incremental_margin, offer_cost, contact_cost, p_open, and best_gain / best_arm /
    best_channel, the best candidate even when it does not pay (for the reason).
    """
    mu = np.atleast_2d(np.asarray(mu, dtype=np.float64))
    p_open = np.atleast_2d(np.asarray(p_open, dtype=np.float64))
    n, K = mu.shape
    C = p_open.shape[1]
    order_value = np.asarray(order_value, dtype=np.float64)
    offer_cost = np.asarray(offer_cost, dtype=np.float64)
    message_cost = np.asarray(message_cost, dtype=np.float64)
    arm_ok = (
        np.ones((n, K), dtype=bool) if arm_allowed is None else np.asarray(arm_allowed, dtype=bool).copy()
    )
    arm_ok[:, 0] = False
    if forced_arm is not None:
        keep = np.zeros(K, dtype=bool)
        keep[forced_arm] = True
        arm_ok &= keep[None, :]
    ch_ok = (
        np.ones((n, C), dtype=bool) if channel_allowed is None else np.asarray(channel_allowed, dtype=bool)
    )
    values = np.full((n, C, K), -np.inf)
    for j in range(C):
        p_convert = mu[:, [0]] + p_open[:, [j]] * (mu - mu[:, [0]])
        # incremental margin (currency) minus the offer's cost on every expected redemption
        # (`offers.cost` is currency per redemption) minus the contact
        value = (p_convert - mu[:, [0]]) * (order_value[:, None] * margin_rate) - p_convert * offer_cost[
            None, :
        ]
        value -= message_cost[j]
        values[:, j, :] = np.where(arm_ok & ch_ok[:, [j]], value, -np.inf)
    flat = values.reshape(n, C * K)
    best = np.argmax(flat, axis=1)
    best_gain = flat[np.arange(n), best]
    has_candidate = np.isfinite(best_gain)
    channel = np.where(has_candidate, best // K, -1)
    arm = np.where(has_candidate, best % K, 0)
    send = has_candidate & (best_gain > min_gain)
    rows = np.arange(n)
    po = np.where(channel >= 0, p_open[rows, np.maximum(channel, 0)], 0.0)
    uplift = po * (mu[rows, arm] - mu[:, 0])
    p_convert = mu[:, 0] + uplift
    margin = uplift * order_value * margin_rate
    cost = offer_cost[arm] * p_convert  # currency per redemption × expected redemptions
    contact = np.where(channel >= 0, message_cost[np.maximum(channel, 0)], 0.0)
    zero = ~send
    return {
        "send": send,
        "arm": np.where(send, arm, 0),
        "channel": np.where(send, channel, -1),
        "gain": np.where(zero, 0.0, margin - cost - contact),
        "uplift": np.where(zero, 0.0, uplift),
        "p_convert": np.where(zero, mu[:, 0], p_convert),
        "incremental_margin": np.where(zero, 0.0, margin),
        "offer_cost": np.where(zero, 0.0, cost),
        "contact_cost": np.where(zero, 0.0, contact),
        "p_open": np.where(zero, 0.0, po),
        "best_gain": np.where(has_candidate, best_gain, np.nan),
        "best_arm": arm,
        "best_channel": channel,
    }


# ----------------------------------------------------------------------------------------------
# Uplift predictions from saved LightGBM boosters
class _BoosterUplift:
    """`MultiArmUpliftLearner.predict_outcomes` from the learner's LightGBM boosters.

    The engine predicts through this both right after fitting and after loading, so a saved and
    reloaded engine decides exactly as the one that was fitted.
    """

    def __init__(self, kind: str, outcomes: list, effects: list, arm_share: np.ndarray, n_jobs: int = 1):
        self.kind = kind
        self.outcomes = outcomes  # Booster, or a float for a one-class model
        self.effects = effects  # x: (on_control, on_treated) pairs; dr: boosters; t: []
        self.arm_share = np.asarray(arm_share, dtype=np.float64)
        self.n_jobs = n_jobs

    @classmethod
    def from_learner(cls, learner: MultiArmUpliftLearner) -> _BoosterUplift:
        outcomes = []
        for model in learner.outcome_models_:
            if hasattr(model, "classes_") and len(model.classes_) < 2:
                outcomes.append(float(model.classes_[0]))
            else:
                outcomes.append(model.booster_)
        if learner.learner == "x":
            effects = [(a.booster_, b.booster_) for a, b in learner.effect_models_]
        elif learner.learner == "dr":
            effects = [m.booster_ for m in learner.effect_models_]
        else:
            effects = []
        return cls(learner.learner, outcomes, effects, learner.arm_share_, learner.n_jobs)

    def _predict(self, model, X: np.ndarray) -> np.ndarray:
        if isinstance(model, float):
            return np.full(len(X), model)
        return model.predict(X, num_threads=min(max(1, self.n_jobs), _MAX_JOBS))

    def predict_outcomes(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        K = len(self.outcomes)
        if self.kind == "t":
            out = np.column_stack([self._predict(m, X) for m in self.outcomes])
        else:
            mu0 = self._predict(self.outcomes[0], X)
            out = np.empty((len(X), K))
            out[:, 0] = mu0
            for k in range(1, K):
                if self.kind == "x":
                    on_control, on_treated = self.effects[k - 1]
                    g = self.arm_share[k] / (self.arm_share[0] + self.arm_share[k])
                    tau = g * self._predict(on_control, X) + (1.0 - g) * self._predict(on_treated, X)
                else:
                    tau = self._predict(self.effects[k - 1], X)
                out[:, k] = mu0 + tau
        return np.clip(out, 0.0, 1.0)

    def save(self, folder: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        outcome_files = []
        for k, model in enumerate(self.outcomes):
            if isinstance(model, float):
                outcome_files.append(model)
            else:
                name = f"outcome_{k}.lgb.txt"
                model.save_model(str(folder / name))
                outcome_files.append(name)
        effect_files = []
        for k, model in enumerate(self.effects, start=1):
            if isinstance(model, tuple):
                names = (f"effect_{k}_on_control.lgb.txt", f"effect_{k}_on_treated.lgb.txt")
                model[0].save_model(str(folder / names[0]))
                model[1].save_model(str(folder / names[1]))
                effect_files.append(list(names))
            else:
                name = f"effect_{k}.lgb.txt"
                model.save_model(str(folder / name))
                effect_files.append(name)
        return {
            "kind": self.kind,
            "outcomes": outcome_files,
            "effects": effect_files,
            "arm_share": self.arm_share.tolist(),
        }

    @classmethod
    def load(cls, folder: Path, meta: dict, n_jobs: int = 1) -> _BoosterUplift:
        def booster(name):
            return lgb.Booster(model_file=str(folder / name))

        outcomes = [float(x) if isinstance(x, int | float) else booster(x) for x in meta["outcomes"]]
        effects = [
            tuple(booster(n) for n in e) if isinstance(e, list) else booster(e) for e in meta["effects"]
        ]
        return cls(meta["kind"], outcomes, effects, np.asarray(meta["arm_share"]), n_jobs)


# ----------------------------------------------------------------------------------------------
class NextBestActionEngine(BaseEstimator):
    """Uplift-based next-best-action with a contact policy (see the module docstring).

    Parameters
    ----------
    policy : ContactPolicy or None (None: `configs/contact_policy.toml`).
    learner : "x", "t" or "dr" (`MultiArmUpliftLearner`).
    conversion_window_days : a message's conversion counts within this window, unless its offer has
        a `duration_days` (then that one); only messages whose window closed before the profiles'
        time are learned from.
    guard : fit the `ValueGuardedPolicy` (cross-fitted; costs `guard_folds` extra fits).
    guard_folds, guard_confidence : its folds and one-sided confidence; "validated" (default):
        chosen on nested splits of the training rows (see the module docstring).
    min_arm_rows : an arm (offer, or the plain message) needs this many exposed rows to be learned
        (else it is not sent); the control arm needs as many.
    max_training_messages : random sample of the training messages (None = all).
    prior_relative_uplift : rule mode only (no messages): assumed relative uplift of the purchase
        probability for product_message / replenishment / win_back.
    random_state, n_jobs : seeds and LightGBM threads per model (at most 2).
    fit_workers : independent fits (the main uplift learner, the guard's folds, the open model's
        folds) run on this many Python threads at once, each with `n_jobs` LightGBM threads
        (one at a time on the Dask cluster of `omni train --dask-scheduler`).
        LightGBM releases the GIL, so 2 single-threaded fits use both cores of the reference
        machine; the fits are seeded and independent, so the models are the same for any value.

    Fitted attributes: policy_, profiles_, mode_ ("uplift", "plain_base", "offers_control" or
    "rules"), offer_ids_, offer_kinds_, arm_names_, arm_costs_ (currency per redemption),
    learner_arms_ (engine arm of each learner arm), uplift_ (predictor), learner_ (the fitted
    learner, not saved), guard_ (ValueGuardedPolicy or None), ledger_, channel_chooser_,
    send_time_chooser_, recommender_, feature_names_ (attributes included only where they
    helped), mean_order_value_, order_values_known_, metrics_, notes_.
    """

    def __init__(
        self,
        policy: ContactPolicy | None = None,
        learner: str = "x",
        conversion_window_days: float = 14.0,
        guard: bool = True,
        guard_folds: int = 3,
        guard_confidence: float | str = "validated",
        min_arm_rows: int = 200,
        max_training_messages: int | None = None,
        prior_relative_uplift: dict[str, float] | None = None,
        random_state: int | None = 0,
        n_jobs: int = 1,
        fit_workers: int = 2,
    ):
        self.policy = policy
        self.learner = learner
        self.conversion_window_days = conversion_window_days
        self.guard = guard
        self.guard_folds = guard_folds
        self.guard_confidence = guard_confidence
        self.min_arm_rows = min_arm_rows
        self.max_training_messages = max_training_messages
        self.prior_relative_uplift = prior_relative_uplift
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.fit_workers = fit_workers

    # ------------------------------------------------------------------------------------------
    # fitting
    def fit(
        self,
        tables: Tables,
        profiles: CustomerProfiles,
        recommender=None,
        channel_model=None,
        send_time_model=None,
        train_customers=None,
    ) -> NextBestActionEngine:
        """Learn the uplift models from `tables.messages` (sent before the profiles' time) and keep
        what decisions need: profiles, contact history, choosers, recommender.

        `train_customers`: learn only from these customers' messages (e.g. a benchmark's training
        half); None = everyone. `recommender`, `channel_model` and `send_time_model` may each be
        None (no product ids in messages; p_open from the open-rate history; activity hours).
        """
        self.policy_ = self.policy if self.policy is not None else load_contact_policy()
        self.profiles_ = profiles
        self.recommender_ = recommender
        self.notes_: list[str] = []
        self.metrics_: dict = {}
        attributes = list(getattr(profiles, "attribute_names_", []))
        # customer attributes join the features only where the guard's folds say they help
        self.feature_names_ = [name for name in profiles.feature_names_ if name not in attributes]
        as_of = profiles.as_of_
        self._set_order_values(profiles)
        if not self.order_values_known_:
            self.notes_.append(
                "purchases carry no amounts: every order is valued at 1 currency unit, so margins, offer "
                "costs and message costs compare only if the contact policy's costs are set in orders"
            )
        self._set_offers(tables.offers)

        self.channel_chooser_ = (
            ChannelModelChooser(channel_model) if channel_model is not None else HistoryOpenRates(profiles)
        )
        self.send_time_chooser_ = (
            SendTimeModelChooser(send_time_model)
            if send_time_model is not None
            else ActivityHoursChooser(profiles)
        )
        self.ledger_ = ContactLedger.from_history(tables.messages, tables.events, as_of)
        self.guard_ = None
        self.uplift_ = None
        self.learner_ = None
        self.learner_arms_: list[int] = []
        messages = tables.messages
        usable = [ch for ch in self.policy_.channels if ch in profiles.message_channels_]
        if not usable:
            self.notes_.append(
                f"no channel may be used: the contact policy allows {list(self.policy_.channels)}, the "
                f"customers' message channels are {list(profiles.message_channels_)}; list the data's "
                "channels under `channels` in the contact policy file to send on them"
            )
        if messages is None or len(messages) == 0:
            self._rules_mode(
                "uplift skipped, there is no messages table (no logged contacts to learn from): only "
                "replenishment reminders and win-backs are decided, each valued with an assumed relative uplift "
                f"of the customer's purchase probability ({self._priors()}; reason code prior_uplift_no_model); "
                "offers are never sent (their cost is certain, their effect unknown)"
            )
            return self
        self._fit_uplift(tables, profiles, train_customers, attributes)
        return self

    def _set_order_values(self, profiles: CustomerProfiles) -> None:
        """`mean_order_value_` (everyone's mean order value) and `order_values_known_`."""
        freq = profiles.features_["frequency"].to_numpy()
        aov = profiles.features_["avg_order_value"].to_numpy()
        gross = np.nansum(np.nan_to_num(aov) * freq)
        self.order_values_known_ = bool(gross > 0)
        self.mean_order_value_ = float(gross / freq.sum()) if self.order_values_known_ else 1.0

    def _rules_mode(self, note: str) -> None:
        """No uplift model: replenishment reminders and win-backs valued with assumed priors."""
        self.mode_ = "rules"
        self.arm_names_ = ["none", "plain"]
        self.arm_costs_ = np.zeros(2)
        self.learner_arms_ = []
        self.uplift_ = self.learner_ = self.guard_ = None
        self.notes_.append(note)

    def _priors(self) -> dict[str, float]:
        return {**DEFAULT_PRIOR_RELATIVE_UPLIFT, **(self.prior_relative_uplift or {})}

    def _set_offers(self, offers: pd.DataFrame | None) -> None:
        if offers is None or len(offers) == 0:
            self.offer_ids_, self.offer_kinds_, self.offer_cost_table_ = [], [], {}
            self.notes_.append("no offers table: only messages without an offer are considered")
            return
        offers = offers.drop_duplicates(c.OFFER_ID)
        self.offer_ids_ = offers[c.OFFER_ID].astype(str).tolist()
        self.offer_kinds_ = offers[c.KIND].astype(str).tolist()
        # `offers.cost` is currency per redemption (what a campaign system records): the engine
        # charges it on every expected conversion after the offer (`arbitrate`, `_guard_values`)
        cost = pd.to_numeric(offers[c.COST], errors="coerce").fillna(0.0).astype(float)
        self.offer_cost_table_ = dict(zip(self.offer_ids_, cost, strict=True))

    def _history(self, tables: Tables, profiles: CustomerProfiles) -> CustomerHistory:
        history = getattr(profiles, "history_", None)
        if history is not None and history.as_of == profiles.as_of_:
            return history
        return CustomerHistory(tables, profiles.as_of_, profiles.conversion_window_days)

    def training_data(
        self, tables: Tables, profiles: CustomerProfiles, train_customers=None, sent_from=None
    ) -> dict | None:
        """The uplift training rows: one per message whose conversion window (its offer's
        `duration_days`, else `conversion_window_days`) closed before the profiles' time (and
        that was sent at or after `sent_from`, when given: the champion gate's new window).

        Returns X (every profile feature, attributes included, at the send time), names (the
        columns of X), arm (learner arm), y (converted within the window), opened (exposed: opened,
        or sent in the intent-to-treat modes), order_value, learner_arms (the engine arm of each
        learner arm), arm_labels (their names), costs (currency per redemption per learner arm),
        customer_id, sent_us and window_us (the row's moment and window, µs), channel (the
        message's; None for a control row); or None, with a
        note, when no uplift can be learned. Sets mode_,
        offer_ids_, offer_kinds_, arm_names_, arm_costs_.
        """
        messages = tables.messages
        as_of_us = int(to_us(profiles.as_of_)[0])
        windows = message_windows_days(messages, tables.offers, self.conversion_window_days)
        sent_us = to_us(messages[c.SENT_TS])
        keep = (sent_us != NAT_US) & (sent_us + (windows * US_PER_DAY).astype(np.int64) < as_of_us)
        if sent_from is not None:
            keep &= sent_us >= int(to_us(pd.Timestamp(sent_from))[0])
        if train_customers is not None:
            train = pd.Index(np.asarray(train_customers, dtype=str))
            keep &= messages[c.CUSTOMER_ID].astype(str).isin(train).to_numpy()
        offer_col = (
            messages[c.OFFER_ID] if c.OFFER_ID in messages else pd.Series(np.nan, index=messages.index)
        )
        known_offer = (offer_col.isna() | offer_col.astype(str).isin(self.offer_ids_)).to_numpy()
        if (keep & ~known_offer).any():
            self.notes_.append(
                f"{int((keep & ~known_offer).sum())} messages with offers not in the offers table were left out"
            )
        keep &= known_offer
        rows = messages.loc[keep].assign(_window_days=windows[keep])
        if self.max_training_messages is not None and len(rows) > self.max_training_messages:
            rows = rows.sample(self.max_training_messages, random_state=self.random_state).sort_index()
        if len(rows) == 0:
            self._rules_mode(
                "no message's conversion window closed before the profile time: no uplift can be learned "
                "yet; only replenishment reminders and win-backs, valued with assumed priors"
            )
            return None
        window_us = (rows["_window_days"].to_numpy() * US_PER_DAY).astype(np.int64)
        offer_idx = np.asarray(
            pd.Categorical(rows[c.OFFER_ID].astype(object), categories=self.offer_ids_).codes
            if c.OFFER_ID in rows
            else np.full(len(rows), -1),
            dtype=np.int64,
        )
        if self.offer_ids_ and (offer_idx >= 0).all():
            return self._control_training_data(tables, profiles, rows, offer_idx, window_us, train_customers)

        has_opens = c.OPENED_TS in rows and rows[c.OPENED_TS].notna().any()
        self.mode_ = "uplift" if has_opens else "plain_base"
        opened = rows[c.OPENED_TS].notna().to_numpy() if has_opens else np.ones(len(rows), dtype=bool)
        converted = rows[c.CONVERTED_TS] if c.CONVERTED_TS in rows else pd.Series(pd.NaT, index=rows.index)
        converted_us = to_us(converted)
        y = ((converted_us != NAT_US) & (converted_us < to_us(rows[c.SENT_TS]) + window_us)).astype(
            np.float64
        )
        # arms in the engine's numbering: 0 not exposed (unopened), 1 plain message, 2 + j offer j
        engine_arm = offer_idx + 2
        if self.mode_ == "uplift":
            engine_arm = np.where(opened, engine_arm, 0)
            control, treated = 0, [1, *range(2, 2 + len(self.offer_ids_))]
        else:
            self.notes_.append(
                "messages carry no opens: offers are learned against a message without offer (the base "
                "arm), every message counts as seen (p_open = 1) and a plain message is assumed to have "
                "no effect, so a message without offer is never sent for its own sake"
            )
            control, treated = 1, list(range(2, 2 + len(self.offer_ids_)))
        return self._learnable(tables, profiles, rows, engine_arm, control, treated, y, opened)

    def _learnable(
        self, tables, profiles, rows, engine_arm, control, treated, y, opened, X=None
    ) -> dict | None:
        """Keeps the arms with at least `min_arm_rows` rows (the control must have them too) and
        builds the training dict (see `training_data`)."""
        seen = "opened " if self.mode_ == "uplift" else ""
        n_engine = 2 + len(self.offer_ids_)
        counts = np.bincount(engine_arm, minlength=n_engine)
        learned = [k for k in treated if counts[k] >= self.min_arm_rows]
        # the arms' names in the learner's terms, by engine arm
        labels = {
            "uplift": ["unopened", "opened_plain", *(f"opened_{o}" for o in self.offer_ids_)],
            "plain_base": ["none", "plain", *self.offer_ids_],
            "offers_control": ["not_contacted", "plain", *self.offer_ids_],
        }[self.mode_]
        dropped = [labels[k] for k in treated if k not in learned]
        if counts[control] < self.min_arm_rows or not learned or len(np.unique(y)) < 2:
            self._rules_mode(
                "too little message history to learn uplift: every arm needs "
                f"{self.min_arm_rows} {seen}messages and both outcomes must occur ("
                + ", ".join(f"{labels[k]}: {int(counts[k])}" for k in [control, *treated])
                + f"; conversions {int(y.sum())} of {len(y)}); only replenishment reminders and win-backs are "
                "decided, valued with assumed priors"
            )
            return None
        if dropped:
            self.notes_.append(
                f"arms with fewer than {self.min_arm_rows} {seen}messages are not sent (no evidence of their "
                f"effect): {', '.join(dropped)}"
            )
        keep_rows = np.isin(engine_arm, [control, *learned])
        offers_kept = [k - 2 for k in learned if k >= 2]
        # renumber the engine's arms to the offers kept: none, plain, kept offers
        renumber = np.full(n_engine, -1, dtype=np.int64)
        renumber[:2] = [0, 1]
        renumber[np.asarray([k for k in learned if k >= 2], dtype=np.int64)] = 2 + np.arange(len(offers_kept))
        learner_arms = [int(renumber[k]) for k in [control, *learned]]
        to_learner = np.full(n_engine, -1, dtype=np.int64)
        to_learner[[control, *learned]] = np.arange(1 + len(learned))
        arm = to_learner[engine_arm[keep_rows]]
        rows = rows.loc[keep_rows] if X is None else rows[keep_rows]
        self.offer_ids_ = [self.offer_ids_[j] for j in offers_kept]
        self.offer_kinds_ = [self.offer_kinds_[j] for j in offers_kept]
        self.arm_names_ = ["none", "plain", *self.offer_ids_]
        self.arm_costs_ = np.array([0.0, 0.0, *(self.offer_cost_table_[o] for o in self.offer_ids_)])
        self.learner_arms_ = learner_arms
        if X is None:
            history = self._history(tables, profiles)
            features = history.features_at(rows[c.CUSTOMER_ID].to_numpy(), rows[c.SENT_TS])
            names = list(profiles.feature_names_)
            X = _model_matrix(features, names)
            order_value = self._order_value(features)
            customer_id = rows[c.CUSTOMER_ID].astype(str).to_numpy()
            sent_us = to_us(rows[c.SENT_TS])
            window_us = (rows["_window_days"].to_numpy() * US_PER_DAY).astype(np.int64)
            channel = rows[c.CHANNEL].astype(object).to_numpy()
        else:
            X, names, order_value, customer_id, sent_us, window_us, channel = (
                X["X"][keep_rows],
                X["names"],
                X["order_value"][keep_rows],
                X["customer_id"][keep_rows],
                X["sent_us"][keep_rows],
                X["window_us"][keep_rows],
                X["channel"][keep_rows],
            )
        arm_labels = [labels[k] for k in [control, *learned]]
        return {
            "X": X,
            "names": names,
            "arm": arm,
            "y": y[keep_rows],
            "opened": opened[keep_rows],
            "order_value": order_value,
            "learner_arms": learner_arms,
            "arm_labels": arm_labels,
            "costs": self.arm_costs_[learner_arms],
            "customer_id": customer_id,
            "sent_us": sent_us,
            "window_us": window_us,
            "channel": channel,
        }

    def _control_training_data(
        self, tables, profiles, rows, offer_idx, window_us, train_customers
    ) -> dict | None:
        """Every message carries an offer: the offers against each other and against customers
        who were not contacted in the same period.

        Control: for every message, one customer drawn at random among those seen before its send
        time t (an event or sign-up) who got no message within its window on either side of t
        (|sent - t| <= window), at the same moment t and with the same window (matched in time).
        The outcome of both is "a purchase (events) within the window after t": the messaging
        system's attribution has no counterpart for a customer who was not messaged. Arms: 0 not
        contacted, 1 + j offer j (sent, opened or not: intent to treat, p_open = 1). P(sent | x)
        comes from a cross-fitted model of message rows against control rows, the offer's share
        among sends from the data. Assumption: given the history features at t, whether a customer
        was contacted then is unrelated to whether they would have bought anyway.
        """
        self.mode_ = "offers_control"
        history = self._history(tables, profiles)
        t_us = to_us(rows[c.SENT_TS])
        msg_codes = history._codes(rows[c.CUSTOMER_ID].astype(str))
        universe = np.arange(len(history.customer_index), dtype=np.int64)
        if train_customers is not None:
            universe = history._codes(pd.unique(np.asarray(train_customers, dtype=str)).astype(object))
            universe = universe[universe < len(history.customer_index)]
        rng = np.random.default_rng(self.random_state)
        control_codes = np.full(len(rows), -1, dtype=np.int64)
        pending = np.arange(len(rows))
        for _ in range(CONTROL_DRAWS):
            if len(pending) == 0 or len(universe) == 0:
                break
            candidate = universe[rng.integers(len(universe), size=len(pending))]
            t, w = t_us[pending], window_us[pending]
            # messages sent within [t - w, t + w] (the stream counts rows strictly before a second)
            near = (
                history.sent.sums(candidate, t + w + US_PER_SECOND)[:, 0]
                - history.sent.sums(candidate, t - w)[:, 0]
            )
            seen = history.events.first_before(candidate, t) != NAT_US
            signup = history.signup_us[candidate]
            seen |= (signup != NAT_US) & (signup < t)
            ok = (near == 0) & seen
            control_codes[pending[ok]] = candidate[ok]
            pending = pending[~ok]
        matched = control_codes >= 0
        n_control = int(matched.sum())
        names = list(profiles.feature_names_)
        codes = np.concatenate([msg_codes, control_codes[matched]])
        times = np.concatenate([t_us, t_us[matched]])
        windows = np.concatenate([window_us, window_us[matched]])
        # a purchase (an order) within the window after t, from the events, for both kinds of rows
        orders = history.orders.sums(codes, times + windows)[:, 0] - history.orders.sums(codes, times)[:, 0]
        y = (orders > 0).astype(np.float64)
        ids = np.concatenate(
            [
                rows[c.CUSTOMER_ID].astype(str).to_numpy(dtype=object),
                history.customer_index.to_numpy(dtype=object)[control_codes[matched]],
            ]
        )
        features = history.features_at(
            ids, pd.DatetimeIndex(times.astype("datetime64[us]")).tz_localize("UTC")
        )
        engine_arm = np.concatenate([offer_idx + 2, np.zeros(n_control, dtype=np.int64)])
        sent = np.concatenate([np.ones(len(rows), dtype=bool), np.zeros(n_control, dtype=bool)])
        built = {
            "X": _model_matrix(features, names),
            "names": names,
            "order_value": self._order_value(features),
            "customer_id": ids.astype(str),
            "sent_us": times,
            "window_us": windows,
            "channel": np.concatenate(
                [rows[c.CHANNEL].astype(object).to_numpy(), np.full(n_control, None, dtype=object)]
            ),
        }
        self.metrics_["control"] = {
            "messages": int(len(rows)),
            "control_rows": n_control,
            "unmatched_messages": int(len(rows) - n_control),
            "purchase_rate_sent": float(y[: len(rows)].mean()),
            "purchase_rate_control": float(y[len(rows) :].mean()) if n_control else float("nan"),
        }
        treated = list(range(2, 2 + len(self.offer_ids_)))
        data = self._learnable(tables, profiles, np.arange(len(y)), engine_arm, 0, treated, y, sent, X=built)
        if data is not None:
            self.notes_.append(
                "every message carries an offer: the offers are learned against each other and against "
                f"{n_control} control rows, customers without any message within the window on either side "
                "of a message's send time, one drawn per message at the same moment "
                f"({len(rows) - n_control} messages found none); outcome for both: a purchase within the "
                "window (the offer's duration_days, else the default window) from the events, an offer "
                "counting as received when sent. Assumption: given their purchase and message history, "
                "whether customers were contacted at that moment is unrelated to whether they would have "
                "bought anyway"
            )
        return data

    def _fit_uplift(self, tables: Tables, profiles: CustomerProfiles, train_customers, attributes) -> None:
        data = self.training_data(tables, profiles, train_customers)
        if data is None:
            return
        arm, y, opened = data["arm"], data["y"], data["opened"]
        n_arms = len(data["learner_arms"])
        base_cols = [data["names"].index(f) for f in self.feature_names_]
        with fit_pool(self.fit_workers) as pool:
            propensity = self._exposure_propensity(data["X"][:, base_cols], arm, opened, n_arms, pool)
            candidates = {"without_attributes": self.feature_names_}
            if attributes and self.guard:
                candidates["with_attributes"] = [*self.feature_names_, *attributes]
            oofs = {}
            for label, names in candidates.items():
                X = data["X"][:, [data["names"].index(f) for f in names]]
                oofs[label] = self._guard_outcomes(X, arm, y, propensity, pool) if self.guard else None
            chosen = "without_attributes"
            if len(candidates) > 1:
                # the personalised policy's cross-fitted value with and without the attributes
                worth = {
                    label: ValueGuardedPolicy(confidence=0.5)
                    .fit(*self._guard_inputs(data, oof, propensity))
                    .validation_values_["personalised"]["value"]
                    for label, oof in oofs.items()
                }
                chosen = (
                    "with_attributes" if worth["with_attributes"] > worth["without_attributes"] else chosen
                )
                self.metrics_["attributes"] = {
                    "candidates": list(attributes),
                    "kept": chosen == "with_attributes",
                    "personalised_value_with": worth["with_attributes"],
                    "personalised_value_without": worth["without_attributes"],
                }
                self.notes_.append(
                    f"customer attributes {'kept' if chosen == 'with_attributes' else 'left out'} for uplift: "
                    f"the personalised policy's cross-fitted value per message is {worth['with_attributes']:.4g} "
                    f"with them, {worth['without_attributes']:.4g} without ({', '.join(attributes)})"
                )
            self.feature_names_ = list(candidates[chosen])
            X = data["X"][:, [data["names"].index(f) for f in self.feature_names_]]
            learner = MultiArmUpliftLearner(
                learner=self.learner, random_state=self.random_state, n_jobs=self.n_jobs
            )
            learner.fit(X, arm, y, propensity=propensity)
        self.learner_ = learner
        self.uplift_ = _BoosterUplift.from_learner(learner)
        labels = data["arm_labels"]
        counts = np.bincount(arm, minlength=n_arms)
        self.metrics_.update(
            {
                "mode": self.mode_,
                "training_messages": int(opened.sum()) if self.mode_ == "offers_control" else int(len(arm)),
                "training_rows": int(len(arm)),
                "arms": {name: int(k) for name, k in zip(labels, counts, strict=True)},
                "conversion_rate_by_arm": {name: float(y[arm == k].mean()) for k, name in enumerate(labels)},
                "open_rate": float(opened.mean()) if self.mode_ != "offers_control" else 1.0,
            }
        )
        if self.guard:
            oof = oofs[chosen]
            self._arm_uplift(data, oof, propensity)
            self._fit_guard(data, propensity, oof)

    def _exposure_propensity(self, X, arm, exposed, n_arms: int, pool=None) -> np.ndarray:
        """(n, K) estimated probabilities of each learner arm given x (never from the truth).

        Arm 0 is "not exposed" (unopened, or not contacted) in the uplift and offers_control
        modes: P(arm 0 | x) = 1 - P(exposed | x) from a cross-fitted LightGBM model, P(arm k | x) =
        P(exposed | x) × the share of arm k among exposed rows. In plain_base every row is a sent
        message: the arms' shares are the propensities (offers assigned independently of x)."""
        n = len(arm)
        if self.mode_ == "plain_base":
            share = np.bincount(arm, minlength=n_arms) / n
            return np.broadcast_to(share, (n, n_arms)).copy()
        p_open = np.empty(n)
        folds = StratifiedKFold(3, shuffle=True, random_state=self.random_state)
        params = {
            "n_estimators": 150,
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_child_samples": max(20, n // 200),
            "subsample": 0.8,
            "subsample_freq": 1,
            "random_state": self.random_state,
            "n_jobs": min(max(1, self.n_jobs), _MAX_JOBS),
            "verbose": -1,
        }

        def fold(tr: np.ndarray, te: np.ndarray) -> None:
            model = fit_estimator(lgb.LGBMClassifier(objective="binary", **params), X[tr], exposed[tr])
            p_open[te] = model.predict_proba(X[te])[:, 1]

        run_tasks([partial(fold, tr, te) for tr, te in folds.split(X, exposed)], pool)
        p_open = np.clip(p_open, 0.01, 0.99)
        share_exposed = np.bincount(arm[exposed], minlength=n_arms)[1:] / max(int(exposed.sum()), 1)
        out = np.empty((n, n_arms))
        out[:, 0] = 1.0 - p_open
        out[:, 1:] = p_open[:, None] * share_exposed[None, :]
        self.metrics_["open_model_mean_p" if self.mode_ == "uplift" else "sent_model_mean_p"] = float(
            p_open.mean()
        )
        return np.maximum(out, 1e-3)

    def _guard_outcomes(self, X, arm, y, propensity: np.ndarray, pool=None) -> np.ndarray:
        """Cross-fitted (out-of-fold) outcomes per arm of the training rows, for the guard."""
        learner = MultiArmUpliftLearner(
            learner=self.learner, random_state=self.random_state, n_jobs=self.n_jobs
        )
        return cross_fit_outcomes(
            learner,
            X,
            arm,
            y,
            propensity,
            n_splits=self.guard_folds,
            random_state=self.random_state,
            executor=pool,
        )

    def _guard_inputs(self, data: dict, oof: np.ndarray, propensity: np.ndarray):
        """(values, arm, reward, propensity) for `ValueGuardedPolicy.fit`, and the baseline b(x).

        Values and rewards are profits per row in currency: incremental margin (uplift × order
        value × margin rate) minus the offer's cost (`offers.cost`, currency per redemption) on
        every conversion. The reward carries a control variate, the cross-fitted predicted profit
        of arm 0, b(x) (see `_fit_guard`)."""
        arm, y, order_value = data["arm"], data["y"], data["order_value"]
        costs = np.asarray(data["costs"], dtype=np.float64)
        margin = self.policy_.margin_rate * order_value
        values = (oof - oof[:, [0]]) * margin[:, None] - (oof * costs[None, :] - oof[:, [0]] * costs[0])
        baseline = oof[:, 0] * (margin - costs[0])
        reward = y * (margin - costs[arm]) - baseline
        return values, arm, reward, propensity

    def _arm_uplift(self, data: dict, oof: np.ndarray, propensity: np.ndarray) -> None:
        """Average uplift of each arm over arm 0 with a 95 % interval: the doubly robust (AIPW)
        estimate from the cross-fitted outcomes, mean of Γ_k - Γ_0 with
        Γ_k = mu_k + 1[arm = k](y - mu_k) / e_k."""
        arm, y = data["arm"], data["y"]
        n, K = oof.shape
        hit = arm[:, None] == np.arange(K)[None, :]
        gamma = oof + hit * (y[:, None] - oof) / propensity
        out = {}
        for k in range(1, K):
            diff = gamma[:, k] - gamma[:, 0]
            half = _Z95 * diff.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
            out[data["arm_labels"][k]] = {
                "rows": int((arm == k).sum()),
                "uplift": float(diff.mean()),
                "ci95": [float(diff.mean() - half), float(diff.mean() + half)],
            }
        self.metrics_["arm_uplift"] = {
            "against": data["arm_labels"][0],
            "rows": int((arm == 0).sum()),
            "arms": out,
        }
        self.notes_.append(
            f"uplift per arm against {data['arm_labels'][0]} ({int((arm == 0).sum())} rows; conversion "
            "probability, doubly robust cross-fitted estimate with 95 % interval): "
            + "; ".join(
                f"{name} {v['uplift']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}] on {v['rows']} rows"
                for name, v in out.items()
            )
        )

    def _fit_guard(self, data: dict, propensity: np.ndarray, oof: np.ndarray) -> None:
        """`ValueGuardedPolicy` on cross-fitted values of the training rows (learner arms).

        Reward: the realised profit minus a control variate, the cross-fitted predicted profit of
        arm 0, b(x). b depends on x only, so every policy's IPW value moves by the same E[b] and
        the gains the guard tests stay unbiased, while their spread shrinks (the baseline
        conversions of "sure things" no longer add noise): on the generated data the gain's
        confidence interval is about 17 % narrower. Its confidence is `guard_confidence`
        ("validated": chosen on nested splits of these rows, see `ValueGuardedPolicy`).
        """
        values, arm, reward, propensity = self._guard_inputs(data, oof, propensity)
        margin = self.policy_.margin_rate * data["order_value"]
        costs = np.asarray(data["costs"], dtype=np.float64)
        baseline = oof[:, 0] * (margin - costs[0])
        self.guard_ = ValueGuardedPolicy(
            confidence=self.guard_confidence, random_state=self.random_state
        ).fit(values, arm, reward, propensity)
        names = data["arm_labels"]
        shift = float(baseline.mean())  # add E[b] back so the reported values are profits per row
        values_by_arm = {
            (names[int(k.split("_")[1])] if k.startswith("arm_") else k): {
                "value": v["value"] + shift,
                "ci95": [v["ci95"][0] + shift, v["ci95"][1] + shift],
            }
            for k, v in self.guard_.validation_values_.items()
        }
        best = names[self.guard_.best_fixed_arm_]
        self.metrics_["guard"] = {
            "fallback": bool(self.guard_.fallback_),
            "best_fixed_arm": best,
            "best_fixed_value": values_by_arm[best]["value"],
            "personalised_value": values_by_arm["personalised"]["value"],
            "personalised_share": float(self.guard_.personalised_share_),
            "confidence": self.guard_.confidence_,
            "confidence_scores": {str(k): v for k, v in self.guard_.confidence_scores_.items()},
            "validation_gain": self.guard_.validation_gain_,
            "validation_values": values_by_arm,
        }
        gain = self.guard_.validation_gain_
        served = "the best fixed arm" if self.guard_.fallback_ else "the personalised choice"
        self.notes_.append(
            f"guard: personalised choice {values_by_arm['personalised']['value']:.4g} per row against the best "
            f"fixed arm ({best}) {values_by_arm[best]['value']:.4g}, gain {gain['gain']:+.4g} (one-sided "
            f"{self.guard_.confidence_:.0%} lower bound {gain['lower_bound']:+.4g}"
            + (
                ", confidence chosen on nested splits of the training rows"
                if self.guard_confidence == "validated"
                else ""
            )
            + f"); serving {served}"
            + (" to every allowed customer" if self.guard_.fallback_ else "")
        )

    def _order_value(self, features) -> np.ndarray:
        """Expected value of an order: the customer's mean order value shrunk towards everyone's
        (1 for everyone when purchases carry no amounts).

        `features`: a frame of `CustomerProfiles.model_features` or a dict of its columns."""
        freq = np.nan_to_num(np.asarray(features["frequency"], dtype=np.float64))
        if not getattr(self, "order_values_known_", True):
            return np.ones(len(freq))
        aov = np.nan_to_num(np.asarray(features["avg_order_value"], dtype=np.float64))
        k = ORDER_VALUE_PRIOR_ORDERS
        return (aov * freq + k * self.mean_order_value_) / (freq + k)

    # ------------------------------------------------------------------------------------------
    # predictions per arm (the engine's arm order: none, plain, offers)
    def _arm_outcomes(self, features, rules_kind: np.ndarray | None = None) -> np.ndarray:
        """Conversion probability per engine arm; `features` as in `_order_value`.

        Learned arms come from the uplift model (`learner_arms_` maps them); an arm without a
        learned effect gets arm 0's probability (no effect) and is never sent (`_allowed_arms`).
        In plain_base the learner's arm 0 is the plain message, assumed to do nothing: it stands
        for "no action" too."""
        if self.mode_ == "rules":
            # purchase probability in the window from the churn model (or recent orders)
            churn = np.asarray(features["_churn_risk"], dtype=np.float64)
            p90 = 1.0 - churn
            recent = np.clip(np.nan_to_num(np.asarray(features["orders_90d"])) / 3.0, 0.0, 0.95)
            p90 = np.where(np.isfinite(p90), p90, recent)
            mu0 = 1.0 - (1.0 - np.clip(p90, 0.0, 0.999)) ** (self.conversion_window_days / 90.0)
            priors = self._priors()
            rel = np.array([priors.get(kind, 0.0) for kind in rules_kind])
            return np.column_stack([mu0, np.clip(mu0 * (1.0 + rel), 0.0, 1.0)])
        X = _model_matrix(features, self.feature_names_)
        learned = self.uplift_.predict_outcomes(X)
        out = np.repeat(learned[:, [0]], len(self.arm_names_), axis=1)
        out[:, self.learner_arms_] = learned
        return out

    def _intent_to_treat(self) -> bool:
        """True where the learned effects are those of a *sent* message (no opens in the data, or
        offers against uncontacted customers): p_open is then 1 on every allowed channel."""
        return self.mode_ in ("plain_base", "offers_control")

    def _allowed_arms(self) -> np.ndarray:
        """Engine arms that may be sent at all: those with a learned effect (arm 0 never is)."""
        allowed = np.zeros(len(self.arm_names_), dtype=bool)
        if self.mode_ == "rules":
            allowed[1] = True
        else:
            allowed[[k for k in self.learner_arms_ if k > 0]] = True
        allowed[0] = False
        return allowed

    def _fallback_arm(self) -> int | None:
        """The engine arm the guard falls back to (0 = no action), None when it personalises."""
        if self.guard_ is None or not self.guard_.fallback_:
            return None
        k = int(self.guard_.best_fixed_arm_)
        # the learner's arm 0 is never a send: unopened / not contacted, or in plain_base the
        # plain message, whose own effect is assumed nil
        return 0 if k == 0 else int(self.learner_arms_[k])

    # ------------------------------------------------------------------------------------------
    # deciding
    def _now(self, now) -> pd.Timestamp:
        now = self.profiles_.as_of_ if now is None else pd.Timestamp(now)
        return now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")

    def _plan(self, ids: np.ndarray, now: pd.Timestamp, ledger: ContactLedger) -> dict:
        """Who may be contacted, when at the earliest, on which channels, with which p_open."""
        policy = self.policy_
        profiles = self.profiles_
        n = len(ids)
        rows = profiles.rows(ids)
        known = rows >= 0
        safe = np.where(known, rows, 0)
        frame = profiles.frame_
        channels = tuple(ch for ch in policy.channels if ch in profiles.message_channels_)
        consent = np.zeros((n, len(channels)), dtype=bool)
        for j, ch in enumerate(channels):
            consent[:, j] = frame[f"consent_{ch}"].to_numpy(bool)[safe] & known
        control = in_control_group(ids, policy)
        now_us = int(to_us(now)[0])
        after = np.full(n, now_us, dtype=np.int64)
        last_buy = ledger.last_purchase(ids)
        buy_until = np.where(
            last_buy == NAT_US, NAT_US, last_buy + int(policy.cooldown_after_purchase_hours * US_PER_HOUR)
        )
        last_msg = ledger.last_contact_before(ids, np.full(n, now_us))
        msg_until = np.where(
            last_msg == NAT_US, NAT_US, last_msg + int(policy.cooldown_after_message_hours * US_PER_HOUR)
        )
        after = np.maximum(after, np.maximum(buy_until, msg_until))
        deadline = now_us + policy.horizon_hours * US_PER_HOUR
        channel_ok = consent.copy()
        # caps at the earliest moment (rechecked exactly at the chosen send time by the audit)
        over_all = np.zeros(n, dtype=bool)
        for cap, hours in ((policy.overall_caps.per_day, 24), (policy.overall_caps.per_week, 168)):
            if cap is not None:
                over_all |= ledger.count_near(ids, after, hours) >= cap
        for j, ch in enumerate(channels):
            caps = policy.caps_for(ch)
            for cap, hours in ((caps.per_day, 24), (caps.per_week, 168)):
                if cap is not None:
                    channel_ok[:, j] &= ledger.count_near(ids, after, hours, channel=ch) < cap
        channel_ok &= ~over_all[:, None]
        reason = np.full(n, None, dtype=object)
        reason[~known] = "unknown_customer"
        reason[known & control] = "control_group"
        pending = reason == None  # noqa: E711 (elementwise on an object array)
        reason[pending & ~consent.any(axis=1)] = "no_consent"
        pending = reason == None  # noqa: E711
        too_late = after > deadline
        reason[pending & too_late & (buy_until >= msg_until)] = "cooldown_after_purchase"
        reason[pending & too_late & (buy_until < msg_until)] = "cooldown_after_message"
        pending = reason == None  # noqa: E711
        reason[pending & ~channel_ok.any(axis=1)] = "frequency_cap"
        live = reason == None  # noqa: E711
        p_open = np.zeros((n, len(channels)))
        for j, ch in enumerate(channels):
            sel = np.flatnonzero(live & channel_ok[:, j])
            if len(sel) and not self._intent_to_treat():
                p_open[sel, j] = np.clip(self.channel_chooser_.open_probability(ids[sel], ch), 0.0, 1.0)
            elif len(sel):
                p_open[sel, j] = 1.0
        return {
            "rows": rows,
            "channels": channels,
            "consent": consent,
            "channel_ok": channel_ok & live[:, None],
            "live": live,
            "reason": reason,
            "after": after,
            "deadline": np.full(n, deadline, dtype=np.int64),
            "p_open": p_open,
            "timezone": np.where(known, frame[c.TIMEZONE].iloc[safe].to_numpy(dtype=object), "UTC"),
        }

    def _send_times(self, ids, channel_names, after, deadline, timezone) -> np.ndarray:
        out = np.full(len(ids), NAT_US, dtype=np.int64)
        for ch in pd.unique(channel_names):
            sel = np.flatnonzero(channel_names == ch)
            scores = self.send_time_chooser_.slot_scores(ids[sel], str(ch))
            out[sel] = next_send_times(
                after[sel], deadline[sel], timezone[sel], scores, self.policy_.quiet_hours
            )
        return out

    def channel_plan(self, customer_ids, now=None, ledger: ContactLedger | None = None) -> pd.DataFrame:
        """For each customer, the allowed channel with the highest p_open and its send time, ignoring
        value (what a fixed policy would use): customer_id, channel, send_at, p_open, reason
        (why nobody may be contacted; None when someone may), plus p_open_<channel> per channel
        (0 where not allowed)."""
        now = self._now(now)
        ledger = ledger if ledger is not None else self.ledger_
        ids = _unique_ids(customer_ids)
        plan = self._plan(ids, now, ledger)
        masked = np.where(plan["channel_ok"], plan["p_open"], -1.0)
        best = np.argmax(masked, axis=1) if len(plan["channels"]) else np.zeros(len(ids), dtype=np.int64)
        has = plan["live"] & plan["channel_ok"].any(axis=1)
        names = np.where(has, np.asarray(plan["channels"], dtype=object)[best], None)
        send = np.full(len(ids), NAT_US, dtype=np.int64)
        sel = np.flatnonzero(has)
        send[sel] = self._send_times(
            ids[sel], names[sel], plan["after"][sel], plan["deadline"][sel], plan["timezone"][sel]
        )
        reason = plan["reason"].copy()
        reason[has & (send == NAT_US)] = "no_send_slot"
        out = pd.DataFrame(
            {
                c.CUSTOMER_ID: ids,
                c.CHANNEL: np.where(send != NAT_US, names, None),
                "send_at": _datetimes(send),
                "p_open": np.where(has, plan["p_open"][np.arange(len(ids)), best], 0.0),
                "reason": reason,
                "earliest": _datetimes(plan["after"]),
                "latest": _datetimes(plan["deadline"]),
            }
        )
        for j, ch in enumerate(plan["channels"]):
            out[f"p_open_{ch}"] = np.where(plan["channel_ok"][:, j], plan["p_open"][:, j], 0.0)
        return out

    def decide(
        self,
        customer_ids,
        now=None,
        ledger: ContactLedger | None = None,
        record: bool = False,
        items: bool = True,
    ) -> pd.DataFrame:
        """One decision per distinct customer (`DECISION_COLUMNS`); send_at in UTC.

        `ledger`: contact history to respect (default: the one built at fit time). `record`: add the
        sends to that ledger, so later batches respect them. `items=False`: leave product_ids empty
        except for replenishment (no recommender calls; the decisions are the same otherwise), for
        summaries that only count actions and gains.
        """
        now = self._now(now)
        ledger = ledger if ledger is not None else self.ledger_
        ids = _unique_ids(customer_ids)
        if len(ids) == 0:
            return _empty_decisions(ids)
        parts = [self._decide_block(ids[lo : lo + _BATCH], now, ledger) for lo in range(0, len(ids), _BATCH)]
        out = pd.concat(parts, ignore_index=True)
        out = self._apply_capacity(out, ledger)
        if items:
            self._attach_items(out, now)
        if record:
            sends = out.loc[out["action"] != NO_ACTION]
            ledger.record(sends[c.CUSTOMER_ID], sends[c.CHANNEL], sends["send_at"])
        return out

    def warm(self) -> None:
        """Scores the channel model's tables and takes one decision (nothing recorded), so a service
        worker's first decision costs what the next ones do."""
        warm = getattr(self.channel_chooser_, "warm", None)
        if warm is not None:
            warm(self.policy_.channels)
        ids = self.profiles_.frame_[c.CUSTOMER_ID]
        if len(ids):
            self.decide_one(str(ids.iloc[0]))

    def decide_one(
        self, customer_id: str, now=None, ledger: ContactLedger | None = None, record: bool = False
    ) -> dict:
        """The decision for one customer as a dict; expected_gain holds its parts.

        The same decision as `decide([customer_id], now, ledger, record)`: the same `_decide_arrays`,
        without the DataFrame around it (and the recommender's single-request path for the items).
        Recording and per-day channel capacity (which counts the whole ledger) take `decide`.
        """
        if record or self.policy_.capacity_per_day:
            return _decision_dict(self.decide([customer_id], now, ledger, record).iloc[0])
        now = self._now(now)
        ledger = ledger if ledger is not None else self.ledger_
        ids = np.array([str(customer_id)], dtype=object)
        cols = self._decide_arrays(ids, now, ledger)
        row = {name: values[0] for name, values in cols.items()}
        if row["action"] in ITEM_ACTIONS and self.recommender_ is not None:
            row["product_ids"] = self._items_one(str(ids[0]))
        row["send_at"] = (
            None if row["send_at"] == NAT_US else pd.Timestamp(int(row["send_at"]), unit="us", tz="UTC")
        )
        return _decision_dict(row)

    def _items_one(self, customer_id: str) -> list[str]:
        """`_attach_items` for one customer."""
        k = self.policy_.items_per_message
        if hasattr(self.recommender_, "_recommend_one"):  # TwoStageRecommender: single-request path
            return list(self.recommender_.recommend(customer_id, k=k).product_ids)
        return list(self.recommender_.recommend_many([customer_id], k=k)[0].product_ids)

    def _decide_block(self, ids: np.ndarray, now: pd.Timestamp, ledger: ContactLedger) -> pd.DataFrame:
        return _decisions_frame(self._decide_arrays(ids, now, ledger))

    def _decide_arrays(self, ids: np.ndarray, now: pd.Timestamp, ledger: ContactLedger) -> dict:
        """The decisions of distinct `ids` as columns (`DECISION_COLUMNS`; send_at in int64 µs),
        before the batch-wide channel capacity and the recommended items."""
        policy = self.policy_
        profiles = self.profiles_
        n = len(ids)
        plan = self._plan(ids, now, ledger)
        rows, live = plan["rows"], plan["live"]
        frame = profiles.frame_
        K = len(self.arm_names_)
        out = _empty_columns(ids)
        reasons: list[list[str]] = [[r] if r is not None else [] for r in plan["reason"]]
        live_idx = np.flatnonzero(live)
        segment = np.full(n, None, dtype=object)
        tier = np.full(n, None, dtype=object)
        known = rows >= 0
        # gather the rows, then convert: a request converts one value, not a whole column
        segment[known] = frame["segment"].iloc[rows[known]].to_numpy(dtype=object)
        tier[known] = frame["value_tier"].iloc[rows[known]].to_numpy(dtype=object)
        due = (
            profiles.due_replenishments(ids[live_idx], now, k=policy.items_per_message)
            if len(live_idx)
            else []
        )
        has_due = np.zeros(n, dtype=bool)
        due_items = np.empty(n, dtype=object)
        for i, items in zip(live_idx, due, strict=True):
            due_items[i] = items
            has_due[i] = bool(items)

        if len(live_idx):
            feats = (
                profiles.model_feature_arrays(rows[live_idx], now)
                if len(live_idx) <= FEW_IDS
                else profiles.model_features(rows[live_idx], now)
            )
            rules_kind = None
            arm_ok = np.ones((len(live_idx), K), dtype=bool)
            if self.mode_ == "rules":
                feats["_churn_risk"] = frame["churn_risk"].iloc[rows[live_idx]].to_numpy(np.float64)
                dormant = segment[live_idx] == "dormant"
                rules_kind = np.where(
                    has_due[live_idx], "replenishment", np.where(dormant, "win_back", "product_message")
                )
            else:
                eligible = offer_eligibility(
                    self.offer_ids_,
                    segment[live_idx],
                    tier[live_idx],
                    frame["monetary"].iloc[rows[live_idx]].to_numpy(),
                    frame["bought_categories"].iloc[rows[live_idx]].to_numpy(dtype=object),
                    policy.offer_rules,
                )
                arm_ok[:, 2:] = eligible
            arm_ok &= self._allowed_arms()[None, :]
            mu = self._arm_outcomes(feats, rules_kind)
            forced = self._fallback_arm()
            # the guard's fallback serves the best fixed arm itself, to every customer the contact
            # policy and the offer's rules allow: that is the baseline the personalised choice
            # failed to beat, so the model's targeting (which did not prove itself) is not used
            min_gain = -np.inf if forced not in (None, 0) else policy.min_expected_gain
            message_cost = np.array([policy.cost_of_message(ch) for ch in plan["channels"]])
            result = arbitrate(
                mu,
                plan["p_open"][live_idx],
                self._order_value(feats),
                policy.margin_rate,
                self.arm_costs_,
                message_cost,
                arm_allowed=arm_ok,
                channel_allowed=plan["channel_ok"][live_idx],
                min_gain=min_gain,
                forced_arm=forced,
            )
            send = result["send"]
            idx_send = live_idx[send]
            channel_names = np.asarray(plan["channels"], dtype=object)
            chosen_channel = (
                channel_names[result["channel"][send]] if send.any() else np.array([], dtype=object)
            )
            send_at = self._send_times(
                ids[idx_send],
                chosen_channel,
                plan["after"][idx_send],
                plan["deadline"][idx_send],
                plan["timezone"][idx_send],
            )
            # the last guard: every send is checked against every rule before it is returned
            consented = (
                plan["consent"][idx_send, result["channel"][send]] if send.any() else np.array([], dtype=bool)
            )
            audit = audit_sends(
                ids[idx_send], chosen_channel, send_at, plan["timezone"][idx_send], consented, ledger, policy
            )
            broken = audit.to_numpy().any(axis=1) | (send_at == NAT_US)
            channel_names_arr = channel_names
            for pos in np.flatnonzero(~send):
                i = live_idx[pos]
                best = result["best_gain"][pos]
                if forced == 0:
                    reasons[i] = ["guard_fallback_no_action"]
                elif np.isfinite(best):
                    arm_name = self.arm_names_[result["best_arm"][pos]]
                    best_channel = channel_names_arr[result["best_channel"][pos]]
                    reasons[i] = ["no_positive_gain", f"best_candidate:{arm_name}@{best_channel}:{best:.4f}"]
                else:
                    reasons[i] = ["no_allowed_action"]
            audit_names = np.asarray(audit.columns)
            audit_values = audit.to_numpy()
            for pos in np.flatnonzero(broken):
                reasons[idx_send[pos]] = audit_names[audit_values[pos]].tolist() or ["no_send_slot"]
            ok = ~broken
            final = idx_send[ok]
            res_pos = np.flatnonzero(send)[ok]
            arms = result["arm"][res_pos]
            kinds = np.array([None, None, *self.offer_kinds_], dtype=object)[arms]
            dormant = segment[final] == "dormant"
            content_high = (kinds == "content") & (tier[final] == "high")
            replenish = (arms == 1) & has_due[final]
            actions = np.select(
                [dormant, content_high, replenish, arms == 1],
                [WIN_BACK, SERVICE_CONTENT, REPLENISHMENT, PRODUCT_MESSAGE],
                OFFER,
            ).astype(object)
            out["action"][final] = actions
            out[c.CHANNEL][final] = chosen_channel[ok]
            out["send_at"][final] = send_at[ok]
            out[c.OFFER_ID][final] = np.array([None, None, *self.offer_ids_], dtype=object)[arms]
            for col in ("uplift", "incremental_margin", "offer_cost", "contact_cost", "p_open", "p_convert"):
                out[col][final] = result[col][res_pos]
            out["expected_gain"][final] = result["gain"][res_pos]
            # customers who were weighed but got no action keep their baseline conversion probability
            out["p_convert"][live_idx[~send]] = result["p_convert"][~send]
            if self.mode_ == "rules":
                base_reason = "prior_uplift_no_model"
            elif forced is not None:
                base_reason = "guard_fallback_best_fixed_arm"
            else:
                base_reason = "personalised" if self.guard_ is not None else "unguarded"
            extra = np.select(
                [dormant, content_high, replenish],
                ["dormant_customer", "high_value_no_discount_needed", "replenishment_due"],
                "",
            )
            # a fallback send goes out whatever its predicted gain: it says so
            first = np.where(
                result["gain"][res_pos] > policy.min_expected_gain, "positive_expected_gain", "best_fixed_arm"
            )
            for i, head, more in zip(final, first, extra, strict=True):
                reasons[i] = [head, base_reason, more] if more else [head, base_reason]
            for i in final[replenish]:
                out["product_ids"][i] = list(due_items[i])
        out["reasons"] = _object_array(reasons)
        return out

    def _apply_capacity(self, out: pd.DataFrame, ledger: ContactLedger) -> pd.DataFrame:
        """At most `capacity_per_day[channel]` sends per channel and UTC day, highest gain first."""
        capacity = self.policy_.capacity_per_day
        if not capacity:
            return out
        contacts = ledger.contacts()
        used = (
            contacts.groupby([contacts[c.CHANNEL], contacts[c.TS].dt.floor("D")]).size()
            if len(contacts)
            else pd.Series(dtype=int)
        )
        sends = out.loc[(out["action"] != NO_ACTION) & out[c.CHANNEL].isin(list(capacity))]
        sends = sends.assign(_day=sends["send_at"].dt.floor("D")).sort_values(
            "expected_gain", ascending=False, kind="stable"
        )
        rank = sends.groupby([c.CHANNEL, "_day"]).cumcount().to_numpy()
        limit = np.array(
            [
                capacity[ch] - int(used.get((ch, day), 0))
                for ch, day in zip(sends[c.CHANNEL], sends["_day"], strict=True)
            ]
        )
        over = sends.index[rank >= limit]
        for i in over:
            out.at[i, "action"] = NO_ACTION
            out.at[i, "reasons"] = ["channel_capacity"]
        for col in ("expected_gain", "uplift", "incremental_margin", "offer_cost", "contact_cost", "p_open"):
            out.loc[over, col] = 0.0
        out.loc[over, [c.CHANNEL, c.OFFER_ID]] = None
        out.loc[over, "send_at"] = pd.NaT
        return out

    def _attach_items(self, out: pd.DataFrame, now: pd.Timestamp) -> None:
        """Recommended products for sends that show products (replenishment already has its items)."""
        need = out.index[out["action"].isin(list(ITEM_ACTIONS))]
        if self.recommender_ is None or len(need) == 0:
            return
        k = self.policy_.items_per_message
        ids = out.loc[need, c.CUSTOMER_ID].tolist()
        items: list[list[str]] = []
        for lo in range(0, len(ids), _RECOMMEND_BATCH):
            recs = self.recommender_.recommend_many(ids[lo : lo + _RECOMMEND_BATCH], k=k)
            items.extend(r.product_ids for r in recs)
        out.loc[need, "product_ids"] = pd.Series(items, index=need, dtype=object)

    # ------------------------------------------------------------------------------------------
    # what the engine would have sent: the champion gate values it on logged messages
    def message_choices(self, customer_ids, sent_us, channels=None) -> tuple[np.ndarray, np.ndarray]:
        """The arm ("none", "plain" or an offer id) and the channel this engine would have sent
        each customer at each moment (int64 µs), from its own state, never refitted: its profiles
        as fitted with the time-relative features moved to the moment, its uplift model, the
        guard's fallback, the offer rules, its offer costs and its p_open, arbitrated as `decide`
        does, on the given channel (`channels[i]`; None: any channel the customer consented to).
        Unknown customers, the control group and a channel the contact policy or the customer's
        consent rule out get "none". Caps, cooldowns and quiet hours are left out: they decide
        when, not what, and the logged messages were already sent under the sender's."""
        ids = np.asarray(customer_ids, dtype=object).astype(str)
        t_us = np.asarray(sent_us, dtype=np.int64)
        n = len(ids)
        wanted = np.full(n, None, dtype=object) if channels is None else np.asarray(channels, dtype=object)
        arms = np.full(n, "none", dtype=object)
        chosen = np.full(n, None, dtype=object)
        policy, profiles = self.policy_, self.profiles_
        usable = tuple(ch for ch in policy.channels if ch in profiles.message_channels_)
        rows = profiles.rows(ids)
        live = np.flatnonzero((rows >= 0) & ~in_control_group(ids, policy))
        if not usable or len(live) == 0:
            return arms, chosen
        r, live_ids = rows[live], ids[live]
        frame = profiles.frame_
        any_channel = pd.isna(wanted[live])
        channel_ok = np.zeros((len(live), len(usable)), dtype=bool)
        p_open = np.ones((len(live), len(usable)))
        for j, ch in enumerate(usable):
            channel_ok[:, j] = frame[f"consent_{ch}"].to_numpy(bool)[r] & (any_channel | (wanted[live] == ch))
            sel = np.flatnonzero(channel_ok[:, j])
            if len(sel) and not self._intent_to_treat():
                p_open[sel, j] = np.clip(self.channel_chooser_.open_probability(live_ids[sel], ch), 0.0, 1.0)
        feats = profiles.model_features_at(r, t_us[live])
        segment = frame["segment"].to_numpy(dtype=object)[r]
        rules_kind = None
        arm_ok = np.ones((len(live), len(self.arm_names_)), dtype=bool)
        if self.mode_ == "rules":
            feats["_churn_risk"] = frame["churn_risk"].to_numpy(np.float64)[r]
            due = profiles.replenishment_due_at(live_ids, t_us[live])
            dormant = segment == "dormant"
            rules_kind = np.where(due, "replenishment", np.where(dormant, "win_back", "product_message"))
        else:
            arm_ok[:, 2:] = offer_eligibility(
                self.offer_ids_,
                segment,
                frame["value_tier"].to_numpy(dtype=object)[r],
                frame["monetary"].to_numpy()[r],
                frame["bought_categories"].to_numpy(dtype=object)[r],
                policy.offer_rules,
            )
        arm_ok &= self._allowed_arms()[None, :]
        forced = self._fallback_arm()
        result = arbitrate(
            self._arm_outcomes(feats, rules_kind),
            p_open,
            self._order_value(feats),
            policy.margin_rate,
            self.arm_costs_,
            np.array([policy.cost_of_message(ch) for ch in usable]),
            arm_allowed=arm_ok,
            channel_allowed=channel_ok,
            min_gain=-np.inf if forced not in (None, 0) else policy.min_expected_gain,
            forced_arm=forced,
        )
        send = result["send"]
        arms[live[send]] = np.asarray(self.arm_names_, dtype=object)[result["arm"][send]]
        chosen[live[send]] = np.asarray(usable, dtype=object)[result["channel"][send]]
        return arms, chosen

    def outcomes_at(self, customer_ids, sent_us, labels: list[str]) -> np.ndarray:
        """(n, len(labels)) conversion probabilities this engine predicts for each customer at
        each moment (its own state, as `message_choices`) after seeing arm `labels[k]` ("none":
        no message; an arm it has not learned: no effect); NaN where it has no uplift model or
        does not know the customer."""
        ids = np.asarray(customer_ids, dtype=object).astype(str)
        out = np.full((len(ids), len(labels)), np.nan)
        rows = self.profiles_.rows(ids)
        known = np.flatnonzero(rows >= 0)
        if self.mode_ == "rules" or self.uplift_ is None or len(known) == 0:
            return out
        feats = self.profiles_.model_features_at(rows[known], np.asarray(sent_us, dtype=np.int64)[known])
        mu = self._arm_outcomes(feats)
        position = {name: j for j, name in enumerate(self.arm_names_)}
        for k, name in enumerate(labels):
            out[known, k] = mu[:, position.get(name, 0)]
        return out

    # ------------------------------------------------------------------------------------------
    # persistence
    def save(self, folder: str | Path) -> Path:
        """Engine, profiles and contact history in one folder (the choosers' models are separate)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.profiles_.save(folder / "profiles")
        uplift = self.uplift_.save(folder / "uplift") if self.uplift_ is not None else None
        guard = None
        if self.guard_ is not None:
            guard = {
                "params": self.guard_.get_params(),
                "confidence": float(self.guard_.confidence_),
                "n_arms": int(self.guard_.n_arms_),
                "best_fixed_arm": int(self.guard_.best_fixed_arm_),
                "fallback": bool(self.guard_.fallback_),
                "validation_values": self.guard_.validation_values_,
                "validation_gain": self.guard_.validation_gain_,
                "personalised_share": float(self.guard_.personalised_share_),
            }
        contacts = self.ledger_.contacts()
        contacts.to_parquet(folder / "ledger_contacts.parquet", index=False)
        pd.DataFrame(
            {
                c.CUSTOMER_ID: self.ledger_.last_purchase_.index.astype(str),
                "last_purchase_us": self.ledger_.last_purchase_.to_numpy(),
            }
        ).to_parquet(folder / "ledger_purchases.parquet", index=False)
        params = self.get_params()
        params["policy"] = None
        meta = {
            "format_version": FORMAT_VERSION,
            "params": params,
            "policy": self.policy_.to_dict(),
            "mode": self.mode_,
            "offer_ids": self.offer_ids_,
            "offer_kinds": self.offer_kinds_,
            "offer_cost_table": self.offer_cost_table_,
            "arm_names": self.arm_names_,
            "arm_costs": self.arm_costs_.tolist(),
            "learner_arms": [int(k) for k in self.learner_arms_],
            "feature_names": self.feature_names_,
            "mean_order_value": self.mean_order_value_,
            "order_values_known": bool(self.order_values_known_),
            "uplift": uplift,
            "guard": guard,
            "choosers": {"channel": self.channel_chooser_.name, "send_time": self.send_time_chooser_.name},
            "metrics": self.metrics_,
            "notes": self.notes_,
        }
        (folder / "nba.json").write_text(json.dumps(meta, indent=2, default=_json_default))
        return folder

    @classmethod
    def load(
        cls, folder: str | Path, recommender=None, channel_model=None, send_time_model=None
    ) -> NextBestActionEngine:
        """An engine saved by `save`; pass the recommender and the channel / send-time models again
        (they are registered on their own); without them the fallbacks are used."""
        folder = Path(folder)
        meta = read_model_meta(folder, "nba.json", "next-best-action", (FORMAT_VERSION,))
        engine = cls(**{**meta["params"], "policy": ContactPolicy.from_dict(meta["policy"])})
        engine.policy_ = engine.policy
        engine.profiles_ = CustomerProfiles.load(folder / "profiles")
        engine.recommender_ = recommender
        engine.mode_ = meta["mode"]
        engine.offer_ids_ = list(meta["offer_ids"])
        engine.offer_kinds_ = list(meta["offer_kinds"])
        engine.offer_cost_table_ = dict(meta["offer_cost_table"])
        engine.arm_names_ = list(meta["arm_names"])
        engine.arm_costs_ = np.asarray(meta["arm_costs"], dtype=np.float64)
        engine.feature_names_ = list(meta["feature_names"])
        engine.mean_order_value_ = float(meta["mean_order_value"])
        engine.order_values_known_ = bool(meta.get("order_values_known", True))
        # engines saved before the arm map: exposure arms were the engine's, plain_base's one up
        default_arms = {
            "uplift": range(len(engine.arm_names_)),
            "plain_base": range(1, len(engine.arm_names_)),
        }
        engine.learner_arms_ = [int(k) for k in meta.get("learner_arms", default_arms.get(engine.mode_, []))]
        engine.metrics_ = meta["metrics"]
        engine.notes_ = list(meta["notes"])
        engine.learner_ = None
        engine.uplift_ = (
            _BoosterUplift.load(folder / "uplift", meta["uplift"], engine.n_jobs)
            if meta["uplift"] is not None
            else None
        )
        engine.guard_ = None
        if meta["guard"] is not None:
            g = meta["guard"]
            guard = ValueGuardedPolicy(**g["params"])
            guard.confidence_ = float(g.get("confidence", g["params"]["confidence"]))
            guard.confidence_scores_ = {}
            guard.n_arms_ = g["n_arms"]
            guard.best_fixed_arm_ = g["best_fixed_arm"]
            guard.fallback_ = g["fallback"]
            guard.validation_values_ = g["validation_values"]
            guard.validation_gain_ = g["validation_gain"]
            guard.personalised_share_ = g["personalised_share"]
            engine.guard_ = guard
        ledger = ContactLedger()
        contacts = pd.read_parquet(folder / "ledger_contacts.parquet")
        ledger.record(contacts[c.CUSTOMER_ID], contacts[c.CHANNEL], contacts[c.TS])
        purchases = pd.read_parquet(folder / "ledger_purchases.parquet")
        ledger.last_purchase_ = pd.Series(
            purchases["last_purchase_us"].to_numpy(np.int64),
            index=purchases[c.CUSTOMER_ID].astype(str).to_numpy(),
        )
        engine.ledger_ = ledger
        engine.channel_chooser_ = (
            ChannelModelChooser(channel_model)
            if channel_model is not None
            else HistoryOpenRates(engine.profiles_)
        )
        engine.send_time_chooser_ = (
            SendTimeModelChooser(send_time_model)
            if send_time_model is not None
            else ActivityHoursChooser(engine.profiles_)
        )
        return engine


# ----------------------------------------------------------------------------------------------
# Off-policy value of an engine's choices on logged messages (the champion gate)
@dataclass
class PolicyValue:
    """An engine's off-policy value on a `LoggedWindow`: `value` (profit per row, currency),
    `terms` (per row: their mean is the value), `sends` (share of rows it would have sent to) and
    `unvalued` (share of rows where it would have sent an arm the window never logged, valued as
    no action)."""

    value: float
    terms: np.ndarray
    sends: float
    unvalued: float


@dataclass
class LoggedWindow:
    """Logged messages of a window (or, when every message carries an offer, messages and matched
    customers who were not contacted), ready to value any engine's choices off-policy with the
    guard's estimator: inverse propensity weighting with the exposure propensities estimated on
    these rows (`logged_window`).

    `labels[k]`: the name of logged arm k in the engine's terms ("none": not exposed, i.e. an
    unopened message or a customer not contacted; "plain"; an offer id; in mode "plain_base" arm 0
    is the plain message, which stands for no action as it does when the engine learns);
    `arm`, `propensity[i, k]` = P(arm k | x_i), `exposure` = P(a message sent is seen | x), `y`
    (converted within the window), `order_value`, `channel` (None for a control row), and the
    valuation's economics (`margin_rate`, `offer_costs` in currency per redemption,
    `message_costs` per channel).
    """

    mode: str
    labels: list[str]
    arm: np.ndarray
    propensity: np.ndarray
    exposure: np.ndarray
    y: np.ndarray
    order_value: np.ndarray
    customer_id: np.ndarray
    sent_us: np.ndarray
    channel: np.ndarray
    margin_rate: float
    offer_costs: dict[str, float]
    message_costs: dict[str, float]

    def __len__(self) -> int:
        return len(self.arm)

    def value(self, choices, channels, outcomes: np.ndarray | None = None) -> PolicyValue:
        """The value per row of sending `choices[i]` ("none", "plain" or an offer id) on
        `channels[i]` at row i's moment, minus the messages' cost. Profit = conversion × (margin
        rate × order value - the offer's cost per redemption): every conversion after an offer
        message is a redemption, opened or not, as the engine counts it. With opens (mode
        "uplift") a message the engine sends is seen with the estimated open probability and
        otherwise acts as no message: π(arm k) = P(open | x), π(not exposed) = 1 - P(open | x);
        without opens, or against customers not contacted, a send is the arm itself.

        Inverse propensity weighting: the mean of π(logged | x) / P(logged | x) × profit. With
        `outcomes` (n, K: a conversion probability per logged arm from models fitted before the
        window, NaN where there is none) it is doubly robust, as the guard's arm estimates are:
        the predicted profit under π plus the weighted residual of the logged row; the outcome
        models only reduce the spread (they never saw the window's outcomes)."""
        choices = np.asarray(choices, dtype=object)
        index = {name: k for k, name in enumerate(self.labels)}
        base = 0  # "none": not exposed (in plain_base: the plain message, assumed to do nothing)
        k = np.array([base if x == "none" else index.get(x, -1) for x in choices.tolist()], dtype=np.int64)
        send = choices != "none"
        unvalued = send & (k < 0)
        send &= ~unvalued
        k = np.where(send, k, base)
        logged = self.arm
        n, K = self.propensity.shape
        rows = np.arange(n)
        # π(arm j | x) for every arm: a send of k is seen with P(open) in the uplift mode
        pi = np.zeros((n, K))
        if self.mode == "uplift":
            seen = np.where(send, self.exposure, 0.0)
            pi[rows, 0] = 1.0 - seen
            pi[rows, k] += seen
        else:
            pi[rows, k] = 1.0
        cost_of = np.array([self.offer_costs.get(name, 0.0) for name in self.labels])
        # the offer a conversion pays for: the arm's, and for an unseen message the offer the
        # engine sends (an unopened message of any offer acts as no message)
        cost = np.broadcast_to(cost_of, (n, K)).copy()
        cost[:, 0] = np.where(send, cost_of[k], cost_of[0])
        unit = self.margin_rate * self.order_value[:, None] - cost  # profit of one conversion, per arm
        predicted = np.zeros((n, K)) if outcomes is None else np.nan_to_num(np.asarray(outcomes, float))
        p_logged = self.propensity[rows, logged]
        residual = (self.y - predicted[rows, logged]) * unit[rows, logged]
        channels = np.asarray(channels, dtype=object)
        contact = np.array(
            [self.message_costs.get(ch, 0.0) if ch is not None else 0.0 for ch in channels.tolist()]
        )
        terms = (
            (pi * predicted * unit).sum(axis=1)
            + pi[rows, logged] / p_logged * residual
            - np.where(send, contact, 0.0)
        )
        return PolicyValue(
            value=float(terms.mean()),
            terms=terms,
            sends=float(send.mean()),
            unvalued=float(unvalued.mean()),
        )


def logged_window(
    tables: Tables,
    profiles: CustomerProfiles,
    sent_from,
    policy: ContactPolicy | None = None,
    conversion_window_days: float = 14.0,
    max_messages: int | None = None,
    random_state: int | None = 0,
    n_jobs: int = 1,
) -> tuple[LoggedWindow | None, str]:
    """The messages sent at or after `sent_from` whose conversion window closed before the
    profiles' time (`profiles`: fitted on all of `tables`), as the engine reads messages to learn
    (`NextBestActionEngine.training_data`: the same modes, arms, outcomes, control rows and
    features at the send time), with every arm kept, and the exposure propensities estimated
    on them (cross-fitted, as the guard's). Returns (window, "") or (None, why not)."""
    if tables.messages is None or len(tables.messages) == 0:
        return None, "there is no messages table"
    reader = NextBestActionEngine(
        policy=policy,
        conversion_window_days=conversion_window_days,
        min_arm_rows=1,
        max_training_messages=max_messages,
        random_state=random_state,
        n_jobs=n_jobs,
    )
    reader.policy_ = policy if policy is not None else load_contact_policy()
    reader.profiles_ = profiles
    reader.notes_, reader.metrics_ = [], {}
    reader._set_order_values(profiles)
    reader._set_offers(tables.offers)
    sent = to_us(tables.messages[c.SENT_TS])
    since = int(((sent != NAT_US) & (sent >= int(to_us(pd.Timestamp(sent_from))[0]))).sum())
    if since == 0:
        return None, "no message was sent since"
    data = reader.training_data(tables, profiles, sent_from=sent_from)
    if data is None:
        note = reader.notes_[-1] if reader.notes_ else ""
        if note.startswith("no message's conversion window closed"):
            return None, f"none of the {since} messages sent since has its conversion window closed"
        return None, f"the {since} messages sent since are too few to value them ({note.split('; only')[0]})"
    arm, exposed = data["arm"], data["opened"]
    if reader.mode_ != "plain_base" and min(int(exposed.sum()), int((~exposed).sum())) < 3:
        return None, (
            f"{len(arm)} rows, {int(exposed.sum())} of them "
            f"{'opened' if reader.mode_ == 'uplift' else 'contacted'}: too few to estimate who is reached"
        )
    propensity = reader._exposure_propensity(data["X"], arm, exposed, len(data["learner_arms"]))
    labels = [reader.arm_names_[k] for k in data["learner_arms"]]
    if reader.mode_ == "plain_base":
        labels[0] = "plain"
    return (
        LoggedWindow(
            mode=reader.mode_,
            labels=labels,
            arm=arm,
            propensity=propensity,
            exposure=1.0 - propensity[:, 0] if reader.mode_ == "uplift" else np.ones(len(arm)),
            y=data["y"],
            order_value=data["order_value"],
            customer_id=data["customer_id"],
            sent_us=data["sent_us"],
            channel=data["channel"],
            margin_rate=reader.policy_.margin_rate,
            offer_costs={o: float(v) for o, v in reader.offer_cost_table_.items()},
            message_costs={ch: reader.policy_.cost_of_message(ch) for ch in reader.policy_.channels},
        ),
        "",
    )


# ----------------------------------------------------------------------------------------------
def _model_matrix(features, names: list[str]) -> np.ndarray:
    """Features as the uplift learner takes them: float64, unknown values as a sentinel.

    (The learner's input check refuses NaN; a value below every real one lets LightGBM put
    "unknown" on its own side of a split, e.g. the recency of a customer who never bought.)
    `features`: a frame, or a dict of columns (`CustomerProfiles.model_feature_arrays`).
    """
    if isinstance(features, pd.DataFrame):
        X = features[names].to_numpy(np.float64)
    else:
        X = np.column_stack([np.asarray(features[name], dtype=np.float64) for name in names])
    return np.where(np.isfinite(X), X, MISSING)


def _unique_ids(customer_ids) -> np.ndarray:
    ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str)
    return ids.drop_duplicates().to_numpy(dtype=object)


def _datetimes(us) -> pd.Series:
    values = np.asarray(us, dtype=np.int64)
    return pd.Series(pd.DatetimeIndex(values.astype("datetime64[us]")).tz_localize("UTC"))


def _object_array(values: list) -> np.ndarray:
    """A 1-d object array of the given objects (lists stay lists, not a second axis)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _empty_columns(ids: np.ndarray) -> dict[str, np.ndarray]:
    """`DECISION_COLUMNS` for no action, send_at as int64 µs (NaT = int64 min)."""
    n = len(ids)
    return {
        c.CUSTOMER_ID: np.asarray(ids, dtype=object),
        "action": np.full(n, NO_ACTION, dtype=object),
        c.CHANNEL: np.full(n, None, dtype=object),
        "send_at": np.full(n, NAT_US, dtype=np.int64),
        c.OFFER_ID: np.full(n, None, dtype=object),
        "product_ids": _object_array([[] for _ in range(n)]),
        "expected_gain": np.zeros(n),
        "reasons": _object_array([[] for _ in range(n)]),
        "uplift": np.zeros(n),
        "incremental_margin": np.zeros(n),
        "offer_cost": np.zeros(n),
        "contact_cost": np.zeros(n),
        "p_open": np.zeros(n),
        "p_convert": np.full(n, np.nan),
    }


def _decisions_frame(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """The decisions table of `_empty_columns`-shaped columns (send_at as UTC datetimes)."""
    out = {}
    for name in DECISION_COLUMNS:
        values = cols[name]
        if name == "send_at":
            out[name] = _datetimes(values)
        elif name in (c.CHANNEL, c.OFFER_ID, "product_ids", "reasons"):
            out[name] = pd.Series(values, dtype=object)  # None stays None; lists stay lists
        else:
            out[name] = values
    return pd.DataFrame(out)


def _empty_decisions(ids: np.ndarray) -> pd.DataFrame:
    return _decisions_frame(_empty_columns(ids))


def _decision_dict(row) -> dict:
    """One decision (a row of the decisions table, or a dict of its values) as `decide_one` returns it."""
    send_at = row["send_at"]
    return {
        c.CUSTOMER_ID: row[c.CUSTOMER_ID],
        "action": row["action"],
        c.CHANNEL: row[c.CHANNEL],
        "send_at": None if send_at is None or pd.isna(send_at) else send_at.isoformat(),
        c.OFFER_ID: row[c.OFFER_ID],
        "product_ids": list(row["product_ids"]),
        "expected_gain": {
            "value": float(row["expected_gain"]),
            "uplift": float(row["uplift"]),
            "incremental_margin": float(row["incremental_margin"]),
            "offer_cost": float(row["offer_cost"]),
            "contact_cost": float(row["contact_cost"]),
            "p_open": float(row["p_open"]),
            "p_convert": None if pd.isna(row["p_convert"]) else float(row["p_convert"]),
        },
        "reasons": list(row["reasons"]),
    }


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
