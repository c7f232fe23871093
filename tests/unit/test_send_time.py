"""Send-time model: known answers on hand-made histories, time zones and daylight saving, quiet
hours across midnight, customers without history, transaction-log-only data, persistence."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from models.engagement.local_time import HOURS, SLOTS, is_quiet, parse_quiet_hours
from models.engagement.send_time import SendTimeModel
from models.engagement.send_time_em import SEGMENTS

NY = "America/New_York"


def _local(day: str, hour: float, tz: str) -> pd.Timestamp:
    return (pd.Timestamp(day) + pd.Timedelta(hours=hour)).tz_localize(tz).tz_convert("UTC")


def _events(rows: list[tuple[str, pd.Timestamp]], channel: str = "web") -> pd.DataFrame:
    return pd.DataFrame(
        {
            c.CUSTOMER_ID: [r[0] for r in rows],
            c.TS: pd.DatetimeIndex([r[1] for r in rows]).as_unit("us"),
            c.CHANNEL: channel,
            c.EVENT_TYPE: "purchase",
        }
    )


def _habit(customer: str, tz: str, hour: float, start: str = "2026-01-05", days: int = 120, every: int = 3):
    """A customer active every `every` days at `hour` local (across the March DST change)."""
    dates = pd.date_range(start, periods=days // every, freq=f"{every}D")
    return [(customer, _local(d.strftime("%Y-%m-%d"), hour, tz)) for d in dates]


def _customers(zones: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c.CUSTOMER_ID: list(zones), c.TIMEZONE: list(zones.values())})


@pytest.fixture(scope="module")
def habits_model() -> SendTimeModel:
    """Events only: an evening New Yorker, a morning Tokyoite, a night owl and a 02:30 shopper."""
    rows = (
        _habit("evening", NY, 19.4)
        + _habit("morning", "Asia/Tokyo", 8.5)
        + _habit("owl", NY, 23.3)
        + _habit("early", NY, 2.5)
        + [(f"filler{i}", _local("2026-02-02", 7 + i % 15 + 0.5, "UTC")) for i in range(60)]
    )
    zones = {"evening": NY, "morning": "Asia/Tokyo", "owl": NY, "early": NY, "nowhere": "Not/AZone"}
    return SendTimeModel().fit(_events(rows), None, _customers(zones))


def test_is_quiet_crosses_midnight():
    hours = np.arange(HOURS)
    assert hours[is_quiet(hours, (21, 8))].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 21, 22, 23]
    assert hours[is_quiet(hours, (1, 5))].tolist() == [1, 2, 3, 4]
    assert not is_quiet(hours, None).any() and not is_quiet(hours, (8, 8)).any()
    with pytest.raises(ValueError):
        is_quiet(hours, (25, 3))
    assert parse_quiet_hours("21-8") == (21, 8) and parse_quiet_hours("21:00-08:00") == (21, 8)
    assert parse_quiet_hours("none") is None
    with pytest.raises(ValueError):
        parse_quiet_hours("21")


def test_known_answers_in_local_time(habits_model):
    best = habits_model.best_slot(["evening", "morning", "owl"], "email").set_index(c.CUSTOMER_ID)
    assert best.loc["evening", "best_hour_local"] == 19
    assert best.loc["morning", "best_hour_local"] == 8  # Tokyo local time, not UTC (23:00)
    assert best.loc["owl", "best_hour_local"] == 23
    assert best.loc["morning", c.TIMEZONE] == "Asia/Tokyo"
    scores = habits_model.scores("evening", "email")
    assert scores.shape == (SLOTS,) and np.all((scores > 0) & (scores < 1))
    # activity in local time survives the DST change: 19:xx local is 00:xx UTC in winter, 23:xx in summer
    assert np.argmax(scores) % HOURS == 19


def test_transaction_log_only_is_activity_based(habits_model):
    assert len(habits_model.channels_) == 0
    assert any("no messages" in note for note in habits_model.notes_)
    # the same grid for any channel, and the propensity scale is stated
    np.testing.assert_allclose(
        habits_model.scores("evening", "email"), habits_model.scores("evening", "push")
    )


def test_quiet_hours_across_midnight(habits_model):
    after = _local("2026-06-10", 12.0, NY)  # a Wednesday noon in New York
    unconstrained = habits_model.next_send_time("owl", "email", after, quiet_hours=None, horizon_hours=24)
    assert unconstrained.tz_convert(NY).hour == 23
    constrained = habits_model.next_send_time("owl", "email", after, quiet_hours=(21, 8), horizon_hours=24)
    local = constrained.tz_convert(NY)
    assert 8 <= local.hour < 21
    assert local.hour == 20  # the allowed hour closest to the owl's 23:00
    assert constrained >= after and str(constrained.tz) == "UTC"
    plan = habits_model.send_plan(["owl"], "email", after, quiet_hours=(21, 8))
    assert plan.loc[0, "best_hour_local"] == 20
    assert plan.columns.tolist() == [
        c.CUSTOMER_ID,
        c.CHANNEL,
        c.TIMEZONE,
        "best_hour_local",
        "best_weekday",
        "next_send_utc",
        "fallback",
    ]


def test_dst_spring_forward_skips_the_missing_hour(habits_model):
    # New York, Sunday 8 March 2026: 02:00-02:59 local does not exist
    after = _local("2026-03-07", 12.0, NY)
    sent = habits_model.next_send_time("early", "email", after, quiet_hours=None, horizon_hours=24)
    local = sent.tz_convert(NY)
    assert local.hour in (1, 3)  # the best hour that exists, next to 02:xx
    assert local.tz_localize(None).tz_localize(NY) == sent  # a real, unambiguous instant
    # a day later the habit hour exists again
    sent = habits_model.next_send_time(
        "early", "email", _local("2026-03-08", 12.0, NY), None, horizon_hours=24
    )
    assert sent.tz_convert(NY).hour == 2


def test_dst_fall_back_takes_the_first_of_the_repeated_hour():
    # New York, Sunday 1 November 2026: 01:00-01:59 local happens twice (EDT, then EST)
    rows = _habit("late", NY, 1.5, start="2026-08-01", days=120)
    model = SendTimeModel().fit(_events(rows), None, _customers({"late": NY}))
    after = _local("2026-10-31", 12.0, NY)
    sent = model.next_send_time("late", "email", after, quiet_hours=None, horizon_hours=24)
    assert sent == pd.Timestamp("2026-11-01 05:00", tz="UTC")  # 01:00 EDT, not 01:00 EST (06:00 UTC)


def test_dst_summer_and_winter_map_to_the_same_local_hour(habits_model):
    winter = habits_model.next_send_time("evening", "email", _local("2026-01-14", 12.0, NY), None, 24)
    summer = habits_model.next_send_time("evening", "email", _local("2026-07-15", 12.0, NY), None, 24)
    assert winter.hour == 0 and summer.hour == 23  # UTC
    assert winter.tz_convert(NY).hour == summer.tz_convert(NY).hour == 19


def test_customer_without_history(habits_model):
    unknown = habits_model.best_slot(["never-seen"], "email").iloc[0]
    assert unknown["fallback"] and unknown[c.TIMEZONE] == "UTC"
    scores = habits_model.scores("never-seen", "email")
    assert scores.shape == (SLOTS,) and np.isfinite(scores).all()
    after = pd.Timestamp("2026-06-10 03:00", tz="UTC")
    sent = habits_model.next_send_time("never-seen", "email", after)
    assert after <= sent < after + pd.Timedelta(days=7)
    assert not is_quiet(np.array([sent.hour]), (21, 8))[0]
    # a customer in the customers table with an invalid zone and no events: UTC, noted
    assert habits_model.timezone_of(["nowhere"])[0] == "UTC"
    assert any("unknown time zone" in note for note in habits_model.notes_)
    assert habits_model.fallback(["nowhere"])[0]


def test_naive_after_is_utc(habits_model):
    naive = habits_model.next_send_time("evening", None, pd.Timestamp("2026-06-10 12:00"), horizon_hours=24)
    aware = habits_model.next_send_time(
        "evening", None, pd.Timestamp("2026-06-10 12:00", tz="UTC"), horizon_hours=24
    )
    assert naive == aware


def _messages(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[c.MESSAGE_ID, c.CUSTOMER_ID, c.CHANNEL, c.SENT_TS, c.OPENED_TS])
    for col in (c.SENT_TS, c.OPENED_TS):
        frame[col] = pd.to_datetime(frame[col], utc=True).dt.as_unit("us")
    return frame


def test_messages_teach_the_hour_of_a_customer_without_activity():
    """No events at all: opens only ever happen for 18:00 local sends."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        cid = f"m{i}"
        for j in range(30):
            hour = int(rng.integers(6, 22))
            sent = _local("2026-02-01", 24 * j + hour + 0.2, "Europe/Berlin")
            opened = sent + pd.Timedelta(minutes=10) if abs(hour - 18) <= 1 and rng.random() < 0.8 else pd.NaT
            rows.append((f"{cid}-{j}", cid, "email" if j % 2 else "sms", sent, opened))
    zones = {f"m{i}": "Europe/Berlin" for i in range(40)}
    model = SendTimeModel().fit(None, _messages(rows), _customers(zones))
    best = model.best_slot(["m0", "m1"], "email")
    assert best["best_hour_local"].between(17, 19).all()
    assert set(model.channels_) == {"email", "sms"}
    # the grid's kept profile lift follows the parameters it is made of
    grid = model.score_grid(["m0"], "email")
    model.profile_residual_ = model.profile_residual_ + 0.5 * np.eye(*model.profile_residual_.shape)
    moved = model.score_grid(["m0"], "email")
    del model._half_lift_kept
    assert not np.array_equal(grid, moved) and np.array_equal(moved, model.score_grid(["m0"], "email"))


def test_store_opening_hours_do_not_move_an_early_habit():
    """Early birds browse online at 6:xx and shop in the store when it opens at 8:00. The store's
    hours are learned as an hour offset of the store channel against the always-open web, so two
    web visits at 6:00 outweigh five store visits at opening time; a noon shopper stays at noon."""
    rows = []
    for i in range(200):
        habit = [6, 7, 12, 19][i % 4] + 0.3
        for k in range(10):
            day = (pd.Timestamp("2026-02-02") + pd.Timedelta(days=3 * k)).strftime("%Y-%m-%d")
            store = k % 2 == 1
            rows.append((f"p{i}", _local(day, max(habit, 8.1) if store else habit, "UTC"), store))
    for k in range(7):
        day = (pd.Timestamp("2026-02-03") + pd.Timedelta(days=3 * k)).strftime("%Y-%m-%d")
        rows.append(("early", _local(day, 6.3 if k < 2 else 8.1, "UTC"), k >= 2))
        rows.append(("noon", _local(day, 12.3, "UTC"), k >= 2))
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: [r[0] for r in rows],
            c.TS: pd.DatetimeIndex([r[1] for r in rows]).as_unit("us"),
            c.CHANNEL: ["store" if r[2] else "web" for r in rows],
            c.EVENT_TYPE: "purchase",
        }
    )
    model = SendTimeModel().fit(events, None, _customers({r[0]: "UTC" for r in rows}))
    best = model.best_slot(["early", "noon"], None).set_index(c.CUSTOMER_ID)["best_hour_local"]
    assert best["early"] == 6 and best["noon"] == 12
    store, web = SEGMENTS.index("store") - 1, SEGMENTS.index("web") - 1  # groups are SEGMENTS[1:]
    assert model.activity_offsets_[store, 8] > 0.5 > model.activity_offsets_[store, 6]
    assert np.all(model.activity_offsets_[web] == 0)  # the reference: open around the clock


def test_format_1_folder_still_loads(habits_model, tmp_path):
    """A folder written before the activity observation model (format 1) scores as before."""
    import json

    folder = habits_model.save(tmp_path / "v1")
    meta = json.loads((folder / "send_time.json").read_text())
    meta["format_version"] = 1
    meta.pop("background_share")
    (folder / "send_time.json").write_text(json.dumps(meta))
    with np.load(folder / "send_time.npz") as arrays:
        kept = {k: arrays[k] for k in arrays.files if k.rstrip("_") + "_" in SendTimeModel._ARRAYS}
    np.savez_compressed(folder / "send_time.npz", **kept)
    loaded = SendTimeModel.load(folder)
    ids = ["evening", "owl", "never-seen"]
    # format 1 had no activity-only hour distributions: its grid is the profiles'
    expected = copy.copy(habits_model)
    expected.hour_prob_ = None
    np.testing.assert_allclose(loaded.score_grid(ids, "email"), expected.score_grid(ids, "email"))


def test_save_load_roundtrip(habits_model, tmp_path):
    folder = habits_model.save(tmp_path / "send_time")
    loaded = SendTimeModel.load(folder)
    ids = ["evening", "morning", "owl", "never-seen"]
    np.testing.assert_allclose(loaded.score_grid(ids, "email"), habits_model.score_grid(ids, "email"))
    after = pd.Timestamp("2026-06-10 03:00", tz="UTC")
    pd.testing.assert_series_equal(
        loaded.next_send_times(ids, "email", after), habits_model.next_send_times(ids, "email", after)
    )
    assert loaded.get_params() == habits_model.get_params()


def _spread_events(width: float, seed: int = 0, n: int = 150, per: int = 25) -> pd.DataFrame:
    """Each customer active around their own hour, `width` hours (sd) either side."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, HOURS, n)
    customer = np.repeat(np.arange(n), per)
    day = rng.integers(0, 120, n * per)
    hour = (centre[customer] + width * rng.standard_normal(n * per)) % HOURS
    ts = pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(day * 24 + hour, unit="h")
    return pd.DataFrame(
        {
            c.CUSTOMER_ID: [f"s{i}" for i in customer],
            c.TS: pd.DatetimeIndex(ts).as_unit("us"),
            c.CHANNEL: "web",
            c.EVENT_TYPE: "visit",
        }
    )


def test_the_habit_width_is_learned_from_the_data():
    """Nothing of the bump's shape is fixed: habits 0.7 h wide and 3 h wide give those widths."""
    narrow = SendTimeModel().fit(_spread_events(0.7), None, None)
    wide = SendTimeModel().fit(_spread_events(3.0), None, None)
    assert narrow.profile_width_ == pytest.approx(0.7, rel=0.2)
    assert wide.profile_width_ == pytest.approx(3.0, rel=0.2)
    fixed = SendTimeModel(profile_width=1.0).fit(_spread_events(3.0), None, None)
    assert fixed.profile_width_ == 1.0
    # without activity there is nothing to learn it from, and a note says so
    rows = [("m", _local("2026-02-02", 10.2, "UTC") + pd.Timedelta(days=d), pd.NaT) for d in range(10)]
    messages = _messages([(f"x{i}", *r[:1], "email", r[1], r[2]) for i, r in enumerate(rows)])
    alone = SendTimeModel().fit(None, messages, None)
    assert any("no activity to learn the habit width" in note for note in alone.notes_)


def test_rule_modes(habits_model, tmp_path):
    """The two rules the model is validated against, served through the same API: the customer's
    modal activity hour (the global hour without activity) and one hour for everyone."""
    modal = copy.copy(habits_model).set_params(serve="customer_modal_hour")
    best = modal.best_slot(["evening", "morning", "owl", "never-seen"], "email").set_index(c.CUSTOMER_ID)
    assert best["best_hour_local"][["evening", "morning", "owl"]].tolist() == [19, 8, 23]
    assert best.loc["never-seen", "best_hour_local"] == habits_model.global_best_hour_
    assert modal.rule_hours(["owl"]).tolist() == [23]
    # quiet hours: the nearest allowed hour to the rule's
    assert modal.best_slot(["owl"], "email", (21, 8))["best_hour_local"].iloc[0] == 20
    everyone = copy.copy(habits_model).set_params(serve="global_best_hour")
    hours = everyone.best_slot(["evening", "morning", "owl"], "email")["best_hour_local"]
    assert set(hours) == {habits_model.global_best_hour_}
    # the population's busiest activity hour without messages (the fillers: 7:30-21:30, one each)
    assert habits_model.global_best_hour_ == habits_model.population_modal_hour_
    loaded = SendTimeModel.load(modal.save(tmp_path / "modal"))
    assert loaded.serve == "customer_modal_hour"
    np.testing.assert_allclose(loaded.score_grid(["owl"], "email"), modal.score_grid(["owl"], "email"))
    with pytest.raises(ValueError, match="serve"):
        SendTimeModel(serve="oracle").fit(_events(_habit("a", NY, 9.0)), None, None)


def test_global_best_hour_is_the_best_engagement_rate_with_messages():
    """Sends at 18:00 local are opened, the rest hardly: the global best hour is 18."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(60):
        for j in range(20):
            hour = int(rng.integers(8, 21))
            sent = _local("2026-02-01", 24 * j + hour + 0.1, "UTC")
            opened = sent + pd.Timedelta(minutes=5) if rng.random() < (0.7 if hour == 18 else 0.1) else pd.NaT
            rows.append((f"g{i}-{j}", f"g{i}", "email", sent, opened))
    model = SendTimeModel().fit(None, _messages(rows), None)
    assert model.global_best_hour_ == 18
    # opens come five minutes after the send: the outcome window learned is the floor (an hour)
    assert model.open_window_days_ == pytest.approx(1 / 24)


def test_cannot_train_without_events_or_messages():
    from models.base import CannotTrain

    with pytest.raises(CannotTrain, match="events or messages"):
        SendTimeModel().fit(None, None, None)


def test_best_slot_block_by_block_is_the_whole_grids_answer(habits_model, monkeypatch):
    import models.engagement.send_time as send_time

    ids = ["evening", "morning", "owl", "early", "nobody"] + [f"filler{i}" for i in range(20)]
    whole = habits_model.best_slot(ids, "email", quiet_hours=(21, 8))
    monkeypatch.setattr(send_time, "_BEST_SLOT_CHUNK", 3)  # many blocks, the last one short
    blocks = habits_model.best_slot(ids, "email", quiet_hours=(21, 8))
    pd.testing.assert_frame_equal(whole, blocks)
    assert whole["best_hour_local"].between(8, 20).all()


def _live_opens(customer: str, hours_utc: list[float], day: str = "2026-07-01", kind: str = "engaged"):
    """The live store's `message_activity` rows: opens posted since training at these UTC hours."""
    ts = [pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=i, hours=h) for i, h in enumerate(hours_utc)]
    return pd.DataFrame({c.CUSTOMER_ID: customer, c.CHANNEL: "email", "kind": kind, c.TS: ts})


def test_live_opens_are_active_hours_of_a_customer_the_fit_never_saw(habits_model):
    before = habits_model.best_slot(["newcomer"], "email").iloc[0]
    live = _live_opens("newcomer", [21.2, 21.5, 21.1, 21.7])
    after = habits_model.best_slot(["newcomer"], "email", live_activity=live).iloc[0]
    assert before["best_hour_local"] != 21 and after["best_hour_local"] == 21
    assert before["fallback"] and not after["fallback"]  # four active hours now
    # sends are not activity, and what happened before training is already in the fit
    sends = _live_opens("newcomer", [21.2, 21.5, 21.1, 21.7], kind="sent")
    old = _live_opens("newcomer", [21.2, 21.5, 21.1, 21.7], day="2025-01-01")
    for other in (sends, old):
        assert habits_model.best_slot(["newcomer"], "email", live_activity=other).iloc[0].equals(before)
    # the same grid through every method, and other customers untouched
    nxt = habits_model.next_send_time(
        "newcomer", "email", pd.Timestamp("2026-07-10 00:00", tz="UTC"), None, live_activity=live
    )
    assert nxt.hour == 21
    both = habits_model.best_slot(["evening", "newcomer"], "email", live_activity=live)
    assert both.iloc[0].equals(habits_model.best_slot(["evening"], "email").iloc[0])


def test_many_live_opens_move_a_known_habit(habits_model):
    """The evening New Yorker (19:xx) starts opening at 8:xx New York time, every day for weeks."""
    live = _live_opens("evening", [12.4] * 60)  # 8:24 EDT
    assert habits_model.best_slot(["evening"], "email").iloc[0]["best_hour_local"] == 19
    assert habits_model.best_slot(["evening"], "email", live_activity=live).iloc[0]["best_hour_local"] == 8
    few = _live_opens("evening", [12.4])
    assert habits_model.best_slot(["evening"], "email", live_activity=few).iloc[0]["best_hour_local"] == 19


def test_live_opens_move_the_posterior_of_a_model_fitted_on_messages():
    """With messages the grid is the posterior mixture of habit profiles: live opens at one hour
    move a new customer's posterior (and best hour) towards the profiles active then."""
    rng = np.random.default_rng(1)
    events, rows = [], []
    for i in range(60):
        hour = (7.3, 12.3, 20.3)[i % 3]
        events += [
            (cid, ts + pd.Timedelta(hours=rng.normal(0, 1))) for cid, ts in _habit(f"h{i}", "UTC", hour)
        ]
        for j in range(20):
            send = int(rng.integers(6, 23))
            sent = _local("2026-01-05", 24 * (3 * j + 1) + send + 0.1, "UTC")
            hit = rng.random() < (0.6 if abs(send - int(hour)) <= 1 else 0.1)
            rows.append(
                (f"h{i}-{j}", f"h{i}", "email", sent, sent + pd.Timedelta(minutes=5) if hit else pd.NaT)
            )
    model = SendTimeModel().fit(_events(events), _messages(rows), _customers({}))
    assert model.hour_prob_ is None  # the message model, not activity only
    live = _live_opens("newcomer", [7.4, 7.2, 7.5, 7.6, 7.3])
    assert model.best_slot(["newcomer"], "email", live_activity=live).iloc[0]["best_hour_local"] in (6, 7, 8)
    late = _live_opens("newcomer", [20.4, 20.2, 20.5, 20.6, 20.3])
    assert model.best_slot(["newcomer"], "email", live_activity=late).iloc[0]["best_hour_local"] in (
        19,
        20,
        21,
    )


def test_outcomes_perfectly_separated_by_the_hour_still_give_finite_grids():
    """Every open comes from a send within an hour of the customer's habit, none from any other:
    the likelihood has no maximum, and undamped Newton steps overflowed into NaN grids (best hour
    0 for everyone). Damped steps keep the grid finite and each customer's hour their own."""
    rng = np.random.default_rng(1)
    events, rows = [], []
    for i in range(60):
        hour = (7.3, 12.3, 20.3)[i % 3]
        events += _habit(f"h{i}", "UTC", hour, days=60, every=2)
        for j in range(20):
            send = int(rng.integers(6, 23))
            sent = _local("2026-01-05", 24 * (3 * j + 1) + send + 0.1, "UTC")
            hit = abs(send - int(hour)) <= 1 and rng.random() < 0.7
            rows.append(
                (f"h{i}-{j}", f"h{i}", "email", sent, sent + pd.Timedelta(minutes=5) if hit else pd.NaT)
            )
    with np.errstate(over="raise"):  # no overflow anywhere on the way
        model = SendTimeModel().fit(_events(events), _messages(rows), _customers({}))
        grid = model.score_grid(["h0", "h1", "h2", "newcomer"], "email")
    assert np.isfinite(grid).all() and np.isfinite(model.coef_).all()
    best = model.best_slot(["h0", "h1", "h2"], "email")["best_hour_local"].tolist()
    assert best == [7, 12, 20]
