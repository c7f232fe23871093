"""The report (`training.report`, `training.report_page`) on hand-made data and a hand-made training
record: each figure attributed to the model that produced it, timings in seconds, what cannot be
computed said in words, and a page that needs nothing outside itself."""

import re

import numpy as np
import pandas as pd

from features import columns as c
from features.io import Tables
from models.decisions.contact_policy import ContactPolicy
from training.report import RunRecord, gather, model_quality, render_markdown
from training.report_page import render_html

T0 = pd.Timestamp("2026-01-01T00:00:00Z")


def record() -> RunRecord:
    metrics = {}
    # the new-products list: EASE is served; the all-purchases list: the ranker
    for model, ndcg, coverage in (
        ("popularity", 0.06, 0.02),
        ("repeat", 0.003, 0.005),
        ("als", 0.067, 0.23),
        ("ease", 0.077, 0.10),
        ("ranker", 0.070, 0.16),
        ("served", 0.077, 0.10),
    ):
        metrics[f"{model}.ndcg@10"] = ndcg
        metrics[f"{model}.coverage"] = coverage
    for model, ndcg in (
        ("popularity", 0.05),
        ("repeat", 0.18),
        ("als", 0.05),
        ("ease", 0.06),
        ("ranker", 0.23),
    ):
        metrics[f"{model}.all_purchases.ndcg@10"] = ndcg
    metrics["served.all_purchases.ndcg@10"] = 0.23
    metrics |= {
        "channel.engagement_auc": 0.632,
        "channel.rule.engagement_auc": 0.635,
        "channel.validation.model.engagement_auc": 0.635,
        "channel.validation.rule.engagement_auc": 0.645,
        "nba.train_seconds": 12.8,
    }
    info = {
        "served": {"all": "ranker", "new": "ease"},
        "two_stage_training": {"served_validation_ndcg@10": {"all": {"ranker": 0.241, "repeat": 0.177}}},
    }
    return RunRecord(
        run_id="r1",
        metrics=metrics,
        served={"channel": "rule"},
        recommender=info,
        timings={"recommender": {"seconds": 17.8, "peak_rss_mb": 804.0}, "validate": {"seconds": 0.3}},
        skipped={"send_time": "no timestamps"},
    )


def test_each_figure_is_attributed_to_the_model_that_produced_it():
    qualities = {q.title: q for q in model_quality(record())}
    default = qualities["Recommendations: the default list"]
    assert default.summary.startswith(
        "Serves the LambdaRank ranker, chosen on the validation window (ndcg@10 0.241"
    )
    assert "above the best baseline, repeat purchase, at 0.180, +28%" in default.summary
    new = qualities["Recommendations: products never bought"]
    # EASE is served there: it is not its own baseline, and the coverage of its row is EASE's
    assert "above the best baseline, ALS, at 0.067" in new.summary
    rows = new.table.set_index("model")
    assert rows.loc["served: EASE", "catalogue coverage"] == 0.10
    assert rows.loc["ALS", "catalogue coverage"] == 0.23
    channel = qualities["Channel"]
    assert channel.summary.startswith("Serves the engagement-ratio rule")
    assert (
        channel.table.set_index("policy").loc["served: the engagement-ratio rule", "engagement AUC"] == 0.635
    )


def tables_of_a_till_log() -> Tables:
    """One store, purchases only: no messages, consent, control group or products (a real
    retailer's shape, as The Complete Journey is)."""
    rng = np.random.default_rng(0)
    n = 300
    events = pd.DataFrame(
        {
            c.CUSTOMER_ID: [f"H{i % 60}" for i in range(n)],
            c.TS: T0 + pd.to_timedelta(rng.integers(0, 120 * 24, n), unit="h"),
            c.CHANNEL: "store",
            c.EVENT_TYPE: "purchase",
            c.PRODUCT_ID: [f"P{i % 7}" for i in range(n)],
            c.QUANTITY: 1.0,
            c.AMOUNT: rng.uniform(1, 50, n).round(2),
            c.ORDER_ID: pd.array([None] * n, dtype="string"),
        }
    )
    return Tables(events=events)


def summary_of(tables: Tables) -> dict:
    ev = tables.events
    return {
        "tables": {"events": len(ev)},
        "events_from": ev[c.TS].min().isoformat(),
        "events_to": ev[c.TS].max().isoformat(),
        "customers_with_events": int(ev[c.CUSTOMER_ID].nunique()),
        "products_with_events": int(ev[c.PRODUCT_ID].nunique()),
        "input_hash": "0" * 64,
    }


def test_a_report_without_messages_control_group_profiles_or_run_says_why_and_renders():
    tables = tables_of_a_till_log()
    content = gather(tables, summary_of(tables), ContactPolicy())
    text = render_markdown(content)
    assert "Not measured: no messages table and no contact in the live store" in text
    assert "Not computed: no messages table" in text
    assert "Not computed: every purchase is in one channel (store)" in text
    assert "Not available: no customer profiles" in text
    assert "No training run was found" in text
    page = render_html(content)
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert 'src="data:image/svg+xml;base64,' in page
    # nothing to fetch: no external script, style, image or font
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    # no customer id anywhere (only aggregates)
    assert not re.search(r"\bH\d+\b", page) and not re.search(r"\bH\d+\b", text)


def test_the_report_states_models_beside_baselines_and_timings_without_percent_changes():
    tables = tables_of_a_till_log()
    content = gather(tables, summary_of(tables), ContactPolicy(), run=record())
    text = render_markdown(content)
    assert "| served: the LambdaRank ranker | 0.230 |" in text
    assert "### Not trained" in text and "send_time: no timestamps" in text
    timings = text[text.index("## Training time") :]
    assert "| recommender | 17.8 | 804 |" in timings and "%" not in timings.split("## Notes")[0]
    assert "Recommendations, the default list: the LambdaRank ranker, ndcg@10 0.230" in text
