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

The server sends to no host the operator did not list: ``--webhook-allow-host HOST:PORT``
or ``HOST`` (repeatable; ``HOST`` alone allows the URL scheme's default port only: 80 for
http, 443 for https). With none listed, every ``webhook`` is refused (400 naming the
field). A job's host name is resolved once, at its first delivery, and all its deliveries
go to those addresses (``webhook_delivery``). Listing a host needs the signing secret:
``--webhook-secret-file FILE`` or ``$PARA_ATTN_SERVER_WEBHOOK_SECRET`` (``--webhook-secret``
too, though ``ps`` shows a command line to every user; the variable's old name,
``$PARA_ATTN_WEBHOOK_SECRET``, is still read, with a warning).

Deliveries never hold up a job: each job's events go out in order from a task of their own,
and a webhook that fails is logged, never the job's failure. A job that the server's start
ended (given up after restarts, ``failed: server restarted``; cancelled; its output gone)
sends its final ``completed`` once the app starts; so does a job whose ``completed`` an
earlier run owed when it died or stopped (ended, not yet delivered or given up: journaled).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol

from para_attn_plugins.webhook_delivery import DEFAULT_PORTS, JobDeliveries, Sender, event_name, log
from para_attn_server import Settings
from para_attn_server.plugin import Jobs, hookimpl, parse_host, secret_from_file

__all__ = ["AllowedHosts", "JobDeliveries", "Sender", "WebhookSettings", "event_name", "log"]

SECRET_ENV = "PARA_ATTN_SERVER_WEBHOOK_SECRET"
OLD_SECRET_ENV = "PARA_ATTN_WEBHOOK_SECRET"  # still read, with a warning: not the server's prefix
EVENTS = ("start", "progress", "completed", "requeued")
FINAL = "webhook:completed"  # the promise a job's final delivery is, until it went (Jobs.promise)

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
            description="a host that webhooks may be sent to, HOST:PORT or HOST (its scheme's default port "
            "only), repeatable (none: webhooks are refused)",
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
    """The hosts an operator lets webhooks go to; ``check`` refuses any other URL. ``HOST:PORT``
    allows that port; ``HOST`` alone the URL scheme's default port only, never every port."""

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
        default = DEFAULT_PORTS[parsed.scheme]
        if not any(host == parsed.host and port == (allowed or default) for host, allowed in self.entries):
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
        jobs = self.jobs
        sender = Sender(
            self.settings,
            self.settings.webhook_secret,
            restored=lambda job_id: _restored(jobs, job_id),
            promise=lambda job_id, owed: jobs.promise(job_id, FINAL, owed),
        )
        remove = jobs.add_listener(sender.on_event)
        # What the start decided, before this listener could hear it, and what an earlier run
        # owed when it died or stopped: each such job's final event.
        for job in jobs.find(lambda job: job.ended_at_start or FINAL in job.record.promises):
            sender.on_event("state", job.record)
        try:
            yield
        finally:
            remove()
            await sender.close()


def _restored(jobs: Jobs, job_id: str) -> bool:
    """Whether an earlier run of the server recorded the job."""
    job = jobs.get(job_id)
    return job is not None and job.restored
