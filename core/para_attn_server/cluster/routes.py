"""The join route: what ``para-attn-server join`` fetches to start its host's node.

Present only with ``--nnodes`` > 1. It needs the join token (``X-Join-Token``), not the API
key: a joining host is an operator's machine, not an API client, and the spec it gets holds
the generation's control token.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias

from litestar import Controller, Request, get
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException
from litestar.params import QueryParameter

from para_attn_server.cluster.rendezvous import ClusterHost
from para_attn_server.cluster.spec import JOIN_ROUTE, JOIN_TOKEN_HEADER, JoinSpec
from para_attn_server.http.openapi import errors, spec

Cluster: TypeAlias = NamedDependency[ClusterHost]

After = Annotated[int, QueryParameter(ge=0, description="Answer once a generation later than this one is launched")]
Wait = Annotated[float, QueryParameter(ge=0, le=60, description="Seconds to wait for that; then the current one")]


def provide_cluster(cluster: ClusterHost) -> dict[str, Provide]:
    def provide() -> ClusterHost:
        return cluster

    return {"cluster": Provide(provide, sync_to_thread=False)}


class ClusterController(Controller):
    path = JOIN_ROUTE
    tags = ("cluster",)

    @get(
        "/",
        summary="The group's current generation, for a host that joins it",
        description=f"Needs the join token in the {JOIN_TOKEN_HEADER} header (not the API key).",
        responses={200: spec(JoinSpec, "What the host's node needs"), **errors(401)},
        opt={"public": True},  # the join token guards it instead of the API key
    )
    async def join(
        self, request: Request[Any, Any, Any], cluster: Cluster, after: After = 0, wait: Wait = 0
    ) -> JoinSpec:
        if not cluster.authorized(request.headers.get(JOIN_TOKEN_HEADER)):
            raise NotAuthorizedException(f"missing or wrong join token ({JOIN_TOKEN_HEADER})")
        return await cluster.join_spec(after, wait)
