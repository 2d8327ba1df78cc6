"""Hook specifications: the reference documentation of the plugin contract.

A plugin is a module or object whose functions are marked with
``para_attn_server.hookimpl``; installed distributions expose plugins through the
``para_attn_server`` entry-point group::

    [project.entry-points.para_attn_server]
    my_model = "my_package.my_plugin"

Hooks run in two places. The *server process* calls ``register_*``, ``validate`` and
``job_state_changed``. Every *rank process* calls ``register_predictors``, ``setup`` and
``predict``. A predictor itself is a plain class (see ``para_attn_server.Predictor``);
core's built-in plugin turns its ``setup``/``validate``/``predict`` methods into the hook
calls below, so other plugins can add validators or wrap ``predict``
(``@hookimpl(wrapper=True)``, ``result = yield``) for timing, metrics or safety filters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .executor import Executor
    from .jobs import Job
    from .predictor import JobContext, Output, RankContext

PROJECT = "para_attn_server"
hookspec = pluggy.HookspecMarker(PROJECT)


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
        ``para_attn_server.executor.Executor``.

    Runs once in the server process.
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


@hookspec
def job_state_changed(job: Job) -> None:
    """Observe a job entering a new state (queued, running, succeeded, failed, cancelled).

    :param job: the job record; read it, do not change it.

    Runs in the server process, on the event loop: do not block.
    """


@hookspec
def register_routes(register: Callable[[Any], None]) -> None:
    """Add HTTP routes to the app: call ``register(handler)`` with Litestar route handlers,
    Controllers or Routers.

    :param register: call ``register(handler)`` once per handler, Controller or Router;
        they join the app's own routes (a path that clashes with one is a startup error).
        Like every route, they require the ``--api-key`` when one is set, except handlers
        whose ``opt`` has ``"public": True`` (for files that are not secret, such as a web
        page's HTML, scripts and styles).

    Runs once in the server process when the app is built.
    """
