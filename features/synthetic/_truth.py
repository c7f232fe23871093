"""The truth formulas, for scoring policies: the probabilities of opening, clicking and converting
exactly as the generator draws them, from the columns of `truth/customers.parquet`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c

from ._parameters import (
    ARM_IS_MONETARY,
    CHANNEL_OPEN_LOGIT,
    CLICK_LOGIT,
    CLICK_OFFER_BONUS,
    HOUR_MATCH_GAIN,
    HOUR_MATCH_OFFSET,
    MESSAGE_CHANNELS,
    OFFERS,
    TREATMENTS,
)


def hour_match(local_hours, preferred_hours, widths) -> np.ndarray:
    """Gaussian bump exp(-d^2 / 2 w^2) of the circular distance d (hours, 0-12) between a local
    send hour and the preferred local hour; 1 at the preferred hour."""
    h = np.asarray(local_hours, dtype=np.float64)
    pref = np.asarray(preferred_hours, dtype=np.float64)
    dist = np.abs((h - pref + 12.0) % 24.0 - 12.0)
    return np.exp(-0.5 * (dist / np.asarray(widths, dtype=np.float64)) ** 2)


def local_time_parts(ts_utc, timezones) -> tuple[np.ndarray, np.ndarray]:
    """Local fractional hour (0-24) and weekday (0 = Monday) of UTC timestamps, per row's IANA
    time zone, with real DST rules."""
    ts = pd.DatetimeIndex(pd.to_datetime(ts_utc, utc=True))
    zones = np.asarray(timezones, dtype=object)
    hours = np.empty(len(ts), dtype=np.float64)
    weekdays = np.empty(len(ts), dtype=np.int64)
    for zone in sorted(pd.unique(zones)):
        sel = np.flatnonzero(zones == zone)
        local = ts[sel].tz_convert(zone)
        hours[sel] = local.hour + local.minute / 60.0 + local.second / 3600.0
        weekdays[sel] = local.day_of_week
    return hours, weekdays


def true_open_probability(
    truth_customers: pd.DataFrame, customer_ids, channels, local_hours, local_weekdays
) -> np.ndarray:
    """P(open) of a message, exactly as generated:

    sigmoid(CHANNEL_OPEN_LOGIT[channel] + responsiveness_<channel>
            + HOUR_MATCH_GAIN * hour_match(local_hour, preferred_hour, preferred_hour_width)
            - HOUR_MATCH_OFFSET + weekend_pref * (local_weekday >= 5))

    `channels` are message channels (email, sms, push, social); local hours are fractional
    (10.5 = 10:30 local), weekdays 0 = Monday. All arguments are aligned arrays.
    """
    rows = _truth_rows(truth_customers, customer_ids)
    ch = _channel_codes(channels)
    resp = truth_customers[[f"responsiveness_{x}" for x in MESSAGE_CHANNELS]].to_numpy(np.float64)
    return message_open_probability(
        ch,
        resp[rows, ch],
        np.asarray(local_hours, dtype=np.float64),
        np.asarray(local_weekdays),
        truth_customers["preferred_hour"].to_numpy(np.float64)[rows],
        truth_customers["preferred_hour_width"].to_numpy(np.float64)[rows],
        truth_customers["weekend_pref"].to_numpy(np.float64)[rows],
    )


def true_click_probability(truth_customers: pd.DataFrame, customer_ids, channels, offer_ids) -> np.ndarray:
    """P(click | open) = sigmoid(CLICK_LOGIT + 0.5 * responsiveness_<channel>
    + CLICK_OFFER_BONUS * (offer is a discount, bogo or free shipping))."""
    rows = _truth_rows(truth_customers, customer_ids)
    ch = _channel_codes(channels)
    resp = truth_customers[[f"responsiveness_{x}" for x in MESSAGE_CHANNELS]].to_numpy(np.float64)
    return click_given_open_probability(resp[rows, ch], _arm_codes(offer_ids))


def true_conversion_probability(
    truth_customers: pd.DataFrame, customer_ids, offer_ids, open_probability=None
) -> np.ndarray:
    """P(purchase within 14 days) of a customer who receives a message with the given offer.

    `offer_ids`: an offer id per row, or None/NaN for a plain message without offer.
    Without `open_probability`: the probability *given the message is opened*,
    clip(p_base + uplift_<offer>, 0, 1). With it (e.g. from `true_open_probability`): the
    probability given the message is sent, p_base + P(open) * (clip(p_base + uplift) - p_base),
    because an unopened message acts like no message. With no message at all it is `p_base`.
    """
    rows = _truth_rows(truth_customers, customer_ids)
    arms = _arm_codes(offer_ids)
    uplift = truth_customers[[f"uplift_{t}" for t in TREATMENTS]].to_numpy(np.float64)[rows, arms]
    p_base = truth_customers["p_base"].to_numpy(np.float64)[rows]
    p_opened = np.clip(p_base + uplift, 0.0, 1.0)
    if open_probability is None:
        return p_opened
    return p_base + np.asarray(open_probability, dtype=np.float64) * (p_opened - p_base)


def true_uplift(truth_customers: pd.DataFrame, customer_ids, offer_ids, open_probability=None) -> np.ndarray:
    """`true_conversion_probability(...) - p_base`: the causal effect of the message on conversion
    (given open without `open_probability`, given send with it)."""
    rows = _truth_rows(truth_customers, customer_ids)
    p_base = truth_customers["p_base"].to_numpy(np.float64)[rows]
    return true_conversion_probability(truth_customers, customer_ids, offer_ids, open_probability) - p_base


def _truth_rows(truth_customers: pd.DataFrame, customer_ids) -> np.ndarray:
    index = pd.Index(truth_customers[c.CUSTOMER_ID].astype(str))
    rows = index.get_indexer(pd.Index(np.asarray(customer_ids, dtype=object).astype(str)))
    if (rows < 0).any():
        raise KeyError("unknown customer ids (canonical ids only)")
    return rows


def _channel_codes(channels) -> np.ndarray:
    lookup = {ch: i for i, ch in enumerate(MESSAGE_CHANNELS)}
    try:
        return np.array([lookup[ch] for ch in np.asarray(channels, dtype=object)], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"not a message channel: {exc}; expected one of {MESSAGE_CHANNELS}") from None


def _arm_codes(offer_ids) -> np.ndarray:
    lookup = {o.offer_id: i + 1 for i, o in enumerate(OFFERS)}
    values = pd.Series(np.asarray(offer_ids, dtype=object), dtype=object)
    missing = values.isna().to_numpy()
    arms = np.zeros(len(values), dtype=np.int64)
    for i in np.flatnonzero(~missing):
        offer = values.iat[i]
        if offer not in lookup:
            raise ValueError(f"unknown offer id {offer!r}")
        arms[i] = lookup[offer]
    return arms


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def message_open_probability(channel, responsiveness, local_hour, weekday, pref_hour, width, weekend_pref):
    """P(open) on aligned arrays of channel codes and customer traits (the generator's form of
    `true_open_probability`)."""
    logit = (
        CHANNEL_OPEN_LOGIT[channel]
        + responsiveness
        + HOUR_MATCH_GAIN * hour_match(local_hour, pref_hour, width)
        - HOUR_MATCH_OFFSET
        + weekend_pref * (weekday >= 5)
    )
    return _sigmoid(logit)


def click_given_open_probability(responsiveness, arms):
    """P(click | open) on aligned arrays of responsiveness and treatment arms."""
    return _sigmoid(CLICK_LOGIT + 0.5 * responsiveness + CLICK_OFFER_BONUS * ARM_IS_MONETARY[arms])
