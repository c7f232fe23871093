"""Identity stitching: attribute rows logged under source ids (loyalty card, app device, web
cookie, ...) to the canonical customer id that `identities` maps them to.

The join is on `source_id` alone, or on (`source_system`, `source_id`) for a table that carries a
`source_system` column. Ids that are already canonical stay, ids that identities does not know
stay as they are (they are their own customer). The lookups are arrow hash joins, so stitching
tens of millions of event rows takes seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import columns as c
from features.io import Tables
from features.validation import STRING_DTYPE

# Tables whose customer_id column may hold source ids.
STITCHED_TABLES: tuple[str, ...] = ("events", "messages", "consent")
# Joins (source_system, source_id) pairs as one string; a unit separator never occurs in ids.
_PAIR_SEPARATOR = "\x1f"


def stitch_identities(tables: Tables) -> Tables:
    """A copy of `tables` with customer ids in events, messages and consent made canonical."""
    identities = tables.identities
    if identities is None or len(identities) == 0:
        return dataclasses.replace(tables, notes=list(tables.notes), derived=list(tables.derived))

    identities = identities.dropna(subset=[c.SOURCE_ID, c.CUSTOMER_ID])
    if tables.customers is not None:
        canonical = tables.customers[c.CUSTOMER_ID]
    else:
        canonical = identities[c.CUSTOMER_ID]

    changes: dict[str, pd.DataFrame] = {}
    notes = list(tables.notes)
    for name in STITCHED_TABLES:
        frame = getattr(tables, name)
        if frame is None or c.CUSTOMER_ID not in frame.columns:
            continue
        stitched_ids, reattributed = canonical_customer_ids(frame, identities, canonical)
        changes[name] = frame.assign(**{c.CUSTOMER_ID: stitched_ids})
        rows = "event rows" if name == "events" else f"{name} rows"
        if name == "events" or reattributed:
            notes.append(
                f"identity stitching: {reattributed:,} of {len(frame):,} {rows} re-attributed to "
                "canonical customer ids via identities"
            )
    return dataclasses.replace(tables, **changes, notes=notes, derived=list(tables.derived))


def canonical_customer_ids(
    frame: pd.DataFrame, identities: pd.DataFrame, canonical: pd.Series
) -> tuple[pd.Series, int]:
    """The canonical customer id of every row of `frame`, and how many rows changed."""
    ids = _arrow(frame[c.CUSTOMER_ID])
    if c.SOURCE_SYSTEM in frame.columns:
        # An explicit (system, id) pair is unambiguous: it wins even over a canonical id.
        mapping = identities.dropna(subset=[c.SOURCE_SYSTEM]).drop_duplicates([c.SOURCE_SYSTEM, c.SOURCE_ID])
        keys = _pair_keys(_arrow(frame[c.SOURCE_SYSTEM]), ids)
        mapping_keys = _pair_keys(_arrow(mapping[c.SOURCE_SYSTEM]), _arrow(mapping[c.SOURCE_ID]))
    else:
        mapping = _unambiguous_source_ids(identities, canonical)
        keys = ids
        mapping_keys = _arrow(mapping[c.SOURCE_ID])

    position = pc.index_in(keys, value_set=_combined(mapping_keys))
    mapped = pc.take(_combined(_arrow(mapping[c.CUSTOMER_ID])), position)  # null where not found
    stitched = pc.coalesce(mapped, ids)
    reattributed = int(pc.sum(pc.fill_null(pc.not_equal(stitched, ids), False)).as_py() or 0)
    series = pd.Series(stitched, index=frame.index, dtype=STRING_DTYPE)  # zero-copy
    return series, reattributed


def _unambiguous_source_ids(identities: pd.DataFrame, canonical: pd.Series) -> pd.DataFrame:
    """source_id -> customer_id rows usable without a source system.

    Dropped: source ids mapped to several customers (validation reports them when events need
    them) and source ids that are some other customer's canonical id (canonical ids stay).
    """
    customers_per_id = identities.groupby(c.SOURCE_ID, sort=False)[c.CUSTOMER_ID].transform("nunique")
    is_canonical = pc.is_in(_arrow(identities[c.SOURCE_ID]), value_set=_combined(_arrow(canonical.dropna())))
    is_canonical = is_canonical.to_numpy(zero_copy_only=False).astype(bool)
    usable = (customers_per_id == 1).to_numpy() & ~is_canonical
    return identities.loc[usable].drop_duplicates(c.SOURCE_ID)


def _pair_keys(systems: pa.ChunkedArray, ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """'system<US>id' per row; null when either part is missing."""
    return pc.binary_join_element_wise(systems, ids, pa.scalar(_PAIR_SEPARATOR, type=pa.large_string()))


def _arrow(series: pd.Series) -> pa.ChunkedArray:
    array = pa.array(series.astype(STRING_DTYPE), from_pandas=True)
    if isinstance(array, pa.Array):
        array = pa.chunked_array([array])
    return array.cast(pa.large_string())


def _combined(array: pa.ChunkedArray) -> pa.Array:
    """A single contiguous array (arrow's value_set and take indices want one)."""
    if len(array.chunks) == 0:
        return pa.array(np.array([], dtype=object), type=array.type)
    return array.combine_chunks()
