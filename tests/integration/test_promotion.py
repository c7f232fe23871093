"""Champion/challenger: a worse model is registered but not promoted; promote and rollback by hand."""

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from models.catalog import RECOMMENDER
from training.cli import main
from training.config import RecsConfig, TrainConfig
from training.registry import champion_history, decide_promotion
from training.settings import CHALLENGER, CHAMPION
from training.train import run_training


def _alias(client, alias):
    return str(client.get_model_version_by_alias(RECOMMENDER.name, alias).version)


def test_decision_rule():
    assert decide_promotion("m", "2", None, "ndcg@10", 0.1, None).promoted
    assert decide_promotion("m", "2", "1", "ndcg@10", 0.30, 0.30).promoted  # as good is enough
    assert not decide_promotion("m", "2", "1", "ndcg@10", 0.30, 0.31).promoted
    assert not decide_promotion("m", "2", "1", "ndcg@10", 0.31, 0.30, margin=0.02).promoted


@pytest.fixture(scope="module")
def older_data(generated_data, tmp_path_factory):
    """The generated data as they were four weeks before their end: what an earlier champion saw."""
    import pandas as pd

    out = tmp_path_factory.mktemp("older")
    cut = pd.read_parquet(generated_data / "events.parquet")["ts"].max() - pd.Timedelta(days=28)
    for path in generated_data.glob("*.parquet"):
        frame = pd.read_parquet(path)
        column = {"events": "ts", "messages": "sent_ts"}.get(path.stem)
        (frame if column is None else frame.loc[frame[column] < cut]).to_parquet(out / path.name, index=False)
    return out


def test_the_deployed_champion_is_judged_on_new_data(generated_data, older_data, tmp_path):
    """A champion trained four weeks ago and the new models are both scored on the four weeks
    since: a crippled challenger is registered but not promoted, an as-good one is; with no data
    newer than the champion's, the champion stays; promote and rollback move it by hand."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    fast = {"recommender": RecsConfig(factors=16, iterations=5)}
    first = run_training(older_data, uri, TrainConfig(**fast), show_progress=False)
    assert first.decision.promoted
    champion_before = _alias(client, CHAMPION)
    # a deliberately crippled configuration: one candidate per source, no EASE, a one-tree ranker
    one = {
        f"n_{source}": 1 for source in ("candidates", "popular", "trending", "replenish", "repeat", "content")
    }
    crippled = TrainConfig(
        recommender=RecsConfig(
            factors=16, iterations=5, two_stage={**one, "n_estimators": 1, "ease_max_items": 0}
        )
    )
    worse = run_training(generated_data, uri, crippled, show_progress=False)
    assert worse.decision is not None and not worse.decision.promoted
    assert worse.decision.champion_score > worse.decision.challenger_score
    assert "as deployed" in worse.decision.reason
    assert _alias(client, CHAMPION) == champion_before
    assert _alias(client, CHALLENGER) == worse.model_version
    run = client.get_run(worse.run_id)
    assert run.data.tags["promoted"] == "False"
    assert "champion.omni-recommender.served.all_purchases.ndcg_at_10" in run.data.metrics

    runner = CliRunner()
    result = runner.invoke(main, ["promote", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert _alias(client, CHAMPION) == worse.model_version
    result = runner.invoke(main, ["rollback", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert _alias(client, CHAMPION) == champion_before
    assert champion_history(client, RECOMMENDER.name)[-1] == champion_before

    # the champion's own configuration, fitted before the new window, scores like the champion
    # there (within a point: its cut-off and so its recency weights differ by a few hours)
    tolerant = TrainConfig(**fast, promotion_margins={"recommender": -0.01})
    same = run_training(generated_data, uri, tolerant, show_progress=False)
    assert same.decision.promoted, same.decision.reason
    assert abs(same.decision.challenger_score - same.decision.champion_score) < 0.01
    # and nothing newer than that champion: it cannot be judged, it stays
    again = run_training(generated_data, uri, TrainConfig(**fast), show_progress=False)
    assert not again.decision.promoted
    assert "cannot be judged on new data" in again.decision.reason


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


def test_the_deployed_channel_and_send_time_models_are_judged_on_new_data(
    generated_data, older_data, tmp_path
):
    """The channel and send-time champions trained four weeks ago, as deployed, and this run's
    models fitted before the test window are scored on the same messages: those sent since the
    champions' cut-off; with no data newer than the champions', they cannot be judged and stay."""
    import json
    from pathlib import Path

    import pandas as pd

    from models.engagement.channel import ChannelModel
    from models.engagement.send_time import SendTimeModel
    from training.tracking import download_model_folder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # a light recommender: it is not what this test judges
    fast = {
        "recommender": RecsConfig(
            factors=16, iterations=5, two_stage={"n_estimators": 1, "ease_max_items": 0}
        )
    }
    families = {
        "omni-channel": ("channel", ChannelModel, "channel.served.engagement_auc"),
        "omni-send-time": ("send_time", SendTimeModel, "send_time.served."),
    }

    def decision(result, name):
        return next(d for d in result.decisions if d.model_name == name)

    first = run_training(older_data, uri, TrainConfig(**fast), show_progress=False)
    cut_off = {}
    for name, (artifact, cls, _) in families.items():
        assert decision(first, name).promoted
        folder, _ = download_model_folder(uri, name, CHAMPION, artifact=artifact)
        cut_off[name] = cls.load(folder).as_of_  # saved with the model: what it knew

    # every new model promoted when scored at all, so that the next run meets a champion trained
    # on the same data
    anyway = TrainConfig(**fast, promotion_margins={"channel": -1.0, "send_time": -1.0})
    new = run_training(generated_data, uri, anyway, show_progress=False)
    evaluation = json.loads(
        Path(
            client.download_artifacts(new.run_id, "evaluation/channel_send_time.json", str(tmp_path))
        ).read_text()
    )
    split = pd.Timestamp(evaluation["split_time"])
    for name, (artifact, _, metric) in families.items():
        d = decision(new, name)
        assert d.previous_champion == "1" and d.promoted, d.reason
        assert d.metric.startswith(metric)
        assert 0.0 < d.champion_score < 1.0 and 0.0 < d.challenger_score < 1.0
        assert "as deployed" in d.reason and "fitted before the test window" in d.reason
        # the same window for both: from the later of the test split and the champion's cut-off
        start = max(split, cut_off[name])
        assert evaluation["champion"][artifact]["window_start"] == start.isoformat()
        assert f"from {start:%Y-%m-%d %H:%M}" in d.reason
        assert evaluation["champion"][artifact]["score"] == d.champion_score
        run = client.get_run(new.run_id)
        assert f"champion.{name}.{d.metric}" in run.data.metrics

    again = run_training(generated_data, uri, TrainConfig(**fast), show_progress=False)
    for name in families:
        d = decision(again, name)
        assert d.champion_score is None and not d.promoted, d.reason
        assert "cannot be judged on new data" in d.reason
        assert str(client.get_model_version_by_alias(name, CHAMPION).version) == d.previous_champion
