"""The memory-saving paths of training give what the copying ones gave."""

import numpy as np
import pandas as pd
import pytest

from features import columns as c
from features.interactions import build_interactions
from features.io import rows_before
from models import fitting


def _events(n: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 90 * 86400, n), unit="s")
    product = pd.Series([f"P{i:02d}" for i in rng.integers(0, 15, n)], dtype="str")
    product[rng.random(n) < 0.1] = np.nan  # events without a product (searches, app opens)
    return pd.DataFrame(
        {
            c.CUSTOMER_ID: pd.Series([f"C{i:03d}" for i in rng.integers(0, 40, n)], dtype="str"),
            c.TS: ts,  # not in time order
            c.CHANNEL: pd.Series(rng.choice(["web", "app", "store"], n), dtype="str"),
            c.EVENT_TYPE: pd.Series(
                rng.choice(["view", "add_to_cart", "purchase", "return"], n), dtype="str"
            ),
            c.PRODUCT_ID: product,
            c.AMOUNT: rng.random(n) * 50,
        }
    )


@pytest.mark.parametrize("half_life", [None, 30.0])
def test_build_interactions_before_equals_building_from_a_filtered_copy(half_life):
    events = _events()
    cut = pd.Timestamp("2026-03-01", tz="UTC")
    for kwargs in ({}, {"as_of": cut}, {"customer_ids": np.array(["C005", "C001"])}):
        copied = build_interactions(events[events[c.TS] < cut], half_life_days=half_life, **kwargs)
        masked = build_interactions(events, half_life_days=half_life, before=cut, **kwargs)
        assert np.array_equal(copied.customer_ids, masked.customer_ids)
        assert np.array_equal(copied.product_ids, masked.product_ids)
        for a, b in ((copied.matrix, masked.matrix), (copied.purchased, masked.purchased)):
            assert a.dtype == b.dtype and (a != b).nnz == 0
            assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
            assert np.array_equal(a.data, b.data)


def test_rows_before_copies_nothing_when_every_row_is_before():
    events = _events()
    late = events[c.TS].max() + pd.Timedelta(seconds=1)
    assert rows_before(events, c.TS, late) is events
    subset = rows_before(events, c.TS, late, (c.CUSTOMER_ID, c.TS, "not_a_column"))
    assert list(subset.columns) == [c.CUSTOMER_ID, c.TS] and subset.equals(events[[c.CUSTOMER_ID, c.TS]])

    cut = pd.Timestamp("2026-02-01", tz="UTC")
    expected = events.loc[events[c.TS] < cut, [c.CUSTOMER_ID, c.PRODUCT_ID]]
    got = rows_before(events, c.TS, cut, [c.PRODUCT_ID, c.CUSTOMER_ID])
    assert got.equals(expected) and got.index.equals(expected.index)
    assert rows_before(events, c.TS, cut).equals(events[events[c.TS] < cut])


def test_fit_pool_runs_big_fits_one_at_a_time(monkeypatch):
    monkeypatch.delenv(fitting.SIDE_BY_SIDE_MAX_ROWS_ENV, raising=False)
    limit = fitting.side_by_side_max_rows()
    assert limit == fitting.SIDE_BY_SIDE_MAX_ROWS
    with fitting.fit_pool(2, rows=limit) as pool:
        assert pool is not None
    with fitting.fit_pool(2, rows=limit + 1) as pool:
        assert pool is None
    with fitting.fit_pool(2) as pool:  # no size given: side by side as before
        assert pool is not None
    monkeypatch.setenv(fitting.SIDE_BY_SIDE_MAX_ROWS_ENV, "100")
    with fitting.fit_pool(2, rows=101) as pool:
        assert pool is None
    with fitting.fit_pool(2, rows=100) as pool:
        assert pool is not None
    # a lighter working set per row (the two-stage sources) stays side by side for longer
    with fitting.fit_pool(2, rows=400, row_weight=0.25) as pool:
        assert pool is not None
    with fitting.fit_pool(2, rows=401, row_weight=0.25) as pool:
        assert pool is None
