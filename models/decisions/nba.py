"""Next-best-action: per customer, the action, channel, send time, items and offer worth the most.

`NextBestActionEngine` orchestrates the parts of the wing:

- the actions, the arbitration on incremental value and the array-level decision of a block of
  customers (`models.decisions.decision_core`: `arbitrate`, `DECISION_COLUMNS`);
- learning the uplift from the logged messages: the conversion window, the training rows of each
  mode, the uplift learner, the exposure propensities and the guard (`models.decisions._learning`);
- p_open per channel and the send time (`models.decisions.choosers`);
- consent, quiet hours, caps and cooldowns, in one place (`models.decisions.contact_policy`);
- the customers' profiles and their as-of history (`models.decisions.profile`,
  `models.decisions.history`);
- its off-policy value on a later window's logged messages, the champion gate
  (`models.decisions.off_policy`; the engine's side is `message_choices` and `outcomes_at`).

Without a messages table there is no uplift model at all (`mode_ = "rules"`):
replenishment reminders and win-backs only, valued with an *assumed* relative uplift
(`prior_relative_uplift`) of the purchase probability from the churn model, never offers (their
cost is certain, their effect unknown); every such decision carries the reason `prior_uplift_no_model`.

Batch. `decide(customer_ids, now)` is vectorised (numpy over customers × channels × arms, LightGBM
on the whole batch, sorted-array ledger look-ups); one decision per distinct customer. Every send
is re-checked by `audit_sends` before it is returned (a breach becomes no action with the rule as
reason), and with `record=True` the sends go into the ledger, so caps hold across batches.
`decide_one` (the HTTP route) runs the same `_decide_arrays` for one customer without the DataFrame
around it: dict look-ups in the ledger and the profiles instead of pandas indexes, the channel
model's probabilities scored once per channel (`ChannelModelChooser`), the recommender's
single-request path; it decides exactly as `decide` (tests/integration/test_nba_fast.py).

Saved to a folder: LightGBM text models, Parquet, json, and the profiles' folder. Never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from features import columns as c
from features.io import Tables
from models.base import nan_to_num_few, read_model_meta
from models.decisions._learning import _BoosterUplift, _LearningFromMessages, _model_matrix
from models.decisions.choosers import (
    ActivityHoursChooser,
    ChannelModelChooser,
    HistoryOpenRates,
    SendTimeModelChooser,
)
from models.decisions.contact_policy import (
    ContactLedger,
    ContactPolicy,
    Ledger,
    in_control_group,
    load_contact_policy,
    offer_eligibility,
)
from models.decisions.decision_core import (
    ITEM_ACTIONS,
    NO_ACTION,
    _datetimes,
    _decision_dict,
    _DecisionCore,
    _empty_decisions,
    _unique_ids,
    arbitrate,
)
from models.decisions.profile import CustomerProfiles
from models.decisions.uplift import ValueGuardedPolicy
from models.timestamps import NAT_US

FORMAT_VERSION = 1
DEFAULT_PRIOR_RELATIVE_UPLIFT = {"product_message": 0.0, "replenishment": 0.10, "win_back": 0.05}
ORDER_VALUE_PRIOR_ORDERS = 1.0  # a customer's order value is shrunk towards the mean by one order
_BATCH = 200_000  # customers per block inside decide (bounds the customers × channels × arms arrays)
_RECOMMEND_BATCH = 2_000


# ----------------------------------------------------------------------------------------------
class NextBestActionEngine(_LearningFromMessages, _DecisionCore, BaseEstimator):
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
        chosen on nested splits of the training rows (see `models.decisions._learning`).
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

    def _order_value(self, features) -> np.ndarray:
        """Expected value of an order: the customer's mean order value shrunk towards everyone's
        (1 for everyone when purchases carry no amounts).

        `features`: a frame of `CustomerProfiles.model_features` or a dict of its columns."""
        freq = nan_to_num_few(features["frequency"])
        if not getattr(self, "order_values_known_", True):
            return np.ones(len(freq))
        aov = nan_to_num_few(features["avg_order_value"])
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

    def channel_plan(self, customer_ids, now=None, ledger: Ledger | None = None) -> pd.DataFrame:
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
        ledger: Ledger | None = None,
        record: bool = False,
        items: bool = True,
        unavailable: frozenset[str] = frozenset(),
        item_filters=None,
    ) -> pd.DataFrame:
        """One decision per distinct customer (`DECISION_COLUMNS`); send_at in UTC.

        `ledger`: contact history to respect (default: the one built at fit time). `record`: add the
        sends to that ledger, so later batches respect them. `items=False`: leave product_ids empty
        except for replenishment (no recommender calls; the decisions are the same otherwise), for
        summaries that only count actions and gains. `unavailable`: products never to send (out of
        stock now). `item_filters`: the recommender's request filters (`models.recs.rules.Filters`
        or a dict: categories, price range, per-category cap) for the recommended items.
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
            self._attach_items(out, now, unavailable, item_filters)
        if unavailable:
            out["product_ids"] = [[p for p in ps if p not in unavailable] for ps in out["product_ids"]]
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
        # that customer may not reach the arbitration (control group, no consent): the one-row
        # predictions (compiled trees, built and compiled on first use) are warmed on their own
        uplift = getattr(self, "uplift_", None)
        if uplift is not None and self.mode_ != "rules" and getattr(self, "feature_names_", None):
            uplift.predict_outcomes(np.zeros((1, len(self.feature_names_))))

    def decide_one(
        self,
        customer_id: str,
        now=None,
        ledger: Ledger | None = None,
        record: bool = False,
        unavailable: frozenset[str] = frozenset(),
    ) -> dict:
        """The decision for one customer as a dict; expected_gain holds its parts.

        The same decision as `decide([customer_id], now, ledger, record)`: the same `_decide_arrays`,
        without the DataFrame around it (and the recommender's single-request path for the items).
        Recording and per-day channel capacity (which counts the whole ledger) take `decide`.
        `unavailable`: products that may not be sent (out of stock now).
        """
        if record or self.policy_.capacity_per_day:
            out = _decision_dict(self.decide([customer_id], now, ledger, record).iloc[0])
            out["product_ids"] = [p for p in out["product_ids"] if p not in unavailable]
            return out
        now = self._now(now)
        ledger = ledger if ledger is not None else self.ledger_
        ids = np.array([str(customer_id)], dtype=object)
        cols = self._decide_arrays(ids, now, ledger)
        row = {name: values[0] for name, values in cols.items()}
        if row["action"] in ITEM_ACTIONS and self.recommender_ is not None:
            row["product_ids"] = self._items_one(str(ids[0]), unavailable)
        elif unavailable and row["product_ids"] is not None:
            row["product_ids"] = [p for p in row["product_ids"] if p not in unavailable]
        row["send_at"] = (
            None if row["send_at"] == NAT_US else pd.Timestamp(int(row["send_at"]), unit="us", tz="UTC")
        )
        return _decision_dict(row)

    def _items_one(self, customer_id: str, unavailable: frozenset[str] = frozenset()) -> list[str]:
        """`_attach_items` for one customer, never an unavailable product."""
        k = self.policy_.items_per_message
        if hasattr(self.recommender_, "warm"):  # TwoStageRecommender: single-request path
            return list(self.recommender_.recommend(customer_id, k=k, exclude=list(unavailable)).product_ids)
        recs = self.recommender_.recommend_many([customer_id], k=k + len(unavailable))[0].product_ids
        return [p for p in recs if p not in unavailable][:k]

    def _apply_capacity(self, out: pd.DataFrame, ledger: Ledger) -> pd.DataFrame:
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

    def _attach_items(
        self, out: pd.DataFrame, now: pd.Timestamp, unavailable: frozenset[str] = frozenset(), filters=None
    ) -> None:
        """Recommended products for sends that show products (replenishment already has its items),
        never an unavailable one, under the recommender's request `filters` when given."""
        need = out.index[out["action"].isin(list(ITEM_ACTIONS))]
        if self.recommender_ is None or len(need) == 0:
            return
        k = self.policy_.items_per_message
        ids = out.loc[need, c.CUSTOMER_ID].tolist()
        items: list[list[str]] = []
        for lo in range(0, len(ids), _RECOMMEND_BATCH):
            batch = ids[lo : lo + _RECOMMEND_BATCH]
            extra = {} if filters is None else {"filters": filters}
            recs = self.recommender_.recommend_many(batch, k=k + len(unavailable), **extra)
            items.extend([p for p in r.product_ids if p not in unavailable][:k] for r in recs)
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


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
