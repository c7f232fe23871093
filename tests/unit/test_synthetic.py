"""Tests of the synthetic data generator: determinism, the data contract, identity stitching,
the messaging rules and that the hidden truth really shows in the observed data."""

from __future__ import annotations

import hashlib
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import columns as c
from features import contract
from features import synthetic as syn

OBSERVED = ("customers", "identities", "consent", "products", "offers", "events", "messages")
N_CUSTOMERS = 1000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    summary = syn.generate(N_CUSTOMERS, seed=7, out_dir=out)
    assert summary.out_dir == out
    assert summary.rows["customers"] == N_CUSTOMERS
    return out


@pytest.fixture(scope="module")
def tables(data_dir) -> dict[str, pd.DataFrame]:
    out = {name: pd.read_parquet(data_dir / f"{name}.parquet") for name in OBSERVED}
    for name in ("customers", "products", "messages"):
        out[f"truth/{name}"] = pd.read_parquet(data_dir / "truth" / f"{name}.parquet")
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = _digests(syn.generate(300, seed=3, out_dir=tmp_path / "a").out_dir)
    b = _digests(syn.generate(300, seed=3, out_dir=tmp_path / "b").out_dir)
    other = _digests(syn.generate(300, seed=4, out_dir=tmp_path / "c").out_dir)
    assert a == b
    assert set(a) == set(other)
    assert a["events.parquet"] != other["events.parquet"]
    assert a["truth/customers.parquet"] != other["truth/customers.parquet"]


def test_chunked_generation_is_deterministic_and_merged_in_time_order(tmp_path, monkeypatch):
    # generate() reads the chunk size where it runs; 400 customers → 3 chunks, merged month by month
    monkeypatch.setattr(syn._generate, "CHUNK", 150)
    a = syn.generate(400, seed=5, out_dir=tmp_path / "a")
    b = syn.generate(400, seed=5, out_dir=tmp_path / "b")
    assert _digests(a.out_dir) == _digests(b.out_dir)
    events = pd.read_parquet(a.out_dir / "events.parquet")
    messages = pd.read_parquet(a.out_dir / "messages.parquet")
    assert events[c.TS].is_monotonic_increasing
    assert messages[c.SENT_TS].is_monotonic_increasing
    assert messages[c.MESSAGE_ID].is_unique and events[c.CUSTOMER_ID].notna().all()
    assert len(pd.read_parquet(a.out_dir / "customers.parquet")) == 400


def test_output_layout_keeps_truth_inside_truth_folder(data_dir, tables):
    top = sorted(p.name for p in data_dir.iterdir())
    assert top == sorted([f"{name}.parquet" for name in OBSERVED] + ["truth"])
    truth = sorted(p.name for p in (data_dir / "truth").iterdir())
    assert truth == sorted([f"{name}.parquet" for name in syn.TRUTH_COLUMNS] + ["meta.json"])
    for name, columns in syn.TRUTH_COLUMNS.items():
        assert tuple(pq.read_schema(data_dir / "truth" / f"{name}.parquet").names) == columns
    leaked = {"segment", "p_base", "preferred_hour", "price_sensitivity", "style", "lifecycle", "propensity"}
    for name in OBSERVED:
        assert not leaked & set(tables[name].columns), name
    # no leftovers next to the output folder
    assert sorted(p.name for p in data_dir.parent.iterdir()) == ["data"]


def _check_kind(table: str, spec: contract.ColumnSpec, field: pa.Field, values: pd.Series) -> None:
    where = f"{table}.{spec.name}"
    if spec.kind in (contract.ID, contract.STR, contract.CHANNEL_KIND, contract.TIMEZONE_KIND):
        assert pa.types.is_string(field.type), where
    elif spec.kind == contract.TIMESTAMP:
        assert field.type == pa.timestamp("us", tz="UTC"), where
    elif spec.kind == contract.FLOAT:
        assert pa.types.is_floating(field.type), where
    elif spec.kind == contract.BOOL:
        assert pa.types.is_boolean(field.type), where
    present = values.dropna()
    if spec.kind == contract.CHANNEL_KIND:
        assert set(present) <= set(contract.DEFAULT_CHANNELS), where
    if spec.kind == contract.TIMEZONE_KIND:
        for zone in set(present):
            zoneinfo.ZoneInfo(zone)
    if spec.min_value is not None:
        assert (present >= spec.min_value).all(), where
    if not spec.nullable:
        assert values.notna().all(), where


def test_tables_follow_the_contract(data_dir, tables):
    for name in OBSERVED:
        spec = contract.TABLES[name]
        schema = pq.read_schema(data_dir / f"{name}.parquet")
        df = tables[name]
        assert len(df) > 0, name
        for col in spec.columns:
            if col.name not in schema.names:  # optional columns the generator does not make
                assert not col.required, f"{name}.{col.name}"
                continue
            _check_kind(name, col, schema.field(col.name), df[col.name])
        if spec.primary_key:
            assert not df.duplicated(list(spec.primary_key)).any(), name
        for ref in spec.references:
            target = tables[ref.target_table][ref.target_column]
            assert df[ref.column].dropna().isin(target).all(), f"{name}.{ref.column}"
    assert set(tables["offers"][c.KIND]) <= set(contract.OFFER_KINDS)
    assert set(tables["offers"][c.OFFER_ID]) == {
        "OF_DISC10",
        "OF_DISC20",
        "OF_BOGO",
        "OF_FREESHIP",
        "OF_CONTENT",
    }
    assert set(tables["events"][c.EVENT_TYPE]) <= set(contract.KNOWN_EVENT_TYPES)
    assert (tables["products"][c.PRICE] > 0).all()
    customer_ids = tables["customers"][c.CUSTOMER_ID]
    assert customer_ids.str.fullmatch(r"C\d{7}").all()
    assert tables["products"][c.PRODUCT_ID].str.fullmatch(r"P\d{6}").all()


def test_offer_costs_are_currency_per_redemption(data_dir, tables):
    """`offers.cost` is in the contract's unit, currency per redemption: each offer's share of the
    order value (truth only, in meta.json) × the mean order value of the observed purchases."""
    import json

    buys = tables["events"].loc[tables["events"][c.EVENT_TYPE] == "purchase"]
    mean_order_value = buys.groupby(c.ORDER_ID)[c.AMOUNT].sum().mean()
    assert buys[c.ORDER_ID].notna().all() and mean_order_value > 10  # currency, far above a share
    offers = tables["offers"].set_index(c.OFFER_ID)[c.COST]
    truth = json.loads((data_dir / "truth" / "meta.json").read_text())["parameters"]
    assert truth["mean_order_value"] == pytest.approx(mean_order_value)
    for offer in syn.OFFERS:
        assert offers[offer.offer_id] == pytest.approx(round(offer.cost_share * mean_order_value, 2))
    assert offers["OF_DISC20"] > offers["OF_DISC10"] > 1.0 and offers["OF_CONTENT"] == 0.0
    shares = {o["offer_id"]: o["cost_share"] for o in truth["offers"]}
    assert shares == {o.offer_id: o.cost_share for o in syn.OFFERS}


def test_events_are_time_sorted_inside_the_window_and_consistent(tables):
    ev = tables["events"]
    assert ev[c.TS].is_monotonic_increasing
    assert ev[c.TS].min() >= pd.Timestamp("2025-07-01", tz="UTC")
    assert ev[c.TS].max() < pd.Timestamp("2026-07-01", tz="UTC")
    priced = ev[c.EVENT_TYPE].isin(["purchase", "return"])
    prices = ev[c.PRODUCT_ID].map(tables["products"].set_index(c.PRODUCT_ID)[c.PRICE])
    assert np.allclose(ev.loc[priced, c.AMOUNT], (prices * ev[c.QUANTITY])[priced].round(2))
    assert (ev.loc[~priced, c.AMOUNT] == 0).all()
    assert ev.loc[priced, c.ORDER_ID].notna().all() and ev.loc[~priced, c.ORDER_ID].isna().all()
    assert ev.loc[ev[c.EVENT_TYPE] == "search", c.PRODUCT_ID].isna().all()
    assert ev.loc[ev[c.EVENT_TYPE] != "search", c.PRODUCT_ID].notna().all()
    assert (ev[c.STORE_ID].notna() == (ev[c.CHANNEL] == "store")).all()
    # a heavy-tailed but sensible volume
    per_customer = len(ev) / N_CUSTOMERS
    assert 15 < per_customer < 60
    # cold start: some active products were never touched
    new = tables["truth/products"].loc[lambda d: d["is_new"], "product_id"]
    assert len(new) > 0 and not ev[c.PRODUCT_ID].isin(new).any()


def test_source_ids_need_stitching_through_identities(tables):
    ev, ids, customers = tables["events"], tables["identities"], tables["customers"]
    assert not ids[c.SOURCE_ID].duplicated().any()  # no source id shared by two customers
    crm = ids[ids[c.SOURCE_SYSTEM] == "crm"]
    assert set(crm[c.SOURCE_ID]) == set(customers[c.CUSTOMER_ID])
    canonical = ev[c.CUSTOMER_ID].isin(customers[c.CUSTOMER_ID])
    assert ev.loc[~canonical, c.CUSTOMER_ID].isin(ids[c.SOURCE_ID]).all()
    # the store only knows loyalty cards, the app often the device id
    assert ev.loc[ev[c.CHANNEL] == "store", c.CUSTOMER_ID].str.startswith("L").all()
    app = ev.loc[ev[c.CHANNEL] == "app", c.CUSTOMER_ID]
    assert 0.3 < app.str.startswith("D").mean() < 0.7
    assert set(ids[c.SOURCE_SYSTEM]) == {"crm", "pos_loyalty", "app_device", "email"}


def test_holdout_gets_no_messages_and_messages_respect_consent(tables):
    customers, messages, consent = tables["customers"], tables["messages"], tables["consent"]
    holdout = customers.loc[customers["holdout"], c.CUSTOMER_ID]
    assert 0.02 < len(holdout) / len(customers) < 0.09
    assert not messages[c.CUSTOMER_ID].isin(holdout).any()
    assert set(messages[c.CHANNEL]) <= set(syn.MESSAGE_CHANNELS)
    # consent in force at send time: the latest consent row at or before sent_ts
    left = messages[[c.MESSAGE_ID, c.CUSTOMER_ID, c.CHANNEL, c.SENT_TS]].sort_values(c.SENT_TS)
    right = consent.sort_values(c.UPDATED_TS)
    joined = pd.merge_asof(
        left,
        right,
        left_on=c.SENT_TS,
        right_on=c.UPDATED_TS,
        by=[c.CUSTOMER_ID, c.CHANNEL],
        direction="backward",
    )
    assert joined[c.OPTED_IN].fillna(False).astype(bool).all()
    # some opt-out histories exist, and some customers consent to nothing
    assert consent.duplicated([c.CUSTOMER_ID, c.CHANNEL]).any()
    assert (~consent.groupby(c.CUSTOMER_ID)[c.OPTED_IN].any()).any()
    # outcomes are ordered in time; revenue only with a conversion
    opened = messages[c.OPENED_TS].notna()
    assert (messages.loc[opened, c.OPENED_TS] >= messages.loc[opened, c.SENT_TS]).all()
    assert messages.loc[~opened, c.CLICKED_TS].isna().all()
    assert (messages[c.REVENUE].notna() == messages[c.CONVERTED_TS].notna()).all()


def test_conversion_orders_appear_in_events(tables):
    messages, events = tables["messages"], tables["events"]
    per_customer = len(messages) / N_CUSTOMERS
    assert 8 < per_customer < 18
    converted = messages[messages[c.CONVERTED_TS].notna()]
    purchases = events[events[c.EVENT_TYPE] == "purchase"]
    # every conversion has a purchase at exactly its timestamp (a new order or a credited one)
    assert converted[c.CONVERTED_TS].isin(purchases[c.TS]).mean() > 0.99


def test_open_rate_peaks_at_the_preferred_local_hour(tables):
    messages = tables["messages"]
    truth = tables["truth/customers"].set_index("customer_id")
    zones = messages[c.CUSTOMER_ID].map(tables["customers"].set_index(c.CUSTOMER_ID)[c.TIMEZONE])
    hours, weekdays = syn.local_time_parts(messages[c.SENT_TS], zones)
    preferred = messages[c.CUSTOMER_ID].map(truth["preferred_hour"]).to_numpy()
    distance = np.abs((hours - preferred + 12) % 24 - 12)
    near = distance <= 1.0
    opened = messages[c.OPENED_TS].notna().to_numpy()
    assert near.sum() > 300 and (~near).sum() > 300
    assert opened[near].mean() > opened[~near].mean() + 0.08
    # the logged local send hour and weekday are the real, DST-correct local ones
    tm = tables["truth/messages"]
    assert (tm["message_id"] == messages[c.MESSAGE_ID]).all()
    assert np.abs(tm["local_send_hour"].to_numpy() - hours).max() < 1e-3
    assert (tm["local_weekday"].to_numpy() == weekdays).all()


def test_discounts_convert_price_sensitive_customers(tables):
    messages = tables["messages"]
    truth = tables["truth/customers"].set_index("customer_id")
    sensitive = messages[c.CUSTOMER_ID].map(truth["price_sensitivity"]).to_numpy() > 0.6
    opened = messages[c.OPENED_TS].notna().to_numpy()
    converted = messages[c.CONVERTED_TS].notna().to_numpy()
    discount = messages[c.OFFER_ID].isin(["OF_DISC10", "OF_DISC20"]).to_numpy()
    no_offer = messages[c.OFFER_ID].isna().to_numpy()
    with_discount = converted[sensitive & opened & discount]
    without = converted[sensitive & opened & no_offer]
    assert len(with_discount) > 100 and len(without) > 100
    assert with_discount.mean() > without.mean() + 0.05


def test_truth_helpers_reproduce_the_logged_probabilities(tables):
    messages, tm = tables["messages"], tables["truth/messages"]
    truth = tables["truth/customers"]
    p_open = syn.true_open_probability(
        truth, messages[c.CUSTOMER_ID], messages[c.CHANNEL], tm["local_send_hour"], tm["local_weekday"]
    )
    assert np.allclose(p_open, tm["p_open"])
    p_if_opened = syn.true_conversion_probability(truth, messages[c.CUSTOMER_ID], messages[c.OFFER_ID])
    assert np.allclose(p_if_opened, tm["p_convert_if_opened"])
    p_sent = syn.true_conversion_probability(truth, messages[c.CUSTOMER_ID], messages[c.OFFER_ID], p_open)
    assert np.allclose(p_sent, tm["p_convert_treated"])
    uplift = syn.true_uplift(truth, messages[c.CUSTOMER_ID], messages[c.OFFER_ID], p_open)
    assert np.allclose(uplift, tm["uplift"])
    # logging propensities are proper probabilities; the default arm is the most likely one
    for col in ("propensity_channel", "propensity_hour", "propensity_offer", "propensity"):
        assert ((tm[col] > 0) & (tm[col] <= 1)).all(), col
    assert set(tm["policy"]) == {"explore", "default"}
    # the four uplift segments behave as advertised
    by_segment = truth.groupby("segment")[["p_base", "uplift_none", "uplift_OF_DISC20"]].mean()
    assert set(by_segment.index) == set(syn.SEGMENTS)
    assert by_segment.loc["sure_thing", "p_base"] > by_segment.loc["persuadable", "p_base"]
    assert by_segment.loc["persuadable", "uplift_OF_DISC20"] > 0.1
    assert by_segment.loc["sleeping_dog", "uplift_none"] < 0
    assert abs(by_segment.loc["sure_thing", "uplift_OF_DISC20"]) < 0.01


def test_catalogue_structure(tables):
    products, truth = tables["products"], tables["truth/products"]
    consumable = products[c.CATEGORY].isin(["grocery", "beauty", "pet", "baby"])
    assert products.loc[consumable, c.REPLENISHMENT_DAYS].notna().mean() > 0.7
    assert products.loc[~consumable, c.REPLENISHMENT_DAYS].isna().all()
    assert products[c.CATEGORY].nunique() == len(syn.CATEGORIES)
    assert 0 < (~products[c.IS_ACTIVE]).mean() < 0.08
    assert (truth["product_id"] == products[c.PRODUCT_ID]).all()


def test_refuses_foreign_folder_and_replaces_previous_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError):
        syn.generate(100, seed=1, out_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

    out = tmp_path / "out"
    syn.generate(100, seed=1, out_dir=out)
    first = _digests(out)
    syn.generate(120, seed=1, out_dir=out)
    assert _digests(out) != first
    assert len(pd.read_parquet(out / "customers.parquet")) == 120
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out"]
