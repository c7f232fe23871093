"""Candidate sources for the two-stage recommender: cheap scorers that each propose a few hundred products.

Every source answers one question, and the LambdaRank ranker (`models.recs.ranker`) weighs their answers:
- `ALSScorer` (models/recs/als.py): what people with this customer's cross-channel history like;
- `EASENeighbours`: EASE's item-item weights, pruned to each item's strongest neighbours ("similar to");
- `CoOccurrenceScorer`: products bought together in one order or cart session ("bought together");
- `SegmentChannelPopularity`: popular and trending products, overall, per customer segment and per channel;
- replenishment (`PurchaseHistory` + `estimate_cycle_days` + `models.recs.rules`): bought products whose cycle is due;
- buy again (`PurchaseHistory.repeat_weight_`): the customer's own most bought products, recent ones first;
- `NewProductScorer`: products without any history, matched on the customer's favourite categories and
  price band, so a new product can be recommended before anyone has bought it.

The item-item sources implement `ItemScorer` (fit on a matrix, score rows of items), so a known
customer, a new customer with session items and batch scoring are scored the same way. The others
are small classes with `fit(...)` returning self and fitted attributes ending in `_`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from features import columns as c
from features.codes import mapped, positions
from features.interactions import DEFAULT_EVENT_WEIGHTS
from models.base import ItemScorer

SECONDS_PER_DAY = 86400.0
# Event types whose baskets say "bought together": orders, and carts of one session.
BASKET_EVENT_TYPES: tuple[str, ...] = ("purchase", "add_to_cart")


def top_per_row(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keeps the n largest entries of every row (ties: lower column first); a CSR of the same shape."""
    matrix = sp.csr_matrix(matrix)
    matrix.sum_duplicates()
    matrix.sort_indices()
    counts = np.diff(matrix.indptr)
    if n <= 0 or counts.max(initial=0) <= n:
        return matrix
    row = np.repeat(np.arange(matrix.shape[0]), counts)
    order = np.lexsort((matrix.indices, -matrix.data, row))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - np.repeat(matrix.indptr[:-1], counts)
    keep = rank < n
    out = sp.csr_matrix(
        (matrix.data[keep], (row[keep], matrix.indices[keep])), shape=matrix.shape, dtype=matrix.dtype
    )
    out.sort_indices()
    return out


# ------------------------------------------------------------------------------ item-item sources
class ItemItemScorer(ItemScorer):
    """Base of the neighbourhood sources: a sparse item×item matrix `neighbours_`.

    Row i holds the items that go with item i and how strongly; a customer's score for item j is
    `Σ_i x_i · neighbours_[i, j]` over the items i in their row. `anchors` names, for a few
    target items, the customer's item that contributed most: the "because you ..." of the reason.
    """

    neighbours_: sp.csr_matrix

    def _finish(self, neighbours: sp.csr_matrix) -> None:
        self.neighbours_ = sp.csr_matrix(neighbours, dtype=np.float32)
        self.neighbours_.eliminate_zeros()
        self.neighbours_.sort_indices()
        # the transpose (row j = items pointing at j) answers "which of the customer's items explain j"
        self.neighbours_t_ = self.neighbours_.T.tocsr()
        self.neighbours_t_.sort_indices()
        self.n_items_ = self.neighbours_.shape[0]

    def score(self, user_items: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        """Dense scores (rows × items); `user_index` is ignored, the items of each row are all that count."""
        return self.score_sparse(user_items).toarray()

    def score_sparse(self, user_items: sp.csr_matrix) -> sp.csr_matrix:
        """The same scores as a CSR with sorted indices: only items near the row's items are stored,
        which is what makes a request cheap on a large catalogue."""
        user_items = sp.csr_matrix(user_items, dtype=np.float32)
        if user_items.shape[1] != self.n_items_:
            raise ValueError(f"user_items has {user_items.shape[1]} columns, the model {self.n_items_} items")
        scores = (user_items @ self.neighbours_).tocsr()
        scores.sum_duplicates()
        scores.sort_indices()
        return scores

    def anchors(self, items: np.ndarray, weights: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """For each target item, the item of `items` (weighted by `weights`) that scores it highest, or -1.

        Ties go to the lower item index, so explanations are as deterministic as the lists.
        """
        targets = np.asarray(targets, dtype=np.int64)
        out = np.full(len(targets), -1, dtype=np.int64)
        if len(items) == 0 or len(targets) == 0:
            return out
        order = np.argsort(items, kind="stable")
        items_sorted, weights_sorted = np.asarray(items)[order], np.asarray(weights)[order]
        t = self.neighbours_t_
        # every target's row of the transpose at once: (target, candidate item, weight)
        starts = t.indptr[targets].astype(np.int64)
        lengths = t.indptr[targets + 1].astype(np.int64) - starts
        total = int(lengths.sum())
        if total == 0:
            return out
        target = np.repeat(np.arange(len(targets)), lengths)
        at = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths - starts, lengths)
        cand = t.indices[at]
        pos = np.minimum(np.searchsorted(items_sorted, cand), len(items_sorted) - 1)
        hit = items_sorted[pos] == cand
        target, cand = target[hit], cand[hit]
        contribution = t.data[at[hit]] * weights_sorted[pos[hit]]
        # per target the largest contribution, ties to the lowest item id; none when it is not positive
        best = np.lexsort((cand, -contribution, target))
        first = best[np.r_[True, target[best][1:] != target[best][:-1]]] if len(best) else best
        ok = contribution[first] > 0
        out[target[first][ok]] = cand[first][ok]
        return out


def basket_matrix(events: pd.DataFrame, product_ids: np.ndarray) -> sp.csr_matrix:
    """Basket × product matrix (1 = in the basket) from orders and cart sessions.

    A basket is an order (`order_id`) or, for purchase and cart rows without one, the customer's
    session on one channel and one day, which is what a plain transaction log without order ids
    still tells. Products outside `product_ids` are dropped.
    """
    ev = events.loc[
        events[c.EVENT_TYPE].isin(BASKET_EVENT_TYPES) & events[c.PRODUCT_ID].notna(),
        [c.CUSTOMER_ID, c.TS, c.CHANNEL, c.PRODUCT_ID] + ([c.ORDER_ID] if c.ORDER_ID in events else []),
    ]
    n_items = len(product_ids)
    if ev.empty:
        return sp.csr_matrix((0, n_items), dtype=np.float32)
    col = positions(pd.Index(np.asarray(product_ids, dtype=str)), ev[c.PRODUCT_ID])
    has_order = ev[c.ORDER_ID].notna().to_numpy() if c.ORDER_ID in ev else np.zeros(len(ev), dtype=bool)
    basket = np.empty(len(ev), dtype=np.int64)
    n_orders = 0
    if has_order.any():
        basket[has_order], uniques = pd.factorize(ev.loc[has_order, c.ORDER_ID].astype(str))
        n_orders = len(uniques)
    if (~has_order).any():
        rest = ev.loc[~has_order]
        day = rest[c.TS].dt.floor("D")
        basket[~has_order] = (
            n_orders + rest.groupby([rest[c.CUSTOMER_ID], rest[c.CHANNEL], day], sort=False).ngroup()
        )
    keep = col >= 0
    n_baskets = int(basket.max()) + 1
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (basket[keep], col[keep])), shape=(n_baskets, n_items)
    )
    matrix.data[:] = 1.0  # duplicates summed by the constructor: back to "in the basket"
    return matrix


class CoOccurrenceScorer(ItemItemScorer):
    """ "Bought together": how often two products share a basket, normalised by how common each is.

    similarity(i, j) = n_ij / (sqrt(n_i · n_j) + shrinkage), the cosine of the two products' basket
    vectors shrunk towards zero for rare pairs; pairs seen in fewer than `min_count` baskets are
    dropped, then each product keeps its `n_neighbours` best partners. Baskets larger than
    `max_basket_size` (wholesale orders, store restocks) say little about pairs and are skipped.
    """

    def __init__(
        self,
        n_neighbours: int = 100,
        shrinkage: float = 5.0,
        min_count: int = 2,
        max_basket_size: int = 50,
        random_state: int | None = None,
    ):
        self.n_neighbours = n_neighbours
        self.shrinkage = shrinkage
        self.min_count = min_count
        self.max_basket_size = max_basket_size
        self.random_state = random_state

    def fit(self, interactions: sp.csr_matrix) -> CoOccurrenceScorer:
        """`interactions` is a basket × item matrix (see `basket_matrix`)."""
        baskets = sp.csr_matrix(interactions, dtype=np.float32)
        baskets.data[:] = 1.0
        size = np.diff(baskets.indptr)
        baskets = baskets[size <= self.max_basket_size]
        n_per_item = np.asarray(baskets.sum(axis=0)).ravel()
        pairs_from = baskets[np.diff(baskets.indptr) >= 2]
        co = (pairs_from.T @ pairs_from).tocsr()
        co.setdiag(0)
        co.data[co.data < self.min_count] = 0
        co.eliminate_zeros()
        row = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
        norm = np.sqrt(n_per_item[row] * n_per_item[co.indices]) + self.shrinkage
        co.data = (co.data / norm).astype(np.float32)
        self._finish(top_per_row(co, self.n_neighbours))
        self.item_baskets_ = n_per_item
        return self


class EASENeighbours(ItemItemScorer):
    """EASE (Steck 2019) on the most interacted-with products, pruned to each product's top neighbours.

    EASE's dense n² weight matrix is what limits it: fitting inverts an n×n Gram matrix (O(n³),
    4·n² bytes in float32; on one core of this 2-core box 1.1 s for 4,000 items, against 2.3 s in
    float64, and n³ from there). So it is fitted on at most `max_items` products (the rest get no
    EASE score; the other sources still cover them), with a Cholesky inverse (the Gram matrix plus λI is symmetric positive definite,
    about half the work of a general inverse), and only each row's `n_neighbours` largest positive
    weights are kept: serving holds n·n_neighbours numbers instead of n², and a request sums a
    few sparse rows instead of multiplying by a dense matrix.
    """

    def __init__(
        self,
        l2: float = 500.0,
        max_items: int = 10_000,
        n_neighbours: int = 200,
        random_state: int | None = None,
    ):
        self.l2 = l2
        self.max_items = max_items
        self.n_neighbours = n_neighbours
        self.random_state = random_state

    def fit(self, interactions: sp.csr_matrix) -> EASENeighbours:
        if self.l2 <= 0:
            raise ValueError(f"l2 must be positive (it makes XᵀX + λI invertible), got {self.l2}")
        x = sp.csr_matrix(interactions, dtype=np.float64)
        x.eliminate_zeros()
        x.data[:] = 1.0
        n_items = x.shape[1]
        counts = np.asarray(x.sum(axis=0)).ravel()
        seen = np.flatnonzero(counts > 0)
        # the most popular products, ties by index; kept in index order
        chosen = np.sort(seen[np.lexsort((seen, -counts[seen]))[: self.max_items]])
        self.items_ = chosen
        if len(chosen) < 2:
            self._finish(sp.csr_matrix((n_items, n_items), dtype=np.float32))
            return self
        xs = x[:, chosen].astype(np.float32)
        # float32: half the memory and about half the time of the O(n³) inverse; the weights
        # differ from float64 by ~1e-6 relative and each product keeps the same top neighbours.
        # The Gram matrix holds co-occurrence counts, exact in float32 below 2**24.
        gram = (xs.T @ xs).toarray()
        gram[np.diag_indices_from(gram)] += np.float32(self.l2)
        # BLAS is held to one thread for implicit's ALS (models/recs/als.py); the inverse is the one
        # place where every core pays off (2 cores: half the time)
        with threadpool_limits(limits=os.cpu_count() or 1, user_api="blas"):
            p = _spd_inverse(gram)
        p /= -np.diag(p)[np.newaxis, :]  # B_ij = -P_ij / P_jj
        np.fill_diagonal(p, 0.0)
        row, col, weight = _top_dense_per_row(p, self.n_neighbours)
        del p
        # negative weights say "not with"; candidates only need the positive ones
        positive = weight > 0
        full = sp.csr_matrix(
            (weight[positive], (chosen[row[positive]], chosen[col[positive]])),
            shape=(n_items, n_items),
            dtype=np.float32,
        )
        self._finish(full)
        return self


def _top_dense_per_row(matrix: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, value) of the n largest entries of each row of a dense matrix, in row chunks."""
    n_rows, n_cols = matrix.shape
    n = min(n, n_cols)

    def chunk(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block = matrix[start : start + 1024]
        if n < n_cols:
            top = np.argpartition(-block, n - 1, axis=1)[:, :n]
        else:
            top = np.tile(np.arange(n_cols), (len(block), 1))
        rows = np.repeat(np.arange(start, start + len(block)), n)
        return rows, top.ravel(), np.take_along_axis(block, top, axis=1).ravel()

    # numpy releases the GIL while partitioning, so chunks run on every core
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        parts = list(pool.map(chunk, range(0, n_rows, 1024)))
    if not parts:
        return np.array([], np.int64), np.array([], np.int64), np.array([], np.float32)
    rows, cols, values = zip(*parts, strict=True)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values).astype(np.float32)


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix via Cholesky (LAPACK potrf + potri), in place,
    in the matrix's own precision (float32 or float64)."""
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (matrix,))
    factor, info = potrf(matrix, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky factorisation failed (info={info})")
    inverse, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse from the Cholesky factor failed (info={info})")
    # potri fills the upper triangle only: mirror it, a band of rows at a time (index arrays for a
    # whole triangle would take as much memory as the matrix)
    n = inverse.shape[0]
    for start in range(0, n, 1024):
        stop = min(n, start + 1024)
        inverse[start:stop, :start] = inverse[:start, start:stop].T
        band = inverse[start:stop, start:stop]
        band[:] = np.triu(band) + np.triu(band, 1).T
    return inverse


# ------------------------------------------------------------------------------ popularity
class SegmentChannelPopularity:
    """Popular and trending products overall, per customer segment and per channel.

    Popularity counts customers, not events (one heavy buyer does not make a product popular):
    each customer adds the weight of their strongest event with the product (a purchase 5, a cart
    3, a view 1) over the last `window_days` ("popular") or the last `trend_days` ("trending").
    Each table is scaled to a maximum of 1; a request's popularity is the mean of the overall,
    the segment's and the channel's table (those that are known), which also shrinks small
    segments towards the overall taste. `trend_` is log((recent + 1) / (expected + 1)), the last
    `trend_days` against the rate of the rest of the window.
    """

    def __init__(self, window_days: float = 90.0, trend_days: float = 14.0, random_state: int | None = None):
        self.window_days = window_days
        self.trend_days = trend_days
        self.random_state = random_state

    def fit(
        self,
        events: pd.DataFrame,
        product_ids: np.ndarray,
        customer_segment: pd.Series,
        n_segments: int,
        channels: tuple[str, ...],
        as_of: pd.Timestamp,
    ) -> SegmentChannelPopularity:
        """`customer_segment` maps customer id → segment code (0 .. n_segments-1)."""
        n_items = len(product_ids)
        weights = {k: v for k, v in DEFAULT_EVENT_WEIGHTS.items() if v > 0}
        start = as_of - pd.Timedelta(days=self.window_days)
        ev = events.loc[
            (events[c.TS] >= start) & (events[c.TS] < as_of) & events[c.PRODUCT_ID].notna(),
            [c.CUSTOMER_ID, c.TS, c.CHANNEL, c.EVENT_TYPE, c.PRODUCT_ID],
        ]
        w = mapped(ev[c.EVENT_TYPE], weights, 0.0)
        item = positions(pd.Index(np.asarray(product_ids, dtype=str)), ev[c.PRODUCT_ID])
        keep = (w > 0) & (item >= 0)
        ev, w, item = ev[keep], w[keep], item[keep]
        cust = pd.factorize(ev[c.CUSTOMER_ID].astype(str))[0] if len(ev) else np.zeros(0, dtype=np.int64)
        at = positions(pd.Index(customer_segment.index.astype(str)), ev[c.CUSTOMER_ID])
        seg = np.where(at >= 0, customer_segment.to_numpy(np.int64)[np.maximum(at, 0)], -1)
        chan = positions(pd.Index(list(channels)), ev[c.CHANNEL])
        recent = (ev[c.TS] >= as_of - pd.Timedelta(days=self.trend_days)).to_numpy()

        def table(mask, group, n_groups):
            """Σ over customers of their max event weight per (group, item), each group scaled to max 1."""
            if n_groups == 0:
                return np.zeros((0, n_items))
            g, i, u, ww = group[mask], item[mask], cust[mask], w[mask]
            ok = g >= 0
            frame = pd.DataFrame({"g": g[ok], "i": i[ok], "u": u[ok], "w": ww[ok]})
            best = frame.groupby(["g", "i", "u"], sort=False)["w"].max().groupby(level=[0, 1]).sum()
            out = np.zeros((n_groups, n_items))
            if len(best):
                gi = best.index.to_frame(index=False).to_numpy()
                out[gi[:, 0], gi[:, 1]] = best.to_numpy()
            return out

        everyone = np.zeros(len(ev), dtype=np.int64)
        all_rows = np.ones(len(ev), dtype=bool)
        self.global_counts_ = table(all_rows, everyone, 1)[0]
        recent_counts = table(recent, everyone, 1)[0]
        self.global_ = _scale(self.global_counts_)
        self.by_segment_ = _scale(table(all_rows, seg, n_segments))
        self.by_channel_ = _scale(table(all_rows, chan, len(channels)))
        self.recent_global_ = _scale(recent_counts)
        self.recent_by_segment_ = _scale(table(recent, seg, n_segments))
        self.recent_by_channel_ = _scale(table(recent, chan, len(channels)))
        older_days = max(self.window_days - self.trend_days, 1.0)
        expected = (self.global_counts_ - recent_counts) * self.trend_days / older_days
        self.trend_ = np.log((recent_counts + 1.0) / (expected + 1.0))
        return self

    def popular(self, segment: int = -1, channel: int = -1) -> np.ndarray:
        return _mean_of(self.global_, self.by_segment_, self.by_channel_, segment, channel)

    def trending(self, segment: int = -1, channel: int = -1) -> np.ndarray:
        return _mean_of(
            self.recent_global_, self.recent_by_segment_, self.recent_by_channel_, segment, channel
        )

    # fitted tables, in the order they are saved
    TABLES: tuple[str, ...] = (
        "global_counts_",
        "global_",
        "by_segment_",
        "by_channel_",
        "recent_global_",
        "recent_by_segment_",
        "recent_by_channel_",
        "trend_",
    )

    def arrays(self) -> dict[str, np.ndarray]:
        """Fitted tables by file-safe name (`popularity_<table>`), for saving."""
        return {f"popularity_{name.rstrip('_')}": getattr(self, name) for name in self.TABLES}

    @classmethod
    def from_arrays(cls, arrays, **params) -> SegmentChannelPopularity:
        """The inverse of `arrays` (any mapping with those keys, e.g. a loaded npz)."""
        pop = cls(**params)
        for name in cls.TABLES:
            setattr(pop, name, np.asarray(arrays[f"popularity_{name.rstrip('_')}"]))
        return pop


def _scale(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its maximum (rows without any count stay 0); 1-D in, 1-D out."""
    counts = np.asarray(counts, dtype=np.float64)
    two_d = np.atleast_2d(counts)
    top = two_d.max(axis=1, keepdims=True) if two_d.shape[1] else np.zeros((two_d.shape[0], 1))
    scaled = np.divide(two_d, top, out=np.zeros_like(two_d), where=top > 0)
    return scaled if counts.ndim == 2 else scaled[0]


def _mean_of(overall, by_segment, by_channel, segment: int, channel: int) -> np.ndarray:
    parts = [overall]
    if 0 <= segment < len(by_segment):
        parts.append(by_segment[segment])
    if 0 <= channel < len(by_channel):
        parts.append(by_channel[channel])
    return np.mean(parts, axis=0) if len(parts) > 1 else overall.copy()


# ------------------------------------------------------------------------------ replenishment
class PurchaseHistory:
    """When and how often each customer bought each product, as of a point in time.

    `last_age_days_` (CSR float32, customers × products): days from the last purchase to `as_of`,
    always > 0 for a bought pair (a stored zero would read as "never bought"); `n_purchases_`
    (CSR float32): purchase events per pair; `repeat_weight_` (CSR float32): the purchases
    weighted by recency, Σ 0.5^(age / half_life_days), the "buy again" source's score (the
    customer's own most bought products, recent ones first). Rows and columns follow the given
    id orders.
    """

    def __init__(self, half_life_days: float = 90.0):
        self.half_life_days = half_life_days

    def fit(
        self, events: pd.DataFrame, customer_ids: np.ndarray, product_ids: np.ndarray, as_of: pd.Timestamp
    ) -> PurchaseHistory:
        buys = events.loc[
            (events[c.EVENT_TYPE] == "purchase") & events[c.PRODUCT_ID].notna() & (events[c.TS] < as_of),
            [c.CUSTOMER_ID, c.PRODUCT_ID, c.TS],
        ]
        shape = (len(customer_ids), len(product_ids))
        row = positions(pd.Index(np.asarray(customer_ids, dtype=str)), buys[c.CUSTOMER_ID])
        col = positions(pd.Index(np.asarray(product_ids, dtype=str)), buys[c.PRODUCT_ID])
        ok = (row >= 0) & (col >= 0)
        row, col = row[ok], col[ok]
        age = (as_of - buys[c.TS][ok]).dt.total_seconds().to_numpy() / SECONDS_PER_DAY
        age = np.maximum(age, 1e-6)
        count = sp.csr_matrix((np.ones(len(row), dtype=np.float32), (row, col)), shape=shape)
        decay = np.exp2(-age / max(float(self.half_life_days), 1e-9)).astype(np.float32)
        # a floor keeps a purchase long ago stored (a zero would read as "never bought")
        self.repeat_weight_ = sp.csr_matrix((np.maximum(decay, 1e-30), (row, col)), shape=shape).tocsr()
        self.repeat_weight_.sum_duplicates()
        self.repeat_weight_.sort_indices()
        # the latest purchase per pair = the smallest age: order so the first occurrence wins
        order = np.lexsort((age, col, row))
        row_s, col_s, age_s = row[order], col[order], age[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = (row_s[1:] != row_s[:-1]) | (col_s[1:] != col_s[:-1])
        self.last_age_days_ = sp.csr_matrix(
            (age_s[first].astype(np.float32), (row_s[first], col_s[first])), shape=shape
        )
        self.last_age_days_.sort_indices()
        self.n_purchases_ = count.tocsr()
        self.n_purchases_.sort_indices()
        return self


def estimate_cycle_days(
    events: pd.DataFrame,
    product_ids: np.ndarray,
    as_of: pd.Timestamp,
    min_customers: int = 5,
    min_repeat_share: float = 0.2,
) -> np.ndarray:
    """Replenishment cycle per product from repeat purchases (NaN: not evidently replenished).

    For products bought again by at least `min_customers` customers, and by at least
    `min_repeat_share` of their buyers, the cycle is the median gap in days between a customer's
    consecutive purchase days of the product. Used when the products table gives no cycles at all
    (a plain transaction log); a table that fills `replenishment_days` is trusted as it is.
    """
    buys = events.loc[
        (events[c.EVENT_TYPE] == "purchase") & events[c.PRODUCT_ID].notna() & (events[c.TS] < as_of),
        [c.CUSTOMER_ID, c.PRODUCT_ID, c.TS],
    ]
    out = np.full(len(product_ids), np.nan)
    if buys.empty:
        return out
    day = (buys[c.TS] - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy() // SECONDS_PER_DAY
    frame = pd.DataFrame(
        {
            "u": buys[c.CUSTOMER_ID].astype(str).to_numpy(),
            "i": buys[c.PRODUCT_ID].astype(str).to_numpy(),
            "d": day,
        }
    )
    frame = frame.drop_duplicates().sort_values(["i", "u", "d"], kind="stable")
    same = (frame["i"].to_numpy()[1:] == frame["i"].to_numpy()[:-1]) & (
        frame["u"].to_numpy()[1:] == frame["u"].to_numpy()[:-1]
    )
    gaps = pd.DataFrame(
        {
            "i": frame["i"].to_numpy()[1:][same],
            "u": frame["u"].to_numpy()[1:][same],
            "gap": np.diff(frame["d"].to_numpy())[same],
        }
    )
    buyers = frame.groupby("i")["u"].nunique()
    repeaters = gaps.groupby("i")["u"].nunique()
    median_gap = gaps.groupby("i")["gap"].median()
    share = (repeaters / buyers.reindex(repeaters.index)).fillna(0.0)
    ok = (repeaters >= min_customers) & (share >= min_repeat_share) & (median_gap >= 1)
    cycles = median_gap[ok]
    pos = pd.Index(np.asarray(product_ids, dtype=str)).get_indexer(cycles.index.astype(str))
    out[pos[pos >= 0]] = cycles.to_numpy(np.float64)[pos >= 0]
    return out


def replenishment_scores(ratio: np.ndarray, due_from: float, width: float = 0.5) -> np.ndarray:
    """How due a bought product is: 1 at exactly one cycle, fading (in log time) either side; 0 before `due_from`."""
    ratio = np.asarray(ratio, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.exp(-(np.log(np.maximum(ratio, 1e-9)) ** 2) / (2 * width**2))
    return np.where(at_least(ratio, due_from), score, 0.0)


def at_least(ratio: np.ndarray, threshold: float) -> np.ndarray:
    """`np.nan_to_num(ratio, nan=-1.0) >= threshold` (NaN reads as -1), without the copies."""
    ratio = np.asarray(ratio, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = ratio >= threshold
    if threshold <= -1.0:
        out |= np.isnan(ratio)
    return out


# ------------------------------------------------------------------------------ new products
class NewProductScorer:
    """Content-based scores for products without history: category affinity × price-band match.

    score(customer, item) = affinity[customer, category(item)] · exp(-(log price - μ)² / (2 σ²)),
    with μ, σ the customer's usual log price (σ at least `price_width`). Only products in
    `new_items_` (no events before `as_of`, active) are scored, so the rest of the catalogue costs
    nothing here.
    """

    def __init__(self, price_width: float = 0.5, random_state: int | None = None):
        self.price_width = price_width
        self.random_state = random_state

    def fit(
        self, item_category: np.ndarray, item_log_price: np.ndarray, is_new: np.ndarray
    ) -> NewProductScorer:
        self.new_items_ = np.flatnonzero(is_new)
        self.new_category_ = np.asarray(item_category)[self.new_items_]
        self.new_log_price_ = np.asarray(item_log_price, dtype=np.float64)[self.new_items_]
        return self

    def score(self, affinity: np.ndarray, price_mu: np.ndarray, price_sigma: np.ndarray) -> np.ndarray:
        """(rows × len(new_items_)) scores from per-row category affinities and price bands."""
        affinity = np.atleast_2d(affinity)
        if len(self.new_items_) == 0:
            return np.zeros((affinity.shape[0], 0))
        base = affinity[:, self.new_category_]
        sigma = np.maximum(np.nan_to_num(price_sigma, nan=self.price_width), self.price_width)[:, None]
        gap = self.new_log_price_[None, :] - np.asarray(price_mu, dtype=np.float64)[:, None]
        band = np.exp(-(gap**2) / (2 * sigma**2))
        band = np.where(np.isnan(band), 1.0, band)  # unknown usual price: category alone decides
        return base * band
