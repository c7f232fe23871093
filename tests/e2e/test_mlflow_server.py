"""Train and promote against a real `mlflow server` over HTTP on 127.0.0.1, as a team would."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from models.catalog import RECOMMENDER
from training.cli import main
from training.settings import CHALLENGER, CHAMPION


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, free_port):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start in 90 s")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_train_promote_and_rollback_over_http(mlflow_server, generated_data):
    runner = CliRunner()
    base = ["train", "--data", str(generated_data), "--tracking-uri", mlflow_server, "--iterations", "3"]
    first = runner.invoke(main, base + ["--factors", "16"])
    assert first.exit_code == 0, first.output
    assert "omni-recommender v1 promoted to champion: no current champion" in first.output
    # a challenger that must beat the champion by a full nDCG point cannot: not promoted
    worse = runner.invoke(main, base + ["--factors", "16", "--promotion-margin", "1.0"])
    assert worse.exit_code == 0, worse.output
    assert "omni-recommender v2 NOT promoted" in worse.output

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    champion = client.get_model_version_by_alias(RECOMMENDER.name, CHAMPION)
    challenger = client.get_model_version_by_alias(RECOMMENDER.name, CHALLENGER)
    assert str(champion.version) == "1" and str(challenger.version) == "2"

    assert runner.invoke(main, ["promote", "--tracking-uri", mlflow_server]).exit_code == 0
    assert str(client.get_model_version_by_alias(RECOMMENDER.name, CHAMPION).version) == "2"
    assert runner.invoke(main, ["rollback", "--tracking-uri", mlflow_server]).exit_code == 0
    assert str(client.get_model_version_by_alias(RECOMMENDER.name, CHAMPION).version) == "1"

    # the champion's artefacts come back over HTTP and serve recommendations
    result = runner.invoke(
        main, ["recommend", "--customer", "someone-new", "--k", "3", "--tracking-uri", mlflow_server]
    )
    assert result.exit_code == 0, result.output
    assert "popular" in result.output
