"""The request guards (API key, media type), on a tiny Starlette app (no BentoML needed)."""

import contextlib

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.auth import API_KEY_ENV, ApiKeyMiddleware, MediaTypeMiddleware

KEY = "s3cret-key"


async def ok(request):
    return JSONResponse({"ok": True, "path": request.url.path})


async def echo(request):
    return JSONResponse(await request.json())


def _app(**options) -> Starlette:
    routes = [
        Route("/v1/recommend", echo, methods=["POST"]),
        Route("/v1/ping", ok, methods=["POST", "GET"]),
        Route("/static_content/app.js", lambda r: PlainTextResponse("js")),
    ]
    routes += [Route(p, ok) for p in ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/")]
    middleware = [
        Middleware(ApiKeyMiddleware, **options),
        Middleware(
            CORSMiddleware, allow_origins=["https://shop.example"], allow_methods=["*"], allow_headers=["*"]
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)


@pytest.fixture
def client():
    return TestClient(_app(api_key=KEY))


def test_no_key_configured_passes_everything(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    c = TestClient(_app())
    assert c.post("/v1/recommend", json={"a": 1}).json() == {"a": 1}
    assert c.get("/v1/ping").status_code == 200


def test_empty_env_var_means_no_key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "  ")
    assert TestClient(_app()).get("/v1/ping").status_code == 200


def test_key_read_from_the_environment_at_construction(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, KEY)
    c = TestClient(_app())
    assert c.get("/v1/ping").status_code == 401
    assert c.get("/v1/ping", headers={"x-api-key": KEY}).status_code == 200


@pytest.mark.parametrize(
    "headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": ""}, {"authorization": "Bearer nope"}]
)
def test_missing_or_wrong_key_is_401_json_naming_the_header(client, headers):
    r = client.post("/v1/recommend", json={"a": 1}, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "missing or invalid API key", "field": "x-api-key"}
    assert "www-authenticate" in r.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": KEY},
        {"X-API-Key": KEY},
        {"authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer {KEY}"},
        {"x-api-key": "wrong", "authorization": f"Bearer {KEY}"},  # any valid credential is enough
    ],
)
def test_right_key_in_either_header_passes(client, headers):
    r = client.post("/v1/recommend", json={"a": 1}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"a": 1}  # the body reaches the app untouched


def test_key_is_not_accepted_with_another_scheme(client):
    assert client.get("/v1/ping", headers={"authorization": f"Basic {KEY}"}).status_code == 401
    assert client.get("/v1/ping", headers={"authorization": KEY}).status_code == 401


@pytest.mark.parametrize(
    "path", ["/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/", "/static_content/app.js"]
)
def test_health_metrics_and_docs_stay_open(client, path):
    assert client.get(path).status_code == 200


def test_open_paths_are_exact(client):
    assert client.get("/healthz/../v1/ping").status_code in (401, 404)
    assert client.get("/v1/ping?x=/healthz").status_code == 401


def test_custom_header_and_open_paths():
    c = TestClient(_app(api_key=KEY, header="X-Token", open_paths=("/v1/ping",)))
    assert c.get("/v1/ping").status_code == 200
    assert c.get("/healthz").status_code == 401
    r = c.post("/v1/recommend", json={}, headers={"x-api-key": KEY})
    assert r.status_code == 401 and r.json()["field"] == "x-token"
    assert c.post("/v1/recommend", json={}, headers={"x-token": KEY}).status_code == 200


def test_cors_preflight_is_not_blocked(client):
    r = client.options(
        "/v1/recommend",
        headers={"origin": "https://shop.example", "access-control-request-method": "POST"},
    )
    assert r.status_code == 200
    # a plain OPTIONS without the preflight header still needs the key
    assert client.options("/v1/recommend").status_code == 401


def test_lifespan_passes_through():
    started = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        started.append(True)
        yield

    app = Starlette(
        routes=[Route("/x", ok)], lifespan=lifespan, middleware=[Middleware(ApiKeyMiddleware, api_key=KEY)]
    )
    with TestClient(app) as c:
        assert c.get("/x", headers={"x-api-key": KEY}).status_code == 200
    assert started == [True]


def _json_app() -> TestClient:
    routes = [Route("/v1/recommend", echo, methods=["POST"]), Route("/healthz", ok, methods=["GET", "POST"])]
    return TestClient(Starlette(routes=routes, middleware=[Middleware(MediaTypeMiddleware)]))


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ],
)
def test_json_bodies_pass(content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = _json_app().post("/v1/recommend", content=b'{"a": 1}', headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"a": 1}


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "application/vnd.bentoml+pickle",
        "application/xml",
    ],
)
def test_other_bodies_are_415_json_naming_content_type(content_type):
    r = _json_app().post("/v1/recommend", content=b'{"a": 1}', headers={"content-type": content_type})
    assert r.status_code == 415
    body = r.json()
    assert body["field"] == "content-type"
    assert content_type.split(";")[0].lower() in body["error"]


def test_media_type_guard_leaves_gets_and_open_paths_alone():
    c = _json_app()
    assert c.get("/healthz").status_code == 200
    assert c.post("/healthz", content=b"x", headers={"content-type": "application/xml"}).status_code == 200
