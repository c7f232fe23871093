"""Purchase events → transactions → one recency/frequency/value row per buyer.

A *transaction* (one purchase occasion of the lifetime-value models) is a distinct order: the
purchase rows sharing an `order_id` (a basket spread over several rows is one transaction, its
value the sum of its rows). Rows without an order id are grouped by customer and UTC calendar day,
so a log without order ids (one row per line, each line with its own timestamp) still counts
shopping trips, not lines. A transaction's time is its first row's.

A purchase row's value is its `amount`; where the amount is missing and the products table has a
list price, price × quantity (as `models.decisions.history` values them). Returns are left out:
the models forecast purchases and what they are worth, not net revenue.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c
from models.timestamps import US_PER_DAY, to_us

# the transactions table's columns (besides customer_id)
TRANSACTION_TS = "ts_us"
TRANSACTION_VALUE = "value"


def purchase_transactions(
    events: pd.DataFrame, as_of: pd.Timestamp | None = None, products: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per transaction before `as_of` (all of them when None): customer_id, ts_us, value.

    `events` follows the data contract (`event_type` 'purchase' marks a purchase; `amount`,
    `quantity`, `order_id` and `product_id` are optional). Sorted by customer, then time.
    """
    buys = events.loc[(events[c.EVENT_TYPE] == "purchase").to_numpy()]
    ts_us = to_us(buys[c.TS])
    keep = ts_us != np.iinfo(np.int64).min
    if as_of is not None:
        keep &= ts_us < int(to_us(pd.Timestamp(as_of))[0])
    buys = buys.loc[keep]
    ts_us = ts_us[keep]
    if len(buys) == 0:
        return pd.DataFrame(
            {
                c.CUSTOMER_ID: np.array([], dtype=object),
                TRANSACTION_TS: np.array([], np.int64),
                TRANSACTION_VALUE: [],
            }
        )
    customer_codes, customers = pd.factorize(buys[c.CUSTOMER_ID].astype(str))
    value = _row_values(buys, products)
    # integer group keys (customer, order, day): no per-row strings for millions of lines
    if c.ORDER_ID in buys:
        # an order id is only unique within its customer in some exports: the customer stays in the key
        order_codes, _ = pd.factorize(buys[c.ORDER_ID], use_na_sentinel=True)
    else:
        order_codes = np.full(len(buys), -1, dtype=np.int64)
    day = np.where(order_codes < 0, ts_us // US_PER_DAY, -1)
    rows = pd.DataFrame(
        {
            "customer": customer_codes,
            "order": order_codes,
            "day": day,
            TRANSACTION_TS: ts_us,
            TRANSACTION_VALUE: value,
        }
    )
    grouped = rows.groupby(["customer", "order", "day"], sort=False).agg(
        **{TRANSACTION_TS: (TRANSACTION_TS, "min"), TRANSACTION_VALUE: (TRANSACTION_VALUE, "sum")}
    )
    codes = grouped.index.get_level_values("customer").to_numpy()
    out = pd.DataFrame(
        {
            c.CUSTOMER_ID: np.asarray(customers, dtype=object)[codes],
            TRANSACTION_TS: grouped[TRANSACTION_TS].to_numpy(),
            TRANSACTION_VALUE: grouped[TRANSACTION_VALUE].to_numpy(),
        }
    )
    return out.sort_values([c.CUSTOMER_ID, TRANSACTION_TS], kind="stable", ignore_index=True)
    return out


def _row_values(buys: pd.DataFrame, products: pd.DataFrame | None) -> np.ndarray:
    """Each purchase row's value: its amount, else list price × quantity, else 0."""
    n = len(buys)
    amount = buys[c.AMOUNT].to_numpy(np.float64, na_value=np.nan) if c.AMOUNT in buys else np.full(n, np.nan)
    missing = np.isnan(amount)
    if missing.any() and products is not None and c.PRICE in products and c.PRODUCT_ID in buys:
        price = products.drop_duplicates(c.PRODUCT_ID).set_index(c.PRODUCT_ID)[c.PRICE]
        unit = buys[c.PRODUCT_ID].map(price).to_numpy(np.float64, na_value=np.nan)
        quantity = buys[c.QUANTITY].fillna(1.0).to_numpy(np.float64) if c.QUANTITY in buys else np.ones(n)
        amount = np.where(missing, unit * quantity, amount)
    return np.nan_to_num(amount, nan=0.0)


def rfm_summary(transactions: pd.DataFrame, as_of: pd.Timestamp, unit_days: float) -> pd.DataFrame:
    """One row per buyer (index customer_id), times in units of `unit_days` days:

    - `frequency`: repeat transactions (transactions - 1), the x of BG/NBD;
    - `recency`: time from the first to the last transaction (t_x);
    - `T`: time from the first transaction to `as_of`;
    - `mean_value`: the mean value of the repeat transactions (the spend model's m over n =
      `frequency` transactions; NaN without a repeat transaction). The first transaction is left
      out, as Fader, Hardie & Lee do: a first order is often unlike the ones after it (a welcome
      offer, a stock-up, a basket cut by the start of the log). Transactions worth 0 stay in the
      mean: they are counted as purchases too, so expected purchases × expected value is expected
      spend. In `bench/clv.py` this predicts held-out spend better than the mean of every
      transaction (both data sets) or of the positive repeat ones (The Complete Journey, where
      some baskets are worth 0);
    - `first_us`, `last_us`: the first and last transaction times.
    """
    as_of_us = int(to_us(pd.Timestamp(as_of))[0])
    unit_us = unit_days * US_PER_DAY
    tx = transactions.sort_values([c.CUSTOMER_ID, TRANSACTION_TS], kind="stable")
    repeat = tx.groupby(c.CUSTOMER_ID, sort=False).cumcount().to_numpy() > 0
    grouped = tx.assign(_repeat_sum=np.where(repeat, tx[TRANSACTION_VALUE].to_numpy(), 0.0)).groupby(
        c.CUSTOMER_ID, sort=True
    )
    agg = grouped.agg(
        n=(TRANSACTION_TS, "size"),
        first_us=(TRANSACTION_TS, "min"),
        last_us=(TRANSACTION_TS, "max"),
        repeat_sum=("_repeat_sum", "sum"),
    )
    out = pd.DataFrame(index=agg.index.astype(str))
    out.index.name = c.CUSTOMER_ID
    frequency = (agg["n"].to_numpy() - 1).astype(np.float64)
    out["frequency"] = frequency
    out["recency"] = (agg["last_us"].to_numpy() - agg["first_us"].to_numpy()) / unit_us
    out["T"] = (as_of_us - agg["first_us"].to_numpy()) / unit_us
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean_value"] = np.where(frequency > 0, agg["repeat_sum"].to_numpy() / frequency, np.nan)
    out["first_us"] = agg["first_us"].to_numpy()
    out["last_us"] = agg["last_us"].to_numpy()
    return out
