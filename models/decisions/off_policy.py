"""Off-policy value of a next-best-action engine's choices on logged messages (the champion gate).

Judged on new data. The promotion gate (`training.nba_training.champion_window_scores`) asks a
deployed engine what it would have sent each customer of a later window's logged messages, at
that message's moment and on its channel, from its own state
(`NextBestActionEngine.message_choices`: the arbitration of `decide` without the timing rules),
and values those choices off-policy on the logged messages (`logged_window`,
`LoggedWindow.value`): the guard's estimator with the window's own exposure propensities, doubly
robust with the engines' predicted conversions (`NextBestActionEngine.outcomes_at`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import columns as c
from features.io import Tables
from models.decisions.contact_policy import ContactPolicy, load_contact_policy
from models.decisions.nba import NextBestActionEngine
from models.decisions.profile import CustomerProfiles
from models.timestamps import NAT_US, to_us


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
