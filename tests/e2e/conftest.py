"""End-to-end tests: the service started for real on a free 127.0.0.1 port (against the session's
trained models, or a registry holding only some families), the Bento build, a real `mlflow server`
and every data shape through the command line.
"""

import contextlib
import os
import socket
import time

import httpx
import pytest


def _free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(env: dict[str, str] | None = None):
    """The service on a free port (with `env` set while its workers start); yields its URL."""
    import bentoml

    # MLflow exports the tracking URI to the environment of this process; a real deployment only has
    # OMNI_TRACKING_URI, so the server must not inherit MLflow's variables.
    saved = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI") if k in os.environ}
    saved.update({k: os.environ.get(k) for k in env or {}})
    os.environ.update(env or {})
    port = _free_port()
    try:
        with bentoml.serve("serving.service:OmniService", host="127.0.0.1", port=port) as srv:
            url = f"http://127.0.0.1:{port}"
            _wait_until_ready(url)
            _restore(saved)
            saved = {}
            yield url, srv
    finally:
        _restore(saved)


def _wait_until_ready(url: str, process=None, seconds: float = 120) -> None:
    """Until the service at `url` says it is ready; fails the test after `seconds`, or at once
    (with the end of its error output) when `process` (a `subprocess.Popen`) has exited."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the service at {url} did not become ready in {seconds:.0f} s")


@pytest.fixture(scope="session")
def wait_until_ready():
    """`(url, process=None, seconds=120)`: wait until a service a test started is ready."""
    return _wait_until_ready


def _restore(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def server(trained, workdir, tracking_uri):
    import shutil

    from training.build import import_champions

    # start from an empty download cache, so the champion really comes from the registry
    shutil.rmtree(workdir / "cache", ignore_errors=True)
    import_champions(tracking_uri)
    with _serving() as served:
        yield served


@pytest.fixture(scope="module")
def server_without_recommender(registry_without_recommender, tmp_path_factory):
    """`omni build` of a registry with only a next-best-action champion, into a BentoML store of
    its own, and the service started on it."""
    import subprocess
    import sys
    from pathlib import Path

    uri, skipped = registry_without_recommender
    home = tmp_path_factory.mktemp("bentoml-partial")
    env = {"BENTOML_HOME": str(home), "OMNI_CONTEXT_DB": str(home / "context.db")}
    omni = Path(sys.executable).parent / "omni"
    build = subprocess.run(
        [str(omni), "build", "--no-bento", "--tracking-uri", uri],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "imported omni-nba" in build.stdout and "imported omni-channel" not in build.stdout
    assert (
        f"not served: omni-recommender: no recommender has been trained: the last omni train skipped it ({skipped['recommender']})"
        in build.stderr
    )
    with _serving(env) as (url, _):
        yield url, skipped


@pytest.fixture(scope="session")
def service_env():
    """The environment a service subprocess gets: this process's, without MLflow's variables (a
    real deployment only has OMNI_TRACKING_URI)."""
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


@pytest.fixture(scope="session")
def free_port():
    """A function giving a port on 127.0.0.1 that nothing listens on now (for servers a test starts)."""
    return _free_port
