"""The API key: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on every route but the
public ones: handlers whose ``opt`` says ``"public": True`` (``/health/live``, so a liveness
probe needs no secret; a web page's files, which hold none and which a browser must load
before it can ask for the key). A handler whose ``opt`` has ``"unauthorized_body"`` (JSON
bytes) is refused with that body, for clients that expect another API's error shape."""

from __future__ import annotations

import hmac
from collections.abc import Callable

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from para_attn_server.http.schemas import ErrorBody


def api_key_middleware(api_key: str) -> Callable[[ASGIApp], ASGIApp]:
    """Every key a request presents must be right: a wrong one is refused even beside a
    right one."""
    expected = api_key.encode()
    body = msgspec.json.encode(ErrorBody("missing or invalid API key"))

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            # Litestar runs app middleware per route, so the matched handler is in the scope.
            if scope["type"] == ScopeType.HTTP and scope["route_handler"].opt.get("public") is not True:
                supplied = []
                for name, value in scope["headers"]:
                    if name == b"x-api-key":
                        supplied.append(value)
                    elif name == b"authorization" and value[:7].lower() == b"bearer ":
                        supplied.append(value[7:])
                # compare_digest on every key: the time taken does not tell which was wrong.
                right = [hmac.compare_digest(key, expected) for key in supplied]
                if not right or not all(right):
                    await _refuse(send, scope["route_handler"].opt.get("unauthorized_body", body))
                    return
            await app(scope, receive, send)

        return middleware

    return factory


async def _refuse(send: Send, body: bytes) -> None:
    # Plain ASGI events: an early refusal needs no Response object.
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"www-authenticate", b"Bearer"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
