"""The report a marketer reads: KPIs from the data, measured lift, segments and churn, and each
model's quality beside its baselines in plain words.

One content (`ReportContent`, made by `gather`; `document` lays it out as blocks), two renderings:
Markdown (`render_markdown`: `report.md`, logged with every training run and written by `omni
report`) and a self-contained HTML page with charts (`training.report_page.render_html`:
`report.html`, written by `omni report` (`training.reporting`), served read-only at `GET /report`).

- the data: tables, rows, date range, a hash of the input files;
- KPIs (`training.kpis`): revenue, orders, customers and average order value by channel and month,
  repeat purchases, retention by monthly cohort, cross-channel against single-channel customers,
  top journeys, message conversion and engagement by local hour;
- measured lift against the global control group (`training.lift`), with 95 % intervals;
- segments, churn risk and lifetime value from the customer profiles;
- models beside their baselines (`model_quality`): what each family serves, why (the validation
  window), and by how much it beats the simple rules on the held-out test window; each figure
  attributed to the model that produced it. Training time per stage in seconds, never as a change.

Only aggregates, counts and model names appear: no customer id, no personal data.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import FILE_SUFFIXES, TABLES
from training.kpis import ALL_CHANNELS, ALL_MONTHS, KPI_TITLES, Kpis, NotComputable, compute_kpis
from training.lift import LiftResult, measure_lift

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
LATEST_FOLDER = "report"  # under the working folder: the page `GET /report` serves


def hash_inputs(data_dir: str | Path) -> str:
    """sha256 over the contract tables' files (name + bytes), streamed: the identity of a data set."""
    digest = hashlib.sha256()
    folder = Path(data_dir)
    for name in sorted(TABLES):
        for suffix in FILE_SUFFIXES:
            path = folder / f"{name}{suffix}"
            if path.is_file():
                digest.update(path.name.encode())
                with path.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()


def latest_report_dir() -> Path:
    """Where the latest report page is kept for the service (`GET /report`)."""
    from training.settings import work_dir

    return work_dir() / LATEST_FOLDER


# ------------------------------------------------------------------------------------ formatting
def _absent(value) -> bool:
    return (
        value is None
        or value is pd.NA
        or (isinstance(value, float | np.floating) and not math.isfinite(value))
    )


def fmt_pct(value, digits: int = 1) -> str:
    if isinstance(value, str):
        return value
    return "–" if _absent(value) else f"{value:.{digits}%}"


def fmt_num(value, digits: int = 2) -> str:
    if isinstance(value, str):
        return value
    if _absent(value):
        return "–"
    if isinstance(value, int | np.integer) or float(value).is_integer():
        return f"{int(round(float(value))):,}"
    return f"{float(value):,.{digits}f}"


def fmt_points(value) -> str:
    """A difference of two rates in percentage points."""
    return "–" if value is None or not np.isfinite(value) else f"{value * 100:+.1f} pts"


# ------------------------------------------------------------------------------ the training run
@dataclass
class RunRecord:
    """What one `omni train` run recorded, as the report reads it: metrics (with '@' as trained),
    the policy each engagement family serves, the recommender's evaluation, stage timings, the
    champion decisions, the families skipped and the notes on the data."""

    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    served: dict[str, str] = field(default_factory=dict)
    recommender: dict | None = None
    timings: dict[str, dict] = field(default_factory=dict)
    decisions: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_hash: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, client, run_id: str) -> RunRecord:
        """The record of a logged `omni train` run (its metrics, tags and JSON artefacts)."""
        import json
        import tempfile

        run = client.get_run(run_id)
        metrics = {_at(k): float(v) for k, v in run.data.metrics.items()}
        tags = run.data.tags
        record = cls(
            run_id=run_id,
            metrics=metrics,
            served={f: tags[f"{f}.served"] for f in ("channel", "send_time") if f"{f}.served" in tags},
            skipped={k.removeprefix("skipped."): v for k, v in tags.items() if k.startswith("skipped.")},
            input_hash=tags.get("input_hash"),
            params=dict(run.data.params),
        )
        with tempfile.TemporaryDirectory(prefix="omni-report-") as tmp:

            def artefact(path: str):
                try:
                    local = client.download_artifacts(run_id, path, tmp)
                except Exception:  # noqa: BLE001 - an artefact the run did not log: that part is absent
                    return None
                files = sorted(Path(local).glob("*.json")) if Path(local).is_dir() else [Path(local)]
                return [json.loads(f.read_text()) for f in files]

            record.recommender = (artefact("evaluation/recommender.json") or [None])[0]
            record.timings = (artefact("stage_timings.json") or [{}])[0]
            record.decisions = artefact("promotion") or []
            record.notes = ((artefact("data_notes.json") or [{}])[0]).get("notes", [])
        return record


def _at(name: str) -> str:
    """A metric name as trained ('ndcg@10'), from MLflow's ('ndcg_at_10')."""
    return re.sub(r"_at_(\d+)", r"@\1", name)


# ----------------------------------------------------------------------------- models vs baselines
@dataclass
class ModelQuality:
    """One family's quality: what it serves, in plain words (`summary`), and the figures beside
    its baselines (`table`: one row per model or rule, the served one first)."""

    family: str
    title: str
    summary: str
    table: pd.DataFrame | None = None
    headline: str = ""  # one line for the key figures
    percent: tuple[str, ...] = ()  # columns of `table` that are rates
    points: tuple[str, ...] = ()  # columns of `table` that are differences of rates
    # the chart beside the baselines: {model or rule: value of `bar_metric`}, the served one first
    bars: dict[str, float] = field(default_factory=dict)
    bar_metric: str = ""
    served_bar: str = ""  # the key of `bars` that is served


SOURCE_NAMES = {
    "ranker": "the LambdaRank ranker",
    "ease": "EASE",
    "als": "ALS",
    "repeat": "repeat purchase",
    "popular": "popularity",
    "popularity": "popularity",
    "replenish": "due replenishment",
    "cooc": "bought together",
    "content": "similar products",
    "trending": "trending",
    "buy_again": "buy again",
}
RECOMMENDER_BASELINES = ("popularity", "repeat", "als", "ease")
POLICY_NAMES = {
    "rule": "the engagement-ratio rule",
    "model": "the model",
    "customer_modal_hour": "the customer's modal activity hour",
    "global_best_hour": "the global best hour",
}


def source_name(order: str) -> str:
    """A served order's name in words: 'ranker' → 'the LambdaRank ranker', 'fusion(als=0.5,repeat=1)'
    → 'a weighted fusion of ALS (0.5) and repeat purchase (1)'."""
    found = re.fullmatch(r"fusion\((.*)\)", order)
    if not found:
        return SOURCE_NAMES.get(order, order)
    parts = [p.split("=") for p in found.group(1).split(",") if "=" in p]
    names = [f"{SOURCE_NAMES.get(s, s)} ({w})" for s, w in parts]
    return "a weighted fusion of " + (
        ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
    )


def _k_of(metrics: dict[str, float]) -> int | None:
    for key in metrics:
        found = re.fullmatch(r"served\.ndcg@(\d+)", key)
        if found:
            return int(found.group(1))
    return None


def _recommender_quality(run: RunRecord) -> list[ModelQuality]:
    m, info = run.metrics, run.recommender or {}
    k = _k_of(m)
    if k is None:
        return []
    served = info.get("served", {})
    validation = (info.get("two_stage_training") or {}).get(f"served_validation_ndcg@{k}", {})
    out = []
    for kind, prefix, title, protocol in (
        (
            "all",
            "all_purchases.",
            "Recommendations: the default list",
            "every product bought there counts, re-buys included; the list /v1/recommend serves",
        ),
        (
            "new",
            "",
            "Recommendations: products never bought",
            "only products the customer had not bought before count; the list of exclude_purchased",
        ),
    ):
        primary = f"ndcg@{k}"
        value = m.get(f"served.{prefix}{primary}")
        if value is None:
            continue
        order = served.get(kind, "served")
        # the served order is compared with the other baselines (when it is one of them, it is
        # not its own baseline)
        baselines = {b: m.get(f"{b}.{prefix}{primary}") for b in RECOMMENDER_BASELINES if b != order}
        baselines = {b: v for b, v in baselines.items() if v is not None}
        best = max(baselines, key=baselines.get) if baselines else None
        text = f"Serves {source_name(order)}"
        scores = validation.get(kind) or {}
        if order in scores:
            others = {name: v for name, v in scores.items() if name != order and name in SOURCE_NAMES}
            rival = max(others, key=others.get) if others else None
            text += f", chosen on the validation window ({primary} {scores[order]:.3f}"
            text += (
                f"; the best other single source, {source_name(rival)}, {others[rival]:.3f})"
                if rival
                else ")"
            )
        text += f". On the held-out test window ({protocol}): {primary} {value:.3f}"
        if best is not None:
            base = baselines[best]
            verdict = "above" if value > base else ("level with" if value == base else "below")
            relative = f", {(value / base - 1):+.0%}" if base > 0 else ""
            text += f", {verdict} the best baseline, {source_name(best)}, at {base:.3f}{relative}"
            if best != "popularity" and "popularity" in baselines:
                text += f"; popularity scores {baselines['popularity']:.3f}"
        text += "."
        headline = f"{title.removeprefix('Recommendations: ')}: {source_name(order)}, {primary} {value:.3f}"
        if best is not None:
            headline += f" against {baselines[best]:.3f} for {source_name(best)}, the best baseline"
        rows = []
        names = [
            ("served", f"served: {source_name(order)}"),
            # a baseline that is itself served is the served row
            *((b, source_name(b)) for b in RECOMMENDER_BASELINES if b != order),
        ]
        if order != "ranker":
            names.append(("ranker", source_name("ranker")))
        for model, label in names:
            if f"{model}.{prefix}{primary}" not in m:
                continue
            rows.append(
                {
                    "model": label,
                    primary: m.get(f"{model}.{prefix}{primary}"),
                    f"recall@{k}": m.get(f"{model}.{prefix}recall@{k}"),
                    f"precision@{k}": m.get(f"{model}.{prefix}precision@{k}"),
                    "MAP": m.get(f"{model}.{prefix}map"),
                    "catalogue coverage": m.get(f"{model}.{prefix}coverage"),
                    "customers evaluated": m.get(f"{model}.{prefix}customers_evaluated"),
                }
            )
        table = pd.DataFrame(rows)
        out.append(
            ModelQuality(
                "recommender",
                title,
                text,
                table,
                "Recommendations, " + headline,
                bars=dict(zip(table["model"], table[primary], strict=True)),
                bar_metric=f"{primary}, test window",
                served_bar=rows[0]["model"],
            )
        )
    return out


def _channel_quality(run: RunRecord) -> ModelQuality | None:
    m = run.metrics
    if "channel.engagement_auc" not in m:
        return None
    served = run.served.get("channel", "model")
    text = f"Serves {POLICY_NAMES.get(served, served)}"
    vm, vr = m.get("channel.validation.model.engagement_auc"), m.get("channel.validation.rule.engagement_auc")
    if vm is not None and vr is not None:
        text += f", chosen on the validation window (engagement AUC: the model {vm:.3f}, the engagement-ratio rule {vr:.3f})"
    text += (
        f". On the held-out messages, engagement AUC (how well it ranks who opens or clicks; 0.5 is chance): "
        f"the model {m['channel.engagement_auc']:.3f}, the rule {m.get('channel.rule.engagement_auc', float('nan')):.3f}."
    )
    lift = m.get("channel.served.top_channel_lift")
    if lift is not None and np.isfinite(lift):
        text += (
            f" Messages that went out on the channel it ranks first were engaged with {lift:.2f} times as often "
            "as those on other channels."
        )
    if "channel.conversion_auc" in m:
        text += (
            f" Conversion AUC: {m['channel.conversion_auc']:.3f} against {m.get('channel.conversion_auc_fallback', float('nan')):.3f} "
            "for the fallback."
        )
    rows = []
    for policy, prefix in (("model", "channel."), ("rule", "channel.rule.")):
        rows.append(
            {
                "policy": ("served: " if policy == served else "") + POLICY_NAMES[policy],
                "engagement AUC": m.get(f"{prefix}engagement_auc"),
                "log loss": m.get(f"{prefix}engagement_log_loss"),
                "top-channel lift": m.get(f"{prefix}top_channel_lift"),
                "validation AUC": m.get(f"channel.validation.{policy}.engagement_auc"),
                "held-out messages": m.get(f"{prefix}engagement_n"),
            }
        )
    chosen = m.get(f"channel.{'rule.' if served == 'rule' else ''}engagement_auc", float("nan"))
    other = m.get(f"channel.{'' if served == 'rule' else 'rule.'}engagement_auc", float("nan"))
    headline = (
        f"Channel: {POLICY_NAMES.get(served, served)}, engagement AUC {chosen:.3f} against {other:.3f} for "
        f"{POLICY_NAMES['model' if served == 'rule' else 'rule']}"
    )
    table = pd.DataFrame(rows)
    bars = dict(zip(table["policy"], table["engagement AUC"], strict=True))
    served_bar = next(p for p in bars if p.startswith("served: "))
    return ModelQuality(
        "channel",
        "Channel",
        text,
        table,
        headline,
        bars=bars,
        bar_metric="engagement AUC",
        served_bar=served_bar,
    )


def _send_time_quality(run: RunRecord) -> ModelQuality | None:
    m = run.metrics
    if not any(k.startswith("send_time.") for k in m):
        return None
    served = run.served.get("send_time", "model")
    prefixes = {
        "model": "send_time.",
        "customer_modal_hour": "send_time.customer_modal_hour.",
        "global_best_hour": "send_time.global_best_hour.",
    }
    text = f"Serves {POLICY_NAMES.get(served, served)}"
    valid = {p: m.get(f"send_time.validation.{p}.matched_stratified_rate_matched") for p in prefixes}
    if all(v is not None for v in valid.values()):
        text += (
            ", chosen on the validation window (engagement of sends near the chosen hour: "
            + ", ".join(f"{POLICY_NAMES[p]} {fmt_pct(v)}" for p, v in valid.items())
            + ")"
        )
    test = {p: m.get(f"{prefix}matched_stratified_rate_matched") for p, prefix in prefixes.items()}
    hours = int(m.get("send_time.matched_match_hours", 1))
    if all(v is not None for v in test.values()):
        text += (
            f". On the held-out messages, those sent within ±{hours} h of the hour a policy picks were engaged with "
            + ", ".join(f"{fmt_pct(v)} of the time for {POLICY_NAMES[p]}" for p, v in test.items())
            + " (channel mix held fixed)"
        )
    hit = m.get(f"{prefixes.get(served, 'send_time.')}activity_hit_rate")
    if hit is not None:
        text += (
            f". Later activity fell within ±{hours} h of the served hour {fmt_pct(hit)} of the time "
            f"(chance {fmt_pct(m.get('send_time.activity_hit_rate_chance'))})"
        )
    text += "."
    rows = []
    for policy, prefix in prefixes.items():
        rows.append(
            {
                "policy": ("served: " if policy == served else "") + POLICY_NAMES[policy],
                "engagement near the chosen hour": m.get(f"{prefix}matched_stratified_rate_matched"),
                "matched sends": m.get(f"{prefix}matched_n_matched"),
                "activity hit rate": m.get(f"{prefix}activity_hit_rate"),
                "validation engagement": valid.get(policy),
            }
        )
    headline = f"Send time: {POLICY_NAMES.get(served, served)}"
    if all(v is not None for v in test.values()):
        headline += ", engagement near the chosen hour " + ", ".join(
            f"{fmt_pct(v)} ({POLICY_NAMES[p].removeprefix('the ')})" for p, v in test.items()
        )
    percent = ("engagement near the chosen hour", "activity hit rate", "validation engagement")
    table = pd.DataFrame(rows)
    bars = dict(zip(table["policy"], table["engagement near the chosen hour"], strict=True))
    return ModelQuality(
        "send_time",
        "Send time",
        text,
        table,
        headline,
        percent,
        bars=bars,
        bar_metric="engagement near the hour",
        served_bar=next((p for p in bars if p.startswith("served: ")), ""),
    )


def _profiles_quality(run: RunRecord) -> ModelQuality | None:
    m = run.metrics
    parts, rows = [], []
    if "profile.churn_auc" in m:
        served = "the LightGBM model" if m.get("profile.churn_served_model", 1.0) == 1.0 else "the naive rule"
        parts.append(
            f"Churn risk (no purchase in the next 90 days) serves {served}: AUC {m['profile.churn_auc']:.3f} "
            f"against {m.get('profile.churn_auc_naive', float('nan')):.3f} for the naive rule (recent buyer or not)"
        )
        rows.append(
            {
                "forecast": "churn risk",
                "measure": "AUC (higher is better)",
                "model": m["profile.churn_auc"],
                "naive rule": m.get("profile.churn_auc_naive"),
                "served": served,
            }
        )
    if "profile.spend_mae" in m:
        served = "the LightGBM model" if m.get("profile.spend_served_model", 1.0) == 1.0 else "the naive rule"
        parts.append(
            f"90-day spend serves {served}: mean absolute error {m['profile.spend_mae']:.2f} against "
            f"{m.get('profile.spend_mae_naive', float('nan')):.2f} for the last 90 days repeated"
        )
        rows.append(
            {
                "forecast": "spend, next 90 days",
                "measure": "mean absolute error (lower is better)",
                "model": m["profile.spend_mae"],
                "naive rule": m.get("profile.spend_mae_naive"),
                "served": served,
            }
        )
    if not parts:
        return None
    bars, served_bar = {}, ""
    if "profile.churn_auc" in m:
        bars = {
            "churn model": m["profile.churn_auc"],
            "naive rule": m.get("profile.churn_auc_naive", float("nan")),
        }
        served_bar = "churn model" if m.get("profile.churn_served_model", 1.0) == 1.0 else "naive rule"
    return ModelQuality(
        "profiles",
        "Customer profiles",
        ". ".join(parts) + ".",
        pd.DataFrame(rows),
        "Profiles: " + parts[0][0].lower() + parts[0][1:],
        bars=bars,
        bar_metric="churn AUC",
        served_bar=served_bar,
    )


def _nba_quality(run: RunRecord) -> ModelQuality | None:
    m = run.metrics
    if "nba.guard.personalised_value" not in m:
        if "nba.customers" in m:
            return ModelQuality(
                "next_best_action",
                "Next-best-action",
                "No uplift model was learned (no logged messages to learn from): the engine sends reminders "
                "and win-backs valued with an assumed uplift.",
                headline="Next-best-action: no uplift model (no logged messages); reminders and win-backs only",
            )
        return None
    personal, fixed = m["nba.guard.personalised_value"], m["nba.guard.best_fixed_value"]
    serves_fixed = m.get("nba.guard.fallback", 0.0) == 1.0
    text = (
        f"{'Serves the best fixed action' if serves_fixed else 'Serves the personalised choice'}: on the "
        f"training messages (cross-fitted), the personalised choice is worth {personal:.3f} per message against "
        f"{fixed:.3f} for the best single action sent to everyone (gain {m.get('nba.guard.gain', float('nan')):+.3f}, "
        f"one-sided lower bound {m.get('nba.guard.lower_bound', float('nan')):+.3f})"
    )
    text += (
        "; the personalised choice did not prove better, so the best fixed action is sent."
        if serves_fixed
        else "."
    )
    arms = sorted(k.removeprefix("nba.uplift.") for k in m if k.startswith("nba.uplift."))
    rows = [
        {
            "action": arm_name(arm),
            "uplift in conversion": m[f"nba.uplift.{arm}"],
            "lower 95% bound": m.get(f"nba.uplift_lower.{arm}"),
            "conversion rate": m.get(f"nba.conversion_rate.{arm}"),
        }
        for arm in arms
    ]
    shares = {
        k.removeprefix("nba.action_share."): v for k, v in m.items() if k.startswith("nba.action_share.")
    }
    if shares:
        text += (
            " Decisions on a sample of customers: "
            + ", ".join(
                f"{a.replace('_', ' ')} {fmt_pct(v)}"
                for a, v in sorted(shares.items(), key=lambda kv: -kv[1])
            )
            + "."
        )
    headline = (
        f"Next-best-action: {'the best fixed action' if serves_fixed else 'the personalised choice'}, "
        f"{personal:.3f} per message personalised against {fixed:.3f} for the best fixed action"
    )
    table = pd.DataFrame(rows) if rows else None
    bars = {"personalised choice": personal, "best fixed action": fixed}
    return ModelQuality(
        "next_best_action",
        "Next-best-action",
        text,
        table,
        headline,
        percent=("conversion rate",),
        points=("uplift in conversion", "lower 95% bound"),
        bars=bars,
        bar_metric="value per message",
        served_bar="best fixed action" if serves_fixed else "personalised choice",
    )


def arm_name(arm: str) -> str:
    """An uplift arm in words: 'opened_OF_DISC20' → 'offer OF_DISC20, opened'."""
    if arm == "opened_plain":
        return "plain message, opened"
    if arm.startswith("opened_"):
        return f"offer {arm.removeprefix('opened_')}, opened"
    return arm.replace("_", " ")


def model_quality(run: RunRecord) -> list[ModelQuality]:
    """Each trained family's quality beside its baselines (see the module docstring)."""
    out = _recommender_quality(run)
    for build in (_channel_quality, _send_time_quality, _profiles_quality, _nba_quality):
        quality = build(run)
        if quality is not None:
            out.append(quality)
    return out


# ------------------------------------------------------------------------------- segments and value
@dataclass
class Segments:
    """Segment sizes with churn risk and value (`table`), the churn-risk distribution (`churn`:
    customers per band of risk), and lifetime value (`clv`: the values) or why it is absent."""

    table: pd.DataFrame
    churn: pd.DataFrame | None
    clv: np.ndarray | None
    clv_missing: str | None
    as_of: str | None = None


SEGMENT_ORDER = ("new", "active", "loyal", "champion", "at_risk", "dormant")
CHURN_BANDS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0000001)
CLV_COLUMN = "clv_365d"


def segments_of(frame: pd.DataFrame, as_of=None) -> Segments:
    """`Segments` from a profiles table (`CustomerProfiles.profiles_frame()`)."""
    present = [s for s in SEGMENT_ORDER if s in set(frame["segment"].astype(str))]
    present += sorted(set(frame["segment"].astype(str)) - set(present))
    agg = {"customers": ("segment", "size")}
    for column, name in (
        ("churn_risk", "mean churn risk"),
        ("predicted_spend_90d", "predicted spend, 90 days"),
        ("monetary", "net spend to date"),
        (CLV_COLUMN, "lifetime value, 365 days"),
    ):
        if column in frame:
            agg[name] = (column, "mean")
    table = frame.assign(segment=frame["segment"].astype(str)).groupby("segment").agg(**agg).reindex(present)
    table.insert(1, "share", table["customers"] / table["customers"].sum())
    churn = None
    if "churn_risk" in frame and frame["churn_risk"].notna().any():
        labels = ["0-20%", "20-40%", "40-60%", "60-80%", "80-100%"]
        band = pd.cut(frame["churn_risk"].astype(float), CHURN_BANDS, labels=labels, right=False)
        churn = (
            band.value_counts().reindex(labels, fill_value=0).rename("customers").rename_axis("churn risk")
        )
        churn = churn.reset_index()
    clv, why = None, None
    if CLV_COLUMN in frame and frame[CLV_COLUMN].notna().any():
        clv = frame[CLV_COLUMN].astype(float).dropna().to_numpy()
    else:
        why = (
            f"the customer profiles carry no lifetime value ({CLV_COLUMN}): the next-best-action model was "
            "trained by a version without it, or on data that cannot support it"
        )
    return Segments(table.reset_index(), churn, clv, why, None if as_of is None else str(as_of))


# ------------------------------------------------------------------------------------ the content
@dataclass
class ReportContent:
    """Everything the report shows (see the module docstring); a part the data or the models
    cannot give is a string saying why."""

    title: str
    summary: dict
    kpis: Kpis
    lift: LiftResult | str
    segments: Segments | str
    models: list[ModelQuality]
    run: RunRecord | None
    quiet_hours: tuple[int, int] | None
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def gather(
    tables,
    summary: dict,
    policy,
    run: RunRecord | None = None,
    profiles_frame: pd.DataFrame | None = None,
    profiles_missing: str | None = None,
    contacts: pd.DataFrame | None = None,
    attribution_days: float = 14.0,
    lift_window_days: float = 90.0,
    versions: dict[str, str] | None = None,
    title: str = "Marketing and model report",
    notes: list[str] | None = None,
) -> ReportContent:
    """The report's content from identity-stitched `tables` (`features.io.Tables`), the contact
    `policy` (control group, quiet hours), the training run's record, the customer profiles and the
    live store's contacts (each optional: a part without its input says why it is absent)."""
    kpis = compute_kpis(tables.events, tables.messages, tables.customers, attribution_days=attribution_days)
    try:
        lift: LiftResult | str = measure_lift(
            tables.events,
            tables.messages,
            tables.customers,
            tables.consent,
            policy,
            window_days=lift_window_days,
            contacts=contacts,
        )
    except NotComputable as exc:
        lift = str(exc)
    if profiles_frame is not None and len(profiles_frame):
        segments: Segments | str = segments_of(profiles_frame)
    else:
        segments = profiles_missing or "no customer profiles: no next-best-action model has been trained"
    return ReportContent(
        title=title,
        summary=summary,
        kpis=kpis,
        lift=lift,
        segments=segments,
        models=model_quality(run) if run is not None else [],
        run=run,
        quiet_hours=policy.quiet_hours,
        versions=dict(versions or {}),
        notes=list(notes or []),
    )


# ------------------------------------------------------------------------------------ the document
@dataclass(frozen=True)
class Block:
    """One piece of the report, rendered as Markdown or HTML: a heading (`h2`, `h3`), a paragraph
    (`p`), a bullet list (`list`: a list of lines), a table (`table`: a DataFrame of text cells) or
    a chart (`chart`: its name in `training.report_page.CHARTS`; Markdown has none)."""

    kind: str
    value: object


def cells(frame: pd.DataFrame, formats: dict | None = None) -> pd.DataFrame:
    """`frame` as text cells: each column through its format (`formats`), others by `_cell`."""
    formats = formats or {}
    return pd.DataFrame(
        {str(col): [formats.get(col, _cell)(v) for v in frame[col].tolist()] for col in frame.columns}
    )


def md_table(frame: pd.DataFrame, formats: dict | None = None) -> str:
    """A Markdown table of `frame` (its columns as they are named), cells formatted by `formats`."""
    text = cells(frame, formats)
    lines = ["| " + " | ".join(text.columns) + " |", "|" + "---|" * len(text.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in text.itertuples(index=False)]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float | np.floating | int | np.integer) and not isinstance(value, bool):
        return fmt_num(value)
    if _absent(value):
        return "–"
    return str(value)


def key_figures(content: ReportContent) -> list[str]:
    """The few lines at the top: the period, customers, revenue, repeat rate, conversion, lift and
    what each model family serves."""
    k, s, lines = content.kpis, content.summary, []
    lines.append(
        f"Data from {s['events_from'][:10]} to {s['events_to'][:10]}: "
        f"{s['customers_with_events']:,} customers with events."
    )
    totals = k.get("channel_totals")
    if totals is not None:
        row = totals.loc[totals["channel"] == ALL_CHANNELS].iloc[0]
        lines.append(
            f"{int(row['orders']):,} orders from {int(row['buyers']):,} buyers, revenue {fmt_num(row['revenue'])}, "
            f"average order value {fmt_num(row['aov'])}."
        )
    repeat = k.get("repeat_purchase")
    if repeat is not None:
        rate = repeat.loc[repeat["period"] == "whole history", "repeat_rate"].iloc[0]
        lines.append(f"Repeat purchase rate (buyers with two orders or more): {fmt_pct(rate)}.")
    conversion = k.get("message_conversion")
    if conversion is not None:
        row = conversion.loc[
            (conversion["period"] == ALL_MONTHS) & (conversion["channel"] == ALL_CHANNELS)
        ].iloc[0]
        lines.append(
            f"{int(row['messages']):,} messages: {fmt_pct(row['conversion_rate'])} followed by a purchase within "
            f"{k.settings['attribution_days']:g} days."
        )
    if isinstance(content.lift, LiftResult) and len(content.lift.table):
        row = content.lift.table.iloc[0]
        lines.append(
            f"Measured lift of all messaging against the control group: conversion {fmt_points(row['difference'])} "
            f"(95% interval {fmt_points(row['low'])} to {fmt_points(row['high'])})."
        )
    lines += [f"{q.headline}." for q in content.models if q.headline]
    return lines


RENAMED = {
    "aov": "average order value",
    "revenue_share": "share of revenue",
    "net_revenue": "net revenue",
    "returning_share": "returning share",
    "customer_share": "share of buyers",
    "revenue_per_customer": "revenue per customer",
    "orders_per_customer": "orders per customer",
    "value_vs_single": "value vs single-channel",
    "first_touch": "first touch",
    "purchase_channel": "purchase channel",
    "order_share": "share of orders",
    "open_rate": "open rate",
    "click_rate": "click rate",
    "conversion_rate": "conversion",
    "logged_conversion_rate": "logged conversion",
    "revenue_per_message": "revenue per message",
    "period": "month",
}
RATE_COLUMNS = (
    "share of revenue",
    "returning share",
    "share of buyers",
    "share of orders",
    "open rate",
    "click rate",
    "conversion",
    "logged conversion",
    "share",
    "mean churn risk",
)


def table_block(frame: pd.DataFrame, formats: dict | None = None) -> Block:
    """A table block of `frame` with the report's column names and rates in %."""
    shown = frame.rename(columns=RENAMED)
    rates = {col: fmt_pct for col in shown.columns if col in RATE_COLUMNS}
    return Block("table", cells(shown, rates | (formats or {})))


def _kpi_blocks(content: ReportContent) -> list[Block]:
    k = content.kpis
    out: list[Block] = [Block("h2", "KPIs from the data")]
    if k.notes:
        out.append(Block("list", [f"Note: {n}." for n in k.notes]))

    def section(name: str, *blocks: Block) -> None:
        out.append(Block("h3", KPI_TITLES[name]))
        if name in k.missing:
            out.append(Block("p", f"Not computed: {k.missing[name]}."))
        else:
            out.extend(blocks)

    totals, monthly, repeat = k.get("channel_totals"), k.get("revenue_by_channel"), k.get("repeat_purchase")
    section(
        "channel_totals",
        Block(
            "p",
            "Orders by the channel of purchase; a customer who bought in two channels counts as a buyer in both.",
        ),
        *([table_block(totals)] if totals is not None else []),
    )
    if monthly is not None:
        months = monthly.loc[monthly["channel"] == ALL_CHANNELS].drop(columns=["channel", "revenue_share"])
        if repeat is not None:
            months = months.merge(repeat[["period", "returning_share"]], on="period", how="left")
        aov = monthly.loc[monthly["channel"] != ALL_CHANNELS].pivot(
            index="period", columns="channel", values="aov"
        )
        section(
            "revenue_by_channel",
            Block("chart", "revenue_by_channel"),
            Block(
                "p",
                "All channels by calendar month (UTC). Returning share: buyers of the month who had ordered in an "
                "earlier month; the first month has no earlier history.",
            ),
            table_block(months),
            Block("p", "Average order value by month and channel:"),
            table_block(aov.reset_index()),
        )
    else:
        section("revenue_by_channel")
    if repeat is not None:
        whole = repeat.loc[repeat["period"] == "whole history"].iloc[0]
        section(
            "repeat_purchase",
            Block(
                "p",
                f"{int(whole['returning_buyers']):,} of {int(whole['buyers']):,} buyers ordered twice or more over "
                f"the whole history: a repeat purchase rate of {fmt_pct(whole['repeat_rate'])}.",
            ),
        )
    else:
        section("repeat_purchase")
    cohorts = k.get("cohort_retention")
    if cohorts is not None:
        shown = cohorts.rename(
            columns=lambda col: col.replace("month_", "m") if col.startswith("month_") else col
        )
        formats = {col: (lambda v: fmt_pct(v, 0)) for col in shown.columns if re.fullmatch(r"m\d+", col)}
        section(
            "cohort_retention",
            Block("chart", "cohort_retention"),
            Block(
                "p",
                "Customers by the month of their first order in the data; each column the share of the cohort "
                "ordering in the n-th month after it (m0: the cohort's own month). Empty: after the end of the data. "
                "The first cohort also holds customers who had bought before the data begin.",
            ),
            table_block(shown, formats),
        )
    else:
        section("cohort_retention")
    cross = k.get("cross_channel_value")
    section(
        "cross_channel_value",
        Block("chart", "cross_channel_value"),
        Block("p", "Customers by the number of channels they bought in over the whole history."),
        *(
            [table_block(cross, {"value vs single-channel": lambda v: "–" if _absent(v) else f"{v:.2f}×"})]
            if cross is not None
            else []
        ),
    )
    journeys = k.get("top_journeys")
    section(
        "top_journeys",
        Block("chart", "top_journeys"),
        Block(
            "p",
            f"The first touch (a message received, or a view, cart or search on a channel) within "
            f"{k.settings['journey_days']:g} days before an order, then the channel of the order.",
        ),
        *([table_block(journeys)] if journeys is not None else []),
    )
    conversion = k.get("message_conversion")
    if conversion is not None:
        whole = conversion.loc[conversion["period"] == ALL_MONTHS].drop(columns="period")
        by_month = conversion.loc[
            (conversion["period"] != ALL_MONTHS) & (conversion["channel"] == ALL_CHANNELS)
        ].drop(columns="channel")
        section(
            "message_conversion",
            Block("chart", "message_conversion"),
            Block(
                "p",
                f"Conversion: a purchase by the customer within {k.settings['attribution_days']:g} days after the "
                "send (messages whose window had not closed at the end of the data are left out). Logged "
                "conversion: what the campaign system attributed (messages.converted_ts). Revenue per message: "
                "the value of the first such order.",
            ),
            table_block(whole),
            Block("p", "By month (all channels):"),
            table_block(by_month),
        )
    else:
        section("message_conversion")
    engagement = k.get("engagement_by_hour")
    quiet = content.quiet_hours
    quiet_text = f"; quiet hours {quiet[0]:02d}:00-{quiet[1]:02d}:00, marked on the map" if quiet else ""
    if engagement is not None:
        hourly = engagement.groupby("hour")[["messages", "opens", "clicks"]].sum()
        hourly = hourly.loc[hourly["messages"] > 0]
        hourly["open rate"] = hourly["opens"] / hourly["messages"]
        hourly["click rate"] = hourly["clicks"] / hourly["messages"]
        section(
            "engagement_by_hour",
            Block("chart", "send_time"),
            Block(
                "p",
                "The customer's local hour and weekday of sending (customers.timezone; UTC where unknown)"
                + quiet_text
                + ". Hours without a message are left out of the table.",
            ),
            table_block(hourly.reset_index().rename(columns={"hour": "local hour"})),
        )
    else:
        section("engagement_by_hour")
        if k.get("activity_by_hour") is not None:
            out.append(Block("h3", KPI_TITLES["activity_by_hour"]))
            out.append(Block("chart", "send_time"))
            out.append(
                Block(
                    "p",
                    "Orders by the customer's local hour and weekday (when customers buy)" + quiet_text + ".",
                )
            )
    return out


def lift_display(lift: LiftResult) -> pd.DataFrame:
    """The lift table as text cells: rates in %, differences of rates in percentage points,
    revenue in currency units, each difference with its 95% interval."""
    rows = []
    for r in lift.table.itertuples(index=False):
        rate = r.metric == "conversion"
        value = fmt_pct if rate else fmt_num
        if rate:
            difference = f"{fmt_points(r.difference)} ({fmt_points(r.low)} to {fmt_points(r.high)})"
        else:
            difference = f"{r.difference:+,.2f} ({r.low:+,.2f} to {r.high:+,.2f})"
        rows.append(
            {
                "scope": r.scope,
                "metric": r.metric,
                "treated": value(r.treated),
                "control": value(r.control),
                "difference (95% interval)": difference,
                "relative": "–" if not np.isfinite(r.relative) else f"{r.relative:+.0%}",
                "treated customers": f"{r.n_treated:,}",
                "control customers": f"{r.n_control:,}",
            }
        )
    return pd.DataFrame(rows)


def _lift_blocks(content: ReportContent) -> list[Block]:
    lift = content.lift
    out = [Block("h2", "Measured lift against the control group")]
    if not isinstance(lift, LiftResult):
        return out + [Block("p", f"Not measured: {lift}.")]
    start, end = lift.window
    out.append(
        Block(
            "p",
            f"From {start:%Y-%m-%d} to {end:%Y-%m-%d}. Control group: {lift.control}. Population: {lift.population}. "
            "Conversion: the share of customers with a purchase in the window; revenue: purchases net of returns per "
            "customer. Intervals: 95%, normal approximation (Welch). The first rows compare everyone outside the "
            "control group with it (a random split: the effect of the messaging as run); the others compare the "
            "customers who received a channel or an action with the control customers who could have, and those "
            "customers were chosen, so part of a difference there may come from the choice.",
        )
    )
    out += [Block("chart", "lift"), Block("table", lift_display(lift))]
    if lift.notes:
        out.append(Block("list", list(lift.notes)))
    return out


def _segment_blocks(content: ReportContent) -> list[Block]:
    out = [Block("h2", "Segments, churn and lifetime value")]
    seg = content.segments
    if not isinstance(seg, Segments):
        return out + [Block("p", f"Not available: {seg}.")]
    out += [
        Block(
            "p",
            "From the customer profiles of the next-best-action model: RFM segments; churn risk, the probability of "
            "no purchase in the next 90 days.",
        ),
        Block("chart", "segments"),
        table_block(seg.table),
    ]
    if seg.churn is not None:
        out += [Block("p", "Customers by churn risk:"), table_block(seg.churn)]
    out.append(Block("h3", "Lifetime value"))
    if seg.clv is None:
        return out + [Block("p", f"Not available: {seg.clv_missing}.")]
    q = np.quantile(seg.clv, [0.1, 0.5, 0.9])
    ordered = np.sort(seg.clv)[::-1]
    top = ordered[: max(1, len(ordered) // 10)].sum() / ordered.sum() if ordered.sum() > 0 else float("nan")
    out += [
        Block("chart", "clv"),
        Block(
            "p",
            f"Lifetime value over the next 365 days: median {fmt_num(q[1])}, 10th percentile {fmt_num(q[0])}, "
            f"90th percentile {fmt_num(q[2])}, mean {fmt_num(seg.clv.mean())}; the top 10% of customers hold "
            f"{fmt_pct(top)} of it.",
        ),
    ]
    return out


def quality_formats(q: ModelQuality) -> dict:
    """Cell formats of a model-quality table: rates in %, differences of rates in points, other
    measures with 3 decimals."""
    formats = {col: (lambda v: fmt_num(v, 3)) for col in q.table.columns}
    formats.update({col: fmt_pct for col in q.percent})
    formats.update({col: fmt_points for col in q.points})
    return formats


def _model_blocks(content: ReportContent) -> list[Block]:
    out = [Block("h2", "Models beside their baselines")]
    if content.run is None:
        return out + [Block("p", "No training run was found: run `omni train`.")]
    if not content.models:
        out.append(Block("p", "No model family was trained."))
    else:
        # the run's versions that do not serve now: the champions named at the top do (without the
        # registry's word, the gate's decisions at training time say which)
        kept = [
            f"{d['model_name']} v{d['challenger_version']}"
            for d in content.run.decisions
            if (
                content.versions.get(d["model_name"]) != str(d["challenger_version"])
                if content.versions
                else not d["promoted"]
            )
        ]
        if kept:
            out.append(
                Block(
                    "p",
                    "The figures are those of the latest training run; of its models, "
                    + ", ".join(kept)
                    + " are not the champions serving now (see the champion decisions and the versions at the top).",
                )
            )
        out.append(Block("chart", "models"))
    for q in content.models:
        out += [Block("h3", q.title), Block("p", q.summary)]
        if q.table is not None and len(q.table):
            out.append(Block("table", cells(q.table, quality_formats(q))))
    if content.run.skipped:
        out += [
            Block("h3", "Not trained"),
            Block("list", [f"{f}: {why}" for f, why in content.run.skipped.items()]),
        ]
    return out


def _run_blocks(content: ReportContent) -> list[Block]:
    run = content.run
    if run is None:
        return []
    out = [Block("h2", "Champion decisions")]
    if run.decisions:
        frame = pd.DataFrame(
            {
                "model": [d["model_name"] for d in run.decisions],
                "new version": [str(d["challenger_version"]) for d in run.decisions],
                "promoted": ["yes" if d["promoted"] else "no" for d in run.decisions],
                "reason": [d["reason"] for d in run.decisions],
            }
        )
        out.append(Block("table", frame))
    else:
        out.append(Block("p", "No model was registered."))
    if run.timings:
        frame = pd.DataFrame(
            [
                {"stage": stage, "seconds": t.get("seconds"), "peak memory (MB)": t.get("peak_rss_mb")}
                for stage, t in run.timings.items()
            ]
        )
        out += [
            Block("h2", "Training time"),
            Block("p", "Seconds per stage of `omni train` and the peak memory of the process."),
            Block(
                "table",
                cells(frame, {"seconds": lambda v: f"{v:,.1f}", "peak memory (MB)": lambda v: fmt_num(v, 0)}),
            ),
        ]
    return out


def document(content: ReportContent) -> list[Block]:
    """The whole report as blocks, in reading order."""
    s = content.summary
    out = [Block("h1", content.title)]
    if content.versions:
        out.append(Block("p", "Models: " + ", ".join(f"{n} v{v}" for n, v in content.versions.items()) + "."))
    out += [Block("h2", "Key figures"), Block("list", key_figures(content))]
    out += [
        Block("h2", "Data"),
        Block(
            "list",
            [
                f"input hash (sha256): `{s.get('input_hash', 'n/a')}`",
                f"events from {s['events_from']} to {s['events_to']}",
                f"{s['customers_with_events']:,} customers and {s['products_with_events']:,} products with events",
                "tables: " + ", ".join(f"{name} ({rows:,} rows)" for name, rows in s["tables"].items()),
            ],
        ),
    ]
    out += _kpi_blocks(content)
    out += _lift_blocks(content)
    out += _segment_blocks(content)
    out += _model_blocks(content)
    out += _run_blocks(content)
    notes = list(dict.fromkeys([*content.notes, *(content.run.notes if content.run is not None else [])]))
    out += [Block("h2", "Notes on the data"), Block("list", notes or ["none"])]
    return out


def render_markdown(content: ReportContent) -> str:
    """The whole report as Markdown (`report.md`): every block but the charts."""
    out: list[str] = []
    for block in document(content):
        if block.kind in ("h1", "h2", "h3"):
            out += ["", "#" * int(block.kind[1]) + " " + block.value, ""]
        elif block.kind == "p":
            out += [block.value, ""]
        elif block.kind == "list":
            out += [f"- {line}" for line in block.value] + [""]
        elif block.kind == "table":
            out += [md_table(block.value), ""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


# ------------------------------------------------------------------------------- at training time
def run_record_of(
    outcomes: dict,
    metrics: dict[str, float],
    decisions: list[dict],
    notes: list[str],
    timings: dict[str, dict],
    run_id: str | None = None,
    input_hash: str | None = None,
) -> RunRecord:
    """The `RunRecord` of a training run still in memory (`training.families.FamilyOutcome`s by
    family): what `RunRecord.from_mlflow` reads back once it is logged."""
    engagement = None
    for name in ("send_time", "channel"):
        outcome = outcomes.get(name)
        if outcome is not None and outcome.trained and "engagement" in outcome.extra:
            engagement = outcome.extra["engagement"]
    rec = outcomes.get("recommender")
    return RunRecord(
        run_id=run_id,
        metrics=dict(metrics),
        served={f: p for f, p in ((engagement.served or {}) if engagement is not None else {}).items() if p},
        recommender=rec.extra.get("info") if rec is not None and rec.trained else None,
        timings=dict(timings),
        decisions=list(decisions),
        skipped={name: o.reason for name, o in outcomes.items() if not o.trained},
        notes=list(notes),
        input_hash=input_hash,
    )


def profiles_of(outcomes: dict) -> tuple[pd.DataFrame | None, str | None]:
    """(the profiles table of the run's customer profiles, or None and why)."""
    outcome = outcomes.get("profiles")
    if outcome is None or not outcome.trained:
        reason = outcome.reason if outcome is not None else "not run"
        return None, f"the customer profiles were not trained ({reason})"
    return outcome.model.profiles_frame(), None


def training_report(
    tables, summary: dict, record: RunRecord, outcomes: dict, policy, attribution_days: float = 14.0
) -> ReportContent:
    """The content of the report logged with a training run (`report.md`), from the run's own
    tables, outcomes and record; `attribution_days`: the run's conversion window."""
    frame, why = profiles_of(outcomes)
    return gather(
        tables,
        summary,
        policy,
        record,
        profiles_frame=frame,
        profiles_missing=why,
        attribution_days=attribution_days,
        title="Training run report",
    )
