"""Hook specifications: the reference documentation of the plugin contract.

A plugin is a module or object whose functions are marked with
``para_attn_server.hookimpl``; installed distributions expose plugins through the
``para_attn_server`` entry-point group::

    [project.entry-points.para_attn_server]
    my_model = "my_package.my_plugin"

Hooks run in two places. The *server process* calls ``register_*``, ``validate``,
``batch_key`` and ``job_state_changed``. Every *rank process* calls ``register_predictors``,
``setup``, ``predict`` and ``predict_batch``. A predictor itself is a plain class (see
``para_attn_server.Predictor``); core's built-in plugin turns its
``setup``/``validate``/``batch_key``/``predict``/``predict_batch`` methods into the hook
calls below, so other plugins can add validators or wrap ``predict``
(``@hookimpl(wrapper=True)``, ``result = yield``) for timing, metrics or safety filters.

What a plugin may import is ``para_attn_server`` and the face ``para_attn_server.plugin``
(its docstring lists what it offers, by kind of plugin); the types below are named there.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from para_attn_server.plugin.markers import hookspec

if TYPE_CHECKING:
    import msgspec

    from para_attn_server.plugin.jobs import Jobs
    from para_attn_server.predictor import JobContext, Output, RankContext
    from para_attn_server.records import JobRecord
    from para_attn_server.settings import Settings
    from para_attn_server.workers.executor import Executor


@hookspec
def register_predictors(register: Callable[[str, type[Any]], None]) -> None:
    """Offer predictor classes under the names ``--model`` selects them by.

    :param register: call ``register(name, PredictorClass)`` once per predictor. A name
        registered twice is a startup error naming both plugins.

    Runs once per process (server and every rank) when the plugin manager loads.
    """


@hookspec
def register_executors(register: Callable[[str, type[Executor]], None]) -> None:
    """Offer executor classes under the names ``--executor`` selects them by.

    :param register: call ``register(name, ExecutorClass)``; the class must subclass
        ``para_attn_server.plugin.Executor``.

    Runs once in the server process.
    """


@hookspec
def register_settings(register: Callable[[str, type[msgspec.Struct]], None]) -> None:
    """Add a section of settings to the server's settings tree.

    :param register: call ``register(section_name, StructClass)``; every field of the
        msgspec Struct (its type, default, ``Meta`` limits and ``description``) becomes a
        command-line flag ``--field-name`` and a keyword of ``ParaAttentionServer``. A field
        name or flag that another section already has is a startup error naming both.

    Runs once in the server process, before the command line is parsed. Read the values
    with ``settings.section(StructClass)`` (in ``register_routes``, say).
    """


@hookspec
def register_routes(register: Callable[[Any], None], jobs: Jobs, settings: Settings) -> None:
    """Add HTTP routes (or Litestar plugins) to the app.

    :param register: call ``register(obj)`` with Litestar route handlers, Controllers or
        Routers, or with Litestar plugins (``InitPluginProtocol``); each app gets what this
        call registers, so per-app state (a metrics registry) lives in those objects. A path
        that clashes with another route is a startup error.
    :param jobs: the app's jobs (``para_attn_server.plugin.Jobs``: submit, find, wait for,
        cancel and forget jobs, read their outputs, add a job listener); handlers also receive
        it as the dependency ``jobs`` (annotate it ``para_attn_server.plugin.JobsDependency``).
    :param settings: every setting, plugin sections included.

    Runs once in the server process for each app built. Like every route, plugin routes
    require the ``--api-key`` when one is set, except handlers whose ``opt`` has
    ``"public": True`` (files that are not secret, such as a web page's HTML and scripts).
    Routes that speak another API's error shape name their 401 in ``opt``:
    ``"unauthorized_body"`` (JSON bytes) and ``"unauthorized_response"`` (its OpenAPI entry).
    """


@hookspec
def register_request_fields(register: Callable[..., None], settings: Settings) -> None:
    """Add fields of the server's own to every request schema (as ``webhook``).

    :param register: call ``register(name, annotation, default, check=None)``. ``annotation``
        is a type as ``predict``'s parameters have (``Annotated[str, msgspec.Meta(...)]``;
        its ``description`` is what /schema shows); ``default`` is the value of a request
        that leaves the field out; ``check(value)``, if given, runs on every request after
        decoding and raises ``ValueError(reason)`` to refuse it with a 400 naming the field.
        The field is in the job's inputs (``JobRecord.inputs``) for the server's plugins,
        and is removed before the inputs go to the ranks: ``predict`` never gets it. A name
        that ``predict`` already has as a parameter, or that another plugin registered, is a
        startup error naming the field and the plugin.
    :param settings: every setting, plugin sections included (a check may need them).

    Runs once in the server process, when the request schema is built at startup.
    """


@hookspec
def validate(predictor: Any, inputs: dict[str, Any]) -> None:
    """Check a request's inputs before the job is queued. All implementations run.

    :param predictor: the predictor instance the server process holds (never set up:
        the server process loads no weights).
    :param inputs: the request fields, already decoded and type-checked against the
        schema derived from ``predict``'s signature; mutate nothing.
    :raises para_attn_server.InputError: with the field name and the reason; the client
        gets a 400 with that message and nothing is queued.

    Runs in the server process, in the request handler: keep it fast.
    """


@hookspec(firstresult=True)
def batch_key(predictor: Any, inputs: dict[str, Any]) -> Hashable | None:
    """Say which queued jobs may run together as one ``predict_batch`` call. The first
    non-None result wins; the built-in implementation, which runs last, asks the predictor
    (``Predictor.batch_key``), so a plugin's key overrides it and a wrapper
    (``@hookimpl(wrapper=True)``) may replace whatever the others said, None included.

    :param predictor: the predictor instance the server process holds (never set up).
    :param inputs: a validated job's inputs, as ``validate`` gets them; mutate nothing.
    :returns: a hashable key: jobs whose keys are equal may share one call (None: never).

    Runs in the server process, after ``validate``: keep it fast.
    """


@hookspec
def setup(predictor: Any, context: RankContext) -> None:
    """Prepare one rank: build the pipeline, move it to the device, parallelize it.

    :param predictor: this rank's predictor instance.
    :param context: rank, world size, device and the operator's ``--option`` values.

    Runs once in every rank process after ``torch.distributed`` is initialised (a
    predictor written for the original server initialises it itself). An exception on any
    rank fails the start: at first start the server exits non-zero naming the error.
    """


@hookspec(firstresult=True)
def predict(predictor: Any, job: JobContext) -> Output | None:
    """Run one job on this rank. The first non-None result wins.

    :param predictor: this rank's predictor instance.
    :param job: the job's id, inputs and the collective step hook
        (``job.step(k, total)``) that reports progress and applies cancellation.
    :returns: on rank 0, the job's ``Output``; on other ranks, ``None``.

    Runs on every rank with the same inputs; every rank must make the same sequence of
    collective calls. Wrappers (``@hookimpl(wrapper=True)``) see every rank's call.
    """


@hookspec(firstresult=True)
def predict_batch(predictor: Any, job: JobContext) -> list[Output | None] | None:
    """Run a batch of jobs as one call on this rank. The first non-None result wins.

    :param predictor: this rank's predictor instance.
    :param job: the batch's context: ``job.batch`` holds each job's ``predict`` keyword
        arguments and ``job.job_ids`` their ids, leader first; ``job.step(k, total)`` is one
        step boundary for the whole batch (a cancel stops all of it).
    :returns: on rank 0, one ``Output`` per job, in order (None fails that job alone); on
        other ranks, a list of None (or None).

    Runs on every rank with the same inputs, as ``predict`` does, for the jobs that
    ``batch_key`` put together; every rank must make the same sequence of collective calls.
    """


@hookspec
def job_state_changed(job: JobRecord) -> None:
    """Observe a job entering a new state (queued, running, succeeded, failed, cancelled).

    :param job: the job's record as of this change (immutable).

    Runs in the server process, on the event loop: do not block.
    """
