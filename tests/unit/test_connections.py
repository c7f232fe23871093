"""`serving.connections.ConnectionRecycleMiddleware`: every n-th answer on a connection closes it."""

import asyncio

import pytest

from serving.connections import (
    REQUESTS_PER_CONNECTION_ENV,
    ConnectionRecycleMiddleware,
    requests_per_connection,
)


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _connection_headers(middleware, client=("127.0.0.1", 5000), http_version="1.1", scope_type="http"):
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {
        "type": scope_type,
        "http_version": http_version,
        "client": client,
        "server": ("127.0.0.1", 3000),
    }
    asyncio.run(middleware(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert any(
        m["type"] == "http.response.body" and m["body"] == b"ok" for m in sent
    )  # the body is untouched
    return [v for k, v in start["headers"] if k == b"connection"]


def test_every_nth_answer_of_a_connection_closes_it():
    middleware = ConnectionRecycleMiddleware(_app, limit=3)
    answers = [_connection_headers(middleware) for _ in range(7)]
    assert answers == [[], [], [b"close"], [], [], [b"close"], []]


def test_connections_are_counted_apart():
    middleware = ConnectionRecycleMiddleware(_app, limit=2)
    a, b = ("127.0.0.1", 5000), ("127.0.0.1", 5001)
    assert _connection_headers(middleware, a) == []
    assert _connection_headers(middleware, b) == []
    assert _connection_headers(middleware, a) == [b"close"]
    assert _connection_headers(middleware, b) == [b"close"]


def test_off_http_1_0_and_other_scopes_pass_untouched():
    assert all(_connection_headers(ConnectionRecycleMiddleware(_app, limit=0)) == [] for _ in range(5))
    once = ConnectionRecycleMiddleware(_app, limit=1)
    assert _connection_headers(once, http_version="1.0") == []
    assert _connection_headers(once, client=None) == []
    assert _connection_headers(once) == [b"close"]


def test_an_existing_connection_header_is_replaced():
    async def keep_alive_app(scope, receive, send):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"Connection", b"keep-alive")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    sent = []

    async def send(message):
        sent.append(message)

    middleware = ConnectionRecycleMiddleware(keep_alive_app, limit=1)
    scope = {"type": "http", "http_version": "1.1", "client": ("127.0.0.1", 1), "server": None}
    asyncio.run(middleware(scope, None, send))
    assert sent[0]["headers"] == [(b"connection", b"close")]


def test_the_setting_is_read_and_checked(monkeypatch):
    monkeypatch.delenv(REQUESTS_PER_CONNECTION_ENV, raising=False)
    assert requests_per_connection() == 20
    monkeypatch.setenv(REQUESTS_PER_CONNECTION_ENV, "0")
    assert requests_per_connection() == 0
    for bad in ("many", "-1"):
        monkeypatch.setenv(REQUESTS_PER_CONNECTION_ENV, bad)
        with pytest.raises(ValueError, match=REQUESTS_PER_CONNECTION_ENV):
            requests_per_connection()
