"""Tests of the next-best-action arbitration (hand-computed gains), the engine on generated data
(decisions, reasons, labels, persistence, batches) and its training without messages or opens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from models.decisions.contact_policy import ContactPolicy, in_control_group
from models.decisions.decision_core import ACTIONS, DECISION_COLUMNS, NO_ACTION, arbitrate
from models.decisions.nba import NextBestActionEngine
from models.decisions.uplift import incremental_value


# ----------------------------------------------------------------------------------------------
# arbitration, by hand
def test_gain_is_uplift_times_margin_minus_cost_on_every_redemption():
    # arms: none, plain, an offer costing 10 (currency) per redemption; one channel with p_open 0.5
    got = arbitrate(
        mu=[[0.10, 0.12, 0.30]],
        p_open=[[0.5]],
        order_value=[100.0],
        margin_rate=0.3,
        offer_cost=[0.0, 0.0, 10.0],
        message_cost=[0.01],
    )
    # plain: P = 0.1 + 0.5·0.02 = 0.11 → 0.01·100·0.3 - 0.01 = 0.29
    # offer: P = 0.1 + 0.5·0.2 = 0.20 → 0.1·100·0.3 = 3.0 margin, 10·0.20 = 2.0 cost → 0.99
    assert got["send"][0] and got["arm"][0] == 2 and got["channel"][0] == 0
    assert got["gain"][0] == pytest.approx(0.99)
    assert got["uplift"][0] == pytest.approx(0.10)
    assert got["p_convert"][0] == pytest.approx(0.20)
    assert got["incremental_margin"][0] == pytest.approx(3.0)
    assert got["offer_cost"][0] == pytest.approx(2.0)  # paid by the 0.1 who would have bought anyway too
    assert got["contact_cost"][0] == pytest.approx(0.01)
    # the same number as models.decisions.uplift.incremental_value on the sent-level probabilities
    p = np.array([[0.10, 0.11, 0.20]])
    assert got["gain"][0] == pytest.approx(incremental_value(p, 0.3 * 100, [0, 0, 10.0])[0, 2] - 0.01)
    # the cost is per redemption whatever the order's size: on a 50 order the same offer costs as much
    small = arbitrate(
        [[0.10, 0.12, 0.30]], [[0.5]], [50.0], 0.3, [0.0, 0.0, 10.0], [0.01], forced_arm=2, min_gain=-np.inf
    )
    assert small["offer_cost"][0] == pytest.approx(2.0) and small["incremental_margin"][0] == pytest.approx(
        1.5
    )
    assert small["gain"][0] == pytest.approx(1.5 - 2.0 - 0.01)


def test_no_action_when_nothing_pays_with_the_best_candidate_kept():
    # a "sure thing": buys anyway, so an offer costing 20 per redemption only costs
    got = arbitrate([[0.5, 0.5, 0.52]], [[0.5]], [100.0], 0.3, [0.0, 0.0, 20.0], [0.01])
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
    args = ([[0.5]], [100.0], 0.3, [0.0, 0.0, 10.0], [0.01])
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
def tables(module_generated_tables):
    return module_generated_tables


@pytest.fixture(scope="module")
def profiles(tables):
    from models.decisions.profile import CustomerProfiles

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
    # personalised sends must pay; the guard's fallback sends the best fixed arm to everyone allowed
    personalised = sends["reasons"].map(lambda r: "personalised" in r)
    assert personalised.any() == (not engine.guard_.fallback_)
    assert (sends.loc[personalised, "expected_gain"] > engine.policy_.min_expected_gain).all()
    parts = sends["incremental_margin"] - sends["offer_cost"] - sends["contact_cost"]
    np.testing.assert_allclose(sends["expected_gain"], parts)
    first = sends["reasons"].map(lambda r: r[0])
    assert (first[personalised] == "positive_expected_gain").all()
    assert first[~personalised].isin(["positive_expected_gain", "best_fixed_arm"]).all()
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
    # the fixed arm itself is served: to every customer the contact policy allows, paying or not
    plan = stub.channel_plan(profiles.frame_[c.CUSTOMER_ID])
    allowed = plan.loc[plan[c.CHANNEL].notna(), c.CUSTOMER_ID]
    assert set(sends[c.CUSTOMER_ID]) == set(allowed)


# ----------------------------------------------------------------------------------------------
# without messages, without opens
def test_without_messages_only_rules_with_an_assumed_uplift(tables):
    from training.config import NBAConfig
    from training.nba_training import train_nba

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
    # what it would have sent, as the champion gate asks it: the plain message it decided (the
    # replenishment reminders and win-backs), on the channel it chose, and nothing where nothing paid
    moment = np.full(len(sends), int(profiles.as_of_.value // 1000), dtype=np.int64)
    arms, channels = engine.message_choices(sends[c.CUSTOMER_ID], moment, sends[c.CHANNEL])
    assert (arms == "plain").all() and (channels == sends[c.CHANNEL].to_numpy(dtype=object)).all()
    _nothing_pays_on_the_best_candidate_channel(engine, decisions, profiles.as_of_)


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
    from training.config import NBAConfig
    from training.nba_training import train_nba

    profiles, engine, metrics, notes = train_nba(
        tables, config=NBAConfig(min_arm_rows=30, guard_folds=2, random_state=0)
    )
    for key in (
        "nba.training_messages",
        "nba.guard.gain",
        "nba.guard.lower_bound",
        "nba.guard.confidence",
        "nba.guard.best_fixed_value",
        "nba.guard.personalised_value",
        "profile.churn_auc",
    ):
        assert np.isfinite(metrics[key]), key
    # the NBA baseline is the best fixed action: its value beside the engine's, and which is served
    guard = engine.metrics_["guard"]
    assert metrics["nba.guard.gain"] == pytest.approx(guard["validation_gain"]["gain"])
    assert metrics["nba.guard.served_fixed_action"] == float(engine.guard_.fallback_)
    assert guard["best_fixed_arm"] in guard["validation_values"]
    assert any(n.startswith("nba: guard: personalised choice") for n in notes)
    assert abs(sum(v for k, v in metrics.items() if k.startswith("nba.action_share.")) - 1.0) < 1e-9
    assert any("no channel model" in n for n in notes)
    assert isinstance(engine.policy_, ContactPolicy)


# ----------------------------------------------------------------------------------------------
# every shape of real data trains profiles and the engine (issue 14): small generated data with
# tables and columns taken away, recommender and channel model absent (None)
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from features.identity import stitch_identities
    from features.io import load_tables
    from features.synthetic import generate

    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(300, seed=1, out_dir=out)
    return stitch_identities(load_tables(out))


def _purchases(tables):
    events = tables.events
    return events.loc[events[c.EVENT_TYPE] == "purchase"].reset_index(drop=True)


def _train_and_decide(tables, **config):
    from training.config import NBAConfig
    from training.nba_training import train_nba

    profiles, engine, metrics, notes = train_nba(
        tables, None, None, None, NBAConfig(random_state=0, **config)
    )
    ids = profiles.frame_[c.CUSTOMER_ID].head(25).tolist()
    decisions = engine.decide(ids)
    assert list(decisions.columns) == list(DECISION_COLUMNS) and len(decisions) == len(ids)
    assert decisions["reasons"].map(len).gt(0).all()
    one = engine.decide_one(ids[0])
    assert one["action"] == decisions["action"].iloc[0]
    assert metrics["nba.customers"] == len(profiles.frame_)
    return profiles, engine, metrics, notes, decisions


def test_shape_purchases_only(small):
    only = dataclasses.replace(
        small,
        events=_purchases(small),
        messages=None,
        customers=None,
        identities=None,
        consent=None,
        products=None,
        offers=None,
    )
    profiles, engine, metrics, notes, decisions = _train_and_decide(only)
    assert engine.mode_ == "rules" and engine.uplift_ is None
    assert any("no messages table" in n for n in notes)
    # the same log with a single return row (the former tweedie "sum of labels is zero" crash)
    returns = small.events.loc[small.events[c.EVENT_TYPE] == "return"].head(1)
    _train_and_decide(dataclasses.replace(only, events=pd.concat([only.events, returns], ignore_index=True)))
    # and without amounts at all: spend is skipped with a note, churn still learned
    no_amounts = dataclasses.replace(only, events=only.events.assign(**{c.AMOUNT: np.nan}))
    profiles, engine, metrics, notes, _ = _train_and_decide(no_amounts)
    assert any("no amounts" in n for n in notes)


def test_shape_no_purchase_cannot_train(small):
    from models.base import CannotTrain

    views = small.events.loc[small.events[c.EVENT_TYPE] == "view"]
    with pytest.raises(CannotTrain, match="purchase"):
        _train_and_decide(dataclasses.replace(small, events=views))


def test_shape_purchases_without_product_ids_with_messages_and_offers(small):
    events = _purchases(small).assign(**{c.PRODUCT_ID: pd.NA})
    profiles, engine, metrics, notes, decisions = _train_and_decide(
        dataclasses.replace(small, events=events, products=None)
    )
    assert engine.mode_ == "uplift" and engine.recommender_ is None
    assert decisions["product_ids"].map(len).eq(0).all()  # no recommender, no replenishment cycles
    assert "nba.guard.best_fixed_value" in metrics and "nba.guard.personalised_value" in metrics


def test_shape_a_single_product(small):
    events = small.events.assign(**{c.PRODUCT_ID: "P1"})
    products = small.products.head(1).assign(**{c.PRODUCT_ID: "P1"})
    _train_and_decide(dataclasses.replace(small, events=events, products=products))


def test_shape_no_messages(small):
    profiles, engine, metrics, notes, decisions = _train_and_decide(dataclasses.replace(small, messages=None))
    assert engine.mode_ == "rules"
    assert decisions[c.OFFER_ID].isna().all()


def test_shape_three_weeks_of_history(small):
    start = small.events[c.TS].max() - pd.Timedelta(days=21)
    short = dataclasses.replace(
        small,
        events=small.events.loc[small.events[c.TS] >= start],
        messages=small.messages.loc[small.messages[c.SENT_TS] >= start],
    )
    profiles, engine, metrics, notes, _ = _train_and_decide(short)
    assert any("predicted spend and churn risk skipped" in n for n in notes)
    assert profiles.frame_["churn_risk"].isna().all()


def test_shape_forty_customers(small):
    keep = small.customers[c.CUSTOMER_ID].head(40)
    forty = dataclasses.replace(
        small,
        events=small.events.loc[small.events[c.CUSTOMER_ID].isin(keep)],
        messages=small.messages.loc[small.messages[c.CUSTOMER_ID].isin(keep)],
        customers=small.customers.loc[small.customers[c.CUSTOMER_ID].isin(keep)],
        consent=small.consent.loc[small.consent[c.CUSTOMER_ID].isin(keep)],
    )
    profiles, engine, metrics, notes, _ = _train_and_decide(forty)
    assert len(profiles.frame_) <= 40
    assert any("too little message history" in n for n in notes)  # uplift skipped, the rest trained


def test_shape_one_channel_for_events_and_one_for_messages(small):
    one = dataclasses.replace(
        small,
        events=small.events.assign(**{c.CHANNEL: "web"}),
        messages=small.messages.assign(**{c.CHANNEL: "email"}),
        consent=small.consent.loc[small.consent[c.CHANNEL] == "email"],
    )
    profiles, engine, metrics, notes, decisions = _train_and_decide(one)
    assert profiles.message_channels_ == ("email",)
    assert set(decisions[c.CHANNEL].dropna()) <= {"email"}


def test_shape_customer_attributes(small):
    customers = small.customers.copy()
    rng = np.random.default_rng(0)
    customers["attr.age"] = rng.integers(18, 80, len(customers)).astype(float)
    customers.loc[customers.index[::7], "attr.age"] = np.nan
    customers["attr.gender"] = pd.Series(rng.choice(["F", "M", "X"], len(customers)), dtype=object)
    customers.loc[customers.index[::5], "attr.gender"] = None
    profiles, engine, metrics, notes, _ = _train_and_decide(dataclasses.replace(small, customers=customers))
    assert {"attr.age", "attr.gender=F", "attr.gender=M"} <= set(profiles.attribute_names_)
    age = profiles.features_["attr.age"]
    assert age.isna().any() and age.dropna().between(18, 80).all()
    # compared with and without on validation, and the choice logged
    assert any("customer attributes" in n and "churn model" in n for n in notes)
    assert any("customer attributes" in n and "uplift" in n for n in notes)
    kept = engine.metrics_["attributes"]["kept"]
    assert any(name.startswith("attr.") for name in engine.feature_names_) == kept


# ----------------------------------------------------------------------------------------------
# marketing logs as they come: offer validity, every message carrying an offer
def test_duration_days_sets_the_conversion_window(small):
    from models.decisions.history import message_windows_days
    from models.decisions.profile import CustomerProfiles

    offers = small.offers.assign(**{c.DURATION_DAYS: np.nan})
    offers.loc[offers[c.OFFER_ID] == "OF_DISC10", c.DURATION_DAYS] = 3.0
    windows = message_windows_days(small.messages, offers, 14.0)
    disc10 = (small.messages[c.OFFER_ID] == "OF_DISC10").to_numpy()
    assert (windows[disc10] == 3.0).all() and (windows[~disc10] == 14.0).all()

    with_duration = dataclasses.replace(small, offers=offers)
    profiles = CustomerProfiles(forecast=False).fit(with_duration)
    engine = NextBestActionEngine(min_arm_rows=1, guard=False, random_state=0)
    engine.fit(with_duration, profiles)
    data = engine.training_data(with_duration, profiles)
    # recount the labels by hand: a message converts within its own window, learned once it closed
    m = small.messages
    days = np.where(m[c.OFFER_ID] == "OF_DISC10", 3.0, 14.0)
    window = pd.to_timedelta(days, unit="D")
    closed = (m[c.SENT_TS] + window < profiles.as_of_).to_numpy()
    converted = (m[c.CONVERTED_TS].notna() & (m[c.CONVERTED_TS] < m[c.SENT_TS] + window)).to_numpy()
    assert len(data["y"]) == closed.sum() and data["y"].sum() == (converted & closed).sum()
    assert set(data["window_us"] // 86_400_000_000) == {3, 14}
    # a 3-day offer converting on day 5 is a conversion of the default window, not of its own
    late = disc10 & closed & (m[c.CONVERTED_TS] - m[c.SENT_TS] > pd.Timedelta(days=3)).to_numpy()
    assert late.any()


def test_all_offer_messages_learn_arms_against_uncontacted_customers(small):

    rng = np.random.default_rng(0)
    messages = small.messages.assign(
        **{c.OFFER_ID: rng.choice(small.offers[c.OFFER_ID].to_numpy(), len(small.messages))}
    )
    every_offer = dataclasses.replace(small, messages=messages)
    profiles, engine, metrics, notes, decisions = _train_and_decide(every_offer)
    assert engine.mode_ == "offers_control"
    assert any("against each other and against" in n and "Assumption" in n for n in notes)
    uplift = engine.metrics_["arm_uplift"]
    assert uplift["against"] == "not_contacted" and uplift["rows"] == metrics["nba.control_rows"] > 200
    assert set(uplift["arms"]) == set(engine.offer_ids_) and len(engine.offer_ids_) >= 2
    for estimate in uplift["arms"].values():
        low, high = estimate["ci95"]
        assert low < estimate["uplift"] < high and estimate["rows"] >= 200
    assert any(n.startswith("nba: uplift per arm against not_contacted") for n in notes)
    # a plain message was never logged: it is never sent
    assert not (decisions["action"].isin(["product_message", "replenishment"])).any()

    # the control rows: customers without a message within the window around the same moment
    data = engine.training_data(every_offer, profiles)
    control = data["arm"] == 0
    sent = messages[[c.CUSTOMER_ID]].assign(us=pd.DatetimeIndex(messages[c.SENT_TS]).as_unit("us").asi8)
    by_customer = sent.groupby(c.CUSTOMER_ID)["us"].apply(np.sort).to_dict()
    assert control.sum() > 200
    for cid, t, w in zip(
        data["customer_id"][control], data["sent_us"][control], data["window_us"][control], strict=True
    ):
        times = by_customer.get(cid, np.array([], dtype=np.int64))
        assert not np.any(np.abs(times - t) <= w)
    assert np.isin(np.sort(data["sent_us"][control]), np.sort(data["sent_us"][~control])).all()


# ----------------------------------------------------------------------------------------------
# the champion gate (issue 14, item 9): what the deployed engine would have sent, valued off-policy
def test_a_logged_window_values_choices_by_inverse_propensity():
    from models.decisions.off_policy import LoggedWindow

    window = LoggedWindow(
        mode="uplift",
        labels=["none", "plain", "OF"],
        arm=np.array([0, 1, 2, 0]),  # unopened, opened plain, opened offer, unopened
        propensity=np.array([[0.5, 0.3, 0.2], [0.5, 0.4, 0.1], [0.6, 0.2, 0.2], [0.5, 0.3, 0.2]]),
        exposure=np.array([0.5, 0.5, 0.4, 0.5]),
        y=np.array([1.0, 1.0, 1.0, 0.0]),
        order_value=np.array([10.0, 10.0, 20.0, 10.0]),
        customer_id=np.array(["a", "b", "c", "d"], dtype=object),
        sent_us=np.zeros(4, dtype=np.int64),
        channel=np.array(["email"] * 4, dtype=object),
        margin_rate=0.5,
        offer_costs={"OF": 2.0},
        message_costs={"email": 0.1},
    )
    email = np.array(["email"] * 4, dtype=object)
    nothing = window.value(np.array(["none"] * 4, dtype=object), np.full(4, None, dtype=object))
    # only the unopened rows stand for "no message": 1 / P(unopened) × 5 on the first, 0 on the last
    assert nothing.value == pytest.approx((5 / 0.5) / 4) and nothing.sends == 0.0
    offer = window.value(np.array(["OF"] * 4, dtype=object), email)
    # unopened rows: seen with P(open), else no message, but a conversion pays the offer's cost:
    # (1 - 0.5) / 0.5 × (5 - 2) - 0.1; opened offer row: 0.4 / 0.2 × (10 - 2) - 0.1; others -0.1
    assert offer.value == pytest.approx((2.9 - 0.1 + 15.9 - 0.1) / 4) and offer.sends == 1.0
    np.testing.assert_allclose(offer.terms, [2.9, -0.1, 15.9, -0.1])
    # doubly robust with predicted conversions of 0.5 for every arm: the predicted profit under
    # the policy plus the weighted residual of the logged row (for "none" on the unopened rows):
    # 0.5 × 5 + (1 - 0.5) × 5 / 0.5, 0.5 × 5, 0.5 × 10, 0.5 × 5 + (0 - 0.5) × 5 / 0.5
    robust = window.value(np.array(["none"] * 4, dtype=object), email, outcomes=np.full((4, 3), 0.5))
    np.testing.assert_allclose(robust.terms, [7.5, 2.5, 5.0, -2.5])
    # an arm the window never logged cannot be valued: counted, and valued as no message
    unknown = window.value(np.array(["OF_NEW", "none", "none", "none"], dtype=object), email)
    assert unknown.unvalued == 0.25 and unknown.value == pytest.approx(nothing.value)


def test_message_choices_are_the_decisions_on_their_channel(engine, profiles):
    """What the engine says it would have sent a customer on a channel at a moment is what
    `decide` sends at that moment when it picks that channel; strangers and the control group get
    nothing."""
    ids = profiles.frame_[c.CUSTOMER_ID].to_numpy()
    now = profiles.as_of_
    decisions = engine.decide(ids, now, items=False)
    sends = decisions.loc[decisions["action"] != NO_ACTION]
    assert len(sends) > 20
    moment = np.full(len(sends), int(now.value // 1000), dtype=np.int64)
    arms, channels = engine.message_choices(sends[c.CUSTOMER_ID], moment, sends[c.CHANNEL])
    expected = sends[c.OFFER_ID].fillna("plain").to_numpy(dtype=object)
    np.testing.assert_array_equal(arms, expected)
    np.testing.assert_array_equal(channels, sends[c.CHANNEL].to_numpy(dtype=object))
    _nothing_pays_on_the_best_candidate_channel(engine, decisions, now)
    control = ids[in_control_group(ids, engine.policy_)][:5]
    strangers = np.array(["nobody-1", "nobody-2"], dtype=object)
    arms, channels = engine.message_choices(
        np.r_[control, strangers], np.zeros(len(control) + 2, dtype=np.int64), None
    )
    assert (arms == "none").all() and pd.isna(channels).all()


def test_tables_before_a_moment_are_the_data_as_they_were(tables):
    from training.nba_training import tables_before

    moment = tables.events[c.TS].max() - pd.Timedelta(days=28)
    before = tables_before(tables, moment)
    assert len(before.events) == int((tables.events[c.TS] < moment).sum()) < len(tables.events)
    assert (before.messages[c.SENT_TS] < moment).all() and len(before.messages) < len(tables.messages)
    assert (before.consent[c.UPDATED_TS] < moment).all()
    signup = before.customers[c.SIGNUP_TS]
    assert (signup.isna() | (signup < moment)).all() and len(before.customers) < len(tables.customers)


def _nothing_pays_on_the_best_candidate_channel(engine, decisions, now):
    """Where `decide` found nothing that pays, the engine would send nothing on the channel of its
    best candidate either."""
    unpaid = decisions.loc[decisions["reasons"].map(lambda r: r[0] == "no_positive_gain")]
    assert len(unpaid) > 0
    channel = unpaid["reasons"].map(lambda r: r[1].split("@")[1].split(":")[0])
    moment = np.full(len(unpaid), int(now.value // 1000), dtype=np.int64)
    arms, _ = engine.message_choices(unpaid[c.CUSTOMER_ID], moment, channel)
    assert (arms == "none").all()


def _nba_train_and_gate(tables, uri: str):
    """Profiles and next-best-action trained as `omni train` trains them (`training.families`),
    then registered behind the champion gate (the other families are left out here)."""
    import tempfile
    from pathlib import Path

    import mlflow

    from training.config import TrainConfig
    from training.families import FAMILIES, FamilyOutcome, TrainContext
    from training.tracking import setup_tracking
    from training.train import register_families

    context = TrainContext(tables, TrainConfig(), test_days=28, tracking_uri=uri)
    for family in FAMILIES:
        if family.name in ("profiles", "next_best_action"):
            context.outcomes[family.name] = family.fit(context)
        else:
            context.outcomes[family.name] = FamilyOutcome(family.name, reason="not trained in this test")
    client = setup_tracking(uri)
    with mlflow.start_run(), tempfile.TemporaryDirectory() as tmp:
        (decision,), _ = register_families(context, client, Path(tmp))
    return context.outcomes["next_best_action"], decision, client


def test_the_deployed_engine_is_judged_on_new_data(tables, own_store, tmp_path):
    """An engine trained four weeks before the end and this run's engine fitted before those four
    weeks are both valued on the messages sent since: same data before the window, same settings,
    same value, so the new version is promoted and both scores are logged. With nothing newer than
    the champion, the champion stays; a champion this code cannot read is replaced."""
    import json
    import shutil

    import mlflow

    from models.catalog import NBA
    from training.nba_training import tables_before
    from training.pyfunc import log_pyfunc
    from training.tracking import download_model_folder

    uri = own_store  # its own store: the session's champions stay put
    cut = tables.events[c.TS].max() - pd.Timedelta(days=28)
    _, first, client = _nba_train_and_gate(tables_before(tables, cut), uri)
    assert first.promoted and first.reason == "no current champion"

    outcome, second, _ = _nba_train_and_gate(tables, uri)
    scores = outcome.extra["champion"]
    assert scores["window_mode"] == "uplift" and scores["window_rows"] > 100
    assert pd.Timestamp(scores["window_start"]) >= cut
    assert second.metric == outcome.promotion_metric == "nba.window_value"
    assert second.champion_score == pytest.approx(scores["score"])
    assert second.challenger_score == pytest.approx(scores["challenger_score"])
    assert second.challenger_score == pytest.approx(second.champion_score, rel=1e-9)
    assert second.promoted and "as deployed" in second.reason and second.previous_champion == "1"
    logged = json.loads(client.get_model_version("omni-nba", second.challenger_version).tags["promotion"])
    assert logged["champion_score"] == pytest.approx(scores["score"])
    assert logged["challenger_score"] == pytest.approx(scores["challenger_score"])

    _, third, _ = _nba_train_and_gate(tables, uri)  # nothing newer than champion v2
    assert not third.promoted and third.champion_score is None
    assert "cannot be judged on new data" in third.reason and "the champion stays" in third.reason

    # a champion in a format this code cannot read is replaced, with the reason
    folder, _ = download_model_folder(uri, "omni-nba", "champion", artifact="nba")
    old = tmp_path / "old" / "nba"
    old.parent.mkdir()
    shutil.copytree(folder, old)
    meta = json.loads((old / "nba.json").read_text())
    (old / "nba.json").write_text(json.dumps({**meta, "format_version": 0}))
    with mlflow.start_run():
        version = log_pyfunc(NBA, old)
    client.set_registered_model_alias("omni-nba", "champion", version)
    _, fourth, _ = _nba_train_and_gate(tables, uri)
    assert fourth.promoted and "cannot be read by this code" in fourth.reason
