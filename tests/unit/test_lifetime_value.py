"""Tests of the lifetime-value models: (M)BG/NBD and Gamma-Gamma recover the parameters of data
simulated from them, their gradients are right, extreme customers stay finite, the purchase model
beats "the last period repeats" on a simulated holdout, and purchase events become transactions
as documented (orders, else days; list prices for missing amounts; returns left out)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import check_grad

from features import columns as c
from models.lifetime_value import (
    TRANSACTION_TS,
    TRANSACTION_VALUE,
    BetaGeoPurchaseModel,
    GammaGammaSpendModel,
    LifetimeValueModel,
    purchase_transactions,
    rfm_summary,
)
from models.lifetime_value._bgnbd import _negative_log_likelihood as bgnbd_nll
from models.lifetime_value._gamma_gamma import _negative_log_likelihood as gamma_gamma_nll

TRUE = {"r": 0.8, "alpha": 4.0, "a": 0.9, "b": 3.0}  # weeks: a purchase every 5 weeks on average
T0 = pd.Timestamp("2025-01-01", tz="UTC")


def simulate_purchase_times(n, weeks, variant, seed, params=TRUE):
    """Per customer, the purchase times (weeks since T0) of a (M)BG/NBD customer whose first
    purchase is uniform over the first half of `weeks`: λ ~ Gamma(r, α), p ~ Beta(a, b); after
    every purchase (MBG/NBD) or every repeat purchase (BG/NBD) they drop out with probability p."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(params["r"], 1.0 / params["alpha"], n)
    drop = rng.beta(params["a"], params["b"], n)
    out = []
    for i in range(n):
        t = rng.uniform(0.0, weeks / 2.0)
        times = [t]
        if variant == "mbgnbd" and rng.random() < drop[i]:
            out.append(times)
            continue
        while True:
            t += rng.exponential(1.0 / lam[i])
            if t >= weeks:
                break
            times.append(t)
            if rng.random() < drop[i]:
                break
        out.append(times)
    return out


def rft(times_per_customer, end):
    """(x, t_x, T) of each customer at `end` from their purchase times."""
    x = np.array([len(t) - 1 for t in times_per_customer], dtype=float)
    t_x = np.array([t[-1] - t[0] for t in times_per_customer])
    big_t = np.array([end - t[0] for t in times_per_customer])
    return x, t_x, big_t


@pytest.mark.parametrize("variant", ["mbgnbd", "bgnbd"])
def test_purchase_model_recovers_the_parameters_it_was_simulated_with(variant):
    times = simulate_purchase_times(4000, 104, variant, seed=1)
    x, t_x, big_t = rft(times, 104.0)
    model = BetaGeoPurchaseModel(variant=variant).fit(x, t_x, big_t)
    p = model.params_
    # the mean purchase rate r/α and the mean dropout probability a/(a+b) are well identified
    assert p["r"] / p["alpha"] == pytest.approx(TRUE["r"] / TRUE["alpha"], rel=0.15)
    assert p["a"] / (p["a"] + p["b"]) == pytest.approx(TRUE["a"] / (TRUE["a"] + TRUE["b"]), rel=0.2)
    for name in ("r", "alpha", "a", "b"):
        assert p[name] == pytest.approx(TRUE[name], rel=0.25), name
    assert model.converged_


@pytest.mark.parametrize("k", [0, 1])
def test_likelihood_gradients_are_right(k):
    times = simulate_purchase_times(300, 52, "mbgnbd", seed=2)
    x, t_x, big_t = rft(times, 52.0)
    weight = np.full(len(x), 1.0 / len(x))
    for theta in (np.zeros(4), np.array([0.3, -1.0, 0.5, 2.0])):
        error = check_grad(
            lambda th: bgnbd_nll(th, x, t_x, big_t, weight, k)[0],
            lambda th: bgnbd_nll(th, x, t_x, big_t, weight, k)[1],
            theta,
        )
        assert error < 1e-4
    n = np.array([1.0, 2.0, 5.0, 30.0])
    m = np.array([0.5, 1.2, 0.9, 2.0])
    for theta in (np.zeros(3), np.array([1.0, 0.5, 2.0])):
        error = check_grad(
            lambda th: gamma_gamma_nll(th, n, m)[0], lambda th: gamma_gamma_nll(th, n, m)[1], theta
        )
        assert error < 1e-5


def test_one_time_and_very_heavy_buyers_stay_finite():
    model = BetaGeoPurchaseModel.from_params(TRUE)
    x = np.array([0.0, 0.0, 1.0, 500.0, 5000.0])
    t_x = np.array([0.0, 0.0, 1.0, 51.9, 52.0])
    big_t = np.array([1e-6, 52.0, 52.0, 52.0, 52.0])
    expected = model.expected_purchases(52.0, x, t_x, big_t)
    alive = model.prob_alive(x, t_x, big_t)
    assert np.isfinite(expected).all() and (expected >= 0).all()
    assert ((alive > 0) & (alive <= 1)).all()
    # MBG/NBD: a one-time buyer is less likely alive the longer ago they bought
    assert alive[1] < alive[0]
    # a heavy recent buyer keeps buying near their own rate (5000 in 52 weeks), less the chance of
    # dropping out after any of the next purchases: ((b + x) / (b + x + k))^a survives k more
    assert 0.5 * 5000.0 < expected[4] < 5000.0
    # more time, more purchases
    assert (model.expected_purchases(104.0, x, t_x, big_t) >= expected).all()
    # BG/NBD: a customer without a repeat purchase cannot have dropped out
    assert BetaGeoPurchaseModel.from_params(TRUE, variant="bgnbd").prob_alive([0.0], [0.0], [52.0])[0] == 1.0


def test_gamma_gamma_recovers_the_population_mean_and_shrinks_towards_it():
    rng = np.random.default_rng(3)
    p, q, gamma = 6.0, 4.0, 15.0
    nu = rng.gamma(q, 1.0 / gamma, 3000)
    n = rng.integers(1, 20, 3000)
    means = np.array([rng.gamma(p, 1.0 / rate, size).mean() for rate, size in zip(nu, n, strict=True)])
    model = GammaGammaSpendModel().fit(n, means)
    assert model.population_mean_ == pytest.approx(p * gamma / (q - 1.0), rel=0.1)
    # between the customer's own mean and the population mean; closer to their own with more orders
    few, many = model.expected_value([1, 50], [200.0, 200.0])
    assert model.population_mean_ < few < many < 200.0
    assert model.expected_value([0], [np.nan])[0] == pytest.approx(model.population_mean_)
    # the currency does not matter
    in_cents = GammaGammaSpendModel().fit(n, means * 100.0)
    assert in_cents.population_mean_ == pytest.approx(100.0 * model.population_mean_, rel=1e-3)


def _events_from_times(times_per_customer, rng) -> pd.DataFrame:
    """Purchase events (one order of two lines per purchase, values ~ Gamma) from purchase times."""
    rows = []
    for i, times in enumerate(times_per_customer):
        scale = rng.gamma(4.0, 5.0)
        for j, t in enumerate(times):
            ts = T0 + pd.Timedelta(weeks=t)
            value = rng.gamma(3.0, scale / 3.0)
            for line in range(2):
                rows.append((f"C{i:05d}", ts + pd.Timedelta(seconds=line), f"O{i}-{j}", value / 2.0))
    frame = pd.DataFrame(rows, columns=[c.CUSTOMER_ID, c.TS, c.ORDER_ID, c.AMOUNT])
    frame[c.EVENT_TYPE] = "purchase"
    return frame


def test_beats_the_last_period_on_a_simulated_holdout():
    rng = np.random.default_rng(4)
    times = simulate_purchase_times(2000, 78, "mbgnbd", seed=5)
    events = _events_from_times(times, rng)
    cut = T0 + pd.Timedelta(weeks=52)
    model = LifetimeValueModel(horizon_days=26 * 7).fit(events, as_of=cut)
    transactions = purchase_transactions(events)
    cut_us = cut.value // 1000
    holdout = transactions.loc[transactions[TRANSACTION_TS] >= cut_us]
    last = transactions.loc[
        (transactions[TRANSACTION_TS] < cut_us) & (transactions[TRANSACTION_TS] >= cut_us - 26 * 7 * 86_400e6)
    ]
    ids = model.rfm_.index
    predicted = model.predict(ids)
    for target, column in (("size", "expected_purchases"), ("sum", "expected_value")):
        actual = holdout.groupby(c.CUSTOMER_ID)[TRANSACTION_VALUE].agg(target).reindex(ids).fillna(0.0)
        rule = last.groupby(c.CUSTOMER_ID)[TRANSACTION_VALUE].agg(target).reindex(ids).fillna(0.0)
        ours_mae = np.mean(np.abs(predicted[column].to_numpy() - actual.to_numpy()))
        rule_mae = np.mean(np.abs(rule.to_numpy() - actual.to_numpy()))
        assert ours_mae < 0.9 * rule_mae, (target, ours_mae, rule_mae)


def test_transactions_are_orders_else_days_with_list_prices_for_missing_amounts():
    ts = [T0 + pd.Timedelta(hours=h) for h in (1, 2, 3, 4, 30, 50, 60)]
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: ["A", "A", "B", "B", "B", "A", "A"],
            c.TS: ts,
            c.EVENT_TYPE: ["purchase", "purchase", "purchase", "purchase", "purchase", "return", "purchase"],
            c.PRODUCT_ID: ["P1", "P2", "P1", "P2", "P1", "P1", "P2"],
            c.QUANTITY: [1.0, 2.0, 1.0, 1.0, 3.0, 1.0, 1.0],
            c.AMOUNT: [5.0, 4.0, np.nan, 2.0, 1.0, 5.0, 7.0],
            # A: one basket over two rows; B: no order ids, two rows on day 0 and one on day 1
            c.ORDER_ID: ["O1", "O1", None, None, None, "O1", "O2"],
        }
    )
    products = pd.DataFrame({c.PRODUCT_ID: ["P1", "P2"], c.PRICE: [10.0, 3.0]})
    tx = purchase_transactions(events, products=products)
    assert tx[c.CUSTOMER_ID].tolist() == ["A", "A", "B", "B"]
    # B's first row has no amount: list price 10 × quantity 1; the return is left out
    assert tx[TRANSACTION_VALUE].tolist() == [9.0, 7.0, 12.0, 1.0]
    before = purchase_transactions(events, as_of=T0 + pd.Timedelta(hours=40), products=products)
    assert len(before) == 3
    rfm = rfm_summary(tx, T0 + pd.Timedelta(days=7), unit_days=7.0)
    assert rfm.loc["A", "frequency"] == 1.0 and rfm.loc["A", "recency"] == pytest.approx(59 / 168)
    assert rfm.loc["A", "T"] == pytest.approx(1.0 - 1 / 168)
    # the spend model's mean leaves the first transaction out
    assert rfm.loc["B", "mean_value"] == 1.0


def test_customers_without_purchases_and_without_amounts_get_numbers_not_nans():
    rng = np.random.default_rng(6)
    times = simulate_purchase_times(300, 52, "mbgnbd", seed=7)
    events = _events_from_times(times, rng)
    # 100 customers seen (a view) early on; 30 of them buy in the last half
    views = pd.DataFrame(
        {
            c.CUSTOMER_ID: [f"V{i:03d}" for i in range(100)],
            c.TS: T0 + pd.Timedelta(days=1),
            c.EVENT_TYPE: "view",
        }
    )
    late = _events_from_times([[40.0] for _ in range(30)], rng)
    late[c.CUSTOMER_ID] = [f"V{i // 2:03d}" for i in range(len(late))]
    events = pd.concat([events, views, late], ignore_index=True)
    model = LifetimeValueModel().fit(events, as_of=T0 + pd.Timedelta(weeks=52))
    assert model.first_purchase_["customers"] == 70 + 30 and model.first_purchase_["buyers"] == 30
    out = model.predict(["V099", "nobody", "C00000"])
    assert np.isfinite(out[["expected_purchases", "prob_active", "expected_value"]].to_numpy()).all()
    assert out["prob_active"].iloc[0] == pytest.approx(0.3)
    assert out["expected_purchases"].iloc[0] > 0
    assert out["expected_order_value"].iloc[0] == pytest.approx(model.spend_.population_mean_)

    sampled = LifetimeValueModel(max_fit_buyers=100).fit(events, as_of=T0 + pd.Timedelta(weeks=52))
    assert sampled.purchases_.n_customers_ == 100 and any("sample of 100" in n for n in sampled.notes_)
    assert np.isfinite(sampled.predict(sampled.rfm_.index)["expected_value"]).all()

    no_amounts = events.drop(columns=c.AMOUNT)
    valueless = LifetimeValueModel().fit(no_amounts, as_of=T0 + pd.Timedelta(weeks=52))
    assert valueless.spend_ is None and any("no positive values" in n for n in valueless.notes_)
    assert (valueless.predict(["C00000", "V000"])["expected_value"] == 0.0).all()


@pytest.mark.parametrize("variant", ["bgnbd", "mbgnbd"])
def test_same_answers_as_the_lifetimes_library_at_the_same_parameters(variant):
    """Our closed forms (P(alive), the Euler-transformed expectation) against `lifetimes`' own, and
    our fit against its fit (the test extras install it; the service never imports it)."""
    lifetimes = pytest.importorskip("lifetimes")
    library_class = lifetimes.BetaGeoFitter if variant == "bgnbd" else lifetimes.ModifiedBetaGeoFitter
    times = simulate_purchase_times(1500, 52, variant, seed=8)
    x, t_x, big_t = rft(times, 52.0)
    library = library_class().fit(x, t_x, big_t)
    ours = BetaGeoPurchaseModel.from_params(library.params_.to_dict(), variant=variant)
    np.testing.assert_allclose(
        ours.expected_purchases(26.0, x, t_x, big_t),
        library.conditional_expected_number_of_purchases_up_to_time(26.0, x, t_x, big_t),
        rtol=1e-8,
    )
    np.testing.assert_allclose(
        ours.prob_alive(x, t_x, big_t), library.conditional_probability_alive(x, t_x, big_t), rtol=1e-8
    )
    fitted = BetaGeoPurchaseModel(variant=variant).fit(x, t_x, big_t)
    for name in ("r", "alpha", "a", "b"):
        assert fitted.params_[name] == pytest.approx(library.params_[name], rel=1e-3), name


def test_the_benchmark_reports_the_shape_outside_checks_read():
    """bench/clv.py's per-data-set result on simulated events: every model with the four figures
    (a library that cannot fit says why instead), and decile lift by hand."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import clv

    rng = np.random.default_rng(9)
    events = _events_from_times(simulate_purchase_times(600, 78, "mbgnbd", seed=10), rng)
    result = clv.run_dataset("simulated", events, None, holdout_weeks=26)
    for model in clv.MODELS:
        assert set(clv.REPORTED) <= set(result[model]), model
        assert all(result[model][key] is not None for key in clv.REPORTED) or "error" in result[model]
    assert result["ours"]["purchases_mae"] < result["last_period"]["purchases_mae"]
    # 10 customers: the top one by prediction holds 6 of the 10 units bought
    actual = np.array([6.0, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    predicted = np.array([9.0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    assert clv.decile_lift(predicted, actual, np.array([f"C{i}" for i in range(10)])) == pytest.approx(6.0)
