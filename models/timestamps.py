"""Timestamps as int64 microseconds since the epoch (UTC): how the models hold times in arrays
(compact, comparable with integer operations, never pickled), and the units they count in."""

from __future__ import annotations

import numpy as np
import pandas as pd

US_PER_SECOND = 1_000_000
US_PER_HOUR = 3600 * US_PER_SECOND
US_PER_DAY = 86_400 * US_PER_SECOND
NAT_US = np.iinfo(np.int64).min  # datetime64's NaT as int64


def to_us(ts) -> np.ndarray:
    """int64 µs since the epoch of timestamps (Series, Index, array or scalar); NaT → `NAT_US`.

    Naive timestamps are taken as UTC; an int64 array is taken as µs already and returned as is.
    """
    if isinstance(ts, pd.Timestamp):
        ns = ts.value  # ns since the epoch of the UTC instant (of the wall time for a naive one)
        if ns % 1000 == 0:  # a whole µs (every `now` is): no conversion (a decision asks often)
            return np.array([ns // 1000], dtype=np.int64)
        ts = ts.tz_convert("UTC") if ts.tzinfo is not None else ts.tz_localize("UTC")
        return np.array([ts.as_unit("us").asm8.astype(np.int64)], dtype=np.int64)
    if isinstance(ts, np.ndarray) and ts.dtype == np.int64:
        return ts
    index = pd.DatetimeIndex(ts)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    return index.as_unit("us").asi8.copy()


def from_us(us: int) -> pd.Timestamp:
    """The UTC timestamp of µs since the epoch."""
    return pd.Timestamp(int(us), unit="us", tz="UTC")
