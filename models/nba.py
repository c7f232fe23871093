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
                         - cost_a * order_value * P(convert | a, ch)                (offer cost)
                         - message_cost(ch)                                         (contact cost)

with mu_0 the conversion probability without the message and mu_a the one of a customer who has
seen the message. The offer's cost counts on every redemption, including by customers who would
have bought anyway (P(convert | a) includes mu_0): that is `models.uplift.incremental_value`. Every
conversion in the window after an offer message is taken as a redemption, opened or not, because
that is how the logged revenue is booked (net of the offer). A customer for whom nothing has a gain
above the policy's `min_expected_gain` gets no action, with the reason.

Where the uplift comes from (the identification choice). The logged messages carry offers drawn
at random (an explore share of sends) or no offer, and a 5 % holdout got no message at all. The
holdout cannot serve as control for the messages' conversion label: that label is the messaging
system's attribution within 14 days, which has no counterpart for a customer who was not messaged,
and any-purchase-within-14-days is not comparable either (on the generated data messaged "sure
things" buy at 75 % against 32 % in the holdout, a gap no message causes). Instead the engine uses
*exposure*: a message that was not opened was not seen, so it acts like no message. The uplift
learner (`MultiArmUpliftLearner`, X-learner by default) is trained on arms

    0 = message not opened (control), 1 = opened, no offer, 1 + j = opened with offer j,

with features known at the send time (`models.profile.CustomerHistory`, leak-free), and outcome
"converted within the window". Opening is not randomised, so it is adjusted for by the features
(customer-level: history, open and conversion rates); the offer is randomised by the logging
policy independently of the customer, so among opened messages the offer comparison is a
randomised one. The propensities of the exposure arms are estimated, never taken from the truth:
P(not opened | x) = 1 - p_open(x) from a cross-fitted LightGBM open model, P(arm 1 + j | x) =
p_open(x) * share of that arm among opened messages. They weight the guard's IPW estimates (the
X-learner only uses the arms' shares to blend its two estimates). Assumption to keep in mind: an
unopened message has no effect (it may, through the subject line or the preview).

Without opens in the messages table the engine trains on sent messages with "no offer" as the base
arm (p_open = 1) and assumes a plain message has no effect: it can then only choose offers against
a plain message. Without a messages table there is no uplift model at all (`mode_ = "rules"`):
replenishment reminders and win-backs only, valued with an *assumed* relative uplift
(`prior_relative_uplift`) of the purchase probability from the churn model, never offers (their
cost is certain, their effect unknown); every such decision carries the reason `prior_uplift_no_model`.

Guard. `ValueGuardedPolicy` is fitted on cross-fitted (out-of-fold) values of the training
messages at the exposure level with the estimated propensities: personalised choices are used only
if their IPW gain over the best *fixed* arm (e.g. "no action for everyone" or "the 10 % discount to
everyone seen") has a one-sided lower confidence bound above 0; otherwise the best fixed arm goes
to every customer the contact policy allows and for whom it pays (no arm at all when the best fixed
arm is "not exposed"). The reward carries a control variate (see `_fit_guard`). Default confidence
0.8, not the library's 0.9: an opened message with a given offer is rare (propensity about 0.025),
so on ~100k training messages the gain's standard error is about 0.15 per message against true
gains of 0.2-0.3; at 0.9 the guard would reject personalisation that the truth of the generated
data shows to be worth about four times "content to everyone".

Channel and send time. p_open per (customer, channel) comes from a `ChannelChooser`: the channel
model's engagement probability when one is given (`ChannelModelChooser`), else the customer's
smoothed open rate per channel from the message history (`HistoryOpenRates`). The send time is the
best allowed slot from a `SendTimeChooser`'s weekly local scores: the send-time model's engagement
grid (`SendTimeModelChooser`) or the customer's activity hours (`ActivityHoursChooser`); consent,
quiet hours, caps and cooldowns are applied in one place, `models.contact_policy`.

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
from models.contact_policy import (
    NAT_US,
    US_PER_HOUR,
    ContactLedger,
    ContactPolicy,
    audit_sends,
    in_control_group,
    load_contact_policy,
    next_send_times,
    offer_eligibility,
)
from models.fitting import (  # on the Dask cluster of `omni train` when one is active
    fit_estimator,
    fit_pool,
    run_tasks,
)
from models.profile import CustomerHistory, CustomerProfiles, _us
from models.uplift import (
    MultiArmUpliftLearner,
    ValueGuardedPolicy,
    cross_fit_outcomes,
    incremental_value,
    realised_value,
)

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
    """Adapter: `models.channel.ChannelModel.predict_proba(...)['probability']` (engagement)."""

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
    a bump around `default_hour` for customers without events."""

    name = "activity_hours"

    def __init__(self, profiles: CustomerProfiles, default_hour: int = 10):
        self.profiles = profiles
        self.default_hour = default_hour

    def slot_scores(self, customer_ids, channel: str) -> np.ndarray:
        rows = self.profiles.rows(customer_ids)
        hours = np.arange(24)
        dist = np.abs((hours - self.default_hour + 12) % 24 - 12)
        prior = np.exp(-0.5 * (dist / 2.0) ** 2)
        prior = prior / prior.sum()
        scores = np.tile(prior, (len(rows), 1))
        known = rows >= 0
        activity = self.profiles.activity_hours_[rows[known]].astype(np.float64)
        # a little of the prior breaks ties between hours the customer was never seen at
        scores[known] = activity + 0.05 * prior
        return np.tile(scores, (1, 7))


class SendTimeModelChooser:
    """Adapter: `models.send_time.SendTimeModel.score_grid` (engagement per local weekly slot)."""

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
    as a fraction of the order value (0 for arms 0 and 1); message_cost (C,); arm_allowed (n, K)
    and channel_allowed (n, C) booleans; `forced_arm`: only that arm may be sent (the guard's
    fallback). Arm 0 is "no action" and is never sent.

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
        value = (
            incremental_value(p_convert, margin=margin_rate, redemption_cost=offer_cost)
            * order_value[:, None]
        )
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
    cost = offer_cost[arm] * order_value * p_convert
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
    conversion_window_days : a message's conversion counts within this window; only messages whose
        window closed before the profiles' time are learned from.
    guard : fit the `ValueGuardedPolicy` (cross-fitted; costs `guard_folds` extra fits).
    guard_folds, guard_confidence : its folds and one-sided confidence (0.8, see the module docstring).
    min_arm_rows : an offer needs this many opened messages to be learned (else it is not offered).
    max_training_messages : random sample of the training messages (None = all).
    prior_relative_uplift : rule mode only (no messages): assumed relative uplift of the purchase
        probability for product_message / replenishment / win_back.
    random_state, n_jobs : seeds and LightGBM threads per model (at most 2).
    fit_workers : independent fits (the main uplift learner, the guard's folds, the open model's
        folds) run on this many Python threads at once, each with `n_jobs` LightGBM threads
        (one at a time on the Dask cluster of `omni train --dask-scheduler`).
        LightGBM releases the GIL, so 2 single-threaded fits use both cores of the reference
        machine; the fits are seeded and independent, so the models are the same for any value.

    Fitted attributes: policy_, profiles_, mode_ ("uplift", "plain_base" or "rules"), offer_ids_,
    offer_kinds_, arm_names_, arm_costs_, uplift_ (predictor), learner_ (the fitted learner, not
    saved), guard_ (ValueGuardedPolicy or None), ledger_, channel_chooser_, send_time_chooser_,
    recommender_, feature_names_, mean_order_value_, metrics_, notes_.
    """

    def __init__(
        self,
        policy: ContactPolicy | None = None,
        learner: str = "x",
        conversion_window_days: float = 14.0,
        guard: bool = True,
        guard_folds: int = 3,
        guard_confidence: float = 0.8,
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
        half); None = everyone.
        """
        self.policy_ = self.policy if self.policy is not None else load_contact_policy()
        self.profiles_ = profiles
        self.recommender_ = recommender
        self.notes_: list[str] = []
        self.metrics_: dict = {}
        self.feature_names_ = list(profiles.feature_names_)
        as_of = profiles.as_of_
        freq = profiles.features_["frequency"].to_numpy()
        aov = profiles.features_["avg_order_value"].to_numpy()
        gross = np.nansum(np.nan_to_num(aov) * freq)
        self.mean_order_value_ = float(gross / freq.sum()) if freq.sum() > 0 else 1.0
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
        messages = tables.messages
        if messages is None or len(messages) == 0:
            self.mode_ = "rules"
            self.arm_names_ = ["none", "plain"]
            self.arm_costs_ = np.zeros(2)
            self.notes_.append(
                "no messages table: no uplift can be learned. Only replenishment reminders and win-backs "
                "are decided, valued with an assumed relative uplift of the purchase probability "
                f"({self._priors()}); offers are never sent (their cost is certain, their effect unknown)"
            )
            return self
        self._fit_uplift(tables, profiles, train_customers)
        return self

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
        self.offer_cost_table_ = dict(zip(self.offer_ids_, offers[c.COST].astype(float), strict=True))

    def _history(self, tables: Tables, profiles: CustomerProfiles) -> CustomerHistory:
        history = getattr(profiles, "history_", None)
        if history is not None and history.as_of == profiles.as_of_:
            return history
        return CustomerHistory(tables, profiles.as_of_, profiles.conversion_window_days)

    def training_data(self, tables: Tables, profiles: CustomerProfiles, train_customers=None) -> dict:
        """The uplift training rows: one per message whose window closed before the profiles' time.

        Returns X (features at the send time), arm (exposure arm, see the module docstring), y
        (converted within the window), opened, order_value, base (index of the first offer arm)
        and the learnable offers. Sets mode_, offer_ids_, offer_kinds_, arm_names_, arm_costs_.
        """
        messages = tables.messages
        window = pd.Timedelta(days=self.conversion_window_days)
        rows = messages.loc[messages[c.SENT_TS] < profiles.as_of_ - window]
        if train_customers is not None:
            rows = rows.loc[
                rows[c.CUSTOMER_ID].astype(str).isin(pd.Index(np.asarray(train_customers, dtype=str)))
            ]
        offer_col = rows[c.OFFER_ID] if c.OFFER_ID in rows else pd.Series(np.nan, index=rows.index)
        known_offer = offer_col.isna() | offer_col.astype(str).isin(self.offer_ids_)
        if (~known_offer).any():
            self.notes_.append(
                f"{int((~known_offer).sum())} messages with offers not in the offers table were left out"
            )
        rows = rows.loc[known_offer.to_numpy()]
        if self.max_training_messages is not None and len(rows) > self.max_training_messages:
            rows = rows.sample(self.max_training_messages, random_state=self.random_state).sort_index()
        has_opens = c.OPENED_TS in rows and rows[c.OPENED_TS].notna().any()
        self.mode_ = "uplift" if has_opens else "plain_base"
        opened = rows[c.OPENED_TS].notna().to_numpy() if has_opens else np.ones(len(rows), dtype=bool)
        offer_idx = (
            pd.Categorical(rows[c.OFFER_ID].astype(object), categories=self.offer_ids_).codes
            if c.OFFER_ID in rows
            else np.full(len(rows), -1)
        )
        converted = rows[c.CONVERTED_TS] if c.CONVERTED_TS in rows else pd.Series(pd.NaT, index=rows.index)
        y = (converted.notna() & (converted < rows[c.SENT_TS] + window)).to_numpy().astype(np.float64)

        # arms at the exposure level: 0 unopened, 1 opened without offer, 1 + j opened with offer j
        arm_of_offer = np.asarray(offer_idx, dtype=np.int64) + 2  # -1 (no offer) → 1
        if self.mode_ == "uplift":
            arm = np.where(opened, arm_of_offer, 0)
        else:
            arm = arm_of_offer - 1  # plain message is the base arm, offers 1 + j
            self.notes_.append(
                "messages carry no opens: offers are learned against a message without offer (the base "
                "arm), every message counts as seen (p_open = 1) and a plain message is assumed to have "
                "no effect, so a message without offer is never sent for its own sake"
            )
        base = 2 if self.mode_ == "uplift" else 1
        counts = np.bincount(arm, minlength=base + len(self.offer_ids_))
        learnable = [j for j in range(len(self.offer_ids_)) if counts[base + j] >= self.min_arm_rows]
        dropped = [self.offer_ids_[j] for j in range(len(self.offer_ids_)) if j not in learnable]
        if dropped:
            self.notes_.append(
                f"offers with fewer than {self.min_arm_rows} {'opened ' if self.mode_ == 'uplift' else ''}"
                f"messages are not offered (no evidence of their effect): {', '.join(dropped)}"
            )
        keep_rows = (arm < base) | np.isin(arm - base, learnable)
        remap = np.full(base + len(self.offer_ids_), -1, dtype=np.int64)
        remap[:base] = np.arange(base)
        remap[base + np.asarray(learnable, dtype=np.int64)] = base + np.arange(len(learnable))
        arm = remap[arm[keep_rows]]
        # the engine arm of the message's offer, opened or not (1 = none, 2 + j = offer j; -1 = not learned)
        offer_arm = remap[arm_of_offer][keep_rows] if base == 2 else arm + 1
        rows = rows.loc[keep_rows]
        self.offer_ids_ = [self.offer_ids_[j] for j in learnable]
        self.offer_kinds_ = [self.offer_kinds_[j] for j in learnable]
        self.arm_names_ = ["none", "plain", *self.offer_ids_]
        self.arm_costs_ = np.array([0.0, 0.0, *(self.offer_cost_table_[o] for o in self.offer_ids_)])
        history = self._history(tables, profiles)
        features = history.features_at(rows[c.CUSTOMER_ID].to_numpy(), rows[c.SENT_TS])
        return {
            "X": _model_matrix(features, self.feature_names_),
            "arm": arm,
            "offer_arm": offer_arm,
            "y": y[keep_rows],
            "opened": opened[keep_rows],
            "order_value": self._order_value(features),
            "base": base,
            "customer_id": rows[c.CUSTOMER_ID].astype(str).to_numpy(),
        }

    def _fit_uplift(self, tables: Tables, profiles: CustomerProfiles, train_customers) -> None:
        data = self.training_data(tables, profiles, train_customers)
        X, arm, y, base = data["X"], data["arm"], data["y"], data["base"]
        n_arms = base + len(self.offer_ids_)
        if len(arm) == 0 or np.bincount(arm, minlength=n_arms).min() == 0 or len(np.unique(y)) < 2:
            self.mode_ = "rules"
            self.arm_names_ = ["none", "plain"]
            self.arm_costs_ = np.zeros(2)
            self.notes_.append(
                "too little message history to learn uplift (an arm or an outcome never occurs)"
            )
            return
        learner = MultiArmUpliftLearner(
            learner=self.learner, random_state=self.random_state, n_jobs=self.n_jobs
        )
        with fit_pool(self.fit_workers) as pool:
            propensity = self._exposure_propensity(X, arm, data["opened"], n_arms, base, pool)
            # the learner and the guard's cross-fitted clones are independent: fit them together
            fitted = None if pool is None else pool.submit(learner.fit, X, arm, y, propensity=propensity)
            if fitted is None:
                learner.fit(X, arm, y, propensity=propensity)
            oof = self._guard_outcomes(data, propensity, pool) if self.guard else None
            if fitted is not None:
                fitted.result()
        self.learner_ = learner
        self.uplift_ = _BoosterUplift.from_learner(learner)
        names = self._learner_arm_names(base)
        counts = np.bincount(arm, minlength=n_arms)
        self.metrics_.update(
            {
                "training_messages": int(len(arm)),
                "arms": {name: int(k) for name, k in zip(names, counts, strict=True)},
                "conversion_rate_by_arm": {name: float(y[arm == k].mean()) for k, name in enumerate(names)},
                "open_rate": float(data["opened"].mean()),
            }
        )
        if self.guard:
            self._fit_guard(data, propensity, oof)

    def _learner_arm_names(self, base: int) -> list[str]:
        head = ["unopened", "opened_plain"] if base == 2 else ["plain"]
        return [*head, *(f"opened_{o}" if base == 2 else o for o in self.offer_ids_)]

    def _exposure_propensity(self, X, arm, opened, n_arms: int, base: int, pool=None) -> np.ndarray:
        """(n, K) estimated probabilities of each exposure arm given x (never from the truth)."""
        n = len(arm)
        if base == 1:
            # offers are assigned independently of the customer: their shares are the propensities
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
            model = fit_estimator(lgb.LGBMClassifier(objective="binary", **params), X[tr], opened[tr])
            p_open[te] = model.predict_proba(X[te])[:, 1]

        run_tasks([partial(fold, tr, te) for tr, te in folds.split(X, opened)], pool)
        p_open = np.clip(p_open, 0.01, 0.99)
        share_opened = np.bincount(arm[opened], minlength=n_arms)[1:] / max(int(opened.sum()), 1)
        out = np.empty((n, n_arms))
        out[:, 0] = 1.0 - p_open
        out[:, 1:] = p_open[:, None] * share_opened[None, :]
        self.metrics_["open_model_mean_p"] = float(p_open.mean())
        return np.maximum(out, 1e-3)

    def _guard_outcomes(self, data: dict, propensity: np.ndarray, pool=None) -> np.ndarray:
        """Cross-fitted (out-of-fold) outcomes per arm of the training messages, for the guard."""
        learner = MultiArmUpliftLearner(
            learner=self.learner, random_state=self.random_state, n_jobs=self.n_jobs
        )
        return cross_fit_outcomes(
            learner,
            data["X"],
            data["arm"],
            data["y"],
            propensity,
            n_splits=self.guard_folds,
            random_state=self.random_state,
            executor=pool,
        )

    def _fit_guard(self, data: dict, propensity: np.ndarray, oof: np.ndarray | None = None) -> None:
        """`ValueGuardedPolicy` on cross-fitted values of the training messages (exposure arms).

        Reward: the realised profit minus a control variate, the cross-fitted predicted profit of
        not being exposed, b(x). b depends on x only, so every policy's IPW value moves by the same
        E[b] and the gains the guard tests stay unbiased, while their spread shrinks (the
        baseline conversions of "sure things" no longer add noise): on the generated data the
        gain's confidence interval is about 17 % narrower.
        """
        arm, y, base, order_value = data["arm"], data["y"], data["base"], data["order_value"]
        if oof is None:
            oof = self._guard_outcomes(data, propensity)
        costs = self._learner_costs(base)
        margin = self.policy_.margin_rate
        values = incremental_value(oof, margin=margin, redemption_cost=costs) * order_value[:, None]
        baseline = oof[:, 0] * (margin - costs[0]) * order_value
        reward = realised_value(arm, y, margin=margin, redemption_cost=costs) * order_value - baseline
        self.guard_ = ValueGuardedPolicy(confidence=self.guard_confidence).fit(
            values, arm, reward, propensity
        )
        names = self._learner_arm_names(base)
        shift = float(baseline.mean())  # add E[b] back so the reported values are profits per message
        self.metrics_["guard"] = {
            "fallback": bool(self.guard_.fallback_),
            "best_fixed_arm": names[self.guard_.best_fixed_arm_],
            "personalised_share": float(self.guard_.personalised_share_),
            "confidence": self.guard_confidence,
            "validation_gain": self.guard_.validation_gain_,
            "validation_values": {
                (names[int(k.split("_")[1])] if k.startswith("arm_") else k): {
                    "value": v["value"] + shift,
                    "ci95": [v["ci95"][0] + shift, v["ci95"][1] + shift],
                }
                for k, v in self.guard_.validation_values_.items()
            },
        }
        if self.guard_.fallback_:
            self.notes_.append(
                "guard: personalised choices did not beat the best fixed arm "
                f"({self.metrics_['guard']['best_fixed_arm']}) by a one-sided {self.guard_confidence:.0%} lower "
                "confidence bound above 0; that arm goes to every allowed customer for whom it pays"
            )

    def _learner_costs(self, base: int) -> np.ndarray:
        offer_costs = [self.offer_cost_table_[o] for o in self.offer_ids_]
        return np.array([0.0] * base + offer_costs)

    def _order_value(self, features) -> np.ndarray:
        """Expected value of an order: the customer's mean order value shrunk towards everyone's.

        `features`: a frame of `CustomerProfiles.model_features` or a dict of its columns."""
        freq = np.nan_to_num(np.asarray(features["frequency"], dtype=np.float64))
        aov = np.nan_to_num(np.asarray(features["avg_order_value"], dtype=np.float64))
        k = ORDER_VALUE_PRIOR_ORDERS
        return (aov * freq + k * self.mean_order_value_) / (freq + k)

    # ------------------------------------------------------------------------------------------
    # predictions per arm (the engine's arm order: none, plain, offers)
    def _arm_outcomes(self, features, rules_kind: np.ndarray | None = None) -> np.ndarray:
        """Conversion probability per arm; `features` as in `_order_value`."""
        X = _model_matrix(features, self.feature_names_)
        if self.mode_ == "uplift":
            return self.uplift_.predict_outcomes(X)
        if self.mode_ == "plain_base":
            learned = self.uplift_.predict_outcomes(X)  # plain, offers
            return np.column_stack([learned[:, 0], learned])  # no action = plain (assumed no effect)
        # rules: purchase probability in the window from the churn model (or recent orders)
        churn = np.asarray(features["_churn_risk"], dtype=np.float64)
        p90 = 1.0 - churn
        recent = np.clip(np.nan_to_num(np.asarray(features["orders_90d"])) / 3.0, 0.0, 0.95)
        p90 = np.where(np.isfinite(p90), p90, recent)
        mu0 = 1.0 - (1.0 - np.clip(p90, 0.0, 0.999)) ** (self.conversion_window_days / 90.0)
        priors = self._priors()
        rel = np.array([priors.get(kind, 0.0) for kind in rules_kind])
        return np.column_stack([mu0, np.clip(mu0 * (1.0 + rel), 0.0, 1.0)])

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
        now_us = int(_us(now)[0])
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
            if len(sel) and self.mode_ != "plain_base":
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
            mu = self._arm_outcomes(feats, rules_kind)
            forced = None
            if self.guard_ is not None and self.guard_.fallback_:
                forced = int(self.guard_.best_fixed_arm_)
                if self.mode_ == "plain_base":
                    forced += 1  # the learner's arms start at "plain"; the engine's at "none"
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
                min_gain=policy.min_expected_gain,
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
            for i, more in zip(final, extra, strict=True):
                reasons[i] = (
                    ["positive_expected_gain", base_reason, more]
                    if more
                    else ["positive_expected_gain", base_reason]
                )
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
            "feature_names": self.feature_names_,
            "mean_order_value": self.mean_order_value_,
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
