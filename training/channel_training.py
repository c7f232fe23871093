"""Training, evaluation, plots and MLflow logging of the channel and send-time models.

`train_channel_and_send_time(tables)` is the step `omni train` runs after the recommender:

1. Time-based evaluation. The models are fitted on everything before a split time (the last
   `test_days` days of messages, or of events without messages) and scored on what came after:
   - channel: AUC, log loss, Brier score and expected calibration error of the engagement and
     conversion probabilities on held-out messages (features frozen at the split, as a batch
     score would be), and the held-out engagement rate of messages that happened to go out on the
     customer's top-ranked channel against the others (`channel_lift`);
   - send time: the matched-sends estimate (`matched_sends_estimate`): the engagement rate of
     held-out sends that went out within ±1 h of the hour we would have chosen for that customer,
     channel and weekday, against the rest, with a 95% confidence interval (also stratified by
     channel, because the logging policy's channel mix differs by hour); plus AUC / log loss of
     the grid's probability at the actual send slot. Without messages: the share of held-out
     active hours within ±1 h of the chosen hour (`activity_hit_rate`), against chance (3/24).
2. Refit on the whole history; these are the models that are registered.

The channel model needs messages: without a messages table it is skipped (None, with a note).
Plots need matplotlib; without it the artefacts carry the plotted numbers as JSON instead.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from features import columns as c
from features.codes import positions
from features.io import Tables, rows_before
from models.channel import EVENT_COLUMNS, PROBABILITY, ChannelModel, engagement_ts
from models.fitting import fit_pool
from models.send_time import HOURS, SendTimeModel, engaged_before, local_slots

REGISTERED_CHANNEL = "omni-channel"
REGISTERED_SEND_TIME = "omni-send-time"
_Z95 = float(norm.ppf(0.975))


@dataclasses.dataclass
class ChannelTrainingConfig:
    test_days: int = 28  # held-out window at the end of the message history (or events)
    match_hours: int = 1  # a held-out send "matches" our hour when it is within this many hours
    heatmap_customers: int = 4
    random_state: int = 42
    # The evaluation's models are fitted and scored on a seeded random sample of this many
    # customers (all their rows) when there are more; None or 0: every customer. The registered
    # models are always refitted on everyone. A quarter of a million customers leave hundreds of
    # thousands of held-out messages to score, and at a million customers the evaluation's fits
    # on everyone took as long as the refit.
    max_eval_customers: int | None = 250_000


class ChannelTrainingResult(NamedTuple):
    channel_model: ChannelModel | None
    send_time_model: SendTimeModel
    metrics: dict[str, float]
    artifacts: dict[str, Any]  # name -> matplotlib Figure, or JSON-able dict when matplotlib is missing
    notes: list[str]


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
    difference (per-channel differences weighted by the number of matched sends) next to the raw one.
    `scores`: `_send_scores(model, messages)` when the caller already has them.
    """
    if messages is None or len(messages) == 0:
        return {}
    scores = scores if scores is not None else _send_scores(model, messages)
    return _matched_sends(scores, messages, outcomes_until, match_hours)


class _SendScores(NamedTuple):
    """Per message: its local send hour, our best hour for its customer, channel and local
    weekday, and the grid's probability at its local send slot."""

    hour: np.ndarray
    best_hour: np.ndarray
    probability: np.ndarray


_GRID_CUSTOMERS = 65536  # customers per block of grids (block × 168 floats)


def _send_scores(model: SendTimeModel, messages: pd.DataFrame) -> _SendScores:
    """`_SendScores` of messages, from one grid per customer and channel: a customer's messages
    share it (the held-out window has several per customer, each scored again before)."""
    msgs = messages.reset_index(drop=True)
    ids = msgs[c.CUSTOMER_ID].astype(str).to_numpy()
    slots = local_slots(msgs[c.SENT_TS], pd.Series(model.timezone_of(ids)))
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
    # channel-stratified difference
    diffs, weights, variances = [], [], []
    for ch in msgs[c.CHANNEL].astype(str).unique():
        sel = (msgs[c.CHANNEL].astype(str) == ch).to_numpy()
        a, b = y[sel & matched], y[sel & ~matched]
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
    out["match_hours"] = float(match_hours)
    return out


def activity_hit_rate(model: SendTimeModel, events: pd.DataFrame, match_hours: int = 1) -> dict[str, float]:
    """Share of held-out active hours (customer, clock hour) within ±match_hours of the customer's
    best local hour on that weekday, against chance ((2 * match_hours + 1) / 24)."""
    if events is None or len(events) == 0:
        return {}
    ev = events[[c.CUSTOMER_ID, c.TS]].dropna()
    ev = (
        ev.assign(_hour=ev[c.TS].dt.floor("h"))
        .drop_duplicates([c.CUSTOMER_ID, "_hour"])
        .reset_index(drop=True)
    )
    ids = ev[c.CUSTOMER_ID].astype(str)
    slots = local_slots(ev[c.TS], pd.Series(model.timezone_of(ids)))
    days, hours = slots // HOURS, slots % HOURS
    unique_ids, inverse = np.unique(ids.to_numpy(), return_inverse=True)
    grid = model.score_grid(unique_ids, None).reshape(len(unique_ids), 7, HOURS)
    best = np.argmax(grid[inverse, days], axis=1)
    hits = circular_hour_distance(hours, best) <= match_hours
    return {
        "activity_hit_rate": float(hits.mean()),
        "activity_hit_rate_chance": (2 * match_hours + 1) / HOURS,
        "activity_hours": float(len(hits)),
    }


def channel_lift(
    channel_model: ChannelModel, messages: pd.DataFrame, outcomes_until: pd.Timestamp
) -> pd.DataFrame:
    """Held-out engagement rate by the rank our model gave the channel a message went out on."""
    ranks = channel_model.rank_channels(messages[c.CUSTOMER_ID].astype(str).unique())
    msgs = (
        messages[[c.CUSTOMER_ID, c.CHANNEL]].astype(str).assign(_y=engaged_before(messages, outcomes_until))
    )
    merged = msgs.merge(ranks[[c.CUSTOMER_ID, c.CHANNEL, c.RANK]], on=[c.CUSTOMER_ID, c.CHANNEL], how="left")
    merged[c.RANK] = merged[c.RANK].fillna(0).astype(int)  # 0: not ranked (no consent at the split)
    table = merged.groupby(c.RANK)["_y"].agg(["mean", "size"]).rename(columns={"mean": "rate", "size": "n"})
    return table.reset_index()


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
    tables: Tables, config: ChannelTrainingConfig | None = None
) -> tuple[dict[str, float], dict[str, Any], list[str]]:
    """Fit before the split, score on what came after; returns (metrics, evaluation data, notes)."""
    config = config or ChannelTrainingConfig()
    notes: list[str] = []
    metrics: dict[str, float] = {}
    data: dict[str, Any] = {}
    events, messages = tables.events, tables.messages
    has_messages = messages is not None and len(messages) > 0
    data_end = events[c.TS].max() if events is not None and len(events) else messages[c.SENT_TS].max()
    if has_messages:
        data_end = max(data_end, messages[c.SENT_TS].max())
        split = messages[c.SENT_TS].max() - pd.Timedelta(days=config.test_days)
    else:
        split = data_end - pd.Timedelta(days=config.test_days)
    data_end = data_end + pd.Timedelta(seconds=1)
    data["split_time"] = split.isoformat()

    # the window comes from every customer's data (above), the models from a sample's
    tables, population = evaluation_sample(tables, config.max_eval_customers, config.random_state)
    if population is not None:
        notes.append(
            f"evaluated on a random sample of {config.max_eval_customers:,} of {population:,} customers "
            f"(seed {config.random_state}): the evaluation's models are fitted on their history only; "
            "the registered models are fitted on every customer"
        )
        metrics["channel.evaluation_customers"] = float(config.max_eval_customers)
    events, messages = tables.events, tables.messages

    # the columns both models read (send time: a subset), copied once for both
    before = None if events is None else rows_before(events, c.TS, split, EVENT_COLUMNS)
    train_messages = messages.loc[messages[c.SENT_TS] < split] if has_messages else None
    if (before is None or before.empty) and (train_messages is None or train_messages.empty):
        notes.append(
            f"history too short for a {config.test_days}-day evaluation window: nothing before "
            f"{split.isoformat()} to learn from; the models were not evaluated"
        )
        return metrics, data, notes
    send_time = SendTimeModel(random_state=config.random_state).fit(
        before,
        None if not has_messages else messages.loc[messages[c.SENT_TS] < split],
        tables.customers,
        as_of=split,
    )
    if has_messages:
        held_out = messages.loc[
            (messages[c.SENT_TS] >= split)
            & (messages[c.SENT_TS] < data_end - pd.Timedelta(days=send_time.open_window_days))
        ]
        if held_out.empty:
            notes.append("send time: no held-out messages with observed outcomes; not evaluated")
        else:
            scores = _send_scores(send_time, held_out)  # the matched sends and the fit share them
            matched = matched_sends_estimate(send_time, held_out, data_end, config.match_hours, scores)
            metrics |= {f"send_time.matched_{k}": v for k, v in matched.items()}
            y = engaged_before(held_out, data_end)
            p = scores.probability
            fit = binary_metrics(y, p)
            metrics |= {f"send_time.heldout_{k}": v for k, v in fit.items()}
            data["send_time_reliability"] = reliability_table(y, p).to_dict(orient="list")
    else:
        held_events = events.loc[events[c.TS] >= split]
        metrics |= {
            f"send_time.{k}": v
            for k, v in activity_hit_rate(send_time, held_events, config.match_hours).items()
        }
        notes.append("send time: no messages, evaluated on held-out activity hours (activity_hit_rate)")

    if not has_messages:
        notes.append(
            "channel model skipped: there is no messages table, so no channel responses to learn from"
        )
        return metrics, data, notes
    if train_messages.empty:
        notes.append("channel: no messages before the split; not evaluated")
        return metrics, data, notes
    channel = ChannelModel(random_state=config.random_state).fit(
        train_messages, before, tables.consent, tables.customers, as_of=split, identities=tables.identities
    )
    for target, window in (
        ("engagement", channel.open_window_days),
        ("conversion", channel.conversion_window_days),
    ):
        held = messages.loc[
            (messages[c.SENT_TS] >= split) & (messages[c.SENT_TS] < data_end - pd.Timedelta(days=window))
        ]
        if held.empty:
            notes.append(
                f"channel {target}: no held-out messages with a complete outcome window; not evaluated"
            )
            continue
        scored = channel.predict_proba(held[c.CUSTOMER_ID], held[c.CHANNEL])
        if target == "engagement":
            eng = engagement_ts(held)
            y = (eng.notna() & (eng < data_end)).to_numpy(dtype=float)
            p = scored[PROBABILITY].to_numpy()
        else:
            conv = (
                held[c.CONVERTED_TS]
                if c.CONVERTED_TS in held.columns
                else pd.Series(pd.NaT, index=held.index)
            )
            y = (conv.notna() & (conv < data_end)).to_numpy(dtype=float)
            p = scored["conversion_probability"].to_numpy()
        metrics |= {f"channel.{target}_{k}": v for k, v in binary_metrics(y, p).items()}
        fallback = scored["fallback"].to_numpy()
        if fallback.any() and (~fallback).any():
            metrics[f"channel.{target}_auc_fallback"] = binary_metrics(y[fallback], p[fallback])["auc"]
        data[f"channel_{target}_reliability"] = reliability_table(y, p).to_dict(orient="list")
    held = messages.loc[
        (messages[c.SENT_TS] >= split)
        & (messages[c.SENT_TS] < data_end - pd.Timedelta(days=channel.open_window_days))
    ]
    if len(held):
        lift = channel_lift(channel, held, data_end)
        data["channel_lift"] = lift.to_dict(orient="list")
        top, rest = lift.loc[lift[c.RANK] == 1], lift.loc[lift[c.RANK] > 1]
        if len(top) and len(rest):
            rest_rate = float((rest["rate"] * rest["n"]).sum() / rest["n"].sum())
            metrics["channel.top_channel_rate"] = float(top["rate"].iloc[0])
            metrics["channel.other_channel_rate"] = rest_rate
            metrics["channel.top_channel_lift"] = (
                float(top["rate"].iloc[0]) / rest_rate if rest_rate > 0 else float("nan")
            )
    return metrics, data, notes


# ----------------------------------------------------------------------------------------------
# training
def _rows(tables: Tables) -> int:
    """Event and message rows: what the evaluation and the refit each read (and copy parts of)."""
    return sum(len(frame) for frame in (tables.events, tables.messages) if frame is not None)


def train_channel_and_send_time(
    tables: Tables,
    as_of: pd.Timestamp | None = None,
    random_state: int = 42,
    config: ChannelTrainingConfig | None = None,
    evaluate: bool = True,
) -> ChannelTrainingResult:
    """Evaluate on a time split (unless `evaluate` is False), then fit both models on all data
    before `as_of` (default: all of it). `tables` should already be identity-stitched."""
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

    def refit() -> tuple[SendTimeModel, ChannelModel | None]:
        send_time = SendTimeModel(random_state=config.random_state).fit(
            tables.events, tables.messages if has_messages else None, tables.customers, as_of=as_of
        )
        if not has_messages:
            return send_time, None
        return send_time, ChannelModel(random_state=config.random_state).fit(
            tables.messages,
            tables.events,
            tables.consent,
            tables.customers,
            as_of=as_of,
            identities=tables.identities,
        )

    # The evaluation's models and the refit are independent and seeded: with a second core, the
    # refit runs beside the evaluation (numpy, pandas and LightGBM release the GIL for their heavy
    # parts), and the models are the ones a sequential run gives.
    with fit_pool(2 if evaluate else 1, rows=_rows(tables)) as pool:
        refitted = pool.submit(refit) if pool is not None else None
        if evaluate:
            metrics, data, notes = evaluate_channel_and_send_time(tables, config)
        send_time, channel = refitted.result() if refitted is not None else refit()
    notes += [f"send time: {note}" for note in send_time.notes_]
    if channel is not None:
        notes += [f"channel: {note}" for note in channel.notes_]
        unreachable = channel.count_without_channel()
        metrics["channel.customers"] = float(len(channel.customer_ids_))
        metrics["channel.customers_without_channel"] = float(unreachable)
        metrics["channel.fallback_share"] = float(channel.fallback(channel.customer_ids_).mean())
    elif not any("channel model skipped" in n for n in notes):
        notes.append(
            "channel model skipped: there is no messages table, so no channel responses to learn from"
        )
    metrics["send_time.customers"] = float(len(send_time.customer_ids_))
    metrics["send_time.fallback_share"] = float(send_time.fallback(send_time.customer_ids_).mean())

    artifacts: dict[str, Any] = {"evaluation/channel_send_time.json": data | {"notes": notes}}
    artifacts.update(send_time_plots(send_time, config))
    if channel is not None and "channel_lift" in data:
        artifacts["channel/lift.png"] = plot_channel_lift(data)
    return ChannelTrainingResult(channel, send_time, metrics, artifacts, notes)


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
_PYFUNC_SOURCE = '''"""MLflow pyfunc wrapper of the channel and send-time models (code-based: no pickle).

Written next to the model by `training.channel_training.log_channel_and_send_time`; the artefact
folder it finds ("channel" or "send_time") decides which model it serves.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ChannelSendTimePyfunc(PythonModel):
    def load_context(self, context):
        if "channel" in context.artifacts:
            from models.channel import ChannelModel

            self.kind, self.model = "channel", ChannelModel.load(context.artifacts["channel"])
        else:
            from models.send_time import SendTimeModel

            self.kind, self.model = "send_time", SendTimeModel.load(context.artifacts["send_time"])

    def predict(self, context, model_input, params=None):
        params = params or {}
        ids = model_input["customer_id"].astype(str).tolist()
        if self.kind == "channel":
            return self.model.rank_channels(ids)
        after = params.get("after") or pd.Timestamp.now(tz="UTC").isoformat()
        start, end = int(params.get("quiet_start", 21)), int(params.get("quiet_end", 8))
        return self.model.send_plan(ids, params.get("channel") or None, pd.Timestamp(after), (start, end))


mlflow.models.set_model(ChannelSendTimePyfunc())
'''


def log_channel_and_send_time(
    result: ChannelTrainingResult,
    registered_channel: str = REGISTERED_CHANNEL,
    registered_send_time: str = REGISTERED_SEND_TIME,
) -> dict[str, str]:
    """Inside an active MLflow run: log metrics, notes and plots, log both models as pyfunc models
    and register them; returns {registered name: version}. Aliasing (challenger / champion) is
    left to the caller, as for the recommender (`training.registry`)."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
    mlflow.log_dict({"notes": result.notes}, "channel_send_time_notes.json")
    for name, artifact in result.artifacts.items():
        if isinstance(artifact, dict):
            mlflow.log_dict(artifact, name if name.endswith(".json") else f"{name}.json")
        else:
            mlflow.log_figure(artifact, name)
    versions = {}
    with tempfile.TemporaryDirectory(prefix="omni-channel-") as tmp:
        wrapper = Path(tmp) / "channel_send_time_pyfunc.py"
        wrapper.write_text(_PYFUNC_SOURCE)
        if result.channel_model is not None:
            folder = result.channel_model.save(Path(tmp) / "channel")
            versions[registered_channel] = _log_pyfunc(wrapper, "channel", folder, registered_channel)
        folder = result.send_time_model.save(Path(tmp) / "send_time")
        versions[registered_send_time] = _log_pyfunc(wrapper, "send_time", folder, registered_send_time)
    return versions


def _log_pyfunc(wrapper: Path, kind: str, folder: Path, registered_name: str) -> str:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    package_root = Path(__file__).resolve().parent.parent
    if kind == "channel":
        outputs = [
            ColSpec("string", c.CUSTOMER_ID),
            ColSpec("string", c.CHANNEL),
            ColSpec("long", c.RANK),
            ColSpec("double", PROBABILITY),
            ColSpec("double", "conversion_probability"),
            ColSpec("boolean", "fallback"),
        ]
        params = None
    else:
        outputs = [
            ColSpec("string", c.CUSTOMER_ID),
            ColSpec("string", c.CHANNEL),
            ColSpec("string", c.TIMEZONE),
            ColSpec("long", "best_hour_local"),
            ColSpec("long", "best_weekday"),
            ColSpec("datetime", "next_send_utc"),
            ColSpec("boolean", "fallback"),
        ]
        params = ParamSchema(
            [
                ParamSpec("channel", "string", ""),
                ParamSpec("after", "string", ""),
                ParamSpec("quiet_start", "long", 21),
                ParamSpec("quiet_end", "long", 8),
            ]
        )
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", c.CUSTOMER_ID)]), outputs=Schema(outputs), params=params
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        info = mlflow.pyfunc.log_model(
            name=kind,
            python_model=str(wrapper),
            artifacts={kind: str(folder)},
            code_paths=[str(package_root / "models"), str(package_root / "features")],
            pip_requirements=_requirements(),
            signature=signature,
            registered_model_name=registered_name,
        )
    return str(info.registered_model_version)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{n}=={version(n)}"
        for n in ("numpy", "pandas", "scipy", "scikit-learn", "lightgbm", "numba", "mlflow")
    ]


def load_champion_channel_model(tracking_uri: str, name: str = REGISTERED_CHANNEL, alias: str = "champion"):
    """The aliased channel model and its version (LookupError with the reason when there is none)."""
    from training.tracking import download_model_folder

    folder, version = download_model_folder(tracking_uri, name, alias, artifact="channel")
    return ChannelModel.load(folder), version


def load_champion_send_time_model(
    tracking_uri: str, name: str = REGISTERED_SEND_TIME, alias: str = "champion"
):
    """The aliased send-time model and its version (LookupError with the reason when there is none)."""
    from training.tracking import download_model_folder

    folder, version = download_model_folder(tracking_uri, name, alias, artifact="send_time")
    return SendTimeModel.load(folder), version
