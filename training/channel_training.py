"""Training, evaluation, plots and MLflow logging of the channel and send-time models.

`train_channel_and_send_time(tables)` is the step `omni train` runs after the recommender:

1. What is served. Each model is validated against simple rules on a window carved from the part
   before the test split (the last `test_days` before it; when the history is too short for a
   test window, the last third of it, at most `test_days`): models fitted before the window
   (on a seeded sample of `max_validation_customers` customers), every policy scored on it, and
   the best is served (`choose_served`; a tie goes to the simpler):
   - channel: the model against the engagement-ratio rule (each customer's smoothed engagement
     rate per channel), on the engagement AUC of held-out messages;
   - send time: the model against the customer's modal activity hour and the global best hour, on
     the matched sends' engagement rate at a fixed channel mix (`stratified_rate_matched`), or
     without held-out messages the activity hit rate.
   The registered models answer with the chosen policy (`ChannelModel.serve`,
   `SendTimeModel.serve`); `ChannelTrainingResult.served` and the MLflow tags `channel.served`,
   `send_time.served` say which. Nothing of the test window is used for that choice.
2. Time-based evaluation. The models are fitted on everything before a split time (the last
   `test_days` days of messages, or of events without messages) and scored on what came after,
   the rules beside them on the same messages (`channel.rule.*`, `send_time.<rule>.*`, the served
   one again as `<family>.served.*`):
   - channel: AUC, log loss, Brier score and expected calibration error of the engagement and
     conversion probabilities on held-out messages (features frozen at the split, as a batch
     score would be), and the held-out engagement rate of messages that happened to go out on the
     customer's top-ranked channel against the others (`channel_lift`);
   - send time: the matched-sends estimate (`matched_sends_estimate`): the engagement rate of
     held-out sends that went out within ±1 h of the hour we would have chosen for that customer,
     channel and weekday, against the rest, with a 95% confidence interval (also stratified by
     channel, because the logging policy's channel mix differs by hour); plus AUC / log loss of
     the grid's probability at the actual send slot; and the share of held-out active hours
     within ±1 h of the chosen hour (`activity_hit_rate`), against chance (3/24).
3. Refit on the whole history; these are the models that are registered.

The channel model needs messages: without a messages table it is skipped (None, with a note).
Without events and messages nothing can be learned (`models.base.CannotTrain`).
Plots need matplotlib; without it the artefacts carry the plotted numbers as JSON instead.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from features import columns as c
from features.codes import positions
from features.io import Tables, rows_before
from models.base import CannotTrain
from models.engagement.channel import PROBABILITY, ChannelModel
from models.engagement.channel_history import EVENT_COLUMNS, engagement_ts
from models.engagement.local_time import HOURS, local_slots
from models.engagement.send_time import SendTimeModel, engaged_before
from models.fitting import fit_pool

_Z95 = float(norm.ppf(0.975))


@dataclasses.dataclass
class ChannelTrainingConfig:
    test_days: int = 28  # held-out window at the end of the message history (or events)
    match_hours: int = 1  # a held-out send "matches" our hour when it is within this many hours
    heatmap_customers: int = 4
    random_state: int = 42
    # The evaluation's models are fitted and scored on a seeded random sample of this many
    # customers (all their rows) when there are more; None or 0: every customer. The registered
    # models are always refitted on everyone. A hundred thousand customers leave over a hundred
    # thousand held-out messages to score (intervals of a few tenths of a point); at a million
    # customers the evaluation's fits on everyone took as long as the refit, and on a sample this
    # size it runs beside the refit instead of after it.
    max_eval_customers: int | None = 100_000
    # What is served (each model or its rules) is chosen on a validation window (the last
    # `test_days` before the split), with models fitted before it on a seeded sample of this many
    # customers when there are more (None or 0: every customer): enough held-out messages to tell
    # the policies apart, at a fraction of a fit on everyone.
    max_validation_customers: int | None = 50_000


class ChannelTrainingResult(NamedTuple):
    channel_model: ChannelModel | None
    send_time_model: SendTimeModel
    metrics: dict[str, float]
    artifacts: dict[str, Any]  # name -> matplotlib Figure, or JSON-able dict when matplotlib is missing
    notes: list[str]
    # what each registered model serves (chosen on validation): {"channel": "model" | "rule" | None
    # (not trained), "send_time": "model" | "customer_modal_hour" | "global_best_hour"}
    served: dict[str, str | None] | None = None
    # each registered champion beside the challenger on the same new window, for the promotion
    # gate: {"channel" | "send_time": champion_window_scores(...)} (None: no champion given)
    champion: dict[str, dict] | None = None


# ----------------------------------------------------------------------------------------------
# metrics
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
    scores: _SendScores | None = None,
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
    `scores`: `_send_scores(model, messages)` when the caller already has them.
    """
    if messages is None or len(messages) == 0:
        return {}
    scores = scores if scores is not None else _send_scores(model, messages)
    return _matched_sends(scores, messages, outcomes_until, match_hours)


class _SendScores(NamedTuple):
    """Per message: its local send hour, the hour a policy chooses for its customer, channel and
    local weekday, and (the model only) the grid's probability at its local send slot."""

    hour: np.ndarray
    best_hour: np.ndarray
    probability: np.ndarray | None


_GRID_CUSTOMERS = 65536  # customers per block of grids (block × 168 floats)


def _send_scores(model: SendTimeModel, messages: pd.DataFrame, mode: str = "model") -> _SendScores:
    """`_SendScores` of messages under a policy (`mode`: the model or one of its rules). The
    model's: from one grid per customer and channel, which a customer's messages share (the
    held-out window has several per customer, each scored again before); a rule's: its hour."""
    msgs = messages.reset_index(drop=True)
    ids = msgs[c.CUSTOMER_ID].astype(str).to_numpy()
    slots = local_slots(msgs[c.SENT_TS], pd.Series(model.timezone_of(ids)))
    if mode != "model":
        return _SendScores(slots % HOURS, model.rule_hours(ids, mode), None)
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
    return _SendScores(slots % HOURS, best, probability)


def _matched_sends(
    scores: _SendScores, messages: pd.DataFrame, outcomes_until: pd.Timestamp, match_hours: int
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
    return _hit_rate(_activity_hits(model, _active_hours(events), match_hours, mode), match_hours)


def _active_hours(events: pd.DataFrame) -> pd.DataFrame:
    """The (customer, clock hour) pairs with activity: each pair's first event (customer_id, ts)."""
    ev = events[[c.CUSTOMER_ID, c.TS]].dropna()
    return (
        ev.assign(_hour=ev[c.TS].dt.floor("h"))
        .drop_duplicates([c.CUSTOMER_ID, "_hour"])
        .drop(columns="_hour")
        .reset_index(drop=True)
    )


def _activity_hits(model: SendTimeModel, active: pd.DataFrame, match_hours: int, mode: str) -> np.ndarray:
    """Per active hour (`_active_hours`): within ±match_hours of the policy's best local hour for
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


def _hit_rate(hits: np.ndarray, match_hours: int) -> dict[str, float]:
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


# ----------------------------------------------------------------------------------------------
# what is served: each family's model against its simple rules, on a validation window
# The policies of each family, simplest first: a tie goes to the simpler one. The metric chosen
# on is the family's first that was measured (the send-time matched sends need held-out messages
# with outcomes; the activity hit rate held-out activity).
CHANNEL_POLICIES: tuple[str, ...] = ("rule", "model")
SEND_TIME_POLICIES: tuple[str, ...] = ("global_best_hour", "customer_modal_hour", "model")
CHANNEL_CHOICE_METRICS: tuple[str, ...] = ("engagement_auc",)
SEND_TIME_CHOICE_METRICS: tuple[str, ...] = ("matched_stratified_rate_matched", "activity_hit_rate")
POLICY_NAMES = {
    "rule": "the engagement-ratio rule",
    "model": "the model",
    "customer_modal_hour": "the customer's modal activity hour",
    "global_best_hour": "the global best hour",
}
# logged for every policy on the validation window (`<family>.validation.<policy>.<metric>`)
VALIDATION_METRICS = {
    "channel": ("engagement_auc", "engagement_log_loss", "engagement_n", "top_channel_lift"),
    "send_time": (
        "matched_stratified_rate_matched",
        "matched_n_matched",
        "activity_hit_rate",
        "activity_hours",
    ),
}
# a validation metric counts when it rests on at least this many rows (its `SUPPORT`): held-out
# messages, matched sends, activity hours
MIN_VALIDATION_ROWS = 20
SUPPORT = {
    "engagement_auc": "engagement_n",
    "matched_stratified_rate_matched": "matched_n_matched",
    "activity_hit_rate": "activity_hours",
}


def choose_served(
    scores: dict[str, dict[str, float]], policies: tuple[str, ...], metrics: tuple[str, ...]
) -> tuple[str, str | None, str]:
    """(served policy, metric chosen on, reason): the policy with the best score on the first
    metric of `metrics` that every policy was measured on, on at least MIN_VALIDATION_ROWS rows
    (`SUPPORT`; higher is better), a tie going to the one earlier in `policies` (the simpler).
    Without such a metric: the model, "not validated"."""
    for metric in metrics:
        values = {p: scores.get(p, {}).get(metric, float("nan")) for p in policies}
        support = [scores.get(p, {}).get(SUPPORT.get(metric, ""), np.inf) for p in policies]
        if not all(np.isfinite(v) for v in values.values()) or min(support) < MIN_VALIDATION_ROWS:
            continue
        best = max(policies, key=lambda p: (values[p], -policies.index(p)))
        listed = ", ".join(f"{POLICY_NAMES[p]} {values[p]:.4f}" for p in policies)
        return best, metric, f"{metric} on the validation window: {listed}"
    return (
        "model",
        None,
        "not validated (too little held-out data before the test window): the model is served",
    )


def _data_bounds(tables: Tables) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and last time of any event or message send."""
    times = [
        (frame[col].min(), frame[col].max())
        for frame, col in ((tables.events, c.TS), (tables.messages, c.SENT_TS))
        if frame is not None and len(frame)
    ]
    return min(t[0] for t in times), max(t[1] for t in times)


def _held(messages: pd.DataFrame, start, end, wait_days: float) -> pd.DataFrame:
    """Messages sent in [start, end - wait_days): their outcomes are known by `end`."""
    sent = messages[c.SENT_TS]
    return messages.loc[(sent >= start) & (sent < end - pd.Timedelta(days=wait_days))]


def _channel_engagement(model: ChannelModel, held: pd.DataFrame, outcomes_until, serve: str):
    """(y, p, scored) of held-out messages' engagement under a policy."""
    scored = model.predict_proba(held[c.CUSTOMER_ID], held[c.CHANNEL], serve)
    eng = engagement_ts(held)
    y = (eng.notna() & (eng < outcomes_until)).to_numpy(dtype=float)
    return y, scored[PROBABILITY].to_numpy(), scored


def _fit_models(
    tables: Tables, fit_end, config, with_channel: bool, fit_conversion: bool = True, send_time_params=None
):
    """The send-time model (with `send_time_params`) and the channel model fitted on what came
    before `fit_end` (`fit_conversion`: see `ChannelModel`)."""
    has_messages = tables.messages is not None and len(tables.messages) > 0
    before = None if tables.events is None else rows_before(tables.events, c.TS, fit_end, EVENT_COLUMNS)
    train_messages = tables.messages.loc[tables.messages[c.SENT_TS] < fit_end] if has_messages else None
    send_time = SendTimeModel(random_state=config.random_state, **(send_time_params or {})).fit(
        before, train_messages, tables.customers, as_of=fit_end
    )
    channel = None
    if with_channel and has_messages and len(train_messages):
        try:
            channel = ChannelModel(random_state=config.random_state, fit_conversion=fit_conversion).fit(
                train_messages,
                before,
                tables.consent,
                tables.customers,
                as_of=fit_end,
                identities=tables.identities,
            )
        except CannotTrain:
            channel = None
    return send_time, channel


def _policy_scores(
    send_time: SendTimeModel,
    channel: ChannelModel | None,
    tables: Tables,
    start,
    end,
    config,
    test: dict | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Every policy's scores on the window [start, end) (outcomes known by `end`): per family,
    {policy: {metric: value}}. `test`: a dict that the test window's extra data (reliability
    tables, the lift tables, the model's held-out AUC of the grid, and each policy's per-row
    scores with the rows they are of: what a champion is later judged beside) are written to."""
    out: dict[str, dict[str, dict[str, float]]] = {"send_time": {}, "channel": {}}
    messages, events = tables.messages, tables.events
    if messages is not None and len(messages):
        held = _held(messages, start, end, send_time.open_window_days_)
        if len(held) >= MIN_VALIDATION_ROWS or test is not None and len(held):
            if test is not None:
                test["send_time_held"] = held
            for mode in SEND_TIME_POLICIES:
                scores = _send_scores(send_time, held, mode)
                out["send_time"][mode] = {
                    f"matched_{k}": v
                    for k, v in _matched_sends(scores, held, end, config.match_hours).items()
                }
                if test is not None:
                    test[f"send_time_{mode}_scores"] = scores
                if mode == "model" and test is not None:
                    y = engaged_before(held, end)
                    test["send_time_fit"] = binary_metrics(y, scores.probability)
                    test["send_time_reliability"] = reliability_table(y, scores.probability).to_dict(
                        orient="list"
                    )
    # on a validation window the activity hit rate only decides where the matched sends cannot
    matched = bool(out["send_time"]) and all(
        out["send_time"].get(mode, {}).get("matched_n_matched", 0.0) >= MIN_VALIDATION_ROWS
        for mode in SEND_TIME_POLICIES
    )
    if events is not None and len(events) and (test is not None or not matched):
        held_events = events.loc[(events[c.TS] >= start) & (events[c.TS] < end)]
        if len(held_events) >= MIN_VALIDATION_ROWS or test is not None and len(held_events):
            active = _active_hours(held_events)
            for mode in SEND_TIME_POLICIES:
                hits = _activity_hits(send_time, active, config.match_hours, mode)
                out["send_time"].setdefault(mode, {}).update(_hit_rate(hits, config.match_hours))
                if test is not None:
                    test[f"send_time_{mode}_hits"] = hits
            if test is not None:
                test["activity_held"] = active
    if channel is None:
        return out
    held = _held(messages, start, end, channel.open_window_days_)
    if len(held) < MIN_VALIDATION_ROWS and not (test is not None and len(held)):
        return out
    if test is not None:
        test["channel_held"] = held
    for serve in CHANNEL_POLICIES:
        y, p, scored = _channel_engagement(channel, held, end, serve)
        values = {f"engagement_{k}": v for k, v in binary_metrics(y, p).items()}
        lift = channel_lift(channel, held, end, serve)
        values |= lift_metrics(lift)
        out["channel"][serve] = values
        if test is not None:
            test[f"channel_{serve}_lift"] = lift
            test[f"channel_{serve}_engagement"] = (y, p, scored["fallback"].to_numpy())
    return out


def _validation_window(start, split, data_end, test_days: float, evaluated: bool):
    """The validation window [fit_end, end) on which what is served is chosen: the last
    `test_days` before the test split (or, when the history is too short for a test window, before
    its end), shortened to a third of the history before it when that is shorter; None when under
    a day remains."""
    end = split if evaluated else data_end
    length = min(pd.Timedelta(days=test_days), (end - start) / 3)
    if length < pd.Timedelta(days=1):
        return None
    return end - length, end


# activity-only send-time grids: the windows of activity (hours either side) tried on validation
ACTIVITY_WINDOWS: tuple[int, ...] = (0, 1, 2, 3)


def choose_activity_window(
    send_time: SendTimeModel, events, start, end, config, metrics, notes
) -> int | None:
    """For a send-time model learned from activity alone: the `activity_window_hours` with the
    best activity hit rate on the validation window (a tie: the narrower); None where the model
    has message outcomes or the window too little activity."""
    if send_time.hour_prob_ is None or events is None:
        return None
    held = events.loc[(events[c.TS] >= start) & (events[c.TS] < end)]
    if len(held) < MIN_VALIDATION_ROWS:
        return None
    rates = {}
    for hours in ACTIVITY_WINDOWS:
        scored = copy.copy(send_time).set_params(activity_window_hours=hours)
        rates[hours] = activity_hit_rate(scored, held, config.match_hours)["activity_hit_rate"]
    best = max(ACTIVITY_WINDOWS, key=lambda h: (rates[h], -h))
    for hours, rate in rates.items():
        metrics[f"send_time.validation.activity_window_{hours}h.activity_hit_rate"] = rate
    notes.append(
        f"send time: activity counted within {best} h either side of the send hour, chosen on the "
        "validation window (activity hit rate "
        + ", ".join(f"{hours} h: {rate:.4f}" for hours, rate in rates.items())
        + ")"
    )
    return best


def choose_what_is_served(
    tables: Tables, window, config, metrics: dict, data: dict, notes: list, population: int | None = None
) -> dict:
    """Each family's model and its rules fitted before the validation window and scored on it
    (on a seeded sample of `config.max_validation_customers` customers when there are more);
    the best is what is served (`choose_served`). Returns {"channel": policy, "send_time": policy};
    the scores go to `metrics` (`<family>.validation.<policy>.<metric>`) and `data`. `tables`
    may be a random sample of every customer's (the evaluation's): `population` is then how many
    customers it was drawn from."""
    served = {"channel": "model", "send_time": "model"}
    if window is None:
        notes.append(
            "history too short for a validation window (under a day before the test window): "
            "the models are served without being compared with their rules"
        )
        data["validation"] = None
        return served
    fit_end, end = window
    sample, drawn_from = evaluation_sample(tables, config.max_validation_customers, config.random_state)
    if drawn_from is not None or population is not None:
        chosen_on = config.max_validation_customers if drawn_from is not None else config.max_eval_customers
        notes.append(
            f"what is served is chosen on a random sample of {chosen_on:,} of "
            f"{population if population is not None else drawn_from:,} customers (seed {config.random_state})"
        )
    # only what came before the window's end: outcomes after it are the test window's
    sample = dataclasses.replace(
        sample,
        events=None if sample.events is None else sample.events.loc[sample.events[c.TS] < end],
        messages=None if sample.messages is None else sample.messages.loc[sample.messages[c.SENT_TS] < end],
    )
    has_before = any(
        frame is not None and bool((frame[col] < fit_end).any())
        for frame, col in ((sample.events, c.TS), (sample.messages, c.SENT_TS))
    )
    if not has_before:
        data["validation"] = None
        notes.append("no history before the validation window: the models are served without validation")
        return served
    # what is served is chosen on engagement: the conversion model is not needed here
    send_time, channel = _fit_models(sample, fit_end, config, with_channel=True, fit_conversion=False)
    window_hours = choose_activity_window(send_time, sample.events, fit_end, end, config, metrics, notes)
    if window_hours is not None:
        data["send_time_params"] = {"activity_window_hours": window_hours}
        metrics["send_time.activity_window_hours"] = float(window_hours)
        send_time.set_params(activity_window_hours=window_hours)
    scores = _policy_scores(send_time, channel, sample, fit_end, end, config)
    data["validation"] = {"start": fit_end.isoformat(), "end": end.isoformat(), "scores": scores}
    families = (
        ("channel", CHANNEL_POLICIES, CHANNEL_CHOICE_METRICS),
        ("send_time", SEND_TIME_POLICIES, SEND_TIME_CHOICE_METRICS),
    )
    for family, policies, choice_metrics in families:
        if family == "channel" and channel is None:
            if tables.messages is not None and len(tables.messages):
                notes.append(
                    "channel: no messages before the validation window; the model is served without validation"
                )
            continue
        served[family], _, reason = choose_served(scores[family], policies, choice_metrics)
        notes.append(f"{family.replace('_', ' ')}: serves {POLICY_NAMES[served[family]]}; {reason}")
        for policy, values in scores[family].items():
            for key in VALIDATION_METRICS[family]:
                if key in values:
                    metrics[f"{family}.validation.{policy}.{key}"] = float(values[key])
    return served


# ----------------------------------------------------------------------------------------------
# evaluation
def evaluation_sample(
    tables: Tables, max_customers: int | None, random_state: int
) -> tuple[Tables, int | None]:
    """The tables cut to a seeded random sample of `max_customers` customers, every row of theirs
    kept (events, messages, consent, identities, customers), and the number of customers sampled
    from; the tables as they are and None when there are no more customers than that. The same
    tables and seed give the same sample, so a champion re-scored on them meets the same customers."""
    frames = [f for f in (tables.customers, tables.events, tables.messages) if f is not None and len(f)]
    if not max_customers or not frames:
        return tables, None
    ids = pd.Index(
        pd.unique(np.concatenate([pd.unique(f[c.CUSTOMER_ID].dropna().astype(str)) for f in frames]))
    ).sort_values()
    if len(ids) <= max_customers:
        return tables, None
    rng = np.random.default_rng(random_state)
    chosen = pd.Index(np.sort(rng.choice(ids.to_numpy(), max_customers, replace=False)))

    def theirs(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None:
            return None
        return frame.loc[positions(chosen, frame[c.CUSTOMER_ID]) >= 0]

    sample = dataclasses.replace(
        tables,
        events=theirs(tables.events),
        messages=theirs(tables.messages),
        customers=theirs(tables.customers),
        consent=theirs(tables.consent),
        identities=theirs(tables.identities),
    )
    return sample, len(ids)


def evaluate_channel_and_send_time(
    tables: Tables, config: ChannelTrainingConfig | None = None, held_out: dict | None = None
) -> tuple[dict[str, float], dict[str, Any], list[str]]:
    """Choose what is served on a validation window before the test split, fit before the split
    and score every policy on what came after; returns (metrics, evaluation data, notes).
    `data["served"]` is {"channel": "model" | "rule", "send_time": "model" | "customer_modal_hour"
    | "global_best_hour"}.
    `held_out`: a dict that receives what a registered champion is later judged beside
    (`champion_window_scores`): the test window's rows (of the evaluation sample) and the served
    policies' per-row scores there, so that the challenger is not scored twice."""
    config = config or ChannelTrainingConfig()
    notes: list[str] = []
    metrics: dict[str, float] = {}
    data: dict[str, Any] = {}
    messages = tables.messages
    has_messages = messages is not None and len(messages) > 0
    if not has_messages and (tables.events is None or len(tables.events) == 0):
        raise CannotTrain("channel and send time need events or messages with timestamps; there are none")
    data_start, data_end = _data_bounds(tables)
    if held_out is not None:
        held_out["last"] = data_end
    if has_messages:
        split = messages[c.SENT_TS].max() - pd.Timedelta(days=config.test_days)
    else:
        split = data_end - pd.Timedelta(days=config.test_days)
    data_end = data_end + pd.Timedelta(seconds=1)
    data["split_time"] = split.isoformat()
    evaluated = data_start < split
    # the windows come from every customer's data (above), the models from a sample's: the
    # validation's sample is drawn from the evaluation's (one pass over every customer's rows)
    tables, population = evaluation_sample(tables, config.max_eval_customers, config.random_state)
    served = choose_what_is_served(
        tables,
        _validation_window(data_start, split, data_end, config.test_days, evaluated),
        config,
        metrics,
        data,
        notes,
        population,
    )
    data["served"] = served

    if population is not None:
        notes.append(
            f"evaluated on a random sample of {config.max_eval_customers:,} of {population:,} customers "
            f"(seed {config.random_state}): the evaluation's models are fitted on their history only; "
            "the registered models are fitted on every customer"
        )
        metrics["channel.evaluation_customers"] = float(config.max_eval_customers)
    before_split = any(
        frame is not None and bool((frame[col] < split).any())
        for frame, col in ((tables.events, c.TS), (tables.messages, c.SENT_TS))
    )
    if not before_split:
        notes.append(
            f"history too short for a {config.test_days}-day evaluation window: nothing before "
            f"{split.isoformat()} to learn from; the models were not evaluated"
        )
        return metrics, data, notes
    send_time, channel = _fit_models(
        tables, split, config, with_channel=True, send_time_params=data.get("send_time_params")
    )
    extra: dict[str, Any] = {}
    scores = _policy_scores(send_time, channel, tables, split, data_end, config, test=extra)
    if held_out is not None:
        held_out |= _served_rows(extra, served, send_time, channel) | {"split": split, "end": data_end}
    _report_send_time(scores["send_time"], extra, has_messages, served["send_time"], metrics, data, notes)
    if not has_messages:
        notes.append(
            "channel model skipped: there is no messages table, so no channel responses to learn from"
        )
        return metrics, data, notes
    if channel is None:
        notes.append("channel: no messages before the split; not evaluated")
        return metrics, data, notes
    _report_channel(
        channel,
        tables.messages,
        scores["channel"],
        extra,
        split,
        data_end,
        served["channel"],
        metrics,
        data,
        notes,
    )
    return metrics, data, notes


def _report_send_time(scores, extra, has_messages, served, metrics, data, notes) -> None:
    """The test window's send-time figures: the model's under the keys they always had
    (`send_time.matched_*`, `send_time.heldout_*`, `send_time.activity_*`), each rule's under
    `send_time.<rule>.*`, the served policy's under `send_time.served.*`."""
    model = scores.get("model", {})
    if has_messages and not any(k.startswith("matched_") for k in model):
        notes.append("send time: no held-out messages with observed outcomes; not evaluated")
    metrics |= {f"send_time.{k}": v for k, v in model.items()}
    if "send_time_fit" in extra:
        metrics |= {f"send_time.heldout_{k}": v for k, v in extra["send_time_fit"].items()}
        data["send_time_reliability"] = extra["send_time_reliability"]
    for policy in SEND_TIME_POLICIES[:-1]:
        metrics |= {f"send_time.{policy}.{k}": v for k, v in scores.get(policy, {}).items()}
    metrics |= {f"send_time.served.{k}": v for k, v in scores.get(served, {}).items()}
    if not has_messages:
        notes.append("send time: no messages, evaluated on held-out activity hours (activity_hit_rate)")


def _report_channel(channel, messages, scores, extra, split, data_end, served, metrics, data, notes) -> None:
    """The test window's channel figures: the model's under the keys they always had
    (`channel.engagement_*`, `channel.conversion_*`, `channel.top_channel_*`), the rule's under
    `channel.rule.*`, the served policy's under `channel.served.*`."""
    if "model" not in scores:
        notes.append("channel engagement: no held-out messages with a complete outcome window; not evaluated")
    else:
        y, p, fallback = extra["channel_model_engagement"]
        metrics |= {f"channel.{k}": v for k, v in scores["model"].items()}
        if fallback.any() and (~fallback).any():
            metrics["channel.engagement_auc_fallback"] = binary_metrics(y[fallback], p[fallback])["auc"]
        data["channel_engagement_reliability"] = reliability_table(y, p).to_dict(orient="list")
        data["channel_lift"] = extra["channel_model_lift"].to_dict(orient="list")
        data["channel_rule_lift"] = extra["channel_rule_lift"].to_dict(orient="list")
        metrics |= {f"channel.rule.{k}": v for k, v in scores["rule"].items()}
        metrics |= {f"channel.served.{k}": v for k, v in scores[served].items()}
    held = _held(messages, split, data_end, channel.conversion_window_days_)
    if held.empty:
        notes.append("channel conversion: no held-out messages with a complete outcome window; not evaluated")
        return
    scored = channel.predict_proba(held[c.CUSTOMER_ID], held[c.CHANNEL])
    conv = (
        held[c.CONVERTED_TS]
        if c.CONVERTED_TS in held.columns
        else pd.Series(pd.NaT, index=held.index, dtype="datetime64[us, UTC]")
    )
    y = (conv.notna() & (conv < data_end)).to_numpy(dtype=float)
    p = scored["conversion_probability"].to_numpy()
    metrics |= {f"channel.conversion_{k}": v for k, v in binary_metrics(y, p).items()}
    fallback = scored["fallback"].to_numpy()
    if fallback.any() and (~fallback).any():
        metrics["channel.conversion_auc_fallback"] = binary_metrics(y[fallback], p[fallback])["auc"]
    data["channel_conversion_reliability"] = reliability_table(y, p).to_dict(orient="list")


# ----------------------------------------------------------------------------------------------
# the registered champion, as deployed, beside the challenger on the same new window
def _served_rows(extra: dict, served: dict, send_time: SendTimeModel, channel: ChannelModel | None) -> dict:
    """From the test window's scoring (`_policy_scores(test=extra)`): the rows the served
    policies were scored on and their per-row scores, what `champion_window_scores` judges a
    champion beside (the messages' columns a champion reads, no more)."""
    kept: dict[str, Any] = {"fitted": {"send_time": True, "channel": channel is not None}}
    if channel is not None and "channel_held" in extra:
        y, p, _ = extra[f"channel_{served['channel']}_engagement"]
        held = extra["channel_held"][[c.CUSTOMER_ID, c.CHANNEL, c.SENT_TS]]
        kept["channel"] = (held, y, p, float(channel.open_window_days_))
    if "send_time_held" in extra:
        held = extra["send_time_held"]
        columns = [c.CUSTOMER_ID, c.CHANNEL, c.SENT_TS] + [
            col for col in (c.OPENED_TS, c.CLICKED_TS) if col in held.columns
        ]
        scores = extra[f"send_time_{served['send_time']}_scores"]
        kept["send_time"] = (held[columns], scores, float(send_time.open_window_days_))
    if "activity_held" in extra:
        kept["activity"] = (extra["activity_held"], extra[f"send_time_{served['send_time']}_hits"])
    return kept


def _utc(ts) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def champion_window_scores(family: str, champion, held_out: dict, config: ChannelTrainingConfig) -> dict:
    """The registered champion of `family` ("channel" or "send_time"), as deployed (its own state
    and the policy it serves, never refitted), and the challenger (this run's model fitted before
    the test window, serving what this run chose), scored on the same rows of the evaluation
    sample: the test window's messages sent after both were trained (from the later of the split
    and the champion's cut-off, `as_of_`; their outcomes known by the end of the data), or,
    for send time without enough of them, the active hours since. The metric is the one the
    family is promoted on: the engagement AUC for channel; the matched sends' stratified rate,
    else the activity hit rate, for send time.

    Returns {"score", "challenger_score", "note", "metric"}: `score` None when there is no data
    (or too little: under MIN_VALIDATION_ROWS rows) after the champion's training (the gate then
    keeps it); no "score" key where the challenger could not be fitted before the window (this
    run was not evaluated: the champion cannot be compared, and is replaced as before)."""
    as_of = _utc(champion.as_of_)
    kind = "messages" if family == "channel" else "messages or activity"
    if "last" in held_out and as_of > held_out["last"]:
        return {
            "score": None,
            "challenger_score": None,
            "note": f"no {kind} after the champion's training (its data end at {as_of:%Y-%m-%d %H:%M}): "
            "it cannot be judged on new data",
        }
    if not held_out.get("fitted", {}).get(family):
        return {
            "challenger_score": None,
            "note": "this run's model could not be fitted before the test window, so the champion "
            "is not compared on new data",
        }
    start = max(_utc(held_out["split"]), as_of)
    end = held_out["end"]
    try:
        if family == "channel":
            judged = _champion_channel(champion, held_out.get("channel"), start, end)
        else:
            judged = _champion_send_time(champion, held_out, start, end, config.match_hours)
    except (ValueError, KeyError, IndexError) as exc:  # a champion this code loads but cannot score
        return {"challenger_score": None, "note": f"the champion cannot be scored by this code: {exc}"}
    if judged is None:
        return {
            "score": None,
            "challenger_score": None,
            "note": f"fewer than {MIN_VALIDATION_ROWS} held-out {kind} with known outcomes after the "
            f"champion's training (its data end at {as_of:%Y-%m-%d %H:%M}): it cannot be judged "
            "on new data",
        }
    metric, score, challenger_score, rows = judged
    return {
        "score": float(score),
        "challenger_score": float(challenger_score),
        "metric": metric,
        "window_start": start.isoformat(),
        "rows": int(rows),
        "note": f"the champion as deployed and the challenger fitted before the test window, both on "
        f"the {int(rows):,} held-out {_rows_name(metric)} from {start:%Y-%m-%d %H:%M}",
    }


def _rows_name(metric: str) -> str:
    return "active hours" if metric == "activity_hit_rate" else "messages"


def _sent_between(frame: pd.DataFrame, start, end, wait_days: float) -> np.ndarray:
    sent = frame[c.SENT_TS]
    return ((sent >= start) & (sent < end - pd.Timedelta(days=wait_days))).to_numpy(dtype=bool)


def _champion_channel(champion: ChannelModel, kept, start, end):
    """(metric, champion's, challenger's, rows): the engagement AUC of the messages sent from
    `start` whose outcome window (the longer of the two models') closed by `end`; None: too few."""
    if kept is None:
        return None
    held, y, p, wait = kept
    mask = _sent_between(held, start, end, max(wait, float(champion.open_window_days_)))
    if mask.sum() < MIN_VALIDATION_ROWS or len(np.unique(y[mask])) < 2:
        return None
    rows = held.loc[mask]
    deployed = champion.predict_proba(rows[c.CUSTOMER_ID], rows[c.CHANNEL])[PROBABILITY].to_numpy()
    return (
        "engagement_auc",
        binary_metrics(y[mask], deployed)["auc"],
        binary_metrics(y[mask], p[mask])["auc"],
        int(mask.sum()),
    )


def _champion_send_time(champion: SendTimeModel, held_out: dict, start, end, match_hours: int):
    """(metric, champion's, challenger's, rows): the matched sends' channel-stratified rate on the
    messages sent from `start` whose open window closed by `end` when each policy matches at least
    MIN_VALIDATION_ROWS of them, else the activity hit rate of the active hours from `start`; None:
    too few of either."""
    kept = held_out.get("send_time")
    if kept is not None:
        held, scores, wait = kept
        mask = _sent_between(held, start, end, max(wait, float(champion.open_window_days_)))
        if mask.sum() >= MIN_VALIDATION_ROWS:
            rows = held.loc[mask]
            challenger = _matched_sends(
                _SendScores(scores.hour[mask], scores.best_hour[mask], None), rows, end, match_hours
            )
            deployed = _matched_sends(_send_scores(champion, rows, champion.serve), rows, end, match_hours)
            values = [m.get("stratified_rate_matched", float("nan")) for m in (deployed, challenger)]
            support = min(m.get("n_matched", 0.0) for m in (deployed, challenger))
            if all(np.isfinite(values)) and support >= MIN_VALIDATION_ROWS:
                return "matched_stratified_rate_matched", values[0], values[1], int(mask.sum())
    kept = held_out.get("activity")
    if kept is None:
        return None
    active, hits = kept
    mask = (active[c.TS] >= start).to_numpy(dtype=bool)
    if mask.sum() < MIN_VALIDATION_ROWS:
        return None
    deployed = _activity_hits(champion, active.loc[mask], match_hours, champion.serve)
    return "activity_hit_rate", float(deployed.mean()), float(hits[mask].mean()), int(mask.sum())


def _score_champions(champions: dict, held_out: dict, config: ChannelTrainingConfig) -> dict[str, dict]:
    """`champion_window_scores` of each family's champion (`champions`: family → the model, or a
    callable that loads it, None: there is none), loaded one at a time once the stage's fits are
    done, so that a champion's memory never adds to theirs."""
    out = {}
    for family, champion in champions.items():
        model = champion() if callable(champion) else champion
        if model is not None:
            out[family] = champion_window_scores(family, model, held_out, config)
        del model
    return out


# ----------------------------------------------------------------------------------------------
# training
def _rows(tables: Tables) -> int:
    """Event and message rows: what the evaluation and the refit each read (and copy parts of)."""
    return sum(len(frame) for frame in (tables.events, tables.messages) if frame is not None)


def _evaluation_rows(tables: Tables, config: ChannelTrainingConfig) -> int:
    """About how many event and message rows the evaluation reads: every row, or on a sample of
    `max_eval_customers` customers their share of them."""
    rows = _rows(tables)
    frames = [f for f in (tables.customers, tables.events, tables.messages) if f is not None and len(f)]
    if not config.max_eval_customers or not frames:
        return rows
    # the customers table lists everyone when there is one (else the ids of the largest table)
    customers = len(tables.customers) if tables.customers is not None and len(tables.customers) else None
    if customers is None:
        customers = int(max(frames, key=len)[c.CUSTOMER_ID].nunique())
    return int(rows * min(1.0, config.max_eval_customers / max(customers, 1)))


def train_channel_and_send_time(
    tables: Tables,
    as_of: pd.Timestamp | None = None,
    random_state: int = 42,
    config: ChannelTrainingConfig | None = None,
    evaluate: bool = True,
    champions: dict | None = None,
) -> ChannelTrainingResult:
    """Evaluate on a time split (unless `evaluate` is False), then fit both models on all data
    before `as_of` (default: all of it). `tables` should already be identity-stitched.
    `champions`: the registered champions, {"channel" | "send_time": model, or a callable that
    loads it (None: there is none)}; each is judged beside this run's model fitted before the
    test window on the same new rows (`champion_window_scores`), in `ChannelTrainingResult.champion`."""
    config = config or ChannelTrainingConfig(random_state=random_state)
    if as_of is not None:  # nothing at or after as_of may be seen, by the evaluation either
        as_of = pd.Timestamp(as_of)
        as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
        tables = dataclasses.replace(
            tables,
            events=None if tables.events is None else tables.events.loc[tables.events[c.TS] < as_of],
            messages=None
            if tables.messages is None
            else tables.messages.loc[tables.messages[c.SENT_TS] < as_of],
        )
    notes: list[str] = []
    metrics: dict[str, float] = {}
    data: dict[str, Any] = {}
    has_messages = tables.messages is not None and len(tables.messages) > 0
    held_out: dict | None = {} if champions else None  # what a champion is judged beside

    def refit() -> tuple[SendTimeModel, ChannelModel | str]:
        """Both models on everything (the channel model: or why it cannot be learned)."""
        send_time = SendTimeModel(random_state=config.random_state).fit(
            tables.events, tables.messages if has_messages else None, tables.customers, as_of=as_of
        )
        if not has_messages:
            return send_time, "there is no messages table, so no channel responses to learn from"
        try:
            return send_time, ChannelModel(random_state=config.random_state).fit(
                tables.messages,
                tables.events,
                tables.consent,
                tables.customers,
                as_of=as_of,
                identities=tables.identities,
            )
        except CannotTrain as reason:
            return send_time, str(reason)

    if (tables.events is None or len(tables.events) == 0) and not has_messages:
        raise CannotTrain(
            "channel and send time need events or messages with timestamps to learn from; there are none"
        )

    # The evaluation's models and the refit are independent and seeded: with a second core, the
    # refit runs beside the evaluation (numpy, pandas and LightGBM release the GIL for their heavy
    # parts), and the models are the ones a sequential run gives. What running them side by side
    # adds to memory is the evaluation's working set (on its sample of customers), so that is what
    # decides it.
    with fit_pool(2 if evaluate else 1, rows=_evaluation_rows(tables, config)) as pool:
        refitted = pool.submit(refit) if pool is not None else None
        if evaluate:
            metrics, data, notes = evaluate_channel_and_send_time(tables, config, held_out)
        send_time, channel = refitted.result() if refitted is not None else refit()
    champion = None
    if champions:  # after the fits: a champion's memory never adds to theirs
        held_out.setdefault("last", _data_bounds(tables)[1])
        champion = data["champion"] = _score_champions(champions, held_out, config)
    del held_out
    served = data.get("served") or {"channel": "model", "send_time": "model"}
    if not evaluate:
        notes.append("not evaluated: the models are served without being compared with their rules")
    # the policy and the settings chosen on validation (the activity window of an activity-only grid)
    send_time.set_params(serve=served["send_time"], **data.get("send_time_params", {}))
    notes += [f"send time: {note}" for note in send_time.notes_]
    if isinstance(channel, str):
        if not any("channel model skipped" in n for n in notes):
            notes.append(f"channel model skipped: {channel}")
        channel = None
    else:
        channel.set_params(serve=served["channel"])
        notes += [f"channel: {note}" for note in channel.notes_]
        unreachable = channel.count_without_channel()
        metrics["channel.customers"] = float(len(channel.customer_ids_))
        metrics["channel.customers_without_channel"] = float(unreachable)
        metrics["channel.fallback_share"] = float(channel.fallback(channel.customer_ids_).mean())
    metrics["send_time.customers"] = float(len(send_time.customer_ids_))
    metrics["send_time.fallback_share"] = float(send_time.fallback(send_time.customer_ids_).mean())

    artifacts: dict[str, Any] = {"evaluation/channel_send_time.json": data | {"notes": notes}}
    artifacts.update(send_time_plots(send_time, config))
    if channel is not None and "channel_lift" in data:
        artifacts["channel/lift.png"] = plot_channel_lift(data)
    served = {"channel": served["channel"] if channel is not None else None, "send_time": served["send_time"]}
    return ChannelTrainingResult(channel, send_time, metrics, artifacts, notes, served, champion)


# ----------------------------------------------------------------------------------------------
# plots
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def heatmap_customers(model: SendTimeModel, n: int) -> list[str]:
    """A few customers worth looking at: the ones with most activity and messages, then thin ones."""
    volume = model.n_active_ + model.n_messages_
    order = np.argsort(-volume, kind="stable")
    rich = [str(model.customer_ids_[i]) for i in order[: max(1, n - n // 2)]]
    thin = np.flatnonzero(model.fallback(model.customer_ids_))
    return rich + [str(model.customer_ids_[i]) for i in thin[: n // 2]]


def send_time_plots(model: SendTimeModel, config: ChannelTrainingConfig) -> dict[str, Any]:
    """Heat maps of the weekly grid: the population's mean and a few customers'."""
    channel = str(model.channels_[0]) if len(model.channels_) else None
    ids = heatmap_customers(model, config.heatmap_customers)
    population = model.score_grid(model.customer_ids_, channel).mean(axis=0)
    grids = {"population (mean)": population} | {
        f"{cid}{' (fallback)' if fb else ''}": g
        for cid, g, fb in zip(ids, model.score_grid(ids, channel), model.fallback(ids), strict=True)
    }
    plt = _pyplot()
    if plt is None:
        return {
            "send_time/heatmaps.json": {
                "channel": channel,
                "grids": {k: v.tolist() for k, v in grids.items()},
            }
        }
    return {"send_time/heatmaps.png": plot_send_time_heatmaps(grids, channel)}


def plot_send_time_heatmaps(grids: dict[str, np.ndarray], channel: str | None):
    """One 7 × 24 heat map per grid (rows Monday..Sunday, columns local hour)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(grids), 1, figsize=(10, 1.9 * len(grids) + 0.6), squeeze=False)
    for ax, (title, grid) in zip(axes[:, 0], grids.items(), strict=True):
        image = ax.imshow(np.asarray(grid).reshape(7, HOURS), aspect="auto", cmap="viridis")
        ax.set_yticks(range(7), ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], fontsize=7)
        ax.set_xticks(range(0, HOURS, 2), [f"{h:02d}" for h in range(0, HOURS, 2)], fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    fig.suptitle(f"send-time grid, P(engagement) by local slot ({channel or 'any channel'})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_channel_lift(data: dict[str, Any]):
    """Held-out engagement rate by the rank of the channel used, and the reliability diagram."""
    plt = _pyplot()
    if plt is None:
        return {
            "channel_lift": data.get("channel_lift"),
            "reliability": data.get("channel_engagement_reliability"),
        }
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    lift = pd.DataFrame(data["channel_lift"])
    labels = ["not ranked" if r == 0 else f"rank {r}" for r in lift[c.RANK]]
    left.bar(labels, lift["rate"], color="tab:blue")
    for i, (rate, n) in enumerate(zip(lift["rate"], lift["n"], strict=True)):
        left.text(i, rate, f"n={n}", ha="center", va="bottom", fontsize=7)
    left.set_ylabel("held-out engagement rate")
    left.set_title("messages by our rank of the channel they went out on", fontsize=9)
    reliability = data.get("channel_engagement_reliability")
    if reliability:
        table = pd.DataFrame(reliability)
        top = float(max(table["predicted"].max(), table["observed"].max()))
        right.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
        right.plot(table["predicted"], table["observed"], marker="o")
        right.set_xlabel("predicted engagement probability")
        right.set_ylabel("observed rate")
        right.set_title("calibration on held-out messages (deciles)", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# MLflow
def log_engagement_run(result: ChannelTrainingResult) -> None:
    """Inside an active MLflow run: the stage's metrics, which policy each family serves, its
    notes and plots (once per run, whichever of its families registers)."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
    # which policy each registered model serves (chosen on validation): "model" or a rule
    mlflow.set_tags(
        {f"{family}.served": policy for family, policy in (result.served or {}).items() if policy}
    )
    mlflow.log_dict({"notes": result.notes}, "channel_send_time_notes.json")
    for name, artifact in result.artifacts.items():
        if isinstance(artifact, dict):
            mlflow.log_dict(artifact, name if name.endswith(".json") else f"{name}.json")
        else:
            mlflow.log_figure(artifact, name)
