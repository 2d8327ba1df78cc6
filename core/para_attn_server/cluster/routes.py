"""The cluster's routes: what ``para-attn-server join`` fetches and reports, and the fleet's status.

- ``GET /v1/cluster/join``: a group that spans hosts (``--nnodes`` > 1): its generation.
- ``/v1/cluster/hosts``: hosts that bring their own groups: register (POST), orders (a long
  poll, also the host's heartbeat), events (its ranks started, exited, stopped), drain.
- ``GET /v1/cluster``: every host with its groups, devices, state and runs (the API key's).

The join routes need the join token (``X-Join-Token``), not the API key: a joining host is an
operator's machine, not an API client, and what it gets holds the generation's control token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any, TypeAlias

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.params import QueryParameter

from para_attn_server.cluster.fleet import Fleet, HostRefusedError
from para_attn_server.cluster.rendezvous import ClusterHost
from para_attn_server.cluster.spec import (
    HOSTS_ROUTE,
    JOIN_ROUTE,
    JOIN_TOKEN_HEADER,
    HostAccepted,
    HostEvent,
    HostOffer,
    HostOrders,
    JoinSpec,
)
from para_attn_server.engine.status import host_rows
from para_attn_server.http.dependencies import Service
from para_attn_server.http.errors import Conflict
from para_attn_server.http.openapi import errors, spec
from para_attn_server.views import HostStatus

Cluster: TypeAlias = NamedDependency[ClusterHost]
FleetDep: TypeAlias = NamedDependency[Fleet]

After = Annotated[int, QueryParameter(ge=0, description="Answer once something later than this is launched")]
Wait = Annotated[float, QueryParameter(ge=0, le=60, description="Seconds to wait for that; then the current one")]
TOKEN_ONLY = f"Needs the join token in the {JOIN_TOKEN_HEADER} header (not the API key)."


class ClusterView(msgspec.Struct):
    hosts: list[HostStatus]


def provide_cluster(cluster: ClusterHost | None, fleet: Fleet | None) -> dict[str, Provide]:
    provided: dict[str, Provide] = {}
    if cluster is not None:
        provided["cluster"] = Provide(lambda: cluster, sync_to_thread=False)
    if fleet is not None:
        provided["fleet"] = Provide(lambda: fleet, sync_to_thread=False)
    return provided


def _check(authorized: bool) -> None:
    if not authorized:
        raise NotAuthorizedException(f"missing or wrong join token ({JOIN_TOKEN_HEADER})")


@contextlib.contextmanager
def _joined_host(request: Request[Any, Any, Any], fleet: Fleet) -> Iterator[None]:
    """A joined host's call: its token checked, an unknown host id a 404."""
    _check(fleet.authorized(request.headers.get(JOIN_TOKEN_HEADER)))
    try:
        yield
    except KeyError:
        raise NotFoundException("no such host (the server restarted since it joined)") from None


class ClusterController(Controller):
    path = JOIN_ROUTE
    tags = ("cluster",)

    @get(
        "/",
        summary="The group's current generation, for a host that joins it",
        description=TOKEN_ONLY,
        responses={200: spec(JoinSpec, "What the host's node needs"), **errors(401)},
        opt={"public": True},  # the join token guards it instead of the API key
    )
    async def join(
        self, request: Request[Any, Any, Any], cluster: Cluster, after: After = 0, wait: Wait = 0
    ) -> JoinSpec:
        _check(cluster.authorized(request.headers.get(JOIN_TOKEN_HEADER)))
        return await cluster.join_spec(after, wait)


class FleetController(Controller):
    path = HOSTS_ROUTE
    tags = ("cluster",)
    opt = {"public": True}  # noqa: RUF012 (Litestar's own attribute) the join token guards it, not the API key

    @post(
        "/",
        summary="Join with this host's own groups",
        description=TOKEN_ONLY + " 409 says why a host may not join.",
        responses={201: spec(HostAccepted, "Its id and first orders"), **errors(401, 409)},
    )
    async def register(self, request: Request[Any, Any, Any], fleet: FleetDep, data: HostOffer) -> HostAccepted:
        _check(fleet.authorized(request.headers.get(JOIN_TOKEN_HEADER)))
        try:
            return fleet.register(data)
        except HostRefusedError as exc:
            raise Conflict(str(exc)) from None

    @get(
        "/{host_id:str}/orders",
        summary="What the server wants this host to run (a long poll; also its heartbeat)",
        description=TOKEN_ONLY,
        responses={200: spec(HostOrders, "Its orders"), **errors(401, 404)},
    )
    async def orders(
        self, request: Request[Any, Any, Any], fleet: FleetDep, host_id: str, after: After = 0, wait: Wait = 0
    ) -> HostOrders:
        with _joined_host(request, fleet):
            return await fleet.orders(host_id, after, wait)

    @post(
        "/{host_id:str}/events",
        summary="What this host's ranks did: started, exited, stopped",
        description=TOKEN_ONLY,
        status_code=204,
        responses=errors(401, 404),
    )
    async def events(
        self, request: Request[Any, Any, Any], fleet: FleetDep, host_id: str, data: list[HostEvent]
    ) -> None:
        with _joined_host(request, fleet):
            fleet.report(host_id, data)

    @post(
        "/{host_id:str}/drain",
        summary="This host leaves: its groups take no new job, finish theirs, then stop",
        description=TOKEN_ONLY,
        status_code=200,
        responses={200: spec(HostOrders, "Its orders"), **errors(401, 404)},
    )
    async def drain(self, request: Request[Any, Any, Any], fleet: FleetDep, host_id: str) -> HostOrders:
        with _joined_host(request, fleet):
            return fleet.drain(host_id)


@get(
    "/v1/cluster",
    summary="The hosts that serve: their groups, devices, state and job runs",
    tags=("cluster",),
    responses={200: spec(ClusterView, "Every host, the server's own first")},
)
async def cluster_status(service: Service) -> ClusterView:
    return ClusterView(host_rows(service))
