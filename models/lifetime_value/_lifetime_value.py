"""Customer lifetime value: (M)BG/NBD purchases × Gamma-Gamma order value, per customer.

`LifetimeValueModel.fit(events, as_of)` turns the purchase events before `as_of` into transactions
(`purchase_transactions`: distinct orders, else distinct days), summarises each buyer (`rfm_summary`:
repeat transactions, recency and age in weeks, mean value of the repeat transactions), fits
`BetaGeoPurchaseModel` on every buyer and `GammaGammaSpendModel` on every buyer whose repeat
transactions have a positive mean value. `predict(ids, horizon_days)` gives per customer:

- `expected_purchases`: expected transactions in the `horizon_days` after `as_of`;
- `prob_active`: probability of still being an active buyer at `as_of` (the purchase model's P(alive));
- `expected_order_value`: expected value of a transaction (Gamma-Gamma: the customer's mean shrunk
  to the population mean; the population mean without a repeat transaction of positive mean
  value; with fewer than two such buyers, the mean value of every transaction);
- `expected_value`: expected_purchases × expected_order_value, **not discounted** (a one-year
  horizon, the usual one, makes discounting a small change that depends on a rate we do not know).

Time is counted in weeks (`unit_days` = 7): the rate scale α then stays near 1 (0.9 on The Complete
Journey's grocery baskets, 3.4 on generated data), far inside the optimiser's bounds on the log
parameters (±12), with gradients of similar size for all four parameters. What keeps the fit stable
where a maximum lies at infinity (no dropout visible: a, b → ∞, where `lifetimes` stops with
ConvergenceError) is those bounds: the fit ends at the bound and predicts as a Poisson-gamma model.

Customers without a purchase before `as_of` (known from other events, messages or the customers
table) are outside (M)BG/NBD, which starts at a first purchase. They get the first-purchase rate the
data show: among customers already seen `window` days before `as_of` (`window` = the horizon, or
half the events' time span when shorter: sign-ups before the first event say nothing of what was
bought then) without a purchase then, the transactions they made in the last
`window` days per customer, scaled to the horizon (`expected_purchases`), and the share of them who
bought at all (`prob_active`: here the chance of becoming a buyer within that window). With fewer
than `MIN_FIRST_PURCHASE_POOL` such customers (too few to read a rate from) both are 0, said in
`notes_`. A customer the model never saw gets the same values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from features import columns as c
from models.lifetime_value._bgnbd import BetaGeoPurchaseModel
from models.lifetime_value._gamma_gamma import GammaGammaSpendModel
from models.lifetime_value._transactions import (
    TRANSACTION_TS,
    TRANSACTION_VALUE,
    purchase_transactions,
    rfm_summary,
)
from models.timestamps import NAT_US, US_PER_DAY, to_us

PREDICTED_COLUMNS: tuple[str, ...] = (
    "expected_purchases",
    "prob_active",
    "expected_order_value",
    "expected_value",
)
# customers without a purchase are given a first-purchase rate only when read from at least these many
MIN_FIRST_PURCHASE_POOL = 20
# Gamma-Gamma needs a few buyers with a positive value to say anything about their spread
MIN_VALUED_BUYERS = 2


class LifetimeValueModel(BaseEstimator):
    """Expected purchases, probability of being active and value per customer (module docstring).

    Parameters
    ----------
    horizon_days : default horizon of `predict` (days).
    variant : the purchase model, "mbgnbd" (default) or "bgnbd" (`BetaGeoPurchaseModel`).
    unit_days : the models' time unit in days (7: weeks).
    n_starts, max_iter, random_state : the optimiser settings of both models
        (`BetaGeoPurchaseModel`, `GammaGammaSpendModel`).
    max_fit_buyers : both models' few population parameters are fitted on a sample of this many
        buyers (seeded by `random_state`) when there are more; every buyer is predicted. 100,000
        buyers pin the parameters down far more tightly than their fit to any real log, and keep
        the fit to seconds at millions of customers.

    Fitted attributes: as_of_, purchases_ (BetaGeoPurchaseModel), spend_ (GammaGammaSpendModel, None
    with fewer than two buyers whose repeat transactions have a positive mean value), mean_transaction_value_,
    rfm_ (one row per buyer, see `rfm_summary`),
    first_purchase_ (the rates given to customers without a purchase: window_days, customers,
    buyers, prob_active, purchases_per_window), notes_.
    """

    def __init__(
        self,
        horizon_days: float = 365.0,
        variant: str = "mbgnbd",
        unit_days: float = 7.0,
        n_starts: int = 3,
        max_iter: int = 500,
        max_fit_buyers: int = 100_000,
        random_state: int | None = 0,
    ):
        self.horizon_days = horizon_days
        self.variant = variant
        self.unit_days = unit_days
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.max_fit_buyers = max_fit_buyers
        self.random_state = random_state

    def fit(
        self,
        events: pd.DataFrame,
        as_of: pd.Timestamp | None = None,
        products: pd.DataFrame | None = None,
        first_seen_us: pd.Series | None = None,
    ) -> LifetimeValueModel:
        """Fit on the purchase events before `as_of` (default: just after the last event).

        `products` (optional) values purchase rows without an amount at list price × quantity.
        `first_seen_us` (optional): int64 µs of the first time each customer was seen (any event,
        message or sign-up; index customer_id), for the first-purchase rate of customers without
        a purchase; without it, the events' own first times are used.
        """
        self.notes_: list[str] = []
        if as_of is None:
            as_of = events[c.TS].max() + pd.Timedelta(seconds=1)
        self.as_of_ = pd.Timestamp(as_of)
        transactions = purchase_transactions(events, self.as_of_, products)
        if len(transactions) == 0:
            raise ValueError("lifetime value needs at least one purchase before as_of")
        self.rfm_ = rfm_summary(transactions, self.as_of_, self.unit_days)
        rfm = self.rfm_
        if len(rfm) > self.max_fit_buyers:
            rng = np.random.default_rng(self.random_state)
            rfm = rfm.iloc[np.sort(rng.choice(len(rfm), self.max_fit_buyers, replace=False))]
            self.notes_.append(
                f"lifetime value parameters fitted on a sample of {self.max_fit_buyers:,} of "
                f"{len(self.rfm_):,} buyers (max_fit_buyers); every customer is predicted"
            )
        init = {"n_starts": self.n_starts, "max_iter": self.max_iter, "random_state": self.random_state}
        self.purchases_ = BetaGeoPurchaseModel(variant=self.variant, **init).fit(
            rfm["frequency"], rfm["recency"], rfm["T"]
        )
        if not self.purchases_.converged_:
            self.notes_.append(
                f"{self.variant}: the optimiser stopped before convergence; the best parameters found are used"
            )
        valued = (rfm["frequency"].to_numpy() > 0) & (rfm["mean_value"].to_numpy() > 0)
        positive = transactions[TRANSACTION_VALUE].to_numpy() > 0
        self.mean_transaction_value_ = (
            float(transactions[TRANSACTION_VALUE].to_numpy().mean()) if positive.any() else 0.0
        )
        self.spend_: GammaGammaSpendModel | None = None
        if valued.sum() >= MIN_VALUED_BUYERS:
            self.spend_ = GammaGammaSpendModel(**init).fit(rfm["frequency"], rfm["mean_value"])
        elif positive.any():
            self.notes_.append(
                f"fewer than {MIN_VALUED_BUYERS} buyers with a valued repeat purchase: every order is "
                "valued at the mean transaction value"
            )
        else:
            self.notes_.append(
                "purchases carry no positive values (no amounts, no list prices): order values and "
                "lifetime value are 0"
            )
        if first_seen_us is None:
            seen = events.groupby(events[c.CUSTOMER_ID].astype(str))[c.TS].min()
            first_seen_us = pd.Series(to_us(seen), index=seen.index)
        # the log's own start: sign-ups before it say nothing of what was bought before it
        start_us = min(
            int(to_us(pd.Timestamp(events[c.TS].min()))[0]), int(transactions[TRANSACTION_TS].min())
        )
        self.first_purchase_ = self._first_purchase_rate(transactions, first_seen_us, start_us)
        return self

    def _first_purchase_rate(
        self, transactions: pd.DataFrame, first_seen_us: pd.Series, start_us: int
    ) -> dict:
        """What customers without a purchase did next, from the last `window` days (module docstring)."""
        as_of_us = int(to_us(self.as_of_)[0])
        seen = pd.Series(np.asarray(first_seen_us, dtype=np.int64), index=first_seen_us.index.astype(str))
        seen = seen[~seen.index.duplicated()]
        window_days = min(float(self.horizon_days), (as_of_us - start_us) / US_PER_DAY / 2.0)
        cut_us = as_of_us - int(window_days * US_PER_DAY)
        # customers of unknown first time were known from the start (a customers-table row)
        seen = seen.where(seen != NAT_US, start_us)
        first_buy = self.rfm_["first_us"]
        first_buy_of_seen = first_buy.reindex(seen.index).fillna(np.iinfo(np.int64).max).to_numpy()
        pool = seen.index[(seen.to_numpy() < cut_us) & (first_buy_of_seen >= cut_us)]
        out = {"window_days": window_days, "customers": len(pool), "buyers": 0, "prob_active": 0.0}
        out["purchases_per_window"] = 0.0
        if len(pool) < MIN_FIRST_PURCHASE_POOL or window_days <= 0:
            self.notes_.append(
                f"{len(pool)} customers were seen without a purchase {window_days:.0f} days before the end "
                f"(fewer than {MIN_FIRST_PURCHASE_POOL}): customers without a purchase get 0 expected "
                "purchases and 0 probability of buying"
            )
            return out
        in_pool = transactions[c.CUSTOMER_ID].isin(pool).to_numpy()
        window_tx = transactions.loc[in_pool & (transactions[TRANSACTION_TS].to_numpy() >= cut_us)]
        out["buyers"] = int(window_tx[c.CUSTOMER_ID].nunique())
        out["prob_active"] = out["buyers"] / len(pool)
        out["purchases_per_window"] = len(window_tx) / len(pool)
        return out

    # ------------------------------------------------------------------------------------------
    def predict(self, customer_ids, horizon_days: float | None = None) -> pd.DataFrame:
        """One row per id (in order): customer_id, has_purchase and `PREDICTED_COLUMNS`."""
        horizon = float(self.horizon_days if horizon_days is None else horizon_days)
        ids = pd.Index(pd.Series(np.asarray(customer_ids, dtype=object)).astype(str))
        rows = self.rfm_.index.get_indexer(ids)
        buyer = rows >= 0
        rfm = self.rfm_.iloc[rows[buyer]]
        t = horizon / self.unit_days
        purchases = np.empty(len(ids))
        active = np.empty(len(ids))
        order_value = np.full(len(ids), self.order_value_of_new_buyer())
        x, t_x, big_t = rfm["frequency"], rfm["recency"], rfm["T"]
        purchases[buyer] = self.purchases_.expected_purchases(t, x, t_x, big_t)
        active[buyer] = self.purchases_.prob_alive(x, t_x, big_t)
        if self.spend_ is not None:
            order_value[buyer] = self.spend_.expected_value(rfm["frequency"], rfm["mean_value"])
        rate = self.first_purchase_
        window = rate["window_days"]
        purchases[~buyer] = rate["purchases_per_window"] * horizon / window if window > 0 else 0.0
        active[~buyer] = rate["prob_active"]
        return pd.DataFrame(
            {
                c.CUSTOMER_ID: ids.to_numpy(dtype=object),
                "has_purchase": buyer,
                "expected_purchases": purchases,
                "prob_active": active,
                "expected_order_value": order_value,
                "expected_value": purchases * order_value,
            }
        )

    def order_value_of_new_buyer(self) -> float:
        """The expected transaction value of a customer without a repeat transaction of positive
        mean value."""
        return (
            float(self.spend_.population_mean_) if self.spend_ is not None else self.mean_transaction_value_
        )

    # ------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Parameters and rates as plain JSON values (saved with the profiles)."""
        return {
            "as_of": self.as_of_.isoformat(),
            "unit_days": float(self.unit_days),
            "buyers": len(self.rfm_),
            "purchase_model": self.variant,
            "bgnbd": {k: round(v, 6) for k, v in self.purchases_.params_.items()},
            "gamma_gamma": (
                {k: round(v, 6) for k, v in self.spend_.params_.items()} if self.spend_ is not None else None
            ),
            "population_order_value": round(self.order_value_of_new_buyer(), 6),
            "first_purchase": dict(self.first_purchase_),
        }
