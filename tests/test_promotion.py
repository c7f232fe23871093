"""Champion/challenger: a worse model is registered but not promoted; promote and rollback by hand."""

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from training.cli import main
from training.registry import champion_history, decide_promotion
from training.settings import CHALLENGER, CHAMPION, REGISTERED_RECOMMENDER
from training.train import TrainConfig, run_training


def _alias(client, alias):
    return str(client.get_model_version_by_alias(REGISTERED_RECOMMENDER, alias).version)


def test_decision_rule():
    assert decide_promotion("m", "2", None, "ndcg@10", 0.1, None).promoted
    assert decide_promotion("m", "2", "1", "ndcg@10", 0.30, 0.30).promoted  # as good is enough
    assert not decide_promotion("m", "2", "1", "ndcg@10", 0.30, 0.31).promoted
    assert not decide_promotion("m", "2", "1", "ndcg@10", 0.31, 0.30, margin=0.02).promoted


def test_worse_challenger_is_not_promoted_then_promote_and_rollback(trained, generated_data, tracking_uri):
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    champion_before = _alias(client, CHAMPION)
    # a deliberately crippled configuration: one candidate per source, no EASE, a one-tree ranker
    one = {f"n_{source}": 1 for source in ("candidates", "popular", "trending", "replenish", "content")}
    crippled = TrainConfig(two_stage={**one, "n_estimators": 1, "ease_max_items": 0})
    worse = run_training(generated_data, tracking_uri, crippled, show_progress=False)
    assert worse.decision is not None and not worse.decision.promoted
    assert worse.decision.champion_score > worse.decision.challenger_score
    assert _alias(client, CHAMPION) == champion_before
    assert _alias(client, CHALLENGER) == worse.model_version
    run = client.get_run(worse.run_id)
    assert run.data.tags["promoted"] == "False"
    assert "champion.omni-recommender.ranker.ndcg_at_10" in run.data.metrics
    assert run.data.tags["promoted.omni-channel"] == "True"  # same configuration: as good, promoted

    runner = CliRunner()
    result = runner.invoke(main, ["promote", "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    assert _alias(client, CHAMPION) == worse.model_version
    result = runner.invoke(main, ["rollback", "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    assert _alias(client, CHAMPION) == champion_before
    assert champion_history(client, REGISTERED_RECOMMENDER)[-1] == champion_before


def test_promote_unknown_version_is_bad_input(trained, tracking_uri):
    result = CliRunner().invoke(main, ["promote", "--version", "999", "--tracking-uri", tracking_uri])
    assert result.exit_code == 2
    assert "no version 999" in result.output


@pytest.mark.parametrize("command", ["promote", "rollback", "recommend"])
def test_commands_on_a_missing_store_exit_2(tmp_path, command):
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    args = [command, "--tracking-uri", uri] + (["--customer", "x"] if command == "recommend" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "omni train" in result.output
    assert not (tmp_path / "none.db").exists()
