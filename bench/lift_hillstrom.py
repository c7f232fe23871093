"""Measured lift on a real randomised experiment: `omni report`'s lift against the known answer.

    python bench/lift_hillstrom.py --out FILE [--data PATH]

Kevin Hillstrom's MineThatData e-mail test (64,000 customers; a third each assigned at random to a
men's e-mail, a women's e-mail or no e-mail; outcomes over the two weeks after) is written as a
data folder of this project's contract: `customers` (the "No E-Mail" third flagged `control_group`),
`messages` (one e-mail per treated customer, its offer the campaign it belongs to) and `events` (a
visit before the send for everyone, a purchase of the customer's two-week spend for each
conversion). The folder is validated and loaded as `omni report` loads one (`features.io`), and the
lift comes from the function the report calls (`training.lift.measure_lift`, a 14-day window after
the send). `omni report --data DIR --out DIR` is run on the same folder through the CLI, so the page
is known to build on this shape.

What it must find: the differences of the published arm means (plain pandas on the CSV, beside):
overall (both e-mails against none) and per campaign (each e-mail against none), for conversion and
spend per customer, each with its 95 % interval. Writes the JSON to --out and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import log, machine  # noqa: E402
from features import columns as c  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hillstrom" / "hillstrom.csv"
SENT = pd.Timestamp("2008-03-03 09:00", tz="UTC")  # the experiment ran in spring 2008
CONTROL = "No E-Mail"
CAMPAIGNS = {"Mens E-Mail": "mens_email", "Womens E-Mail": "womens_email"}
WINDOW_DAYS = 14.0


def data_folder(csv: Path, out: Path) -> pd.DataFrame:
    """Writes the experiment as contract tables under `out`; returns the CSV with customer ids."""
    raw = pd.read_csv(csv)
    raw[c.CUSTOMER_ID] = [f"H{i:05d}" for i in range(len(raw))]
    out.mkdir(parents=True, exist_ok=True)
    customers = pd.DataFrame(
        {c.CUSTOMER_ID: raw[c.CUSTOMER_ID], c.TIMEZONE: "UTC", "control_group": raw["segment"] == CONTROL}
    )
    treated = raw.loc[raw["segment"] != CONTROL]
    messages = pd.DataFrame(
        {
            c.MESSAGE_ID: "M" + treated[c.CUSTOMER_ID].str[1:],
            c.CUSTOMER_ID: treated[c.CUSTOMER_ID],
            c.CHANNEL: "email",
            c.SENT_TS: SENT,
            c.CAMPAIGN_ID: treated["segment"].map(CAMPAIGNS),
            c.OFFER_ID: treated["segment"].map(CAMPAIGNS),
        }
    )
    # everyone was a customer before the test (a visit the day before), and a conversion is a
    # purchase of the customer's two-week spend three days after the send
    visits = pd.DataFrame(
        {
            c.CUSTOMER_ID: raw[c.CUSTOMER_ID],
            c.TS: SENT - pd.Timedelta(days=1),
            c.CHANNEL: "web",
            c.EVENT_TYPE: "view",
            c.AMOUNT: np.nan,
        }
    )
    bought = raw.loc[raw["conversion"] == 1]
    purchases = pd.DataFrame(
        {
            c.CUSTOMER_ID: bought[c.CUSTOMER_ID],
            c.TS: SENT + pd.Timedelta(days=3),
            c.CHANNEL: bought["channel"].map({"Phone": "call_center", "Web": "web"}).fillna("web"),
            c.EVENT_TYPE: "purchase",
            c.AMOUNT: bought["spend"].astype(float),
        }
    )
    events = pd.concat([visits, purchases], ignore_index=True)
    for frame in (messages, events):
        for col in (c.SENT_TS, c.TS):
            if col in frame:
                frame[col] = frame[col].dt.as_unit("us")
    customers.to_parquet(out / "customers.parquet", index=False)
    messages.to_parquet(out / "messages.parquet", index=False)
    events.to_parquet(out / "events.parquet", index=False)
    return raw


def published(raw: pd.DataFrame) -> dict:
    """The arm differences computed plainly on the CSV (what the lift must reproduce)."""
    means = raw.groupby("segment")[["conversion", "spend"]].mean()
    treated = raw.loc[raw["segment"] != CONTROL, ["conversion", "spend"]].mean()
    out = {
        "overall": {
            "conversion": float(treated["conversion"] - means.loc[CONTROL, "conversion"]),
            "revenue": float(treated["spend"] - means.loc[CONTROL, "spend"]),
        }
    }
    for segment, campaign in CAMPAIGNS.items():
        out[campaign] = {
            "conversion": float(means.loc[segment, "conversion"] - means.loc[CONTROL, "conversion"]),
            "revenue": float(means.loc[segment, "spend"] - means.loc[CONTROL, "spend"]),
        }
    return out


def measured(folder: Path) -> tuple[pd.DataFrame, str]:
    """The lift table as `omni report` computes it on the folder (its loading, its function)."""
    from features.identity import stitch_identities
    from features.io import load_tables
    from models.decisions.contact_policy import load_contact_policy
    from training.lift import measure_lift

    tables = stitch_identities(load_tables(folder))
    result = measure_lift(
        tables.events,
        tables.messages,
        tables.customers,
        tables.consent,
        load_contact_policy(),
        window_days=WINDOW_DAYS,
        end=SENT + pd.Timedelta(days=WINDOW_DAYS),
    )
    return result.table, result.control


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON result")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="hillstrom.csv")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.exit(2, f"--data {args.data}: no such file (../shared/data/hillstrom/hillstrom.csv)\n")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hillstrom"
        raw = data_folder(args.data, folder)
        truth = published(raw)
        table, control = measured(folder)
        # the product's own command on the same folder: the page builds on this shape
        report = subprocess.run(
            [
                sys.executable,
                "-m",
                "training.cli",
                "report",
                "--data",
                str(folder),
                "--out",
                str(Path(tmp) / "page"),
            ]
            + ["--lift-window-days", str(WINDOW_DAYS), "--tracking-uri", f"sqlite:///{tmp}/none.db"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            env={**os.environ, "OMNI_WORKDIR": str(Path(tmp) / "work")},
        )
        page = Path(tmp) / "page" / "report.html"
        page_ok = report.returncode == 0 and page.is_file() and page.stat().st_size > 0
    rows = {}
    for row in table.to_dict(orient="records"):
        rows.setdefault(str(row.get("scope")), {})[str(row.get("metric"))] = row
    out: dict = {"control": control, "window_days": WINDOW_DAYS, "scopes": {}}
    for scope, expected in truth.items():
        # the report's scopes: all messaging, and each action (here: each campaign's offer)
        got = rows.get("all messaging" if scope == "overall" else f"action offer {scope}", {})
        out["scopes"][scope] = {}
        for metric, value in expected.items():
            name = {"conversion": "conversion", "revenue": "revenue per customer"}[metric]
            row = got.get(name)
            out["scopes"][scope][metric] = {
                "published_difference": round(value, 6),
                "measured_difference": None if row is None else round(float(row["difference"]), 6),
                "low": None if row is None else round(float(row["low"]), 6),
                "high": None if row is None else round(float(row["high"]), 6),
                "n_treated": None if row is None else int(row["n_treated"]),
                "n_control": None if row is None else int(row["n_control"]),
                "matches": row is not None and abs(float(row["difference"]) - value) < 1e-9,
            }
    out["omni_report_page_written"] = page_ok
    if not page_ok:
        out["omni_report_stderr"] = report.stderr[-2000:]
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["machine"] = machine()
    text = json.dumps(out, indent=2)
    args.out.write_text(text)
    print(text)
    log(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
