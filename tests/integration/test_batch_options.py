"""The campaign batch options of `omni recommend`, `omni channel`, `omni send-time` and `omni decide`
on the session's trained models: each option's effect is checked on what the command wrote, and
every customer a batch did not score is in its left-out list with the reason.

Each command runs once per module with several options at once (a run loads its models: seconds);
the tests read those runs. The commands use a live store of this module's own (the identities
linked, one purchase posted), so what other tests post to the session's store changes nothing here.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest
from click.testing import CliRunner

from training.cli import main

ACTIVE_DAYS = 14
NOW = "2026-07-01T09:00:00+00:00"


@pytest.fixture(scope="module")
def world(trained, tracking_uri, generated_data, module_generated_tables, tmp_path_factory):
    """What the tests check the outputs against, from the data and the fitted models themselves."""
    from features.live_store import open_live_store
    from models.catalog import NBA, RECOMMENDER
    from training.scoring import load_champion

    tmp = tmp_path_factory.mktemp("batch-options")
    tables = module_generated_tables
    rec, _ = load_champion(tracking_uri, RECOMMENDER)
    profiles = load_champion(tracking_uri, NBA)[0].profiles_
    segment = pd.Series(
        profiles.frame_["segment"].to_numpy(), index=profiles.frame_["customer_id"].astype(str)
    )

    products = tables.products.set_index("product_id")
    purchases = tables.events.loc[tables.events["event_type"] == "purchase"]
    bought = purchases.merge(products[["category"]], left_on="product_id", right_index=True)
    categories = bought["category"].value_counts().index[:3].tolist()  # the most bought first
    price_max = float(products.loc[products["category"].isin(categories[:2]), "price"].median())
    popular = purchases["product_id"].value_counts().index.astype(str)
    in_rules = products.loc[popular].query("category in @categories[:2] and price <= @price_max").index
    excluded = in_rules[:5].astype(str).tolist()  # products the lists would hold first

    # activity: any event, or an open, click or conversion of a message, up to the end of the data
    end = tables.events["ts"].max()
    times = [tables.events[["customer_id", "ts"]]]
    for column in ("opened_ts", "clicked_ts", "converted_ts"):
        answered = tables.messages.loc[tables.messages[column].notna(), ["customer_id", column]]
        times.append(answered.rename(columns={column: "ts"}))
    last = pd.concat(times).astype({"customer_id": str}).groupby("customer_id")["ts"].max()
    since = end - pd.Timedelta(days=ACTIVE_DAYS)
    active = set(last.index[last >= since])
    # one customer inactive in the data buys now, through the live store: active too
    revived = sorted(set(rec.customer_ids_.astype(str)) - active)[0]

    url = f"sqlite:///{(tmp / 'live.db').resolve()}"
    identities = tables.identities[["source_id", "customer_id"]].astype(str).drop_duplicates("source_id")
    with open_live_store(url) as store:
        store.link_identities(zip(identities["source_id"], identities["customer_id"], strict=True))
        store.add(revived, "purchase", "web", str(popular[-1]), ts=time.time())
    active.add(revived)

    (tmp / "exclude.csv").write_text("product_id\n" + "\n".join(excluded) + "\n")
    return {
        "tmp": tmp,
        "env": {"OMNI_STORE_URL": url},
        "tracking_uri": tracking_uri,
        "data": generated_data,
        "customers": rec.customer_ids_.astype(str).tolist(),
        "segment": segment,
        "products": products,
        "categories": categories,
        "price_max": price_max,
        "excluded": excluded,
        "active": active,
        "revived": revived,
        "identities": identities,
        "consent": profiles.frame_.set_index(profiles.frame_["customer_id"].astype(str)),
    }


def _run(world, *args: str):
    result = CliRunner().invoke(
        main, [*args, "--tracking-uri", world["tracking_uri"]], env=world["env"], catch_exceptions=False
    )
    return result


def _ran(world, name: str, *args: str) -> dict:
    out = world["tmp"] / f"{name}.parquet"
    result = _run(world, *args, "--out", str(out))
    assert result.exit_code == 0, result.output
    left_file = world["tmp"] / f"{name}.left_out.csv"
    return {
        "frame": pd.read_parquet(out),
        "left": pd.read_csv(left_file, dtype=str) if left_file.exists() else None,
        "output": result.output,
    }


def _why(left: pd.DataFrame) -> dict[str, str]:
    return dict(zip(left["customer_id"], left["reason"], strict=True))


# ------------------------------------------------------------------------------ recommend
@pytest.fixture(scope="module")
def recs(world):
    return _ran(
        world,
        "recs",
        "recommend",
        "--all",
        "--k",
        "6",
        "--segment",
        "champion",
        "--segment",
        "loyal",
        "--active-within-days",
        str(ACTIVE_DAYS),
        "--data",
        str(world["data"]),
        "--categories",
        ",".join(world["categories"][:2]),
        "--price-max",
        str(world["price_max"]),
        "--max-per-category",
        "2",
        "--exclude",
        str(world["tmp"] / "exclude.csv"),
        "--channel",
        "web",
        "--channel",
        "app",
    )


def test_recommend_segment_and_activity_leave_out_the_others_with_their_reason(world, recs):
    frame, why = recs["frame"], _why(recs["left"])
    scored = set(frame["customer_id"])
    in_segment = {cid for cid in world["customers"] if world["segment"].get(cid) in ("champion", "loyal")}
    assert scored and scored <= in_segment & world["active"]
    assert {cid for cid, r in why.items() if r == "not_in_segment"} == set(world["customers"]) - in_segment
    assert {cid for cid, r in why.items() if r == "inactive"} == in_segment - world["active"]
    assert world["revived"] not in why or why[world["revived"]] != "inactive"  # the live purchase counts
    assert scored | set(why) == set(world["customers"])
    assert "left out" in recs["output"] and "not_in_segment" in recs["output"]


def test_recommend_product_rules_bound_every_list(world, recs):
    frame = recs["frame"].merge(
        world["products"][["category", "price"]], left_on="product_id", right_index=True
    )
    assert len(frame) == len(recs["frame"]) > 0
    assert set(frame["category"]) <= set(world["categories"][:2])  # --categories
    assert frame["price"].max() <= world["price_max"]  # --price-max
    assert frame.groupby(["customer_id", "channel", "category"]).size().max() <= 2  # --max-per-category
    assert not set(frame["product_id"]) & set(world["excluded"])  # --exclude FILE


def test_recommend_channel_gives_one_list_per_channel(recs):
    frame = recs["frame"]
    assert list(frame.columns[:3]) == ["customer_id", "channel", "rank"]
    assert set(frame["channel"]) == {"web", "app"}
    assert (frame.groupby("customer_id")["channel"].nunique() == 2).all()
    assert frame.groupby(["customer_id", "channel"])["rank"].min().eq(1).all()


@pytest.fixture(scope="module")
def recs_listed(world):
    """--customers with a source id and an id nobody knows, the other product rules, --left-out."""
    source_id, canonical = world["identities"].iloc[0]
    listed = [canonical, world["customers"][1], source_id, "nobody-knows-me"]
    ids_file = world["tmp"] / "ids.txt"
    ids_file.write_text("\n".join(listed) + "\n")
    price_min = world["price_max"]
    run = _ran(
        world,
        "listed",
        "recommend",
        "--customers",
        str(ids_file),
        "--k",
        "5",
        "--exclude-categories",
        world["categories"][0],
        "--price-min",
        str(price_min),
        "--left-out",
        str(world["tmp"] / "why.csv"),
    )
    run["left"] = pd.read_csv(world["tmp"] / "why.csv", dtype=str)
    run["expected"] = {canonical, world["customers"][1]}
    run["price_min"] = price_min
    return run


def test_recommend_customers_file_resolves_source_ids_and_names_unknown_ones(world, recs_listed):
    frame, why = recs_listed["frame"], _why(recs_listed["left"])
    assert set(frame["customer_id"]) == recs_listed["expected"]
    assert why.pop("nobody-knows-me") == "unknown_customer"
    assert set(why.values()) == {"not_in_customers_file"}
    assert set(why) == set(world["customers"]) - recs_listed["expected"]
    assert not (world["tmp"] / "listed.left_out.csv").exists()  # --left-out named another file


def test_recommend_exclude_categories_and_price_min(world, recs_listed):
    frame = recs_listed["frame"].merge(
        world["products"][["category", "price"]], left_on="product_id", right_index=True
    )
    assert len(frame) > 0
    assert world["categories"][0] not in set(frame["category"])
    assert frame["price"].min() >= recs_listed["price_min"]


# ------------------------------------------------------------------------------ channel, send time
def test_channel_restricted_to_channels_and_a_segment(world):
    run = _ran(world, "channels", "channel", "--all", "--channel", "email,sms", "--segment", "at_risk")
    frame, why = run["frame"], _why(run["left"])
    assert len(frame) and set(frame["channel"]) <= {"email", "sms"}
    assert frame.groupby("customer_id")["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1))).all()
    assert set(world["segment"].reindex(frame["customer_id"].unique())) == {"at_risk"}
    no_channel = {cid for cid, r in why.items() if r == "no_channel"}
    assert no_channel and not no_channel & set(frame["customer_id"])
    for cid in list(no_channel)[:20]:  # no consent to e-mail or SMS at training (and no live opt-in)
        assert not world["consent"].loc[cid, ["consent_email", "consent_sms"]].any()
    assert {r for r in why.values()} <= {"not_in_segment", "no_channel"}


def test_send_time_for_several_channels_and_the_active_only(world):
    run = _ran(
        world,
        "send",
        "send-time",
        "--all",
        "--channel",
        "email",
        "--channel",
        "push",
        "--after",
        NOW,
        "--active-within-days",
        str(ACTIVE_DAYS),
        "--data",
        str(world["data"]),
    )
    frame, why = run["frame"], _why(run["left"])
    assert set(frame["channel"]) == {"email", "push"}
    assert (frame.groupby("customer_id")["channel"].nunique() == 2).all()
    scored = set(frame["customer_id"])
    assert scored <= world["active"] and world["revived"] in scored
    assert {cid for cid, r in why.items() if r == "inactive"} == set(world["customers"]) - world["active"]
    consented = frame.groupby("customer_id")["consented"].any()
    assert {cid for cid, r in why.items() if r == "no_consent"} == set(consented.index[~consented])
    assert frame.loc[~frame["consented"], "next_send_utc"].isna().all()


# ------------------------------------------------------------------------------ decide
def test_decide_keeps_to_its_channels_and_product_rules(world):
    run = _ran(
        world,
        "decide",
        "decide",
        "--dry-run",
        "--now",
        NOW,
        "--channel",
        "email",
        "--categories",
        ",".join(world["categories"][:2]),
        "--price-max",
        str(world["price_max"]),
        "--max-per-category",
        "1",
        "--exclude",
        str(world["tmp"] / "exclude.csv"),
        "--active-within-days",
        "60",
        "--data",
        str(world["data"]),
    )
    decisions, why = run["frame"], _why(run["left"])
    sends = decisions.loc[decisions["action"] != "no_action"]
    assert len(sends) and set(sends["channel"]) == {"email"}
    shown = sends.loc[sends["action"].isin(["product_message", "offer", "win_back"])]
    items = pd.Series([p for ps in shown["product_ids"] for p in ps], dtype=str)
    assert len(items) and not set(items) & set(world["excluded"])
    table = world["products"].loc[items]
    assert (
        set(table["category"]) <= set(world["categories"][:2]) and table["price"].max() <= world["price_max"]
    )
    for ps in shown["product_ids"]:
        per_category = world["products"].loc[list(ps), "category"].value_counts()
        assert per_category.max() <= 1
    # every customer is a decision or in the left-out list; no-action ones with the decision's reason
    assert set(decisions["customer_id"]) | set(why) == set(world["segment"].index)
    idle = decisions.loc[decisions["action"] == "no_action"]
    assert {why[cid] for cid in idle["customer_id"]} == {r[0] for r in idle["reasons"]}
    assert "inactive" in set(why.values())


# ------------------------------------------------------------------------------ refused
@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["recommend", "--all", "--categories", "no-such-category"],
            "--categories: unknown category 'no-such-category'",
        ),
        (["channel", "--all", "--channel", "fax"], "--channel: unknown channel 'fax'; known channels: email"),
        (
            ["send-time", "--all", "--channel", "email", "--segment", "vip"],
            "--segment: unknown segment 'vip'",
        ),
        (
            ["decide", "--channel", "web"],
            "--channel: unknown channel 'web'; known channels: email, sms, push, social",
        ),
        (["decide", "--now", "2026-07-01T09:00"], "--now: give a time zone, e.g. 2026-07-01T09:00:00+00:00"),
        (["send-time", "--all", "--channel", "email", "--after", "2026-07-01"], "--after: give a time zone"),
        (
            ["recommend", "--all", "--price-min", "9", "--price-max", "3"],
            "price_min 9.0 is above price_max 3.0",
        ),
    ],
)
def test_bad_batch_options_exit_2_naming_the_option(world, args, message):
    result = _run(world, *args, "--out", str(world["tmp"] / "refused.parquet"))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_batch_needs_somewhere_to_write_and_a_known_format(world):
    assert "need --out" in _run(world, "channel", "--all").output
    result = _run(world, "recommend", "--all", "--out", str(world["tmp"] / "recs.txt"))
    assert result.exit_code == 2 and "give a .parquet, .csv or .csv.gz file" in result.output


def test_the_training_bar_has_gone_through_every_stage(trained):
    from training.train import STAGES

    # each stage of the bar is a timed step; the bar moves once per step it went through
    assert set(STAGES) <= set(trained.stages)
