"""http/fetch.py: a client's URL fetched only from allowed hosts, at public or listed
addresses, over real HTTP on loopback (127.0.0.1 only: no other address is ever connected
to; names that would resolve elsewhere come from a fake resolver and are refused before
any connection)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from para_attn_server.http import fetch as fetch_module
from para_attn_server.http.fetch import AllowedHosts, FetchRefused, fetch

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]

SECRET = "s3cr3t-token"  # in paths and queries: never in a message
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


# ---- a small HTTP/1.1 server on 127.0.0.1 -------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""  # bytes: with a Content-Length; chunks: until closed
    hang: bool = False  # never answer


@dataclass
class Server:
    respond: Callable[[str], Reply]
    port: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (target, headers)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *lines = head.split("\r\n")
            target = line.split(" ")[1]
            headers = {name.strip().lower(): value.strip() for name, _, value in (x.partition(":") for x in lines if x)}
            self.requests.append((target, headers))
            await self.reply(writer, self.respond(target))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)

    @staticmethod
    async def reply(writer: asyncio.StreamWriter, reply: Reply) -> None:
        if reply.hang:
            await asyncio.Event().wait()  # cancelled when the server stops
        fields = {"Connection": "close", **reply.headers}
        if isinstance(reply.body, bytes):
            fields.setdefault("Content-Length", str(len(reply.body)))
        head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        writer.write(f"HTTP/1.1 {reply.status} Whatever\r\n{head}\r\n".encode("latin-1"))
        for chunk in [reply.body] if isinstance(reply.body, bytes) else reply.body:
            if writer.is_closing():
                return
            writer.write(chunk)
            await writer.drain()


@contextlib.asynccontextmanager
async def serve(respond: Callable[[str], Reply], tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(respond)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for task in list(server.tasks):
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
        await listener.wait_closed()


def always(reply: Reply) -> Callable[[str], Reply]:
    return lambda target: reply


def endless(chunk: int = 16384, cap: int = 4096) -> Iterator[bytes]:
    """A body sent until the client hangs up (``cap`` chunks at most: a test never hangs)."""
    return itertools.repeat(b"x" * chunk, cap)


@pytest.fixture
def body_bytes_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The body bytes each response's connection gave httpx (one count per response)."""
    counts: list[int] = []
    original = httpx.AsyncHTTPTransport.handle_async_request

    async def counting(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        response = await original(self, request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        index, inner = len(counts), response.stream
        counts.append(0)

        class Counted(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in inner:
                    counts[index] += len(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await inner.aclose()

        response.stream = Counted()
        return response

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", counting)
    return counts


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names under ``.test`` resolve to the addresses this dict gives them, once each: a
    second look-up fails (a pinned fetch never makes one). Every other name resolves as usual."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if not str(host).endswith(".test"):
            return real(host, port, *args, **kwargs)
        addresses = answers.pop(str(host), None)
        if addresses is None:
            raise socket.gaierror(socket.EAI_NONAME, "looked up twice (or never listed)")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return answers


async def refused(url: str, allowed: AllowedHosts, max_bytes: int = 1 << 20, **options: Any) -> str:
    with pytest.raises(FetchRefused) as caught:
        await fetch(url, allowed, max_bytes, **options)
    message = str(caught.value)
    assert SECRET not in message
    return message


# ---- what is fetched ----------------------------------------------------------------------------


async def test_an_allowed_address_serves_its_bytes_and_content_type() -> None:
    async with serve(always(Reply(headers={"Content-Type": "image/png"}, body=PICTURE))) as server:
        allowed = AllowedHosts([f"127.0.0.1:{server.port}"])

        body, content_type = await fetch(f"{server.origin}/p/{SECRET}.png?token={SECRET}#frag", allowed, 1 << 20)

    assert (body, content_type) == (PICTURE, "image/png")
    [(target, headers)] = server.requests
    assert target == f"/p/{SECRET}.png?token={SECRET}"
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["accept-encoding"] == "identity"


async def test_a_listed_name_connects_to_the_address_it_was_checked_at(resolver: dict[str, list[str]]) -> None:
    async with serve(always(Reply(body=PICTURE))) as server:
        # The literal entry opens 127.0.0.1 on that port; a second look-up would fail.
        allowed = AllowedHosts([f"pics.test:{server.port}", f"127.0.0.1:{server.port}"])
        resolver["pics.test"] = ["127.0.0.1"]

        body, content_type = await fetch(f"http://pics.test:{server.port}/a.png", allowed, 1 << 20)

    assert (body, content_type) == (PICTURE, None)
    assert resolver == {}  # looked up once
    assert [headers["host"] for _, headers in server.requests] == [f"pics.test:{server.port}"]


async def test_redirects_within_the_limit_are_followed_each_to_an_allowed_host() -> None:
    async with serve(always(Reply(body=PICTURE))) as second:
        hops = {"/a": Reply(301, {"Location": "/b"}), "/b": Reply(307, {"Location": f"{second.origin}/c"})}
        async with serve(lambda target: hops[target]) as first:
            allowed = AllowedHosts([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"])

            body, _ = await fetch(f"{first.origin}/a", allowed, 1 << 20, max_redirects=2)

    assert body == PICTURE
    assert [target for target, _ in first.requests] == ["/a", "/b"]
    assert [target for target, _ in second.requests] == ["/c"]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Self-signed certificates (and keys) for pics.test and other.test, by name."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder, made = tmp_path_factory.mktemp("tls"), {}
    for name in ("pics.test", "other.test"):
        cert, key = str(folder / f"{name}.pem"), str(folder / f"{name}.key")
        curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
        subject = ["-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]
        subprocess.run(["openssl", "req", "-x509", *curve, *subject, "-keyout", key, "-out", cert], check=True)
        made[name] = (cert, key)
    return made


@pytest.mark.parametrize(("certified", "served"), [("pics.test", True), ("other.test", False)])
async def test_https_to_a_listed_name_verifies_the_certificate_for_the_name_at_the_checked_address(
    resolver: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    certificates: dict[str, tuple[str, str]],
    certified: str,
    served: bool,
) -> None:
    cert, key = certificates[certified]
    names: list[str | None] = []
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda sock, name, context: names.append(name)
    monkeypatch.setattr(fetch_module, "_tls", lambda: ssl.create_default_context(cafile=cert))
    async with serve(always(Reply(body=PICTURE)), tls) as server:
        resolver["pics.test"] = ["127.0.0.1"]
        allowed = AllowedHosts([f"pics.test:{server.port}", f"127.0.0.1:{server.port}"])
        url = f"https://pics.test:{server.port}/a.png"

        if served:
            assert (await fetch(url, allowed, 1 << 20))[0] == PICTURE
        else:
            assert await refused(url, allowed) == f"https://pics.test:{server.port} could not be reached"

    assert names == ["pics.test"]  # SNI: the name, though the connection went to 127.0.0.1
    assert [headers["host"] for _, headers in server.requests] == ([f"pics.test:{server.port}"] if served else [])


# ---- what is refused ----------------------------------------------------------------------------


async def test_a_host_not_allowed_is_refused_before_any_connection() -> None:
    async with serve(always(Reply(body=PICTURE))) as server:
        url = f"{server.origin}/{SECRET}?token={SECRET}"

        assert await refused(url, AllowedHosts([f"127.0.0.2:{server.port}"])) == (
            f"{server.origin} is not an allowed host"
        )
        none = await refused(url, AllowedHosts([]))
        assert none == f"{server.origin} is not an allowed host (this server allows none)"
        assert await refused(f"http://[::1]:{server.port}/", AllowedHosts([f"127.0.0.1:{server.port}"])) == (
            f"http://[::1]:{server.port} is not an allowed host"
        )

    assert server.requests == []


async def test_a_port_not_allowed_is_refused() -> None:
    async with serve(always(Reply(body=PICTURE))) as server:
        # HOST alone allows the scheme's default port only, never every port.
        for entries in ([f"127.0.0.1:{server.port + 1}"], ["127.0.0.1"]):
            message = await refused(f"{server.origin}/{SECRET}", AllowedHosts(entries))

            assert message == f"{server.origin} is not an allowed host"

    assert server.requests == []


def test_an_entry_without_a_port_allows_the_default_port_of_each_scheme_only() -> None:
    allowed = AllowedHosts(["Pics.Example", "cdn.example:8443", "[::ffff:10.0.0.1]:81"])

    assert allowed.allows("pics.example", 80, "http")
    assert allowed.allows("PICS.example", 443, "https")
    assert not allowed.allows("pics.example", 443, "http")
    assert not allowed.allows("pics.example", 8080, "http")
    assert allowed.allows("cdn.example", 8443, "http")
    assert allowed.allows("cdn.example", 8443, "https")
    assert not allowed.allows("cdn.example", 443, "https")
    assert allowed.allows("10.0.0.1", 81, "http")  # an IPv4-mapped entry is its IPv4 address
    assert not AllowedHosts([])


async def test_localhost_may_be_listed_but_its_loopback_address_is_refused() -> None:
    async with serve(always(Reply(body=PICTURE))) as server:
        message = await refused(f"http://localhost:{server.port}/{SECRET}", AllowedHosts([f"localhost:{server.port}"]))

    assert message == f"http://localhost:{server.port} resolves to an address that is not public"
    assert server.requests == []


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.1.2.3"],
        ["192.168.1.1"],
        ["172.16.0.1"],
        ["100.64.0.1"],  # shared address space (carrier NAT)
        ["169.254.169.254"],  # cloud metadata
        ["0.0.0.0"],
        ["224.0.0.1"],
        ["240.0.0.1"],
        ["::1"],
        ["::"],
        ["fe80::1"],
        ["fc00::1"],
        ["ff02::1"],
        ["::ffff:127.0.0.1"],
        ["::ffff:169.254.169.254"],
        ["64:ff9b::a9fe:a9fe"],  # NAT64 of 169.254.169.254
        ["2002:a00:1::"],  # 6to4 of 10.0.0.1
        ["93.184.215.14", "10.0.0.1"],  # one public answer does not make up for a private one
    ],
)
async def test_a_name_resolving_to_a_non_public_address_is_refused(
    resolver: dict[str, list[str]], addresses: list[str]
) -> None:
    resolver["pics.test"] = addresses
    # An address listed with another port opens nothing on this one.
    allowed = AllowedHosts(["pics.test", *(f"[{a}]:8080" if ":" in a else f"{a}:8080" for a in addresses)])

    message = await refused(f"http://pics.test/{SECRET}", allowed)

    assert message == "http://pics.test:80 resolves to an address that is not public"


async def test_a_name_that_does_not_resolve_is_refused(resolver: dict[str, list[str]]) -> None:
    message = await refused("https://nowhere.test/x", AllowedHosts(["nowhere.test"]))

    assert message == "https://nowhere.test:443 could not be resolved"


async def test_a_redirect_to_a_host_not_allowed_is_refused_naming_the_hop() -> None:
    async with serve(always(Reply(body=PICTURE))) as second:
        redirect = Reply(302, {"Location": f"{second.origin}/{SECRET}?token={SECRET}"})
        async with serve(always(redirect)) as first:
            message = await refused(f"{first.origin}/start", AllowedHosts([f"127.0.0.1:{first.port}"]))

    assert message == f"{first.origin} redirected: {second.origin} is not an allowed host"
    assert len(first.requests) == 1
    assert second.requests == []


async def test_a_redirect_from_an_allowed_name_to_loopback_is_refused(resolver: dict[str, list[str]]) -> None:
    async with serve(always(Reply(303, {"Location": "http://localhost/"}))) as server:
        resolver["pics.test"] = ["127.0.0.1"]
        allowed = AllowedHosts([f"pics.test:{server.port}", f"127.0.0.1:{server.port}", "localhost"])

        message = await refused(f"http://pics.test:{server.port}/", allowed)

    hop = "http://localhost:80 resolves to an address that is not public"
    assert message == f"http://pics.test:{server.port} redirected: {hop}"


async def test_a_redirect_chain_longer_than_allowed_is_refused() -> None:
    def respond(target: str) -> Reply:
        return Reply(302, {"Location": f"/{int(target.strip('/')) + 1}"})

    async with serve(respond) as server:
        message = await refused(f"{server.origin}/0", AllowedHosts([f"127.0.0.1:{server.port}"]), max_redirects=3)

    assert message == f"{server.origin} redirected once more than the redirects allowed"
    assert [target for target, _ in server.requests] == ["/0", "/1", "/2", "/3"]


async def test_a_body_larger_than_allowed_is_cut_off_soon(body_bytes_read: list[int]) -> None:
    async with serve(always(Reply(body=endless()))) as server:
        message = await refused(f"{server.origin}/{SECRET}", AllowedHosts([f"127.0.0.1:{server.port}"]), 100_000)

    assert message == f"the body at {server.origin} is larger than 100000 bytes"
    [read] = body_bytes_read
    assert 100_000 < read <= 100_000 + 65_536  # one read past the limit at most (httpcore reads 64 KiB)


async def test_a_declared_length_larger_than_allowed_is_refused_before_the_body(body_bytes_read: list[int]) -> None:
    reply = Reply(headers={"Content-Length": "10000000"}, body=endless())
    async with serve(always(reply)) as server:
        message = await refused(f"{server.origin}/", AllowedHosts([f"127.0.0.1:{server.port}"]), 100_000)

    assert message == f"the body at {server.origin} is larger than 100000 bytes"
    assert body_bytes_read == [0]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(404, body=b"not here"), "answered 404"),
        (Reply(500), "answered 500"),
        (Reply(304), "answered 304"),
        (Reply(302), "answered 302 without a Location"),
        (Reply(302, {"Location": f"http://[::1/{SECRET}"}), "answered with something that is not valid HTTP"),
        (Reply(302, {"Location": f"file:///{SECRET}"}), "redirected: the URL is not an http:// or https:// URL"),
        (Reply(headers={"Content-Encoding": "gzip"}, body=b"\x1f\x8b"), "sent an encoded body"),
    ],
)
async def test_an_answer_that_is_not_a_plain_success_is_refused(reply: Reply, expected: str) -> None:
    async with serve(always(reply)) as server:
        message = await refused(f"{server.origin}/{SECRET}", AllowedHosts([f"127.0.0.1:{server.port}"]))

    assert message.startswith(f"{server.origin} {expected}")


async def test_a_host_that_does_not_answer_in_time_is_refused() -> None:
    async with serve(always(Reply(hang=True))) as server:
        message = await refused(f"{server.origin}/", AllowedHosts([f"127.0.0.1:{server.port}"]), timeout=0.2)

    assert message == f"fetching from {server.origin} took longer than 0.2 s"


async def test_a_port_nobody_listens_on_is_refused() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: a connection is refused

        message = await refused(f"http://127.0.0.1:{port}/", AllowedHosts([f"127.0.0.1:{port}"]))

    assert message == f"http://127.0.0.1:{port} could not be reached"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://127.0.0.1/x", "the URL is not an http:// or https:// URL"),
        ("file:///etc/passwd", "the URL is not an http:// or https:// URL"),
        ("data:image/png;base64,iVBORw0KGgo=", "the URL is not an http:// or https:// URL"),
        ("/relative/path", "the URL is not an http:// or https:// URL"),
        ("http:///no-host", "the URL is not an http:// or https:// URL"),
        ("http://[::1/", "the URL is not a URL"),
        (f"http://user:{SECRET}@127.0.0.1:8080/", "the URL of http://127.0.0.1:8080 holds a user name or password"),
        ("http://user@127.0.0.1:8080/", "the URL of http://127.0.0.1:8080 holds a user name or password"),
    ],
)
async def test_urls_other_than_plain_http_are_refused(url: str, expected: str) -> None:
    assert await refused(url, AllowedHosts(["127.0.0.1:8080", "127.0.0.1"])) == expected


# ---- the operator's entries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        *("", "http://pics.example/", "pics.example/", "user@pics.example", "pics.example:http", "pics.example:"),
        *("::1", "pics.example:0", "pics.example:99999", "pics example", "pics.example?x", "[pics.example]:80"),
    ],
)
def test_an_entry_that_is_not_host_or_host_port_is_refused_naming_the_setting(entry: str) -> None:
    with pytest.raises(ValueError, match=r"^input_allow_hosts: .* is not HOST or HOST:PORT$") as caught:
        AllowedHosts(["ok.example", entry])
    assert repr(entry) in str(caught.value)

    with pytest.raises(ValueError, match=r"^other_hosts: "):
        AllowedHosts([entry], setting="other_hosts")
