"""The compiled EM loops of the send-time model against the same sums written with numpy."""

import numpy as np
import pytest

from models.engagement import em_kernels as ek


@pytest.fixture(scope="module")
def cells():
    """60 customers (some without messages), 700 messages in customer order, 5 profiles."""
    rng = np.random.default_rng(0)
    n, m, k, n_ch = 60, 700, 5, 3
    rows = np.sort(rng.choice(np.arange(0, n, 2), size=m))  # odd customers have no messages
    return {
        "n": n,
        "rows": rows,
        "starts": ek.customer_starts(rows, n),
        "base": rng.normal(-1.0, 1.5, m),
        "hour": rng.integers(0, 24, m),
        "y": (rng.random(m) < 0.3).astype(np.float64),
        "channel": rng.integers(0, n_ch, m),
        "n_channels": n_ch,
        "per_message": rng.normal(0.0, 1.0, m),
        "lift": rng.normal(0.0, 1.0, (24, k)),
        "posterior": rng.dirichlet(np.ones(k), size=n),
        "features": [rng.random((24, k)), rng.normal(0.0, 1.0, (24, k))],
    }


def _cell_arrays(d):
    eta = d["base"][:, None] + d["lift"][d["hour"]]  # messages × profiles
    p = 1.0 / (1.0 + np.exp(-eta))
    w = d["posterior"][d["rows"]]
    return eta, p, w * (d["y"][:, None] - p), w * p * (1.0 - p)


def test_customer_starts_are_offsets_of_each_customers_run(cells):
    starts = cells["starts"]
    assert starts[0] == 0 and starts[-1] == len(cells["rows"]) and len(starts) == cells["n"] + 1
    for customer in (0, 1, 30):
        run = cells["rows"][starts[customer] : starts[customer + 1]]
        assert (run == customer).all() and len(run) == (cells["rows"] == customer).sum()


def test_log_likelihood_added_per_customer(cells):
    eta, _, _, _ = _cell_arrays(cells)
    term = cells["y"][:, None] * eta - np.logaddexp(0.0, eta)
    expected = np.ones((cells["n"], eta.shape[1]))
    np.add.at(expected, cells["rows"], term)
    log_post = np.ones((cells["n"], eta.shape[1]))
    ek.add_message_log_likelihood(
        cells["starts"], cells["base"], cells["hour"], cells["y"], cells["lift"], log_post
    )
    np.testing.assert_allclose(log_post, expected, rtol=1e-12, atol=1e-12)
    assert (log_post[1::2] == 1.0).all()  # customers without messages are left as they were


def test_engagement_sums_equal_the_numpy_sums(cells):
    _, _, residual, info = _cell_arrays(cells)
    f = [feat[cells["hour"]] for feat in cells["features"]]
    got = ek.engagement_sums(
        cells["starts"], cells["base"], cells["hour"], cells["y"], cells["channel"],
        cells["n_channels"], cells["per_message"], cells["lift"], cells["posterior"], cells["features"],
    )  # fmt: skip
    close = {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(got.r_row, residual.sum(axis=1), **close)
    np.testing.assert_allclose(got.i_row, info.sum(axis=1), **close)
    for a in range(2):
        np.testing.assert_allclose(got.feature_sums[a], (info * f[a]).sum(axis=1), **close)
        np.testing.assert_allclose(got.grad_f[a], (residual * f[a]).sum(), **close)
        for b in range(2):
            np.testing.assert_allclose(got.hess_f[a, b], (info * f[a] * f[b]).sum(), **close)
    by_hour = np.eye(24)[cells["hour"]].T  # 24 × messages
    np.testing.assert_allclose(got.residual_cell, by_hour @ residual, **close)
    np.testing.assert_allclose(got.info_cell, by_hour @ info, **close)
    np.testing.assert_allclose(got.info_day_cell, by_hour @ (info * cells["per_message"][:, None]), **close)
    for ch in range(cells["n_channels"]):
        on = cells["channel"] == ch
        np.testing.assert_allclose(got.info_channel_cell[ch], by_hour[:, on] @ info[on], **close)


def test_info_dot(cells):
    _, _, _, info = _cell_arrays(cells)
    cell = np.random.default_rng(1).normal(size=(24, info.shape[1]))
    got = ek.info_dot(cells["starts"], cells["base"], cells["hour"], cells["lift"], cells["posterior"], cell)
    np.testing.assert_allclose(got, (info * cell[cells["hour"]]).sum(axis=1), rtol=1e-10, atol=1e-12)


def test_result_does_not_depend_on_the_number_of_threads(cells, monkeypatch):
    args = (
        cells["starts"], cells["base"], cells["hour"], cells["y"], cells["channel"], cells["n_channels"],
        cells["per_message"], cells["lift"], cells["posterior"], cells["features"],
    )  # fmt: skip
    monkeypatch.setattr(ek, "_threads", lambda: 1)
    one = ek.engagement_sums(*args)
    monkeypatch.setattr(ek, "_threads", lambda: 4)
    four = ek.engagement_sums(*args)
    for a, b in zip(one, four, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # bit for bit
