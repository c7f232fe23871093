"""Positions of many repeated ids in an index, hashing each distinct id once.

Event tables repeat every customer and product id dozens of times. `pd.Index.get_indexer` on the
raw column hashes every row's string (seconds at a few million events, minutes at tens of
millions); factorizing first (one pass over the column's own codes) and looking up only the
distinct ids is several times faster and builds no per-row Python strings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def positions(index: pd.Index, values: pd.Series | np.ndarray) -> np.ndarray:
    """Position in `index` of each of `values` (compared as strings), -1 where absent or missing."""
    codes, uniques = pd.factorize(pd.Series(values, copy=False), use_na_sentinel=True)
    if len(uniques) == 0:
        return np.full(len(codes), -1, dtype=np.int64)
    found = np.asarray(index.get_indexer(pd.Index(uniques).astype(str)), dtype=np.int64)
    return np.where(codes >= 0, found[np.maximum(codes, 0)], -1)


def mapped(values: pd.Series, mapping: dict, default: float) -> np.ndarray:
    """`values.map(mapping).fillna(default)` as float64, one dict look-up per distinct value."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    table = np.array([mapping.get(u, default) for u in uniques] + [default], dtype=np.float64)
    return table[np.where(codes >= 0, codes, len(uniques))]
