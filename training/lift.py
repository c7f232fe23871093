"""Measured lift: customers who could be messaged against the global control group, never messaged.

The contact policy keeps a global control group (`models.decisions.contact_policy.in_control_group`:
a stable hash of the customer id, 5 % by default) that no decision ever contacts, so that the
effect of all the messaging together can be measured. A data set may carry its own hold-out flag
instead (a boolean `customers` column named in `CONTROL_COLUMNS`, e.g. the generator's `holdout`):
that flag is then the control group, since it is the one the logged messages respected.

What is compared, over a window of `window_days` ending at the end of the data (or at `end`):
- the population: every customer known (customers table, events, messages); with a consent table,
  only those opted in to at least one message channel at the start of the window (a rule applied
  to both groups before any message, so the comparison stays fair);
- overall (intent to treat): every customer of the population outside the control group against
  the control group. The control group is a random draw, so the difference is the effect of the
  messaging as run, unbiased;
- per channel and per action (offer, or the decision's action for contacts from the live store):
  the customers who received such a message in the window against the control customers who could
  have received it (consented to the channel). Who receives a message is chosen (by the policy, or
  by the customer's consent and activity), so these rows compare chosen customers with a random
  group: a difference there may come from the choice as well as from the message; the report says so.
- metrics per customer over the window: conversion (at least one purchase) and revenue (purchase
  amounts net of returns).

Intervals are 95 % normal-approximation (Welch) intervals of the difference of the two means,
`difference_in_means`; with the group sizes of a control group (hundreds of customers and more),
the central limit theorem holds well even for skewed revenue.

The control group is checked before it is used: when its customers received messages in the
window at more than a tenth of the rate of the others, the logged messages were not sent under
this control group and no lift is reported (the reason says so). `measure_lift` raises
`NotComputable` with the reason whenever the data cannot support a comparison: no messages and no
contacts, no control group, too few customers in a group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from features import columns as c
from models.consent import latest_consent_matrix
from models.decisions.contact_policy import ContactPolicy, in_control_group
from training.kpis import NotComputable

# boolean customers columns that mark a hold-out kept by the data's own campaign system
CONTROL_COLUMNS: tuple[str, ...] = ("control_group", "holdout", "global_control")
WINDOW_DAYS = 90.0
MIN_GROUP = 20  # fewer customers in a group: no row (an interval on a handful says nothing)
CONFIDENCE = 0.95
# control customers messaged at more than this share of the others' rate: not a control group
MAX_CONTROL_CONTACT_RATIO = 0.1
NO_OFFER = "no offer"
METRICS: dict[str, str] = {"converted": "conversion", "revenue": "revenue per customer"}


@dataclass(frozen=True)
class Difference:
    """Treated mean - control mean, with its interval (normal approximation, Welch's variance)."""

    treated_mean: float
    control_mean: float
    difference: float
    low: float
    high: float
    n_treated: int
    n_control: int

    @property
    def relative(self) -> float:
        """The difference as a share of the control mean (NaN when the control mean is 0)."""
        return self.difference / self.control_mean if self.control_mean else float("nan")


def difference_in_means(treated, control, confidence: float = CONFIDENCE) -> Difference:
    """The difference of the means of two independent samples and its `confidence` interval, by the
    normal approximation with each group's own variance (Welch): d ± z·sqrt(s²_t/n_t + s²_c/n_c).
    For 0/1 outcomes this is the usual interval of a difference of two proportions."""
    t = np.asarray(treated, dtype=np.float64)
    k = np.asarray(control, dtype=np.float64)
    if len(t) < 2 or len(k) < 2:
        raise ValueError("each group needs at least two customers")
    diff = float(t.mean() - k.mean())
    se = float(np.sqrt(t.var(ddof=1) / len(t) + k.var(ddof=1) / len(k)))
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return Difference(float(t.mean()), float(k.mean()), diff, diff - z * se, diff + z * se, len(t), len(k))


@dataclass
class LiftResult:
    """The lift table and how it was measured: `table` has one row per (scope, metric) with the
    means, the difference and its interval; `window` is (start, end); `control` says where the
    control group came from; `notes` what was left out and why."""

    table: pd.DataFrame
    window: tuple[pd.Timestamp, pd.Timestamp]
    control: str
    population: str
    notes: list[str] = field(default_factory=list)


def control_group(customer_ids: np.ndarray, customers: pd.DataFrame | None, policy: ContactPolicy):
    """(membership per customer, where it comes from): the data's own hold-out flag when the
    customers table has one (`CONTROL_COLUMNS`), else the contact policy's global control group.
    NotComputable when neither exists."""
    if customers is not None:
        for column in CONTROL_COLUMNS:
            if column in customers and customers[column].dtype == bool:
                flags = customers.drop_duplicates(c.CUSTOMER_ID).set_index(
                    customers[c.CUSTOMER_ID].astype(str)
                )
                member = pd.Series(customer_ids).map(flags[column]).fillna(False).to_numpy(dtype=bool)
                return member, f"the data's own hold-out flag (customers.{column})"
    if policy.control_share <= 0:
        raise NotComputable(
            "there is no control group: the customers table has no hold-out flag "
            f"({', '.join(CONTROL_COLUMNS)}) and the contact policy's control_group.share is 0"
        )
    return (
        in_control_group(customer_ids, policy),
        f"the contact policy's global control group ({policy.control_share:.0%} of customers, by a hash of the id)",
    )


def contacts_in(
    messages: pd.DataFrame | None, contacts: pd.DataFrame | None, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """Every message of the window: customer_id, channel, action. Messages from the data (action:
    their offer, or 'no offer'), and contacts the live store logged (decisions committed, batch
    sends, messages channel systems posted; action: the decision's action and offer)."""
    parts = []
    if messages is not None and len(messages):
        sent = messages[c.SENT_TS]
        rows = messages.loc[((sent >= start) & (sent <= end)).to_numpy(dtype=bool, na_value=False)]
        offer = rows[c.OFFER_ID] if c.OFFER_ID in rows else pd.Series(pd.NA, index=rows.index)
        parts.append(
            pd.DataFrame(
                {
                    c.CUSTOMER_ID: rows[c.CUSTOMER_ID].astype(str).to_numpy(),
                    c.CHANNEL: rows[c.CHANNEL].astype(str).to_numpy(),
                    "action": ("offer " + offer.astype(object).where(offer.notna(), "")).where(
                        offer.notna(), NO_OFFER
                    ),
                }
            )
        )
    if contacts is not None and len(contacts):
        ts = contacts[c.TS]
        rows = contacts.loc[((ts >= start) & (ts <= end)).to_numpy(dtype=bool, na_value=False)]
        action = rows["action"].astype(object) if "action" in rows else pd.Series(None, index=rows.index)
        offer = rows[c.OFFER_ID].astype(object) if c.OFFER_ID in rows else pd.Series(None, index=rows.index)
        label = action.where(action.notna(), "message").astype(str)
        label = label.where(offer.isna(), label + " " + offer.astype(str))
        parts.append(
            pd.DataFrame(
                {
                    c.CUSTOMER_ID: rows[c.CUSTOMER_ID].astype(str).to_numpy(),
                    c.CHANNEL: rows[c.CHANNEL].astype(str).to_numpy(),
                    "action": label.to_numpy(),
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=[c.CUSTOMER_ID, c.CHANNEL, "action"])
    return pd.concat(parts, ignore_index=True)


def _outcomes(events: pd.DataFrame, ids: np.ndarray, start, end) -> pd.DataFrame:
    """converted (0/1) and revenue (net) per customer of `ids` over [start, end]."""
    ts = events[c.TS]
    rows = events.loc[((ts >= start) & (ts <= end)).to_numpy(dtype=bool, na_value=False)]
    kind = rows[c.EVENT_TYPE]
    amount = (
        rows[c.AMOUNT].astype("float64").fillna(0.0) if c.AMOUNT in rows else pd.Series(0.0, index=rows.index)
    )
    bought = (kind == "purchase").to_numpy(dtype=bool, na_value=False)
    returned = (kind == "return").to_numpy(dtype=bool, na_value=False)
    signed = np.where(bought, amount.to_numpy(), np.where(returned, -np.abs(amount.to_numpy()), 0.0))
    frame = pd.DataFrame(
        {c.CUSTOMER_ID: rows[c.CUSTOMER_ID].astype(str).to_numpy(), "bought": bought, "net": signed}
    )
    per = frame.groupby(c.CUSTOMER_ID).agg(bought=("bought", "any"), revenue=("net", "sum"))
    out = per.reindex(pd.Index(ids, name=c.CUSTOMER_ID))
    return pd.DataFrame(
        {
            "converted": out["bought"].fillna(False).to_numpy(dtype=np.float64),
            "revenue": out["revenue"].fillna(0.0).to_numpy(dtype=np.float64),
        },
        index=out.index,
    )


def _customers(n: int) -> str:
    return f"{n:,} customer" + ("" if n == 1 else "s")


def known_customers(events: pd.DataFrame, messages, customers) -> np.ndarray:
    parts = [events[c.CUSTOMER_ID].astype(str).unique()]
    for frame in (messages, customers):
        if frame is not None and len(frame):
            parts.append(frame[c.CUSTOMER_ID].astype(str).unique())
    return np.unique(np.concatenate(parts)).astype(object)


def measure_lift(
    events: pd.DataFrame,
    messages: pd.DataFrame | None,
    customers: pd.DataFrame | None,
    consent: pd.DataFrame | None,
    policy: ContactPolicy,
    window_days: float = WINDOW_DAYS,
    end: pd.Timestamp | None = None,
    contacts: pd.DataFrame | None = None,
    min_group: int = MIN_GROUP,
) -> LiftResult:
    """The lift of the messaging against the control group (see the module docstring). `contacts`:
    the live store's contact ledger (`LiveStore.contacts()`), counted beside the data's messages."""
    end = pd.Timestamp(end) if end is not None else events[c.TS].max()
    start = end - pd.Timedelta(days=window_days)
    sent = contacts_in(messages, contacts, start, end)
    if sent.empty:
        why = (
            "no messages table and no contact in the live store"
            if (messages is None or not len(messages)) and (contacts is None or not len(contacts))
            else f"no message was sent between {start:%Y-%m-%d} and {end:%Y-%m-%d}"
        )
        raise NotComputable(f"{why}: there is no messaging whose lift could be measured")
    ids = known_customers(events, messages, customers)
    population = "every customer known (customers, events, messages)"
    channels = tuple(dict.fromkeys([*policy.channels, *sorted(sent[c.CHANNEL].unique())]))
    consented = latest_consent_matrix(consent, ids, channels, as_of=start)
    if consent is not None:
        reachable = consented[:, : len(policy.channels)].any(axis=1)
        ids, consented = ids[reachable], consented[reachable]
        population = (
            f"customers opted in to at least one message channel ({', '.join(policy.channels)}) "
            f"on {start:%Y-%m-%d}, the start of the window"
        )
    control, source = control_group(ids, customers, policy)
    n_control = int(control.sum())
    if n_control < min_group or len(ids) - n_control < min_group:
        raise NotComputable(
            f"the control group has {_customers(n_control)} and the others {_customers(len(ids) - n_control)}: "
            f"at least {min_group} in each are needed for an interval"
        )
    messaged = pd.Index(ids).isin(sent[c.CUSTOMER_ID].unique())
    control_rate, treated_rate = messaged[control].mean(), messaged[~control].mean()
    if treated_rate == 0:
        raise NotComputable(
            f"no customer of the population ({population}) was messaged in the window: nothing to measure"
        )
    if control_rate > MAX_CONTROL_CONTACT_RATIO * treated_rate:
        raise NotComputable(
            f"{source} is not a control group for these messages: {control_rate:.1%} of its customers were "
            f"messaged in the window against {treated_rate:.1%} of the others (the logged messages were not "
            "sent under it)"
        )
    notes = []
    if control_rate > 0:
        notes.append(
            f"{int(messaged[control].sum())} control customers ({control_rate:.1%}) received a message in the "
            "window anyway; they stay in the control group (what was intended is compared)"
        )
    outcome = _outcomes(events, ids, start, end)
    rows = []

    def compare(scope: str, kind: str, treated_mask: np.ndarray, control_mask: np.ndarray) -> None:
        if treated_mask.sum() < min_group or control_mask.sum() < min_group:
            notes.append(
                f"{scope}: {int(treated_mask.sum())} treated and {int(control_mask.sum())} control customers, "
                f"fewer than {min_group} in a group: not measured"
            )
            return
        for column, metric in METRICS.items():
            values = outcome[column].to_numpy()
            d = difference_in_means(values[treated_mask], values[control_mask])
            rows.append(
                {
                    "scope": scope,
                    "comparison": kind,
                    "metric": metric,
                    "treated": d.treated_mean,
                    "control": d.control_mean,
                    "difference": d.difference,
                    "low": d.low,
                    "high": d.high,
                    "relative": d.relative,
                    "n_treated": d.n_treated,
                    "n_control": d.n_control,
                }
            )

    compare("all messaging", "everyone outside the control group (unbiased)", ~control, control)
    by_customer = pd.Index(ids)
    for channel in sorted(sent[c.CHANNEL].unique()):
        got = by_customer.isin(sent.loc[sent[c.CHANNEL] == channel, c.CUSTOMER_ID].unique())
        could = consented[:, channels.index(channel)] if consent is not None else np.ones(len(ids), bool)
        compare(f"channel {channel}", "recipients (chosen) vs control", got & ~control, could & control)
    for action in sorted(sent["action"].unique()):
        got = by_customer.isin(sent.loc[sent["action"] == action, c.CUSTOMER_ID].unique())
        compare(f"action {action}", "recipients (chosen) vs control", got & ~control, control)
    return LiftResult(pd.DataFrame(rows), (start, end), source, population, notes)
