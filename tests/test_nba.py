"""Tests of the next-best-action arbitration (hand-computed gains), the engine on generated data
(decisions, reasons, labels, persistence, batches) and its training without messages or opens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from models.contact_policy import ContactPolicy, in_control_group
from models.nba import ACTIONS, DECISION_COLUMNS, NO_ACTION, NextBestActionEngine, arbitrate
from models.uplift import incremental_value


# ----------------------------------------------------------------------------------------------
# arbitration, by hand
def test_gain_is_uplift_times_margin_minus_cost_on_every_redemption():
    # arms: none, plain, an offer costing 10 % of the order; one channel with p_open 0.5
    got = arbitrate(
        mu=[[0.10, 0.12, 0.30]],
        p_open=[[0.5]],
        order_value=[100.0],
        margin_rate=0.3,
        offer_cost=[0.0, 0.0, 0.1],
        message_cost=[0.01],
    )
    # plain: P = 0.1 + 0.5·0.02 = 0.11 → 0.01·100·0.3 - 0.01 = 0.29
    # offer: P = 0.1 + 0.5·0.2 = 0.20 → 0.1·100·0.3 = 3.0 margin, 0.1·100·0.20 = 2.0 cost → 0.99
    assert got["send"][0] and got["arm"][0] == 2 and got["channel"][0] == 0
    assert got["gain"][0] == pytest.approx(0.99)
    assert got["uplift"][0] == pytest.approx(0.10)
    assert got["p_convert"][0] == pytest.approx(0.20)
    assert got["incremental_margin"][0] == pytest.approx(3.0)
    assert got["offer_cost"][0] == pytest.approx(2.0)  # paid by the 0.1 who would have bought anyway too
    assert got["contact_cost"][0] == pytest.approx(0.01)
    # the same number as models.uplift.incremental_value on the sent-level probabilities
    p = np.array([[0.10, 0.11, 0.20]])
    assert got["gain"][0] == pytest.approx(incremental_value(p, 0.3, [0, 0, 0.1])[0, 2] * 100 - 0.01)


def test_no_action_when_nothing_pays_with_the_best_candidate_kept():
    # a "sure thing": buys anyway, so a 20 % offer only costs
    got = arbitrate([[0.5, 0.5, 0.52]], [[0.5]], [100.0], 0.3, [0.0, 0.0, 0.2], [0.01])
    assert not got["send"][0] and got["arm"][0] == 0 and got["channel"][0] == -1
    assert got["gain"][0] == 0.0
    assert got["best_arm"][0] == 1 and got["best_gain"][0] == pytest.approx(-0.01)


def test_channel_choice_weighs_open_probability_against_message_cost():
    mu = [[0.10, 0.15]]
    cost = [0.0, 0.0]
    # email: 0.2·0.05·100·0.3 - 0.002 = 0.298; sms: 0.4·0.05·30 - 0.5 = 0.1
    got = arbitrate(mu, [[0.2, 0.4]], [100.0], 0.3, cost, [0.002, 0.5])
    assert got["channel"][0] == 0 and got["gain"][0] == pytest.approx(0.298)
    only_sms = arbitrate(mu, [[0.2, 0.4]], [100.0], 0.3, cost, [0.002, 0.5], channel_allowed=[[False, True]])
    assert only_sms["channel"][0] == 1 and only_sms["gain"][0] == pytest.approx(0.1)
    nothing = arbitrate(mu, [[0.2, 0.4]], [100.0], 0.3, cost, [0.002, 0.5], channel_allowed=[[False, False]])
    assert not nothing["send"][0] and np.isnan(nothing["best_gain"][0])


def test_ineligible_arms_and_the_guard_fallback():
    mu = [[0.10, 0.12, 0.30]]
    args = ([[0.5]], [100.0], 0.3, [0.0, 0.0, 0.1], [0.01])
    not_offer = arbitrate(mu, *args, arm_allowed=[[True, True, False]])
    assert not_offer["arm"][0] == 1 and not_offer["gain"][0] == pytest.approx(0.29)
    forced = arbitrate(mu, *args, forced_arm=1)
    assert forced["arm"][0] == 1
    # a forced arm that does not pay for this customer is not sent
    forced_loss = arbitrate([[0.5, 0.5, 0.5]], *args, forced_arm=2)
    assert not forced_loss["send"][0]
    higher_bar = arbitrate(mu, *args, min_gain=1.0)
    assert not higher_bar["send"][0]


# ----------------------------------------------------------------------------------------------
# the engine on generated data
@pytest.fixture(scope="module")
def tables(generated_data):
    from features.identity import stitch_identities
    from features.io import load_tables

    return stitch_identities(load_tables(generated_data))


@pytest.fixture(scope="module")
def profiles(tables):
    from models.profile import CustomerProfiles

    return CustomerProfiles(n_estimators=30).fit(tables)


@pytest.fixture(scope="module")
def engine(tables, profiles):
    return NextBestActionEngine(min_arm_rows=30, random_state=0).fit(tables, profiles)


def test_fits_on_a_thread_pool_learn_the_same_models(engine, tables, profiles):
    serial = NextBestActionEngine(min_arm_rows=30, random_state=0, fit_workers=1).fit(tables, profiles)
    features = profiles.features_
    np.testing.assert_array_equal(serial._arm_outcomes(features), engine._arm_outcomes(features))
    assert serial.metrics_ == engine.metrics_


def test_decide_without_items_decides_the_same(engine, profiles):
    ids = profiles.frame_[c.CUSTOMER_ID].to_numpy()[:300]
    full, bare = engine.decide(ids), engine.decide(ids, items=False)
    pd.testing.assert_frame_equal(full.drop(columns="product_ids"), bare.drop(columns="product_ids"))


def test_engine_learns_every_offer_and_decides_for_everyone(engine, profiles):
    assert engine.mode_ == "uplift"
    assert engine.arm_names_[:2] == ["none", "plain"] and len(engine.arm_names_) == 7
    assert engine.metrics_["training_messages"] > 1000
    assert "guard" in engine.metrics_
    ids = profiles.frame_[c.CUSTOMER_ID].tolist()
    decisions = engine.decide(ids + ids[:5])  # duplicates: one decision per customer
    assert list(decisions.columns) == list(DECISION_COLUMNS)
    assert len(decisions) == len(ids) and decisions[c.CUSTOMER_ID].tolist() == ids
    assert set(decisions["action"]) <= set(ACTIONS)
    assert decisions["reasons"].map(len).gt(0).all()
    sends = decisions.loc[decisions["action"] != NO_ACTION]
    assert len(sends) > 0
    assert str(sends["send_at"].dt.tz) == "UTC" and (sends["send_at"] >= profiles.as_of_).all()
    assert (sends["expected_gain"] > engine.policy_.min_expected_gain).all()
    parts = sends["incremental_margin"] - sends["offer_cost"] - sends["contact_cost"]
    np.testing.assert_allclose(sends["expected_gain"], parts)
    assert sends["reasons"].map(lambda r: r[0] == "positive_expected_gain").all()
    none = decisions.loc[decisions["action"] == NO_ACTION]
    assert (none["expected_gain"] == 0).all() and none["send_at"].isna().all()
    control = in_control_group(decisions[c.CUSTOMER_ID], engine.policy_)
    assert (decisions.loc[control, "reasons"].map(lambda r: r == ["control_group"])).all()
    offers = sends[c.OFFER_ID].dropna()
    assert set(offers) <= set(engine.offer_ids_)


def test_unknown_customer_and_decide_one(engine, profiles):
    unknown = engine.decide_one("nobody")
    assert unknown["action"] == NO_ACTION and unknown["reasons"] == ["unknown_customer"]
    cid = profiles.frame_[c.CUSTOMER_ID].iloc[3]
    one = engine.decide_one(cid)
    assert set(one) == {
        c.CUSTOMER_ID,
        "action",
        c.CHANNEL,
        "send_at",
        c.OFFER_ID,
        "product_ids",
        "expected_gain",
        "reasons",
    }
    assert set(one["expected_gain"]) >= {
        "value",
        "uplift",
        "incremental_margin",
        "offer_cost",
        "contact_cost",
    }
    batch = engine.decide([cid]).iloc[0]
    assert one["action"] == batch["action"] and one["expected_gain"]["value"] == pytest.approx(
        batch["expected_gain"]
    )


def test_recorded_sends_are_respected_by_the_next_batch(engine, profiles):
    import copy

    ledger = copy.deepcopy(engine.ledger_)
    ids = profiles.frame_[c.CUSTOMER_ID].tolist()
    first = engine.decide(ids, ledger=ledger, record=True)
    again = engine.decide(ids, ledger=ledger)
    sent_before = first["action"] != NO_ACTION
    assert sent_before.any()
    # the default policy: one message a day and 24 h between messages
    assert (again.loc[sent_before, "action"] == NO_ACTION).all()
    first_reason = again.loc[sent_before, "reasons"].map(lambda r: r[0])
    assert first_reason.isin(
        ["cooldown_after_message", "frequency_cap", "over_cap_overall", "over_cap_channel"]
    ).all()


def test_save_and_load_decide_the_same(engine, profiles, tmp_path):
    loaded = NextBestActionEngine.load(engine.save(tmp_path / "nba"))
    ids = profiles.frame_[c.CUSTOMER_ID].tolist()
    pd.testing.assert_frame_equal(loaded.decide(ids), engine.decide(ids))
    assert loaded.policy_ == engine.policy_


class _FixedUplift:
    """Stub predictor: the same conversion probabilities per arm for everyone."""

    def __init__(self, mu):
        self.mu = np.asarray(mu, dtype=float)

    def predict_outcomes(self, X):
        return np.tile(self.mu, (len(X), 1))


def test_action_labels_follow_the_customer(engine, profiles):
    stub = copy_engine(engine)
    stub.guard_ = None
    frame = profiles.frame_
    ids = frame[c.CUSTOMER_ID].tolist()
    # only the plain message helps: dormant → win_back, due items → replenishment, else product_message
    stub.uplift_ = _FixedUplift([0.05, 0.50, 0.05, 0.05, 0.05, 0.05, 0.05])
    decisions = stub.decide(ids).set_index(c.CUSTOMER_ID)
    sends = decisions.loc[decisions["action"] != NO_ACTION]
    segment = frame.set_index(c.CUSTOMER_ID).loc[sends.index, "segment"]
    assert (sends.loc[segment == "dormant", "action"] == "win_back").all()
    assert (sends.loc[segment != "dormant", "action"].isin(["replenishment", "product_message"])).all()
    assert sends[c.OFFER_ID].isna().all()
    due = profiles.due_replenishments(sends.index, profiles.as_of_, k=3)
    replenish = sends["action"] == "replenishment"
    assert [list(p) for p in sends.loc[replenish, "product_ids"]] == [
        d for d, r in zip(due, replenish, strict=True) if r
    ]
    assert (
        sends.loc[~replenish & (segment != "dormant")]
        .index.map(dict(zip(sends.index, due, strict=True)))
        .map(len)
        == 0
    ).all()
    # only the content offer helps: high-value customers get service content, others the offer
    content = stub.arm_names_.index("OF_CONTENT")
    mu = [0.05] * 7
    mu[content] = 0.5
    stub.uplift_ = _FixedUplift(mu)
    decisions = stub.decide(ids).set_index(c.CUSTOMER_ID)
    sends = decisions.loc[decisions["action"] != NO_ACTION]
    info = frame.set_index(c.CUSTOMER_ID).loc[sends.index]
    assert (sends[c.OFFER_ID] == "OF_CONTENT").all()
    high = (info["value_tier"] == "high") & (info["segment"] != "dormant")
    assert (sends.loc[high, "action"] == "service_content").all() and high.any()
    assert (sends.loc[~high & (info["segment"] != "dormant"), "action"] == "offer").all()
    # nothing helps: no action for everyone, with the reason and the best candidate
    stub.uplift_ = _FixedUplift([0.05] * 7)
    decisions = stub.decide(ids)
    assert (decisions["action"] == NO_ACTION).all()
    reasons = decisions["reasons"].map(lambda r: r[0])
    assert (reasons == "no_positive_gain").any()
    with_candidate = decisions.loc[reasons == "no_positive_gain", "reasons"]
    assert with_candidate.map(lambda r: r[1].startswith("best_candidate:")).all()


def test_offer_eligibility_is_applied(engine, profiles):
    stub = copy_engine(engine)
    stub.guard_ = None
    disc20 = stub.arm_names_.index("OF_DISC20")
    mu = [0.05] * 7
    mu[disc20] = 0.9
    stub.uplift_ = _FixedUplift(mu)
    decisions = stub.decide(profiles.frame_[c.CUSTOMER_ID]).set_index(c.CUSTOMER_ID)
    segment = profiles.frame_.set_index(c.CUSTOMER_ID).loc[decisions.index, "segment"]
    assert not (decisions.loc[segment == "new", c.OFFER_ID] == "OF_DISC20").any()  # excluded by the policy
    assert (decisions.loc[segment != "new", c.OFFER_ID] == "OF_DISC20").any()


def copy_engine(engine):
    import copy

    return copy.copy(engine)


def test_guard_fallback_sends_the_best_fixed_arm(engine, profiles):
    stub = copy_engine(engine)
    guard = copy_engine(engine.guard_)
    guard.fallback_, guard.best_fixed_arm_ = True, 0  # "no exposure for everyone" is best
    stub.guard_ = guard
    decisions = stub.decide(profiles.frame_[c.CUSTOMER_ID])
    assert (decisions["action"] == NO_ACTION).all()
    assert (
        decisions["reasons"]
        .map(lambda r: r[0])
        .isin(
            [
                "guard_fallback_no_action",
                "control_group",
                "no_consent",
                "cooldown_after_purchase",
                "cooldown_after_message",
                "frequency_cap",
                "unknown_customer",
            ]
        )
        .all()
    )
    guard.best_fixed_arm_ = engine.arm_names_.index("OF_CONTENT")
    sends = stub.decide(profiles.frame_[c.CUSTOMER_ID])
    sends = sends.loc[sends["action"] != NO_ACTION]
    assert len(sends) and (sends[c.OFFER_ID] == "OF_CONTENT").all()
    assert sends["reasons"].map(lambda r: r[1] == "guard_fallback_best_fixed_arm").all()


# ----------------------------------------------------------------------------------------------
# without messages, without opens
def test_without_messages_only_rules_with_an_assumed_uplift(tables):
    from training.nba_training import NBAConfig, train_nba

    no_messages = dataclasses.replace(tables, messages=None)
    profiles, engine, metrics, notes = train_nba(no_messages, config=NBAConfig(random_state=0))
    assert engine.mode_ == "rules" and engine.uplift_ is None
    assert any("uplift skipped" in n for n in notes)
    decisions = engine.decide(profiles.frame_[c.CUSTOMER_ID])
    sends = decisions.loc[decisions["action"] != NO_ACTION]
    assert len(sends) > 0 and sends[c.OFFER_ID].isna().all()
    assert set(sends["action"]) <= {"replenishment", "win_back"}
    assert sends["reasons"].map(lambda r: "prior_uplift_no_model" in r).all()
    assert metrics["nba.customers"] == len(profiles.frame_)


def test_without_opens_offers_are_learned_against_a_plain_message(tables, profiles):
    messages = tables.messages.assign(**{c.OPENED_TS: pd.NaT, c.CLICKED_TS: pd.NaT})
    no_opens = dataclasses.replace(tables, messages=messages)
    engine = NextBestActionEngine(min_arm_rows=30, guard=False, random_state=0).fit(no_opens, profiles)
    assert engine.mode_ == "plain_base"
    assert any("no opens" in n for n in engine.notes_)
    decisions = engine.decide(profiles.frame_[c.CUSTOMER_ID])
    # a plain message is assumed to do nothing, so it never pays for its own sake
    assert not decisions["action"].isin(["product_message", "replenishment"]).any()
    plain_sends = decisions.loc[(decisions["action"] != NO_ACTION) & decisions[c.OFFER_ID].isna()]
    assert plain_sends.empty


def test_train_nba_reports_metrics_and_notes(tables):
    from training.nba_training import NBAConfig, train_nba

    profiles, engine, metrics, notes = train_nba(
        tables, config=NBAConfig(min_arm_rows=30, guard_folds=2, random_state=0)
    )
    for key in ("nba.training_messages", "nba.guard.gain", "nba.guard.lower_bound", "profile.churn_auc"):
        assert np.isfinite(metrics[key]), key
    assert abs(sum(v for k, v in metrics.items() if k.startswith("nba.action_share.")) - 1.0) < 1e-9
    assert any("no channel model" in n for n in notes)
    assert isinstance(engine.policy_, ContactPolicy)
