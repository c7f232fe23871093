"""The registered champion of the channel or send-time family, as deployed, beside this run's
model (the challenger, fitted before the test window) on the same new window: what the promotion
gate (`training.registry`) compares.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import columns as c
from models.engagement.channel import PROBABILITY, ChannelModel
from models.engagement.send_time import SendTimeModel
from training.channel_evaluation import MIN_VALIDATION_ROWS
from training.channel_metrics import SendScores, activity_hits, binary_metrics, matched_sends, send_scores
from training.config import ChannelTrainingConfig


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
            challenger = matched_sends(
                SendScores(scores.hour[mask], scores.best_hour[mask], None), rows, end, match_hours
            )
            deployed = matched_sends(send_scores(champion, rows, champion.serve), rows, end, match_hours)
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
    deployed = activity_hits(champion, active.loc[mask], match_hours, champion.serve)
    return "activity_hit_rate", float(deployed.mean()), float(hits[mask].mean()), int(mask.sum())


def score_champions(champions: dict, held_out: dict, config: ChannelTrainingConfig) -> dict[str, dict]:
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
