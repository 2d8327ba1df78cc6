"""``join`` and the server prove the join token to each other; the token never crosses the wire.

The handshake (``POST <route>/auth``, ``AUTH``): ``join`` sends a fresh nonce; the server
answers a nonce of its own and HMAC(token, "server", route, both nonces). ``join`` checks that
proof before it sends anything else, so a fake server at its URL learns a nonce and nothing
more, and ``join`` exits 2. Every later call carries the session (both nonces), a sequence
number and HMAC(key, method, path and query, sequence, body digest), where the session's key
is HMAC(token, "session", both nonces): the call proves that ``join`` holds the token, and a
replayed call is refused. Every answer carries HMAC(key, "answer", the call's MAC, status,
body): ``join`` takes no answer the server did not sign, so a spec altered or replayed on the
way is refused. (What travels is signed, not hidden: TLS in front of the server hides it.)
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import msgspec

from para_attn_server.cluster.spec import JoinRefusedError
from para_attn_server.errors import ConfigurationError
from para_attn_server.settings import secret_from_file

if TYPE_CHECKING:
    from para_attn_server.settings import HttpSettings

AUTH = "/auth"  # under the join route and under the hosts route
SESSION_HEADER = "X-Join-Session"
SEQ_HEADER = "X-Join-Seq"
MAC_HEADER = "X-Join-Mac"
NONCE_BYTES = 32
SESSION_START_SECONDS = 60.0  # a server nonce older than this opens no new session
MAX_SESSIONS = 1024  # the least recently used goes first; only token holders open sessions
SEQ_WINDOW = 4096  # a call may arrive this far behind the newest (concurrent calls)
TOKEN_FILE = "join-token"  # a generated token, in the output directory's private directory
log = logging.getLogger("para_attn_server.cluster")


class ProofError(JoinRefusedError):
    """The other side did not prove that it holds the join token, or an answer was altered."""


class RouteMissingError(JoinRefusedError):
    """The server has no such join route (it takes no host of this kind)."""


class Challenge(msgspec.Struct, frozen=True):
    nonce: str  # hex, NONCE_BYTES


class Answer(msgspec.Struct, frozen=True):
    nonce: str  # the server's (hex)
    proof: str  # HMAC(token, "server", route, join's nonce, the server's nonce) (hex)


def mac(key: bytes, label: str, *parts: bytes | str) -> bytes:
    """HMAC-SHA256 over ``label`` and ``parts``, each length-prefixed (no two inputs collide)."""
    digest = hmac.new(key, digestmod=hashlib.sha256)
    for part in (label, *parts):
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(4, "big") + data)
    return digest.digest()


def hello_proof(token: str) -> str:
    """What a rank of a joined host presents in its hello (``RankSpec.join_token``): derived
    from the token, never the token itself."""
    return mac(token.encode(), "rank hello").hex()


def fingerprint(token: str) -> str:
    """A token's name in logs: enough to tell two apart, nothing to join with."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def server_token(http: HttpSettings, private_dir: Path) -> tuple[str, Path | None]:
    """The server's join token and the file it is in (None: given by flag or variable). None
    given: a new one, written to ``private_dir / TOKEN_FILE`` (0600), logged by fingerprint only."""
    if http.join_token_file is not None:
        if http.join_token:
            raise ConfigurationError("give the join token once: --join-token (or its variable) or --join-token-file")
        try:
            return secret_from_file(http.join_token_file), Path(http.join_token_file)
        except ValueError as exc:
            raise ConfigurationError(f"--join-token-file: {exc}") from None
    if http.join_token:
        return http.join_token, None
    token = secrets.token_urlsafe(32)
    private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = private_dir / TOKEN_FILE
    temporary = private_dir / f".tmp-{TOKEN_FILE}-{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, token.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    log.info(
        "generated a join token (%s) in %s, readable by this user only: copy it to each joining host",
        fingerprint(token),
        path,
    )
    return token, path


def _unhex(text: str | None, size: int | None = None) -> bytes | None:
    try:
        data = bytes.fromhex(text or "")
    except ValueError:
        return None
    return data if data and (size is None or len(data) == size) else None


# ---- the server's side -----------------------------------------------------------------------


@dataclass
class _Session:
    key: bytes
    top: int = 0
    seen: set[int] = field(default_factory=set)

    def take(self, seq: int) -> bool:
        """Whether ``seq`` is new (then it is remembered)."""
        if seq <= self.top - SEQ_WINDOW or seq in self.seen:
            return False
        self.seen.add(seq)
        if seq > self.top:
            self.top = seq
            self.seen = {s for s in self.seen if s > seq - SEQ_WINDOW}
        return True


@dataclass(frozen=True)
class Signed:
    """A call that proved the token: what its answer is signed with."""

    key: bytes
    call: bytes  # the call's MAC


class Sessions:
    """The server's sessions of one join route. A server nonce carries its issue time and a
    tag under this process's secret, so a stranger's challenges cost no memory here."""

    def __init__(self, token: str, route: str) -> None:
        self.token = token.encode()
        self.route = route + AUTH
        self._secret = os.urandom(32)
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()

    def answer(self, challenge: Challenge) -> Answer:
        theirs = _unhex(challenge.nonce, NONCE_BYTES)
        if theirs is None:
            raise ProofError("the nonce must be 32 bytes in hex")
        head = os.urandom(16) + int(time.time()).to_bytes(8, "big")
        ours = head + mac(self._secret, "nonce", theirs, head)[:16]
        return Answer(ours.hex(), mac(self.token, "server", self.route, theirs, ours).hex())

    def verify(self, method: str, target: bytes, headers: Mapping[str, str], body: bytes) -> Signed:
        """The call's signature checked; ``ProofError`` if it proves nothing or is replayed."""
        name = headers.get(SESSION_HEADER) or ""
        session = self._sessions.get(name) or self._start(name)
        seq_text = headers.get(SEQ_HEADER) or ""
        call = _unhex(headers.get(MAC_HEADER), 32)
        if session is None or not seq_text.isdigit() or call is None:
            raise ProofError("no session, sequence or signature")
        expected = mac(session.key, "call", method.upper(), target, seq_text, hashlib.sha256(body).digest())
        if not hmac.compare_digest(expected, call):
            raise ProofError("the call's signature is wrong")
        if not session.take(int(seq_text)):
            raise ProofError("a call replayed")
        if name not in self._sessions:
            self._sessions[name] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(name)
        return Signed(session.key, call)

    def _start(self, name: str) -> _Session | None:
        """A session from the nonces in ``name``, if this process issued the server's lately."""
        theirs_hex, _, ours_hex = name.partition(".")
        theirs, ours = _unhex(theirs_hex, NONCE_BYTES), _unhex(ours_hex, 40)
        if theirs is None or ours is None:
            return None
        head, tag = ours[:24], ours[24:]
        issued = int.from_bytes(head[16:], "big")
        if not hmac.compare_digest(tag, mac(self._secret, "nonce", theirs, head)[:16]):
            return None
        if not 0 <= time.time() - issued <= SESSION_START_SECONDS:
            return None
        return _Session(mac(self.token, "session", theirs, ours))

    @staticmethod
    def sign(signed: Signed, status: int, body: bytes) -> str:
        return mac(signed.key, "answer", signed.call, str(status), hashlib.sha256(body).digest()).hex()


# ---- join's side -----------------------------------------------------------------------------


class JoinAuth(httpx.Auth):
    """httpx's auth flow for the join routes (sync and async clients alike): the handshake
    when there is no session, the call signed, the answer checked; ``ProofError`` when the
    server proves nothing or an answer is not the server's."""

    requires_request_body = True
    requires_response_body = True

    def __init__(self, token: str, route: str) -> None:
        self.token = token.encode()
        self.route = route + AUTH
        self._session: tuple[str, bytes] | None = None  # (its header, its key)
        self._seq = 0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        for attempt in range(2):
            if self._session is None:
                nonce = os.urandom(NONCE_BYTES)
                challenge = httpx.Request(
                    "POST", request.url.copy_with(raw_path=self.route.encode()),
                    content=msgspec.json.encode(Challenge(nonce.hex())), headers={"Content-Type": "application/json"},
                )  # fmt: skip
                self._session = self._check_answer(challenge, (yield challenge), nonce)
            header, key = self._session
            self._seq += 1
            call = mac(key, "call", request.method, request.url.raw_path, str(self._seq), _digest(request.content))
            request.headers.update({SESSION_HEADER: header, SEQ_HEADER: str(self._seq), MAC_HEADER: call.hex()})
            response = yield request
            signature = _unhex(response.headers.get(MAC_HEADER), 32)
            if response.status_code == 401 and signature is None and attempt == 0:
                self._session = None  # the server forgot the session (it restarted): a new one
                continue
            if response.status_code == 401 and signature is None:
                raise ProofError(f"{request.url.host} refused this host's proof of the join token")
            expected = mac(key, "answer", call, str(response.status_code), _digest(response.content))
            if signature is None or not hmac.compare_digest(signature, expected):
                raise ProofError(
                    f"an answer from {request.url.host} was altered or is not the server's (status "
                    f"{response.status_code}, signature {'wrong' if signature else 'missing'}): refused"
                )
            return

    def _check_answer(self, challenge: httpx.Request, response: httpx.Response, nonce: bytes) -> tuple[str, bytes]:
        where = f"{challenge.url.scheme}://{challenge.url.netloc.decode()}"
        if response.status_code == 404:
            raise RouteMissingError(f"{where} has no {self.route}")
        if response.status_code >= 500 or response.status_code == 429:
            raise httpx.NetworkError(f"{where} answered {response.status_code}", request=challenge)
        try:
            answer = msgspec.json.decode(response.content, type=Answer)
        except msgspec.DecodeError:
            answer = Answer("", "")
        ours, proof = _unhex(answer.nonce, 40), _unhex(answer.proof, 32)
        if (
            ours is None
            or proof is None
            or not hmac.compare_digest(proof, mac(self.token, "server", self.route, nonce, ours))
        ):
            raise ProofError(
                f"{where} did not prove that it holds the join token: it is not the server, or the token here "
                "differs from the server's; it was sent a nonce, nothing more"
            )
        return f"{nonce.hex()}.{ours.hex()}", mac(self.token, "session", nonce, ours)


def _digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()
