"""`omni profile --all --out FILE` on the session's trained models: one row per customer with every
profile field (lifetime value included), as Parquet or CSV; one customer's profile still as JSON;
an unknown id or a missing option is exit 2 with the reason."""

import json

import numpy as np
import pandas as pd
from click.testing import CliRunner

from training.cli import main

LIFETIME_VALUE = ("expected_purchases_365d", "prob_active", "expected_order_value", "clv_365d")


def test_profile_all_writes_every_customer_with_lifetime_value(
    trained, tracking_uri, generated_data, tmp_path
):
    runner = CliRunner()
    out = tmp_path / "profiles.parquet"
    result = runner.invoke(main, ["profile", "--all", "--out", str(out), "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert frame["customer_id"].is_unique
    customers = pd.read_parquet(generated_data / "customers.parquet")["customer_id"].astype(str)
    assert set(customers) <= set(frame["customer_id"])
    for column in (
        "segment",
        "recency_days",
        "predicted_spend_90d",
        "churn_risk",
        *LIFETIME_VALUE,
        "timezone",
    ):
        assert column in frame.columns, column
    values = frame[list(LIFETIME_VALUE)].to_numpy(np.float64)
    assert np.isfinite(values).all()  # customers without a purchase too
    assert frame["prob_active"].between(0, 1).all() and (values >= 0).all()
    np.testing.assert_allclose(
        frame["clv_365d"], frame["expected_purchases_365d"] * frame["expected_order_value"], rtol=1e-9
    )
    # the value ranks customers: those who bought more recently and more often are worth more
    buyers = frame.loc[frame["frequency"] > 0]
    assert buyers["clv_365d"].corr(buyers["monetary"], method="spearman") > 0.5

    one = runner.invoke(main, ["profile", str(buyers["customer_id"].iloc[0]), "--tracking-uri", tracking_uri])
    assert one.exit_code == 0, one.output
    profile = json.loads(one.output)
    for field in LIFETIME_VALUE:
        assert profile[field]["value"] == round(float(buyers[field].iloc[0]), 6), field
        assert profile[field]["derived_from"]

    csv = tmp_path / "profiles.csv"
    result = runner.invoke(main, ["profile", "--all", "--out", str(csv), "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    as_csv = pd.read_csv(csv, dtype={"customer_id": str})
    assert len(as_csv) == len(frame) and json.loads(as_csv["top_categories"].iloc[0]) == list(
        frame["top_categories"].iloc[0]
    )


def test_profile_refuses_unknown_ids_and_incomplete_options(trained, tracking_uri, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["profile", "nobody", "--tracking-uri", tracking_uri])
    assert result.exit_code == 2
    assert "unknown customer 'nobody'" in result.output and "trained on" in result.output
    for args, message in (
        (["profile"], "give a CUSTOMER_ID, or --all"),
        (["profile", "--all"], "--all needs --out"),
        (["profile", "C0000001", "--all", "--out", str(tmp_path / "x.parquet")], "not both"),
        (["profile", "--all", "--out", str(tmp_path / "x.json")], "cannot tell the format"),
    ):
        result = runner.invoke(main, [*args, "--tracking-uri", tracking_uri])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
