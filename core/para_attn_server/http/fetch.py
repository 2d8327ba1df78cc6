"""Fetching a URL a client gave for a request input (a picture), safely.

The server fetches only from hosts its operator lists (``--input-allow-host HOST[:PORT]``,
repeatable; none listed: every URL is refused), and only as follows:

- ``http`` and ``https`` only, with no user name or password in the URL;
- the URL's host and port must match an entry: ``HOST:PORT`` allows that port (either
  scheme); ``HOST`` alone allows the scheme's default port only (80 for http, 443 for
  https), never every port. Names match exactly (case aside); IP literals match as
  addresses (``[::ffff:127.0.0.1]`` is ``127.0.0.1``);
- the host is resolved (``getaddrinfo``, in a thread) and every address it resolves to must
  be public: loopback, private, shared (100.64/10), link-local (169.254.169.254, the cloud
  metadata service, too), multicast, reserved and unspecified addresses are refused, as are
  IPv6 addresses that carry one (IPv4-mapped, 6to4, Teredo, NAT64). An address that an
  entry names literally, with that port, is the exception: ``--input-allow-host
  127.0.0.1:8080`` opens 127.0.0.1:8080, whether a URL names it by address or by a listed
  name that resolves to it (a client could name the address itself anyway). A listed *name*
  that resolves to any other non-public address is refused: DNS answers are checked;
- the connection goes to the checked address: the request is sent to that IP, with the name
  kept in ``Host`` and, for https, as the TLS server name (SNI), which the certificate is
  verified against. Nothing resolves the name a second time, so a DNS answer that changes
  between the check and the connection (rebinding) is never used. Addresses are tried in
  the order resolved. No proxy is used (``trust_env=False``): one would resolve the name
  itself;
- redirects (301, 302, 303, 307, 308) are followed by hand, at most ``max_redirects``, each
  hop checked as the first URL was, and asked for with GET;
- the body is streamed and cut at ``max_bytes``: a ``Content-Length`` above it is refused
  before the body is read, and a body that grows past it as soon as it does. A status other
  than 2xx is refused, and so is a body with a ``Content-Encoding`` (``identity`` is asked
  for: the bytes counted are the bytes returned);
- ``timeout`` bounds the whole fetch: resolution, redirects and the body included.

Each refusal is a ``FetchRefused`` (a ``ValueError``) whose message is fit for a client's
400: it names ``scheme://host:port`` only, never the URL's path or query (they may hold a
token), nor the addresses a name resolved to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from para_attn_server.hosts import parse_host

DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECTS = frozenset({301, 302, 303, 307, 308})
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
USER_AGENT = "para-attn-server"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchRefused(ValueError):  # noqa: N818 (named for what happened, as the client is told)
    """A URL the server will not fetch, or a fetch that failed; the message suits a 400."""


def _address(host: str) -> Address | None:
    """``host`` as an address if it is one (an IPv4-mapped IPv6 address as its IPv4)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _normal(host: str) -> str:
    ip = _address(host)
    return host.lower() if ip is None else str(ip)


def _public(ip: Address) -> bool:
    """Whether ``ip`` is a public unicast address, and so is any IPv4 address it carries."""
    if isinstance(ip, ipaddress.IPv6Address):
        carried = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if ip in NAT64:
            carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if not all(_public(inner) for inner in carried if inner is not None):
            return False
    special = ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (special or ip.is_reserved or ip.is_unspecified)


class AllowedHosts:
    """The hosts an operator lets the server fetch inputs from (``--input-allow-host``).

    ``HOST:PORT`` allows that port of the host; ``HOST`` alone the scheme's default port
    only. Empty: fetching is off (every URL is refused)."""

    def __init__(self, entries: list[str], setting: str = "input_allow_hosts") -> None:
        self.entries = [(_normal(host), port) for host, port in (parse_host(entry, setting) for entry in entries)]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def allows(self, host: str, port: int, scheme: str) -> bool:
        """Whether an entry allows ``host`` (a name or an address) on ``port`` for ``scheme``."""
        host, default = _normal(host), DEFAULT_PORTS.get(scheme)
        return any(name == host and port == (default if allowed is None else allowed) for name, allowed in self.entries)


@dataclass(frozen=True)
class _Target:
    """One hop, checked: its URL, the origin messages name, the addresses to connect to."""

    url: httpx.URL
    origin: str
    addresses: list[Address]


def _origin(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}:{url.port or DEFAULT_PORTS[url.scheme]}"


def _parse(url: str | httpx.URL) -> httpx.URL:
    """``url`` if it is an http(s) URL with a host and no user name or password."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise FetchRefused("the URL is not a URL") from None
    if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
        raise FetchRefused("the URL is not an http:// or https:// URL")
    if parsed.userinfo:
        raise FetchRefused(f"the URL of {_origin(parsed)} holds a user name or password")
    return parsed


async def _resolve(host: str, port: int, origin: str) -> list[Address]:
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchRefused(f"{origin} could not be resolved") from None
    addresses = [_address(str(info[4][0])) for info in infos]
    found = list(dict.fromkeys(ip for ip in addresses if ip is not None))  # in order, once each
    if not found:
        raise FetchRefused(f"{origin} could not be resolved")
    return found


async def _target(url: str | httpx.URL, allowed: AllowedHosts) -> _Target:
    """The hop to ``url``, once its scheme, host, port and addresses passed every rule."""
    parsed = _parse(url)
    origin, port = _origin(parsed), parsed.port or DEFAULT_PORTS[parsed.scheme]
    if not allowed.allows(parsed.host, port, parsed.scheme):
        none = " (this server allows none)" if not allowed else ""
        raise FetchRefused(f"{origin} is not an allowed host{none}")
    addresses = await _resolve(parsed.host, port, origin)
    if not all(_public(ip) or allowed.allows(str(ip), port, parsed.scheme) for ip in addresses):
        raise FetchRefused(f"{origin} resolves to an address that is not public")
    return _Target(parsed, origin, addresses)


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default verification (certifi's roots), made once."""
    return httpx.create_ssl_context()


@contextlib.asynccontextmanager
async def _get(client: httpx.AsyncClient, target: _Target) -> AsyncIterator[httpx.Response]:
    """The response of ``target``'s first address that takes a connection, its body unread."""
    headers = {"Host": target.url.netloc.decode("ascii"), "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else {}
    for ip in target.addresses:
        pinned = target.url.copy_with(host=str(ip), fragment=None)
        request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectError:
            continue  # the next address, if any
        except httpx.TimeoutException:
            raise FetchRefused(f"{target.origin} did not answer in time") from None
        except httpx.RemoteProtocolError:  # a Location that is not a URL too: httpx parses it
            raise FetchRefused(f"{target.origin} answered with something that is not valid HTTP") from None
        except httpx.HTTPError:
            raise FetchRefused(f"the connection to {target.origin} failed") from None
        try:
            yield response
        finally:
            await response.aclose()
        return
    raise FetchRefused(f"{target.origin} could not be reached")


async def _body(response: httpx.Response, origin: str, max_bytes: int) -> bytes:
    larger = FetchRefused(f"the body at {origin} is larger than {max_bytes} bytes")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise larger
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        raise FetchRefused(f"{origin} sent an encoded body (Content-Encoding), not the bytes themselves")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > max_bytes:
                raise larger
            chunks.append(chunk)
    except httpx.TimeoutException:
        raise FetchRefused(f"{origin} did not answer in time") from None
    except httpx.HTTPError:
        raise FetchRefused(f"the connection to {origin} failed") from None
    return b"".join(chunks)


async def _redirect(target: _Target, response: httpx.Response, allowed: AllowedHosts, left: int) -> _Target:
    """The hop ``response`` redirects to, checked; a refusal names the hop it came from."""
    location = response.headers.get("location")
    if location is None:
        raise FetchRefused(f"{target.origin} answered {response.status_code} without a Location")
    if left <= 0:
        raise FetchRefused(f"{target.origin} redirected once more than the redirects allowed")
    try:
        return await _target(target.url.join(location), allowed)
    except httpx.InvalidURL:
        raise FetchRefused(f"{target.origin} redirected to a Location that is not a URL") from None
    except FetchRefused as exc:
        raise FetchRefused(f"{target.origin} redirected: {exc}") from None


async def fetch(
    url: str, allowed: AllowedHosts, max_bytes: int, *, timeout: float = 10.0, max_redirects: int = 3
) -> tuple[bytes, str | None]:
    """The body and its content type. Raises FetchRefused(reason) (a ValueError) with a message fit for a client's 400.

    ``timeout`` bounds the whole fetch; ``max_redirects`` redirects are followed, each hop
    checked as ``url`` is (see the module's docstring for the rules)."""
    first = _origin(_parse(url))
    try:
        async with asyncio.timeout(timeout):
            target = await _target(url, allowed)
            async with httpx.AsyncClient(verify=_tls(), trust_env=False, timeout=timeout) as client:
                left = max_redirects
                while True:
                    async with _get(client, target) as response:
                        if response.status_code not in REDIRECTS:
                            if not response.is_success:
                                raise FetchRefused(f"{target.origin} answered {response.status_code}")
                            return await _body(response, target.origin, max_bytes), response.headers.get("content-type")
                    target = await _redirect(target, response, allowed, left)
                    left -= 1
    except TimeoutError:
        raise FetchRefused(f"fetching from {first} took longer than {timeout:g} s") from None
