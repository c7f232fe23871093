"""Measured lift against the control group (`training.lift`) on simulated A/B data with a known
effect, and what happens when the data cannot support a comparison."""

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from models.decisions.contact_policy import ContactPolicy, in_control_group
from training.kpis import NotComputable
from training.lift import difference_in_means, measure_lift

END = pd.Timestamp("2026-06-30T00:00:00Z")


def test_difference_in_means_is_welchs_normal_interval():
    treated, control = np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0, 0])
    d = difference_in_means(treated, control)
    assert d.difference == pytest.approx(0.5 - 0.2)
    se = np.sqrt(treated.var(ddof=1) / 4 + control.var(ddof=1) / 5)
    assert d.high - d.difference == pytest.approx(1.959964 * se, rel=1e-5)
    assert d.difference - d.low == pytest.approx(1.959964 * se, rel=1e-5)
    assert d.relative == pytest.approx(0.3 / 0.2)
    with pytest.raises(ValueError):
        difference_in_means([1.0], [0.0, 1.0])


def test_the_interval_covers_the_true_difference_95_times_in_100():
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(400):
        treated = rng.random(2000) < 0.30
        control = rng.random(200) < 0.25
        d = difference_in_means(treated, control)
        covered += d.low <= 0.05 <= d.high
    assert 0.92 <= covered / 400 <= 0.98


def simulated_experiment(seed: int, n: int = 6000, lift: float = 0.10, base: float = 0.20):
    """Customers with a hold-out flag (10 %), one message to every other customer in the window on
    email or sms (offer or none), purchases drawn with probability `base` (control) or `base +
    lift` (treated), with an order value of 40 ± 10. Returns the tables' frames."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"C{i:05d}" for i in range(n)])
    holdout = rng.random(n) < 0.10
    customers = pd.DataFrame({c.CUSTOMER_ID: ids, c.TIMEZONE: "UTC", "holdout": holdout})
    treated = ids[~holdout]
    sent = END - pd.Timedelta(days=60) + pd.to_timedelta(rng.integers(0, 30 * 24, len(treated)), unit="h")
    messages = pd.DataFrame(
        {
            c.MESSAGE_ID: [f"M{i}" for i in range(len(treated))],
            c.CUSTOMER_ID: treated,
            c.CHANNEL: rng.choice(["email", "sms"], len(treated)),
            c.SENT_TS: sent,
            c.OFFER_ID: pd.array(rng.choice(["OF_A", None], len(treated)), dtype="string"),
        }
    )
    buys = rng.random(n) < np.where(holdout, base, base + lift)
    bought = ids[buys]
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: np.concatenate([bought, ids]),
            c.TS: pd.concat(
                [
                    pd.Series(END - pd.to_timedelta(rng.integers(1, 80 * 24, len(bought)), unit="h")),
                    pd.Series([END - pd.Timedelta(days=300)] * n),  # everyone seen once, long before
                ],
                ignore_index=True,
            ),
            c.CHANNEL: "web",
            c.EVENT_TYPE: ["purchase"] * len(bought) + ["view"] * n,
            c.PRODUCT_ID: "P1",
            c.AMOUNT: np.concatenate([rng.normal(40, 10, len(bought)), np.zeros(n)]),
        }
    )
    # the end of the data
    events.loc[len(events)] = {
        c.CUSTOMER_ID: ids[0],
        c.TS: END,
        c.CHANNEL: "web",
        c.EVENT_TYPE: "view",
        c.PRODUCT_ID: "P1",
        c.AMOUNT: 0.0,
    }
    return events, messages, customers


def test_measured_lift_covers_the_simulated_effect_overall_per_channel_and_action():
    events, messages, customers = simulated_experiment(seed=11)
    result = measure_lift(events, messages, customers, None, ContactPolicy(), window_days=90)
    assert "customers.holdout" in result.control
    table = result.table.set_index(["scope", "metric"])
    overall = table.loc[("all messaging", "conversion")]
    assert overall["low"] <= 0.10 <= overall["high"]
    assert overall["low"] > 0  # 6,000 customers: the effect is found, not only covered
    assert overall["control"] == pytest.approx(0.20, abs=0.05)
    revenue = table.loc[("all messaging", "revenue per customer")]
    assert revenue["low"] <= 0.10 * 40 <= revenue["high"]
    # each recipient group is a random half of the treated here: its estimate is unbiased too (one
    # 95% interval in twenty misses, so each is held to 3.3 standard errors: 1 in 1,000)
    for scope in ("channel email", "channel sms", "action offer OF_A", "action no offer"):
        row = table.loc[(scope, "conversion")]
        se = (row["high"] - row["low"]) / (2 * 1.959964)
        assert abs(row["difference"] - 0.10) <= 3.3 * se, scope
    assert int(overall["n_control"]) == int(customers["holdout"].sum())


def test_without_a_hold_out_flag_the_contact_policys_control_group_is_used():
    events, messages, customers = simulated_experiment(seed=3)
    policy = ContactPolicy(control_share=0.1)
    hashed = in_control_group(customers[c.CUSTOMER_ID], policy)
    # the messages respected the policy's group: nobody in it was messaged
    messages = messages.loc[~messages[c.CUSTOMER_ID].isin(customers.loc[hashed, c.CUSTOMER_ID])]
    result = measure_lift(events, messages, customers.drop(columns="holdout"), None, policy)
    assert "contact policy" in result.control
    assert int(result.table.iloc[0]["n_control"]) == int(hashed.sum())


def test_a_control_group_the_messages_did_not_respect_is_refused():
    events, messages, customers = simulated_experiment(seed=5)
    # the policy's hash group was messaged like everyone else (the history predates the policy)
    with pytest.raises(NotComputable, match="is not a control group for these messages"):
        measure_lift(events, messages, customers.drop(columns="holdout"), None, ContactPolicy())


def test_no_messages_no_control_group_or_too_few_customers_say_why():
    events, messages, customers = simulated_experiment(seed=5, n=400)
    with pytest.raises(NotComputable, match="no messages table"):
        measure_lift(events, None, customers, None, ContactPolicy())
    with pytest.raises(NotComputable, match="no message was sent between"):
        measure_lift(events, messages, customers, None, ContactPolicy(), window_days=20)
    with pytest.raises(NotComputable, match="there is no control group"):
        measure_lift(
            events, messages, customers.drop(columns="holdout"), None, ContactPolicy(control_share=0.0)
        )
    with pytest.raises(NotComputable, match="at least 200 in each"):
        measure_lift(events, messages, customers, None, ContactPolicy(), min_group=200)


def test_consent_restricts_both_groups_and_contacts_from_the_live_store_count():
    events, messages, customers = simulated_experiment(seed=9, n=3000)
    ids = customers[c.CUSTOMER_ID]
    opted = ids.iloc[: len(ids) // 2]  # half the customers opted in to email before the window
    consent = pd.DataFrame(
        {
            c.CUSTOMER_ID: opted,
            c.CHANNEL: "email",
            c.OPTED_IN: True,
            c.UPDATED_TS: END - pd.Timedelta(days=200),
        }
    )
    result = measure_lift(events, messages, customers, consent, ContactPolicy())
    overall = result.table.iloc[0]
    assert overall["n_treated"] + overall["n_control"] == len(opted)
    assert "opted in" in result.population
    # decisions the live store logged (the engine's actions) are scopes of their own
    contacts = pd.DataFrame(
        {
            c.CUSTOMER_ID: ids.loc[~customers["holdout"]].iloc[:300],
            c.CHANNEL: "push",
            c.TS: END - pd.Timedelta(days=10),
            "source": "batch",
            "action": "win_back",
            c.OFFER_ID: None,
        }
    )
    with_contacts = measure_lift(events, messages, customers, None, ContactPolicy(), contacts=contacts)
    assert "action win_back" in set(with_contacts.table["scope"])
    assert "channel push" in set(with_contacts.table["scope"])
