"""The events of a chunk as the source systems log them: only what happened inside the window
and was seen (anonymous store purchases are not), under the id each channel knows the customer
by, with the store, the amount and an order key per row."""

from __future__ import annotations

import numpy as np

from ._chunk import CustomerChunk, Rows, concat_rows
from ._ids import ORDER_SLOTS
from ._parameters import (
    APP,
    APP_DEVICE_ID_SHARE,
    CANONICAL,
    DEVICE,
    HOME_STORE_SHARE,
    LOYALTY,
    PURCHASE,
    RETURN,
    STORE,
    STORES_PER_ZONE,
)


def observed_events(chunk: CustomerChunk, parts: list[Rows], rng: np.random.Generator) -> Rows:
    """Drop what was never observed, choose the id each channel logs, number the orders."""
    pop, cat, win = chunk.pop, chunk.cat, chunk.win
    ev = concat_rows(parts)
    g = chunk.global_index(ev["cust"])
    observed = (ev["ts"] >= win.start_us) & (ev["ts"] < win.end_us)
    observed &= ~((ev["channel"] == STORE) & ~pop.has_loyalty[g])  # anonymous store purchase
    ev = {k: v[observed] for k, v in ev.items()}
    g = chunk.global_index(ev["cust"])
    n = g.size

    id_kind = np.full(n, CANONICAL, dtype=np.int8)
    id_kind[ev["channel"] == STORE] = LOYALTY
    id_kind[(ev["channel"] == APP) & (rng.random(n) < APP_DEVICE_ID_SHARE)] = DEVICE

    store = np.full(n, -1, dtype=np.int64)
    in_store = ev["channel"] == STORE
    away = rng.random(n) >= HOME_STORE_SHARE
    other_store = pop.tz[g].astype(np.int64) * STORES_PER_ZONE + rng.integers(0, STORES_PER_ZONE, n)
    store[in_store] = np.where(away, other_store, pop.home_store[g])[in_store]

    priced = (ev["etype"] == PURCHASE) | (ev["etype"] == RETURN)
    amount = np.where(priced, np.round(cat.price[np.maximum(ev["product"], 0)] * ev["qty"], 2), 0.0)

    return {
        "gidx": g.astype(np.int64),
        "seq": np.arange(n, dtype=np.int64),
        "ts": ev["ts"],
        "id_kind": id_kind,
        "channel": ev["channel"],
        "etype": ev["etype"],
        "product": ev["product"],
        "qty": ev["qty"],
        "amount": amount,
        "order_key": _order_keys(ev, g),
        "store": store,
    }


def _order_keys(ev: Rows, g: np.ndarray) -> np.ndarray:
    """Per row, global customer number * ORDER_SLOTS + the rank of the order among the customer's
    orders by time (-1 without an order); the writer scrambles the key into the order id."""
    order_key = np.full(g.size, -1, dtype=np.int64)
    has_order = np.flatnonzero(ev["order"] >= 0)
    if not has_order.size:
        return order_key
    local_order = ev["order"][has_order]
    by_order = has_order[np.lexsort((ev["ts"][has_order], local_order))]
    uniq, first = np.unique(ev["order"][by_order], return_index=True)
    o_rows = by_order[first]  # the earliest row of each order
    o_g, o_ts = g[o_rows], ev["ts"][o_rows]
    rank_order = np.lexsort((uniq, o_ts, o_g))
    sorted_g = o_g[rank_order]
    group_start = np.searchsorted(sorted_g, sorted_g, side="left")
    seq = np.empty(uniq.size, dtype=np.int64)
    seq[rank_order] = np.arange(uniq.size) - group_start
    if seq.max() >= ORDER_SLOTS:
        raise RuntimeError("too many orders for one customer")
    key_of = o_g * ORDER_SLOTS + seq
    order_key[has_order] = key_of[np.searchsorted(uniq, local_order)]
    return order_key
