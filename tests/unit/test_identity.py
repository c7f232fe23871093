"""Tests of identity stitching (features.identity)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features import columns as c
from features.identity import stitch_identities
from features.io import Tables, load_tables
from features.validation import STRING_DTYPE, validate_dir

# A small data folder as CSV text: 00123 shops with a loyalty card (L-001), c2 with an app (dev-9).
CUSTOMERS_CSV = "customer_id,timezone\n00123,Europe/Paris\nc2,UTC\nc3,UTC\n"
IDENTITIES_CSV = "source_system,source_id,customer_id\nloyalty,L-001,00123\napp,dev-9,c2\ncrm,00123,00123\n"
EVENTS_CSV = (
    "customer_id,ts,channel,event_type,product_id,quantity,amount\n"
    "00123,2026-01-05T10:00:00+01:00,web,view,p1,1,\n"
    "L-001,2026-01-05T11:30:00+01:00,store,purchase,p1,2,20\n"
    "dev-9,2026-01-06T08:00:00-05:00,app,add_to_cart,p2,1,\n"
    "c3,2026-01-07T09:15:00+00:00,email,purchase,p2,1,15.5\n"
    "c2,2026-01-08T12:00:00+05:30,web,return,p1,-1,-10\n"
)


def write_folder(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def ids(values: list[str | None]) -> pd.Series:
    return pd.Series(values, dtype=STRING_DTYPE)


def identities_frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    systems, sources, customers = zip(*rows, strict=True)
    return pd.DataFrame(
        {c.SOURCE_SYSTEM: ids(systems), c.SOURCE_ID: ids(sources), c.CUSTOMER_ID: ids(customers)}
    )


@pytest.fixture
def loaded(tmp_path: Path) -> Tables:
    files = {"events.csv": EVENTS_CSV, "customers.csv": CUSTOMERS_CSV, "identities.csv": IDENTITIES_CSV}
    return load_tables(write_folder(tmp_path / "d", files))


def test_loyalty_card_and_app_device_are_attributed_to_the_canonical_customer(loaded: Tables) -> None:
    # events are logged as 00123, L-001 (loyalty card of 00123), dev-9 (app device of c2), c3, c2
    stitched = stitch_identities(loaded)
    assert stitched.events[c.CUSTOMER_ID].tolist() == ["00123", "00123", "c2", "c3", "c2"]
    assert stitched.events[c.CUSTOMER_ID].dtype == STRING_DTYPE
    assert any("identity stitching: 2 of 5 event rows re-attributed" in note for note in stitched.notes)
    # the input is left alone
    assert loaded.events[c.CUSTOMER_ID].tolist() == ["00123", "L-001", "dev-9", "c3", "c2"]
    assert not any("identity stitching" in note for note in loaded.notes)
    # other columns and tables are untouched
    pd.testing.assert_series_equal(stitched.events[c.TS], loaded.events[c.TS])
    assert stitched.customers is loaded.customers


def test_unknown_ids_stay_as_they_are() -> None:
    events = pd.DataFrame(
        {c.CUSTOMER_ID: ids(["L-001", "stranger", None, "c2"]), c.EVENT_TYPE: ids(["view"] * 4)}
    )
    tables = Tables(events=events, identities=identities_frame([("loyalty", "L-001", "c1")]))
    stitched = stitch_identities(tables)
    assert stitched.events[c.CUSTOMER_ID].tolist()[:2] == ["c1", "stranger"]
    assert pd.isna(stitched.events[c.CUSTOMER_ID].iloc[2])
    assert stitched.events[c.CUSTOMER_ID].iloc[3] == "c2"


def test_canonical_ids_stay_even_when_identities_reuse_them() -> None:
    # "c2" is a customer of its own; a stray identity row must not move its events to c1
    customers = pd.DataFrame({c.CUSTOMER_ID: ids(["c1", "c2"])})
    identities = identities_frame([("crm", "c2", "c1"), ("crm", "c1", "c1")])
    events = pd.DataFrame({c.CUSTOMER_ID: ids(["c1", "c2"])})
    stitched = stitch_identities(Tables(events=events, customers=customers, identities=identities))
    assert stitched.events[c.CUSTOMER_ID].tolist() == ["c1", "c2"]


def test_source_system_column_joins_on_the_pair() -> None:
    # the same source id exists in two systems for two customers: only the pair tells them apart
    identities = identities_frame([("loyalty", "42", "c1"), ("app", "42", "c2")])
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: ids(["42", "42", "42", "c3"]),
            c.SOURCE_SYSTEM: ids(["loyalty", "app", "web", None]),
        }
    )
    stitched = stitch_identities(Tables(events=events, identities=identities))
    assert stitched.events[c.CUSTOMER_ID].tolist() == ["c1", "c2", "42", "c3"]


def test_messages_and_consent_with_source_ids_are_stitched() -> None:
    identities = identities_frame([("app", "dev-9", "c2")])
    messages = pd.DataFrame({c.MESSAGE_ID: ids(["m1"]), c.CUSTOMER_ID: ids(["dev-9"])})
    consent = pd.DataFrame({c.CUSTOMER_ID: ids(["dev-9", "c1"]), c.CHANNEL: ids(["push", "email"])})
    events = pd.DataFrame({c.CUSTOMER_ID: ids(["c1"])})
    tables = Tables(events=events, messages=messages, consent=consent, identities=identities)
    stitched = stitch_identities(tables)
    assert stitched.messages[c.CUSTOMER_ID].tolist() == ["c2"]
    assert stitched.consent[c.CUSTOMER_ID].tolist() == ["c2", "c1"]
    assert any("1 of 1 messages rows re-attributed" in note for note in stitched.notes)


def test_without_identities_nothing_changes(tmp_path: Path) -> None:
    events = EVENTS_CSV.replace("L-001,", "00123,").replace("dev-9,", "c2,")
    folder = write_folder(tmp_path / "d", {"events.csv": events, "customers.csv": CUSTOMERS_CSV})
    assert validate_dir(folder) == []
    tables = load_tables(folder)
    stitched = stitch_identities(tables)
    pd.testing.assert_frame_equal(stitched.events, tables.events)
    assert any("no identities table" in note for note in stitched.notes)
