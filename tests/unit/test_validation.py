"""Tests of the data contract checks (features.validation) and of loading (features.io).

A tiny valid data folder is written by hand (no generator) as CSV or parquet; every bad-input
case breaks one thing and asserts the exact table, column, row and a key phrase of the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from features.contract import DEFAULT_CHANNELS, ContractConfig
from features.io import Tables, load_tables, write_dir_atomic, write_table_atomic
from features.problems import WARNING, DataValidationError, Problem
from features.table_files import find_table_file, read_raw_table
from features.validation import MAX_EXAMPLE_ROWS, validate_dir, validate_tables


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


def valid_frames() -> dict[str, pd.DataFrame]:
    """Typed frames of a small, valid data folder (timestamps in several offsets on purpose)."""
    ts = pd.to_datetime(
        [
            "2026-01-05T10:00:00+01:00",
            "2026-01-05T11:30:00+01:00",
            "2026-01-06T08:00:00-05:00",
            "2026-01-07T09:15:00+00:00",
            "2026-01-08T12:00:00+05:30",
        ],
        utc=True,
    )
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["00123", "L-001", "dev-9", "c3", "c2"],
            c.TS: ts,
            c.CHANNEL: ["web", "store", "app", "email", "web"],
            c.EVENT_TYPE: ["view", "purchase", "add_to_cart", "purchase", "return"],
            c.PRODUCT_ID: ["p1", "p1", "p2", "p2", "p1"],
            c.QUANTITY: [1.0, 2.0, 1.0, 1.0, -1.0],
            c.AMOUNT: [np.nan, 20.0, np.nan, 15.5, -10.0],
            c.ORDER_ID: [None, "o1", None, "o2", "o3"],
            c.STORE_ID: [None, "s1", None, None, None],
        }
    )
    messages = pd.DataFrame(
        {
            c.MESSAGE_ID: ["m1", "m2"],
            c.CUSTOMER_ID: ["00123", "c2"],
            c.CHANNEL: ["email", "sms"],
            c.SENT_TS: pd.to_datetime(["2026-01-02T09:00:00+00:00", "2026-01-03T09:00:00+00:00"], utc=True),
            c.CAMPAIGN_ID: ["k1", "k1"],
            c.OFFER_ID: ["o-10", None],
            c.OPENED_TS: pd.to_datetime(["2026-01-02T10:00:00+00:00", None], utc=True),
            c.CLICKED_TS: pd.to_datetime(["2026-01-02T10:05:00+00:00", None], utc=True),
            c.CONVERTED_TS: pd.to_datetime([None, None], utc=True),
            c.REVENUE: [12.5, np.nan],
        }
    )
    customers = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["00123", "c2", "c3"],
            c.TIMEZONE: ["Europe/Paris", "America/New_York", "UTC"],
            c.SIGNUP_TS: pd.to_datetime(
                ["2025-06-01T00:00:00+00:00", None, "2025-07-01T00:00:00+00:00"], utc=True
            ),
        }
    )
    identities = pd.DataFrame(
        {
            c.SOURCE_SYSTEM: ["loyalty", "app", "crm"],
            c.SOURCE_ID: ["L-001", "dev-9", "00123"],
            c.CUSTOMER_ID: ["00123", "c2", "00123"],
        }
    )
    consent = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["00123", "c2"],
            c.CHANNEL: ["email", "sms"],
            c.OPTED_IN: [True, False],
            c.UPDATED_TS: pd.to_datetime(
                ["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"], utc=True
            ),
        }
    )
    products = pd.DataFrame(
        {
            c.PRODUCT_ID: ["p1", "p2"],
            c.CATEGORY: ["shoes", "socks"],
            c.PRICE: [10.0, 15.5],
            c.BRAND: ["acme", None],
            c.REPLENISHMENT_DAYS: [np.nan, 30.0],
            c.IS_ACTIVE: [True, False],
        }
    )
    offers = pd.DataFrame({c.OFFER_ID: ["o-10"], c.KIND: ["discount"], c.VALUE: [10.0], c.COST: [2.0]})
    return {
        "events": events,
        "messages": messages,
        "customers": customers,
        "identities": identities,
        "consent": consent,
        "products": products,
        "offers": offers,
    }


def as_text(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The frames as CSV cells: ISO 8601 timestamps with an offset, true/false, '' for missing."""
    out = {}
    for name, frame in frames.items():
        text = {}
        for col in frame.columns:
            series = frame[col]
            if isinstance(series.dtype, pd.DatetimeTZDtype):
                cells = [t.isoformat() if pd.notna(t) else "" for t in series]
            elif pd.api.types.is_bool_dtype(series.dtype):
                cells = ["true" if v else "false" for v in series]
            else:
                cells = ["" if pd.isna(v) else str(v) for v in series]
            text[col] = pd.Series(cells, dtype=object)
        out[name] = pd.DataFrame(text)
    return out


def write_csv_dir(folder: Path, text: dict[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in text.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


def write_parquet_dir(folder: Path, frames: dict[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    return write_csv_dir(tmp_path / "csv", as_text(valid_frames()))


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    frames = valid_frames()
    # store one timestamp column in a non-UTC zone: loading must convert it
    frames["events"][c.TS] = frames["events"][c.TS].dt.tz_convert("Asia/Kolkata")
    return write_parquet_dir(tmp_path / "parquet", frames)


def assert_problem(
    problems: list[Problem], table: str, column: str | None, row: int | None, phrase: str
) -> Problem:
    matches = [
        p for p in problems if (p.table, p.column, p.row) == (table, column, row) and phrase in p.reason
    ]
    assert matches, f"no {table}.{column} row {row} '{phrase}' among:\n" + "\n".join(map(str, problems))
    return matches[0]


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


# ------------------------------------------------------------------------------------------
# Valid data


def test_valid_csv_folder_loads_cleanly_with_normalised_dtypes(csv_dir: Path) -> None:
    assert validate_dir(csv_dir) == []
    tables = load_tables(csv_dir)
    assert tables.present() == [
        "events",
        "messages",
        "customers",
        "identities",
        "consent",
        "products",
        "offers",
    ]
    assert tables.derived == []

    events = tables.events
    assert list(events.columns[:9]) == [
        c.CUSTOMER_ID,
        c.TS,
        c.CHANNEL,
        c.EVENT_TYPE,
        c.PRODUCT_ID,
        c.QUANTITY,
        c.AMOUNT,
        c.ORDER_ID,
        c.STORE_ID,
    ]
    assert events[c.CUSTOMER_ID].dtype == "str"
    assert events[c.PRODUCT_ID].dtype == "str"
    assert str(events[c.TS].dtype) == "datetime64[us, UTC]"
    assert events[c.QUANTITY].dtype == "float64"
    assert events[c.AMOUNT].dtype == "float64"
    assert events[c.TS].iloc[0] == utc("2026-01-05T09:00:00+00:00")  # +01:00 converted to UTC
    assert events[c.TS].iloc[4] == utc("2026-01-08T06:30:00+00:00")  # +05:30 converted to UTC
    assert pd.isna(events[c.ORDER_ID].iloc[0])
    assert tables.consent[c.OPTED_IN].dtype == "bool"
    assert tables.consent[c.OPTED_IN].tolist() == [True, False]
    assert tables.products[c.IS_ACTIVE].dtype == "bool"
    assert str(tables.messages[c.CONVERTED_TS].dtype) == "datetime64[us, UTC]"
    assert tables.messages[c.CONVERTED_TS].isna().all()
    assert tables.customers[c.TIMEZONE].tolist() == ["Europe/Paris", "America/New_York", "UTC"]


def test_ids_with_leading_zeros_survive_csv(csv_dir: Path) -> None:
    tables = load_tables(csv_dir)
    assert tables.events[c.CUSTOMER_ID].iloc[0] == "00123"
    assert tables.customers[c.CUSTOMER_ID].iloc[0] == "00123"
    assert read_raw_table(csv_dir / "events.csv")[c.CUSTOMER_ID].iloc[0] == "00123"


def test_csv_and_parquet_folders_load_to_equal_frames(csv_dir: Path, parquet_dir: Path) -> None:
    assert validate_dir(parquet_dir) == []
    from_csv, from_parquet = load_tables(csv_dir), load_tables(parquet_dir)
    assert from_csv.present() == from_parquet.present()
    for name in from_csv.present():
        pd.testing.assert_frame_equal(from_csv.get(name), from_parquet.get(name), obj=name)


def test_csv_gz_is_read(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    folder = tmp_path / "gz"
    folder.mkdir()
    text["events"].to_csv(folder / "events.csv.gz", index=False)
    tables = load_tables(folder)
    assert find_table_file(folder, "events") == folder / "events.csv.gz"
    assert len(tables.events) == 5


def test_optional_columns_are_added_with_their_default(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text = {
        "events": text["events"].drop(columns=[c.QUANTITY, c.AMOUNT, c.STORE_ID]),
        "customers": text["customers"],
    }
    text["customers"] = text["customers"].drop(columns=[c.TIMEZONE])
    text["events"][c.CUSTOMER_ID] = ["00123", "00123", "c2", "c3", "c2"]
    text["events"]["loyalty_tier"] = "gold"  # a free attribute: kept as it is
    tables = load_tables(write_csv_dir(tmp_path / "d", text))
    assert tables.events[c.QUANTITY].tolist() == [1.0] * 5
    assert tables.events[c.AMOUNT].tolist() == [0.0] * 5
    assert tables.events[c.STORE_ID].isna().all() and tables.events[c.STORE_ID].dtype == "str"
    assert tables.events["loyalty_tier"].tolist() == ["gold"] * 5
    assert tables.customers[c.TIMEZONE].tolist() == ["UTC"] * 3


def test_absent_optional_tables_are_none_with_notes_and_products_are_derived(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    tables = load_tables(write_csv_dir(tmp_path / "d", {"events": text["events"]}))
    assert tables.present() == ["events", "products"]
    assert tables.derived == ["products"]
    assert tables.messages is None and tables.offers is None and tables.consent is None
    notes = "\n".join(tables.notes)
    assert "no products table: categories and prices unknown" in notes
    assert "no messages table" in notes and "no consent table" in notes and "no offers table" in notes
    products = tables.products.set_index(c.PRODUCT_ID)
    assert products.loc["p1", c.PRICE] == 10.0  # 20.0 / 2
    assert products.loc["p2", c.PRICE] == 15.5
    assert (products[c.CATEGORY] == "unknown").all() and products[c.IS_ACTIVE].all()


def test_unknown_event_type_is_only_a_warning(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text["events"].loc[2, c.EVENT_TYPE] = "page_ping"
    folder = write_csv_dir(tmp_path / "d", text)
    problems = validate_dir(folder)
    warning = assert_problem(problems, "events", c.EVENT_TYPE, 2, "unknown event type 'page_ping'")
    assert warning.severity == WARNING
    assert errors(problems) == []
    tables = load_tables(folder)  # loads, and says so
    assert any("page_ping" in note for note in tables.notes)


def test_custom_channel_list_accepts_a_new_channel(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text["events"].loc[3, c.CHANNEL] = "kiosk"
    folder = write_csv_dir(tmp_path / "d", text)
    assert_problem(validate_dir(folder), "events", c.CHANNEL, 3, "unknown channel 'kiosk'")
    config = ContractConfig(channels=(*DEFAULT_CHANNELS, "kiosk"))
    assert validate_dir(folder, config) == []
    assert load_tables(folder, config).events[c.CHANNEL].iloc[3] == "kiosk"


# ------------------------------------------------------------------------------------------
# Bad inputs: one case each


def _set(table: str, column: str, row: int, value: str):
    def mutate(text: dict[str, pd.DataFrame]) -> None:
        text[table].loc[row, column] = value

    return mutate


def _drop_column(table: str, column: str):
    def mutate(text: dict[str, pd.DataFrame]) -> None:
        text[table] = text[table].drop(columns=[column])

    return mutate


def _empty(table: str):
    def mutate(text: dict[str, pd.DataFrame]) -> None:
        text[table] = text[table].iloc[0:0]

    return mutate


def _drop_table(table: str):
    def mutate(text: dict[str, pd.DataFrame]) -> None:
        del text[table]

    return mutate


def _repeat_column(table: str, column: str):
    def mutate(text: dict[str, pd.DataFrame]) -> None:
        text[table] = pd.concat([text[table], text[table][[column]]], axis=1)

    return mutate


def _second_customer_for_source_id(text: dict[str, pd.DataFrame]) -> None:
    # "L-001" is the loyalty card of 00123; the app now says it is c3's device
    extra = pd.DataFrame({c.SOURCE_SYSTEM: ["app"], c.SOURCE_ID: ["L-001"], c.CUSTOMER_ID: ["c3"]})
    text["identities"] = pd.concat([text["identities"], extra], ignore_index=True)


BAD_CSV_CASES = [
    (
        "missing column",
        _drop_column("events", c.CHANNEL),
        ("events", c.CHANNEL, None, "required column is missing"),
    ),
    (
        "wrong type number",
        _set("events", c.QUANTITY, 1, "two"),
        ("events", c.QUANTITY, 1, "'two' is not a number"),
    ),
    (
        "wrong type bool",
        _set("consent", c.OPTED_IN, 0, "maybe"),
        ("consent", c.OPTED_IN, 0, "is not a boolean"),
    ),
    (
        "unparseable timestamp",
        _set("events", c.TS, 2, "2026-13-45T99:00:00Z"),
        ("events", c.TS, 2, "unparseable timestamp '2026-13-45T99:00:00Z'"),
    ),
    (
        "naive timestamp csv",
        _set("messages", c.SENT_TS, 1, "2026-01-01 10:00"),
        ("messages", c.SENT_TS, 1, "naive timestamp '2026-01-01 10:00' (no time zone)"),
    ),
    (
        "naive date csv",
        _set("events", c.TS, 0, "2026-01-01"),
        ("events", c.TS, 0, "naive timestamp '2026-01-01'"),
    ),
    (
        "unknown channel",
        _set("events", c.CHANNEL, 3, "fax"),
        ("events", c.CHANNEL, 3, "unknown channel 'fax'"),
    ),
    (
        "unknown timezone",
        _set("customers", c.TIMEZONE, 1, "Mars/Olympus"),
        ("customers", c.TIMEZONE, 1, "unknown time zone 'Mars/Olympus'"),
    ),
    ("negative price", _set("products", c.PRICE, 1, "-5"), ("products", c.PRICE, 1, "negative price -5")),
    ("negative offer cost", _set("offers", c.COST, 0, "-1.5"), ("offers", c.COST, 0, "negative cost -1.5")),
    (
        "negative quantity of a purchase",
        _set("events", c.QUANTITY, 1, "-2"),
        ("events", c.QUANTITY, 1, "negative quantity -2 for event type 'purchase'"),
    ),
    (
        "duplicate id",
        _set("customers", c.CUSTOMER_ID, 2, "c2"),
        ("customers", c.CUSTOMER_ID, 2, "duplicate primary key customer_id='c2'"),
    ),
    (
        "offer referencing nothing",
        _set("messages", c.OFFER_ID, 0, "o-404"),
        ("messages", c.OFFER_ID, 0, "'o-404' references nothing: not in offers.offer_id"),
    ),
    (
        "consent customer referencing nothing",
        _set("consent", c.CUSTOMER_ID, 1, "ghost"),
        ("consent", c.CUSTOMER_ID, 1, "'ghost' references nothing: not in customers.customer_id"),
    ),
    (
        "identity customer referencing nothing",
        _set("identities", c.CUSTOMER_ID, 1, "ghost"),
        ("identities", c.CUSTOMER_ID, 1, "'ghost' references nothing: not in customers.customer_id"),
    ),
    (
        "unknown offer kind",
        _set("offers", c.KIND, 0, "lottery"),
        ("offers", c.KIND, 0, "unknown offer kind 'lottery'"),
    ),
    (
        "null in non-nullable",
        _set("events", c.EVENT_TYPE, 4, ""),
        ("events", c.EVENT_TYPE, 4, "missing value"),
    ),
    ("empty table", _empty("offers"), ("offers", None, None, "table has no rows")),
    ("missing events table", _drop_table("events"), ("events", None, None, "required table is missing")),
    (
        "opened before sent",
        _set("messages", c.OPENED_TS, 0, "2026-01-01T09:00:00+00:00"),
        ("messages", c.OPENED_TS, 0, "is before sent_ts"),
    ),
    (
        "source id mapped to two customers",
        _second_customer_for_source_id,
        ("identities", c.SOURCE_ID, 3, "source id 'L-001' maps to different customers ('00123', 'c3')"),
    ),
    (
        "same column twice",
        _repeat_column("events", c.CHANNEL),
        ("events", c.CHANNEL, None, "column appears 2 times"),
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [case[1:] for case in BAD_CSV_CASES], ids=[case[0] for case in BAD_CSV_CASES]
)
def test_bad_csv_input_is_reported_precisely(tmp_path: Path, mutate, expected) -> None:
    text = as_text(valid_frames())
    mutate(text)
    folder = write_csv_dir(tmp_path / "d", text)
    problems = validate_dir(folder)
    problem = assert_problem(problems, *expected)
    assert problem.severity == "error"
    with pytest.raises(DataValidationError) as raised:
        load_tables(folder)
    assert problem in raised.value.problems
    assert str(problem) in str(raised.value)


def test_duplicate_primary_key_reports_every_row(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text["customers"].loc[2, c.CUSTOMER_ID] = "c2"
    problems = validate_dir(write_csv_dir(tmp_path / "d", text))
    assert_problem(problems, "customers", c.CUSTOMER_ID, 1, "2 rows share it (first in row 1)")
    assert_problem(problems, "customers", c.CUSTOMER_ID, 2, "2 rows share it (first in row 1)")


def test_naive_timestamp_column_in_parquet(tmp_path: Path) -> None:
    frames = valid_frames()
    frames["events"][c.TS] = frames["events"][c.TS].dt.tz_localize(None)
    problems = validate_dir(write_parquet_dir(tmp_path / "d", frames))
    assert_problem(problems, "events", c.TS, None, "naive timestamp column")


def test_wrong_type_column_in_parquet(tmp_path: Path) -> None:
    frames = valid_frames()
    frames["events"][c.TS] = np.arange(5)  # epoch-like integers are not timestamps
    problems = validate_dir(write_parquet_dir(tmp_path / "d", frames))
    assert_problem(problems, "events", c.TS, None, "wrong type: column has dtype int64")


def test_missing_folder(tmp_path: Path) -> None:
    problems = validate_dir(tmp_path / "nowhere")
    assert_problem(problems, "", None, None, "does not exist")
    with pytest.raises(DataValidationError, match="does not exist"):
        load_tables(tmp_path / "nowhere")


def test_folder_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("x\n")
    assert_problem(validate_dir(path), "", None, None, "is not a folder")


def test_duplicate_table_files(csv_dir: Path) -> None:
    valid_frames()["events"].to_parquet(csv_dir / "events.parquet")
    problems = validate_dir(csv_dir)
    assert_problem(problems, "events", None, None, "two files for the same table: events.parquet, events.csv")
    assert not any("required table is missing" in p.reason for p in problems)
    with pytest.raises(DataValidationError):
        find_table_file(csv_dir, "events")


def test_unknown_file_is_a_warning(csv_dir: Path) -> None:
    (csv_dir / "evnets.csv").write_text("a\n1\n")
    problems = validate_dir(csv_dir)
    assert assert_problem(problems, "evnets", None, None, "not a table of the contract").severity == WARNING
    assert errors(problems) == []


def test_many_bad_rows_are_capped_with_a_summary(tmp_path: Path) -> None:
    n = 1000
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: [f"c{i}" for i in range(n)],
            c.TS: ["2026-01-01 10:00"] * n,  # all naive
            c.CHANNEL: ["web"] * n,
            c.EVENT_TYPE: ["view"] * n,
        }
    )
    folder = write_csv_dir(tmp_path / "d", {"events": events})
    problems = [p for p in validate_dir(folder) if p.column == c.TS]
    assert [p.row for p in problems[:MAX_EXAMPLE_ROWS]] == list(range(MAX_EXAMPLE_ROWS))
    assert len(problems) == MAX_EXAMPLE_ROWS + 1
    assert problems[-1].row is None and "1,000 rows in total" in problems[-1].reason
    with pytest.raises(DataValidationError) as raised:
        load_tables(folder)
    assert "... and" not in str(raised.value)  # 21 problems fit in the message


def test_error_message_is_truncated_after_fifty_problems() -> None:
    problems = [Problem("events", c.TS, row, "bad") for row in range(80)]
    message = str(DataValidationError(problems))
    assert "events.ts row 49: bad" in message
    assert "events.ts row 50: bad" not in message
    assert "... and 30 more" in message


def test_problem_str() -> None:
    problem = Problem("events", c.TS, 17, "naive timestamp '2026-01-01 10:00' (no time zone)")
    assert str(problem) == "events.ts row 17: naive timestamp '2026-01-01 10:00' (no time zone)"
    assert str(Problem("offers", None, None, "table has no rows")) == "offers: table has no rows"
    assert str(Problem("events", "event_type", 3, "x", WARNING)) == "events.event_type row 3: x"
    assert "  warning: events.event_type row 3: x" in str(
        DataValidationError([Problem("events", "event_type", 3, "x", WARNING)])
    )


def test_validate_tables_on_frames() -> None:
    raw = as_text(valid_frames())
    raw = {name: frame.replace("", np.nan).astype("str") for name, frame in raw.items()}
    problems, parsed = validate_tables(raw)
    assert problems == []
    assert str(parsed["events"][c.TS].dtype) == "datetime64[us, UTC]"


# ------------------------------------------------------------------------------------------
# Writing


def test_write_table_atomic_round_trips(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["007", "008"], "x": [1.5, 2.0]})
    for name in ("t.parquet", "t.csv", "t.csv.gz"):
        path = write_table_atomic(frame, tmp_path / "out" / name)
        back = read_raw_table(path)
        assert back["id"].tolist() == ["007", "008"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t.csv", "t.csv.gz", "t.parquet"]
    with pytest.raises(ValueError):
        write_table_atomic(frame, tmp_path / "t.json")


def test_write_dir_atomic_replaces_the_folder(tmp_path: Path, csv_dir: Path) -> None:
    tables: Tables = load_tables(csv_dir)
    out = tmp_path / "normalised"
    out.mkdir()
    (out / "stale.parquet").write_text("old")
    write_dir_atomic(tables.as_dict(), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.parquet" for name in tables.present())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    reloaded = load_tables(out)
    pd.testing.assert_frame_equal(reloaded.events, tables.events)


def test_empty_quantity_means_one(tmp_path):
    import pandas as pd

    from features.io import load_tables

    events = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "ts": ["2026-01-01T10:00:00+00:00", "2026-01-02T10:00:00+01:00"],
            "channel": ["web", "store"],
            "event_type": ["view", "purchase"],
            "product_id": ["p1", "p1"],
            "quantity": ["", "2"],
        }
    )
    events.to_csv(tmp_path / "events.csv", index=False)
    tables = load_tables(tmp_path)
    assert tables.events["quantity"].tolist() == [1.0, 2.0]


# ------------------------------------------------------------------------------------------
# Real exports: partial tables, attributes, optional columns


def test_customer_attributes_are_typed_and_may_be_missing(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text["customers"]["attr.age"] = ["34", "", "51.5"]
    text["customers"]["attr.income"] = ["35-49K", "50-74K", ""]
    text["customers"]["attr.kids"] = ["0", "3+", "1"]  # one value is not a number: text
    csv_tables = load_tables(write_csv_dir(tmp_path / "csv", text))
    frames = valid_frames()
    frames["customers"]["attr.age"] = [34, None, 51.5]
    frames["customers"]["attr.income"] = ["35-49K", "50-74K", None]
    frames["customers"]["attr.kids"] = ["0", "3+", "1"]
    parquet_tables = load_tables(write_parquet_dir(tmp_path / "pq", frames))
    for tables in (csv_tables, parquet_tables):
        customers = tables.customers
        assert customers["attr.age"].dtype == "float64"
        assert customers["attr.age"].tolist()[::2] == [34.0, 51.5] and np.isnan(customers["attr.age"].iloc[1])
        assert customers["attr.income"].dtype == "str" and pd.isna(customers["attr.income"].iloc[2])
        assert customers["attr.kids"].tolist() == ["0", "3+", "1"]


def test_customer_attribute_of_another_type_is_an_error(tmp_path: Path) -> None:
    frames = valid_frames()
    frames["customers"]["attr.born"] = pd.to_datetime(["1990-01-01", "1985-05-05", None], utc=True)
    problems = validate_dir(write_parquet_dir(tmp_path / "d", frames))
    problem = assert_problem(
        problems, "customers", "attr.born", None, "customer attributes must be numbers or text"
    )
    assert problem.severity == "error"


def test_customers_table_covering_some_customers(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text["events"].loc[3, c.CUSTOMER_ID] = "nobody"
    text["events"].loc[4, c.CUSTOMER_ID] = "nobody"
    text["messages"].loc[1, c.CUSTOMER_ID] = "walk-in"
    text["consent"].loc[1, c.CUSTOMER_ID] = "walk-in"  # known from messages: a customer
    folder = write_csv_dir(tmp_path / "d", text)
    problems = validate_dir(folder)
    assert errors(problems) == []
    warning = assert_problem(
        problems,
        "events",
        c.CUSTOMER_ID,
        3,
        "1 customer_id value(s) in 2 row(s) are not in customers.customer_id",
    )
    assert warning.severity == WARNING and "'nobody'" in warning.reason and "time zone UTC" in warning.reason
    assert_problem(problems, "messages", c.CUSTOMER_ID, 1, "'walk-in'")
    tables = load_tables(folder)
    assert (tables.events[c.CUSTOMER_ID] == "nobody").sum() == 2
    # an opt-out for a customer known nowhere is still an error (a mistyped id would drop it)
    text["consent"].loc[1, c.CUSTOMER_ID] = "ghost"
    problems = validate_dir(write_csv_dir(tmp_path / "e", text))
    assert (
        assert_problem(problems, "consent", c.CUSTOMER_ID, 1, "'ghost' references nothing").severity
        == "error"
    )


def test_products_missing_from_the_products_table_are_added_on_load(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text["events"].loc[1, c.PRODUCT_ID] = "p404"  # a purchase of 2 for 20.0
    folder = write_csv_dir(tmp_path / "d", text)
    problems = validate_dir(folder)
    assert errors(problems) == []
    warning = assert_problem(problems, "events", c.PRODUCT_ID, 1, "1 product_id value(s) in 1 row(s)")
    assert warning.severity == WARNING and "category 'unknown'" in warning.reason
    tables = load_tables(folder)
    products = tables.products.set_index(c.PRODUCT_ID)
    assert list(products.index) == ["p1", "p2", "p404"]
    assert products.loc["p404", c.CATEGORY] == "unknown" and products.loc["p404", c.PRICE] == 10.0
    assert products.loc["p404", c.IS_ACTIVE] and not products.loc["p404", c.STORE_ONLY]
    assert products[c.IS_ACTIVE].dtype == bool
    assert any("1 product ids of events are not in the products table" in note for note in tables.notes)


def test_missing_prices_are_filled_from_purchases(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text["products"].loc[0, c.PRICE] = ""  # p1: bought 2 for 20.0 → 10.0
    folder = write_csv_dir(tmp_path / "d", text)
    assert validate_dir(folder) == []
    tables = load_tables(folder)
    assert tables.products[c.PRICE].tolist() == [10.0, 15.5]
    assert any("1 products have no price; 1 take the median" in note for note in tables.notes)
    # no price column at all; a product never bought takes the median over all purchases
    text["products"] = text["products"].drop(columns=[c.PRICE])
    text["products"].loc[2] = ["p3", "hats", "", "", "true"]
    tables = load_tables(write_csv_dir(tmp_path / "e", text))
    assert tables.products[c.PRICE].tolist() == [10.0, 15.5, 12.75]
    assert any(
        "2 take the median amount/quantity of their purchases" in n and "1 never bought" in n
        for n in tables.notes
    )


OPTIONAL_COLUMN_CASES = [
    ("offers", c.DURATION_DAYS, "0", "duration_days 0 must be > 0"),
    ("offers", c.DURATION_DAYS, "-3", "duration_days -3 must be > 0"),
    ("products", c.CHANNELS, "web,fax", "unknown channel in 'web,fax'"),
    ("products", c.REPLENISHMENT_DAYS, "0.5", "is below the minimum 1"),
]


@pytest.mark.parametrize(("table", "column", "value", "phrase"), OPTIONAL_COLUMN_CASES)
def test_optional_columns_are_checked(tmp_path: Path, table, column, value, phrase) -> None:
    text = as_text(valid_frames())
    text[table][column] = ""
    text[table].loc[0, column] = value
    problems = validate_dir(write_csv_dir(tmp_path / "d", text))
    assert assert_problem(problems, table, column, 0, phrase).severity == "error"


def test_optional_columns_load_with_their_types(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text["products"][c.CHANNELS] = [" web , app ", ""]
    text["products"][c.STORE_ONLY] = ["", "true"]
    text["products"][c.ONLINE_ONLY] = ["false", ""]
    text["products"].loc[1, c.CATEGORY] = ""
    text["offers"][c.DURATION_DAYS] = ["7"]
    text["customers"][c.SEGMENT] = ["gold", "", "silver"]
    folder = write_csv_dir(tmp_path / "d", text)
    problems = validate_dir(folder)
    assert errors(problems) == []
    assert_problem(problems, "products", c.CATEGORY, 1, "1 product(s) have no category: category 'unknown'")
    tables = load_tables(folder)
    assert tables.products[c.CHANNELS].tolist()[0] == "web,app" and pd.isna(
        tables.products[c.CHANNELS].iloc[1]
    )
    assert tables.products[c.STORE_ONLY].tolist() == [False, True]
    assert tables.products[c.ONLINE_ONLY].dtype == bool
    assert tables.products[c.CATEGORY].tolist() == ["shoes", "unknown"]
    assert tables.offers[c.DURATION_DAYS].tolist() == [7.0]
    assert tables.customers[c.SEGMENT].tolist()[::2] == ["gold", "silver"]
    # absent: added with their defaults, so models can rely on the columns
    plain = load_tables(write_csv_dir(tmp_path / "e", as_text(valid_frames())))
    assert plain.products[c.CHANNELS].isna().all() and not plain.products[c.STORE_ONLY].any()
    assert plain.offers[c.DURATION_DAYS].isna().all() and plain.customers[c.SEGMENT].isna().all()


def test_a_product_cannot_be_store_only_and_online_only(tmp_path: Path) -> None:
    text = as_text(valid_frames())
    text["products"][c.STORE_ONLY] = ["true", "false"]
    text["products"][c.ONLINE_ONLY] = ["true", "true"]
    problems = validate_dir(write_csv_dir(tmp_path / "d", text))
    assert_problem(problems, "products", c.ONLINE_ONLY, 0, "both true")
    assert len(errors(problems)) == 1


def test_channel_lists_from_parquet_list_columns(tmp_path: Path) -> None:
    frames = valid_frames()
    frames["products"][c.CHANNELS] = [["web", "app"], []]
    tables = load_tables(write_parquet_dir(tmp_path / "d", frames))
    assert tables.products[c.CHANNELS].iloc[0] == "web,app" and pd.isna(tables.products[c.CHANNELS].iloc[1])


def test_the_documented_tables_match_the_contract() -> None:
    """docs/data-contract.md is the contract's human-readable twin: every column, its type, whether
    it is required and nullable, in both; attribute columns where the table takes them."""
    from features import contract

    doc_type = {
        contract.ID: "id",
        contract.STR: "str",
        contract.TIMESTAMP: "timestamp",
        contract.FLOAT: "float",
        contract.BOOL: "bool",
        contract.CHANNEL_KIND: "channel",
        contract.CHANNEL_LIST: "channel list",
        contract.TIMEZONE_KIND: "timezone",
        contract.ATTRIBUTE: "number or text",
    }
    text = (Path(__file__).resolve().parents[2] / "docs" / "data-contract.md").read_text()
    for name, spec in contract.TABLES.items():
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        rows = {}
        for line in section.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if line.startswith("| `") and len(cells) >= 4:
                rows[cells[0].strip("`")] = tuple(cells[1:4])
        expected = {
            col.name: (doc_type[col.kind], "yes" if col.required else "no", "yes" if col.nullable else "no")
            for col in spec.columns
        }
        if spec.attribute_prefix:
            expected[f"{spec.attribute_prefix}<name>"] = (doc_type[contract.ATTRIBUTE], "no", "yes")
        assert rows == expected, name
