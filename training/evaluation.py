"""Ranking metrics on plain DataFrames (as microsoft/recommenders does it).

`recommendations`: customer_id, product_id, rank (1 = best). `relevant`: customer_id, product_id
(each row one relevant item). Metrics are averaged over the customers that have at least one
relevant item; a customer with no recommendations scores 0. Definitions (binary relevance):
- precision@k = hits in top k / k
- recall@k = hits in top k / number of relevant items
- nDCG@k = DCG of the top k / ideal DCG with min(k, #relevant) hits, gains 1/log2(rank + 1)
- MAP@k = sum over hit ranks of precision at that rank / number of relevant items (the
  recommenders library's definition, which divides by all relevant items, not by min(k, ·))
- coverage = distinct recommended products (top k, all customers) / catalogue size
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c


def ranking_metrics(
    recommendations: pd.DataFrame,
    relevant: pd.DataFrame,
    k: int = 10,
    catalogue_size: int | None = None,
) -> dict[str, float]:
    rel = relevant[[c.CUSTOMER_ID, c.PRODUCT_ID]].drop_duplicates()
    n_relevant = rel.groupby(c.CUSTOMER_ID).size()
    users = n_relevant.index
    if len(users) == 0:
        raise ValueError("no customer has a relevant item: nothing to evaluate")
    recs = recommendations[recommendations[c.RANK] <= k][[c.CUSTOMER_ID, c.PRODUCT_ID, c.RANK]]
    recs = recs[recs[c.CUSTOMER_ID].isin(users)]
    hits = recs.merge(rel.assign(_hit=1), on=[c.CUSTOMER_ID, c.PRODUCT_ID], how="left")
    hits["_hit"] = hits["_hit"].fillna(0).astype(float)
    hits = hits.sort_values([c.CUSTOMER_ID, c.RANK])
    hits["_cum_hits"] = hits.groupby(c.CUSTOMER_ID)["_hit"].cumsum()

    n_hits = hits.groupby(c.CUSTOMER_ID)["_hit"].sum().reindex(users, fill_value=0.0)
    dcg = (hits["_hit"] / np.log2(hits[c.RANK] + 1)).groupby(hits[c.CUSTOMER_ID]).sum()
    dcg = dcg.reindex(users, fill_value=0.0)
    ideal_hits = np.minimum(n_relevant.to_numpy(), k)
    discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = discounts[ideal_hits - 1]
    ap = (hits["_hit"] * hits["_cum_hits"] / hits[c.RANK]).groupby(hits[c.CUSTOMER_ID]).sum()
    ap = ap.reindex(users, fill_value=0.0) / n_relevant

    out = {
        f"precision@{k}": float((n_hits / k).mean()),
        f"recall@{k}": float((n_hits / n_relevant).mean()),
        f"ndcg@{k}": float((dcg.to_numpy() / idcg).mean()),
        "map": float(ap.mean()),
        "customers_evaluated": float(len(users)),
    }
    if catalogue_size:
        all_recs = recommendations[recommendations[c.RANK] <= k]
        out["coverage"] = float(all_recs[c.PRODUCT_ID].nunique() / catalogue_size)
    return out
