"""`bentoml build` works offline from bentofile.yaml (uv from the venv, no package locking)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bento_builds_offline(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = subprocess.run(
        [str(bin_dir / "bentoml"), "build", "-f", "bentofile.yaml", "."],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bentos = list((tmp_path / "bentoml" / "bentos" / "omni-nba").glob("*/bento.yaml"))
    assert bentos, "no bento was written"
    built = bentos[0].parent / "src"
    assert (built / "serving" / "service.py").exists()
    assert not (built / "tests").exists()


def test_omni_build_imports_champions_into_the_bentoml_store(trained, tracking_uri):
    import bentoml
    from click.testing import CliRunner

    from training.build import load_served_model
    from training.cli import main

    result = CliRunner().invoke(main, ["build", "--no-bento", "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    folder, version = load_served_model("omni-recommender")
    assert (folder / "two_stage.json").exists()
    model = bentoml.models.get("omni-recommender:latest")
    assert model.info.labels["alias"] == "champion"
    assert version == model.info.labels["mlflow_version"]


def test_omni_build_on_an_empty_store_exits_2(tmp_path):
    from click.testing import CliRunner

    from training.cli import main

    result = CliRunner().invoke(main, ["build", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 2
    assert "omni train" in result.output


def test_a_build_without_any_model_names_each_familys_reason(registry_without_recommender):
    import pytest

    from training.build import import_champions

    # of these two, the last `omni train` of this registry trained neither: nothing to serve (the
    # command turns the LookupError into exit 2, see test_omni_build_on_an_empty_store_exits_2)
    uri, skipped = registry_without_recommender
    with pytest.raises(LookupError) as raised:
        import_champions(uri, names={"omni-recommender": "recommender", "omni-send-time": "send_time"})
    message = str(raised.value)
    assert message.startswith("no model to serve: omni-recommender: no recommender has been trained")
    assert f"the last omni train skipped it ({skipped['recommender']})" in message
    assert (
        f"omni-send-time: no send-time model has been trained: the last omni train skipped it ({skipped['send_time']})"
        in message
    )
