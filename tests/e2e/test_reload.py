"""New champions without a restart: after `omni build`, every running worker serves the new build
within seconds, no request fails during the switch, and a broken build leaves the old one serving
with the reason in the log."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

OMNI = Path(sys.executable).parent / "omni"

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from live_loop import new_build  # noqa: E402  (a new build, as `omni build` writes one)


@pytest.fixture(scope="module")
def reloading_server(trained, tracking_uri, tmp_path_factory, free_port, wait_until_ready, service_env):
    """`omni build` into a BentoML store of its own, `omni serve` on it (two workers, a one-second
    reload poll), its output in a log file."""
    home = tmp_path_factory.mktemp("bentoml-reload")
    env = dict(
        service_env,
        BENTOML_HOME=str(home),
        OMNI_CONTEXT_DB=str(home / "context.db"),
        OMNI_RELOAD_SECONDS="1",
        OMNI_WORKERS="2",
    )
    build = subprocess.run(
        [str(OMNI), "build", "--no-bento", "--tracking-uri", tracking_uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    port = free_port()
    log = home / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(OMNI), "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url)
        yield url, env, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _versions(url: str) -> dict:
    r = httpx.post(
        f"{url}/v1/recommend", json={"customer_id": "C0000001", "channel": "web", "k": 3}, timeout=30
    )
    assert r.status_code == 200, r.text
    return r.json()["model_versions"]


def test_a_new_build_is_served_by_every_worker_without_a_failed_request(reloading_server):
    url, env, log = reloading_server
    before = _versions(url)
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                for route, body in (
                    ("/v1/recommend", {"customer_id": "C0000002", "channel": "app", "k": 5}),
                    ("/v1/next_best_action", {"customer_id": "C0000003"}),
                    ("/v1/ping", {}),
                ):
                    try:
                        r = client.post(f"{url}{route}", json=body)
                        if r.status_code != 200:
                            failures.append(f"{route}: {r.status_code} {r.text[:200]}")
                        answered[0] += 1
                    except httpx.HTTPError as exc:
                        failures.append(f"{route}: {exc!r}")

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        new_build(env, "omni-recommender", "99")
        started = time.monotonic()
        in_a_row = 0
        while in_a_row < 20:  # 20 answers in a row from the new build: both workers serve it
            assert time.monotonic() - started < 60, f"still {_versions(url)} after 60 s"
            in_a_row = in_a_row + 1 if _versions(url)["recommender"] == "99" else 0
        switched = time.monotonic() - started
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:5]
    assert answered[0] > 30
    after = _versions(url)
    assert after == {**before, "recommender": "99"}
    assert switched < 60
    assert "now serving build" in log.read_text()


def test_a_broken_build_leaves_the_old_models_serving_and_says_why(reloading_server):
    url, env, log = reloading_server
    before = _versions(url)
    new_build(env, "omni-channel", "98", broken=True)
    deadline = time.monotonic() + 30
    while "not served, still serving" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    for _ in range(10):
        assert _versions(url) == before
    text = log.read_text()
    assert "omni-channel" in text and "does not load" in text
