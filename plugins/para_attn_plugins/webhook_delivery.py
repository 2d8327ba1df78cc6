"""Webhook deliveries: signed, in order per job, tried again, to addresses pinned per job.

A job's webhook host name is resolved once, when its first delivery is first tried, and
every later try and delivery of that job connects to those addresses (in the order
resolved, the next one on a refused connection): the name goes in ``Host`` and, for https,
as the TLS server name (SNI) that the certificate is checked against, but it is never
resolved again, so a DNS answer that changes mid-job (rebinding) moves no delivery. Each
job has a connection pool of its own, so a connection opened for one name never carries
another's; no proxy is used (a proxy would resolve the name itself).

Message ids (``webhook-id``) are ``job_<id>_<n>``, ``n`` counting the job's deliveries;
for a job an earlier run of the server recorded, ``job_<id>_<run>.<n>`` with ``run`` a
token of this run, so no id an earlier run used comes again (receivers deduplicate by it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import msgspec
from standardwebhooks import Webhook

from para_attn_server.plugin import JobRecord, JobState, job_view, version

if TYPE_CHECKING:
    import httpx

# httpx is imported where it is used (its cost: `python -m benchmarks --only micro`): rank
# processes load the webhooks plugin too, and never send anything.
log = logging.getLogger("para_attn_plugins.webhooks")

DEFAULT_PORTS = {"http": 80, "https": 443}
PROGRESS_INTERVAL = 1.0  # seconds between two progress deliveries of one job, at least

#: ``resolve(host, port)``: the addresses to connect to, in order (``getaddrinfo``'s).
Resolve = Callable[[str, int], Awaitable[list[str]]]


class Timing(Protocol):
    """What a sender needs of the settings (``webhooks.WebhookSettings``)."""

    webhook_timeout: float
    webhook_tries: int
    webhook_backoff: float


async def resolve(host: str, port: int) -> list[str]:
    """``host``'s addresses now, each once, in the order ``getaddrinfo`` gives them."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def event_name(kind: str, record: JobRecord) -> str | None:
    """The webhook event a job event is, if any."""
    if kind in ("progress", "requeued"):
        return kind
    if kind == "state" and record.state is JobState.RUNNING:
        return "start"
    if kind == "state" and record.terminal:
        return "completed"
    return None  # queued, and kinds this plugin does not know


class Unresolved(Exception):  # noqa: N818 (what happened, as the log says it)
    """The webhook's host name did not resolve (a later try resolves it again)."""


class Pinned:
    """A webhook URL and the addresses its host had at the first try that asked for them."""

    def __init__(self, url: str, resolver: Resolve) -> None:
        import httpx

        self.url = httpx.URL(url)
        self.port = self.url.port or DEFAULT_PORTS[self.url.scheme]
        self.resolver = resolver
        self.addresses: list[str] | None = None  # resolved once; a failed resolution is tried again

    async def post(self, client: httpx.AsyncClient, body: str, headers: dict[str, str]) -> httpx.Response:
        """POST to the first pinned address that takes the connection; ``Unresolved`` when the
        name does not resolve, httpx's errors otherwise."""
        import httpx

        if self.addresses is None:
            try:
                self.addresses = await self.resolver(self.url.host, self.port) or None
            except (OSError, UnicodeError):
                raise Unresolved from None
            if self.addresses is None:
                raise Unresolved
        headers = {**headers, "host": self.url.netloc.decode("ascii")}
        extensions = {"sni_hostname": self.url.host} if self.url.scheme == "https" else {}
        refused: httpx.ConnectError | None = None
        for address in self.addresses:
            url = self.url.copy_with(host=address)
            request = client.build_request("POST", url, content=body, headers=headers, extensions=extensions)
            try:
                return await client.send(request)
            except httpx.ConnectError as exc:
                refused = exc  # the next address, if any
        assert refused is not None
        raise refused


class Sender:
    """Signs and sends deliveries; one ``JobDeliveries`` per job with events in flight.

    ``restored(job_id)``: whether an earlier run of the server recorded the job (its message
    ids then carry this run's token). ``promise(job_id, owed)``: the job's final delivery is
    owed from when it ended until it was delivered or given up (``Jobs.promise``: journaled,
    so a server that dies in between sends it at its next start)."""

    def __init__(
        self,
        settings: Timing,
        secret: str,
        resolve: Resolve = resolve,
        restored: Callable[[str], bool] = lambda job_id: False,
        promise: Callable[[str, bool], None] = lambda job_id, owed: None,
    ) -> None:
        import httpx

        self.settings = settings
        self.signer = Webhook(secret)
        self.resolve = resolve
        self.restored = restored
        self.promise = promise
        self.run = secrets.token_hex(4)
        self.tls = httpx.create_ssl_context()  # made once, shared by every job's pool
        self.jobs: dict[str, JobDeliveries] = {}

    def client(self) -> httpx.AsyncClient:
        """A job's own connection pool."""
        import httpx

        return httpx.AsyncClient(
            verify=self.tls,
            trust_env=False,  # no proxy: it would resolve the name again
            timeout=self.settings.webhook_timeout,
            follow_redirects=False,  # a redirect could lead to a host nobody allowed
            headers={"user-agent": f"para-attn-server/{version()}"},
        )

    def on_event(self, kind: str, record: JobRecord) -> None:
        url = record.inputs.get("webhook")
        name = event_name(kind, record)
        if not url or name is None:
            return
        wanted = name in (record.inputs.get("webhook_events_filter") or ())
        deliveries = self.jobs.get(record.id)
        if deliveries is None:
            if not wanted:
                return
            deliveries = self.jobs[record.id] = JobDeliveries(self, record.id, url)
        if name == "completed" and wanted:
            self.promise(record.id, True)
        deliveries.add(name, record, wanted)

    async def close(self) -> None:
        """Give deliveries in flight up to one attempt's time to finish, then stop them."""
        pending = [deliveries.task for deliveries in self.jobs.values()]
        for deliveries in list(self.jobs.values()):
            deliveries.close()
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.settings.webhook_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def deliver(self, client: httpx.AsyncClient, target: Pinned, message_id: str, record: JobRecord) -> None:
        """POST the job's view; retried on a connection error or 5xx. Never raises."""
        import httpx

        body = msgspec.json.encode(job_view(record)).decode()
        problem, attempt = "", 0
        for attempt in range(1, self.settings.webhook_tries + 1):
            if attempt > 1:
                await asyncio.sleep(self.settings.webhook_backoff * 2 ** (attempt - 2))
            now = datetime.now(UTC)
            headers = {
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self.signer.sign(message_id, now, body),
            }
            try:
                response = await target.post(client, body, headers)
            except Unresolved:
                problem = "the name did not resolve"
                continue
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if response.is_success:
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500:
                break  # the receiver refused it: trying again would not change its mind
        # The URL's path and query may hold a token: the log names the host only.
        tries = f"after {attempt} tries" if attempt > 1 else "after 1 try"
        where = target.url.host
        log.warning("job %s: webhook %s to %s not delivered %s (%s)", record.id, message_id, where, tries, problem)


class JobDeliveries:
    """One job's deliveries, sent in order by a task of their own, to its pinned addresses.
    Progress waits at most one per ``PROGRESS_INTERVAL``: a newer step replaces one still
    waiting, and the one waiting when the job ends goes before ``completed``."""

    def __init__(self, sender: Sender, job_id: str, url: str) -> None:
        self.sender = sender
        self.job_id = job_id
        self.target = Pinned(url, sender.resolve)
        self.ids = f"job_{job_id}_{sender.run}." if sender.restored(job_id) else f"job_{job_id}_"
        self.queue: deque[tuple[str, JobRecord]] = deque()
        self.progress: JobRecord | None = None  # the latest step not yet sent
        self.progress_after = 0.0  # loop time before which no progress goes out
        self.ended = False
        self.sent = 0
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self.run(), name=f"webhooks {job_id}")

    def add(self, name: str, record: JobRecord, wanted: bool) -> None:
        """The job's next event; one not ``wanted`` (filtered out) still ends the deliveries
        when the job ended."""
        if name == "completed":
            self.close()
        if not wanted:
            return
        if name == "progress":
            self.progress = record
        else:
            self.queue.append((name, record))
        self.wake.set()

    def close(self) -> None:
        """No more events: send the progress step still waiting, if any, then stop."""
        if self.progress is not None:
            self.queue.append(("progress", self.progress))
            self.progress = None
        self.ended = True
        self.wake.set()

    async def run(self) -> None:
        client = self.sender.client()
        try:
            while (event := await self.next()) is not None:
                name, record = event
                self.sent += 1
                try:
                    await self.sender.deliver(client, self.target, f"{self.ids}{self.sent}", record)
                except Exception:  # a bug here must not lose the job's later deliveries
                    log.exception("job %s: webhook delivery failed", self.job_id)
                if name == "completed":  # delivered or given up; cancelled (a stop), it stays owed
                    self.sender.promise(self.job_id, False)
                if name == "progress":  # paced from the end of a delivery, so a slow one (the
                    # first resolves the name) cannot bring the next closer than the interval
                    self.progress_after = asyncio.get_running_loop().time() + PROGRESS_INTERVAL
        finally:
            if self.sender.jobs.get(self.job_id) is self:
                del self.sender.jobs[self.job_id]
            with contextlib.suppress(Exception):
                await client.aclose()

    async def next(self) -> tuple[str, JobRecord] | None:
        """The next event to send, once it is due; None once the job ended and all went."""
        loop = asyncio.get_running_loop()
        while True:
            self.wake.clear()
            if self.queue:
                return self.queue.popleft()
            if self.progress is not None and loop.time() >= self.progress_after:
                record, self.progress = self.progress, None
                return "progress", record
            if self.progress is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.progress_after - loop.time())
            elif self.ended:
                return None
            else:
                await self.wake.wait()
