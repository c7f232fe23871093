"""What each customer consented to, per channel: the latest consent row up to a moment.

Every model that contacts a customer reads consent through `latest_consent` (the channel model,
the contact policy, the next-best-action engine), so they agree on who may be reached where.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c


def latest_consent(consent: pd.DataFrame, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """The latest consent row per (customer, channel) before `as_of`: customer_id, channel,
    opted_in, updated_ts."""
    rows = consent if as_of is None else consent.loc[consent[c.UPDATED_TS] < as_of]
    rows = rows.dropna(subset=[c.CUSTOMER_ID, c.CHANNEL, c.UPDATED_TS])
    rows = rows.sort_values([c.CUSTOMER_ID, c.CHANNEL, c.UPDATED_TS], kind="stable")
    latest = rows.drop_duplicates([c.CUSTOMER_ID, c.CHANNEL], keep="last")
    out = latest[[c.CUSTOMER_ID, c.CHANNEL, c.OPTED_IN, c.UPDATED_TS]].reset_index(drop=True)
    return out.assign(
        **{
            c.CUSTOMER_ID: out[c.CUSTOMER_ID].astype(str),
            c.CHANNEL: out[c.CHANNEL].astype(str),
            c.OPTED_IN: out[c.OPTED_IN].astype(bool),
        }
    )


def latest_consent_matrix(
    consent: pd.DataFrame | None, customer_ids, channels: tuple[str, ...], as_of: pd.Timestamp | None = None
) -> np.ndarray:
    """(n, len(channels)) booleans: the latest consent (`latest_consent`) says opted in.

    No row for a (customer, channel) means not opted in. Without a consent table every channel is
    allowed (the loader notes that consent filtering is then skipped).
    """
    ids = pd.Index(pd.Series(np.asarray(customer_ids, dtype=object)).astype(str))
    if consent is None:
        return np.ones((len(ids), len(channels)), dtype=bool)
    latest = latest_consent(consent, as_of)
    out = np.zeros((len(ids), len(channels)), dtype=bool)
    for j, ch in enumerate(channels):
        opted = latest.loc[(latest[c.CHANNEL] == ch) & latest[c.OPTED_IN], c.CUSTOMER_ID]
        out[:, j] = ids.isin(opted)
    return out
