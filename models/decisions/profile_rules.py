"""Profile rules with known answers: RFM scores, segments, value tiers and top categories.

- RFM: recency (days since the last purchase), frequency (distinct orders), monetary (net spend:
  purchases minus returns), each scored 1-5 by quintile among customers with a purchase
  (`rfm_scores`: percentile rank, ties share a score; 5 = most recent / most orders / most spend).
- segment (`assign_segments`, first rule that matches):
  no purchase → `new` when first seen within `new_days`, else `dormant`;
  recency > `dormant_days` → `dormant`; recency > `at_risk_days` → `at_risk`;
  first purchase within `new_days` and at most 2 orders → `new`;
  R, F and M scores all >= 4 → `champion`; F >= 4 → `loyal`; otherwise `active`.
  The thresholds are read from the data's buying rhythm (`segment_thresholds`) unless given.
- value tier (`value_tiers`): net spend among purchasers, top 20 % `high`, next 30 % `medium`,
  the rest `low`; `none` without a purchase.
- top categories (`top_categories`): the largest shares of purchased quantity.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.decisions.history import _SECONDS_BITS, _Stream
from models.timestamps import US_PER_DAY

MIN_GAPS_FOR_THRESHOLDS = 100
FALLBACK_THRESHOLDS = {"new_days": 60.0, "at_risk_days": 90.0, "dormant_days": 180.0}
THRESHOLD_QUANTILES = {"new_days": 0.90, "at_risk_days": 0.95, "dormant_days": 0.99}


def segment_thresholds(orders: _Stream, as_of_us: int) -> dict[str, float] | None:
    """Segment thresholds (days) from the gaps between consecutive orders of the same customer
    before `as_of`: quantiles `THRESHOLD_QUANTILES` of those gaps (at least one day each, dormant
    beyond at risk beyond new). None with fewer than `MIN_GAPS_FOR_THRESHOLDS` gaps."""
    before = orders.ts < as_of_us
    code = (orders.key >> _SECONDS_BITS)[before]
    ts = orders.ts[before]
    same = code[1:] == code[:-1]
    gaps = (ts[1:] - ts[:-1])[same] / US_PER_DAY
    gaps = gaps[gaps > 0]
    if len(gaps) < MIN_GAPS_FOR_THRESHOLDS:
        return None
    out = {name: max(1.0, float(np.quantile(gaps, q))) for name, q in THRESHOLD_QUANTILES.items()}
    out["at_risk_days"] = max(out["at_risk_days"], out["new_days"])
    out["dormant_days"] = max(out["dormant_days"], out["at_risk_days"] + 1.0)
    return out


def rfm_scores(recency_days, frequency, monetary) -> pd.DataFrame:
    """Quintile scores 1-5 among customers with a purchase (frequency > 0); 0 for the others.

    Score = ceil(5 · percentile rank), with ties sharing their average rank; recency is ranked
    reversed (the most recent buyer scores 5).
    """
    recency = pd.Series(np.asarray(recency_days, dtype=np.float64))
    freq = pd.Series(np.asarray(frequency, dtype=np.float64))
    money = pd.Series(np.asarray(monetary, dtype=np.float64))
    buyers = (freq > 0).to_numpy()

    def score(values: pd.Series) -> np.ndarray:
        out = np.zeros(len(values), dtype=np.int64)
        if buyers.any():
            pct = values[buyers].rank(pct=True, method="average").to_numpy()
            out[buyers] = np.clip(np.ceil(5 * pct - 1e-9), 1, 5).astype(np.int64)
        return out

    return pd.DataFrame(
        {"recency_score": score(-recency), "frequency_score": score(freq), "monetary_score": score(money)}
    )


def assign_segments(
    recency_days,
    frequency,
    days_since_first_purchase,
    days_since_first_seen,
    scores: pd.DataFrame,
    new_days: float = 60.0,
    at_risk_days: float = 90.0,
    dormant_days: float = 180.0,
) -> np.ndarray:
    """Segment per customer by the rules of the module docstring (first match wins)."""
    recency = np.asarray(recency_days, dtype=np.float64)
    freq = np.asarray(frequency, dtype=np.float64)
    first_buy = np.asarray(days_since_first_purchase, dtype=np.float64)
    first_seen = np.asarray(days_since_first_seen, dtype=np.float64)
    r, f, m = (scores[col].to_numpy() for col in ("recency_score", "frequency_score", "monetary_score"))
    no_purchase = ~(freq > 0)
    seen_recently = np.nan_to_num(first_seen, nan=0.0) <= new_days
    conditions = [
        no_purchase & seen_recently,
        no_purchase,
        recency > dormant_days,
        recency > at_risk_days,
        (first_buy <= new_days) & (freq <= 2),
        (r >= 4) & (f >= 4) & (m >= 4),
        f >= 4,
    ]
    choices = ["new", "dormant", "dormant", "at_risk", "new", "champion", "loyal"]
    return np.select(conditions, choices, default="active").astype(object)


def value_tiers(monetary, frequency) -> np.ndarray:
    """high (top 20 % of net spend among purchasers), medium (next 30 %), low (rest), none."""
    money = pd.Series(np.asarray(monetary, dtype=np.float64))
    buyers = np.asarray(frequency, dtype=np.float64) > 0
    out = np.full(len(money), "none", dtype=object)
    if buyers.any():
        # share of purchasers spending at least as much (ties: the customer's best position)
        pct = money[buyers].rank(pct=True, method="max", ascending=False).to_numpy()
        out[buyers] = np.where(pct <= 0.2, "high", np.where(pct <= 0.5, "medium", "low"))
    return out


def top_categories(category_shares: pd.DataFrame, k: int = 3) -> list[list[str]]:
    """Per row, the up to k categories with the largest positive shares (columns `cat_<name>`)."""
    cols = [col for col in category_shares.columns if col.startswith("cat_")]
    if not cols:
        return [[] for _ in range(len(category_shares))]
    names = np.array([col[4:] for col in cols], dtype=object)
    values = category_shares[cols].to_numpy(np.float64)
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    out = []
    for row, idx in enumerate(order):
        out.append([str(names[j]) for j in idx if values[row, j] > 0])
    return out
