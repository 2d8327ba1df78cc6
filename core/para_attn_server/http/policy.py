"""What keeps other web sites from driving a server that has no API key.

Any page a browser opens may send requests to the server (a form, or ``fetch`` in
``no-cors`` mode, both without asking the server first) and, through DNS rebinding (its own
name made to resolve to 127.0.0.1), read the answers too. An API key stops both: a page
cannot know it. Without one (the default), ``keyless_middleware`` refuses:

- a ``Host`` that is not a name of the server, on a connection that came in over loopback:
  421. Over loopback the server answers to localhost, 127.0.0.1 and [::1] (any port: a
  forwarded one too), to this machine's host name and to ``--public-url``'s host; a rebound
  page's requests name its attacker's host.
- a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` is not the server's
  own (the origin its ``Host`` names, or ``--public-url``'s): 403. Browsers send ``Origin``
  with every such request to another site; other clients send none, and are not refused.
- a body that is neither JSON (``application/json``, ``application/*+json``) nor, on the
  routes that take forms (``opt={"forms": True}``), ``multipart/form-data``: 415 naming its
  type. Of the types a page may send without asking, ``text/plain`` and urlencoded forms
  are refused everywhere, multipart where no form is taken. A body without a
  ``Content-Type`` (a script's raw JSON) is taken: a page sending one still sends ``Origin``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urlsplit

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Receive,
    Scope,
    Send,
)

from para_attn_server.http.schemas import ErrorBody

# 0.0.0.0 and ::: a client that connects to the wildcard address reaches loopback and names it
# (no DNS name can rebind to them).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}
JSON = "application/json"
FORM = "multipart/form-data"
NO_KEY = "a server without --api-key"


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


def origin_of(url: str) -> Origin | None:
    """The origin of ``url`` (an ``Origin`` header or ``--public-url``); None for ``null``
    and anything that is not an http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return Origin(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme])


def authority(host: str) -> tuple[str, int | None] | None:
    """A ``Host`` header's (lowercased name, port), an IPv6 address without its brackets;
    None when it is not ``name[:port]``."""
    try:
        parts = urlsplit(f"//{host}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.netloc != host or "@" in host:
        return None
    return parts.hostname, port


def is_loopback(address: str) -> bool:
    """True for a loopback address, IPv4 in IPv6 (a dual-stack socket's ``::ffff:127.0.0.1``) too."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


def keyless_middleware(public_url: str | None) -> Callable[[ASGIApp], ASGIApp]:
    """The three refusals above, before a handler runs (Litestar runs app middleware per
    route: the matched handler's ``opt`` is in the scope)."""
    public = origin_of(public_url) if public_url else None
    # This machine's name (``join`` prints URLs with it) resolves to loopback on many hosts.
    names = frozenset({*LOOPBACK_NAMES, socket.gethostname().lower(), *([public.host] if public else [])})

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP:
                refusal = refused(scope, names, public)
                if refusal is not None:
                    await _refuse(send, *refusal)
                    return
            await app(scope, receive, send)

        return middleware

    return factory


def refused(scope: HTTPScope, names: frozenset[str], public: Origin | None) -> tuple[int, str] | None:
    """(status, message) when the request is refused, else None. ``names``: the server's
    names over loopback."""
    headers: dict[bytes, list[str]] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, []).append(value.decode("latin-1"))
    hosts = headers.get(b"host", [])
    if len(hosts) > 1:
        return 400, "the request names more than one Host"
    host = hosts[0] if hosts else None
    server = scope.get("server")
    if host is not None and server is not None and is_loopback(server[0]):
        named = authority(host)
        if named is None or (named[0] not in names and named[0] != server[0]):
            return 421, (
                f"the Host {host!r} is not a name of this server: over loopback it answers to localhost, "
                "127.0.0.1 and [::1] (behind a proxy that passes on its clients' Host, give --public-url)"
            )
    if scope["method"] not in STATE_CHANGING:
        return None
    origins = headers.get(b"origin", [])
    if origins and not all(_own(origin, host, public) for origin in origins):
        return 403, (
            f"refused: the request comes from another site (Origin {origins[0]}), and {NO_KEY} takes no "
            "state-changing request from other sites' pages"
        )
    return _unsupported_body(headers, bool(scope["route_handler"].opt.get("forms")))


def _own(origin: str, host: str | None, public: Origin | None) -> bool:
    """True when ``origin`` is the server's own: the one its ``Host`` names, or the public URL's."""
    sent = origin_of(origin)
    if sent is None:
        return False
    if sent == public:
        return True
    named = authority(host) if host is not None else None
    return named is not None and named[0] == sent.host and (named[1] or DEFAULT_PORTS[sent.scheme]) == sent.port


def _unsupported_body(headers: dict[bytes, list[str]], forms: bool) -> tuple[int, str] | None:
    lengths = headers.get(b"content-length", [])
    if not headers.get(b"transfer-encoding") and all(length.strip() == "0" for length in lengths):
        return None  # no body
    types = headers.get(b"content-type")
    if not types:
        return None
    media = types[0].partition(";")[0].strip().lower()
    if media == JSON or (media.startswith("application/") and media.endswith("+json")) or (forms and media == FORM):
        return None
    taken = f"{JSON} or {FORM}" if forms else JSON
    return 415, f"a {media or 'blank'} body is not taken here: send {taken} ({NO_KEY} takes no other)"


async def _refuse(send: Send, status: int, message: str) -> None:
    body = msgspec.json.encode(ErrorBody(message))
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
