"""`omni import`: a retailer's own transaction log with foreign column names, mapped, validated, trained on."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from features.importer import parse_mapping
from training.cli import main

MAPPING = (
    "customer_id=CustomerID,ts=InvoiceDate,product_id=StockCode,quantity=Quantity,"
    "unit_price=UnitPrice,order_id=InvoiceNo"
)


def _online_retail_like(path, n_customers=80, n_products=40, seed=3):
    """A plain transaction log in the style of the UCI Online Retail export (naive UK times)."""
    rng = np.random.default_rng(seed)
    rows = []
    start = pd.Timestamp("2011-01-03 09:00")
    for cust in range(n_customers):
        taste = rng.choice(n_products, size=8, replace=False)
        for invoice in range(rng.integers(3, 9)):
            when = start + pd.Timedelta(days=int(rng.integers(0, 120)), minutes=int(rng.integers(0, 600)))
            for item in rng.choice(taste, size=rng.integers(1, 4), replace=False):
                qty = int(rng.integers(1, 6))
                rows.append(
                    {
                        "InvoiceNo": f"{cust:03d}{invoice:02d}",
                        "StockCode": f"{item:05d}",
                        "Description": "WHITE HANGING HEART T-LIGHT HOLDER",
                        "Quantity": qty,
                        "InvoiceDate": when.strftime("%m/%d/%Y %H:%M"),
                        "UnitPrice": round(float(1 + item % 7), 2),
                        "CustomerID": f"{12000 + cust}",
                        "Country": "United Kingdom",
                    }
                )
    frame = pd.DataFrame(rows)
    frame.loc[5, "Quantity"] = -frame.loc[5, "Quantity"]  # a cancellation line
    frame.to_csv(path, index=False)
    return frame


def test_parse_mapping_global_and_per_table():
    got = parse_mapping(
        ["customer_id=Cust,events.ts=When", "products.price=P,customers.attr.age=Age,product_id=Sku"],
        ["events", "products", "customers"],
    )
    # a plain target goes to every given table that has that column; table.target to one table
    assert got == {
        "events": {"customer_id": "Cust", "ts": "When", "product_id": "Sku"},
        "products": {"price": "P", "product_id": "Sku"},
        "customers": {"customer_id": "Cust", "attr.age": "Age"},
    }
    assert parse_mapping(["customer_id=A", "events.customer_id=B"], ["events"]) == {
        "events": {"customer_id": "B"}  # the table's own pair wins, whatever the order
    }
    with pytest.raises(ValueError, match="not target=source_column"):
        parse_mapping(["customer_id"], ["events"])
    with pytest.raises(ValueError, match="unknown table 'event'"):
        parse_mapping(["event.ts=When"], ["events"])
    with pytest.raises(ValueError, match="'price' is not a column of events"):
        parse_mapping(["price=P"], ["events"])
    with pytest.raises(ValueError, match="customers table"):
        parse_mapping(["attr.age=Age"], ["events"])


def test_import_transaction_log_then_train(tmp_path, tracking_uri):
    src = tmp_path / "online_retail.csv"
    _online_retail_like(src)
    out = tmp_path / "mine"
    runner = CliRunner()
    args = [
        "import",
        "--events",
        str(src),
        "--map",
        MAPPING,
        "--channel",
        "store",
        "--event-type",
        "purchase",
    ]
    result = runner.invoke(main, args + ["--timezone", "Europe/London", "--out", str(out)])
    assert result.exit_code == 0, result.output
    events = pd.read_parquet(out / "events.parquet")
    assert {"Description", "Country"}.isdisjoint(events.columns)  # unmapped columns are dropped
    assert str(events["ts"].dtype) == "datetime64[us, UTC]"
    assert events["customer_id"].str.startswith("12").all()
    assert (events["event_type"] == "return").sum() == 1
    first = events.sort_values("order_id").iloc[0]
    assert first["amount"] == pytest.approx(first["quantity"] * (1 + int(first["product_id"]) % 7))
    assert runner.invoke(main, ["validate", str(out)]).exit_code == 0

    result = runner.invoke(
        main,
        [
            "train",
            "--data",
            str(out),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'own.db'}",
            "--test-days",
            "30",
            "--factors",
            "8",
            "--iterations",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.output


def test_import_reports_unknown_source_column_and_writes_nothing(tmp_path):
    src = tmp_path / "log.csv"
    _online_retail_like(src, n_customers=5)
    out = tmp_path / "mine"
    result = CliRunner().invoke(
        main,
        [
            "import",
            "--events",
            str(src),
            "--map",
            "customer_id=Customer,ts=InvoiceDate",
            "--channel",
            "web",
            "--event-type",
            "purchase",
            "--timezone",
            "UTC",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2
    assert "events.customer_id" in result.output and "'Customer' is not in log.csv" in result.output
    assert not out.exists()


def test_import_without_timezone_reports_naive_timestamps_by_row(tmp_path):
    src = tmp_path / "log.csv"
    _online_retail_like(src, n_customers=3)
    result = CliRunner().invoke(
        main,
        [
            "import",
            "--events",
            str(src),
            "--map",
            MAPPING,
            "--channel",
            "web",
            "--event-type",
            "purchase",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    assert "events.ts row 0" in result.output


def test_import_bad_values_are_reported_by_row(tmp_path):
    src = tmp_path / "log.csv"
    frame = _online_retail_like(src, n_customers=3)
    frame.loc[2, "InvoiceDate"] = "yesterday-ish"
    frame.to_csv(src, index=False)
    result = CliRunner().invoke(
        main,
        [
            "import",
            "--events",
            str(src),
            "--map",
            MAPPING,
            "--channel",
            "fax",
            "--event-type",
            "purchase",
            "--timezone",
            "UTC",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    assert "events.ts row 2" in result.output
    assert "unknown channel 'fax'" in result.output


# ------------------------------------------------------------------------------------------
# Dates and times are never guessed


def _write(path, text):
    path.write_text(text)
    return path


def _import_events(tmp_path, rows, *extra, header="cust,when,sku"):
    src = _write(tmp_path / "log.csv", header + "\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "import",
            "--events",
            str(src),
            "--map",
            "customer_id=cust,ts=when,product_id=sku",
            "--channel",
            "store",
            "--event-type",
            "purchase",
            "--out",
            str(out),
            *extra,
        ],
    )
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        result.output
    )
    events = pd.read_parquet(out / "events.parquet") if result.exit_code == 0 else None
    return result, events


def _utc(*values):
    return [pd.Timestamp(v) for v in values]


def test_day_first_dates_are_read_one_way_for_the_whole_column(tmp_path):
    # 01/07 alone reads both ways; 13/07 only day-first: the column is day-first, said in a warning
    result, events = _import_events(
        tmp_path, ["c1,01/07/2025 10:00,p1", "c2,13/07/2025 11:30,p1", "c1,2/8/25,p2"], "--timezone", "UTC"
    )
    assert result.exit_code == 0, result.output
    assert events["ts"].tolist() == _utc(
        "2025-07-01 10:00+00:00", "2025-07-13 11:30+00:00", "2025-08-02 00:00+00:00"
    )
    assert "events.ts: dates read as day/month/year" in result.output
    assert "'13/07/2025 11:30'" in result.output


def test_month_first_dates_are_read_month_first(tmp_path):
    result, events = _import_events(
        tmp_path, ["c1,07/01/2025 10:00,p1", "c2,07/13/2025 11:30,p1"], "--timezone", "UTC"
    )
    assert result.exit_code == 0, result.output
    assert events["ts"].tolist() == _utc("2025-07-01 10:00+00:00", "2025-07-13 11:30+00:00")
    assert "dates read as month/day/year" in result.output


def test_ambiguous_dates_stop_the_import_naming_column_and_cells(tmp_path):
    rows = ["c1,01/07/2025 10:00,p1", "c2,03/04/2025 11:00,p1", "c1,05/05/2025,p1"]
    result, _ = _import_events(tmp_path, rows, "--timezone", "UTC")
    assert result.exit_code == 2
    assert "events.ts: ambiguous dates" in result.output
    assert "'01/07/2025 10:00', '03/04/2025 11:00'" in result.output
    assert "--dayfirst" in result.output and "--ts-format" in result.output
    assert "events.ts row" not in result.output  # one error for the column, no row-by-row echo
    assert not (tmp_path / "out").exists()

    result, events = _import_events(tmp_path, rows, "--timezone", "UTC", "--dayfirst")
    assert result.exit_code == 0, result.output
    assert events["ts"].tolist() == _utc(
        "2025-07-01 10:00+00:00", "2025-04-03 11:00+00:00", "2025-05-05 00:00+00:00"
    )
    result, events = _import_events(tmp_path, rows, "--timezone", "UTC", "--ts-format", "%m/%d/%Y %H:%M")
    assert result.exit_code == 2  # '05/05/2025' has no time: it does not match the format
    assert "1 value(s) do not match --ts-format '%m/%d/%Y %H:%M'" in result.output
    assert "events.ts row 2" in result.output


def test_contradicting_dates_stop_the_import(tmp_path):
    result, _ = _import_events(tmp_path, ["c1,13/07/2025,p1", "c2,07/14/2025,p1"], "--timezone", "UTC")
    assert result.exit_code == 2
    assert "dates contradict each other: '13/07/2025' reads only day/month/year" in result.output
    assert "'07/14/2025' only month/day/year" in result.output
    # --dayfirst: the month-first value is not a date, reported by row
    result, _ = _import_events(
        tmp_path, ["c1,13/07/2025,p1", "c2,07/14/2025,p1"], "--timezone", "UTC", "--dayfirst"
    )
    assert result.exit_code == 2
    assert "events.ts row 1" in result.output and "'07/14/2025'" in result.output


def test_iso_dates_are_unaffected_and_dayfirst_with_format_is_refused(tmp_path):
    rows = ["c1,2025-07-01 10:00,p1", "c2,2025-01-07T10:00:00+02:00,p1"]
    result, events = _import_events(tmp_path, rows, "--timezone", "UTC", "--dayfirst")
    assert result.exit_code == 0, result.output
    assert events["ts"].tolist() == _utc("2025-07-01 10:00+00:00", "2025-01-07 08:00+00:00")
    result, _ = _import_events(tmp_path, rows, "--dayfirst", "--ts-format", "%Y-%m-%d")
    assert result.exit_code == 2 and "give one of them" in result.output


def test_unix_seconds(tmp_path):
    result, events = _import_events(
        tmp_path, ["c1,881250949,p1", "c2,1751364000.5,p1"], "--ts-format", "unix"
    )
    assert result.exit_code == 0, result.output
    assert events["ts"].tolist() == _utc("1997-12-04 15:55:49+00:00", "2025-07-01 10:00:00.5+00:00")
    # milliseconds and words are reported, not read as some date
    result, _ = _import_events(tmp_path, ["c1,1751364000000,p1", "c2,soon,p1"], "--ts-format", "unix")
    assert result.exit_code == 2
    assert "events.ts row 0: --ts-format unix" in result.output and "milliseconds" in result.output
    assert "events.ts row 1" in result.output
    # without the flag, epoch-like numbers get a hint
    result, _ = _import_events(tmp_path, ["c1,881250949,p1"], "--timezone", "UTC")
    assert result.exit_code == 2 and "give --ts-format unix" in result.output


def test_naive_local_times_in_the_dst_change_hours(tmp_path):
    rows = [
        "c1,2017-11-05 00:59:59,p1",  # CDT (UTC-5)
        "c1,2017-11-05 01:07:15,p1",  # the repeated hour: first occurrence, CDT (UTC-5)
        "c2,2017-11-05 01:30:00,p1",
        "c2,2017-11-05 02:00:00,p1",  # CST again (UTC-6)
        "c3,2017-03-12 02:30:00,p1",  # the skipped hour: read in CST, i.e. 03:30 CDT
        "c3,2017-07-01 12:00:00,p1",
    ]
    result, events = _import_events(tmp_path, rows, "--timezone", "America/Chicago")
    assert result.exit_code == 0, result.output
    assert events["ts"].tolist() == _utc(
        "2017-11-05 05:59:59+00:00",
        "2017-11-05 06:07:15+00:00",
        "2017-11-05 06:30:00+00:00",
        "2017-11-05 08:00:00+00:00",
        "2017-03-12 08:30:00+00:00",
        "2017-07-01 17:00:00+00:00",
    )
    assert "warning: events.ts row 1: 2 wall-clock time(s) fall in the hour repeated" in result.output
    assert "first occurrence (daylight time)" in result.output
    assert "warning: events.ts row 4: 1 wall-clock time(s) fall in the hour skipped" in result.output


# ------------------------------------------------------------------------------------------
# What the models can use is kept


def test_customer_attributes_and_a_customers_table_covering_some_customers(tmp_path):
    events = _write(
        tmp_path / "sales.csv",
        "hh,when,sku,qty,value\n"
        "1,2025-07-01T10:00:00Z,p1,1,2.5\n2,2025-07-02T10:00:00Z,p2,2,3\n3,2025-07-03T10:00:00Z,p1,1,2.5\n",
    )
    demographics = _write(
        tmp_path / "demo.csv",
        "hh,age,income,gender,notes\n1,34,35-49K,F,likes cats\n2,,50-74K,,\n",  # household 3 unknown
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "import",
            "--events",
            str(events),
            "--customers",
            str(demographics),
            "--map",
            "customer_id=hh,ts=when,product_id=sku,quantity=qty,amount=value,"
            "customers.attr.age=age,customers.attr.income=income,attr.gender=gender",
            "--channel",
            "store",
            "--event-type",
            "purchase",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 customer_id value(s) in 1 row(s) are not in customers.customer_id (e.g. '3')" in result.output
    from features.io import load_tables

    tables = load_tables(out)
    customers = tables.customers.set_index("customer_id")
    assert {"attr.age", "attr.income", "attr.gender"} <= set(customers.columns)
    assert "notes" not in customers.columns  # unmapped columns never travel
    assert customers["attr.age"].dtype == "float64" and np.isnan(customers.loc["2", "attr.age"])
    assert customers.loc["1", "attr.age"] == 34.0
    assert customers["attr.income"].tolist() == ["35-49K", "50-74K"]
    assert customers.loc["1", "attr.gender"] == "F" and pd.isna(customers.loc["2", "attr.gender"])


def test_optional_columns_are_kept_when_mapped_or_already_named(tmp_path):
    events = _write(
        tmp_path / "events.csv",
        "customer_id,ts,sku,quantity,amount\nc1,2025-07-01T10:00:00Z,p1,1,2.5\nc2,2025-07-02T10:00:00Z,p2,2,8\n",
    )
    products = _write(
        tmp_path / "products.csv",
        "sku,dept,brand,replenishment_days,is_active,sold_on,store_only,online_only,list_price\n"
        'p1,dairy,acme,7,true,"web,app",false,,\n'
        "p2,,,,true,,true,false,4.5\n",
    )
    customers = _write(
        tmp_path / "customers.csv", "customer_id,segment,timezone\nc1,gold,Europe/Paris\nc2,,UTC\n"
    )
    offers = _write(
        tmp_path / "offers.csv", "offer_id,kind,value,cost,valid_days\no1,discount,10,2.5,7\no2,bogo,1,3,\n"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "import",
            "--events",
            str(events),
            "--products",
            str(products),
            "--customers",
            str(customers),
            "--offers",
            str(offers),
            "--map",
            "product_id=sku,products.category=dept,products.channels=sold_on,products.price=list_price,"
            "offers.duration_days=valid_days",
            "--channel",
            "web",
            "--event-type",
            "purchase",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "products.category row 1: 1 product(s) have no category" in result.output
    assert "products.price: 1 product(s) have no price" in result.output
    from features.io import load_tables

    tables = load_tables(out)
    products = tables.products.set_index("product_id")
    assert products.loc["p1", "channels"] == "web,app" and pd.isna(products.loc["p2", "channels"])
    assert products["store_only"].tolist() == [False, True]
    assert products["online_only"].tolist() == [False, False]
    assert products.loc["p1", "brand"] == "acme" and products.loc["p1", "replenishment_days"] == 7.0
    assert products.loc["p2", "category"] == "unknown"
    assert products.loc["p1", "price"] == 2.5  # filled on load from its purchase
    assert products.loc["p2", "price"] == 4.5
    assert any("products.price: 1 products have no price; 1 take the median" in n for n in tables.notes)
    assert tables.customers.set_index("customer_id").loc["c1", "segment"] == "gold"
    offers = tables.offers.set_index("offer_id")
    assert offers.loc["o1", "duration_days"] == 7.0 and pd.isna(offers.loc["o2", "duration_days"])
    assert offers.loc["o1", "cost"] == 2.5


# ------------------------------------------------------------------------------------------
# Odd input: exit 2 with table/column/row, never a traceback


def _run_import(*args):
    result = CliRunner().invoke(main, ["import", *args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    return result.output


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"", "events: cannot read log.csv: the file is empty"),
        (b"cust,when,sku\n", "events: table has no rows"),
        (b"\xff\xfe\x00garbage\x00\n\x01\x02", "events: cannot read log.csv: not UTF-8 text"),
        (b'cust,when,sku\nc1,"2025-07-01,p1\n', "events: cannot read log.csv: Error tokenizing data"),
        (b"cust,when,sku\nc1,2025-07-01T10:00:00Z,p1,x,y\n", "more cells than the header has columns (3)"),
    ],
    ids=["empty", "header only", "binary", "open quote", "ragged"],
)
def test_unreadable_files_are_reported(tmp_path, content, phrase):
    (tmp_path / "log.csv").write_bytes(content)
    output = _run_import(
        "--events",
        str(tmp_path / "log.csv"),
        "--map",
        "customer_id=cust,ts=when,product_id=sku",
        "--channel",
        "web",
        "--event-type",
        "view",
        "--out",
        str(tmp_path / "out"),
    )
    assert phrase in output
    assert not (tmp_path / "out").exists()


def test_odd_arguments_are_reported(tmp_path):
    src = _write(tmp_path / "log.csv", "cust,when,sku\nc1,2025-07-01T10:00:00Z,p1\n")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    base = ["--channel", "web", "--event-type", "view", "--out", str(tmp_path / "out")]
    mapping = ["--map", "customer_id=cust,ts=when,product_id=sku"]
    assert "events.product_id: mapped source column 'SKU'" in _run_import(
        "--events", str(src), "--map", "customer_id=cust,ts=when,product_id=SKU", *base
    )
    assert "events: cannot read bad.parquet" in _run_import(
        "--events", str(tmp_path / "bad.parquet"), *mapping, *base
    )
    assert "events: source file not found" in _run_import("--events", str(tmp_path), *mapping, *base)
    assert "--map: unknown table 'event'" in _run_import(
        "--events", str(src), "--map", "event.ts=when", *base
    )
    assert "--ts-format" in _run_import("--events", str(src), *mapping, "--ts-format", "%Q", *base)
    assert "customers.attr.: --map names 'attr.'" in _run_import(
        "--events", str(src), "--customers", str(src), *mapping, "--map", "customers.attr.=sku", *base
    )
    (tmp_path / "file").write_text("x")
    assert "--out" in _run_import(
        "--events",
        str(src),
        *mapping,
        "--timezone",
        "UTC",
        "--channel",
        "web",
        "--event-type",
        "view",
        "--out",
        str(tmp_path / "file" / "sub"),
    )


# ------------------------------------------------------------------------------------------
# --timezone is also where the customers live


def _import(*args):
    result = CliRunner().invoke(main, ["import", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_timezone_becomes_every_customers_zone_when_no_customers_table(tmp_path):
    from features.identity import stitch_identities
    from features.io import load_tables
    from models.engagement.local_time import local_slots
    from models.engagement.send_time import SendTimeModel

    # a store whose customers shop at 18:00 Chicago time, summer (CDT) and winter (CST)
    rows = [
        "c1,2025-07-01 18:00,p1",
        "c2,2025-07-02 18:30,p2",
        "c1,2025-12-08 18:10,p2",
        "c3,2025-12-09 18:45,p1",
    ]
    src = _write(tmp_path / "log.csv", "cust,when,sku\n" + "\n".join(rows) + "\n")
    common = ["--events", str(src), "--map", "customer_id=cust,ts=when,product_id=sku"]
    common += ["--channel", "store", "--event-type", "purchase"]
    output = _import(*common, "--timezone", "America/Chicago", "--out", str(tmp_path / "out"))
    assert (
        "warning: customers.timezone: 3 customer(s) take the time zone America/Chicago of --timezone"
        in output
    )
    assert "no customers table was given" in output
    assert "imported events=4, customers=3" in output
    assert CliRunner().invoke(main, ["validate", str(tmp_path / "out")]).exit_code == 0

    tables = stitch_identities(load_tables(tmp_path / "out"))
    zones = tables.customers.set_index("customer_id")["timezone"]
    assert sorted(zones.index) == ["c1", "c2", "c3"] and set(zones) == {"America/Chicago"}
    assert not any("UTC" in note for note in tables.notes)  # no customer is left in UTC
    # what `omni train` reads: the send-time model's zones, and local hours of the events
    model = SendTimeModel(random_state=0).fit(tables.events, tables.messages, tables.customers)
    assert model.timezone_of(["c1", "c2", "c3"]).tolist() == ["America/Chicago"] * 3
    hours = local_slots(tables.events["ts"], tables.events["customer_id"].map(zones)) % 24
    assert hours.tolist() == [18, 18, 18, 18]

    # without --timezone (timestamps with offsets) nothing is assumed: no customers table
    aware = _write(tmp_path / "aware.csv", "cust,when,sku\nc1,2025-07-01T18:00:00-05:00,p1\n")
    output = _import(*common[:1], str(aware), *common[2:], "--out", str(tmp_path / "plain"))
    assert "customers.timezone" not in output and not (tmp_path / "plain" / "customers.parquet").exists()


def test_timezone_completes_an_imported_customers_table_and_keeps_its_zones(tmp_path):
    from features.io import load_tables

    events = _write(
        tmp_path / "sales.csv",
        "hh,when,sku\n1,2025-07-01 10:00,p1\n2,2025-07-02 10:00,p2\n3,2025-07-03 10:00,p1\n4,2025-07-03 11:00,p1\n",
    )
    # household 1 lives in Paris, household 2 gives no zone, 3 and 4 are not in the table
    demographics = _write(tmp_path / "demo.csv", "hh,tz,income\n1,Europe/Paris,35-49K\n2,,50-74K\n")
    args = ["--events", str(events), "--customers", str(demographics), "--channel", "store"]
    args += ["--event-type", "purchase", "--timezone", "America/Chicago", "--out", str(tmp_path / "out")]
    output = _import(
        *args, "--map", "customer_id=hh,ts=when,product_id=sku,customers.timezone=tz,attr.income=income"
    )
    assert (
        "warning: customers.timezone: 3 customer(s) take the time zone America/Chicago of --timezone "
        "(1 of the customers table had none; 2 seen in the other tables but not in it were added" in output
    )
    assert "not in customers.customer_id" not in output  # every customer is in it now
    customers = load_tables(tmp_path / "out").customers.set_index("customer_id")
    assert customers["timezone"].to_dict() == {
        "1": "Europe/Paris",  # a zone the table gives is kept
        "2": "America/Chicago",
        "3": "America/Chicago",
        "4": "America/Chicago",
    }
    assert customers.loc["1", "attr.income"] == "35-49K" and pd.isna(customers.loc["3", "attr.income"])

    # a table without a timezone column: every listed customer takes the zone
    output = _import(*args[:-1], str(tmp_path / "out2"), "--map", "customer_id=hh,ts=when,product_id=sku")
    assert (
        "4 customer(s) take the time zone America/Chicago of --timezone (2 of the customers table" in output
    )
    # a table that gives every customer's zone is left as it is: no line
    full = _write(tmp_path / "full.csv", "hh,tz\n1,Europe/Paris\n2,UTC\n3,Asia/Tokyo\n4,Europe/Paris\n")
    args[3] = str(full)
    output = _import(
        *args[:-1], str(tmp_path / "out3"), "--map", "customer_id=hh,ts=when,product_id=sku,timezone=tz"
    )
    assert "customers.timezone" not in output
    zones = load_tables(tmp_path / "out3").customers.set_index("customer_id")["timezone"]
    assert zones.to_dict() == {"1": "Europe/Paris", "2": "UTC", "3": "Asia/Tokyo", "4": "Europe/Paris"}


def test_timezone_customers_are_the_canonical_ids_after_identity_stitching(tmp_path):
    from features.identity import stitch_identities
    from features.io import load_tables

    # card k1 and cookie w1 are customer C1; k9 is known to no identity (its own customer)
    events = _write(
        tmp_path / "events.csv",
        "customer_id,ts,product_id\nk1,2025-07-01 10:00,p1\nw1,2025-07-02 10:00,p2\nk9,2025-07-03 10:00,p1\n",
    )
    identities = _write(
        tmp_path / "identities.csv",
        "source_system,source_id,customer_id\ncard,k1,C1\nweb,w1,C1\ncard,k2,C2\n",
    )
    output = _import(
        "--events", str(events), "--identities", str(identities), "--channel", "web", "--event-type",
        "purchase", "--timezone", "Europe/Berlin", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert "3 customer(s) take the time zone Europe/Berlin" in output
    tables = stitch_identities(load_tables(tmp_path / "out"))
    assert sorted(tables.customers["customer_id"]) == ["C1", "C2", "k9"]  # no source id is a customer
    assert sorted(tables.events["customer_id"]) == ["C1", "C1", "k9"]
