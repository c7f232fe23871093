"""Training and MLflow logging of the channel and send-time models.

`train_channel_and_send_time(tables)` is the step `omni train` runs after the recommender:

1. What is served. Each model is validated against simple rules on a window carved from the part
   before the test split, and the best is served (`training.channel_evaluation`). The registered
   models answer with the chosen policy (`ChannelModel.serve`, `SendTimeModel.serve`);
   `ChannelTrainingResult.served` and the MLflow tags `channel.served`, `send_time.served` say
   which. Nothing of the test window is used for that choice.
2. Time-based evaluation. The models are fitted on everything before a split time and scored on
   what came after, the rules beside them on the same messages (`training.channel_evaluation`,
   its metrics in `training.channel_metrics`).
3. Refit on the whole history; these are the models that are registered. A registered champion
   is judged beside this run's model on the same new window (`training.channel_champion`).

The channel model needs messages: without a messages table it is skipped (None, with a note).
Without events and messages nothing can be learned (`models.base.CannotTrain`).
Plots (`training.channel_plots`) need matplotlib; without it the artefacts carry the plotted
numbers as JSON instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from features import columns as c
from features.io import Tables
from models.base import CannotTrain
from models.engagement.channel import ChannelModel
from models.engagement.send_time import SendTimeModel
from models.fitting import fit_pool
from training.channel_champion import score_champions
from training.channel_evaluation import data_bounds, evaluate_channel_and_send_time
from training.channel_plots import plot_channel_lift, send_time_plots
from training.config import ChannelTrainingConfig


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
        held_out.setdefault("last", data_bounds(tables)[1])
        champion = data["champion"] = score_champions(champions, held_out, config)
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
