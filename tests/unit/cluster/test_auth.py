"""The join token's proofs: join's auth flow (``JoinAuth``) against the server's ``Sessions``,
driven call by call as httpx drives it, with a server that holds the token and one that does not."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Generator
from pathlib import Path

import httpx
import msgspec
import pytest

from para_attn_server.cluster.auth import (
    MAC_HEADER,
    SEQ_HEADER,
    SESSION_HEADER,
    Challenge,
    JoinAuth,
    ProofError,
    Sessions,
    fingerprint,
    hello_proof,
    server_token,
)
from para_attn_server.cluster.spec import JOIN_ROUTE
from para_attn_server.settings import HttpSettings

TOKEN = "the-join-token"
URL = f"http://server:5000{JOIN_ROUTE}?after=0&wait=2"


def serve(sessions: Sessions, request: httpx.Request, body: bytes = b'{"spec":1}') -> httpx.Response:
    """What the routes do with ``request``: answer a challenge, or verify the call and sign the answer."""
    if request.url.path.endswith("/auth"):
        answer = sessions.answer(msgspec.json.decode(request.content, type=Challenge))
        return httpx.Response(200, content=msgspec.json.encode(answer), request=request)
    try:
        signed = sessions.verify(request.method, request.url.raw_path, request.headers, request.content)
    except ProofError:
        return httpx.Response(401, content=b'{"error":"no proof"}', request=request)
    return httpx.Response(200, content=body, headers={MAC_HEADER: Sessions.sign(signed, 200, body)}, request=request)


def run(flow: Generator[httpx.Request, httpx.Response, None], answer: object) -> list[httpx.Request]:
    """Drive ``flow`` to its end, ``answer(request)`` giving each response; the requests sent."""
    sent = [next(flow)]
    try:
        while True:
            sent.append(flow.send(answer(sent[-1])))  # type: ignore[operator]
    except StopIteration:
        return sent


def test_join_and_the_server_prove_the_token_and_the_token_never_travels() -> None:
    sessions, auth = Sessions(TOKEN, JOIN_ROUTE), JoinAuth(TOKEN, JOIN_ROUTE)
    sent = run(auth.auth_flow(httpx.Request("GET", URL)), lambda r: serve(sessions, r))

    assert [r.url.path for r in sent] == [f"{JOIN_ROUTE}/auth", JOIN_ROUTE]
    for request in sent:
        assert TOKEN.encode() not in request.content
        assert all(TOKEN not in value for value in request.headers.values())
    second = run(auth.auth_flow(httpx.Request("GET", URL)), lambda r: serve(sessions, r))
    assert [r.url.path for r in second] == [JOIN_ROUTE]  # the session goes on


def test_a_server_without_the_token_gets_a_nonce_and_nothing_else() -> None:
    impostor, auth = Sessions("another-token", JOIN_ROUTE), JoinAuth(TOKEN, JOIN_ROUTE)
    flow = auth.auth_flow(httpx.Request("GET", URL, content=b"secret body"))
    challenge = next(flow)

    with pytest.raises(ProofError, match="did not prove that it holds the join token"):
        flow.send(serve(impostor, challenge))
    assert set(msgspec.json.decode(challenge.content)) == {"nonce"}


def test_a_call_without_the_token_or_replayed_is_refused() -> None:
    sessions = Sessions(TOKEN, JOIN_ROUTE)
    nonce = os.urandom(32).hex()
    ours = sessions.answer(Challenge(nonce)).nonce
    guessed = {SESSION_HEADER: f"{nonce}.{ours}", SEQ_HEADER: "1", MAC_HEADER: os.urandom(32).hex()}
    with pytest.raises(ProofError, match="signature is wrong"):
        sessions.verify("GET", b"/v1/cluster/join", guessed, b"")
    made_up = {**guessed, SESSION_HEADER: f"{nonce}.{os.urandom(40).hex()}"}  # a nonce it never issued
    with pytest.raises(ProofError, match="no session"):
        sessions.verify("GET", b"/v1/cluster/join", made_up, b"")

    auth = JoinAuth(TOKEN, JOIN_ROUTE)
    call = run(auth.auth_flow(httpx.Request("GET", URL)), lambda r: serve(sessions, r))[-1]
    with pytest.raises(ProofError, match="replayed"):
        sessions.verify(call.method, call.url.raw_path, call.headers, call.content)
    with pytest.raises(ProofError, match="signature is wrong"):  # the same session, another target
        sessions.verify(call.method, call.url.raw_path + b"0", call.headers, call.content)


def test_an_altered_answer_is_refused() -> None:
    sessions, auth = Sessions(TOKEN, JOIN_ROUTE), JoinAuth(TOKEN, JOIN_ROUTE)

    def altered(request: httpx.Request) -> httpx.Response:
        response = serve(sessions, request)
        if request.url.path.endswith("/auth"):
            return response
        return httpx.Response(200, content=b'{"spec":2}', headers=response.headers, request=request)

    with pytest.raises(ProofError, match="altered or is not the server's"):
        run(auth.auth_flow(httpx.Request("GET", URL)), altered)


def test_a_server_that_forgot_the_session_is_proven_again() -> None:
    auth, first = JoinAuth(TOKEN, JOIN_ROUTE), Sessions(TOKEN, JOIN_ROUTE)
    run(auth.auth_flow(httpx.Request("GET", URL)), lambda r: serve(first, r))
    restarted = Sessions(TOKEN, JOIN_ROUTE)
    sent = run(auth.auth_flow(httpx.Request("GET", URL)), lambda r: serve(restarted, r))

    assert [r.url.path for r in sent] == [JOIN_ROUTE, f"{JOIN_ROUTE}/auth", JOIN_ROUTE]


def test_what_ranks_present_and_logs_show_is_not_the_token() -> None:
    assert TOKEN not in hello_proof(TOKEN)
    assert hello_proof(TOKEN) != hello_proof("another")
    assert TOKEN not in fingerprint(TOKEN)


def test_a_generated_token_is_in_a_private_file_and_logged_by_fingerprint_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        token, path = server_token(HttpSettings(), tmp_path / ".jobs")

    assert path == tmp_path / ".jobs" / "join-token"
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in caplog.text
    assert fingerprint(token) in caplog.text
    given = tmp_path / "given"
    given.write_text("from-a-file\n")
    assert server_token(HttpSettings(join_token_file=str(given)), tmp_path) == ("from-a-file", given)
    assert server_token(HttpSettings(join_token="from-the-flag"), tmp_path) == ("from-the-flag", None)
