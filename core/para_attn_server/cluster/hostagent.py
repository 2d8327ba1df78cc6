"""``para-attn-server join URL --group-size G``: this host's own groups in a server's fleet.

Every call is signed with the join token's proof and every answer checked (``auth``): a
server that cannot prove the token is told nothing and given nothing to run. The host
registers (``HostOffer``: its name, version, plugins, devices, group size) and then
keeps its groups as the server orders them (``HostOrders``, a long poll that is also its
heartbeat). Each group's ranks run here, started by the executor the server names, as the
server's own groups are; a new generation (the server restarted the group after a fault)
replaces the ranks of the last. What the ranks do (started, one exited, none left) goes back
as ``HostEvent``s.

SIGTERM drains: the server gives this host's groups no new job, lets them finish (past its
``--drain-timeout`` it stops their jobs and runs them elsewhere), stops them and answers
``left``; ``join`` then exits 0. A second SIGTERM stops the ranks at once. When the server
cannot be reached for its host timeout, or no longer knows this host (it restarted), the
ranks here stop and the host registers again, with back-off, until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import httpx
import msgspec

from para_attn_server.cluster.auth import JoinAuth, RouteMissingError, hello_proof
from para_attn_server.cluster.fleet import POLL_WAIT, REPLACED
from para_attn_server.cluster.spec import (
    HOSTS_ROUTE,
    GroupOrder,
    HostAccepted,
    HostEvent,
    HostOffer,
    HostOrders,
    JoinRefusedError,
    installed_plugins,
    network_spec,
    reachable,
)
from para_attn_server.logs import current_format
from para_attn_server.plugin.manager import Plugins, version
from para_attn_server.workers.executor import Executor

log = logging.getLogger("para_attn_server.join")
BACKOFF_MAX = 30.0
STOP_GRACE = 10.0
EXIT_SETTLE = 2.0  # after one rank exited, how long the others get before "stopped" is not said


class _ForgottenError(Exception):
    """The server no longer knows this host (it restarted)."""


class LocalGroup:
    """One of this host's groups: its ranks, one generation at a time."""

    def __init__(self, agent: HostAgent, index: int, executor: Executor) -> None:
        self.agent = agent
        self.index = index
        self.executor = executor
        self.generation = 0  # the last one launched
        self.running = False
        self._watch: asyncio.Task[None] | None = None

    async def apply(self, order: GroupOrder) -> None:
        spec = None if order.spec is None else network_spec(order.spec)
        if spec is None:
            await self.stop()
            return
        if spec.generation == self.generation:
            return
        await self.stop()
        spec = msgspec.structs.replace(
            spec,
            control_host=reachable(spec.control_host, self.agent.url),
            join_token=hello_proof(self.agent.token),
            node=self.agent.offer.name,
            log_format=current_format(),  # the ranks print to this host's output: its format
        )
        log.info("group %d: starting generation %d (%d rank(s))", self.index, spec.generation, spec.world_size)
        self.generation, self.running = spec.generation, True
        await self.executor.launch(spec)
        await self.agent.report(
            HostEvent(group=self.index, generation=spec.generation, kind="started", pids=self.executor.pids())
        )
        self._watch = asyncio.create_task(self._watch_exit(spec.generation))

    async def _watch_exit(self, generation: int) -> None:
        detail = await self.executor.wait_exit()
        # Draining, the ranks exit as told; otherwise an exit is a fault the server restarts.
        log.log(logging.INFO if self.agent.stopping.is_set() else logging.WARNING, "group %d: %s", self.index, detail)
        await self.agent.report(HostEvent(group=self.index, generation=generation, kind="exited", detail=detail))
        if await self.executor.wait_stopped(EXIT_SETTLE):
            self.running = False
            await self.agent.report(HostEvent(group=self.index, generation=generation, kind="stopped"))

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.running:
            self.running = False
            await self.executor.terminate(STOP_GRACE)
            log.info("group %d: generation %d stopped", self.index, self.generation)
            await self.agent.report(HostEvent(group=self.index, generation=self.generation, kind="stopped"))


class HostAgent:
    def __init__(self, url: str, token: str, num_devices: int, group_size: int | None, name: str) -> None:
        self.url = url if "://" in url else f"http://{url}"
        self.token = token
        self.plugins = Plugins.load()
        self.offer = HostOffer(
            name=name, server_version=version(), plugins=installed_plugins(self.plugins), num_devices=num_devices,
            group_size=group_size, device=_device_kind(),
        )  # fmt: skip
        self.http = httpx.AsyncClient(base_url=self.url, auth=JoinAuth(token, HOSTS_ROUTE), timeout=POLL_WAIT + 30)
        self.host_id = ""
        self.groups: dict[int, LocalGroup] = {}
        self.stopping = asyncio.Event()  # SIGTERM: drain, then leave

    async def run(self) -> None:
        """Serve until this host left (drained) or was refused (``JoinRefusedError``)."""
        while not self.stopping.is_set():
            accepted = await self._register()
            if accepted is None:  # stopped while the server was away
                return
            try:
                if await self._follow(accepted.host_id, accepted.orders):
                    return
            except _ForgottenError:
                log.warning("the server no longer knows this host (it restarted): joining again")
            finally:
                await self.stop_all()

    async def _register(self) -> HostAccepted | None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                response = await self.http.post(HOSTS_ROUTE, content=msgspec.json.encode(self.offer))
            except httpx.TransportError as exc:
                log.warning("cannot reach %s (%s); trying again in %.0f s", self.url, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            except RouteMissingError:
                raise JoinRefusedError(_refusal(self.url, httpx.Response(404))) from None
            if response.status_code == 201:
                accepted = msgspec.json.decode(response.content, type=HostAccepted)
                size = self.offer.num_devices // max(1, len(accepted.orders.groups))
                log.info(
                    "joined %s as %s: %d group(s) of %d", self.url, self.offer.name, len(accepted.orders.groups), size
                )
                return accepted
            raise JoinRefusedError(_refusal(self.url, response))
        return None

    async def _follow(self, host_id: str, orders: HostOrders) -> bool:
        """Keep this host's groups as ordered; True once it left, False when the server lost it."""
        self.host_id = host_id
        last_answer = time.monotonic()
        drain_asked = False
        while True:
            if orders.state == "refused" or (orders.state == "lost" and orders.reason == REPLACED):
                raise JoinRefusedError(f"the server took this host out: {orders.reason}")
            if orders.state in ("left", "lost"):
                log.log(
                    logging.INFO if orders.state == "left" else logging.WARNING,
                    "this host %s: %s",
                    orders.state,
                    orders.reason,
                )
                return orders.state == "left"
            await self._apply(orders)
            if self.stopping.is_set() and not drain_asked:
                drain_asked = True
                log.info("draining: the groups here finish their jobs, then leave")
                orders = await self._call("POST", f"{HOSTS_ROUTE}/{host_id}/drain") or orders
                continue
            poll = asyncio.ensure_future(
                self._call("GET", f"{HOSTS_ROUTE}/{host_id}/orders", params={"after": orders.seq, "wait": POLL_WAIT})
            )
            waits: set[asyncio.Future[Any]] = {poll}
            if not drain_asked:  # a SIGTERM meanwhile asks for the drain at once
                waits.add(asyncio.ensure_future(self.stopping.wait()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits - {poll}:
                waiting.cancel()
            if not poll.done():
                poll.cancel()
                continue
            answer = poll.result()
            if answer is not None:
                orders, last_answer = answer, time.monotonic()
            elif time.monotonic() - last_answer > orders.host_timeout:
                log.warning("no answer from %s for %.0f s: this host counts as lost", self.url, orders.host_timeout)
                return False
            else:
                await asyncio.sleep(1.0)

    async def _call(self, method: str, path: str, **kwargs: object) -> HostOrders | None:
        """The server's orders (None: it could not be reached); ``_ForgottenError`` on a 404."""
        try:
            response = await self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError:
            return None
        if response.status_code == 404:
            raise _ForgottenError
        if response.status_code != 200:
            raise JoinRefusedError(_refusal(self.url, response))
        return msgspec.json.decode(response.content, type=HostOrders)

    async def _apply(self, orders: HostOrders) -> None:
        ordered = {order.group: order for order in orders.groups}
        for index in [i for i in self.groups if i not in ordered]:
            await self.groups.pop(index).stop()
        for order in orders.groups:
            if order.group not in self.groups:
                cls = self.plugins.executor(orders.executor)
                executor = cls(self.offer.num_devices // len(orders.groups), cls.parse_options(orders.executor_options))
                self.groups[order.group] = LocalGroup(self, order.group, executor)
        await asyncio.gather(*(self.groups[order.group].apply(order) for order in orders.groups))

    async def report(self, event: HostEvent) -> None:
        """Tell the server; lost if it cannot be reached (its own watch notices the ranks)."""
        with contextlib.suppress(httpx.TransportError):
            await self.http.post(f"{HOSTS_ROUTE}/{self.host_id}/events", content=msgspec.json.encode([event]))

    async def stop_all(self) -> None:
        groups, self.groups = list(self.groups.values()), {}
        await asyncio.gather(*(group.stop() for group in groups))


def _device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _refusal(url: str, response: httpx.Response) -> str:
    if response.status_code == 404:
        return (
            f"{url} takes no joining hosts: start it with --join-token (or --num-devices 0) for hosts with groups "
            "of their own, or with --nnodes > 1 for one group across hosts"
        )
    try:
        detail = msgspec.json.decode(response.content).get("error", response.text)
    except (msgspec.DecodeError, AttributeError):
        detail = response.text[:200]
    return f"{url} refused this host: {detail}"


async def serve_host(url: str, token: str, num_devices: int, group_size: int | None, name: str) -> int:
    """Run this host's groups until drained (0), refused (2) or stopped twice (1)."""
    agent = HostAgent(url, token, num_devices, group_size, name)
    main = asyncio.current_task()
    assert main is not None

    def on_signal() -> None:
        if agent.stopping.is_set():
            main.cancel()  # a second signal: stop at once
        agent.stopping.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await agent.run()
        return 0
    except JoinRefusedError as exc:
        log.error("refused: %s", exc)
        return 2
    except asyncio.CancelledError:
        log.warning("stopped at once: the ranks here are stopped")
        return 1
    finally:
        await agent.stop_all()
        await agent.http.aclose()
