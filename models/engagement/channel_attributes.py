"""The customers' free attributes as channel-model features: `attr.<name>` columns of customers
(age, income, gender, ...), numbers as they are, text as indicators of its frequent levels.

How a column becomes features is learned once at fit (`attribute_encoding`) and applied to any
customers after (`attribute_features`). Attributes carry no time, so they are taken as they are at
every moment; each target of `ChannelModel` keeps them only where its calibration slice says they
help (`attributes_used_`, with a note).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c

# customer attributes (`attr.<name>` columns of customers): a text attribute keeps its most
# frequent levels, each held by at least this share of the customers (at most this many levels);
# rarer ones are pooled into `attr.<name>=other`
ATTRIBUTE_MIN_LEVEL_SHARE = 0.01
ATTRIBUTE_MAX_LEVELS = 20


def attribute_encoding(customers: pd.DataFrame | None) -> list[dict]:
    """How the customers' free attributes (`attr.<name>` columns) become features, learned once
    at fit: a numeric column is one feature (missing = NaN; its median fills it in the engagement
    model, with a missing indicator); a text column is one indicator per frequent level (see
    ATTRIBUTE_MIN_LEVEL_SHARE) plus `=other` for the rest (missing: all zeros)."""
    if customers is None:
        return []
    columns = [col for col in customers.columns if str(col).startswith(c.ATTRIBUTE_PREFIX)]
    if not columns:
        return []
    table = customers.drop_duplicates(c.CUSTOMER_ID, keep="last")
    out = []
    for col in columns:
        values = table[col]
        present = values.notna()
        if not present.any():
            continue
        numeric = pd.to_numeric(values, errors="coerce") if not pd.api.types.is_bool_dtype(values) else None
        if numeric is not None and bool((numeric.notna() == present).all()):
            out.append(
                {
                    "column": str(col),
                    "kind": "numeric",
                    "median": float(numeric.median()),
                    "has_missing": bool((~present).any()),
                }
            )
            continue
        text = values[present].astype(str)
        counts = text.value_counts()
        floor = max(1.0, ATTRIBUTE_MIN_LEVEL_SHARE * len(values))
        levels = [str(v) for v in counts.index[counts >= floor][:ATTRIBUTE_MAX_LEVELS]]
        out.append(
            {"column": str(col), "kind": "levels", "levels": levels, "other": bool(len(levels) < len(counts))}
        )
    return out


def attribute_feature_names(encoding: list[dict]) -> list[str]:
    names = []
    for spec in encoding:
        if spec["kind"] == "numeric":
            names.append(spec["column"])
        else:
            names += [f"{spec['column']}={level}" for level in spec["levels"]]
            names += [f"{spec['column']}=other"] if spec["other"] else []
    return names


def attribute_features(customers: pd.DataFrame | None, encoding: list[dict], ids: pd.Index) -> dict:
    """The attribute features (`attribute_feature_names`) of customers `ids`, one array each
    (NaN for a customer without a row, or a missing number)."""
    out: dict[str, np.ndarray] = {}
    if not encoding:
        return out
    table = None
    if customers is not None:
        table = customers.drop_duplicates(c.CUSTOMER_ID, keep="last")
        table = table.set_index(table[c.CUSTOMER_ID].astype(str).to_numpy())
    for spec in encoding:
        col = spec["column"]
        if table is None or col not in table.columns:
            values = pd.Series(np.nan, index=ids, dtype=object)
        else:
            values = table[col].reindex(ids)
        known = pd.Series(ids).isin(table.index).to_numpy() if table is not None else np.zeros(len(ids), bool)
        if spec["kind"] == "numeric":
            out[col] = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
            continue
        text = values.astype(object).where(values.notna(), None)
        text = text.map(lambda v: None if v is None else str(v)).to_numpy(dtype=object)
        for level in spec["levels"]:
            out[f"{col}={level}"] = np.where(known, text == level, np.nan).astype(np.float64)
        if spec["other"]:
            rare = pd.notna(text) & ~np.isin(text, spec["levels"])
            out[f"{col}=other"] = np.where(known, rare, np.nan).astype(np.float64)
    return out
