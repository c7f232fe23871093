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
    got = parse_mapping(["customer_id=Cust,events.ts=When", "products.price=P"], ["events", "products"])
    assert got == {
        "events": {"customer_id": "Cust", "ts": "When"},
        "products": {"customer_id": "Cust", "price": "P"},
    }
    with pytest.raises(ValueError, match="not target=source_column"):
        parse_mapping(["customer_id"], ["events"])


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
