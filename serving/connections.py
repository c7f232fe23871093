"""Keep-alive connections recycled, so every worker of a server gets its share of them.

The workers of a BentoML server share one listening socket (BentoML 1.4, bentoml/BentoML#5426):
a connection stays with the worker that accepted it for as long as the client keeps it alive, and
the connections a client pool opens at once are accepted by whichever worker wakes first, often
all by one. Measured on this project's 2-worker server with 16 keep-alive clients: one worker at
100 % of a core, the other idle, for every route. `ConnectionRecycleMiddleware` answers the
`requests_per_connection`-th request of a connection with `Connection: close` (plain HTTP/1.1: the
client opens a new connection for its next request); a worker busy with requests is slower to
accept it than an idle one, so the connections drift to the idle workers until the load is even.

`OMNI_REQUESTS_PER_CONNECTION` sets the number (default 20; 0 keeps every connection open). A
reconnection costs a TCP handshake, on the local network about a tenth of a millisecond of CPU: a
twentieth of that per request, well under 1 % of the cheapest route's cost. 20 lets a pool of
connections opened at once spread over the workers within about a second at the rates of
`bench/serve_load.py`, whose rounds open a fresh pool every few seconds.
"""

from __future__ import annotations

import os
from typing import Any

from serving.auth import ASGIApp, Message, Receive, Scope, Send

REQUESTS_PER_CONNECTION_ENV = "OMNI_REQUESTS_PER_CONNECTION"
DEFAULT_REQUESTS_PER_CONNECTION = 20
# connections counted at most (those closed by the client are never told apart: past this many the
# counts start again, which only recycles some connections early)
_MAX_TRACKED = 4096


def requests_per_connection() -> int:
    raw = os.environ.get(REQUESTS_PER_CONNECTION_ENV, "").strip()
    if not raw:
        return DEFAULT_REQUESTS_PER_CONNECTION
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{REQUESTS_PER_CONNECTION_ENV} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{REQUESTS_PER_CONNECTION_ENV} must be 0 (off) or more, got {value}")
    return value


class ConnectionRecycleMiddleware:
    def __init__(self, app: ASGIApp, limit: int | None = None) -> None:
        self.app = app
        self.limit = requests_per_connection() if limit is None else int(limit)  # 0 = off
        self._served: dict[Any, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or self.limit <= 0 or client is None or scope.get("http_version") == "1.0":
            await self.app(scope, receive, send)
            return
        # one connection = one client address and port (and the server's, for several listeners)
        key = (tuple(client), tuple(scope.get("server") or ()))
        if len(self._served) >= _MAX_TRACKED and key not in self._served:
            self._served.clear()
        served = self._served.get(key, 0) + 1
        if served < self.limit:
            self._served[key] = served
            await self.app(scope, receive, send)
            return
        self._served.pop(key, None)

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
