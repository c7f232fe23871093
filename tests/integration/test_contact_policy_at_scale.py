"""The contact policy at scale: 100,000 decisions over four daily batches of 25,000 generated
customers, which must break no cap, cooldown, quiet hour or control-group rule."""

from __future__ import annotations

import hashlib
import time

import pandas as pd
import pytest

from features import columns as c
from models.decisions.contact_policy import Caps, ContactPolicy

N_CUSTOMERS = 25_000  # 4 daily batches of every customer = 100,000 decisions (test under ~60 s)
BATCHES = 4


@pytest.fixture(scope="module")
def batch_engine(tmp_path_factory):
    from features.identity import stitch_identities
    from features.io import load_tables
    from features.synthetic import generate
    from models.decisions.nba import NextBestActionEngine
    from models.decisions.profile import CustomerProfiles

    out = tmp_path_factory.mktemp("policy") / "data"
    generate(N_CUSTOMERS, seed=11, out_dir=out)
    tables = stitch_identities(load_tables(out))
    profiles = CustomerProfiles(forecast=False).fit(tables)
    # a strict policy that still sends to almost everyone it may: caps and cooldowns must bind
    policy = ContactPolicy(
        channels=("email", "sms", "push", "social"),
        min_expected_gain=-1e9,
        horizon_hours=48,
        control_share=0.05,
        quiet_hours=(21, 8),
        cooldown_after_purchase_hours=48.0,
        cooldown_after_message_hours=30.0,
        overall_caps=Caps(per_day=1, per_week=2),
        channel_caps={"sms": Caps(per_day=1, per_week=1), "email": Caps(per_day=1, per_week=2)},
        margin_rate=0.35,
        message_cost={"email": 0.002, "sms": 0.03, "push": 0.001, "social": 0.01},
    )
    engine = NextBestActionEngine(
        policy=policy, learner="t", guard=False, max_training_messages=40_000, random_state=0
    ).fit(tables, profiles)
    return tables, engine


def test_100k_decisions_break_no_contact_rule(batch_engine):
    tables, engine = batch_engine
    ids = engine.profiles_.frame_[c.CUSTOMER_ID].to_numpy()
    ledger = engine.ledger_
    history = ledger.contacts()
    now = engine.profiles_.as_of_
    started = time.perf_counter()
    decisions = []
    for day in range(BATCHES):
        batch = engine.decide(ids, now + pd.Timedelta(days=day), ledger=ledger, record=True)
        decisions.append(batch.assign(_batch=day))
    seconds = time.perf_counter() - started
    decisions = pd.concat(decisions, ignore_index=True)
    assert len(decisions) == BATCHES * len(ids) >= 100_000
    sends = decisions.loc[decisions["action"] != "no_action"].reset_index(drop=True)
    assert len(sends) > 20_000, "the strict policy should still send a lot (else the checks prove little)"
    print(f"{len(decisions)} decisions, {len(sends)} sends in {seconds:.1f} s")
    policy = engine.policy_

    # independent checks, written without the engine's helpers
    # 1. control group: sha256("<salt>:<id>") < share
    digest = sends[c.CUSTOMER_ID].map(
        lambda cid: (
            int.from_bytes(hashlib.sha256(f"{policy.control_salt}:{cid}".encode()).digest()[:8], "big")
            / 2**64
        )
    )
    assert not (digest < policy.control_share).any()
    # 2. consent: the latest row per (customer, channel) up to now says opted in
    consent = tables.consent.sort_values(c.UPDATED_TS).drop_duplicates(
        [c.CUSTOMER_ID, c.CHANNEL], keep="last"
    )
    consent = consent.loc[consent[c.UPDATED_TS] < now]
    opted = set(
        zip(
            consent.loc[consent[c.OPTED_IN], c.CUSTOMER_ID],
            consent.loc[consent[c.OPTED_IN], c.CHANNEL],
            strict=True,
        )
    )
    assert all((cid, ch) in opted for cid, ch in zip(sends[c.CUSTOMER_ID], sends[c.CHANNEL], strict=True))
    # 3. quiet hours in the customer's local time, and sends fall in the horizon
    tz = tables.customers.set_index(c.CUSTOMER_ID)[c.TIMEZONE]
    local_hour = pd.Series(
        [t.tz_convert(tz[cid]).hour for cid, t in zip(sends[c.CUSTOMER_ID], sends["send_at"], strict=True)]
    )
    assert not ((local_hour >= 21) | (local_hour < 8)).any()
    batch_now = now + pd.to_timedelta(sends["_batch"], unit="D")
    assert (sends["send_at"] >= batch_now).all()
    assert (sends["send_at"] <= batch_now + pd.Timedelta(hours=policy.horizon_hours)).all()
    # 4. caps: every contact (history and all batches) per customer, windows around each send
    others = history[[c.CUSTOMER_ID, c.CHANNEL, c.TS]].assign(key=-1)
    own = sends.rename(columns={"send_at": c.TS})[[c.CUSTOMER_ID, c.CHANNEL, c.TS]].assign(key=sends.index)
    all_contacts = pd.concat([others, own], ignore_index=True)
    pairs = (
        sends[[c.CUSTOMER_ID, c.CHANNEL, "send_at"]]
        .reset_index()
        .merge(all_contacts, on=c.CUSTOMER_ID, suffixes=("", "_other"))
    )
    pairs = pairs.loc[pairs["key"] != pairs["index"]]  # every contact of the customer but this send
    gap = (pairs[c.TS] - pairs["send_at"]).abs()
    near_day = pairs.loc[gap < pd.Timedelta(hours=24)].groupby("index").size()
    near_week = pairs.loc[gap < pd.Timedelta(days=7)].groupby("index").size()
    assert (near_day.reindex(sends.index, fill_value=0) < policy.overall_caps.per_day).all()
    assert (near_week.reindex(sends.index, fill_value=0) < policy.overall_caps.per_week).all()
    same_channel = pairs.loc[pairs[c.CHANNEL] == pairs[f"{c.CHANNEL}_other"]]
    gap_ch = (same_channel[c.TS] - same_channel["send_at"]).abs()
    for ch, caps in policy.channel_caps.items():
        sel = same_channel[c.CHANNEL] == ch
        week = same_channel.loc[sel & (gap_ch < pd.Timedelta(days=7))].groupby("index").size()
        assert (week < caps.per_week).all(), ch
    # 5. cooldowns: no other contact within 30 h, no send within 48 h after the last purchase
    assert not (gap < pd.Timedelta(hours=policy.cooldown_after_message_hours)).any()
    buys = tables.events.loc[(tables.events[c.EVENT_TYPE] == "purchase") & (tables.events[c.TS] < now)]
    last_buy = buys.groupby(c.CUSTOMER_ID)[c.TS].max()
    since = sends["send_at"] - sends[c.CUSTOMER_ID].map(last_buy)
    assert not (since < pd.Timedelta(hours=policy.cooldown_after_purchase_hours)).any()
    # and the engine's own audit agrees, and the no-actions say why
    reasons = decisions.loc[decisions["action"] == "no_action", "reasons"].map(lambda r: r[0])
    assert {"control_group", "no_consent"} <= set(reasons)
    assert reasons.isin(["cooldown_after_message", "frequency_cap"]).sum() > 0
