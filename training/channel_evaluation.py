"""What the channel and send-time step serves, and its time-based evaluation (steps 1 and 2 of
`training.channel_training.train_channel_and_send_time`):

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

The metrics are in `training.channel_metrics`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from features import columns as c
from features.codes import positions
from features.io import Tables, rows_before
from models.base import CannotTrain
from models.engagement.channel import PROBABILITY, ChannelModel
from models.engagement.channel_history import EVENT_COLUMNS
from models.engagement.send_time import SendTimeModel, engaged_before, engagement_ts
from training.channel_metrics import (
    active_hours,
    activity_hit_rate,
    activity_hits,
    binary_metrics,
    channel_lift,
    hit_rate,
    lift_metrics,
    matched_sends,
    reliability_table,
    send_scores,
)
from training.config import ChannelTrainingConfig

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


def data_bounds(tables: Tables) -> tuple[pd.Timestamp, pd.Timestamp]:
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
                scores = send_scores(send_time, held, mode)
                out["send_time"][mode] = {
                    f"matched_{k}": v for k, v in matched_sends(scores, held, end, config.match_hours).items()
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
            active = active_hours(held_events)
            for mode in SEND_TIME_POLICIES:
                hits = activity_hits(send_time, active, config.match_hours, mode)
                out["send_time"].setdefault(mode, {}).update(hit_rate(hits, config.match_hours))
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
    data_start, data_end = data_bounds(tables)
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
# what a registered champion is later judged beside (`training.channel_champion`)
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
