"""Hosts that bring their own groups (server process): the fleet behind one queue.

``para-attn-server join URL --group-size G`` registers its host (``HostOffer``); the server
checks it (version, plugins, devices, group size), gives each of its groups an index and a
``WorkerGroup`` whose executor is the host (``remote.RemoteExecutor``), and adds them to
the job service, which starts and supervises them like its own. The host follows its
``HostOrders`` (a long poll that doubles as its heartbeat) and reports its ranks' starts and
exits. A host is lost when it stops polling for ``--host-timeout`` seconds, or (sooner) when
its ranks' connections close: its groups leave and their jobs run again elsewhere. A host
that drains (SIGTERM to ``join``) finishes its jobs, then leaves. A host that joins under a
name in use replaces the earlier one, which is told so and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from para_attn_server.cluster.auth import Sessions
from para_attn_server.cluster.remote import RemoteExecutor
from para_attn_server.cluster.spec import (
    HOSTS_ROUTE,
    GroupOrder,
    HostAccepted,
    HostEvent,
    HostOffer,
    HostOrders,
    PluginDist,
    plugin_differences,
)
from para_attn_server.plugin.manager import version
from para_attn_server.views import HostStatus

if TYPE_CHECKING:
    from para_attn_server.engine.service import JobService
    from para_attn_server.workers.executor import Executor
    from para_attn_server.workers.group import WorkerGroup

log = logging.getLogger("para_attn_server.fleet")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
POLL_WAIT = 5.0  # the longest a host's long poll is held
KEPT_GONE = 32  # hosts that left or were lost, kept to answer their last polls
REPLACED = "replaced: another host joined under its name"

#: (index, executor, host name, the group's place on the host) -> the group
GroupFactory = Callable[[int, "Executor", str, int], "WorkerGroup"]


class HostRefusedError(Exception):
    """The host may not join: the message says why."""


class JoinedHost:
    def __init__(self, host_id: str, offer: HostOffer, group_size: int) -> None:
        self.id = host_id
        self.offer = offer
        self.name = offer.name
        self.group_size = group_size
        self.state = "serving"  # draining, left, lost, refused
        self.reason: str | None = None
        self.seq = 0
        self.last_seen = time.monotonic()
        self.groups: list[WorkerGroup] = []
        self.executors: dict[int, RemoteExecutor] = {}
        self._changed = asyncio.Event()

    def publish(self) -> None:
        """Its orders changed: answer its long poll."""
        self.seq += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


class Fleet:
    def __init__(
        self,
        service: JobService,
        join_token: str,
        plugins: list[PluginDist],
        new_group: GroupFactory,
        *,
        group_size: int,
        executor: str,
        executor_options: dict[str, str],
        host_timeout: float,
        drain_timeout: float,
        first_index: int,
    ) -> None:
        self.service = service
        self.join_token = join_token
        self.sessions = Sessions(join_token, HOSTS_ROUTE)
        self.plugins = plugins
        self.new_group = new_group
        self.group_size = group_size
        self.executor = executor
        self.executor_options = executor_options
        self.host_timeout = host_timeout
        self.drain_timeout = drain_timeout
        self.device: str | None = None  # the first host's; every other must match
        self.hosts: dict[str, JoinedHost] = {}  # by id
        self._next_index = first_index
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._watch = asyncio.create_task(self._watch_polls())

    async def close(self) -> None:
        for task in [self._watch, *self._tasks]:
            if task is not None:
                task.cancel()

    # ---- what the routes call ---------------------------------------------------------

    def register(self, offer: HostOffer) -> HostAccepted:
        """Add the host and its groups; ``HostRefusedError`` says why not."""
        refusal = self.refusal(offer)
        if refusal:
            raise HostRefusedError(refusal)
        self.device = self.device or offer.device
        for earlier in self.hosts.values():
            if earlier.name == offer.name and earlier.state in ("serving", "draining"):
                self._retire(earlier, "lost", REPLACED)
        host = JoinedHost(secrets.token_urlsafe(16), offer, self.group_size)
        self.hosts[host.id] = host
        for local in range(offer.num_devices // self.group_size):
            index, self._next_index = self._next_index, self._next_index + 1
            executor = RemoteExecutor(host.name, self.group_size, host.publish)
            host.executors[index] = executor
            host.groups.append(self.new_group(index, executor, host.name, local))
        self.service.hosts[host.name] = HostStatus(
            host.name, "serving", [], offer.num_devices, self.group_size, joined_at=time.time(),
            last_seen_s=host.last_seen,
        )  # fmt: skip
        for group in host.groups:
            self.service.add_group(group, refused=functools.partial(self._refuse, host))
        log.info("host %s joined: %d group(s) of %d", host.name, len(host.groups), self.group_size)
        self._forget_gone()
        return HostAccepted(host_id=host.id, orders=self.orders_of(host))

    def refusal(self, offer: HostOffer) -> str | None:
        """Why the host may not join, or None."""
        if offer.server_version != version():
            return f"para-attn-server {offer.server_version} here, {version()} on the server"
        differences = plugin_differences(self.plugins, offer.plugins)
        if differences:
            return "this host's plugins differ from the server's:\n  " + "\n  ".join(differences)
        if not HOST_NAME.fullmatch(offer.name):
            return f"--name {offer.name!r}: letters, digits, '.', '_' and '-', at most 63"
        size = offer.group_size or self.group_size
        if size != self.group_size:
            return f"--group-size {size}: the server's groups have {self.group_size} rank(s) (its --group-size)"
        if offer.num_devices < size or offer.num_devices % size:
            return f"--num-devices {offer.num_devices} is not a multiple of the group size {size}"
        if self.device is not None and offer.device != self.device:
            return f"this host's devices are {offer.device}; the fleet's are {self.device}"
        return None

    async def orders(self, host_id: str, after: int, wait: float) -> HostOrders:
        """The host's orders once they changed after ``after`` (or ``wait`` seconds passed).
        ``KeyError``: no such host (the server restarted since it joined)."""
        host = self.hosts[host_id]
        self._seen(host)  # when the poll came, not when it is answered: a host may die meanwhile
        if host.seq <= after and wait > 0 and host.state in ("serving", "draining"):
            # Held for a third of the host timeout at most: a live host asks again well before it.
            await host.changed(min(wait, POLL_WAIT, self.host_timeout / 3))
        return self.orders_of(host)

    def report(self, host_id: str, events: list[HostEvent]) -> None:
        host = self.hosts[host_id]
        self._seen(host)
        for event in events:
            executor = host.executors.get(event.group)
            if executor is not None:
                executor.report(event)

    def drain(self, host_id: str) -> HostOrders:
        """The host is leaving on purpose: its groups finish their jobs, then it leaves."""
        host = self.hosts[host_id]
        if host.state == "serving":
            log.info("host %s drains: its groups take no new job", host.name)
            self._retire(host, "left", "drained", drain=self.drain_timeout)
        return self.orders_of(host)

    def orders_of(self, host: JoinedHost) -> HostOrders:
        groups = [
            GroupOrder(group=group.index, local=local, spec=host.executors[group.index].spec)
            for local, group in enumerate(host.groups)
        ]
        return HostOrders(
            seq=host.seq, state=host.state, reason=host.reason, groups=groups, executor=self.executor,
            executor_options=self.executor_options, host_timeout=self.host_timeout,
        )  # fmt: skip

    # ---- hosts leaving ----------------------------------------------------------------

    def _refuse(self, host: JoinedHost, reason: str) -> None:
        """A group of the host failed its first setup: the host cannot serve this model."""
        self._retire(host, "refused", f"its first setup failed: {reason}")

    def _retire(self, host: JoinedHost, state: str, reason: str, drain: float | None = None) -> None:
        if host.state not in ("serving", "draining"):
            return
        host.state, host.reason = ("draining", None) if drain is not None else (state, reason)
        self._set_row(host)
        if drain is None:
            log.warning("host %s %s: %s; its groups leave and their jobs run elsewhere", host.name, state, reason)
            for executor in host.executors.values():
                executor.lose(f"{state}: {reason}")
        host.publish()
        task = asyncio.create_task(self._remove_groups(host, state, reason, drain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove_groups(self, host: JoinedHost, state: str, reason: str, drain: float | None) -> None:
        try:
            await asyncio.gather(
                *(self.service.remove_group(g, f"host {host.name} {reason}", drain) for g in host.groups)
            )
        except Exception:
            log.exception("host %s: removing its groups failed", host.name)
            raise
        if drain is not None:
            for executor in host.executors.values():
                executor.lose(f"{state}: {reason}")
            host.state, host.reason = state, reason
            log.info("host %s left: its groups finished their jobs", host.name)
        self._set_row(host)
        host.publish()

    async def _watch_polls(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for host in list(self.hosts.values()):
                silent = now - host.last_seen
                if host.state in ("serving", "draining") and silent > self.host_timeout:
                    self._retire(host, "lost", f"sent no poll for {silent:.0f} s")

    def _seen(self, host: JoinedHost) -> None:
        host.last_seen = time.monotonic()
        row = self.service.hosts.get(host.name)
        if row is not None and self._current(host):
            row.last_seen_s = host.last_seen

    def _set_row(self, host: JoinedHost) -> None:
        row = self.service.hosts.get(host.name)
        if row is not None and row.joined_at is not None and self._current(host):
            row.state, row.reason = host.state, host.reason

    def _current(self, host: JoinedHost) -> bool:
        """Whether ``host`` is the newest of its name (an earlier one's changes do not show)."""
        newest = [h for h in self.hosts.values() if h.name == host.name][-1]
        return newest is host

    def _forget_gone(self) -> None:
        gone = [h for h in self.hosts.values() if h.state not in ("serving", "draining")]
        for host in gone[: max(0, len(gone) - KEPT_GONE)]:
            del self.hosts[host.id]
