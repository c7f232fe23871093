"""Business rules for product lists, as pure functions over numpy arrays.

The online request path and batch scoring call exactly these functions, so a rule cannot hold in
one and not in the other. Every function takes per-item arrays (indexed like the model's
catalogue) and returns a boolean mask or an ordering; none of them reads a DataFrame, so they cost
microseconds per request. Only `channel_eligibility` reads the products table, once, at fit time.

The rules, and where `TwoStageRecommender` applies them:
- before candidate generation (so strict filters never starve a list): inactive products, the
  request's `exclude` ids and the context items themselves, category include/exclude and the price
  range, and every product the customer bought when the request asks for new ones only
  (`Filters.exclude_purchased`; otherwise how many bought products come back is learned, see
  `models.recs.list_order`);
- after ranking, on the ranked list: channel eligibility, then at most `max_per_category` items
  per category (greedy, best first), then the reserved slot for new products.
Channel eligibility is deliberately applied only after ranking: then the same customer and context
give the same ordered list on every channel, minus the items not sold there.

Channel eligibility of a product comes from optional products columns (all absent = sold
everywhere):
- `channels`: comma-separated channel names where the product is available, or a list column
  (empty = everywhere);
- `store_only` (bool): only on the store channels (`STORE_CHANNELS`);
- `online_only` (bool): on every channel except the store channels.
Several present columns must all allow the channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import columns as c

# Optional products columns for channel eligibility. They belong in features/columns.py; the
# getattr keeps this module working until they are added there (then these become plain aliases).
PRODUCT_CHANNELS = getattr(c, "CHANNELS", "channels")
STORE_ONLY = getattr(c, "STORE_ONLY", "store_only")
ONLINE_ONLY = getattr(c, "ONLINE_ONLY", "online_only")

# Channels that count as "the store" for store_only / online_only.
STORE_CHANNELS: tuple[str, ...] = ("store",)


@dataclass(frozen=True)
class Filters:
    """Request-level rules. None / empty means "no restriction".

    - `include_categories`: only these categories; `exclude_categories`: never these.
    - `price_min`, `price_max`: inclusive price range.
    - `max_per_category`: diversity cap, at most this many items of one category in the list.
    - `exclude_purchased`: only products the customer never bought (the list of new products;
      by default bought products compete with the rest, as many as the data say they should).
    """

    include_categories: tuple[str, ...] | None = None
    exclude_categories: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    max_per_category: int | None = None
    exclude_purchased: bool = False

    @classmethod
    def from_dict(cls, values: Mapping | Filters | None) -> Filters:
        """From a request's `filters` (a dict, or a pydantic model such as the HTTP schema's);
        `categories` is accepted for `include_categories`, and None values mean "not set"."""
        if values is None:
            return cls()
        if isinstance(values, Filters):
            return values
        if hasattr(values, "model_dump"):
            values = values.model_dump()
        values = {key: value for key, value in values.items() if value is not None}
        known = set(cls.__dataclass_fields__) | {"categories"}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown filter(s) {sorted(unknown)}; expected some of {sorted(known)}")
        include = values.get("include_categories", values.get("categories"))
        max_per = values.get("max_per_category")
        if max_per is not None and int(max_per) < 1:
            raise ValueError(f"max_per_category must be at least 1, got {max_per}")
        lo, hi = values.get("price_min"), values.get("price_max")
        if lo is not None and hi is not None and float(lo) > float(hi):
            raise ValueError(f"price_min {lo} is above price_max {hi}")
        return cls(
            include_categories=None if include is None else tuple(str(x) for x in include),
            exclude_categories=tuple(str(x) for x in values.get("exclude_categories") or ()),
            price_min=None if lo is None else float(lo),
            price_max=None if hi is None else float(hi),
            max_per_category=None if max_per is None else int(max_per),
            exclude_purchased=bool(values.get("exclude_purchased", False)),
        )

    def restricts_items(self) -> bool:
        """True when the filter takes items out before ranking (category or price rules)."""
        return (
            self.include_categories is not None
            or bool(self.exclude_categories)
            or self.price_min is not None
            or self.price_max is not None
        )


# ------------------------------------------------------------------------------ item masks
def ids_mask(n_items: int, product_index: Mapping[str, int], product_ids: Iterable[str] | None) -> np.ndarray:
    """True for the catalogue positions of `product_ids` (unknown ids are ignored)."""
    mask = np.zeros(n_items, dtype=bool)
    for pid in product_ids or ():
        j = product_index.get(str(pid))
        if j is not None:
            mask[j] = True
    return mask


def filter_mask(
    item_category: np.ndarray, item_price: np.ndarray, categories: Sequence[str], filters: Filters
) -> np.ndarray:
    """True for items the category and price rules of `filters` allow.

    `item_category` holds codes into `categories`; a price that is NaN (unknown) fails any price
    bound, because "at most 20" cannot be promised for it.
    """
    allowed = np.ones(len(item_category), dtype=bool)
    code_of = {name: i for i, name in enumerate(categories)}
    if filters.include_categories is not None:
        codes = [code_of[x] for x in filters.include_categories if x in code_of]
        allowed &= np.isin(item_category, np.asarray(codes, dtype=item_category.dtype))
    if filters.exclude_categories:
        codes = [code_of[x] for x in filters.exclude_categories if x in code_of]
        allowed &= ~np.isin(item_category, np.asarray(codes, dtype=item_category.dtype))
    if filters.price_min is not None:
        allowed &= item_price >= filters.price_min
    if filters.price_max is not None:
        allowed &= item_price <= filters.price_max
    return allowed


def replenishment_ratio(age_days: np.ndarray, cycle_days: np.ndarray) -> np.ndarray:
    """Days since the last purchase divided by the product's cycle (NaN: not replenishable)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(age_days, dtype=np.float64) / np.asarray(cycle_days, dtype=np.float64)


def is_due(ratio: np.ndarray, due_from: float) -> np.ndarray:
    """A bought replenishable product is due again once `ratio` reaches `due_from` (NaN: never)."""
    ratio = np.asarray(ratio, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = ratio >= due_from  # NaN compares False: never due (as NaN read as -1 would be)
    if due_from <= -1.0:
        out |= np.isnan(ratio)
    return out


# ------------------------------------------------------------------------------ channels
def channel_eligibility(
    products: pd.DataFrame | None, product_ids: np.ndarray, channels: Sequence[str]
) -> np.ndarray:
    """Boolean matrix (n_items × (len(channels) + 1)): may product i be shown on channel j.

    The last column stands for a channel the model does not know: only products without any
    channel restriction are shown there. Products missing from `products` are unrestricted.
    """
    n_items, n_channels = len(product_ids), len(channels)
    eligible = np.ones((n_items, n_channels + 1), dtype=bool)
    if products is None or not len(products):
        return eligible
    present = [col for col in (PRODUCT_CHANNELS, STORE_ONLY, ONLINE_ONLY) if col in products.columns]
    if not present:
        return eligible
    table = products.drop_duplicates(c.PRODUCT_ID)
    table = table.set_index(pd.Index(table[c.PRODUCT_ID].astype(str).to_numpy(dtype=object)))
    position = pd.Index(table.index).get_indexer(np.asarray(product_ids, dtype=str))
    listed = position >= 0
    rows = position[listed]
    is_store = np.array([ch in STORE_CHANNELS for ch in channels] + [False])
    restricted = np.zeros(n_items, dtype=bool)

    if PRODUCT_CHANNELS in present:
        raw = table[PRODUCT_CHANNELS].to_numpy(dtype=object)[rows]
        for out_row, value in zip(np.flatnonzero(listed), raw, strict=True):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            # "web,app" text, or a list column (Parquet)
            parts = value if isinstance(value, list | tuple | np.ndarray) else str(value).split(",")
            names = {str(part).strip().lower() for part in parts if str(part).strip()}
            if not names:
                continue
            eligible[out_row, :n_channels] &= np.array([ch.lower() in names for ch in channels])
            restricted[out_row] = True
    for col, keep_store in ((STORE_ONLY, True), (ONLINE_ONLY, False)):
        if col not in present:
            continue
        flag = np.zeros(n_items, dtype=bool)
        flag[listed] = _as_bool(table[col].to_numpy(dtype=object)[rows])
        allowed_channels = is_store if keep_store else ~is_store
        eligible[flag] &= allowed_channels
        restricted |= flag
    eligible[restricted, n_channels] = False
    return eligible


def _as_bool(values: np.ndarray) -> np.ndarray:
    """Flags from booleans, numbers or strings (a CSV column arrives as "true"/"false" text)."""
    out = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values.tolist()):
        if isinstance(value, str):
            out[i] = value.strip().lower() in ("true", "t", "yes", "y", "1")
        elif value is not None and not (isinstance(value, float) and np.isnan(value)):
            out[i] = bool(value)
    return out


def channel_column(channels: Sequence[str], channel: str | None) -> int | None:
    """Column of `channel_eligibility` for a request channel; None = no channel rule (batch)."""
    if channel is None:
        return None
    try:
        return list(channels).index(channel)
    except ValueError:
        return len(channels)


# ------------------------------------------------------------------------------ list shaping
def cap_per_category(
    ranked_items: np.ndarray, item_category: np.ndarray, max_per_category: int | None, k: int
) -> np.ndarray:
    """Positions in `ranked_items` (best first) kept under a per-category cap, at most k of them.

    Greedy from the top: an item is skipped when its category already has `max_per_category`
    items in the list, and the next one is considered instead.
    """
    n = len(ranked_items)
    if max_per_category is None:
        return np.arange(min(k, n))
    counts: dict[int, int] = {}
    kept: list[int] = []
    for pos, cat in enumerate(item_category[ranked_items].tolist()):
        if counts.get(cat, 0) >= max_per_category:
            continue
        counts[cat] = counts.get(cat, 0) + 1
        kept.append(pos)
        if len(kept) == k:
            break
    return np.asarray(kept, dtype=np.int64)


def select_positions(
    ranked_categories: np.ndarray,
    k: int,
    max_per_category: int | None = None,
    reserved: np.ndarray | None = None,
    n_reserved_slots: int = 0,
) -> np.ndarray:
    """Positions of a ranked list (best first) that make the final list, in ranked order.

    `ranked_categories[p]` is the category code of the item at position p. At most
    `max_per_category` items per category (greedy from the top); `reserved` (bool per position,
    e.g. new products) guarantees up to `n_reserved_slots` of those items a place: when the plain
    top k holds fewer, the best reserved ones that fit under the cap replace the last ordinary
    items. Sorted positions keep the shown scores monotone.
    """
    ranked_categories = np.asarray(ranked_categories)
    kept = cap_per_category(np.arange(len(ranked_categories)), ranked_categories, max_per_category, k)
    if n_reserved_slots <= 0 or reserved is None or not reserved.any():
        return kept
    missing = n_reserved_slots - int(reserved[kept].sum())
    positions = np.arange(len(ranked_categories))
    # try to place all missing reserved items, then one fewer, ... (there may be fewer that fit)
    for n_extra in range(missing, 0, -1):
        head = cap_per_category(positions, ranked_categories, max_per_category, max(0, k - n_extra))
        counts = np.bincount(ranked_categories[head], minlength=int(ranked_categories.max()) + 1)
        in_head = np.zeros(len(ranked_categories), dtype=bool)
        in_head[head] = True
        extra: list[int] = []
        for pos in np.flatnonzero(reserved & ~in_head).tolist():
            cat = int(ranked_categories[pos])
            if max_per_category is not None and counts[cat] >= max_per_category:
                continue
            counts[cat] += 1
            extra.append(pos)
            if len(extra) == n_extra:
                return np.sort(np.concatenate([head, np.asarray(extra, dtype=np.int64)]))
    return kept
