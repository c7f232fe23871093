"""The single-decision path of the next-best-action engine (`decide_one`, what /v1/next_best_action
answers) decides exactly as the batch `decide`, with the models the service loads: the two-stage
recommender, the channel and send-time models and the engine of the session's trained store.

Also checks the look-ups that path relies on against the ones they stand in for: the ledger's
few-customer answers against its bulk ones, the channel chooser's table against the channel model, and the profiles'
per-request look-ups against their batch versions.
"""

import copy

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from models.base import FEW_IDS
from models.decisions.choosers import ChannelModelChooser
from models.decisions.decision_core import NO_ACTION, _decision_dict


@pytest.fixture(scope="module")
def served(trained, tracking_uri):
    from models.decisions.nba import NextBestActionEngine
    from models.engagement.channel import ChannelModel
    from models.engagement.send_time import SendTimeModel
    from models.recs.two_stage import TwoStageRecommender
    from training.settings import CHAMPION
    from training.tracking import download_model_folder

    def folder(name, artifact):
        return download_model_folder(tracking_uri, name, CHAMPION, artifact=artifact)[0]

    recommender = TwoStageRecommender.load(folder("omni-recommender", "recommender"))
    channel = ChannelModel.load(folder("omni-channel", "channel"))
    send_time = SendTimeModel.load(folder("omni-send-time", "send_time"))
    engine = NextBestActionEngine.load(folder("omni-nba", "nba"), recommender, channel, send_time)
    return engine, channel


def test_decide_one_is_the_batch_decision(served):
    engine, _ = served
    ids = engine.profiles_.frame_[c.CUSTOMER_ID].astype(str).tolist() + ["nobody"]
    rng = np.random.default_rng(0)
    sample = rng.choice(ids[:-1], 150, replace=False).tolist() + ["nobody"]
    actions, reasons = set(), set()
    for now in (engine.profiles_.as_of_ + pd.Timedelta(hours=30), pd.Timestamp("2031-01-02 07:45", tz="UTC")):
        batch = engine.decide(ids, now).set_index(c.CUSTOMER_ID, drop=False)
        for cid in sample:
            one = engine.decide_one(cid, now)
            assert one == _decision_dict(batch.loc[cid]), cid
            actions.add(one["action"])
            if one["action"] == NO_ACTION:
                reasons.add(one["reasons"][0])
    # the sample went through sends with items, and through several reasons for no action
    assert len(actions - {NO_ACTION}) >= 2 and NO_ACTION in actions
    assert {"unknown_customer", "control_group"} <= reasons and len(reasons) >= 3


def test_decide_one_respects_a_given_ledger_and_what_was_recorded(served):
    engine, _ = served
    ledger = copy.deepcopy(engine.ledger_)
    ids = engine.profiles_.frame_[c.CUSTOMER_ID].astype(str).tolist()[:200]
    now = engine.profiles_.as_of_ + pd.Timedelta(hours=30)
    first = engine.decide(ids, now, ledger=ledger, record=True)
    assert (first["action"] != NO_ACTION).any()
    later = now + pd.Timedelta(hours=2)
    batch = engine.decide(ids, later, ledger=ledger).set_index(c.CUSTOMER_ID, drop=False)
    for cid in ids[:60]:
        assert engine.decide_one(cid, later, ledger=ledger) == _decision_dict(batch.loc[cid])


def test_the_ledger_answers_a_few_customers_as_it_answers_many(served):
    """Questions about at most FEW_IDS customers use dict look-ups; padded past FEW_IDS, the same
    customers take the pandas path, and the answers must agree."""
    engine, _ = served
    contacts = engine.ledger_.contacts()
    ledger = copy.deepcopy(engine.ledger_)
    rng = np.random.default_rng(1)
    known = contacts[c.CUSTOMER_ID].astype(str).unique()
    pad = np.asarray(rng.choice(known, FEW_IDS + 1).tolist(), dtype=object)
    pad_t = np.full(len(pad), int(contacts[c.TS].max().value // 1000))
    for _ in range(2):
        for size in (1, 3, 15):
            ids = np.asarray(rng.choice(known, size).tolist() + ["nobody"], dtype=object)
            t_us = (
                contacts[c.TS].sample(len(ids), random_state=size).dt.as_unit("us").astype("int64").to_numpy()
            )
            t_us = t_us + rng.integers(-48, 48, len(ids)) * 3_600_000_000
            many, many_t, n = np.concatenate([ids, pad]), np.concatenate([t_us, pad_t]), len(ids)
            assert np.array_equal(ledger.last_purchase(ids), ledger.last_purchase(many)[:n])
            assert np.array_equal(
                ledger.last_contact_before(ids, t_us), ledger.last_contact_before(many, many_t)[:n]
            )
            for hours in (24, 168):
                assert np.array_equal(
                    ledger.count_near(ids, t_us, hours), ledger.count_near(many, many_t, hours)[:n]
                )
                for ch in ("email", "sms"):
                    assert np.array_equal(
                        ledger.count_near(ids, t_us, hours, ch),
                        ledger.count_near(many, many_t, hours, ch)[:n],
                    )
        # new contacts count at once, "nobody" included (a new customer: the dict must be rebuilt)
        when = pd.Series(pd.to_datetime(t_us[-2:], unit="us", utc=True))
        ledger.record(ids[-2:], ["email", "email"], when)


def test_the_channel_table_is_the_channel_model(served):
    engine, channel = served
    chooser = ChannelModelChooser(channel)
    ids = np.asarray(
        engine.profiles_.frame_[c.CUSTOMER_ID].astype(str).tolist()[:300] + ["nobody"], dtype=object
    )
    for ch in ("email", "push", "not-a-channel"):
        direct = channel.predict_proba(ids, np.full(len(ids), ch, dtype=object))["probability"].to_numpy()
        assert np.array_equal(chooser.open_probability(ids, ch), direct)
        assert np.array_equal(chooser.open_probability(ids[:1], ch), direct[:1])
        assert np.array_equal(chooser.open_probability(ids[-1:], ch), direct[-1:])


def test_profile_lookups_for_one_customer_equal_the_batch_ones(served):
    engine, _ = served
    profiles = engine.profiles_
    ids = profiles.frame_[c.CUSTOMER_ID].astype(str).tolist()
    many = ids + ["nobody"]
    rows = profiles.rows(many)  # more than a few: pandas
    one_by_one = [profiles.rows([cid])[0] for cid in many]
    assert one_by_one == rows.tolist() and one_by_one[-1] == -1
    with_items = profiles.replenishment_[c.CUSTOMER_ID].astype(str).unique().tolist()[:80]
    due_somewhere = False
    for days in (0, 10, 40):
        now = profiles.as_of_ + pd.Timedelta(days=days)
        batch = profiles.due_replenishments(with_items + ids[:40], now, k=3)  # more than a few: pandas
        assert [profiles.due_replenishments([cid], now, k=3)[0] for cid in with_items + ids[:40]] == batch
        due_somewhere |= any(batch)
        # more than a few rows, a few (one matrix take) and one (its times in Python)
        for some in (rows[:30], rows[:5], *(rows[i : i + 1] for i in range(12))):
            frame = profiles.model_features(some, now)
            arrays = profiles.model_feature_arrays(some, now)
            assert list(arrays) == list(frame.columns)
            for name in frame.columns:
                assert np.array_equal(arrays[name], frame[name].to_numpy(), equal_nan=True), name
    assert due_somewhere


def test_a_purchase_since_training_ends_the_reminder_for_what_was_bought(served):
    """At the moment a product's replenishment is due, a purchase of it posted since training (a
    layered ledger) takes it off the customer's due items, which reminders are made of; single and
    batch decisions agree under that ledger."""
    from models.decisions.contact_policy import LayeredLedger

    engine, _ = served
    table = engine.profiles_.replenishment_
    assert len(table), "the session's data has no replenishment cycles"
    due_us = table["last_purchase_us"] + (table["cycle_days"] * 86_400e6).astype("int64")
    checked = 0
    for cid, product, at in zip(table[c.CUSTOMER_ID], table[c.PRODUCT_ID], due_us, strict=True):
        now = pd.Timestamp(int(at), unit="us", tz="UTC")
        cid, product = str(cid), str(product)
        ids = np.array([cid], dtype=object)
        rows = engine.profiles_.rows(ids)
        everyone = np.arange(1)
        before = engine._customer_context(ids, rows, everyone, now, engine.ledger_)["due_items"][0]
        if product not in before:
            continue
        bought_at = (now - pd.Timedelta(days=3)).timestamp()  # past the purchase cooldown
        ledger = LayeredLedger.of_customer(engine.ledger_, cid, [], bought_at, {}, purchased=[product])
        after = engine._customer_context(ids, rows, everyone, now, ledger)["due_items"][0]
        assert product not in after and set(after) == set(before) - {product}
        assert _decision_dict(engine.decide([cid], now, ledger=ledger).iloc[0]) == engine.decide_one(
            cid, now, ledger=ledger
        )
        checked += 1
        if checked == 10:
            break
    assert checked == 10


def test_warming_builds_the_one_row_predictions(served):
    """A worker's warm-up prepares the compiled one-row predictions even when the customer it
    decides for never reaches the arbitration (control group, no consent)."""
    from models.decisions.nba import NextBestActionEngine

    engine, _ = served
    fresh = copy.copy(engine)
    fresh.uplift_ = copy.copy(engine.uplift_)
    fresh.uplift_.__dict__.pop("_stack_cache", None)
    fresh.uplift_.__dict__.pop("_compiled_cache", None)
    # a customer the engine cannot contact: the decision itself stops before the arbitration
    fresh.profiles_ = copy.copy(engine.profiles_)
    fresh.profiles_.frame_ = engine.profiles_.frame_.iloc[0:0]
    NextBestActionEngine.warm(fresh)
    kept = fresh.uplift_.__dict__.get("_stack_cache")
    assert kept is not None and kept[1] is not None  # every booster compiled, in one stack
