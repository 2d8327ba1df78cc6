"""The ``webhooks`` plugin: a job's events POSTed to a URL its request names.

A request may carry ``webhook`` (a URL) and ``webhook_events_filter`` (any of ``start``,
``progress``, ``completed``, Cog's names, and ``requeued``; all by default). The server then
POSTs the job, as ``GET /v1/jobs/{id}`` shows it, when it starts running, at its progress
steps (at most one a second, and the last one before it ends is never dropped), when a run
of it was cut short by a lost rank or host and it was queued again, and when it ended
(succeeded, failed, cancelled or expired). Each delivery is signed as Standard Webhooks specify
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` headers; verify them with
``standardwebhooks.Webhook(secret).verify(body, headers)``), and tried again with back-off
on a connection error or a 5xx (``--webhook-tries``, 3); a 4xx or a redirect is final.

The server sends to no host the operator did not list: ``--webhook-allow-host HOST`` or
``HOST:PORT`` (repeatable; ``HOST`` alone allows any port of it). With none listed, every
``webhook`` is refused (400 naming the field). Listing one needs the signing secret:
``--webhook-secret-file FILE`` or ``$PARA_ATTN_SERVER_WEBHOOK_SECRET`` (``--webhook-secret``
too, though ``ps`` shows a command line to every user; the variable's old name,
``$PARA_ATTN_WEBHOOK_SECRET``, is still read, with a warning).

Deliveries never hold up a job: each job's events go out in order from a task of their own,
and a webhook that fails is logged, never the job's failure.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol
from standardwebhooks import Webhook

from para_attn_server import Settings
from para_attn_server.plugin import (
    JobRecord,
    Jobs,
    JobState,
    hookimpl,
    job_view,
    parse_host,
    secret_from_file,
    version,
)

# httpx is imported where it is used (its cost: `python -m benchmarks --only micro`): rank
# processes load this plugin too, and never send anything.
log = logging.getLogger("para_attn_plugins.webhooks")

SECRET_ENV = "PARA_ATTN_SERVER_WEBHOOK_SECRET"
OLD_SECRET_ENV = "PARA_ATTN_WEBHOOK_SECRET"  # still read, with a warning: not the server's prefix
EVENTS = ("start", "progress", "completed", "requeued")
PROGRESS_INTERVAL = 1.0  # seconds between two progress deliveries of one job, at least
DEFAULT_PORTS = {"http": 80, "https": 443}

EventName = Literal["start", "progress", "completed", "requeued"]
WebhookField = (
    Annotated[
        str,
        msgspec.Meta(
            description="A URL the server POSTs the job to (as GET /v1/jobs/{id} shows it) at the events "
            "webhook_events_filter names, signed as Standard Webhooks specify. Only hosts the server's operator "
            "allows (--webhook-allow-host); any other is a 400.",
            min_length=1,
            max_length=2048,
        ),
    ]
    | None
)
EventsFilterField = Annotated[
    list[EventName],
    msgspec.Meta(
        description="Which events go to the webhook: start (the job started running), progress (at most one a "
        "second), completed (succeeded, failed or cancelled). All three when left out.",
        max_length=3,
    ),
]


class WebhookSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Webhooks: the hosts job events may be sent to, and the key that signs them."""

    webhook_secret: Annotated[
        str | None,
        msgspec.Meta(
            description="Standard Webhooks signing secret: whsec_ and the base64 of 24 to 64 random bytes "
            "(ps shows it: prefer the file or the variable)",
            extra={"env": SECRET_ENV, "old_env": OLD_SECRET_ENV, "metavar": "SECRET"},
        ),
    ] = None
    webhook_secret_file: Annotated[
        str | None,
        msgspec.Meta(
            description="read the webhook signing secret from this file (its first line)", extra={"metavar": "FILE"}
        ),
    ] = None
    webhook_allow_hosts: Annotated[
        list[str],
        msgspec.Meta(
            description="a host that webhooks may be sent to, HOST or HOST:PORT, repeatable (none: webhooks are "
            "refused)",
            extra={"flags": ["--webhook-allow-host"], "metavar": "HOST[:PORT]"},
        ),
    ] = []
    webhook_timeout: Annotated[float, msgspec.Meta(gt=0, description="seconds one delivery attempt may take")] = 10.0
    webhook_tries: Annotated[
        int, msgspec.Meta(ge=1, le=10, description="attempts per delivery (a connection error or 5xx is tried again)")
    ] = 3
    webhook_backoff: Annotated[
        float, msgspec.Meta(ge=0, description="seconds before the second attempt; doubles for each one after")
    ] = 1.0

    def __post_init__(self) -> None:
        for entry in self.webhook_allow_hosts:
            parse_host(entry, "webhook_allow_hosts")
        if self.webhook_secret_file is not None:
            if self.webhook_secret is not None:
                raise ValueError(
                    "webhook_secret_file: give the secret once: this file, or --webhook-secret (or its variable)"
                )
            try:
                self.webhook_secret = secret_from_file(self.webhook_secret_file)
            except ValueError as exc:
                raise ValueError(f"webhook_secret_file: {exc}") from None
        if self.webhook_secret is not None:
            check_secret(self.webhook_secret)
        elif self.webhook_allow_hosts:
            raise ValueError(f"webhook_secret: is needed to sign webhooks (or set ${SECRET_ENV})")


def check_secret(secret: str) -> None:
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not 24 <= len(key) <= 64:
        raise ValueError(
            "webhook_secret: must be whsec_ and the base64 of 24 to 64 random bytes; make one with: python3 -c "
            "'import base64, os; print(\"whsec_\" + base64.b64encode(os.urandom(32)).decode())'"
        )


class AllowedHosts:
    """The hosts an operator lets webhooks go to; ``check`` refuses any other URL."""

    def __init__(self, entries: list[str]) -> None:
        self.entries = [parse_host(entry, "webhook_allow_hosts") for entry in entries]

    def check(self, url: str | None) -> None:
        if url is None:
            return
        import httpx

        # httpx parses it here as it will when it sends: one parser decides both.
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise ValueError("is not a URL") from None
        if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
            raise ValueError("must be an http:// or https:// URL")
        port = parsed.port or DEFAULT_PORTS[parsed.scheme]
        if not any(host == parsed.host and allowed in (None, port) for host, allowed in self.entries):
            shown = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
            none = " (this server allows none)" if not self.entries else ""
            raise ValueError(f"{shown}:{port} is not an allowed webhook host{none}")


@hookimpl
def register_settings(register: Callable[[str, type[msgspec.Struct]], None]) -> None:
    register("webhooks", WebhookSettings)


@hookimpl
def register_request_fields(register: Callable[..., None], settings: Settings) -> None:
    allowed = AllowedHosts(settings.section(WebhookSettings).webhook_allow_hosts)
    register("webhook", WebhookField, None, allowed.check)
    register("webhook_events_filter", EventsFilterField, list(EVENTS))


@hookimpl
def register_routes(register: Callable[[Any], None], jobs: Jobs, settings: Settings) -> None:
    register(WebhooksPlugin(jobs, settings.section(WebhookSettings)))


class WebhooksPlugin(InitPluginProtocol):
    """One app's webhooks: a sender (its HTTP client) and its job listener, while the app runs."""

    def __init__(self, jobs: Jobs, settings: WebhookSettings) -> None:
        self.jobs = jobs
        self.settings = settings

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.lifespan.append(self.sending)
        return app_config

    @contextlib.asynccontextmanager
    async def sending(self, app: Litestar) -> AsyncIterator[None]:
        if self.settings.webhook_secret is None:  # no host allowed: nothing will be sent
            yield
            return
        sender = Sender(self.settings, self.settings.webhook_secret)
        remove = self.jobs.add_listener(sender.on_event)
        try:
            yield
        finally:
            remove()
            await sender.close()


def event_name(kind: str, record: JobRecord) -> str | None:
    """The webhook event a job event is, if any."""
    if kind in ("progress", "requeued"):
        return kind
    if kind == "state" and record.state is JobState.RUNNING:
        return "start"
    if kind == "state" and record.terminal:
        return "completed"
    return None  # queued, and kinds this plugin does not know


class Sender:
    """Signs and sends deliveries; one ``JobDeliveries`` per job with events in flight."""

    def __init__(self, settings: WebhookSettings, secret: str) -> None:
        import httpx

        self.settings = settings
        self.signer = Webhook(secret)
        self.client = httpx.AsyncClient(
            timeout=settings.webhook_timeout,
            follow_redirects=False,  # a redirect could lead to a host nobody allowed
            headers={"user-agent": f"para-attn-server/{version()}"},
        )
        self.jobs: dict[str, JobDeliveries] = {}

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
        await self.client.aclose()

    async def deliver(self, url: str, message_id: str, record: JobRecord) -> None:
        """POST the job's view; retried on a connection error or 5xx. Never raises."""
        import httpx

        body = msgspec.json.encode(job_view(record)).decode()
        where = httpx.URL(url).host
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
                response = await self.client.post(url, content=body, headers=headers)
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
        log.warning("job %s: webhook %s to %s not delivered %s (%s)", record.id, message_id, where, tries, problem)


class JobDeliveries:
    """One job's deliveries, sent in order by a task of their own. Progress waits at most
    one per ``PROGRESS_INTERVAL``: a newer step replaces one still waiting, and the one
    waiting when the job ends goes before ``completed``."""

    def __init__(self, sender: Sender, job_id: str, url: str) -> None:
        self.sender = sender
        self.job_id = job_id
        self.url = url
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
        loop = asyncio.get_running_loop()
        try:
            while True:
                self.wake.clear()
                if self.queue:
                    name, record = self.queue.popleft()
                elif self.progress is not None and loop.time() >= self.progress_after:
                    name, record, self.progress = "progress", self.progress, None
                elif self.progress is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), self.progress_after - loop.time())
                    continue
                elif self.ended:
                    return
                else:
                    await self.wake.wait()
                    continue
                if name == "progress":
                    self.progress_after = loop.time() + PROGRESS_INTERVAL
                self.sent += 1
                try:
                    await self.sender.deliver(self.url, f"job_{self.job_id}_{self.sent}", record)
                except Exception:  # a bug here must not lose the job's later deliveries
                    log.exception("job %s: webhook delivery failed", self.job_id)
        finally:
            if self.sender.jobs.get(self.job_id) is self:
                del self.sender.jobs[self.job_id]
