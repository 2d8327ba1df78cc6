"""The cluster's routes: what ``para-attn-server join`` fetches and reports, and the fleet's status.

- ``GET /v1/cluster/join``: a group that spans hosts (``--nnodes`` > 1): its generation.
- ``/v1/cluster/hosts``: hosts that bring their own groups: register (POST), orders (a long
  poll, also the host's heartbeat), events (its ranks started, exited, stopped), drain.
- ``GET /v1/cluster``: every host with its groups, devices, state and runs (the API key's).

The join routes take no API key and no token: a joining host and the server first prove the
join token to each other (``POST .../auth``, ``cluster.auth``); every later call is signed
with the session's key, and so is every answer (``X-Join-Mac``), errors included.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.enums import MediaType
from litestar.exceptions import NotAuthorizedException, ValidationException
from litestar.params import QueryParameter

from para_attn_server.cluster.auth import AUTH, MAC_HEADER, Answer, Challenge, ProofError, Sessions, Signed
from para_attn_server.cluster.fleet import Fleet, HostRefusedError
from para_attn_server.cluster.rendezvous import ClusterHost
from para_attn_server.cluster.spec import (
    HOSTS_ROUTE,
    JOIN_ROUTE,
    HostAccepted,
    HostEvent,
    HostOffer,
    HostOrders,
    JoinSpec,
)
from para_attn_server.engine.status import host_rows
from para_attn_server.http.dependencies import Service
from para_attn_server.http.openapi import errors, spec
from para_attn_server.views import HostStatus

Cluster: TypeAlias = NamedDependency[ClusterHost]
FleetDep: TypeAlias = NamedDependency[Fleet]

After = Annotated[int, QueryParameter(ge=0, description="Answer once something later than this is launched")]
Wait = Annotated[float, QueryParameter(ge=0, le=60, description="Seconds to wait for that; then the current one")]
SIGNED = (
    f"A call signed with the session of `POST {AUTH}` (the join token's proof, never the token); "
    "its answer is signed too (X-Join-Mac)."
)
FORGOTTEN = "no such host (the server restarted since it joined)"


class ClusterView(msgspec.Struct):
    hosts: list[HostStatus]


def provide_cluster(cluster: ClusterHost | None, fleet: Fleet | None) -> dict[str, Provide]:
    provided: dict[str, Provide] = {}
    if cluster is not None:
        provided["cluster"] = Provide(lambda: cluster, sync_to_thread=False)
    if fleet is not None:
        provided["fleet"] = Provide(lambda: fleet, sync_to_thread=False)
    return provided


def _answer_challenge(sessions: Sessions, challenge: Challenge) -> Answer:
    try:
        return sessions.answer(challenge)
    except ProofError as exc:
        raise ValidationException(str(exc)) from None


async def _signed_call(request: Request[Any, Any, Any], sessions: Sessions) -> Signed:
    """The call's proof checked (a 401, unsigned, if it proves nothing)."""
    target = request.scope.get("raw_path") or request.scope["path"].encode()
    if query := request.scope.get("query_string"):
        target += b"?" + query
    try:
        return sessions.verify(request.method, target, request.headers, await request.body())
    except ProofError as exc:
        raise NotAuthorizedException(f"no proof of the join token: {exc}") from None


def _signed(signed: Signed, content: object, status: int = 200) -> Response[bytes]:
    body = b"" if content is None else msgspec.json.encode(content)
    mac = Sessions.sign(signed, status, body)
    return Response(body, status_code=status, media_type=MediaType.JSON, headers={MAC_HEADER: mac})


class ClusterController(Controller):
    path = JOIN_ROUTE
    tags = ("cluster",)

    @post(
        AUTH,
        summary="A joining host's challenge: the server proves the join token",
        status_code=200,
        responses={200: spec(Answer, "The server's nonce and proof"), **errors(400)},
        opt={"public": True},  # the join token's proof guards these routes instead of the API key
    )
    async def auth(self, cluster: Cluster, data: Challenge) -> Answer:
        return _answer_challenge(cluster.sessions, data)

    @get(
        "/",
        summary="The group's current generation, for a host that joins it",
        description=SIGNED,
        responses={200: spec(JoinSpec, "What the host's node needs"), **errors(401)},
        opt={"public": True},
    )
    async def join(
        self, request: Request[Any, Any, Any], cluster: Cluster, after: After = 0, wait: Wait = 0
    ) -> Response[bytes]:
        signed = await _signed_call(request, cluster.sessions)
        return _signed(signed, await cluster.join_spec(after, wait))


class FleetController(Controller):
    path = HOSTS_ROUTE
    tags = ("cluster",)
    opt = {"public": True}  # noqa: RUF012 (Litestar's own attribute) the token's proof guards it, not the API key

    @post(
        AUTH,
        summary="A joining host's challenge: the server proves the join token",
        status_code=200,
        responses={200: spec(Answer, "The server's nonce and proof"), **errors(400)},
    )
    async def auth(self, fleet: FleetDep, data: Challenge) -> Answer:
        return _answer_challenge(fleet.sessions, data)

    @post(
        "/",
        summary="Join with this host's own groups",
        description=SIGNED + " 409 says why a host may not join.",
        responses={201: spec(HostAccepted, "Its id and first orders"), **errors(401, 409)},
    )
    async def register(self, request: Request[Any, Any, Any], fleet: FleetDep, data: HostOffer) -> Response[bytes]:
        signed = await _signed_call(request, fleet.sessions)
        try:
            return _signed(signed, fleet.register(data), 201)
        except HostRefusedError as exc:
            return _signed(signed, {"error": str(exc)}, 409)

    @get(
        "/{host_id:str}/orders",
        summary="What the server wants this host to run (a long poll; also its heartbeat)",
        description=SIGNED,
        responses={200: spec(HostOrders, "Its orders"), **errors(401, 404)},
    )
    async def orders(
        self, request: Request[Any, Any, Any], fleet: FleetDep, host_id: str, after: After = 0, wait: Wait = 0
    ) -> Response[bytes]:
        signed = await _signed_call(request, fleet.sessions)
        try:
            return _signed(signed, await fleet.orders(host_id, after, wait))
        except KeyError:
            return _signed(signed, {"error": FORGOTTEN}, 404)

    @post(
        "/{host_id:str}/events",
        summary="What this host's ranks did: started, exited, stopped",
        description=SIGNED + " Answered 204, signed.",
        status_code=200,  # the answer is a signed Response of its own, 204 (Litestar's 204 takes no Response)
        responses={204: spec(None, "Taken"), **errors(401, 404)},
    )
    async def events(
        self, request: Request[Any, Any, Any], fleet: FleetDep, host_id: str, data: list[HostEvent]
    ) -> Response[bytes]:
        signed = await _signed_call(request, fleet.sessions)
        try:
            fleet.report(host_id, data)
        except KeyError:
            return _signed(signed, {"error": FORGOTTEN}, 404)
        return _signed(signed, None, 204)

    @post(
        "/{host_id:str}/drain",
        summary="This host leaves: its groups take no new job, finish theirs, then stop",
        description=SIGNED,
        status_code=200,
        responses={200: spec(HostOrders, "Its orders"), **errors(401, 404)},
    )
    async def drain(self, request: Request[Any, Any, Any], fleet: FleetDep, host_id: str) -> Response[bytes]:
        signed = await _signed_call(request, fleet.sessions)
        try:
            return _signed(signed, fleet.drain(host_id))
        except KeyError:
            return _signed(signed, {"error": FORGOTTEN}, 404)


@get(
    "/v1/cluster",
    summary="The hosts that serve: their groups, devices, state and job runs",
    tags=("cluster",),
    responses={200: spec(ClusterView, "Every host, the server's own first")},
)
async def cluster_status(service: Service) -> ClusterView:
    return ClusterView(host_rows(service))
