"""One chunk of customers while its events and messages are drawn: their samplers, the order
numbering and the draws that shopping and messaging share, and the event rows they produce."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._catalogue import Catalogue
from ._parameters import CATEGORY_EXTRA_UNITS, ON_PREFERENCE_SHARE, SOCIAL_SHOP, STORE_HOURS, WEB
from ._population import Population
from ._time import Window

# columns of a chunk's events or messages: aligned arrays, one row per event or message
Rows = dict[str, np.ndarray]


class RowSampler:
    """Draw a column index per row from row-specific categorical distributions, vectorised: the
    per-row CDFs are laid end to end, shifted by the row number, and searched once."""

    def __init__(self, probs: np.ndarray):
        probs = np.asarray(probs, dtype=np.float64)
        totals = probs.sum(axis=1, keepdims=True)
        totals[totals <= 0] = 1.0
        cdf = np.cumsum(probs / totals, axis=1)
        cdf[:, -1] = 1.0
        self.n_cols = probs.shape[1]
        self.flat = (cdf + np.arange(probs.shape[0])[:, None]).ravel()

    def draw(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        # keep u away from 1 so that row + u never rounds up into the next row
        pos = np.searchsorted(self.flat, rows + u * (1.0 - 1e-9), side="right")
        return np.clip(pos - rows * self.n_cols, 0, self.n_cols - 1)


def within_group_index(counts: np.ndarray) -> np.ndarray:
    """For rows repeated `counts` times each, the position of every copy inside its group."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(starts, counts)


def event_rows(cust, ts, channel, event_type, product, qty, order) -> Rows:
    """Event columns of a chunk (local customer numbers, order -1 when none); scalars broadcast."""
    size = np.asarray(cust).size
    return {
        "cust": np.asarray(cust, dtype=np.int64),
        "ts": np.asarray(ts, dtype=np.int64),
        "channel": np.broadcast_to(np.asarray(channel, dtype=np.int8), size).copy(),
        "etype": np.broadcast_to(np.asarray(event_type, dtype=np.int8), size).copy(),
        "product": np.broadcast_to(np.asarray(product, dtype=np.int64), size).copy(),
        "qty": np.broadcast_to(np.asarray(qty, dtype=np.float64), size).copy(),
        "order": np.broadcast_to(np.asarray(order, dtype=np.int64), size).copy(),
    }


def concat_rows(parts: Sequence[Rows]) -> Rows:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class CustomerChunk:
    """Customers lo..hi-1 of the population ("local" index = global - lo), with the samplers of
    their taste and shopping channels and the chunk's running order number."""

    def __init__(self, pop: Population, cat: Catalogue, win: Window, lo: int, hi: int):
        self.pop, self.cat, self.win, self.lo, self.hi = pop, cat, win, lo, hi
        self.n = hi - lo
        sl = slice(lo, hi)
        self.taste = RowSampler(pop.taste[sl])
        self.shop = RowSampler(pop.shop_mix[sl])
        buying_mix = pop.shop_mix[sl].copy()
        buying_mix[:, WEB] += buying_mix[:, SOCIAL_SHOP]  # social is browse-only
        buying_mix[:, SOCIAL_SHOP] = 0.0
        self.buying = RowSampler(buying_mix)
        self.next_order = 0

    def global_index(self, cust: np.ndarray) -> np.ndarray:
        return cust + self.lo

    def new_orders(self, count: int) -> np.ndarray:
        orders = np.arange(self.next_order, self.next_order + count, dtype=np.int64)
        self.next_order += count
        return orders

    def products(self, cust, categories, rng) -> np.ndarray:
        g = self.global_index(cust)
        return self.cat.draw(categories, self.pop.style[g], self.pop.price_bin[g], rng.random(cust.size))

    def taste_products(self, cust, rng) -> np.ndarray:
        return self.products(cust, self.taste.draw(cust, rng.random(cust.size)), rng)

    def quantity(self, product, rng) -> np.ndarray:
        return 1.0 + rng.poisson(CATEGORY_EXTRA_UNITS[self.cat.category[product]])

    def local_hours(self, cust, rng, store: np.ndarray | None = None) -> np.ndarray:
        g = self.global_index(cust)
        on_pref = rng.random(cust.size) < ON_PREFERENCE_SHARE
        hour = np.where(
            on_pref,
            (self.pop.pref_hour[g] + self.pop.pref_width[g] * rng.standard_normal(cust.size)) % 24.0,
            rng.uniform(7.0, 23.0, cust.size),
        )
        if store is not None:
            hour = np.where(store, np.clip(hour, *STORE_HOURS), hour)
        return hour
