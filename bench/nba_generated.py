"""Next-best-action on generated data: our policy against fixed, propensity, random and oracle policies.

    python bench/nba_generated.py --out FILE [--data DIR] [--customers 20000] [--seed 42]
                                  [--decide-scale N] [--no-channel-models] [--no-mlflow]

Data: `features.synthetic.generate(customers, seed)` into work/bench-data/nba-<customers>-s<seed>
(reused when it is already there) unless --data names a generated folder (it needs truth/).

Protocol. Customers are split in two by a stable hash of their id. Profiles are computed for
everyone from the observed tables (as the service would); the uplift models, the open model and
the guard learn only from the *training* half's messages. Every policy then decides once, at the end
of the history, for the *evaluation* half, and is scored with the generator's truth:

    incremental conversions = p_open_true(channel, local send hour, weekday) * uplift_true(offer | opened)
    incremental margin      = incremental conversions * order value * margin rate
                              - offer cost share * order value * P_true(convert | sent)   (every redemption)
                              - message cost(channel)

with the order value the same for every policy (the customer's mean order value shrunk towards
everyone's, from the observed history) and the offer's true cost share of the order from the
generator (`features.synthetic.OFFERS`, truth only). The offers table the engine learns from is
the generated one as written: `cost` in currency per redemption, as the data contract has it (the
generator's share × the mean order value of its purchases). Every policy faces the same contact
policy: customers in the control group, without consent, or in a cooldown are never contacted,
offers respect the eligibility rules.

Policies:
- ours: `NextBestActionEngine.decide` (channel, send time, offer or none per customer);
- best_single_offer: one arm (plain message or one offer) to every contactable customer, on the
  channel with the highest estimated p_open at its best send time; the arm with the most true
  margin is reported (the best in hindsight: a strong baseline);
- propensity: the same arm to the customers with the highest *predicted conversion probability*
  when sent it (the engine's models, no uplift), as many as ours contacts;
- random: a uniformly random arm (no action, plain, each allowed offer) per contactable customer;
- oracle: per customer the best (channel, hour within the horizon outside quiet hours, arm or no
  action) by the true margin.
Shares are each policy's totals divided by the oracle's (incremental margin share of the oracle is
1 by construction; others may exceed 1 in conversions, because the oracle maximises margin).

--decide-scale N times `decide` for N customers: the fitted profiles are tiled to N customers with
new ids (as many distinct customers as a real batch; the models, choosers and recommender all run
for every one of them) and decided in one call.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from features import columns as c  # noqa: E402
from features import synthetic as syn  # noqa: E402
from features.identity import stitch_identities  # noqa: E402
from features.io import load_tables  # noqa: E402
from models.decisions.contact_policy import offer_eligibility  # noqa: E402
from models.decisions.decision_core import NO_ACTION  # noqa: E402
from models.decisions.nba import NextBestActionEngine  # noqa: E402
from models.timestamps import NAT_US, to_us  # noqa: E402
from training.config import NBAConfig  # noqa: E402
from training.nba_training import train_nba  # noqa: E402
from training.settings import quiet_libraries  # noqa: E402

quiet_libraries()  # before MLflow is imported (telemetry, progress bars)

MACHINE = "2 cores, 24 GB, no GPU"
SPLIT_SALT = "nba-bench-split"
RANDOM_POLICY_SEED = 7
ORACLE_HOURS = 72  # the oracle searches the same horizon the contact policy allows


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_data(data: Path | None, customers: int, seed: int) -> Path:
    if data is not None:
        if not (data / "truth" / "customers.parquet").is_file():
            raise SystemExit(f"{data} has no truth/customers.parquet: generate it with `omni generate`")
        return data
    out = REPO / "work" / "bench-data" / f"nba-{customers}-s{seed}"
    meta = out / "truth" / "meta.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        same = info.get("n_customers") == customers and info.get("seed") == seed
        if same and info.get("generator_version") == syn.GENERATOR_VERSION:
            return out
    log(f"generating {customers} customers (seed {seed}) into {out}")
    syn.generate(customers, seed, out)
    return out


def training_half(customer_ids: np.ndarray) -> np.ndarray:
    """True for customers of the training half (stable hash of the id)."""
    return np.array(
        [hashlib.sha256(f"{SPLIT_SALT}:{cid}".encode()).digest()[0] < 128 for cid in customer_ids], dtype=bool
    )


def fit_optional_models(tables, use_models: bool) -> tuple[object, object, dict]:
    """Channel and send-time models when their modules exist and fit; None (fallbacks) otherwise."""
    info: dict = {}
    channel_model = send_time_model = None
    if not use_models:
        info["channel_model"] = info["send_time_model"] = "disabled (--no-channel-models)"
        return None, None, info
    try:
        from models.engagement.channel import ChannelModel

        t0 = time.perf_counter()
        channel_model = ChannelModel(random_state=0, n_jobs=1).fit(
            tables.messages, tables.events, tables.consent, tables.customers, identities=tables.identities
        )
        info["channel_model"] = f"fitted in {time.perf_counter() - t0:.1f} s"
    except Exception as exc:  # the bench must run while that module is still being written
        info["channel_model"] = f"not used: {type(exc).__name__}: {exc}"
    try:
        from models.engagement.send_time import SendTimeModel

        t0 = time.perf_counter()
        send_time_model = SendTimeModel().fit(tables.events, tables.messages, tables.customers)
        info["send_time_model"] = f"fitted in {time.perf_counter() - t0:.1f} s"
    except Exception as exc:
        info["send_time_model"] = f"not used: {type(exc).__name__}: {exc}"
    return channel_model, send_time_model, info


def fit_recommender(tables):
    from features.interactions import build_interactions
    from models.recs.baselines import ProductRecommender
    from training.recs_training import catalogue

    product_ids, inactive = catalogue(tables)
    matrix = build_interactions(tables.events, product_ids=product_ids, half_life_days=90.0)
    return ProductRecommender(factors=32, iterations=10, random_state=0).fit(matrix, inactive)


# ----------------------------------------------------------------------------------------------
# Truth
class Truth:
    """True open probability, conversion and value of any (customer, channel, send time, arm)."""

    def __init__(self, data: Path, engine: NextBestActionEngine, customer_ids: np.ndarray, now: pd.Timestamp):
        self.customers = pd.read_parquet(data / "truth" / "customers.parquet")
        self.ids = customer_ids
        rows = engine.profiles_.rows(customer_ids)
        feats = engine.profiles_.model_features(rows, now)
        self.order_value = engine._order_value(feats)
        self.timezone = engine.profiles_.frame_[c.TIMEZONE].to_numpy(dtype=object)[rows]
        self.p_base = self.customers.set_index(c.CUSTOMER_ID).loc[customer_ids, "p_base"].to_numpy()
        self.policy = engine.policy_
        # the truth's cost of a redemption: a share of that customer's order (the generator's)
        self.costs = {o.offer_id: o.cost_share for o in syn.OFFERS}

    def p_open(self, sel: np.ndarray, channels: np.ndarray, send_us: np.ndarray) -> np.ndarray:
        hours, weekdays = syn.local_time_parts(
            pd.DatetimeIndex(send_us.astype("datetime64[us]")).tz_localize("UTC"), self.timezone[sel]
        )
        return syn.true_open_probability(self.customers, self.ids[sel], channels, hours, weekdays)

    def value(self, channels, send_us, offers) -> tuple[np.ndarray, np.ndarray]:
        """(incremental conversions, incremental margin) per evaluation customer; arm = offers[i]:
        NO_ACTION for nothing, None for a plain message, else an offer id."""
        n = len(self.ids)
        conv, margin = np.zeros(n), np.zeros(n)
        offers = np.asarray(offers, dtype=object)
        sent = np.array([o != NO_ACTION for o in offers]) & (np.asarray(send_us) != NAT_US)
        sel = np.flatnonzero(sent)
        if len(sel) == 0:
            return conv, margin
        ch = np.asarray(channels, dtype=object)[sel]
        p_open = self.p_open(sel, ch, np.asarray(send_us)[sel])
        offer_ids = [None if o is None else o for o in offers[sel]]
        p_conv = syn.true_conversion_probability(self.customers, self.ids[sel], offer_ids, p_open)
        delta = p_conv - self.p_base[sel]
        cost = np.array([0.0 if o is None else self.costs[o] for o in offer_ids])
        msg = np.array([self.policy.cost_of_message(x) for x in ch])
        ov = self.order_value[sel]
        conv[sel] = delta
        margin[sel] = delta * ov * self.policy.margin_rate - cost * ov * p_conv - msg
        return conv, margin


def oracle(
    truth: Truth, plan: pd.DataFrame, channels: list[str], arm_ok: np.ndarray, arms: list
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Best (channel, whole hour in the horizon outside quiet hours, arm) per customer by the truth."""
    from models.decisions.contact_policy import is_quiet_hour, local_hour_and_weekday

    n = len(truth.ids)
    best_value = np.zeros(n)
    best_conv = np.zeros(n)
    choice = np.full(n, "none", dtype=object)
    earliest = plan["earliest_us"].to_numpy()
    latest = plan["latest_us"].to_numpy()
    ok_customer = plan["reason"].isna().to_numpy()
    hour_us = 3_600_000_000
    start = -(-earliest // hour_us) * hour_us
    for ch in channels:
        allowed = ok_customer & (plan[f"p_open_{ch}"].to_numpy() > 0)
        sel = np.flatnonzero(allowed)
        if len(sel) == 0:
            continue
        best_p = np.full(len(sel), -1.0)
        for step in range(ORACLE_HOURS):
            t = start[sel] + step * hour_us
            in_time = t <= latest[sel]
            hours, _ = local_hour_and_weekday(t, truth.timezone[sel])
            usable = in_time & ~is_quiet_hour(hours, truth.policy.quiet_hours)
            if not usable.any():
                continue
            p = truth.p_open(sel, np.full(len(sel), ch, dtype=object), t)
            best_p = np.where(usable & (p > best_p), p, best_p)
        has = best_p >= 0
        rows = sel[has]
        p_open = best_p[has]
        msg = truth.policy.cost_of_message(ch)
        for j, arm in enumerate(arms):
            ok = arm_ok[rows, j]
            offer = [arm] * len(rows)
            p_conv = syn.true_conversion_probability(truth.customers, truth.ids[rows], offer, p_open)
            delta = p_conv - truth.p_base[rows]
            ov = truth.order_value[rows]
            cost = 0.0 if arm is None else truth.costs[arm]
            value = delta * ov * truth.policy.margin_rate - cost * ov * p_conv - msg
            better = ok & (value > best_value[rows])
            best_value[rows[better]] = value[better]
            best_conv[rows[better]] = delta[better]
            choice[rows[better]] = f"{arm or 'plain'}@{ch}"
    mix = pd.Series(choice).map(lambda s: s.split("@")[0]).value_counts(normalize=True).round(4).to_dict()
    return best_conv, best_value, mix


def tile_engine(engine: NextBestActionEngine, n: int) -> tuple[NextBestActionEngine, np.ndarray]:
    """A copy of the engine whose profiles hold n customers (tiled rows, new ids), for timing."""
    profiles = copy.copy(engine.profiles_)
    base = len(profiles.frame_)
    take = np.arange(n) % base
    ids = np.array([f"S{i:08d}" for i in range(n)], dtype=object)
    frame = profiles.frame_.iloc[take].reset_index(drop=True)
    frame[c.CUSTOMER_ID] = ids
    profiles.frame_ = frame
    profiles.features_ = profiles.features_.iloc[take].reset_index(drop=True)
    profiles.activity_hours_ = profiles.activity_hours_[take]
    rep = profiles.replenishment_
    if len(rep):
        owner = pd.Series(np.arange(base), index=engine.profiles_.frame_[c.CUSTOMER_ID].to_numpy())
        rows = owner.loc[rep[c.CUSTOMER_ID].to_numpy()].to_numpy()
        parts = []
        for k in range(n // base + 1):
            target = rows + k * base
            keep = target < n
            parts.append(rep.loc[keep].assign(**{c.CUSTOMER_ID: ids[target[keep]]}))
        tiled = pd.concat(parts, ignore_index=True)
        profiles.replenishment_ = tiled
    profiles._index()
    scaled = copy.copy(engine)
    scaled.profiles_ = profiles
    source = pd.Series(engine.profiles_.frame_[c.CUSTOMER_ID].to_numpy()[take], index=ids)
    scaled.channel_chooser_ = _SourceIds(engine.channel_chooser_, source, "open_probability")
    scaled.send_time_chooser_ = _SourceIds(engine.send_time_chooser_, source, "slot_scores")
    if engine.recommender_ is not None:
        scaled.recommender_ = _SourceIds(engine.recommender_, source, "recommend_many")
    scaled.ledger_ = copy.deepcopy(engine.ledger_)
    return scaled, ids


class _SourceIds:
    """Bench only: hands a tiled customer's *source* id to a model, so the model does the work a real,
    known customer costs (personal scores, own history) instead of a cheap cold-start answer."""

    def __init__(self, inner, source: pd.Series, method: str):
        self.inner, self.source, self.method = inner, source, method
        self.name = getattr(inner, "name", type(inner).__name__)

    def __getattr__(self, attr):
        if attr != self.method:
            return getattr(self.inner, attr)

        def call(customer_ids, *args, **kwargs):
            mapped = self.source.loc[np.asarray(customer_ids, dtype=object)].to_numpy()
            return getattr(self.inner, attr)(
                list(mapped) if attr == "recommend_many" else mapped, *args, **kwargs
            )

        return call


def decide_scale(engine: NextBestActionEngine, n: int) -> dict:
    t0 = time.perf_counter()
    scaled, ids = tile_engine(engine, n)
    prepare = time.perf_counter() - t0
    t0 = time.perf_counter()
    decisions = scaled.decide(ids)
    seconds = time.perf_counter() - t0
    return {
        "customers": n,
        "seconds": round(seconds, 1),
        "tiling_seconds": round(prepare, 1),
        "sends": int((decisions["action"] != NO_ACTION).sum()),
        "under_10_minutes": bool(seconds < 600),
    }


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON result")
    parser.add_argument("--data", type=Path, default=None, help="a generated data folder (with truth/)")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--decide-scale", type=int, default=None, help="also time decide() for N customers")
    parser.add_argument("--no-channel-models", action="store_true", help="use the history-based fallbacks")
    parser.add_argument("--no-recommender", action="store_true", help="skip the product recommender")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the result to MLflow")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: the project's)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    data = ensure_data(args.data, args.customers, args.seed)
    tables = stitch_identities(load_tables(data))
    offer_costs = {
        str(k): float(v) for k, v in zip(tables.offers[c.OFFER_ID], tables.offers[c.COST], strict=True)
    }
    log(f"offer costs (currency per redemption, as generated): {offer_costs}")
    ids = tables.customers[c.CUSTOMER_ID].astype(str).to_numpy()
    train_mask = training_half(ids)
    train_ids, eval_ids = ids[train_mask], ids[~train_mask]
    log(f"{len(ids)} customers: {len(train_ids)} train, {len(eval_ids)} evaluation")

    channel_model, send_time_model, model_info = fit_optional_models(tables, not args.no_channel_models)
    log(f"choosers: {model_info}")
    recommender = None
    if not args.no_recommender:
        t0 = time.perf_counter()
        recommender = fit_recommender(tables)
        model_info["recommender"] = f"ALS fitted in {time.perf_counter() - t0:.1f} s"
    t0 = time.perf_counter()
    config = NBAConfig(uplift_customers=list(train_ids), summarise_decisions=False, random_state=args.seed)
    profiles, engine, metrics, notes = train_nba(tables, recommender, channel_model, send_time_model, config)
    train_seconds = time.perf_counter() - t0
    log(f"trained in {train_seconds:.1f} s; guard: {engine.metrics_.get('guard', {}).get('fallback')}")
    now = profiles.as_of_

    t0 = time.perf_counter()
    decisions = engine.decide(eval_ids, now)
    decide_seconds = time.perf_counter() - t0
    plan = engine.channel_plan(eval_ids, now)
    decisions = decisions.set_index(c.CUSTOMER_ID).loc[eval_ids].reset_index()
    plan = plan.set_index(c.CUSTOMER_ID).loc[eval_ids].reset_index()
    truth = Truth(data, engine, eval_ids, now)

    # arms every policy chooses from, and who may get which
    arms = [None, *engine.offer_ids_]
    rows = profiles.rows(eval_ids)
    frame = profiles.frame_
    arm_ok = np.ones((len(eval_ids), len(arms)), dtype=bool)
    arm_ok[:, 1:] = offer_eligibility(
        engine.offer_ids_,
        frame["segment"].to_numpy(dtype=object)[rows],
        frame["value_tier"].to_numpy(dtype=object)[rows],
        frame["monetary"].to_numpy()[rows],
        frame["bought_categories"].to_numpy(dtype=object)[rows],
        engine.policy_.offer_rules,
    )
    contactable = plan["reason"].isna().to_numpy() & plan[c.CHANNEL].notna().to_numpy()
    default_channel = plan[c.CHANNEL].to_numpy(dtype=object)
    default_send = to_us(plan["send_at"])

    results: dict[str, dict] = {}

    def score(name: str, channels, send_us, offers, extra: dict | None = None) -> None:
        conv, margin = truth.value(channels, send_us, offers)
        results[name] = {
            "incremental_conversions": float(conv.sum()),
            "incremental_margin": float(margin.sum()),
            "contacted": int(sum(o != NO_ACTION for o in offers)),
            **(extra or {}),
        }

    ours_send = to_us(decisions["send_at"])
    ours_offer = np.where(
        decisions["action"].to_numpy() == NO_ACTION,
        NO_ACTION,
        decisions[c.OFFER_ID].to_numpy(dtype=object),
    )
    score(
        "ours",
        decisions[c.CHANNEL].to_numpy(dtype=object),
        ours_send,
        ours_offer,
        {"actions": decisions["action"].value_counts().to_dict()},
    )

    per_arm = {}
    for j, arm in enumerate(arms):
        offers = np.where(contactable & arm_ok[:, j], None, NO_ACTION).astype(object)
        offers[offers == None] = arm  # noqa: E711 (elementwise)
        conv, margin = truth.value(default_channel, default_send, offers)
        per_arm[arm or "plain"] = {
            "incremental_conversions": float(conv.sum()),
            "incremental_margin": float(margin.sum()),
        }
    best_arm_name = max(per_arm, key=lambda k: per_arm[k]["incremental_margin"])
    best_arm = None if best_arm_name == "plain" else best_arm_name
    best_j = arms.index(best_arm)
    offers = np.where(contactable & arm_ok[:, best_j], "x", NO_ACTION).astype(object)
    offers[offers == "x"] = best_arm
    score(
        "best_single_offer", default_channel, default_send, offers, {"arm": best_arm_name, "per_arm": per_arm}
    )

    # propensity: the engine's predicted P(convert | sent best arm), top as many as ours contacts
    feats = profiles.model_features(rows, now)
    mu = engine._arm_outcomes(feats)
    p_open_default = plan["p_open"].to_numpy()
    p_conv = mu[:, 0] + p_open_default * (mu[:, 1 + best_j] - mu[:, 0])
    candidates = np.flatnonzero(contactable & arm_ok[:, best_j])
    n_ours = results["ours"]["contacted"]
    top = candidates[np.argsort(-p_conv[candidates], kind="stable")[:n_ours]]
    offers = np.full(len(eval_ids), NO_ACTION, dtype=object)
    offers[top] = best_arm
    score("propensity", default_channel, default_send, offers, {"arm": best_arm_name})

    rng = np.random.default_rng(RANDOM_POLICY_SEED)
    offers = np.full(len(eval_ids), NO_ACTION, dtype=object)
    for i in np.flatnonzero(contactable):
        options = [NO_ACTION, *[arms[j] for j in range(len(arms)) if arm_ok[i, j]]]
        offers[i] = options[rng.integers(len(options))]
    score("random", default_channel, default_send, offers)

    plan = plan.assign(
        earliest_us=to_us(plan["earliest"]),
        latest_us=to_us(plan["latest"]),
    )
    channels = [col.removeprefix("p_open_") for col in plan.columns if col.startswith("p_open_")]
    t0 = time.perf_counter()
    o_conv, o_margin, o_mix = oracle(truth, plan, channels, arm_ok, arms)
    results["oracle"] = {
        "incremental_conversions": float(o_conv.sum()),
        "incremental_margin": float(o_margin.sum()),
        "contacted": int((o_margin > 0).sum()),
        "arm_mix": o_mix,
    }
    log(f"oracle in {time.perf_counter() - t0:.1f} s")

    policies = {}
    for name in ("ours", "best_single_offer", "propensity", "random", "oracle"):
        r = results[name]
        policies[name] = {
            "incremental_conversions_share": round(
                r["incremental_conversions"] / results["oracle"]["incremental_conversions"], 4
            ),
            "incremental_margin_share": round(
                r["incremental_margin"] / results["oracle"]["incremental_margin"], 4
            ),
        }
    out = {
        "benchmark": "nba_generated",
        "machine": MACHINE,
        "python": platform.python_version(),
        "data": {
            "folder": str(data),
            "customers": int(len(ids)),
            "evaluation_customers": int(len(eval_ids)),
            "offer_cost_per_redemption": offer_costs,
        },
        "policies": policies,
        "totals": results,
        "contactable_customers": int(contactable.sum()),
        "control_group_customers": int((plan["reason"] == "control_group").sum()),
        "models": model_info,
        "engine": {
            "mode": engine.mode_,
            "guard": engine.metrics_.get("guard"),
            "arm_uplift": engine.metrics_.get("arm_uplift"),
            "attributes": engine.metrics_.get("attributes"),
            "training_messages": engine.metrics_.get("training_messages"),
            "arms": engine.metrics_.get("arms"),
        },
        "profile_forecast": profiles.forecast_metrics_,
        "notes": notes,
        "timings": {
            "train_seconds": round(train_seconds, 1),
            "decide_seconds": round(decide_seconds, 2),
            "decide_customers": int(len(eval_ids)),
        },
    }
    if args.decide_scale:
        log(f"timing decide() for {args.decide_scale} customers")
        out["decide_scale"] = decide_scale(engine, args.decide_scale)
        log(f"decide_scale: {out['decide_scale']}")
    out["seconds"] = round(time.perf_counter() - started, 1)
    from training.tracking import save_benchmark

    save_benchmark("nba_generated", out, args.out, args.tracking_uri, to_mlflow=not args.no_mlflow)
    log(json.dumps(policies, indent=2))
    return out


if __name__ == "__main__":
    main()
