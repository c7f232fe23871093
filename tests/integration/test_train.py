"""`omni train` end to end on a small generated history: metrics, MLflow run, registry alias, CLI."""

import re
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from models.catalog import RECOMMENDER
from training.cli import main
from training.settings import CHAMPION


def test_train_reports_both_models_side_by_side(trained):
    for model in ("popularity", "als"):
        for metric in ("recall@10", "ndcg@10"):
            value = trained.metrics[f"{model}.{metric}"]
            assert 0.0 <= value <= 1.0
    # the generated tastes are personal: ALS must beat popularity clearly
    assert trained.metrics["als.ndcg@10"] > trained.metrics["popularity.ndcg@10"]


def test_run_and_champion_alias_are_in_mlflow(trained, tracking_uri):
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(trained.run_id)
    assert "als.ndcg_at_10" in run.data.metrics and "popularity.ndcg_at_10" in run.data.metrics
    assert run.data.params["recommender.factors"] == "16"
    mv = client.get_model_version_by_alias(RECOMMENDER.name, CHAMPION)
    assert str(mv.version) == trained.model_version
    assert mv.run_id == trained.run_id


def test_train_on_bad_folder_exits_2_and_registers_nothing(trained, generated_data, tmp_path, tracking_uri):
    bad = tmp_path / "bad"
    shutil.copytree(generated_data, bad, ignore=shutil.ignore_patterns("truth"))
    events = pd.read_parquet(bad / "events.parquet")
    events.loc[3, "channel"] = "carrier-pigeon"
    events.to_parquet(bad / "events.parquet", index=False)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    before = len(client.search_model_versions(f"name='{RECOMMENDER.name}'"))
    result = CliRunner().invoke(main, ["train", "--data", str(bad), "--tracking-uri", tracking_uri])
    assert result.exit_code == 2
    assert "carrier-pigeon" in result.output
    assert "nothing was trained" in result.output
    assert len(client.search_model_versions(f"name='{RECOMMENDER.name}'")) == before


def test_train_on_missing_folder_exits_2(tmp_path, tracking_uri):
    result = CliRunner().invoke(
        main, ["train", "--data", str(tmp_path / "nope"), "--tracking-uri", tracking_uri]
    )
    assert result.exit_code == 2


def test_recommend_all_writes_parquet_for_every_customer(trained, tracking_uri, tmp_path):
    out = tmp_path / "recs.parquet"
    result = CliRunner().invoke(
        main, ["recommend", "--all", "--k", "5", "--out", str(out), "--tracking-uri", tracking_uri]
    )
    assert result.exit_code == 0, result.output
    recs = pd.read_parquet(out)
    assert list(recs.columns) == [
        "customer_id",
        "rank",
        "product_id",
        "score",
        "reason",
        "consented",
        "control_group",
    ]
    per_customer = recs.groupby("customer_id").size()
    assert per_customer.max() == 5
    assert not recs.duplicated(["customer_id", "product_id"]).any()
    assert not list(tmp_path.glob("*.tmp*"))


def test_recommend_all_without_out_is_bad_input(tracking_uri):
    result = CliRunner().invoke(main, ["recommend", "--all", "--tracking-uri", tracking_uri])
    assert result.exit_code == 2
    assert "--out" in result.output


def test_every_command_has_help():
    runner = CliRunner()
    for command in main.commands:
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage" in result.output


def test_run_logs_a_readable_report_and_input_hash(trained, tracking_uri):
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(trained.run_id)
    assert len(run.data.tags["input_hash"]) == 64
    import mlflow

    text = mlflow.artifacts.load_text(f"runs:/{trained.run_id}/report.md")
    assert "# Training run report" in text
    # the KPIs of the run's data, the lift against its hold-out, the profiles' segments
    assert "## KPIs from the data" in text and "| all channels |" in text
    assert "Control group: the data's own hold-out flag (customers.holdout)" in text
    assert "## Segments, churn and lifetime value" in text and "| champion |" in text
    # each family's served model beside its baselines, in words and figures
    default_list = text[text.index("### Recommendations: the default list") :]
    assert re.match(
        r"### Recommendations: the default list\n\nServes .+ On the held-out test window", default_list
    )
    assert "the best baseline, " in default_list and "| served: " in default_list
    assert "Champion decisions" in text
    # stage timings in seconds, no percentage change on them
    timings = text[text.index("## Training time") : text.index("## Notes on the data")]
    assert "| recommender |" in timings and "%" not in timings


def test_decide_and_profile_commands(trained, tracking_uri, tmp_path):
    out = tmp_path / "decisions.parquet"
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["decide", "--out", str(out), "--tracking-uri", tracking_uri, "--now", "2026-07-01T09:00:00+00:00"],
    )
    assert result.exit_code == 0, result.output
    decisions = pd.read_parquet(out)
    for column in (
        "customer_id",
        "action",
        "channel",
        "send_at",
        "offer_id",
        "product_ids",
        "expected_gain",
        "reasons",
    ):
        assert column in decisions.columns
    assert decisions["customer_id"].is_unique and len(decisions) > 100
    assert (
        runner.invoke(
            main, ["decide", "--out", str(out), "--tracking-uri", tracking_uri, "--now", "tomorrow"]
        ).exit_code
        == 2
    )

    result = runner.invoke(main, ["profile", "C0000001", "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    assert '"derived_from"' in result.output
    assert runner.invoke(main, ["profile", "nobody", "--tracking-uri", tracking_uri]).exit_code == 2


def test_benchmarks_are_logged_to_mlflow(tracking_uri):
    import mlflow

    from training.tracking import log_benchmark

    log_benchmark("unit", {"models": {"ranker": {"ndcg@10": 0.5, "name": "x"}}, "seconds": 3}, tracking_uri)
    runs = mlflow.search_runs(experiment_names=["omni-bench"], filter_string="attributes.run_name = 'unit'")
    assert runs["metrics.models.ranker.ndcg_at_10"].iloc[0] == 0.5


def _bought(data_dir) -> dict[str, set[str]]:
    """customer → products bought in the data (canonical ids, as the models see them)."""
    from features.identity import stitch_identities
    from features.io import load_tables

    events = stitch_identities(load_tables(data_dir)).events
    purchases = events.loc[events["event_type"] == "purchase", ["customer_id", "product_id"]].dropna()
    return purchases.astype(str).groupby("customer_id")["product_id"].agg(set).to_dict()


def test_recommend_exclude_purchased_returns_only_products_never_bought(
    trained, tracking_uri, generated_data, tmp_path
):
    bought = _bought(generated_data)
    runner = CliRunner()
    lists = {}
    for name, flags in (("default", []), ("new", ["--exclude-purchased"])):
        out = tmp_path / f"{name}.parquet"
        result = runner.invoke(
            main,
            ["recommend", "--all", "--k", "10", "--out", str(out), "--tracking-uri", tracking_uri, *flags],
        )
        assert result.exit_code == 0, result.output
        lists[name] = pd.read_parquet(out)
    new = lists["new"]
    assert new["customer_id"].nunique() > 100 and new.groupby("customer_id").size().max() == 10
    rebought = [
        (cid, pid)
        for cid, pid in zip(new["customer_id"], new["product_id"], strict=True)
        if pid in bought.get(cid, ())
    ]
    assert rebought == []
    # one customer, asked for more, gets only new products too
    customer = next(cid for cid in new["customer_id"] if len(bought.get(cid, ())) >= 3)
    out = tmp_path / "one.parquet"
    args = ["recommend", "--customer", customer, "--exclude-purchased", "--k", "20", "--out", str(out)]
    result = runner.invoke(main, [*args, "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    shown = set(pd.read_parquet(out)["product_id"])
    assert len(shown) == 20 and not shown & bought[customer]
    # without the flag, bought products compete (the generated customers re-buy): the flag is
    # what removed them
    default = lists["default"]
    pairs = zip(default["customer_id"], default["product_id"], strict=True)
    assert any(pid in bought.get(cid, ()) for cid, pid in pairs)


def test_scoring_commands_without_their_family_exit_2_with_the_skip_reason(
    registry_without_recommender, tmp_path
):
    uri, skipped = registry_without_recommender
    runner = CliRunner()
    result = runner.invoke(main, ["recommend", "--customer", "C0000001", "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert "no recommender has been trained: the last omni train skipped it" in result.output
    assert skipped["recommender"] in result.output and "Traceback" not in result.output
    result = runner.invoke(
        main, ["send-time", "--customer", "C0000001", "--channel", "email", "--tracking-uri", uri]
    )
    assert result.exit_code == 2, result.output
    assert "no send-time model has been trained" in result.output and skipped["send_time"] in result.output
    result = runner.invoke(
        main, ["channel", "--all", "--out", str(tmp_path / "c.parquet"), "--tracking-uri", uri]
    )
    assert result.exit_code == 2, result.output
    assert "no channel model has been trained" in result.output and skipped["channel"] in result.output
    for args in (["promote", "--version", "1"], ["rollback"]):
        result = runner.invoke(main, [*args, "--model", "omni-recommender", "--tracking-uri", uri])
        assert result.exit_code == 2, result.output
        assert skipped["recommender"] in result.output


def test_decide_and_profile_work_without_a_recommender(registry_without_recommender, tmp_path):
    uri, skipped = registry_without_recommender
    runner = CliRunner()
    out = tmp_path / "decisions.parquet"
    result = runner.invoke(
        main, ["decide", "--out", str(out), "--tracking-uri", uri, "--now", "2026-07-01T09:00:00+00:00"]
    )
    assert result.exit_code == 0, result.output
    assert "warning: no recommender has been trained" in result.output
    assert "decisions carry no product items" in result.output and skipped["channel"] in result.output
    decisions = pd.read_parquet(out)
    assert len(decisions) > 100 and decisions["product_ids"].map(len).sum() == 0
    result = runner.invoke(main, ["profile", "C0000001", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert '"derived_from"' in result.output


def test_scoring_commands_on_an_empty_store_exit_2_naming_the_family(tmp_path):
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    runner = CliRunner()
    for args, family in (
        (["recommend", "--customer", "x"], "recommender"),
        (["channel", "--customer", "x"], "channel model"),
        (["send-time", "--customer", "x", "--channel", "email"], "send-time model"),
        (["profile", "x"], "customer profiles"),
        (["decide", "--out", str(tmp_path / "d.parquet")], "next-best-action model"),
    ):
        result = runner.invoke(main, [*args, "--tracking-uri", uri])
        assert result.exit_code == 2, (args, result.output)
        assert f"no {family} ha" in result.output and "omni train" in result.output, result.output


def test_a_champion_this_code_cannot_read_is_a_lookup_error_naming_it(tmp_path):
    """An older format (or a damaged folder) makes the scoring commands exit 2 with the reason."""
    import json

    from models.recs.two_stage import TwoStageRecommender
    from training.scoring import read_model

    (tmp_path / "two_stage.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(LookupError, match="omni-recommender v3 cannot be read by this code"):
        read_model(TwoStageRecommender.load, tmp_path, "omni-recommender", "3")


def test_send_time_keeps_the_contact_policys_quiet_hours(trained, tracking_uri, tmp_path):
    """One quiet-hours setting: `omni send-time` keeps the policy file's hours unless told others."""
    import re

    from models.decisions.contact_policy import DEFAULT_POLICY_FILE

    text = DEFAULT_POLICY_FILE.read_text()
    policy = tmp_path / "policy.toml"
    # quiet from 10:00 to 09:00: nine in the morning is the only hour left
    policy.write_text(
        re.sub(r"(?ms)^\[quiet_hours\].*?(?=^\[)", "[quiet_hours]\nstart = 10\nend = 9\n\n", text)
    )
    base = ["send-time", "--all", "--channel", "email", "--after", "2026-07-01T12:00:00+00:00"]
    base += ["--tracking-uri", tracking_uri]

    def local_hours(extra):
        out = tmp_path / f"plan{len(extra)}.parquet"
        result = CliRunner().invoke(main, base + extra + ["--out", str(out)])
        assert result.exit_code == 0, result.output
        plan = pd.read_parquet(out)
        plan = plan.loc[plan["consented"]]  # no send moment without consent to e-mail
        return {t.tz_convert(z).hour for t, z in zip(plan["next_send_utc"], plan["timezone"], strict=True)}

    assert local_hours(["--policy", str(policy)]) == {9}
    assert local_hours([]) <= set(range(8, 21))  # the default file: 21-8
    assert len(local_hours(["--policy", str(policy), "--quiet-hours", "none"])) > 1
    # a time without a zone is refused, as `decide --now` and the service refuse it
    naive = CliRunner().invoke(
        main, ["send-time", "--customer", "C0000001", "--channel", "email", "--after", "2026-07-01T12:00"]
    )
    assert naive.exit_code == 2 and "--after: give a time zone" in naive.output


def test_a_live_store_that_cannot_be_opened_is_exit_2_naming_the_setting(trained, tracking_uri, tmp_path):
    """Every command that reads the live store says why it cannot, instead of a traceback."""
    runner = CliRunner()
    out = str(tmp_path / "x.parquet")
    commands = (
        ["decide", "--out", out],
        ["profile", "C0000001"],
        ["send-time", "--all", "--channel", "email", "--out", out],
        ["channel", "--all", "--out", out],
        ["recommend", "--all", "--out", out],
    )
    for bad in ("mysql://host/db", "postgresql://127.0.0.1:1/omni"):
        for args in commands:
            result = runner.invoke(main, [*args, "--tracking-uri", tracking_uri], env={"OMNI_STORE_URL": bad})
            assert result.exit_code == 2, (args, result.output)
            assert "live store cannot be opened" in result.output and "OMNI_STORE_URL" in result.output, (
                result.output
            )
