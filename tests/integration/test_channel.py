"""Channel model and the channel / send-time training step: known answers on hand-made data,
consent (latest row wins, nobody reachable), customers without history, leak-free features,
transaction-log-only data, persistence, evaluation and MLflow registration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from features.io import Tables
from models.base import CannotTrain
from models.consent import latest_consent
from models.engagement.channel import ChannelModel
from models.engagement.channel_history import history_features

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def _ts(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True).dt.as_unit("us")


def _hand_made(n_customers: int = 240, per_customer: int = 8, seed: int = 0) -> dict[str, pd.DataFrame]:
    """SMS is read by store shoppers, push by app shoppers, e-mail by few; every customer is
    messaged on random channels. Customers `none*`, `out*`, `new*` are special (see tests)."""
    rng = np.random.default_rng(seed)
    rows, events = [], []
    for i in range(n_customers):
        cid = f"c{i:03d}"
        app_shopper = i % 2 == 0
        for k in range(6):
            events.append((cid, T0 + pd.Timedelta(days=k, hours=10), "app" if app_shopper else "store"))
        for j in range(per_customer):
            ch = ["email", "sms", "push"][int(rng.integers(3))]
            p = {"email": 0.1, "sms": 0.2 if app_shopper else 0.7, "push": 0.7 if app_shopper else 0.2}[ch]
            sent = T0 + pd.Timedelta(days=10 + 5 * j, hours=int(rng.integers(8, 20)))
            opened = sent + pd.Timedelta(minutes=30) if rng.random() < p else pd.NaT
            rows.append((f"{cid}-{j}", cid, ch, sent, opened))
    for cid in ("none1", "out1", "new1", "new2"):
        events.append((cid, T0 + pd.Timedelta(days=3, hours=9), "app"))
    messages = pd.DataFrame(rows, columns=[c.MESSAGE_ID, c.CUSTOMER_ID, c.CHANNEL, c.SENT_TS, c.OPENED_TS])
    messages[c.SENT_TS], messages[c.OPENED_TS] = _ts(messages[c.SENT_TS]), _ts(messages[c.OPENED_TS])
    messages[c.CONVERTED_TS] = _ts(messages[c.OPENED_TS].where(rng.random(len(messages)) < 0.3))
    ev = pd.DataFrame(events, columns=[c.CUSTOMER_ID, c.TS, c.CHANNEL])
    ev[c.TS] = _ts(ev[c.TS])
    ev[c.EVENT_TYPE] = "purchase"
    ids = sorted({r[1] for r in rows}) + ["none1", "out1", "new1", "new2"]
    consent = [
        (cid, ch, True, T0) for cid in ids for ch in ("email", "sms", "push") if cid not in ("none1", "out1")
    ]
    consent += [("out1", ch, True, T0) for ch in ("email", "sms")]
    consent += [("out1", ch, False, T0 + pd.Timedelta(days=20)) for ch in ("email", "sms")]  # latest wins
    consent += [("c001", "push", False, T0 + pd.Timedelta(days=30))]  # opted out of push later
    consent += [("c003", "email", False, T0 + pd.Timedelta(days=500))]  # after as_of: not known yet
    consent = pd.DataFrame(consent, columns=[c.CUSTOMER_ID, c.CHANNEL, c.OPTED_IN, c.UPDATED_TS])
    consent[c.UPDATED_TS] = _ts(consent[c.UPDATED_TS])
    customers = pd.DataFrame({c.CUSTOMER_ID: ids, c.TIMEZONE: "Europe/Paris"})
    return {"messages": messages, "events": ev, "consent": consent, "customers": customers}


@pytest.fixture(scope="module")
def hand_made():
    return _hand_made()


@pytest.fixture(scope="module")
def model(hand_made):
    as_of = T0 + pd.Timedelta(days=120)
    return ChannelModel(n_estimators=80, min_child_samples=20, random_state=0).fit(
        hand_made["messages"], hand_made["events"], hand_made["consent"], hand_made["customers"], as_of=as_of
    )


def test_known_answer_cross_channel_activity(model):
    ranked = model.rank_channels(["c010", "c011", "new1"])
    top = ranked.loc[ranked[c.RANK] == 1].set_index(c.CUSTOMER_ID)[c.CHANNEL]
    assert top["c010"] == "push"  # app shopper
    assert top["c011"] == "sms"  # store shopper
    assert top["new1"] == "push"  # no messages, but shops in the app: a segment (look-alike) estimate
    assert ranked.set_index(c.CUSTOMER_ID).loc["new1", "fallback"].all()
    assert not ranked.set_index(c.CUSTOMER_ID).loc["c010", "fallback"].any()
    assert ranked.groupby(c.CUSTOMER_ID)[c.RANK].apply(list).to_dict()["c010"] == [1, 2, 3]
    probs = ranked["probability"]
    assert probs.between(0, 1).all()


def test_probabilities_are_calibrated_on_later_messages(model):
    info = model.training_info_["engagement"]
    assert info["calibration_rows"] > 0 and not info["constant"]
    scored = model.predict_proba(["c010"] * 3, ["push", "sms", "email"]).set_index(c.CHANNEL)["probability"]
    assert scored["push"] > 0.45 and scored["email"] < 0.3


def test_consent_latest_row_wins(model, hand_made):
    latest = latest_consent(hand_made["consent"], model.as_of_)
    assert len(latest) == len(latest.drop_duplicates([c.CUSTOMER_ID, c.CHANNEL]))
    ranked = model.rank_channels(["c001", "c003"])
    assert "push" not in ranked.loc[ranked[c.CUSTOMER_ID] == "c001", c.CHANNEL].tolist()
    # an opt-out dated after as_of was not known at as_of
    assert "email" in ranked.loc[ranked[c.CUSTOMER_ID] == "c003", c.CHANNEL].tolist()


def test_no_consent_anywhere_is_an_answer_not_an_error(model):
    ranked = model.rank_channels(["none1", "out1", "c010"])
    assert set(ranked[c.CUSTOMER_ID]) == {"c010"}
    reasons = model.no_channel_reasons(["none1", "out1", "c010", "ghost"]).set_index(c.CUSTOMER_ID)[c.REASON]
    assert "c010" not in reasons
    assert "no consent on record" in reasons["none1"]
    assert "opted out of every channel" in reasons["out1"] and "email" in reasons["out1"]
    assert "unknown customer" in reasons["ghost"]
    assert model.no_channel_reason("c010") is None
    assert model.rank_channels(["none1"]).empty
    assert model.count_without_channel() == len(model.no_channel_reasons()) > 0


def test_without_consent_table_every_message_channel_is_allowed(hand_made):
    model = ChannelModel(n_estimators=20, min_child_samples=20).fit(
        hand_made["messages"], hand_made["events"], None, hand_made["customers"]
    )
    assert any("no consent table" in note for note in model.notes_)
    ranked = model.rank_channels(["none1", "c010"])
    assert ranked.groupby(c.CUSTOMER_ID).size().to_dict() == {"c010": 3, "none1": 3}


def test_features_are_strictly_before_the_query_time(hand_made):
    messages = hand_made["messages"]
    first = messages.loc[messages[c.CUSTOMER_ID] == "c000"].sort_values(c.SENT_TS).iloc[:2]
    t = first[c.SENT_TS].iloc[1]
    queries = pd.DataFrame({c.CUSTOMER_ID: ["c000", "c000"], "_t": _ts([t, t + pd.Timedelta(seconds=1)])})
    rates = {"email": 0.1, "sms": 0.4, "push": 0.4}
    feats = history_features(
        queries, messages, hand_made["events"], None, ["email", "push", "sms"], ["app"], rates
    )
    # at the second message's send time only the first has been sent; one second later both
    assert feats["sent_total"].tolist() == [1.0, 2.0]
    opened = first[c.OPENED_TS].iloc[0]
    if pd.notna(opened) and opened >= t:  # an open after the query time is not known at it
        assert feats["engaged_total"].iloc[0] == 0.0
    assert feats["events_app"].iloc[0] == 6.0


def test_consent_features_are_the_latest_row_before_the_query_time(hand_made):
    consent = hand_made["consent"]
    queries = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["out1", "out1", "c003", "none1"],
            "_t": _ts(
                [T0 + pd.Timedelta(days=10), T0 + pd.Timedelta(days=30)] + [T0 + pd.Timedelta(days=120)] * 2
            ),
        }
    )
    feats = history_features(queries, None, None, None, ["email", "push", "sms"], [], {}, consent)
    assert feats["consent_email"].tolist() == [1.0, 0.0, 1.0, 0.0]  # out1 opted out on day 20
    assert feats["consent_push"].tolist() == [0.0, 0.0, 1.0, 0.0]  # c003's day-500 opt-out is not known


def test_identities_and_consent_place_a_customer_without_any_history(hand_made):
    """Nobody has activity or messages but `dev1` (an app device) and `card1` (a loyalty card):
    app shoppers have an app device, store shoppers a loyalty card, so push and SMS."""
    ids = [f"c{i:03d}" for i in range(240)]
    identities = pd.DataFrame(
        {
            c.SOURCE_SYSTEM: ["app_device" if int(cid[1:]) % 2 == 0 else "pos_loyalty" for cid in ids]
            + ["app_device", "pos_loyalty"],
            c.SOURCE_ID: [f"x{cid}" for cid in ids] + ["xdev1", "xcard1"],
            c.CUSTOMER_ID: ids + ["dev1", "card1"],
        }
    )
    extra = pd.DataFrame(
        [(cid, ch, True, T0) for cid in ("dev1", "card1") for ch in ("email", "sms", "push")],
        columns=[c.CUSTOMER_ID, c.CHANNEL, c.OPTED_IN, c.UPDATED_TS],
    ).assign(**{c.UPDATED_TS: _ts([T0] * 6)})
    consent = pd.concat([hand_made["consent"], extra], ignore_index=True)
    model = ChannelModel(n_estimators=20, min_child_samples=20).fit(
        hand_made["messages"],
        hand_made["events"],
        consent,
        hand_made["customers"],
        as_of=T0 + pd.Timedelta(days=120),
        identities=identities,
    )
    assert {"known_app_device", "known_pos_loyalty"} <= set(model.feature_names_)
    ranked = model.rank_channels(["dev1", "card1"])
    top = ranked.loc[ranked[c.RANK] == 1].set_index(c.CUSTOMER_ID)[c.CHANNEL]
    assert top["dev1"] == "push" and top["card1"] == "sms"
    assert ranked["fallback"].all()


def test_save_load_roundtrip(model, tmp_path):
    loaded = ChannelModel.load(model.save(tmp_path / "channel"))
    ids = ["c010", "c011", "new1", "out1", "none1"]
    pd.testing.assert_frame_equal(loaded.rank_channels(ids), model.rank_channels(ids))
    assert loaded.no_channel_reason("out1") == model.no_channel_reason("out1")
    assert (tmp_path / "channel" / "conversion.lgb.txt").is_file()  # engagement: arrays in channel.npz
    np.testing.assert_allclose(loaded.glm_coef_, model.glm_coef_)
    pd.testing.assert_frame_equal(
        loaded.predict_proba(ids, ["push"] * len(ids)), model.predict_proba(ids, ["push"] * len(ids))
    )


def test_needs_messages():
    with pytest.raises(CannotTrain, match="messages"):
        ChannelModel().fit(pd.DataFrame({c.CUSTOMER_ID: [], c.CHANNEL: [], c.SENT_TS: []}))
    assert issubclass(CannotTrain, ValueError)


def test_outcome_windows_are_learned_from_the_delays(model):
    """Opens come 30 minutes after the send and conversions with them: the windows are learned from
    those delays (at least an hour), not set to any generator's."""
    assert model.open_window_days_ == pytest.approx(1 / 24)
    assert model.conversion_window_days_ == pytest.approx(1 / 24)
    fixed = ChannelModel(open_window_days=2.0, conversion_window_days=9.0).get_params()
    assert fixed["open_window_days"] == 2.0 and fixed["conversion_window_days"] == 9.0


def test_rule_mode_ranks_by_the_smoothed_engagement_rate(model, hand_made, tmp_path):
    """serve="rule": each customer's channels ranked by (engaged + m p) / (sent + m) on the channel,
    p the channel's rate and m its estimated prior strength; the model's columns are kept."""
    rule = model.rank_channels(["c010", "new1"], serve="rule")
    assert rule.columns.tolist() == model.rank_channels(["c010"]).columns.tolist()
    msgs = hand_made["messages"]
    mine = msgs.loc[(msgs[c.CUSTOMER_ID] == "c010") & (msgs[c.SENT_TS] < model.as_of_)]
    for ch, row in rule.loc[rule[c.CUSTOMER_ID] == "c010"].set_index(c.CHANNEL).iterrows():
        sent_on = mine.loc[mine[c.CHANNEL] == ch]
        engaged = float((sent_on[c.OPENED_TS] < model.as_of_).sum())
        m, p = model.rule_strength_[ch], model.channel_rates_[ch]
        expected = p if not np.isfinite(m) else (engaged + m * p) / (len(sent_on) + m)
        assert row["probability"] == pytest.approx(expected)
    # a customer without messages gets the channels' rates, in their order
    new = rule.loc[rule[c.CUSTOMER_ID] == "new1"].set_index(c.CHANNEL)["probability"]
    assert new.to_dict() == pytest.approx({ch: model.channel_rates_[ch] for ch in new.index})
    assert new.index[0] == max(new.index, key=model.channel_rates_.get)
    # the mode travels with the saved model
    served = ChannelModel.load(clone_with(model, serve="rule").save(tmp_path / "rule"))
    pd.testing.assert_frame_equal(served.rank_channels(["c010", "new1"]), rule)
    with pytest.raises(ValueError, match="serve"):
        model.rank_channels(["c010"], serve="oracle")


def clone_with(model: ChannelModel, **params) -> ChannelModel:
    import copy

    return copy.copy(model).set_params(**params)


def _own_propensity_data(seed: int = 0, n: int = 200, per: int = 40, days: int = 180) -> Tables:
    """Engagement driven by each customer's own propensity per channel (strongly different between
    customers), independent of every feature the model reads (activity is noise): nothing but the
    customer's own history tells, which is exactly what the engagement-ratio rule reads."""
    rng = np.random.default_rng(seed)
    channels = np.array(["email", "sms", "push"])
    propensity = rng.beta(0.6, 1.2, (n, len(channels)))
    customer = np.repeat(np.arange(n), per)
    channel = rng.integers(0, len(channels), n * per)
    sent = T0 + pd.to_timedelta(rng.uniform(0, days, n * per), unit="D")
    opened = rng.random(n * per) < propensity[customer, channel]
    messages = pd.DataFrame(
        {
            c.MESSAGE_ID: [f"m{i}" for i in range(n * per)],
            c.CUSTOMER_ID: [f"c{i}" for i in customer],
            c.CHANNEL: channels[channel],
            c.SENT_TS: pd.DatetimeIndex(sent).as_unit("us"),
        }
    )
    messages[c.OPENED_TS] = messages[c.SENT_TS].where(opened) + pd.Timedelta(minutes=20)
    who = rng.integers(0, n, n * 10)
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: [f"c{i}" for i in who],
            c.TS: pd.DatetimeIndex(T0 + pd.to_timedelta(rng.uniform(0, days, n * 10), unit="D")).as_unit(
                "us"
            ),
            c.CHANNEL: rng.choice(["store", "web", "app"], n * 10),
            c.EVENT_TYPE: "purchase",
        }
    )
    return Tables(events=events, messages=messages)


def test_the_rule_is_served_where_it_wins_on_validation():
    from training.channel_training import train_channel_and_send_time
    from training.config import ChannelTrainingConfig

    result = train_channel_and_send_time(_own_propensity_data(), config=ChannelTrainingConfig(test_days=28))
    m = result.metrics
    model_auc, rule_auc = (
        m["channel.validation.model.engagement_auc"],
        m["channel.validation.rule.engagement_auc"],
    )
    assert rule_auc >= model_auc  # on this data nothing but own history tells: the rule is not beaten
    assert result.served["channel"] == "rule" and result.channel_model.serve == "rule"
    assert any("serves the engagement-ratio rule" in note for note in result.notes)
    # the registered model answers with the rule, and the test window logs both side by side
    ids = result.channel_model.customer_ids_[:20]
    pd.testing.assert_frame_equal(
        result.channel_model.rank_channels(ids), result.channel_model.rank_channels(ids, serve="rule")
    )
    for key in ("channel.engagement_auc", "channel.rule.engagement_auc", "channel.served.engagement_auc"):
        assert np.isfinite(m[key]), key
    assert m["channel.served.engagement_auc"] == m["channel.rule.engagement_auc"]
    assert "channel.rule.top_channel_lift" in m and "channel.rule.engagement_log_loss" in m


def test_choose_served_takes_the_best_and_the_simpler_on_a_tie():
    from training.channel_evaluation import SEND_TIME_POLICIES, choose_served

    metrics = ("matched_stratified_rate_matched", "activity_hit_rate")
    scores = {
        "model": {"matched_stratified_rate_matched": 0.30, "activity_hit_rate": 0.5},
        "customer_modal_hour": {"matched_stratified_rate_matched": 0.30, "activity_hit_rate": 0.4},
        "global_best_hour": {"matched_stratified_rate_matched": 0.20, "activity_hit_rate": 0.3},
    }
    assert choose_served(scores, SEND_TIME_POLICIES, metrics)[:2] == ("customer_modal_hour", metrics[0])
    scores["model"]["matched_stratified_rate_matched"] = 0.31
    assert choose_served(scores, SEND_TIME_POLICIES, metrics)[0] == "model"
    # a metric not measured for every policy is skipped; none measured: the model, not validated
    del scores["global_best_hour"]["matched_stratified_rate_matched"]
    assert choose_served(scores, SEND_TIME_POLICIES, metrics)[:2] == ("model", "activity_hit_rate")
    # a metric resting on too few rows does not count either
    scores["global_best_hour"]["activity_hit_rate"] = 0.9
    scores["global_best_hour"]["activity_hours"] = 5.0
    assert choose_served(scores, SEND_TIME_POLICIES, metrics)[:2] == ("model", None)
    served, metric, reason = choose_served({}, SEND_TIME_POLICIES, metrics)
    assert (served, metric) == ("model", None) and "not validated" in reason


def _with_attributes(hand_made: dict) -> pd.DataFrame:
    """attr.age drives SMS engagement in `_attribute_data`; attr.tier is text; both partly missing."""
    customers = hand_made["customers"].copy()
    number = customers[c.CUSTOMER_ID].str[1:].str.extract(r"(\d+)")[0].astype(float)
    customers["attr.age"] = np.where(number % 3 == 0, 62.0, 28.0)
    customers.loc[number % 7 == 0, "attr.age"] = np.nan
    customers["attr.tier"] = np.where(number % 2 == 0, "gold", "silver")
    customers.loc[number % 5 == 0, "attr.tier"] = None
    return customers


def test_customer_attributes_are_features_kept_where_they_help(tmp_path):
    rng = np.random.default_rng(1)
    data = _hand_made(n_customers=300, per_customer=10, seed=3)
    customers = _with_attributes(data)
    age = customers.set_index(c.CUSTOMER_ID)["attr.age"]
    msgs = data["messages"].copy()
    # SMS is read by the over-50s only (whatever they shop): an attribute the activity does not tell
    older = msgs[c.CUSTOMER_ID].map(age).fillna(40.0).to_numpy() > 50
    p = np.where(msgs[c.CHANNEL] == "sms", np.where(older, 0.8, 0.05), 0.3)
    msgs[c.OPENED_TS] = msgs[c.SENT_TS].where(rng.random(len(msgs)) < p) + pd.Timedelta(minutes=30)
    as_of = T0 + pd.Timedelta(days=70)
    model = ChannelModel(n_estimators=40, min_child_samples=20).fit(
        msgs, data["events"], data["consent"], customers, as_of=as_of
    )
    assert model.attributes_used_["engagement"]
    assert {"attr.age", "attr.tier=gold", "attr.tier=silver"} <= set(model.feature_names_)
    assert any("customer attributes (attr.age, attr.tier) kept" in note for note in model.notes_)
    # a customer without messages: the attribute places them
    extra = pd.DataFrame({c.CUSTOMER_ID: ["old0", "young0"], c.TIMEZONE: "UTC", "attr.age": [70.0, 20.0]})
    with_new = pd.concat([customers, extra], ignore_index=True)
    model = ChannelModel(n_estimators=40, min_child_samples=20).fit(
        msgs, data["events"], None, with_new, as_of=as_of
    )
    sms = model.predict_proba(["old0", "young0", "ghost"], ["sms"] * 3)["probability"].to_numpy()
    assert sms[0] > sms[1] and np.isfinite(sms).all()
    loaded = ChannelModel.load(model.save(tmp_path / "attributes"))
    pd.testing.assert_frame_equal(
        loaded.rank_channels(["old0", "c001"]), model.rank_channels(["old0", "c001"])
    )
    # attributes switched off: not read at all
    plain = ChannelModel(n_estimators=20, use_attributes=False).fit(
        msgs, data["events"], None, with_new, as_of=as_of
    )
    assert not any(name.startswith("attr.") for name in plain.feature_names_)


# ----------------------------------------------------------------------------------------------
# the training step
def test_transaction_log_only_training(hand_made):
    from training.channel_training import train_channel_and_send_time

    days = pd.Series(np.repeat(np.arange(90), 20))
    ids = pd.Series(np.tile([f"t{i}" for i in range(20)], 90))
    hours = np.where(ids.str[1:].astype(int) % 2 == 0, 10, 20)  # morning and evening shoppers (UTC)
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: ids,
            c.TS: _ts(T0 + pd.to_timedelta(days * 24 + hours, unit="h") + pd.Timedelta(minutes=20)),
            c.CHANNEL: "store",
            c.EVENT_TYPE: "purchase",
        }
    )
    result = train_channel_and_send_time(Tables(events=events), random_state=1)
    assert result.channel_model is None
    assert any("channel model skipped" in note for note in result.notes)
    best = result.send_time_model.best_slot(["t0", "t1"], "email")["best_hour_local"].tolist()
    assert best == [10, 20]
    assert result.metrics["send_time.activity_hit_rate"] > 0.9
    # activity only: how much activity around the send hour counts is chosen on validation
    window = result.metrics["send_time.activity_window_hours"]
    assert result.send_time_model.activity_window_hours == window
    rates = {
        h: result.metrics[f"send_time.validation.activity_window_{h}h.activity_hit_rate"] for h in range(4)
    }
    assert rates[window] == max(rates.values())
    # the rules beside the model, on the same held-out activity
    assert result.metrics["send_time.customer_modal_hour.activity_hit_rate"] > 0.9
    assert 0.0 < result.metrics["send_time.global_best_hour.activity_hit_rate"] < 0.9
    # a history shorter than the evaluation window is a note, not an error
    short = train_channel_and_send_time(Tables(events=hand_made["events"]), random_state=1)
    assert any("history too short" in note for note in short.notes)
    assert short.send_time_model.best_slot(["c000"], None)["best_hour_local"].iloc[0] == 10


@pytest.fixture(scope="module")
def trained_small(module_generated_tables):
    from training.channel_training import train_channel_and_send_time
    from training.config import ChannelTrainingConfig

    tables = module_generated_tables
    return train_channel_and_send_time(tables, config=ChannelTrainingConfig(test_days=60))


def test_training_on_generated_data(trained_small):
    result = trained_small
    assert result.channel_model is not None
    for key in ("channel.engagement_auc", "channel.engagement_ece", "send_time.matched_difference"):
        assert np.isfinite(result.metrics[key]), key
    assert result.metrics["channel.engagement_auc"] > 0.55
    # the rules beside the models on the test window, and the validation that chose what is served
    for key in (
        "channel.rule.engagement_auc",
        "channel.rule.top_channel_lift",
        "channel.validation.model.engagement_auc",
        "channel.validation.rule.engagement_auc",
        "send_time.matched_stratified_rate_matched",
        "send_time.customer_modal_hour.matched_stratified_rate_matched",
        "send_time.global_best_hour.matched_stratified_rate_matched",
        "send_time.customer_modal_hour.activity_hit_rate",
        "send_time.validation.model.matched_stratified_rate_matched",
    ):
        assert np.isfinite(result.metrics[key]), key
    assert result.channel_model.serve == result.served["channel"] in ("model", "rule")
    assert result.send_time_model.serve == result.served["send_time"]
    validation = {
        policy: result.metrics[f"channel.validation.{policy}.engagement_auc"] for policy in ("model", "rule")
    }
    assert result.served["channel"] == ("model" if validation["model"] > validation["rule"] else "rule")
    assert result.artifacts["evaluation/channel_send_time.json"]["served"] == result.served
    assert {"send_time/heatmaps.png", "channel/lift.png"} <= set(result.artifacts)
    ranked = result.channel_model.rank_channels()
    assert ranked[c.RANK].min() == 1 and ranked["probability"].between(0, 1).all()


def test_the_refit_beside_the_evaluation_gives_the_sequential_models(trained_small, generated_tables):
    from training.channel_training import train_channel_and_send_time
    from training.config import ChannelTrainingConfig

    # evaluate=False refits on this thread alone; trained_small refitted on a second thread
    tables = generated_tables
    alone = train_channel_and_send_time(tables, config=ChannelTrainingConfig(test_days=60), evaluate=False)
    assert alone.served == {"channel": "model", "send_time": "model"}  # not validated: the models
    # the same policies as the evaluated run chose on its validation window
    alone.channel_model.set_params(serve=trained_small.served["channel"])
    alone.send_time_model.set_params(serve=trained_small.served["send_time"])
    ids = alone.send_time_model.customer_ids_[:50]
    for channel in ("email", "push"):
        assert np.array_equal(
            alone.send_time_model.score_grid(ids, channel),
            trained_small.send_time_model.score_grid(ids, channel),
        )
    pd.testing.assert_frame_equal(
        alone.channel_model.rank_channels(), trained_small.channel_model.rank_channels()
    )


def test_evaluation_sample_keeps_every_row_of_a_seeded_set_of_customers(generated_tables):
    from training.channel_evaluation import evaluation_sample

    tables = generated_tables
    sample, population = evaluation_sample(tables, 300, random_state=3)
    assert population == len(set(tables.customers[c.CUSTOMER_ID]) | set(tables.events[c.CUSTOMER_ID]))
    chosen = set(sample.customers[c.CUSTOMER_ID]) | set(sample.events[c.CUSTOMER_ID])
    assert len(chosen) == 300
    for name in ("events", "messages", "consent", "identities", "customers"):
        full, part = getattr(tables, name), getattr(sample, name)
        assert set(part[c.CUSTOMER_ID]) <= chosen
        # every row of the chosen customers, none of the others
        pd.testing.assert_frame_equal(part, full.loc[full[c.CUSTOMER_ID].isin(chosen)])
    again, _ = evaluation_sample(tables, 300, random_state=3)
    pd.testing.assert_frame_equal(again.events, sample.events)
    other, _ = evaluation_sample(tables, 300, random_state=4)
    assert set(other.customers[c.CUSTOMER_ID]) != set(sample.customers[c.CUSTOMER_ID])
    for cap in (None, 0, population):
        whole, none = evaluation_sample(tables, cap, random_state=3)
        assert whole is tables and none is None


def test_sampled_evaluation_says_so(generated_tables):
    from training.channel_evaluation import evaluate_channel_and_send_time
    from training.config import ChannelTrainingConfig

    tables = generated_tables
    config = ChannelTrainingConfig(test_days=60, max_eval_customers=400, max_validation_customers=200)
    metrics, _, notes = evaluate_channel_and_send_time(tables, config)
    assert metrics["channel.evaluation_customers"] == 400
    assert any("random sample of 400 of 800 customers" in note for note in notes)
    # the validation's sample is drawn from the evaluation's, and its note counts every customer
    assert any("served is chosen on a random sample of 200 of 800 customers" in note for note in notes)
    # what running the evaluation beside the refit adds: about its half of the rows
    from training.channel_training import _evaluation_rows, _rows

    assert _evaluation_rows(tables, config) == int(_rows(tables) * 0.5)
    assert _evaluation_rows(tables, ChannelTrainingConfig(max_eval_customers=None)) == _rows(tables)
    assert np.isfinite(metrics["channel.engagement_auc"]) and np.isfinite(metrics["send_time.heldout_auc"])


def test_registration_in_mlflow(trained_small, tracking_uri, tmp_path):
    import mlflow

    from models.catalog import CHANNEL, SEND_TIME
    from training.channel_training import log_engagement_run
    from training.pyfunc import log_pyfunc
    from training.tracking import setup_tracking

    client = setup_tracking(tracking_uri)
    with mlflow.start_run(run_name="test-channel") as run:
        log_engagement_run(trained_small)
        versions = {
            name: log_pyfunc(entry, model.save(tmp_path / entry.folder), name)
            for entry, model, name in (
                (CHANNEL, trained_small.channel_model, "test-omni-channel"),
                (SEND_TIME, trained_small.send_time_model, "test-omni-send-time"),
            )
        }
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["channel.served"] == trained_small.served["channel"]
    assert tags["send_time.served"] == trained_small.served["send_time"]
    for name, version in versions.items():
        client.set_registered_model_alias(name, "champion", version)
    model = mlflow.pyfunc.load_model("models:/test-omni-channel@champion")
    ids = trained_small.channel_model.customer_ids_[:5].tolist()
    out = model.predict(pd.DataFrame({c.CUSTOMER_ID: ids}))
    assert {c.CUSTOMER_ID, c.CHANNEL, c.RANK, "probability", "fallback"} <= set(out.columns)
    send = mlflow.pyfunc.load_model("models:/test-omni-send-time@champion")
    plan = send.predict(
        pd.DataFrame({c.CUSTOMER_ID: ids}), params={"channel": "email", "after": "2026-07-01T09:00:00+00:00"}
    )
    assert len(plan) == 5 and plan["best_hour_local"].between(8, 20).all()


def test_history_features_match_a_brute_force_count_with_tied_times():
    """The as-of join on integer customer codes counts exactly the rows strictly before each
    query, also where stream rows share a time with each other or with the query."""
    rng = np.random.default_rng(3)
    ids = [f"k{i}" for i in range(6)]
    hours = [T0 + pd.Timedelta(hours=int(h)) for h in rng.integers(0, 12, 80)]
    messages = pd.DataFrame(
        {
            c.MESSAGE_ID: [f"m{i}" for i in range(80)],
            c.CUSTOMER_ID: rng.choice(ids, 80),
            c.CHANNEL: rng.choice(["email", "sms"], 80),
            c.SENT_TS: _ts(hours),
            c.OPENED_TS: _ts([h + pd.Timedelta(hours=1) if rng.random() < 0.5 else pd.NaT for h in hours]),
        }
    )
    consent = pd.DataFrame(
        {
            c.CUSTOMER_ID: rng.choice(ids, 40),
            c.CHANNEL: rng.choice(["email", "sms"], 40),
            c.OPTED_IN: rng.random(40) < 0.5,
            c.UPDATED_TS: _ts([T0 + pd.Timedelta(hours=int(h)) for h in rng.integers(0, 12, 40)]),
        }
    )
    queries = pd.DataFrame(
        {
            c.CUSTOMER_ID: rng.choice([*ids, "nobody"], 50),
            "_t": _ts([T0 + pd.Timedelta(hours=int(h)) for h in rng.integers(0, 14, 50)]),
        }
    )
    rates = {"email": 0.2, "sms": 0.5}
    feats = history_features(queries, messages, None, None, ["email", "sms"], [], rates, consent)
    for i, (cid, t) in enumerate(zip(queries[c.CUSTOMER_ID], queries["_t"], strict=True)):
        own = messages.loc[messages[c.CUSTOMER_ID] == cid]
        for ch in ("email", "sms"):
            on_ch = own.loc[own[c.CHANNEL] == ch]
            assert feats[f"sent_{ch}"].iloc[i] == (on_ch[c.SENT_TS] < t).sum()
            assert feats[f"engaged_{ch}"].iloc[i] == (on_ch[c.OPENED_TS] < t).sum()
            rows = consent.loc[(consent[c.CUSTOMER_ID] == cid) & (consent[c.CHANNEL] == ch)]
            rows = rows.loc[rows[c.UPDATED_TS] < t].sort_values(c.UPDATED_TS, kind="stable")
            assert feats[f"consent_{ch}"].iloc[i] == (float(rows[c.OPTED_IN].iloc[-1]) if len(rows) else 0.0)
        sent = own.loc[own[c.SENT_TS] < t, c.SENT_TS]
        expected = (t - sent.max()).total_seconds() / 86400.0 if len(sent) else np.nan
        assert np.isclose(feats["days_since_message"].iloc[i], expected, equal_nan=True)


# ----------------------------------------------------------------------------------------------
# every shape of data trains and answers (or says why)
@pytest.fixture(scope="module")
def few_tables(module_generated_tables):
    """150 customers of the generated data (every row of theirs), identity-stitched."""
    from training.channel_evaluation import evaluation_sample

    sample, _ = evaluation_sample(module_generated_tables, 150, random_state=0)
    return sample


def _last_days(tables: Tables, days: int) -> Tables:
    import dataclasses

    end = tables.events[c.TS].max()
    start = end - pd.Timedelta(days=days)
    return dataclasses.replace(
        tables,
        events=tables.events.loc[tables.events[c.TS] >= start],
        messages=tables.messages.loc[tables.messages[c.SENT_TS] >= start],
    )


def _shape(tables: Tables, shape: str) -> Tables:
    import dataclasses

    from training.channel_evaluation import evaluation_sample

    if shape == "no messages":
        return dataclasses.replace(tables, messages=None)
    if shape == "one channel for events, another for messages":
        consent = tables.consent.loc[tables.consent[c.CHANNEL] == "email"]
        return dataclasses.replace(
            tables,
            events=tables.events.assign(**{c.CHANNEL: "store"}),
            messages=tables.messages.assign(**{c.CHANNEL: "email"}),
            consent=consent,
        )
    if shape == "three weeks of history":
        return _last_days(tables, 21)
    if shape == "forty customers":
        return evaluation_sample(tables, 40, random_state=1)[0]
    if shape == "every message carries an offer":
        return dataclasses.replace(tables, messages=tables.messages.assign(**{c.OFFER_ID: "OF_DISC10"}))
    if shape == "purchases without product ids":
        events = tables.events.loc[tables.events[c.EVENT_TYPE] == "purchase"].assign(**{c.PRODUCT_ID: None})
        return dataclasses.replace(tables, events=events)
    if shape == "customer attributes":
        customers = tables.customers.copy()
        rng = np.random.default_rng(0)
        customers["attr.age"] = rng.integers(18, 80, len(customers)).astype(float)
        customers.loc[rng.random(len(customers)) < 0.2, "attr.age"] = np.nan
        customers["attr.segment"] = rng.choice(["a", "b", None], len(customers))
        return dataclasses.replace(tables, customers=customers)
    raise AssertionError(shape)


SHAPES = (
    "no messages",
    "one channel for events, another for messages",
    "three weeks of history",
    "forty customers",
    "every message carries an offer",
    "purchases without product ids",
    "customer attributes",
)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_trains_and_answers(few_tables, shape):
    from models.engagement.send_time import SERVE_MODES
    from training.channel_training import train_channel_and_send_time
    from training.config import ChannelTrainingConfig

    tables = _shape(few_tables, shape)
    result = train_channel_and_send_time(tables, config=ChannelTrainingConfig(test_days=28))
    send_time = result.send_time_model
    assert result.served["send_time"] in SERVE_MODES and send_time.serve == result.served["send_time"]
    ids = list(send_time.customer_ids_[:5]) + ["never-seen"]
    plan = send_time.send_plan(ids, "email", pd.Timestamp("2026-07-01 09:00", tz="UTC"))
    assert len(plan) == len(ids) and plan["best_hour_local"].between(8, 20).all()
    assert any(
        note.startswith(("send time: serves", "history too short", "not evaluated")) for note in result.notes
    )
    if tables.messages is None:
        assert result.channel_model is None and result.served["channel"] is None
        assert any("channel model skipped" in note for note in result.notes)
        return
    channel = result.channel_model
    assert channel is not None and channel.serve == result.served["channel"] in ("model", "rule")
    ranked = channel.rank_channels(channel.customer_ids_[:20])
    assert ranked["probability"].between(0, 1).all()
    reachable = set(ranked[c.CUSTOMER_ID])
    assert all(channel.no_channel_reason(cid) for cid in channel.customer_ids_[:20] if cid not in reachable)
    if shape == "one channel for events, another for messages":
        assert set(ranked[c.CHANNEL]) == {"email"} and list(channel.event_channels_) == ["store"]
    if shape == "customer attributes":
        assert channel.attribute_encoding_ and set(channel.attributes_used_) == {"engagement", "conversion"}
        assert any("customer attributes (attr.age, attr.segment)" in note for note in result.notes)


def test_messages_without_opens_or_clicks_train_send_time_and_say_why_not_channel(few_tables):
    import dataclasses

    from training.channel_training import train_channel_and_send_time
    from training.config import ChannelTrainingConfig

    messages = few_tables.messages.drop(columns=[c.OPENED_TS, c.CLICKED_TS])
    tables = dataclasses.replace(few_tables, messages=messages)
    with pytest.raises(CannotTrain, match="opened or clicked"):
        ChannelModel().fit(messages, tables.events, tables.consent, tables.customers)
    result = train_channel_and_send_time(tables, config=ChannelTrainingConfig(test_days=28))
    assert result.channel_model is None and result.served["channel"] is None
    assert any(note.startswith("channel model skipped: no message") for note in result.notes)
    assert len(result.send_time_model.best_slot(["never-seen"], "email")) == 1


def test_no_events_and_no_messages_cannot_train():
    from training.channel_training import train_channel_and_send_time

    with pytest.raises(CannotTrain, match="events or messages"):
        train_channel_and_send_time(Tables(events=None, messages=None))


@pytest.mark.parametrize("shape", ["messages", "no messages"])
def test_a_champion_is_judged_as_deployed_beside_the_challenger_on_the_same_rows(few_tables, shape, tmp_path):
    """A champion identical to this run's model fitted before the test window, saved in the policy
    this run serves, scores exactly as the challenger on the same rows; saved serving another
    policy, it is judged in that policy; a champion trained on all the data has nothing newer to
    be judged on."""
    import dataclasses

    from models.engagement.send_time import SendTimeModel
    from training.channel_training import train_channel_and_send_time
    from training.config import ChannelTrainingConfig

    tables = few_tables if shape == "messages" else dataclasses.replace(few_tables, messages=None)
    config = ChannelTrainingConfig(test_days=28)
    run = train_channel_and_send_time(tables, config=config)
    split = pd.Timestamp(run.artifacts["evaluation/channel_send_time.json"]["split_time"])
    # the challenger's twin: the same models fitted before the split, serving what the run serves
    twin = train_channel_and_send_time(tables, as_of=split, config=config, evaluate=False)
    twin.send_time_model.set_params(
        serve=run.served["send_time"], activity_window_hours=run.send_time_model.activity_window_hours
    )
    champions = {"send_time": SendTimeModel.load(twin.send_time_model.save(tmp_path / "send_time"))}
    if shape == "messages":
        twin.channel_model.set_params(serve=run.served["channel"])
        champions["channel"] = ChannelModel.load(twin.channel_model.save(tmp_path / "channel"))
    judged = train_channel_and_send_time(tables, config=config, champions=champions).champion
    assert set(judged) == set(champions)
    for family, scores in judged.items():
        assert scores["score"] == scores["challenger_score"], (family, scores)
        assert scores["window_start"] == split.isoformat() and scores["rows"] >= 20
        assert "as deployed" in scores["note"]
    # from the split: the test window's rows, on which the run scored what it serves
    metric = "matched_stratified_rate_matched" if shape == "messages" else "activity_hit_rate"
    assert judged["send_time"]["metric"] == metric
    assert judged["send_time"]["score"] == pytest.approx(run.metrics[f"send_time.served.{metric}"])
    if shape == "messages":
        assert judged["channel"]["score"] == pytest.approx(run.metrics["channel.served.engagement_auc"])

    # a champion saved serving another policy is judged serving it
    other = "customer_modal_hour" if run.served["send_time"] != "customer_modal_hour" else "model"
    twin.send_time_model.set_params(serve=other)
    folder = twin.send_time_model.save(tmp_path / "other")
    champions = {"send_time": lambda: SendTimeModel.load(folder)}  # loaded once the fits are done
    if shape == "messages":
        twin.channel_model.set_params(serve="rule" if run.served["channel"] == "model" else "model")
        champions["channel"] = ChannelModel.load(twin.channel_model.save(tmp_path / "other_channel"))
    for family, scores in train_channel_and_send_time(
        tables, config=config, champions=champions
    ).champion.items():
        if family == "channel" or shape == "no messages":  # one metric; send time with messages may
            # fall back to the active hours where a policy matches too few sends
            assert scores["challenger_score"] == judged[family]["challenger_score"]
        assert scores["score"] != scores["challenger_score"], family

    # trained on all of it: no newer data, the champion cannot be judged (the gate keeps it)
    champions = {"send_time": run.send_time_model} | (
        {"channel": run.channel_model} if shape == "messages" else {}
    )
    for scores in train_channel_and_send_time(tables, config=config, champions=champions).champion.values():
        assert scores["score"] is None and "cannot be judged on new data" in scores["note"]


def _live(customer: str, channel: str, sent: int, engaged: int, at: pd.Timestamp) -> pd.DataFrame:
    """The live store's `message_activity`: sends and opens posted since training."""
    kinds = ["sent"] * sent + ["engaged"] * engaged
    return pd.DataFrame(
        {
            c.CUSTOMER_ID: customer,
            c.CHANNEL: channel,
            "kind": kinds,
            c.TS: [at + pd.Timedelta(hours=i) for i in range(len(kinds))],
        }
    )


def test_sends_and_opens_since_training_move_the_ranking(model):
    """c011 (a store shopper) reads SMS more than push; since training it was sent 12 push messages and opened
    every one of them, and 12 SMS it never opened. Both the model's customer effect and the rule
    read the counts laid over the snapshot."""
    after = model.as_of_ + pd.Timedelta(days=1)
    live = pd.concat([_live("c011", "push", 12, 12, after), _live("c011", "sms", 12, 0, after)])
    pairs = (["c011", "c011"], ["push", "sms"])
    before = model.predict_proba(*pairs).set_index(c.CHANNEL)
    now = model.predict_proba(*pairs, live_activity=live).set_index(c.CHANNEL)
    # the customer effect moves the raw log-odds (the calibration map is a step function)
    assert now.loc["push", c.SCORE] > before.loc["push", c.SCORE]
    assert now.loc["sms", c.SCORE] < before.loc["sms", c.SCORE]
    assert now.loc["push", "probability"] >= before.loc["push", "probability"]
    rule_before = model.rank_channels(["c011"], serve="rule").set_index(c.CHANNEL)
    rule_now = model.rank_channels(["c011"], serve="rule", live_activity=live).set_index(c.CHANNEL)
    assert rule_before["rank"].idxmin() == "sms" and rule_now["rank"].idxmin() == "push"
    # an open may be of a message sent before training, but never more engaged than sent
    many, more = (_live("c011", "push", 12, n, after) for n in (100, 200))
    pd.testing.assert_frame_equal(
        model.rank_channels(["c011"], serve="rule", live_activity=many),
        model.rank_channels(["c011"], serve="rule", live_activity=more),
    )
    # before as_of: already in the model; other customers: untouched
    old = _live("c011", "push", 12, 12, model.as_of_ - pd.Timedelta(days=30))
    pd.testing.assert_frame_equal(model.predict_proba(*pairs, live_activity=old), model.predict_proba(*pairs))
    pd.testing.assert_frame_equal(
        model.rank_channels(["c010"], live_activity=live), model.rank_channels(["c010"])
    )


def test_messages_since_training_end_the_fallback(model):
    assert model.fallback(["new1"])[0]
    live = _live("new1", "push", 3, 1, model.as_of_ + pd.Timedelta(days=1))
    assert not model.fallback(["new1"], live)[0]
    assert not model.rank_channels(["new1"], live_activity=live)["fallback"].any()
