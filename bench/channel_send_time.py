"""Channel and send-time benchmark on generated data: each policy's expected engagement as a share of the oracle's.

    python bench/channel_send_time.py --out FILE [--customers 20000] [--seed 42] [--data DIR]

Data: `features.synthetic.generate(customers, seed)` into a temporary folder, or `--data DIR`, a
folder generated earlier (with truth/). Everything is learned from the observed tables only
(identity-stitched as `omni train` does); the truth (truth/customers.parquet) is used for scoring
alone, through `true_open_probability`, which is the exact engagement model of the generator.

Protocol
--------
What is served is chosen as `omni train` chooses it (`training.channel_evaluation`: each model
against its rules on a validation window before the last 28 days, models fitted before it), then
the models are fitted on the whole observed history and answer in the chosen mode; every
customer's choice is scored with the truth. A slot's engagement is the truth averaged over the
hour (minutes 0, 15, 30, 45), because a send "at hour h" goes out some time during that hour.
`ours` is what is served; `model` the model whether served or not (`served` says which).

Channel. Customers with at least one consented message channel (latest consent row at the end of
the history, the same rule the model applies), each policy choosing one of those channels. The
channel is scored at 10:00-11:00 local averaged over the seven weekdays (the logging policy's
default send time); the open model is additive in channel and time on the log-odds scale, so the
*ranking* of channels does not depend on that choice, only the level. Policies:
- ours: `ChannelModel.rank_channels`, rank 1, in the served mode; model: the same with the model;
- rule: the engagement-ratio rule the model is validated against (`ChannelModel` with
  serve="rule": each channel's engagement rate, shrunk towards the channel's with an estimated
  prior strength);
- engagement_ratio_rule (Braze Intelligent Channel style): engagement rate (opens or clicks /
  sends) per channel over the last 182 days; used when the customer has >= 3 messages on >= 2
  channels, choosing the highest rate among consented channels with >= 3 messages; otherwise
  the global best channel;
- most_used_channel: the consented channel with the most engagements over the whole history (ties:
  more sends, then the global order); the global best channel for customers without engagements;
- global_best_channel: channels ordered by their population engagement rate; the first consented.
Oracle: the consented channel with the highest true engagement.

Send time. Every (customer, consented channel) pair of the channel population. Primary framing
(`send_time`): the campaign day is given and the policy chooses the local hour that day, as
Salesforce Einstein STO does within 24 hours; scored for each of the seven weekdays and summed.
Oracle: the truly best hour of that day. Policies:
- ours: `SendTimeModel` in the served mode, the best hour of that weekday's row of the grid; model:
  the same with the model;
- modal_hour: the customer's most frequent local hour of opens (any channel; the population's
  most frequent open hour for customers who never opened);
- global_best_hour: the local send hour with the highest population engagement rate in the messages;
- random_hour: a uniformly random hour (its expectation).
Extra keys: `send_time_weekly` (the policy also chooses the weekday: ours the best of 168 slots,
hour-only policies send on a random weekday; oracle the best of 168), `send_time_outside_quiet_hours`
(every policy and the oracle restricted to 08:00-20:59), `modal_activity_hour` (the most frequent
hour of any activity, a stronger heuristic than the literal one), breakdowns by history size, and
`send_time_ceiling`: for pairs with neither messages nor activity the best single hour chosen with
the truth (an exact ceiling: nothing observed tells them apart), and the oracle's share held by
pairs without activity.
Thin history (`*_thin_history`): customers with fewer than 3 messages before the end of history.

Without truth (`held_out`): the models are refitted before the last 28 days of messages and
scored on the later ones: the matched-sends estimate (engagement rate of held-out sends within
±1 h of our chosen hour vs the rest, raw and channel-stratified, 95% CI) and the channel model's
AUC / log loss / calibration (`training.channel_evaluation.evaluate_channel_and_send_time`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from features import columns as c  # noqa: E402
from features.identity import stitch_identities  # noqa: E402
from features.io import load_tables  # noqa: E402
from features.synthetic import MESSAGE_CHANNELS, generate, true_open_probability  # noqa: E402
from models.engagement.channel import ChannelModel  # noqa: E402
from models.engagement.local_time import DAYS, HOURS, SLOTS, is_quiet, local_slots  # noqa: E402
from models.engagement.send_time import SendTimeModel, engaged_before  # noqa: E402
from training.channel_evaluation import evaluate_channel_and_send_time  # noqa: E402
from training.config import ChannelTrainingConfig  # noqa: E402

THIN_MESSAGES = 3
CHANNEL_SCORE_HOUR = 10
RATIO_WINDOW_DAYS = 182
RATIO_MIN_MESSAGES = 3
RATIO_MIN_CHANNELS = 2
QUIET_HOURS = (21, 8)
MINUTE_OFFSETS = (0.0, 0.25, 0.5, 0.75)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def share(policy: np.ndarray, oracle: np.ndarray) -> float:
    return round(float(np.sum(policy) / np.sum(oracle)), 4)


# ----------------------------------------------------------------------------------------------
# truth
def truth_slot_grid(truth: pd.DataFrame, customer_ids: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """True engagement probability per pair and local slot (pairs × 168), averaged over the hour."""
    n = len(customer_ids)
    slots = np.arange(SLOTS)
    ids = np.repeat(customer_ids, SLOTS)
    chans = np.repeat(channels, SLOTS)
    grid = np.zeros(n * SLOTS)
    for minute in MINUTE_OFFSETS:
        hours = np.tile(slots % HOURS + minute, n)
        grid += true_open_probability(truth, ids, chans, hours, np.tile(slots // HOURS, n))
    return (grid / len(MINUTE_OFFSETS)).reshape(n, SLOTS)


def truth_channel_value(truth: pd.DataFrame, customer_ids: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """True engagement of a send at 10:00-11:00 local, averaged over the weekdays."""
    total = np.zeros(len(customer_ids))
    for day in range(DAYS):
        for minute in MINUTE_OFFSETS:
            hours = np.full(len(customer_ids), CHANNEL_SCORE_HOUR + minute)
            total += true_open_probability(
                truth, customer_ids, channels, hours, np.full(len(customer_ids), day)
            )
    return total / (DAYS * len(MINUTE_OFFSETS))


# ----------------------------------------------------------------------------------------------
# channel heuristics
def global_channel_order(messages: pd.DataFrame, as_of: pd.Timestamp) -> list[str]:
    engaged = engaged_before(messages, as_of)
    rate = pd.Series(engaged).groupby(messages[c.CHANNEL].astype(str).to_numpy()).mean()
    return rate.sort_values(ascending=False, kind="stable").index.tolist()


def pick_by_order(pairs: pd.DataFrame, score: pd.Series, order: list[str]) -> pd.Series:
    """Per customer, the allowed channel with the highest `score` (NaN = not eligible), ties and
    ineligible customers resolved by the global order."""
    frame = pairs.assign(
        _score=score.to_numpy(), _order=pairs[c.CHANNEL].map({ch: i for i, ch in enumerate(order)})
    )
    frame["_order"] = frame["_order"].fillna(len(order))
    frame = frame.sort_values(
        [c.CUSTOMER_ID, "_score", "_order"], ascending=[True, False, True], na_position="last"
    )
    return frame.drop_duplicates(c.CUSTOMER_ID).set_index(c.CUSTOMER_ID)[c.CHANNEL]


def channel_policies(
    pairs: pd.DataFrame, messages: pd.DataFrame, as_of: pd.Timestamp, order: list[str]
) -> dict:
    msgs = messages[[c.CUSTOMER_ID, c.CHANNEL, c.SENT_TS]].astype({c.CUSTOMER_ID: str, c.CHANNEL: str})
    msgs = msgs.assign(_engaged=engaged_before(messages, as_of).astype(float))
    key = [c.CUSTOMER_ID, c.CHANNEL]

    recent = msgs.loc[msgs[c.SENT_TS] >= as_of - pd.Timedelta(days=RATIO_WINDOW_DAYS)]
    stats = recent.groupby(key)["_engaged"].agg(["sum", "size"]).reset_index()
    stats = pairs.merge(stats, on=key, how="left").fillna({"sum": 0.0, "size": 0})
    enough = stats["size"] >= RATIO_MIN_MESSAGES
    eligible = enough.groupby(stats[c.CUSTOMER_ID]).transform("sum") >= RATIO_MIN_CHANNELS
    ratio = (stats["sum"] / stats["size"].where(enough)).where(eligible)
    ratio_choice = pick_by_order(stats[key], ratio, order)

    totals = msgs.groupby(key)["_engaged"].agg(["sum", "size"]).reset_index()
    totals = pairs.merge(totals, on=key, how="left").fillna({"sum": 0.0, "size": 0})
    # most engagements, then most sends (a small tie-breaker that never outweighs one engagement)
    used = (totals["sum"] + totals["size"] / (totals["size"].max() + 1.0)).where(totals["sum"] > 0)
    used_choice = pick_by_order(totals[key], used, order)

    global_choice = pick_by_order(pairs, pd.Series(np.nan, index=pairs.index), order)
    return {
        "engagement_ratio_rule": ratio_choice,
        "most_used_channel": used_choice,
        "global_best_channel": global_choice,
    }


# ----------------------------------------------------------------------------------------------
# send-time heuristics
def hour_counts(ids: pd.Series, ts: pd.Series, model: SendTimeModel, customers: np.ndarray) -> np.ndarray:
    """Local-hour counts per customer of `customers` (rows) from timestamps."""
    index = pd.Index(customers)
    rows = index.get_indexer(ids.astype(str))
    keep = rows >= 0
    slots = local_slots(ts[keep], pd.Series(model.timezone_of(ids[keep])))
    counts = np.zeros((len(customers), HOURS))
    np.add.at(counts, (rows[keep], slots % HOURS), 1.0)
    return counts


def modal_hours(counts: np.ndarray, fallback_hour: int, allowed: np.ndarray) -> np.ndarray:
    """The most frequent allowed hour per row (lowest on ties); `fallback_hour` for empty rows."""
    masked = np.where(allowed[None, :], counts, -1.0)
    best = np.argmax(masked, axis=1)
    return np.where(counts[:, allowed].sum(axis=1) > 0, best, fallback_hour)


def send_time_scores(
    grids: dict[str, np.ndarray], truth: np.ndarray, hour_policies: dict[str, np.ndarray], allowed: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Per pair: expected engagement of each policy and the oracle, within-day and weekly.

    `grids` map a name to a pairs × 168 grid (the best slot of each day, or of the week, is the
    policy's); `hour_policies` a name to one local hour per pair; `allowed` marks the hours that
    may be chosen.
    """
    n = len(truth)
    truth3 = truth.reshape(n, DAYS, HOURS)
    masked_truth = np.where(allowed[None, None, :], truth3, -np.inf)
    within = {"oracle": masked_truth.max(axis=2).sum(axis=1)}
    weekly = {"oracle": masked_truth.reshape(n, SLOTS).max(axis=1)}
    for name, grid in grids.items():
        grid3 = np.where(allowed[None, None, :], grid.reshape(n, DAYS, HOURS), -np.inf)
        within[name] = np.take_along_axis(truth3, grid3.argmax(axis=2)[:, :, None], axis=2)[:, :, 0].sum(
            axis=1
        )
        weekly[name] = truth[np.arange(n), grid3.reshape(n, SLOTS).argmax(axis=1)]
    for name, hours in hour_policies.items():
        at_hour = truth3[np.arange(n), :, hours]  # pairs × days
        within[name] = at_hour.sum(axis=1)
        weekly[name] = at_hour.mean(axis=1)
    within["random_hour"] = truth3[:, :, allowed].mean(axis=2).sum(axis=1)
    weekly["random_hour"] = truth3[:, :, allowed].mean(axis=(1, 2))
    return {"within_day": within, "weekly": weekly}


def send_time_ceiling(
    truth: np.ndarray, within: dict[str, np.ndarray], pair_messages: np.ndarray, n_active: np.ndarray
) -> dict[str, float]:
    """What no policy can beat where nothing about the customer is observed (truth used to score only).

    A pair with neither messages nor activity carries no information about the customer's hour, so
    the best any policy can do there is one hour for all of them; the best such hour, chosen with
    the truth, is its exact ceiling. Also: how much of the oracle's engagement sits with pairs
    without activity (their only evidence is message outcomes)."""
    truth3 = truth.reshape(len(truth), DAYS, HOURS)
    oracle = within["oracle"]
    no_signal = (pair_messages == 0) & (n_active == 0)
    no_activity = n_active == 0
    by_hour = truth3[no_signal].sum(axis=(0, 1))
    return {
        "no_signal_pairs": int(no_signal.sum()),
        "no_signal_oracle_share": share(oracle[no_signal], oracle),
        "no_signal_best_constant_hour": share(by_hour.max(), oracle[no_signal]) if no_signal.any() else None,
        "no_signal_ours": share(within["ours"][no_signal], oracle[no_signal]) if no_signal.any() else None,
        "no_activity_pairs": int(no_activity.sum()),
        "no_activity_oracle_share": share(oracle[no_activity], oracle),
    }


def summarise(scores: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    mask = np.ones(len(scores["oracle"]), dtype=bool) if mask is None else mask
    keys = ["ours", "model", "modal_hour", "global_best_hour", "random_hour", "modal_activity_hour"]
    return {k: share(scores[k][mask], scores["oracle"][mask]) for k in keys if k in scores} | {
        "pairs": int(mask.sum())
    }


# ----------------------------------------------------------------------------------------------
def run(data_dir: Path, served: dict[str, str]) -> dict:
    """The truth's scores of what is served (`served`, chosen on validation by `held_out`) and of
    the models and the baselines."""
    tables = stitch_identities(load_tables(data_dir))
    truth = pd.read_parquet(data_dir / "truth" / "customers.parquet")
    messages = tables.messages
    t0 = time.perf_counter()
    send_time = SendTimeModel(serve=served["send_time"]).fit(tables.events, messages, tables.customers)
    t1 = time.perf_counter()
    channel = ChannelModel(serve=served["channel"]).fit(
        messages, tables.events, tables.consent, tables.customers, identities=tables.identities
    )
    t2 = time.perf_counter()
    log(f"fitted send time in {t1 - t0:.1f} s, channel in {t2 - t1:.1f} s; serving {served}")
    as_of = channel.as_of_

    # ---- channel ----
    pairs = channel.allowed_channels(channel.customer_ids_)
    pairs = pairs.loc[pairs[c.CHANNEL].isin(MESSAGE_CHANNELS)].reset_index(drop=True)
    value = pd.Series(
        truth_channel_value(truth, pairs[c.CUSTOMER_ID].to_numpy(), pairs[c.CHANNEL].to_numpy()),
        index=pd.MultiIndex.from_frame(pairs),
    )
    customers = np.sort(pairs[c.CUSTOMER_ID].unique())
    oracle = value.groupby(level=0).max().reindex(customers).to_numpy()
    order = global_channel_order(messages, as_of)
    choices = {}
    for name, mode in (("ours", None), ("model", "model"), ("rule", "rule")):
        ranked = channel.rank_channels(customers, serve=mode)
        choices[name] = ranked.loc[ranked[c.RANK] == 1].set_index(c.CUSTOMER_ID)[c.CHANNEL]
    choices |= channel_policies(pairs, messages, as_of, order)
    chosen_value = {
        name: value.reindex(
            pd.MultiIndex.from_arrays([customers, choice.reindex(customers).to_numpy()])
        ).to_numpy()
        for name, choice in choices.items()
    }
    n_messages = pd.Series(send_time.n_messages_, index=send_time.customer_ids_)
    thin = n_messages.reindex(customers).fillna(0).to_numpy() < THIN_MESSAGES
    n_allowed = pairs.groupby(c.CUSTOMER_ID).size().reindex(customers).to_numpy()

    def channel_block(mask):
        return {name: share(v[mask], oracle[mask]) for name, v in chosen_value.items()} | {
            "customers": int(mask.sum())
        }

    everyone = np.ones(len(customers), dtype=bool)
    channel_result = channel_block(everyone)
    channel_thin = channel_block(thin)
    channel_choice = channel_block(n_allowed >= 2)
    channel_choice_thin = channel_block(thin & (n_allowed >= 2))
    log(f"channel: {channel_result}")

    # ---- send time ----
    t3 = time.perf_counter()
    truth_grid = truth_slot_grid(truth, pairs[c.CUSTOMER_ID].to_numpy(), pairs[c.CHANNEL].to_numpy())
    grids = {}
    for name, mode in (("ours", send_time.serve), ("model", "model")):
        policy = copy.copy(send_time).set_params(serve=mode)
        grid = np.empty((len(pairs), SLOTS))
        for ch in pairs[c.CHANNEL].unique():
            sel = np.flatnonzero((pairs[c.CHANNEL] == ch).to_numpy())
            grid[sel] = policy.score_grid(pairs[c.CUSTOMER_ID].iloc[sel], ch)
        grids[name] = grid
    pair_customers = pairs[c.CUSTOMER_ID].to_numpy()
    opened = messages.loc[messages[c.OPENED_TS].notna() & (messages[c.OPENED_TS] < as_of)]
    open_counts = hour_counts(opened[c.CUSTOMER_ID], opened[c.OPENED_TS], send_time, customers)
    ev = tables.events.assign(_h=tables.events[c.TS].dt.floor("h")).drop_duplicates([c.CUSTOMER_ID, "_h"])
    activity_counts = hour_counts(ev[c.CUSTOMER_ID], ev[c.TS], send_time, customers)
    sent_slots = local_slots(messages[c.SENT_TS], pd.Series(send_time.timezone_of(messages[c.CUSTOMER_ID])))
    engaged = engaged_before(messages, as_of)
    row = pd.Index(customers).get_indexer(pair_customers)

    results = {}
    for label, quiet in (("all_hours", None), ("outside_quiet_hours", QUIET_HOURS)):
        allowed = ~is_quiet(np.arange(HOURS), quiet)
        population_open_hour = int(np.argmax(np.where(allowed, open_counts.sum(axis=0), -1)))
        rates = pd.Series(engaged).groupby(sent_slots % HOURS).agg(["mean", "size"])
        rates = rates.loc[(rates["size"] >= 100) & allowed[rates.index]]
        global_hour = int(rates["mean"].idxmax())
        modal_open = modal_hours(open_counts, population_open_hour, allowed)
        modal_act = np.where(
            activity_counts[:, allowed].sum(axis=1) > 0, modal_hours(activity_counts, 0, allowed), modal_open
        )
        hour_policies = {
            "modal_hour": modal_open[row],
            "global_best_hour": np.full(len(pairs), global_hour),
            "modal_activity_hour": modal_act[row],
        }
        results[label] = send_time_scores(grids, truth_grid, hour_policies, allowed)
        results[label]["global_hour"] = global_hour
    log(f"send-time scoring took {time.perf_counter() - t3:.1f} s")

    pair_thin = thin[row]
    n_active = (
        pd.Series(send_time.n_active_, index=send_time.customer_ids_)
        .reindex(pair_customers)
        .fillna(0)
        .to_numpy()
    )
    pair_messages = n_messages.reindex(pair_customers).fillna(0).to_numpy()
    within = results["all_hours"]["within_day"]
    by_history = {
        "no_messages_no_activity": summarise(within, (pair_messages == 0) & (n_active == 0)),
        "no_messages_with_activity": summarise(within, (pair_messages == 0) & (n_active > 0)),
        "activity_0": summarise(within, n_active == 0),
        "activity_1_2": summarise(within, (n_active >= 1) & (n_active < 3)),
        "activity_3_9": summarise(within, (n_active >= 3) & (n_active < 10)),
        "activity_10_29": summarise(within, (n_active >= 10) & (n_active < 30)),
        "activity_30_plus": summarise(within, n_active >= 30),
    }
    ceiling = send_time_ceiling(truth_grid, within, pair_messages, n_active)
    main_keys = ("ours", "model", "modal_hour", "global_best_hour", "random_hour")
    send_time_main = {k: v for k, v in summarise(within).items() if k in main_keys}
    send_time_thin = {k: v for k, v in summarise(within, pair_thin).items() if k in main_keys}
    return {
        "channel": channel_result,
        "send_time": send_time_main,
        "send_time_thin_history": send_time_thin,
        "channel_thin_history": channel_thin,
        "channel_customers_with_a_choice": channel_choice,
        "channel_thin_history_with_a_choice": channel_choice_thin,
        "send_time_details": {
            "all": summarise(within),
            "thin_history": summarise(within, pair_thin),
            "global_best_hour_local": results["all_hours"]["global_hour"],
            "by_history": by_history,
        },
        "send_time_ceiling": ceiling,
        "send_time_weekly": summarise(results["all_hours"]["weekly"]),
        "send_time_weekly_thin_history": summarise(results["all_hours"]["weekly"], pair_thin),
        "send_time_outside_quiet_hours": summarise(results["outside_quiet_hours"]["within_day"])
        | {
            "quiet_hours": list(QUIET_HOURS),
            "global_best_hour_local": results["outside_quiet_hours"]["global_hour"],
        },
        "send_time_outside_quiet_hours_thin_history": summarise(
            results["outside_quiet_hours"]["within_day"], pair_thin
        ),
        "fit_seconds": {"send_time": round(t1 - t0, 1), "channel": round(t2 - t1, 1)},
        "served": dict(served),
        "learned": {
            "send_time_habit_width_hours": round(send_time.profile_width_, 3),
            "open_window_days": round(channel.open_window_days_, 3),
            "conversion_window_days": round(channel.conversion_window_days_, 3),
        },
        "global_channel_order": order,
    }


def held_out(data_dir: Path) -> dict:
    """What is served (chosen on the validation window before the test window) and the truth-free
    estimates: fit before the last 28 days of messages, score the later ones."""
    tables = stitch_identities(load_tables(data_dir))
    metrics, data, notes = evaluate_channel_and_send_time(tables, ChannelTrainingConfig())
    keep = {k: round(v, 4) for k, v in sorted(metrics.items()) if np.isfinite(v)}
    return {"split_time": data["split_time"], "served": data["served"], "metrics": keep, "notes": notes}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON result")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--data", type=Path, help="a folder generated earlier (with truth/); default: generate"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="omni-bench-channel-") as tmp:
        data_dir = args.data
        generated = None
        if data_dir is None:
            data_dir = Path(tmp) / "data"
            summary = generate(args.customers, args.seed, data_dir)
            generated = {"customers": args.customers, "seed": args.seed, "rows": summary.rows}
            log(f"generated {args.customers} customers in {summary.seconds:.1f} s")
        if not (data_dir / "truth" / "customers.parquet").is_file():
            parser.error(f"{data_dir} has no truth/customers.parquet: generate it with `omni generate`")
        held = held_out(data_dir)
        truth_result = run(data_dir, held["served"])
    meta = json.loads((data_dir / "truth" / "meta.json").read_text()) if args.data else None
    result = {
        "benchmark": "channel_send_time",
        "channel": truth_result.pop("channel"),
        "send_time": truth_result.pop("send_time"),
        "send_time_thin_history": truth_result.pop("send_time_thin_history"),
        **truth_result,
        "held_out": held,
        "protocol": (__doc__ or "").split("Protocol\n--------\n", 1)[-1].strip(),
        "data": generated
        or {
            "folder": str(args.data),
            "seed": meta and meta.get("seed"),
            "customers": meta and meta.get("n_customers"),
        },
        "machine": "2 cores, 24 GB, no GPU",
        "platform": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "seconds": round(time.perf_counter() - started, 1),
    }
    from training.tracking import save_benchmark

    print(save_benchmark("channel_send_time", result, args.out))
    return result


if __name__ == "__main__":
    main()
