"""The weighted customer×product interaction matrix that the recommenders learn from.

Every channel's events land in one matrix, so a product viewed in the app and bought in the store
counts for the same customer. Event types weigh differently (a purchase says more than a view),
returns take weight away, and older events fade with a half-life so that recent taste counts most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features import columns as c
from features.codes import mapped, positions

# Why these numbers: a purchase is the strongest implicit signal, a cart a strong intent signal, a
# view a weak one; a return mostly cancels the purchase it follows. Unknown types weigh nothing.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "wishlist": 2.0,
    "add_to_cart": 3.0,
    "remove_from_cart": 0.0,
    "purchase": 5.0,
    "return": -4.0,
    "search": 0.0,
}


@dataclass
class InteractionMatrix:
    """A CSR matrix plus the ids its rows and columns stand for."""

    matrix: sp.csr_matrix  # float32 weights, rows = customers, columns = products
    purchased: sp.csr_matrix  # bool: the customer bought the product (net of nothing: returns kept)
    customer_ids: np.ndarray  # str, row order
    product_ids: np.ndarray  # str, column order

    def customer_index(self) -> dict[str, int]:
        return {cid: i for i, cid in enumerate(self.customer_ids.tolist())}


def build_interactions(
    events: pd.DataFrame,
    product_ids: np.ndarray | None = None,
    customer_ids: np.ndarray | None = None,
    as_of: pd.Timestamp | None = None,
    half_life_days: float | None = 90.0,
    event_weights: dict[str, float] | None = None,
    before: pd.Timestamp | None = None,
) -> InteractionMatrix:
    """Aggregate events into a weighted matrix.

    `product_ids` / `customer_ids` fix the column / row order (events with other ids are dropped
    for products; customers not listed are added after the listed ones). `as_of` is the time the
    recency decay is measured from (default: the latest event). `before`: only events strictly
    before this time count (the same as passing `events[events.ts < before]`, without the copy).
    """
    weights = event_weights or DEFAULT_EVENT_WEIGHTS
    # Row masks over the columns instead of filtered copies of the frame: at a million customers
    # every copy of the events is gigabytes. The kept rows and their order are the same.
    used = events[c.PRODUCT_ID].notna().to_numpy()
    in_window = None
    if before is not None:
        in_window = (events[c.TS] < before).to_numpy()
        used = used & in_window
    if product_ids is None:
        product_ids = np.sort(events[c.PRODUCT_ID][used].astype(str).unique())
    product_ids = np.asarray(product_ids, dtype=str)
    customers = events[c.CUSTOMER_ID] if in_window is None else events[c.CUSTOMER_ID][in_window]
    if customer_ids is None:
        customer_ids = np.sort(customers.astype(str).unique())
    else:
        customer_ids = np.asarray(customer_ids, dtype=str)
        # pd.Index.difference hashes; np.setdiff1d on strings sorts and is ~100x slower here
        extra = pd.Index(customers.astype(str).unique()).difference(pd.Index(customer_ids))
        customer_ids = np.concatenate([customer_ids, np.sort(extra.to_numpy(dtype=str))])
    del customers

    col = positions(pd.Index(product_ids), events[c.PRODUCT_ID])
    row = positions(pd.Index(customer_ids), events[c.CUSTOMER_ID])
    w = mapped(events[c.EVENT_TYPE], weights, 0.0)
    if half_life_days and used.any():
        ts = events[c.TS]
        ref = as_of if as_of is not None else ts[used].max()
        age_days = (ref - ts).dt.total_seconds().to_numpy() / 86400.0
        w = w * np.power(0.5, np.clip(age_days, 0, None) / half_life_days)
        del age_days
    keep = used & (col >= 0) & (row >= 0) & (w != 0)
    shape = (len(customer_ids), len(product_ids))
    matrix = sp.csr_matrix((w[keep], (row[keep], col[keep])), shape=shape, dtype=np.float64)
    del w
    matrix.data = np.clip(matrix.data, 0.0, None)  # a return can cancel, never go below nothing
    matrix.eliminate_zeros()

    bought = keep & (events[c.EVENT_TYPE] == "purchase").to_numpy(dtype=bool, na_value=False)
    purchased = sp.csr_matrix(
        (np.ones(int(bought.sum()), dtype=bool), (row[bought], col[bought])), shape=shape, dtype=bool
    )
    return InteractionMatrix(
        matrix=matrix.astype(np.float32),
        purchased=purchased,
        customer_ids=customer_ids,
        product_ids=product_ids,
    )
