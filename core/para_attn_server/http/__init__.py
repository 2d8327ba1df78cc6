"""The HTTP layer: Litestar controllers that translate requests into job-service calls and
the service's answers into responses. Every decision is the service's.

- ``original``: the original server's endpoints, with the codes its clients rely on;
- ``v1``: the resource API under ``/v1/jobs``; ``loras``: the adapters under ``/v1/loras``;
- ``health``: liveness and readiness probes;
- ``errors``: exceptions to answers, keyed by type; ``auth``: the API key;
- ``openapi``: the document at /schema; ``bodies``: strict request decoding;
- ``policy``: without an API key, what keeps other sites' pages from driving the server.

The request body type is derived from the predictor's ``predict`` signature and given to
Litestar through ``signature_namespace``, so Litestar both checks it (400 naming the field)
and documents it. Plugins add routes (``register_routes``).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar
from litestar.logging.config import BaseLoggingConfig
from litestar.plugins import InitPluginProtocol

from para_attn_server.cluster.fleet import Fleet
from para_attn_server.cluster.rendezvous import ClusterHost
from para_attn_server.cluster.routes import ClusterController, FleetController, cluster_status, provide_cluster
from para_attn_server.engine.service import JobService
from para_attn_server.http import errors, openapi
from para_attn_server.http.auth import api_key_middleware
from para_attn_server.http.dependencies import provide
from para_attn_server.http.health import HealthController
from para_attn_server.http.loras import LorasController
from para_attn_server.http.models import ModelSchemaController
from para_attn_server.http.original import OriginalController
from para_attn_server.http.policy import keyless_middleware
from para_attn_server.http.v1 import JobsController
from para_attn_server.plugin.jobs import Jobs
from para_attn_server.settings import Settings

DEFAULT_MAX_BODY = 10 * 1024 * 1024


def create_app(
    service: JobService,
    settings: Settings | None = None,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    debug: bool = False,
    cluster: ClusterHost | None = None,
    fleet: Fleet | None = None,
) -> Litestar:
    """The app over ``service``. Plugins add routes and Litestar plugins (``register_routes``),
    given ``settings`` (their defaults when None). ``cluster``: the join route is served;
    ``fleet``: hosts may join with their own groups."""
    settings = settings or Settings()
    jobs = Jobs(service)  # what plugins get: the face, never the service itself
    added = service.plugins.routes(jobs, settings)
    litestar_plugins = [obj for obj in added if isinstance(obj, InitPluginProtocol)]
    routes = [obj for obj in added if not isinstance(obj, InitPluginProtocol)]
    routes.append(cluster_status)
    if cluster is not None:
        routes.append(ClusterController)
    if fleet is not None:
        routes.append(FleetController)
    if service.schema.adapters is not None:
        routes.append(LorasController)
    app = Litestar(
        [OriginalController, JobsController, HealthController, ModelSchemaController, *routes],
        plugins=litestar_plugins,
        dependencies={**provide(service, jobs), **provide_cluster(cluster, fleet)},
        signature_namespace={"InputBody": service.schema.type, "JobService": JobService, "Jobs": Jobs},
        middleware=[api_key_middleware(api_key) if api_key else keyless_middleware(settings.http.public_url)],
        request_max_body_size=max_body_bytes,
        exception_handlers=errors.HANDLERS,
        openapi_config=openapi.config(api_key=bool(api_key)),
        logging_config=SharedLogging(),
        debug=debug,
    )
    # The body decoder refuses unknown fields (unless predict takes **kwargs): the document says so too.
    body = service.schema.type.__name__
    openapi.finish(app, api_key=bool(api_key), body=body, closed=not service.schema.accepts_extra)
    openapi.mark_media(app, body, service.schema.media_fields)
    return app


class SharedLogging(BaseLoggingConfig):
    """Litestar's "litestar" logger, as every other: through the process's handler and format
    (``logs.configure_logging``). Litestar's own config would replace the root's handlers
    with its own, in its own format. Errors are logged by ``errors`` (every 500), not here."""

    def __init__(self) -> None:
        self.log_exceptions = "never"
        self.exception_logging_handler = None
        self.traceback_line_limit = -1
        self.disable_stack_trace: set[int | type[Exception]] = set()

    def configure(self) -> Any:
        return logging.getLogger

    @staticmethod
    def set_level(logger: Any, level: int) -> None:
        # Litestar sets INFO (DEBUG with debug=True): the level of the process holds instead.
        logger.setLevel(level if level == logging.DEBUG else logging.NOTSET)
