"""Tests of the contact policy: the TOML file, the pure rules with hand-computed answers and the
ledger (the batch of 100,000 decisions is in tests/integration/test_contact_policy_at_scale.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from models.consent import latest_consent_matrix
from models.decisions.contact_policy import (
    DEFAULT_POLICY_FILE,
    Caps,
    ContactLedger,
    ContactPolicy,
    OfferRule,
    audit_sends,
    control_hash,
    in_control_group,
    is_quiet_hour,
    load_contact_policy,
    local_hour_and_weekday,
    next_send_times,
    offer_eligibility,
    policy_from_toml_dict,
)
from models.timestamps import NAT_US, to_us

HOUR = 3_600_000_000


def us(text: str) -> int:
    return int(to_us(pd.Timestamp(text, tz="UTC"))[0])


def test_default_policy_file_reads_and_round_trips():
    policy = load_contact_policy()
    assert DEFAULT_POLICY_FILE.name == "contact_policy.toml"
    assert policy.control_share == 0.05
    assert policy.quiet_hours == (21, 8)
    assert policy.overall_caps == Caps(1, 3)
    assert policy.caps_for("sms") == Caps(1, 1)
    assert policy.offer_rules["OF_BOGO"].categories == ("grocery", "beauty", "pet", "baby")
    assert policy.offer_rules["OF_DISC20"].exclude_segments == ("new",)
    assert ContactPolicy.from_dict(policy.to_dict()) == policy


def test_unknown_keys_and_bad_values_are_errors():
    with pytest.raises(ValueError, match="unknown key"):
        policy_from_toml_dict({"chanels": ["email"]})
    with pytest.raises(ValueError, match="unknown key"):
        policy_from_toml_dict({"caps": {"per_dya": 1}})
    with pytest.raises(ValueError, match="unknown segment"):
        policy_from_toml_dict({"offers": {"X": {"segments": ["vip"]}}})
    with pytest.raises(ValueError, match="share"):
        policy_from_toml_dict({"control_group": {"share": 1.5}})


def test_control_group_is_a_stable_hash():
    digest = hashlib.sha256(b"salt:C1").digest()[:8]
    assert control_hash(["C1"], "salt")[0] == pytest.approx(int.from_bytes(digest, "big") / 2**64)
    ids = [f"C{i:07d}" for i in range(20_000)]
    policy = ContactPolicy()
    members = in_control_group(ids, policy)
    assert np.array_equal(members, in_control_group(ids, policy))  # same answer every time
    assert 0.04 < members.mean() < 0.06
    assert not in_control_group(ids, ContactPolicy(control_share=0.0)).any()


def test_quiet_hours_cross_midnight():
    hours = np.arange(24)
    assert hours[is_quiet_hour(hours, (21, 8))].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 21, 22, 23]
    assert hours[is_quiet_hour(hours, (1, 5))].tolist() == [1, 2, 3, 4]
    assert not is_quiet_hour(hours, None).any()


def test_next_send_time_skips_quiet_hours_in_local_time_across_dst():
    # Berlin moves to summer time at 01:00 UTC on 29 March 2026. 20:30 UTC on the 28th is 21:30
    # local (quiet); the first allowed hour is 08:00 CEST on the 29th = 06:00 UTC.
    after = np.array([us("2026-03-28 20:30")])
    deadline = after + 72 * HOUR
    got = next_send_times(after, deadline, ["Europe/Berlin"], None, (21, 8))
    assert got[0] == us("2026-03-29 06:00")
    # scores preferring 10:00 local on Sundays (weekday 6): 08:00 UTC on the 29th
    scores = np.zeros((1, 168))
    scores[0, 6 * 24 + 10] = 1.0
    assert next_send_times(after, deadline, ["Europe/Berlin"], scores, (21, 8))[0] == us("2026-03-29 08:00")
    # New York, same instant: 16:30 local is allowed, the next whole hour is 17:00 local = 21:00 UTC
    assert next_send_times(after, deadline, ["America/New_York"], None, (21, 8))[0] == us("2026-03-28 21:00")
    # nothing allowed before the deadline → NaT
    short = next_send_times(after, after + 2 * HOUR, ["Europe/Berlin"], None, (21, 8))
    assert short[0] == NAT_US


def test_one_customers_send_time_is_the_batch_ones():
    """A request's one customer (one-dimensional arrays) gets the batch path's send time: random
    windows over DST changes, tied scores, no scores, quiet hours crossing midnight or none, NaT
    and windows too short for any hour."""
    rng = np.random.default_rng(11)
    n = 400
    zones = rng.choice(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"], n)
    after = us("2026-03-20 00:00") + rng.integers(0, 40 * 24 * 3600, n) * 1_000_000
    deadline = after + rng.choice([0, 1, 2, 30, 72, 168], n) * HOUR
    after[:5] = NAT_US
    deadline[5:10] = NAT_US
    scores = np.round(rng.random((n, 168)), 1)  # many ties
    for quiet in ((21, 8), (1, 5), None):
        for given in (scores, None):
            batch = next_send_times(after, deadline, zones, given, quiet)
            for i in range(n):
                one = next_send_times(
                    after[i : i + 1],
                    deadline[i : i + 1],
                    zones[i : i + 1],
                    None if given is None else given[i : i + 1],
                    quiet,
                )
                assert one[0] == batch[i], (i, quiet)


def test_ledger_counts_contacts_on_both_sides_and_per_channel():
    ledger = ContactLedger()
    ledger.record(
        ["A", "A", "A", "B"],
        ["email", "sms", "email", "email"],
        pd.to_datetime(
            ["2026-05-01 10:00", "2026-05-03 10:00", "2026-05-09 12:00", "2026-05-03 09:00"], utc=True
        ),
    )
    t = np.full(3, us("2026-05-03 12:00"))
    ids = ["A", "B", "C"]
    assert ledger.count_near(ids, t, 24).tolist() == [1, 1, 0]
    assert ledger.count_near(ids, t, 168).tolist() == [3, 1, 0]  # 9 May 12:00 is 6 days later
    assert ledger.count_near(ids, t, 168, channel="email").tolist() == [2, 1, 0]
    assert ledger.count_near(ids, t, 48, channel="sms").tolist() == [1, 0, 0]
    # several windows in one question: the same counts, one column each (and the batch path's)
    windows = [(24, None), (168, None), (168, "email"), (48, "sms"), (24, "push")]
    assert ledger.counts_near(ids, t, windows).tolist() == [[1, 3, 2, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]
    many = ids * 10
    assert np.array_equal(
        ledger.counts_near(many, np.full(30, t[0]), windows),
        np.tile(ledger.counts_near(ids, t, windows), (10, 1)),
    )
    last = ledger.last_contact_before(ids, t)
    assert last[0] == us("2026-05-03 10:00") and last[1] == us("2026-05-03 09:00") and last[2] == NAT_US


def test_a_few_customers_get_the_counts_of_the_batch_path_on_window_edges():
    """A request's question (at most FEW_IDS customers, answered from each customer's contacts
    read once) gives the batch path's counts: contacts exactly on a window's edge, several at one
    second, a channel without contacts, times before the first contact and NaT."""
    rng = np.random.default_rng(7)
    n = 400
    ids = rng.choice([f"c{i}" for i in range(12)], n)
    base = us("2026-05-01 00:00")
    seconds = base // 1_000_000 + rng.integers(0, 30 * 86_400, n)
    seconds[:40] = seconds[40:80]  # several contacts at the same second
    ledger = ContactLedger()
    ledger.record(ids, rng.choice(["email", "sms", "push"], n), pd.to_datetime(seconds, unit="s", utc=True))
    windows = [
        (24, None),
        (168, None),
        (24, "email"),
        (168, "sms"),
        (6, "push"),
        (24, "whatsapp"),
        (0.5, None),
    ]
    asked = np.array([f"c{i}" for i in range(14)], dtype=object)  # two unknown
    for _ in range(30):
        # each customer's own contact times, moved onto and around the windows' edges
        pick = np.array([rng.choice(np.flatnonzero(ids == cid)) if cid in ids else 0 for cid in asked])
        shift = rng.choice([0, 1, -1, 86_400, -86_400, 86_399, -86_399, 604_800, 7], len(asked))
        t = (seconds[pick] + shift) * 1_000_000
        t[0] = NAT_US
        t[1] = 0
        padded = np.concatenate([asked, asked[:5]])  # more than FEW_IDS: the batch path
        padded_t = np.concatenate([t, t[:5]])
        assert np.array_equal(
            ledger.counts_near(asked, t, windows), ledger.counts_near(padded, padded_t, windows)[: len(asked)]
        )
        for i in range(len(asked)):
            assert np.array_equal(
                ledger.counts_near(asked[i : i + 1], t[i : i + 1], windows)[0],
                ledger.counts_near(padded, padded_t, windows)[i],
            )
            assert (
                ledger.last_contact_before(asked[i : i + 1], t[i : i + 1])[0]
                == ledger.last_contact_before(padded, padded_t)[i]
            )
        assert np.array_equal(
            ledger.last_contact_before(asked, t), ledger.last_contact_before(padded, padded_t)[: len(asked)]
        )


def test_local_hours_of_a_few_instants_equal_pandas_conversion():
    """A request's send times (at most FEW_IDS, read from the zones' cached hour tables) get the
    local hour and weekday pandas gives, across DST changes, NaT, and instants that are not whole
    hours (converted directly)."""
    rng = np.random.default_rng(3)
    zones = np.array(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"] * 3)
    start = us("2026-03-01 00:00") // 3_600_000_000
    for whole_hours in (True, False):
        t = (start + rng.integers(0, 24 * 300, len(zones))) * 3_600_000_000
        if not whole_hours:
            t[4] += 1_800_000_000
        t[2] = NAT_US
        hours, weekdays = local_hour_and_weekday(t, zones)
        for i, (ts, zone) in enumerate(zip(t, zones, strict=True)):
            if ts == NAT_US:
                assert hours[i] == -1 and weekdays[i] == -1
                continue
            local = pd.Timestamp(int(ts), unit="us", tz="UTC").tz_convert(zone)
            assert (hours[i], weekdays[i]) == (local.hour, local.day_of_week)


def test_latest_consent_row_wins_and_no_row_means_no():
    consent = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["A", "A", "B"],
            c.CHANNEL: ["email", "email", "sms"],
            c.OPTED_IN: [True, False, True],
            c.UPDATED_TS: pd.to_datetime(["2026-01-01", "2026-02-01", "2026-01-01"], utc=True),
        }
    )
    got = latest_consent_matrix(consent, ["A", "B", "C"], ("email", "sms"))
    assert got.tolist() == [[False, False], [False, True], [False, False]]
    before_opt_out = latest_consent_matrix(consent, ["A"], ("email",), pd.Timestamp("2026-01-15", tz="UTC"))
    assert before_opt_out.tolist() == [[True]]
    assert latest_consent_matrix(None, ["A"], ("email",)).tolist() == [[True]]


def test_offer_eligibility_rules():
    rules = {
        "SEG": OfferRule(segments=("loyal", "champion")),
        "NOTNEW": OfferRule(exclude_segments=("new",)),
        "TIER": OfferRule(value_tiers=("high",)),
        "SPEND": OfferRule(min_spend=100.0),
        "CAT": OfferRule(categories=("pet",)),
    }
    offers = ["SEG", "NOTNEW", "TIER", "SPEND", "CAT", "FREE"]
    got = offer_eligibility(
        offers,
        segments=["loyal", "new", "active"],
        value_tiers=["high", "low", "none"],
        monetary=[150.0, 20.0, np.nan],
        bought_categories=[["pet", "books"], ["books"], []],
        rules=rules,
    )
    assert got.tolist() == [
        [True, True, True, True, True, True],
        [False, False, False, False, False, True],
        [False, True, False, False, False, True],
    ]


def test_audit_flags_every_rule():
    policy = ContactPolicy(
        channels=("email", "sms"),
        control_share=0.0,
        overall_caps=Caps(per_day=2, per_week=10),
        channel_caps={"sms": Caps(per_day=1, per_week=1)},
        cooldown_after_message_hours=2.0,
        cooldown_after_purchase_hours=48.0,
    )
    ledger = ContactLedger()
    ledger.record(
        ["cap", "cap", "sms", "cool"],
        ["email", "email", "sms", "email"],
        pd.to_datetime(
            ["2026-05-03 08:00", "2026-05-03 09:00", "2026-04-30 12:00", "2026-05-03 11:00"], utc=True
        ),
    )
    ledger.last_purchase_ = pd.Series({"buyer": us("2026-05-02 12:00")})
    ids = ["ok", "cap", "sms", "cool", "buyer", "quiet", "consent"]
    channels = ["email", "email", "sms", "email", "email", "email", "email"]
    send = np.full(len(ids), us("2026-05-03 12:00"))
    send[5] = us("2026-05-03 22:00")
    consented = np.array([True] * 6 + [False])
    audit = audit_sends(ids, channels, send, ["UTC"] * len(ids), consented, ledger, policy)
    broken = {cid: [col for col in audit.columns if audit.loc[i, col]] for i, cid in enumerate(ids)}
    assert broken == {
        "ok": [],
        "cap": ["over_cap_overall"],
        "sms": ["over_cap_channel"],
        "cool": ["cooldown_after_message"],
        "buyer": ["cooldown_after_purchase"],
        "quiet": ["quiet_hours"],
        "consent": ["no_consent"],
    }


# ----------------------------------------------------------------------------------------------
# 100,000 decisions on generated data
