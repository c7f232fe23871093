"""Compiled loops for the send-time EM over (message, habit profile) cells.

Each EM iteration of `SendTimeModel` visits every message once per habit profile: 11M messages ×
25 profiles at a million customers. Written as numpy array expressions, each step built a messages ×
profiles array (a gigabyte each, several alive at once) and every iteration made a dozen passes
over them. These numba loops make one pass per step, in registers, with no such array: the E-step
adds each customer's message log-likelihoods to its posterior row, and the M-step takes every sum
the engagement Newton steps need in one pass (and a second, light one once the profile residuals
have moved). The odds exp(base + lift) are taken as exp(base) · exp(lift): one exp per
message, not one per cell (the log-odds stay within ±50 here, far from overflow).

Messages must be ordered by customer (`customer_starts` gives where each customer's run begins).
The work is cut into a fixed number of ranges of customers, each summed into its own accumulators
by a kernel that releases the GIL, run on a small thread pool, and the ranges' sums are added in
range order: the result does not depend on the number of threads or cores.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from numba import njit

# ranges of customers: fixed, so the order of additions (and so the result) is the same on any
# machine; enough for the threads of any ordinary machine to share the work evenly
N_RANGES = 32


def customer_starts(rows: np.ndarray, n: int) -> np.ndarray:
    """Where each customer's messages begin in messages sorted by `rows` (n + 1 offsets)."""
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)


def _ranges(starts: np.ndarray) -> list[tuple[int, int]]:
    """N_RANGES ranges of customers with about the same number of messages each."""
    n = len(starts) - 1
    targets = np.linspace(0, starts[-1], N_RANGES + 1)
    cuts = np.searchsorted(starts, targets, side="left").clip(0, n)
    cuts[0], cuts[-1] = 0, n
    cuts = np.maximum.accumulate(cuts)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _threads() -> int:
    """The cores this process may run on (the affinity mask where the system has one), at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))


def _run(kernel, starts: np.ndarray, *args) -> None:
    """`kernel(r, lo, hi, starts, *args)` for every range r, on a thread pool."""
    ranges = _ranges(starts)
    with ThreadPoolExecutor(_threads()) as pool:
        list(pool.map(lambda r: kernel(r, ranges[r][0], ranges[r][1], starts, *args), range(len(ranges))))


@njit(nogil=True, cache=True)
def _log_likelihood_kernel(r, lo, hi, starts, base, hour, y, lift, odds_lift, log_post):
    n_profiles = lift.shape[1]
    for row in range(lo, hi):
        for i in range(starts[row], starts[row + 1]):
            h, b, yi = hour[i], base[i], y[i]
            e = math.exp(b)
            for k in range(n_profiles):
                # y·eta - log(1 + e^eta), with e^eta = e^base · e^lift
                log_post[row, k] += yi * (b + lift[h, k]) - math.log1p(e * odds_lift[h, k])


def add_message_log_likelihood(starts, base, hour, y, lift, log_post) -> None:
    """log_post[c, k] += Σ over customer c's messages of log P(y | profile k), in place.

    base: per-message log-odds without the hour lift; hour: local hour 0-23; y: 1 engaged, else 0;
    lift: 24 × profiles log-odds lift; log_post: customers × profiles (float64)."""
    _run(_log_likelihood_kernel, starts, base, hour, y, lift, np.exp(lift), log_post)


class EngagementSums(NamedTuple):
    """Sums over (message, profile) cells with residual = w (y - p) and info = w p (1 - p), w the
    customer's posterior weight of the profile and p the engagement probability under it."""

    r_row: np.ndarray  # per message: Σ_k residual
    i_row: np.ndarray  # per message: Σ_k info
    feature_sums: list[np.ndarray]  # per message and feature a: Σ_k info · f_a(hour, k)
    grad_f: np.ndarray  # per feature a: Σ residual · f_a
    hess_f: np.ndarray  # per feature pair: Σ info · f_a · f_b
    residual_cell: np.ndarray  # 24 × profiles: Σ residual over the messages sent at that hour
    info_cell: np.ndarray  # 24 × profiles: Σ info
    info_day_cell: np.ndarray  # 24 × profiles: Σ info · per_message
    info_channel_cell: np.ndarray  # channels × 24 × profiles: Σ info per channel


@njit(nogil=True, cache=True)
def _sums_kernel(
    r, lo, hi, starts, base, hour, y, channel, per_message, odds_lift, posterior, f0, f1,
    r_row, i_row, s0, s1, scalars, res_cell, info_cell, day_cell, channel_cell,
):  # fmt: skip
    n_profiles = odds_lift.shape[1]
    g0 = g1 = h00 = h01 = h11 = 0.0
    for row in range(lo, hi):
        for i in range(starts[row], starts[row + 1]):
            h, yi, c, d = hour[i], y[i], channel[i], per_message[i]
            e = math.exp(base[i])
            rr = ii = a0 = a1 = 0.0
            for k in range(n_profiles):
                z = e * odds_lift[h, k]
                p = z / (1.0 + z)
                w = posterior[row, k]
                res = w * (yi - p)
                inf = w * p * (1.0 - p)
                v0, v1 = f0[h, k], f1[h, k]
                rr += res
                ii += inf
                a0 += inf * v0
                a1 += inf * v1
                g0 += res * v0
                g1 += res * v1
                h00 += inf * v0 * v0
                h01 += inf * v0 * v1
                h11 += inf * v1 * v1
                res_cell[r, h, k] += res
                info_cell[r, h, k] += inf
                day_cell[r, h, k] += inf * d
                channel_cell[r, c, h, k] += inf
            r_row[i], i_row[i], s0[i], s1[i] = rr, ii, a0, a1
    scalars[r, 0], scalars[r, 1], scalars[r, 2], scalars[r, 3], scalars[r, 4] = g0, g1, h00, h01, h11


def engagement_sums(
    starts, base, hour, y, channel, n_channels, per_message, lift, posterior, features
) -> EngagementSums:
    """Every sum one engagement M-step needs, in one pass over the messages.

    `features`: the two hour features of the profiles, each 24 × profiles; `per_message`: a
    per-message covariate (its cell sums are weighted by it); the rest as in
    `add_message_log_likelihood`, `posterior` customers × profiles."""
    f0, f1 = (np.ascontiguousarray(f, dtype=np.float64) for f in features)
    m, n_profiles = len(base), lift.shape[1]
    r_row, i_row, s0, s1 = (np.empty(m) for _ in range(4))
    scalars = np.zeros((N_RANGES, 5))
    res_cell, info_cell, day_cell = (np.zeros((N_RANGES, 24, n_profiles)) for _ in range(3))
    channel_cell = np.zeros((N_RANGES, max(n_channels, 1), 24, n_profiles))
    _run(
        _sums_kernel, starts, base, hour, y, channel, per_message, np.exp(lift), posterior, f0, f1,
        r_row, i_row, s0, s1, scalars, res_cell, info_cell, day_cell, channel_cell,
    )  # fmt: skip
    g0, g1, h00, h01, h11 = _in_order(scalars)
    return EngagementSums(
        r_row, i_row, [s0, s1], np.array([g0, g1]), np.array([[h00, h01], [h01, h11]]),
        _in_order(res_cell), _in_order(info_cell), _in_order(day_cell), _in_order(channel_cell),
    )  # fmt: skip


def _in_order(per_range: np.ndarray) -> np.ndarray:
    """The ranges' partial sums added in range order (the same result on any number of threads)."""
    total = per_range[0].copy()
    for part in per_range[1:]:
        total += part
    return total


@njit(nogil=True, cache=True)
def _info_dot_kernel(r, lo, hi, starts, base, hour, odds_lift, posterior, cell, out):
    n_profiles = odds_lift.shape[1]
    for row in range(lo, hi):
        for i in range(starts[row], starts[row + 1]):
            h, e = hour[i], math.exp(base[i])
            s = 0.0
            for k in range(n_profiles):
                z = e * odds_lift[h, k]
                p = z / (1.0 + z)
                s += posterior[row, k] * p * (1.0 - p) * cell[h, k]
            out[i] = s


def info_dot(starts, base, hour, lift, posterior, cell) -> np.ndarray:
    """Per message: Σ_k info(message, k) · cell[hour, k] (`cell` 24 × profiles), info as in
    `engagement_sums`."""
    out = np.empty(len(base))
    _run(_info_dot_kernel, starts, base, hour, np.exp(lift), posterior, np.ascontiguousarray(cell), out)
    return out
