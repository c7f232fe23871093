"""Guards in front of the HTTP API, as pure ASGI middlewares (no framework dependency).

- `ApiKeyMiddleware`: the optional API key, checked on every route but the health, metrics and
  documentation ones. The key comes from `OMNI_API_KEY`, read when the middleware is built (once per
  worker); when it is unset or empty every request passes. Clients send `x-api-key: <key>` or
  `Authorization: Bearer <key>`; keys are compared in constant time. Failures: 401
  `{"error": "missing or invalid API key", "field": "x-api-key"}`.
- `MediaTypeMiddleware`: request bodies must be JSON (or a plain form). BentoML 1.4 answers a malformed
  multipart body with a 500 and a refused media type with a JSON *list*; this answers 415
  `{"error": ..., "field": "content-type"}` before the request gets there.

Added to the BentoML service with `OmniService.add_asgi_middleware(ApiKeyMiddleware)` and
`OmniService.add_asgi_middleware(MediaTypeMiddleware)`.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_KEY_ENV = "OMNI_API_KEY"
OPEN_PATHS: tuple[str, ...] = ("/healthz", "/livez", "/readyz", "/metrics", "/docs", "/docs.json", "/")
# the Swagger page at "/" loads its scripts and styles from here
OPEN_PREFIXES: tuple[str, ...] = ("/static_content/",)


class ApiKeyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None = None,
        header: str = "x-api-key",
        open_paths: Iterable[str] = OPEN_PATHS,
        open_prefixes: Iterable[str] = OPEN_PREFIXES,
    ) -> None:
        self.app = app
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self._key: bytes | None = key.strip().encode() if key and key.strip() else None
        self.header = header.lower()
        self._header = self.header.encode("latin-1")
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)
        self._body = json.dumps({"error": "missing or invalid API key", "field": self.header}).encode()

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _is_open(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if path in self.open_paths or path.startswith(self.open_prefixes):
            return True
        if scope.get("method") == "OPTIONS":  # CORS preflight carries no credentials
            return any(name == b"access-control-request-method" for name, _ in scope.get("headers", ()))
        return False

    def _authorized(self, scope: Scope) -> bool:
        assert self._key is not None
        ok = False
        for name, value in scope.get("headers", ()):
            if name == self._header:
                candidate = value.strip()
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                candidate = value[7:].strip()
            else:
                continue
            # no early exit: every presented credential is compared, each in constant time
            ok |= hmac.compare_digest(candidate, self._key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._key is None or scope["type"] not in ("http", "websocket") or self._is_open(scope):
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "missing or invalid API key"})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self._body)).encode()),
                    (b"www-authenticate", b'Bearer realm="omni"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self._body})


# Bodies the API reads: JSON (BentoML's default when no type is given) and plain forms of flat fields.
ACCEPTED_MEDIA_TYPES: tuple[str, ...] = (
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class MediaTypeMiddleware:
    """415 with a JSON message for request bodies of a media type the API does not read."""

    def __init__(
        self,
        app: ASGIApp,
        accepted: Iterable[str] = ACCEPTED_MEDIA_TYPES,
        open_paths: Iterable[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.accepted = frozenset(m.lower() for m in accepted)
        self.open_paths = frozenset(open_paths)

    def _media_type(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-type":
                return value.decode("latin-1").split(";", 1)[0].strip().lower()
        return None

    def _acceptable(self, media_type: str | None) -> bool:
        if not media_type or media_type in self.accepted:
            return True
        return media_type.startswith("application/") and media_type.endswith("+json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") not in BODY_METHODS
            or scope.get("path") in self.open_paths
        ):
            await self.app(scope, receive, send)
            return
        media_type = self._media_type(scope)
        if self._acceptable(media_type):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": f"unsupported content type {media_type!r}: send application/json",
                "field": "content-type",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 415,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
