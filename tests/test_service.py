"""The BentoML service, started for real on a free 127.0.0.1 port against the session's trained model."""

import os
import socket
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained, workdir, tracking_uri):
    import shutil

    import bentoml

    from training.build import import_champions

    # start from an empty download cache, so the champion really comes from the registry
    shutil.rmtree(workdir / "cache", ignore_errors=True)
    import_champions(tracking_uri)
    # MLflow exports the tracking URI to the environment of this process; a real deployment only has
    # OMNI_TRACKING_URI, so the server must not inherit MLflow's variables.
    saved = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI") if k in os.environ}
    port = _free_port()
    with bentoml.serve("serving.service:OmniService", host="127.0.0.1", port=port) as srv:
        deadline = time.monotonic() + 120
        url = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("service did not become ready")
        os.environ.update(saved)
        yield url, srv


def _post(url, body):
    return httpx.post(f"{url}/v1/recommend", json=body, timeout=10)


def test_health_routes(server):
    url, _ = server
    for route in ("/healthz", "/readyz", "/livez"):
        assert httpx.get(url + route, timeout=5).status_code == 200
    metrics = httpx.get(url + "/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "bentoml" in metrics.text or "http_request" in metrics.text


def test_known_customer_gets_personal_items_with_model_version(server, trained, generated_data):
    import pandas as pd

    url, _ = server
    events = pd.read_parquet(generated_data / "events.parquet")
    customer = sorted(events.loc[events["customer_id"].str.startswith("C"), "customer_id"].unique())[0]
    r = _post(url, {"customer_id": customer, "channel": "web", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is False
    assert len(body["items"]) == 5
    assert body["model_versions"]["recommender"] == trained.model_version
    assert body["request_id"]
    # the same customer gets the same list on another channel
    again = _post(url, {"customer_id": customer, "channel": "email", "k": 5}).json()
    assert [i["product_id"] for i in again["items"]] == [i["product_id"] for i in body["items"]]


def test_unknown_customer_gets_popular_items_flagged_cold_start(server):
    url, _ = server
    r = _post(url, {"customer_id": "someone-new", "channel": "web", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is True
    assert len(body["items"]) == 3
    assert {i["reason"] for i in body["items"]} == {"popular"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"channel": "web", "k": 3}, "customer_id"),
        ({"customer_id": "x", "channel": "web", "k": 0}, "k"),
        ({"customer_id": "x", "channel": "web", "k": 101}, "k"),
        ({"customer_id": "x", "channel": "fax", "k": 3}, "channel"),
        ({"customer_id": "x", "channel": "web", "k": "many"}, "k"),
        ({"customer_id": "", "channel": "web"}, "customer_id"),
    ],
)
def test_malformed_input_is_a_4xx_naming_the_field(server, body, field):
    url, _ = server
    r = _post(url, body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text


def test_not_json_is_a_4xx(server):
    url, _ = server
    r = httpx.post(f"{url}/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
