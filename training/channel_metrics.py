"""Metrics of the channel and send-time models (and of their rules) on held-out data: AUC, log
loss, Brier score and calibration of probabilities; the matched-sends estimate of a send-time
policy and its activity hit rate; the held-out engagement rate by the rank of the channel used.
The evaluation and the validation that chooses what is served (`training.channel_evaluation`) and
the judging of a registered champion (`training.channel_champion`) score with these.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from features import columns as c
from models.engagement.channel import ChannelModel
from models.engagement.local_time import HOURS, local_slots
from models.engagement.send_time import SendTimeModel, engaged_before

_Z95 = float(norm.ppf(0.975))


def binary_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, float]:
    """AUC, log loss, Brier score, expected calibration error (equal-count bins), base rate."""
    y, p = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    out = {"n": float(len(y)), "base_rate": float(y.mean()) if len(y) else float("nan")}
    if len(y) == 0 or len(np.unique(y)) < 2:
        return out | {
            "auc": float("nan"),
            "log_loss": float("nan"),
            "brier": float("nan"),
            "ece": float("nan"),
        }
    table = reliability_table(y, p, bins)
    ece = float((table["n"] * (table["predicted"] - table["observed"]).abs()).sum() / table["n"].sum())
    return out | {
        "auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": ece,
    }


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean predicted vs observed rate in equal-count bins of the prediction."""
    frame = pd.DataFrame({"y": np.asarray(y, float), "p": np.asarray(p, float)})
    frame["bin"] = pd.qcut(frame["p"].rank(method="first"), q=min(bins, len(frame)), labels=False)
    grouped = frame.groupby("bin")
    return pd.DataFrame(
        {"predicted": grouped["p"].mean(), "observed": grouped["y"].mean(), "n": grouped.size()}
    )


def two_rate_difference(y_a: np.ndarray, y_b: np.ndarray) -> dict[str, float]:
    """Rates of two groups of 0/1 outcomes, their difference a - b and its normal 95% interval."""
    n_a, n_b = len(y_a), len(y_b)
    rate_a = float(np.mean(y_a)) if n_a else float("nan")
    rate_b = float(np.mean(y_b)) if n_b else float("nan")
    se = float(np.sqrt(rate_a * (1 - rate_a) / max(n_a, 1) + rate_b * (1 - rate_b) / max(n_b, 1)))
    diff = rate_a - rate_b
    return {
        "rate_matched": rate_a,
        "rate_rest": rate_b,
        "n_matched": float(n_a),
        "n_rest": float(n_b),
        "difference": diff,
        "ci_low": diff - _Z95 * se,
        "ci_high": diff + _Z95 * se,
        "lift": rate_a / rate_b if n_b and rate_b > 0 else float("nan"),
    }


def circular_hour_distance(a, b) -> np.ndarray:
    return np.abs((np.asarray(a) - np.asarray(b) + 12) % 24 - 12)


def matched_sends_estimate(
    model: SendTimeModel,
    messages: pd.DataFrame,
    outcomes_until: pd.Timestamp,
    match_hours: int = 1,
    scores: SendScores | None = None,
) -> dict[str, float]:
    """Engagement rate of past sends that went out within ±match_hours of our chosen hour, vs the rest.

    For each message: the local weekday of its send, our best hour for that customer, channel and
    weekday (argmax of that day's row of the grid), matched if the local send hour is within
    `match_hours` (circularly). Needs no truth, only logged sends; it is biased where the logging
    policy's timing correlates with other drivers of engagement, hence the channel-stratified
    difference (per-channel differences weighted by the number of matched sends) next to the raw
    one, and the channel-stratified rate of the matched sends (`stratified_rate_matched`: each
    channel's matched rate weighted by the channel's share of all the sends, the same weights for
    every policy), which is what policies are compared on.
    `scores`: `send_scores(model, messages)` when the caller already has them.
    """
    if messages is None or len(messages) == 0:
        return {}
    scores = scores if scores is not None else send_scores(model, messages)
    return matched_sends(scores, messages, outcomes_until, match_hours)


class SendScores(NamedTuple):
    """Per message: its local send hour, the hour a policy chooses for its customer, channel and
    local weekday, and (the model only) the grid's probability at its local send slot."""

    hour: np.ndarray
    best_hour: np.ndarray
    probability: np.ndarray | None


_GRID_CUSTOMERS = 65536  # customers per block of grids (block × 168 floats)


def send_scores(model: SendTimeModel, messages: pd.DataFrame, mode: str = "model") -> SendScores:
    """`SendScores` of messages under a policy (`mode`: the model or one of its rules). The
    model's: from one grid per customer and channel, which a customer's messages share (the
    held-out window has several per customer, each scored again before); a rule's: its hour."""
    msgs = messages.reset_index(drop=True)
    ids = msgs[c.CUSTOMER_ID].astype(str).to_numpy()
    slots = local_slots(msgs[c.SENT_TS], pd.Series(model.timezone_of(ids)))
    if mode != "model":
        return SendScores(slots % HOURS, model.rule_hours(ids, mode), None)
    days = slots // HOURS
    best = np.zeros(len(msgs), dtype=np.int64)
    probability = np.zeros(len(msgs))
    chans = msgs[c.CHANNEL].astype(str).to_numpy()
    for ch in np.unique(chans):
        sel = np.flatnonzero(chans == ch)
        customers, inverse = np.unique(ids[sel], return_inverse=True)
        for lo in range(0, len(customers), _GRID_CUSTOMERS):
            hi = min(lo + _GRID_CUSTOMERS, len(customers))
            grid = model.score_grid(customers[lo:hi], ch)
            part = (inverse >= lo) & (inverse < hi)
            at, rows = sel[part], inverse[part] - lo
            best[at] = np.argmax(grid.reshape(-1, 7, HOURS)[rows, days[at]], axis=1)
            probability[at] = grid[rows, slots[at]]
    return SendScores(slots % HOURS, best, probability)


def matched_sends(
    scores: SendScores, messages: pd.DataFrame, outcomes_until: pd.Timestamp, match_hours: int
) -> dict[str, float]:
    msgs = messages.reset_index(drop=True)
    y = engaged_before(msgs, outcomes_until).astype(float)
    matched = circular_hour_distance(scores.hour, scores.best_hour) <= match_hours
    out = two_rate_difference(y[matched], y[~matched])
    # channel-stratified difference, and the matched sends' rate at a fixed channel mix
    diffs, weights, variances = [], [], []
    rates, mix = [], []
    channels = msgs[c.CHANNEL].astype(str)
    for ch in channels.unique():
        sel = (channels == ch).to_numpy()
        a, b = y[sel & matched], y[sel & ~matched]
        if len(a):
            rates.append(float(a.mean()))
            mix.append(float(sel.sum()))
        if len(a) < 2 or len(b) < 2:
            continue
        d = two_rate_difference(a, b)
        diffs.append(d["difference"])
        weights.append(len(a))
        variances.append(((d["ci_high"] - d["ci_low"]) / (2 * _Z95)) ** 2)
    if weights:
        w = np.asarray(weights, float) / np.sum(weights)
        diff = float(np.dot(w, diffs))
        se = float(np.sqrt(np.dot(w**2, variances)))
        out |= {
            "stratified_difference": diff,
            "stratified_ci_low": diff - _Z95 * se,
            "stratified_ci_high": diff + _Z95 * se,
        }
    if mix:
        out["stratified_rate_matched"] = float(np.dot(rates, mix) / np.sum(mix))
    out["match_hours"] = float(match_hours)
    return out


def activity_hit_rate(
    model: SendTimeModel, events: pd.DataFrame, match_hours: int = 1, mode: str = "model"
) -> dict[str, float]:
    """Share of held-out active hours (customer, clock hour) within ±match_hours of the customer's
    best local hour on that weekday (`mode`: the model's, or a rule's hour), against chance
    ((2 * match_hours + 1) / 24)."""
    if events is None or len(events) == 0:
        return {}
    return hit_rate(activity_hits(model, active_hours(events), match_hours, mode), match_hours)


def active_hours(events: pd.DataFrame) -> pd.DataFrame:
    """The (customer, clock hour) pairs with activity: each pair's first event (customer_id, ts)."""
    ev = events[[c.CUSTOMER_ID, c.TS]].dropna()
    return (
        ev.assign(_hour=ev[c.TS].dt.floor("h"))
        .drop_duplicates([c.CUSTOMER_ID, "_hour"])
        .drop(columns="_hour")
        .reset_index(drop=True)
    )


def activity_hits(model: SendTimeModel, active: pd.DataFrame, match_hours: int, mode: str) -> np.ndarray:
    """Per active hour (`active_hours`): within ±match_hours of the policy's best local hour for
    that customer on that weekday (in the customer's time zone as the model knows it)."""
    ids = active[c.CUSTOMER_ID].astype(str)
    slots = local_slots(active[c.TS], pd.Series(model.timezone_of(ids)))
    days, hours = slots // HOURS, slots % HOURS
    unique_ids, inverse = np.unique(ids.to_numpy(), return_inverse=True)
    if mode == "model":
        best = np.empty(len(active), dtype=np.int64)
        for lo in range(0, len(unique_ids), _GRID_CUSTOMERS):
            hi = min(lo + _GRID_CUSTOMERS, len(unique_ids))
            grid = model.score_grid(unique_ids[lo:hi], None).reshape(hi - lo, 7, HOURS)
            part = np.flatnonzero((inverse >= lo) & (inverse < hi))
            best[part] = np.argmax(grid[inverse[part] - lo, days[part]], axis=1)
    else:
        best = model.rule_hours(unique_ids, mode)[inverse]
    return circular_hour_distance(hours, best) <= match_hours


def hit_rate(hits: np.ndarray, match_hours: int) -> dict[str, float]:
    return {
        "activity_hit_rate": float(hits.mean()) if len(hits) else float("nan"),
        "activity_hit_rate_chance": (2 * match_hours + 1) / HOURS,
        "activity_hours": float(len(hits)),
    }


def channel_lift(
    channel_model: ChannelModel,
    messages: pd.DataFrame,
    outcomes_until: pd.Timestamp,
    serve: str | None = None,
) -> pd.DataFrame:
    """Held-out engagement rate by the rank our model (or `serve`: its rule) gave the channel a
    message went out on."""
    ranks = channel_model.rank_channels(messages[c.CUSTOMER_ID].astype(str).unique(), serve)
    msgs = (
        messages[[c.CUSTOMER_ID, c.CHANNEL]].astype(str).assign(_y=engaged_before(messages, outcomes_until))
    )
    merged = msgs.merge(ranks[[c.CUSTOMER_ID, c.CHANNEL, c.RANK]], on=[c.CUSTOMER_ID, c.CHANNEL], how="left")
    merged[c.RANK] = merged[c.RANK].fillna(0).astype(int)  # 0: not ranked (no consent at the split)
    table = merged.groupby(c.RANK)["_y"].agg(["mean", "size"]).rename(columns={"mean": "rate", "size": "n"})
    return table.reset_index()


def lift_metrics(lift: pd.DataFrame) -> dict[str, float]:
    """Top-ranked channel's held-out engagement rate against the other ranked channels'."""
    top, rest = lift.loc[lift[c.RANK] == 1], lift.loc[lift[c.RANK] > 1]
    if not (len(top) and len(rest)):
        return {}
    rest_rate = float((rest["rate"] * rest["n"]).sum() / rest["n"].sum())
    top_rate = float(top["rate"].iloc[0])
    return {
        "top_channel_rate": top_rate,
        "other_channel_rate": rest_rate,
        "top_channel_lift": top_rate / rest_rate if rest_rate > 0 else float("nan"),
    }
