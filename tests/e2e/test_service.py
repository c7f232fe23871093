"""The BentoML service, started for real on a free 127.0.0.1 port against the session's trained model."""

import os
from pathlib import Path

import httpx
import pytest


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


def test_plain_requests_come_from_the_stored_lists_and_equal_the_live_answer(server):
    """`omni build` stored the served recommender's lists; the HTTP answers are the live ones."""
    from models.recs.two_stage import PRECOMPUTED_FOLDER, TwoStageRecommender
    from training.build import load_served_model

    url, _ = server
    folder, _ = load_served_model("omni-recommender")
    assert (folder / PRECOMPUTED_FOLDER / "precomputed.json").exists()
    live = TwoStageRecommender.load(folder)
    assert live.precomputed_ is not None and live.precomputed_.n_customers > 0
    live.precomputed_ = None
    known = live.customer_ids_[live.customer_has_history_][:25].tolist()
    for i, customer in enumerate(known):
        channel, k = ("web", "app", "store", "email")[i % 4], (3, 10, 20)[i % 3]
        body = _post(url, {"customer_id": customer, "channel": channel, "k": k}).json()
        expected = live.recommend(customer, k, channel=channel)
        assert [x["product_id"] for x in body["items"]] == expected.product_ids
        assert [x["score"] for x in body["items"]] == expected.scores
        assert [x["reason"] for x in body["items"]] == expected.reasons


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


def _items(body):
    return [i["product_id"] for i in body["items"]]


def test_cross_channel_events_change_the_next_answer_at_once(server, generated_data):
    import pandas as pd

    url, _ = server
    customer = "C0000002"
    web = _post(url, {"customer_id": customer, "channel": "web", "k": 10}).json()
    top = _items(web)[0]
    # bought in the store → gone from the next e-mail list
    r = httpx.post(
        f"{url}/v1/events",
        json={"customer_id": customer, "event_type": "purchase", "channel": "store", "product_id": top},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    email = _post(url, {"customer_id": customer, "channel": "email", "k": 10}).json()
    assert top not in _items(email)
    # carted in the app → shows up in the next web call
    products = pd.read_parquet(generated_data / "products.parquet")
    far = [p for p in products["product_id"] if p not in _items(web) and p != top][-1]
    r = httpx.post(
        f"{url}/v1/events",
        json={"customer_id": customer, "event_type": "add_to_cart", "channel": "app", "product_id": far},
        timeout=10,
    )
    assert r.status_code == 200 and far in r.json()["session_items"]
    again = _post(url, {"customer_id": customer, "channel": "web", "k": 10}).json()
    assert _items(again) != _items(email)


def test_event_validation_names_the_field(server):
    url, _ = server
    bad = [
        ({"customer_id": "x", "event_type": "teleport", "channel": "web", "product_id": "p"}, "event_type"),
        ({"customer_id": "x", "event_type": "purchase", "channel": "web"}, "product_id"),
        (
            {
                "customer_id": "x",
                "event_type": "view",
                "channel": "web",
                "product_id": "p",
                "ts": "2026-01-01T10:00",
            },
            "ts",
        ),
    ]
    for body, field in bad:
        r = httpx.post(f"{url}/v1/events", json=body, timeout=10)
        assert r.status_code == 400, r.text
        assert field in r.text


def test_channel_send_time_batch_and_ping(server, generated_data):
    import pandas as pd

    url, _ = server
    consent = pd.read_parquet(generated_data / "consent.parquet")
    # opted in to e-mail (the latest row): send times are only given where a customer consented
    latest = consent.sort_values("updated_ts").drop_duplicates(["customer_id", "channel"], keep="last")
    reachable = latest.loc[latest["opted_in"] & (latest["channel"] == "email"), "customer_id"].iloc[0]
    r = httpx.post(f"{url}/v1/channel", json={"customer_id": reachable}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["channels"] and body["channels"][0]["rank"] == 1
    assert 0 <= body["channels"][0]["probability"] <= 1
    unknown = httpx.post(f"{url}/v1/channel", json={"customer_id": "nobody-at-all"}, timeout=10).json()
    assert unknown["channels"] == [] and unknown["no_channel_reason"]

    r = httpx.post(
        f"{url}/v1/send_time",
        json={"customer_id": reachable, "channel": "email", "after": "2026-07-01T12:00:00+00:00"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    st = r.json()
    assert len(st["scores"]) == 168 and 0 <= st["best_hour_local"] <= 23
    assert st["next_send_utc"] >= "2026-07-01T12:00:00"
    # one quiet-hours setting: without quiet_hours, the contact policy's (configs: 21-8)
    explicit = httpx.post(
        f"{url}/v1/send_time",
        json={
            "customer_id": reachable,
            "channel": "email",
            "after": "2026-07-01T12:00:00+00:00",
            "quiet_hours": "21-8",
        },
        timeout=10,
    ).json()
    assert explicit == {**st, "request_id": explicit["request_id"]}
    assert (
        httpx.post(
            f"{url}/v1/send_time", json={"customer_id": "x", "channel": "store"}, timeout=10
        ).status_code
        == 400
    )

    r = httpx.post(
        f"{url}/v1/recommend_batch",
        json={"customer_ids": ["C0000001", "new-one"], "channel": "web", "k": 3},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["cold_start"] for x in results] == [False, True]
    assert httpx.post(f"{url}/v1/ping", json={}, timeout=10).json() == {"ok": True}


def test_openapi_lists_every_route(server):
    """Every route the service class declares is in its OpenAPI document (read from the class's
    `@bentoml.api(route=...)` lines, so a new route cannot be forgotten here), and the eight the
    channel systems rely on are among them."""
    import re
    from importlib.util import find_spec

    url, _ = server
    paths = httpx.get(f"{url}/docs.json", timeout=10).json()["paths"]
    source = Path(find_spec("serving.service").origin).read_text()
    declared = set(re.findall(r'@bentoml\.api\(route="([^"]+)"', source))
    relied_on = {
        "/v1/recommend",
        "/v1/recommend_batch",
        "/v1/channel",
        "/v1/send_time",
        "/v1/events",
        "/v1/profile",
        "/v1/next_best_action",
        "/v1/ping",
    }
    assert relied_on <= declared
    assert declared <= set(paths), f"missing from the OpenAPI document: {sorted(declared - set(paths))}"


def test_profile_and_next_best_action(server):
    url, _ = server
    r = httpx.post(f"{url}/v1/profile", json={"customer_id": "C0000001"}, timeout=20)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["known"] is True
    fields = {k: v for k, v in body["profile"].items() if k not in ("customer_id", "as_of")}
    assert fields and all("derived_from" in field for field in fields.values())
    # lifetime value: numbers for every customer, with how they were derived
    for name in ("clv_365d", "expected_purchases_365d", "prob_active"):
        assert isinstance(fields[name]["value"], float | int) and fields[name]["value"] >= 0, name
    assert fields["prob_active"]["value"] <= 1 and "not discounted" in fields["clv_365d"]["derived_from"]
    assert (
        httpx.post(f"{url}/v1/profile", json={"customer_id": "nobody"}, timeout=20).json()["known"] is False
    )

    r = httpx.post(
        f"{url}/v1/next_best_action",
        json={"customer_id": "C0000001", "channel": "email", "now": "2026-07-01T09:00:00+00:00"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["action"] and d["reasons"]
    assert "value" in d["expected_gain"]
    assert d["model_versions"]["nba"]
    unknown = httpx.post(f"{url}/v1/next_best_action", json={"customer_id": "nobody"}, timeout=30)
    assert unknown.status_code == 200, unknown.text


@pytest.mark.parametrize(
    "body, field",
    [
        ({"customer_id": "x", "channel": "email", "quiet_hours": "5-55"}, "quiet_hours"),
        ({"customer_id": "x", "channel": "email", "after": "9999-12-31T00:00:00+00:00"}, "after"),
    ],
)
def test_send_time_rejects_impossible_hours_and_times_with_400(server, body, field):
    # found by bench/fuzz.py: these used to reach the model and answer 500
    url, _ = server
    r = httpx.post(f"{url}/v1/send_time", json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert field in r.text


def _bought(data_dir) -> dict[str, set[str]]:
    """customer → products bought in the data (canonical ids, as the models see them)."""
    from features.identity import stitch_identities
    from features.io import load_tables

    events = stitch_identities(load_tables(data_dir)).events
    purchases = events.loc[events["event_type"] == "purchase", ["customer_id", "product_id"]].dropna()
    return purchases.astype(str).groupby("customer_id")["product_id"].agg(set).to_dict()


def test_exclude_purchased_answers_only_products_never_bought(server, generated_data):
    url, _ = server
    bought = _bought(generated_data)
    customers = sorted(cid for cid, items in bought.items() if len(items) >= 3)[:20]
    for customer in customers:
        body = _post(url, {"customer_id": customer, "channel": "web", "k": 20, "exclude_purchased": True})
        assert body.status_code == 200, body.text
        items = _items(body.json())
        assert len(items) == 20 and not set(items) & bought[customer], customer
    # a purchase posted since training counts as bought at once
    customer = customers[0]
    first = _items(
        _post(url, {"customer_id": customer, "channel": "web", "k": 5, "exclude_purchased": True}).json()
    )
    event = {"customer_id": customer, "event_type": "purchase", "channel": "store", "product_id": first[0]}
    assert httpx.post(f"{url}/v1/events", json=event, timeout=10).status_code == 200
    again = _post(url, {"customer_id": customer, "channel": "app", "k": 5, "exclude_purchased": True}).json()
    assert first[0] not in _items(again)
    batch = httpx.post(
        f"{url}/v1/recommend_batch",
        json={"customer_ids": customers[1:6], "channel": "web", "k": 10, "exclude_purchased": True},
        timeout=10,
    )
    assert batch.status_code == 200, batch.text
    for result in batch.json()["results"]:
        assert _items(result) and not set(_items(result)) & bought[result["customer_id"]]
    bad = _post(url, {"customer_id": customer, "channel": "web", "exclude_purchased": "sometimes"})
    assert bad.status_code == 400 and "exclude_purchased" in bad.text


def test_service_starts_without_a_recommender_and_says_why_on_its_routes(server_without_recommender):
    url, skipped = server_without_recommender
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    for route, body in (
        ("/v1/recommend", {"customer_id": "C0000001", "channel": "web"}),
        ("/v1/recommend", {"customer_id": "C0000001", "channel": "web", "exclude_purchased": True}),
        ("/v1/recommend_batch", {"customer_ids": ["C0000001"], "channel": "web"}),
        ("/v1/similar_items", {"product_ids": ["P000001"]}),
    ):
        r = httpx.post(url + route, json=body, timeout=10)
        assert r.status_code == 404, (route, r.text)
        assert "no recommender has been trained: the last omni train skipped it" in r.text
        assert skipped["recommender"] in r.text
    r = httpx.post(f"{url}/v1/send_time", json={"customer_id": "C0000001", "channel": "email"}, timeout=10)
    assert r.status_code == 404 and skipped["send_time"] in r.text, r.text
    # /v1/channel has a flag for this: an empty list that says why
    channel = httpx.post(f"{url}/v1/channel", json={"customer_id": "C0000001"}, timeout=10)
    assert channel.status_code == 200, channel.text
    body = channel.json()
    assert body["channels"] == [] and body["fallback"] is True
    assert "no channel model has been trained" in body["no_channel_reason"]
    assert skipped["channel"] in body["no_channel_reason"]
    assert list(body["model_versions"]) == ["nba"]
    # the model that is there answers; the next best action carries no product without a recommender
    profile = httpx.post(f"{url}/v1/profile", json={"customer_id": "C0000001"}, timeout=20)
    assert profile.status_code == 200 and profile.json()["known"] is True
    for customer in ("C0000001", "C0000002", "C0000003", "nobody"):
        r = httpx.post(
            f"{url}/v1/next_best_action",
            json={"customer_id": customer, "now": "2026-07-01T09:00:00+00:00"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["product_ids"] == [] and r.json()["action"]


def test_omni_serve_answers_on_the_port_it_was_given(server, free_port, wait_until_ready):
    """`omni serve` starts the service on the models of the last build (the session's)."""
    import signal
    import subprocess
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    omni = Path(sys.executable).parent / "omni"
    proc = subprocess.Popen(
        [str(omni), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc)
        assert httpx.post(f"{url}/v1/ping", json={}, timeout=10).json() == {"ok": True}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_omni_serve_without_a_build_exits_2_and_says_so(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "empty-store"))
    omni = Path(sys.executable).parent / "omni"
    done = subprocess.run([str(omni), "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "run `omni build` first" in done.stderr


def test_similar_items_for_a_product_page_without_a_customer(server):
    url, _ = server
    shown = _post(url, {"customer_id": "C0000001", "channel": "web", "k": 2}).json()["items"]
    page = [item["product_id"] for item in shown]
    r = httpx.post(
        f"{url}/v1/similar_items", json={"product_ids": page, "k": 5, "channel": "web"}, timeout=10
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"request_id", "items", "model_versions"}
    assert len(body["items"]) == 5 and not {i["product_id"] for i in body["items"]} & set(page)
    assert all(i["reason"] for i in body["items"]) and body["model_versions"]["recommender"]
    filtered = httpx.post(
        f"{url}/v1/similar_items", json={"product_ids": page, "filters": {"price_max": 0.0}}, timeout=10
    )
    assert filtered.status_code == 200 and filtered.json()["items"] == []
    for bad in (
        {"product_ids": []},
        {"product_ids": page, "k": 0},
        {"product_ids": page, "customer_id": "x"},
    ):
        assert httpx.post(f"{url}/v1/similar_items", json=bad, timeout=10).status_code == 400, bad


def test_keep_alive_connections_are_recycled_without_a_failed_request(server):
    """Every 20th answer on a keep-alive connection says `Connection: close` (serving/connections.py:
    the workers share one socket, and a connection stays with the worker that accepted it); the
    client opens a new one for its next request and nothing fails."""
    url, _ = server
    with httpx.Client(base_url=url, timeout=10) as client:
        answers = [client.post("/v1/ping", json={}) for _ in range(45)]
    assert [r.status_code for r in answers] == [200] * 45
    closing = [i + 1 for i, r in enumerate(answers) if r.headers.get("connection") == "close"]
    assert closing == [20, 40]
