"""The send-time EM's message work: compiled loops against the numpy array version they replaced.

    python bench/send_time_em.py --customers 300000 --messages 3300000 --out FILE

One EM iteration of `models.engagement.send_time.SendTimeModel` visits every (message, habit profile) cell:
the E-step adds each message's log-likelihood under every profile to its customer's posterior row,
and the M-step takes the engagement Newton step's sums (residual and information per message, per
hour × profile, the features' gradient and Hessian), moves the residuals by the step, then by the
profile residuals' change. This times that work on arrays of the given size, both ways, in the
same run:

- `numpy` (the baseline, the implementation before `models/engagement/em_kernels.py`): float32 messages ×
  profiles arrays built per step (in blocks of 65,536 messages where the old code blocked), a sparse
  customers × messages matrix for the per-customer sums and an hours × messages one for the
  per-hour sums;
- `kernels`: `em_kernels.add_message_log_likelihood`, `engagement_sums` and `info_dot`.

The arrays are random with the shapes and ranges of a fit (log-odds around -1, 25 profiles, 7
channels); the work does not depend on the values. No data set is read. `peak_mb` is the most
memory numpy allocated at once during the step (tracemalloc), above the inputs. Both ways are run
`--repeats` times after one untimed warm-up call (numba compiles on first use); the median counts.

Prints JSON: {"customers": n, "messages": n, "profiles": k, "numpy": {"seconds": x, "peak_mb": x},
"kernels": {"seconds": x, "peak_mb": x}, "speedup": x, "max_relative_difference": {...}, "machine": s}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.engagement import em_kernels  # noqa: E402

BLOCK = 65_536  # messages per block in the numpy version (its _MESSAGE_CHUNK)
N_CHANNELS = 7


def make_inputs(customers: int, messages: int, profiles: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.integers(0, customers, messages))
    hour = rng.integers(0, 24, messages)
    y = (rng.random(messages) < 0.25).astype(np.float64)
    d = {
        "n": customers,
        "rows": rows,
        "starts": em_kernels.customer_starts(rows, customers),
        "base": rng.normal(-1.0, 1.0, messages),
        "hour": hour,
        "y": y,
        "channel": rng.integers(0, N_CHANNELS, messages),
        "log_day": rng.normal(0.0, 0.3, messages),
        "lift": rng.normal(0.0, 0.5, (24, profiles)),
        "posterior": rng.dirichlet(np.ones(profiles), size=customers),
        "features": [rng.random((24, profiles)), rng.normal(0.0, 1.0, (24, profiles))],
        "step": rng.normal(0.0, 0.01, N_CHANNELS + 3),
        "moved": rng.normal(0.0, 0.01, (24, profiles)),
    }
    # what the numpy version kept beside the messages
    d["to_customer"] = sparse.csr_matrix(
        (np.ones(messages, dtype=np.float32), (rows, np.arange(messages))), shape=(customers, messages)
    )
    d["to_hour"] = sparse.csr_matrix(
        (np.ones(messages, dtype=np.float32), (hour, np.arange(messages))), shape=(24, messages)
    )
    d["y32"] = y[:, None].astype(np.float32)
    d["blocks"] = [(lo, min(lo + BLOCK, messages)) for lo in range(0, messages, BLOCK)]
    return d


def numpy_iteration(d: dict) -> dict:
    """One iteration's message work as the numpy version did it (float32 cells)."""
    m, k = len(d["base"]), d["lift"].shape[1]
    hours, ch, log_day = d["hour"], d["channel"], d["log_day"]
    # E-step
    log_post = np.zeros((d["n"], k))
    eta = np.empty((m, k), dtype=np.float32)
    for lo, hi in d["blocks"]:
        np.add(d["base"][lo:hi, None], d["lift"][hours[lo:hi]], out=eta[lo:hi], casting="unsafe")
    softplus = np.logaddexp(np.float32(0), eta)
    term = d["y32"] * eta
    term -= softplus
    log_post += d["to_customer"] @ term
    del term
    p_open = np.exp(np.subtract(eta, softplus, out=eta), out=eta)
    del eta, softplus
    # M-step sums
    weights = d["posterior"].astype(np.float32)[d["rows"]]
    residual = d["y32"] - p_open
    residual *= weights
    info = weights * p_open
    info *= np.subtract(1, p_open, out=weights)
    del weights, p_open
    by_hour32 = [f.astype(np.float32) for f in d["features"]]
    r_row, i_row = np.empty(m), np.empty(m)
    sums = [np.empty(m) for _ in range(2)]
    grad_f, hess_f = np.zeros(2), np.zeros((2, 2))
    for lo, hi in d["blocks"]:
        res, inf = residual[lo:hi], info[lo:hi]
        r_row[lo:hi] = res.sum(axis=1, dtype=np.float64)
        i_row[lo:hi] = inf.sum(axis=1, dtype=np.float64)
        feats = [f[hours[lo:hi]] for f in by_hour32]
        weighted = [inf * f for f in feats]
        for a in range(2):
            sums[a][lo:hi] = weighted[a].sum(axis=1, dtype=np.float64)
            grad_f[a] += float((res * feats[a]).sum(dtype=np.float64))
            for b in range(a, 2):
                hess_f[a, b] += float((weighted[a] * feats[b]).sum(dtype=np.float64))
    step = d["step"]
    level = step[:N_CHANNELS][ch] + step[N_CHANNELS + 2] * log_day
    by_hour = [step[N_CHANNELS + a] * d["features"][a] for a in range(2)]
    for lo, hi in d["blocks"]:
        h = hours[lo:hi]
        change = level[lo:hi, None] + by_hour[0][h] + by_hour[1][h]
        residual[lo:hi] -= info[lo:hi] * change.astype(np.float32)
    residual_cell = d["to_hour"] @ residual
    info_cell = d["to_hour"] @ info
    moved = d["moved"].astype(np.float32)
    r_msg = np.empty(m)
    for lo, hi in d["blocks"]:
        residual[lo:hi] -= info[lo:hi] * moved[hours[lo:hi]]
        r_msg[lo:hi] = residual[lo:hi].sum(axis=1, dtype=np.float64)
    return {
        "log_post": log_post,
        "r_row": r_row,
        "i_row": i_row,
        "residual_cell": np.asarray(residual_cell, dtype=np.float64),
        "info_cell": np.asarray(info_cell, dtype=np.float64),
        "r_msg": r_msg,
    }


def kernel_iteration(d: dict) -> dict:
    """The same work with `models/engagement/em_kernels.py` (as `SendTimeModel` now does it)."""
    k = d["lift"].shape[1]
    log_post = np.zeros((d["n"], k))
    em_kernels.add_message_log_likelihood(d["starts"], d["base"], d["hour"], d["y"], d["lift"], log_post)
    s = em_kernels.engagement_sums(
        d["starts"], d["base"], d["hour"], d["y"], d["channel"], N_CHANNELS, d["log_day"],
        d["lift"], d["posterior"], d["features"],
    )  # fmt: skip
    step, ch = d["step"], d["channel"]
    by_hour = step[N_CHANNELS] * d["features"][0] + step[N_CHANNELS + 1] * d["features"][1]
    residual_cell = (
        s.residual_cell
        - np.tensordot(step[:N_CHANNELS], s.info_channel_cell, axes=1)
        - step[N_CHANNELS + 2] * s.info_day_cell
        - s.info_cell * by_hour
    )
    level = step[:N_CHANNELS][ch] + step[N_CHANNELS + 2] * d["log_day"]
    r_msg = (
        s.r_row
        - level * s.i_row
        - step[N_CHANNELS] * s.feature_sums[0]
        - step[N_CHANNELS + 1] * s.feature_sums[1]
        - em_kernels.info_dot(d["starts"], d["base"], d["hour"], d["lift"], d["posterior"], d["moved"])
    )
    return {
        "log_post": log_post,
        "r_row": s.r_row,
        "i_row": s.i_row,
        "residual_cell": residual_cell,
        "info_cell": s.info_cell,
        "r_msg": r_msg,
    }


def timed(fn, d: dict, repeats: int) -> tuple[dict, float, float]:
    fn(d)  # warm-up (numba compiles on first use; numpy touches its pages)
    seconds = []
    for _ in range(repeats):
        tracemalloc.start()
        tick = time.perf_counter()
        out = fn(d)
        seconds.append(time.perf_counter() - tick)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return out, float(np.median(seconds)), peak / 2**20


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=300_000)
    parser.add_argument("--messages", type=int, default=3_300_000)
    parser.add_argument("--profiles", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    d = make_inputs(args.customers, args.messages, args.profiles, args.seed)
    reference, numpy_s, numpy_mb = timed(numpy_iteration, d, args.repeats)
    compiled, kernel_s, kernel_mb = timed(kernel_iteration, d, args.repeats)
    difference = {
        name: float(
            np.abs(compiled[name] - reference[name]).max() / max(np.abs(reference[name]).max(), 1e-12)
        )
        for name in reference
    }
    result = {
        "customers": args.customers,
        "messages": args.messages,
        "profiles": args.profiles,
        "numpy": {"seconds": round(numpy_s, 3), "peak_mb": round(numpy_mb, 1)},
        "kernels": {"seconds": round(kernel_s, 3), "peak_mb": round(kernel_mb, 1)},
        "speedup": round(numpy_s / kernel_s, 2),
        "max_relative_difference": difference,
        "threads": em_kernels._threads(),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, 24 GB, no GPU",
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)
    print(text)
    return result


if __name__ == "__main__":
    main()
