"""The plugin face: everything a plugin may use beside ``para_attn_server`` itself.

A plugin's imports are its contract. First-party plugins (``para_attn_plugins``) and
predictors (``para_attn_predictors``) import only ``para_attn_server`` (its ``__all__``)
and the names below; tests/unit/test_boundaries.py holds them to it. Anything else in the
core may change without notice. The hooks themselves are documented in ``hookspecs.py``;
a plugin module is found through the ``para_attn_server`` entry-point group::

    [project.entry-points.para_attn_server]
    my_plugin = "my_package.my_plugin"

Every plugin
    ``hookimpl`` (mark hook implementations; also ``para_attn_server.hookimpl``),
    ``version()`` (the server's version), ``secret_from_file(path)`` (a secret setting kept
    out of ``ps``: a file's first line, as ``--api-key-file`` reads it), ``parse_host(entry,
    setting)`` (an allow-list entry, ``HOST`` or ``HOST:PORT``, as (host, port or None)),
    ``heap()`` (what this process's allocators hold now: a ``Heap``, or None off glibc).

Executor plugins (``register_executors``)
    ``Executor`` (the contract to subclass), ``RankSpec`` (what each rank gets) and
    ``RANK_SPEC_ENV`` (the variable that carries it to processes started by another
    program), ``rank_main(spec, rank, local_rank)`` (a rank process's entry point),
    ``listening_socket`` and ``hosted_store`` (a rendezvous store on a socket bound here),
    ``die_with`` (a process killed when another exits: ranks end with who started them),
    ``agent_command`` (torch elastic's agent command line, as ``join`` runs it).

Route plugins (``register_routes``)
    ``Jobs`` (the app's jobs: submit, find, wait for, cancel and forget them, read their
    outputs, ``jobs.adapters``: the ``Adapters`` (LoRA) requests may apply) and
    ``JobsDependency`` (what a handler annotates its ``jobs`` parameter with to get it),
    ``Job`` (a job handle), ``InputSchema`` (the request schema's type);
    ``decode(jobs, body)`` and ``invalid(validation_error)`` (request bodies checked as
    every route checks them, ``InputError`` naming the field), ``output_response(jobs, job)``
    and ``file_of(jobs, job)`` (a job's output, from memory or its checked file);
    ``spec``, ``Doc`` and ``ERROR_DESCRIPTIONS`` (the OpenAPI document's entries),
    ``ERROR_HANDLERS`` (the app's exception handlers by type, to answer as the core does)
    and ``NAMED_FIELD`` (the pattern that finds the field msgspec's message names).

Listener plugins (``job_state_changed``, ``Jobs.add_listener``)
    ``JobRecord`` (a job's immutable record), ``JobState``, ``JobView`` and ``job_view``
    (a record as ``GET /v1/jobs/{id}`` shows it); ``GroupStatus``, ``HostStatus`` and
    ``ModelStatus`` (a worker group, a host and a served model in ``Jobs.metrics()``) and
    ``ADAPTER_LOAD_BUCKETS`` (its adapter load-time counts' bounds).

Names load on first use (``__getattr__``): rank processes import this package for the
markers and must not load Litestar or the job service with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from para_attn_server.plugin.markers import hookimpl

if TYPE_CHECKING:
    from para_attn_server.adapters import LOAD_BUCKETS as ADAPTER_LOAD_BUCKETS
    from para_attn_server.adapters import Adapters
    from para_attn_server.allocator import heap
    from para_attn_server.cluster.spec import agent_command
    from para_attn_server.engine.registry import Job
    from para_attn_server.hosts import parse_host
    from para_attn_server.http.bodies import invalid
    from para_attn_server.http.dependencies import JobsDependency
    from para_attn_server.http.errors import HANDLERS as ERROR_HANDLERS
    from para_attn_server.http.errors import NAMED_FIELD
    from para_attn_server.http.openapi import ERROR_DESCRIPTIONS, Doc, spec
    from para_attn_server.plugin.jobs import Jobs
    from para_attn_server.plugin.manager import version
    from para_attn_server.plugin.routes import decode, file_of, output_response
    from para_attn_server.rank.worker import main as rank_main
    from para_attn_server.records import JobRecord, JobState
    from para_attn_server.schema import InputSchema
    from para_attn_server.settings import secret_from_file
    from para_attn_server.views import GroupStatus, HostStatus, JobView, ModelStatus, job_view
    from para_attn_server.workers.executor import (
        RANK_SPEC_ENV,
        Executor,
        RankSpec,
        die_with,
        hosted_store,
        listening_socket,
    )

# name -> "module:attribute" where it is defined; imported on first access.
_LAZY = {
    "version": "para_attn_server.plugin.manager:version",
    "secret_from_file": "para_attn_server.settings:secret_from_file",
    "parse_host": "para_attn_server.hosts:parse_host",
    "heap": "para_attn_server.allocator:heap",
    # executor plugins
    "Executor": "para_attn_server.workers.executor:Executor",
    "RankSpec": "para_attn_server.workers.executor:RankSpec",
    "RANK_SPEC_ENV": "para_attn_server.workers.executor:RANK_SPEC_ENV",
    "hosted_store": "para_attn_server.workers.executor:hosted_store",
    "listening_socket": "para_attn_server.workers.executor:listening_socket",
    "die_with": "para_attn_server.workers.executor:die_with",
    "agent_command": "para_attn_server.cluster.spec:agent_command",
    "rank_main": "para_attn_server.rank.worker:main",
    # route plugins
    "Jobs": "para_attn_server.plugin.jobs:Jobs",
    "Adapters": "para_attn_server.adapters:Adapters",
    "JobsDependency": "para_attn_server.http.dependencies:JobsDependency",
    "Job": "para_attn_server.engine.registry:Job",
    "InputSchema": "para_attn_server.schema:InputSchema",
    "decode": "para_attn_server.plugin.routes:decode",
    "invalid": "para_attn_server.http.bodies:invalid",
    "output_response": "para_attn_server.plugin.routes:output_response",
    "file_of": "para_attn_server.plugin.routes:file_of",
    "spec": "para_attn_server.http.openapi:spec",
    "Doc": "para_attn_server.http.openapi:Doc",
    "ERROR_DESCRIPTIONS": "para_attn_server.http.openapi:ERROR_DESCRIPTIONS",
    "ERROR_HANDLERS": "para_attn_server.http.errors:HANDLERS",
    "NAMED_FIELD": "para_attn_server.http.errors:NAMED_FIELD",
    # listener plugins
    "JobRecord": "para_attn_server.records:JobRecord",
    "JobState": "para_attn_server.records:JobState",
    "JobView": "para_attn_server.views:JobView",
    "job_view": "para_attn_server.views:job_view",
    "GroupStatus": "para_attn_server.views:GroupStatus",
    "HostStatus": "para_attn_server.views:HostStatus",
    "ModelStatus": "para_attn_server.views:ModelStatus",
    "ADAPTER_LOAD_BUCKETS": "para_attn_server.adapters:LOAD_BUCKETS",
}

__all__ = [
    "ADAPTER_LOAD_BUCKETS",
    "ERROR_DESCRIPTIONS",
    "ERROR_HANDLERS",
    "NAMED_FIELD",
    "RANK_SPEC_ENV",
    "Adapters",
    "Doc",
    "Executor",
    "GroupStatus",
    "HostStatus",
    "InputSchema",
    "Job",
    "JobRecord",
    "JobState",
    "JobView",
    "Jobs",
    "JobsDependency",
    "ModelStatus",
    "RankSpec",
    "agent_command",
    "decode",
    "die_with",
    "file_of",
    "heap",
    "hookimpl",
    "hosted_store",
    "invalid",
    "job_view",
    "listening_socket",
    "output_response",
    "parse_host",
    "rank_main",
    "secret_from_file",
    "spec",
    "version",
]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = where.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
