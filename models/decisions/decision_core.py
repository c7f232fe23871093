"""The decision core of the next-best-action engine: the actions, the arbitration on incremental
value, the array-level decision of a block of customers and the decisions table.

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

The array-level step (`_DecisionCore._decide_arrays`) decides a block of distinct customers with
numpy over customers × channels × arms: the plan of who may be contacted (consent, control group,
cooldowns, caps), the arms' conversion probabilities, `arbitrate`, the send times and the audit.
Every send is re-checked by `audit_sends` before it is returned (a breach becomes no action with
the rule as reason). `decide` and `decide_one` of `models.decisions.nba.NextBestActionEngine` run
it; the decisions come out as columns (`_empty_columns`), a table (`_decisions_frame`) or one
dict (`_decision_dict`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c
from models.base import FEW_IDS, isin_few
from models.decisions.contact_policy import (
    Ledger,
    _distinct,
    audit_columns,
    cap_windows,
    in_control_group,
    next_send_times,
    offer_eligibility,
)
from models.timestamps import NAT_US, US_PER_HOUR, to_us

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
    # every (customer, channel, arm) at once, axes (n, C, K)
    mu0 = mu[:, 0, None, None]
    p_convert = mu0 + p_open[:, :, None] * (mu - mu[:, [0]])[:, None, :]
    # incremental margin (currency) minus the offer's cost on every expected redemption
    # (`offers.cost` is currency per redemption) minus the contact
    value = (p_convert - mu0) * (order_value[:, None, None] * margin_rate) - p_convert * offer_cost[
        None, None, :
    ]
    value -= message_cost[None, :, None]
    values = np.where(arm_ok[:, None, :] & ch_ok[:, :, None], value, -np.inf)
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
# The decision of a block of customers, as arrays
class _DecisionCore:
    """The array-level decision step of `models.decisions.nba.NextBestActionEngine` (its base).

    Reads the engine's fitted policy_, profiles_, mode_, arm_names_, arm_costs_, offer_ids_,
    offer_kinds_, guard_, channel_chooser_ and send_time_chooser_, and its predictions per arm
    (`_arm_outcomes`, `_order_value`, `_allowed_arms`, `_fallback_arm`, `_intent_to_treat`).
    """

    def _plan(self, ids: np.ndarray, now: pd.Timestamp, ledger: Ledger) -> dict:
        """Who may be contacted, when at the earliest, on which channels, with which p_open."""
        policy = self.policy_
        profiles = self.profiles_
        n = len(ids)
        rows = profiles.rows(ids)
        known = rows >= 0
        safe = np.where(known, rows, 0)
        channels = tuple(ch for ch in policy.channels if ch in profiles.message_channels_)
        consent = np.zeros((n, len(channels)), dtype=bool)
        # `profiles.take`: the fields of these rows, without a pandas column per question
        for j, ch in enumerate(channels):
            consent[:, j] = np.asarray(profiles.take(f"consent_{ch}", safe), dtype=bool) & known
        # opt-ins and opt-outs posted since training (a layered ledger) count from the next decision
        consent = ledger.consent_matrix(ids, channels, consent) & known[:, None]
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
        # caps at the earliest moment (rechecked exactly at the chosen send time by the audit):
        # (cap, hours, channel index or -1 for every channel), counted in one question
        checks = [(cap, hours, -1) for cap, hours in cap_windows(policy.overall_caps) if cap is not None]
        for j, ch in enumerate(channels):
            checks += [(cap, hours, j) for cap, hours in cap_windows(policy.caps_for(ch)) if cap is not None]
        counts = ledger.counts_near(
            ids, after, [(hours, None if j < 0 else channels[j]) for _, hours, j in checks]
        )
        over_all = np.zeros(n, dtype=bool)
        for i, (cap, _, j) in enumerate(checks):
            if j < 0:
                over_all |= counts[:, i] >= cap
            else:
                channel_ok[:, j] &= counts[:, i] < cap
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
            "control": control,
            "channel_ok": channel_ok & live[:, None],
            "live": live,
            "reason": reason,
            "after": after,
            "deadline": np.full(n, deadline, dtype=np.int64),
            "p_open": p_open,
            "timezone": np.where(known, np.asarray(profiles.take(c.TIMEZONE, safe), dtype=object), "UTC"),
        }

    def _send_times(self, ids, channel_names, after, deadline, timezone) -> np.ndarray:
        out = np.full(len(ids), NAT_US, dtype=np.int64)
        for ch in _distinct(channel_names):
            sel = np.flatnonzero(channel_names == ch)
            scores = self.send_time_chooser_.slot_scores(ids[sel], str(ch))
            out[sel] = next_send_times(
                after[sel], deadline[sel], timezone[sel], scores, self.policy_.quiet_hours
            )
        return out

    def _decide_block(self, ids: np.ndarray, now: pd.Timestamp, ledger: Ledger) -> pd.DataFrame:
        return _decisions_frame(self._decide_arrays(ids, now, ledger))

    def _decide_arrays(self, ids: np.ndarray, now: pd.Timestamp, ledger: Ledger) -> dict:
        """The decisions of distinct `ids` as columns (`DECISION_COLUMNS`; send_at in int64 µs),
        before the batch-wide channel capacity and the recommended items.

        Steps: who may be contacted, when and where (`_plan`); each customer's segment, tier and
        due replenishments (`_customer_context`); the arbitration of the customers who may be
        contacted (`_arbitrate_live`); the send times and the audit of every send
        (`_schedule_and_audit`); the reasons of those who get nothing (`_explain_no_send`); the
        actions, columns and reasons of the sends (`_label_sends`).
        """
        plan = self._plan(ids, now, ledger)
        out = _empty_columns(ids)
        reasons: list[list[str]] = [[r] if r is not None else [] for r in plan["reason"]]
        live_idx = np.flatnonzero(plan["live"])
        context = self._customer_context(ids, plan["rows"], live_idx, now, ledger)
        if len(live_idx):
            result, forced = self._arbitrate_live(plan, live_idx, context, now)
            sends = self._schedule_and_audit(ids, plan, live_idx, result, ledger)
            self._explain_no_send(reasons, plan, live_idx, result, forced, sends)
            self._label_sends(out, reasons, live_idx, result, forced, sends, context)
        out["reasons"] = _object_array(reasons)
        return out

    def _customer_context(
        self, ids: np.ndarray, rows: np.ndarray, live_idx: np.ndarray, now, ledger: Ledger
    ) -> dict:
        """Segment and value tier of every known customer, and the replenishments due at `now`
        for those who may be contacted (`has_due`, `due_items`). A purchase posted since training
        (a layered ledger's) counts at once: the customer is no longer dormant or at risk (no
        win-back), and what they just bought is no longer due for a reminder."""
        n = len(ids)
        profiles = self.profiles_
        segment = np.full(n, None, dtype=object)
        tier = np.full(n, None, dtype=object)
        known = rows >= 0
        segment[known] = np.asarray(profiles.take("segment", rows[known]), dtype=object)
        tier[known] = np.asarray(profiles.take("value_tier", rows[known]), dtype=object)
        came_back = ledger.bought_since_training(ids)
        lapsed = isin_few(segment, ("dormant", "at_risk"))
        segment[came_back & lapsed] = "active"
        due = (
            self.profiles_.due_replenishments(ids[live_idx], now, k=self.policy_.items_per_message)
            if len(live_idx)
            else []
        )
        if came_back.any():
            due = [
                [p for p in items if p not in ledger.products_bought_since_training(ids[i])]
                for i, items in zip(live_idx, due, strict=True)
            ]
        has_due = np.zeros(n, dtype=bool)
        due_items = np.empty(n, dtype=object)
        for i, items in zip(live_idx, due, strict=True):
            due_items[i] = items
            has_due[i] = bool(items)
        return {"segment": segment, "tier": tier, "has_due": has_due, "due_items": due_items}

    def _arbitrate_live(
        self, plan: dict, live_idx: np.ndarray, context: dict, now: pd.Timestamp
    ) -> tuple[dict[str, np.ndarray], int | None]:
        """`arbitrate` for the customers who may be contacted (rows of `live_idx`): the arms'
        conversion probabilities, the offers' eligibility and the guard's fallback arm. Returns
        the arbitration and the forced arm (`_fallback_arm`)."""
        policy = self.policy_
        profiles = self.profiles_
        rows = plan["rows"]
        segment, tier, has_due = context["segment"], context["tier"], context["has_due"]
        K = len(self.arm_names_)
        feats = (
            profiles.model_feature_arrays(rows[live_idx], now)
            if len(live_idx) <= FEW_IDS
            else profiles.model_features(rows[live_idx], now)
        )
        rules_kind = None
        arm_ok = np.ones((len(live_idx), K), dtype=bool)
        if self.mode_ == "rules":
            feats["_churn_risk"] = np.asarray(profiles.take("churn_risk", rows[live_idx]), dtype=np.float64)
            dormant = segment[live_idx] == "dormant"
            rules_kind = np.where(
                has_due[live_idx], "replenishment", np.where(dormant, "win_back", "product_message")
            )
        else:
            eligible = offer_eligibility(
                self.offer_ids_,
                segment[live_idx],
                tier[live_idx],
                profiles.take("monetary", rows[live_idx]),
                np.asarray(profiles.take("bought_categories", rows[live_idx]), dtype=object),
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
        return result, forced

    def _schedule_and_audit(
        self, ids: np.ndarray, plan: dict, live_idx: np.ndarray, result: dict, ledger: Ledger
    ) -> dict:
        """The send time of every send the arbitration chose and the audit of each against every
        rule: idx_send (customer positions), channel, send_at, audit (`audit_sends`' booleans,
        sends × rules), audit_names (the rules) and broken (a rule broken, or no send slot)."""
        send = result["send"]
        idx_send = live_idx[send]
        channel_names = np.asarray(plan["channels"], dtype=object)
        chosen_channel = channel_names[result["channel"][send]] if send.any() else np.array([], dtype=object)
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
        # `audit_sends` without its frame: (sends, rules) booleans and the rules' names
        columns = audit_columns(
            ids[idx_send],
            chosen_channel,
            send_at,
            plan["timezone"][idx_send],
            consented,
            ledger,
            self.policy_,
            control=plan["control"][idx_send],  # the same customers' hash, computed by the plan
        )
        audit = np.column_stack(list(columns.values())).reshape(len(idx_send), len(columns))
        broken = audit.any(axis=1) | (send_at == NAT_US)
        return {
            "idx_send": idx_send,
            "channel": chosen_channel,
            "send_at": send_at,
            "audit": audit,
            "audit_names": np.array(list(columns), dtype=object),
            "broken": broken,
        }

    def _explain_no_send(
        self,
        reasons: list[list[str]],
        plan: dict,
        live_idx: np.ndarray,
        result: dict,
        forced: int | None,
        sends: dict,
    ) -> None:
        """The reasons of the customers weighed who get no action: the guard's fallback to no
        action, the best candidate that did not pay, no allowed action, or the rules a send broke."""
        send = result["send"]
        channel_names = np.asarray(plan["channels"], dtype=object)
        for pos in np.flatnonzero(~send):
            i = live_idx[pos]
            best = result["best_gain"][pos]
            if forced == 0:
                reasons[i] = ["guard_fallback_no_action"]
            elif np.isfinite(best):
                arm_name = self.arm_names_[result["best_arm"][pos]]
                best_channel = channel_names[result["best_channel"][pos]]
                reasons[i] = ["no_positive_gain", f"best_candidate:{arm_name}@{best_channel}:{best:.4f}"]
            else:
                reasons[i] = ["no_allowed_action"]
        audit_names, audit_values = sends["audit_names"], sends["audit"]
        for pos in np.flatnonzero(sends["broken"]):
            reasons[sends["idx_send"][pos]] = audit_names[audit_values[pos]].tolist() or ["no_send_slot"]

    def _label_sends(
        self,
        out: dict,
        reasons: list[list[str]],
        live_idx: np.ndarray,
        result: dict,
        forced: int | None,
        sends: dict,
        context: dict,
    ) -> None:
        """The sends that passed the audit into `out`: action label, channel, send time, offer and
        the gain's parts, with their reasons (and the due items of a replenishment)."""
        policy = self.policy_
        send = result["send"]
        ok = ~sends["broken"]
        final = sends["idx_send"][ok]
        res_pos = np.flatnonzero(send)[ok]
        arms = result["arm"][res_pos]
        kinds = np.array([None, None, *self.offer_kinds_], dtype=object)[arms]
        dormant = context["segment"][final] == "dormant"
        content_high = (kinds == "content") & (context["tier"][final] == "high")
        replenish = (arms == 1) & context["has_due"][final]
        actions = _select(
            [dormant, content_high, replenish, arms == 1],
            [WIN_BACK, SERVICE_CONTENT, REPLENISHMENT, PRODUCT_MESSAGE],
            OFFER,
        )
        out["action"][final] = actions
        out[c.CHANNEL][final] = sends["channel"][ok]
        out["send_at"][final] = sends["send_at"][ok]
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
        extra = _select(
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
            out["product_ids"][i] = list(context["due_items"][i])


# ----------------------------------------------------------------------------------------------
# The decisions as columns, a table or one dict
def _unique_ids(customer_ids) -> np.ndarray:
    ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str)
    return ids.drop_duplicates().to_numpy(dtype=object)


def _datetimes(us) -> pd.Series:
    values = np.asarray(us, dtype=np.int64)
    return pd.Series(pd.DatetimeIndex(values.astype("datetime64[us]")).tz_localize("UTC"))


def _select(conditions: list[np.ndarray], labels: list[str], default: str) -> np.ndarray:
    """`np.select(conditions, labels, default)` as an object array of str; a request's few rows
    in Python (np.select on strings costs ~15 µs however small)."""
    n = len(conditions[0])
    if n > FEW_IDS:
        return np.select(conditions, labels, default).astype(object)
    out = np.full(n, default, dtype=object)
    flags = [np.asarray(cond, dtype=bool).tolist() for cond in conditions]
    for i in range(n):
        for flag, label in zip(flags, labels, strict=True):
            if flag[i]:
                out[i] = label
                break
    return out


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


def with_no_action(decisions: pd.DataFrame, rows: np.ndarray, reason: str) -> pd.DataFrame:
    """`decisions` with the rows of the mask `rows` replaced by the no-action row (`_empty_columns`)
    whose one reason is `reason`; other columns (e.g. `consented`) and the order stay."""
    at = np.flatnonzero(rows)
    if not len(at):
        return decisions
    empty = _empty_decisions(decisions[c.CUSTOMER_ID].to_numpy()[at])
    empty["reasons"] = pd.Series([[reason] for _ in at], dtype=object)
    empty.index = decisions.index[at]
    for name in decisions.columns.difference(list(DECISION_COLUMNS)):
        empty[name] = decisions.loc[empty.index, name]
    return pd.concat([decisions.loc[~np.asarray(rows, dtype=bool)], empty[decisions.columns]]).loc[
        decisions.index
    ]


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
