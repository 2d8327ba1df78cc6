"""Loading plugins, and the typed face core code calls them through.

Core never calls ``pm.hook.*`` directly: ``Plugins`` wraps each hook in a typed method.
Entry points of the ``para_attn_server`` group load automatically unless the environment
variable ``PARA_ATTN_SERVER_DISABLE_PLUGIN_AUTOLOAD`` is set (tests register in-memory
plugins instead).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import types
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec
import pluggy

from para_attn_server.errors import ConfigurationError
from para_attn_server.legacy import as_predictor
from para_attn_server.plugin import builtins as core_plugin
from para_attn_server.plugin import hookspecs
from para_attn_server.plugin.markers import PROJECT
from para_attn_server.predictor import Predictor
from para_attn_server.schema import RequestField

if TYPE_CHECKING:
    from para_attn_server.plugin.jobs import Jobs
    from para_attn_server.predictor import JobContext, Output, RankContext
    from para_attn_server.records import JobRecord
    from para_attn_server.settings import Settings
    from para_attn_server.workers.executor import Executor

AUTOLOAD_ENV = "PARA_ATTN_SERVER_DISABLE_PLUGIN_AUTOLOAD"


class Plugins:
    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._predictors: dict[str, type[Any]] | None = None
        self._executors: dict[str, type[Executor]] | None = None

    @classmethod
    def load(cls, modules: Iterable[str | types.ModuleType | object] = (), *, autoload: bool | None = None) -> Plugins:
        """A plugin manager with core's built-in plugin, the entry points (unless disabled) and
        ``modules`` (module names, modules or plugin objects)."""
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(core_plugin, name="para_attn_server.plugin.builtins")
        if autoload is None:
            autoload = not os.environ.get(AUTOLOAD_ENV)
        if autoload:
            pm.load_setuptools_entrypoints(PROJECT)
        for module in modules:
            plugin = importlib.import_module(module) if isinstance(module, str) else module
            if not pm.is_registered(plugin):
                pm.register(plugin)
        # Fail fast on an implementation whose name matches no hook (a typo).
        pm.check_pending()
        return cls(pm)

    # ---- registries -------------------------------------------------------------------

    def predictors(self) -> dict[str, type[Any]]:
        if self._predictors is None:
            self._predictors = self._collect(self.pm.hook.register_predictors, "predictor")
        return self._predictors

    def executors(self) -> dict[str, type[Executor]]:
        if self._executors is None:
            self._executors = self._collect(self.pm.hook.register_executors, "executor")
        return self._executors

    def settings_sections(self) -> dict[str, type[msgspec.Struct]]:
        """The settings sections plugins add (``register_settings``), by name."""
        return self._collect(self.pm.hook.register_settings, "settings section")

    def routes(self, jobs: Jobs, settings: Settings) -> list[Any]:
        """Route handlers, Controllers, Routers and Litestar plugins that plugins add."""
        found: list[Any] = []
        self.pm.hook.register_routes(register=found.append, jobs=jobs, settings=settings)
        return found

    def request_fields(self, settings: Settings) -> list[RequestField]:
        """The request fields plugins add (``register_request_fields``), each with the name
        of the plugin that added it; a name registered twice is a ``ConfigurationError``."""
        found: dict[str, RequestField] = {}
        # Each implementation is called on its own, so every field knows its plugin.
        for impl in self.pm.hook.register_request_fields.get_hookimpls():

            def register(
                name: str, annotation: Any, default: Any = None, check: Any = None, plugin: str = impl.plugin_name
            ) -> None:
                if name in found:
                    raise ConfigurationError(
                        f"request field {name!r} is registered by plugins {found[name].plugin!r} and {plugin!r}"
                    )
                found[name] = RequestField(name, annotation, default, plugin, check)

            arguments = {"register": register, "settings": settings}
            impl.function(*(arguments[name] for name in impl.argnames))
        return list(found.values())

    def _collect(self, hook: Any, kind: str) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def register(name: str, cls: Any) -> None:
            if name in found and found[name] is not cls:
                raise ConfigurationError(f"{kind} {name!r} is registered twice: {found[name]!r} and {cls!r}")
            found[name] = cls

        hook(register=register)
        return found

    def resolve_predictor(self, spec: str) -> Predictor:
        """An instance of the predictor ``spec`` names (``--model``): a registered name, an
        entry point's name (``_`` and ``-`` alike), ``module:Class`` (importable, or a module
        of the current directory) or ``path/to/file.py:Class``. One written for the original
        server comes wrapped (``legacy.as_predictor``)."""
        if ":" in spec:
            where, _, attr = spec.rpartition(":")  # rpartition: a Windows path has a colon too
            module = _import_file(where) if _is_file(where) else _import_module(where)
            try:
                target = getattr(module, attr)
            except AttributeError:
                raise ConfigurationError(f"module {where!r} has no attribute {attr!r}") from None
        else:
            target = self.predictors()[self._predictor_name(spec)]
        predictor = target() if isinstance(target, type) else target
        if not (callable(getattr(predictor, "predict", None)) and callable(getattr(predictor, "setup", None))):
            raise ConfigurationError(f"{spec!r} is not a predictor: it needs setup() and predict() methods")
        return as_predictor(predictor)

    def normalize_model_spec(self, spec: str) -> str:
        """``spec`` as rank processes can resolve it too, wherever they run: a file's path
        made absolute, an entry point's name as the predictor's registered name (ranks load
        plugins by module, not by entry point); else ``spec`` itself."""
        if ":" in spec:
            where, _, attr = spec.rpartition(":")
            return f"{os.path.abspath(where)}:{attr}" if _is_file(where) else spec
        try:
            return self._predictor_name(spec)
        except ConfigurationError:
            return spec  # resolve_predictor tells what is wrong with it

    def _predictor_name(self, spec: str) -> str:
        """The registered name ``spec`` means: itself, the one it equals with ``_`` and ``-``
        alike, or the one predictor of the plugin (entry point) of that name."""
        predictors = self.predictors()
        if spec in predictors:
            return spec
        key = _normal(spec)
        alike = [name for name in predictors if _normal(name) == key]
        if not alike:
            plugins = [name for name, _ in self.pm.list_name_plugin() if _normal(name) == key]
            alike = [name for plugin in plugins for name in self._registered_by(plugin)]
        if len(alike) == 1:
            return alike[0]
        if alike:
            raise ConfigurationError(f"model {spec!r} is ambiguous: it may mean {', '.join(sorted(alike))}")
        known = ", ".join(sorted(predictors)) or "none installed"
        hint = f"; a file needs its class: {spec}:ClassName" if spec.endswith(".py") else ""
        raise ConfigurationError(f"unknown model {spec!r} (installed predictors: {known}){hint}")

    def _registered_by(self, plugin_name: str) -> list[str]:
        """The predictor names one plugin registers."""
        found: list[str] = []
        for impl in self.pm.hook.register_predictors.get_hookimpls():
            if impl.plugin_name == plugin_name:
                impl.function(register=lambda name, cls: found.append(name))
        return found

    def executor(self, name: str) -> type[Executor]:
        executors = self.executors()
        if name not in executors:
            raise ConfigurationError(f"unknown executor {name!r} (installed: {', '.join(sorted(executors))})")
        return executors[name]

    def module_names(self) -> list[str]:
        """The importable module plugins, for rank processes to load the same set."""
        return [
            plugin.__name__
            for plugin in self.pm.get_plugins()
            if isinstance(plugin, types.ModuleType) and plugin is not core_plugin
        ]

    # ---- hooks ------------------------------------------------------------------------

    def validate(self, predictor: Predictor, inputs: dict[str, Any]) -> None:
        self.pm.hook.validate(predictor=predictor, inputs=inputs)

    def batch_key(self, predictor: Predictor, inputs: dict[str, Any]) -> Hashable | None:
        """The key of the jobs ``inputs`` may share a ``predict_batch`` call with (None: none)."""
        key: Hashable | None = self.pm.hook.batch_key(predictor=predictor, inputs=inputs)
        return key

    def setup(self, predictor: Predictor, context: RankContext) -> None:
        self.pm.hook.setup(predictor=predictor, context=context)

    def predict(self, predictor: Predictor, job: JobContext) -> Output | None:
        result: Output | None = self.pm.hook.predict(predictor=predictor, job=job)
        return result

    def predict_batch(self, predictor: Predictor, job: JobContext) -> list[Output | None]:
        """Every job of ``job.batch`` run as one call: rank 0's outputs, one per job."""
        results: list[Output | None] | None = self.pm.hook.predict_batch(predictor=predictor, job=job)
        return [None] * len(job.batch) if results is None else results

    def job_state_changed(self, job: JobRecord) -> None:
        self.pm.hook.job_state_changed(job=job)

    # ---- introspection ----------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Installed plugins with distribution, version, hooks and what they register."""
        dists = {id(plugin): dist for plugin, dist in self.pm.list_plugin_distinfo()}
        predictors_by_module: dict[str, list[str]] = {}
        for name, cls in self.predictors().items():
            predictors_by_module.setdefault(getattr(cls, "__module__", ""), []).append(name)
        executors_by_module: dict[str, list[str]] = {}
        for name, cls in self.executors().items():
            executors_by_module.setdefault(cls.__module__, []).append(name)
        rows = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            dist = dists.get(id(plugin))
            module = getattr(plugin, "__name__", type(plugin).__module__)
            builtin = plugin is core_plugin
            rows.append(
                {
                    "name": name,
                    "module": module,
                    "distribution": dist.project_name if dist else ("para-attn-server" if builtin else None),
                    "version": dist.version if dist else (version() if builtin else None),
                    "hooks": sorted(hook.name for hook in self.pm.get_hookcallers(plugin) or []),
                    "predictors": sorted(predictors_by_module.get(module, [])),
                    "executors": sorted(executors_by_module.get(module, [])),
                }
            )
        return rows


def _normal(name: str) -> str:
    return name.replace("_", "-").lower()


def _is_file(where: str) -> bool:
    """Whether ``module:Class``'s first part is a file's path rather than a module name."""
    return where.endswith(".py") or "/" in where or os.sep in where


def _import_module(name: str) -> types.ModuleType:
    # The console script does not put the current directory on sys.path (python -m and
    # python -c do): add it, last, so that a module beside the operator imports as it would
    # with python, and an installed module of the same name still wins.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import predictor module {name!r}: {exc}") from exc


def _import_file(path: str) -> types.ModuleType:
    """The module of a ``.py`` file, imported once per process under a name made of its
    absolute path: ranks importing the same file give its classes the same module name."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigurationError(f"no predictor file {path!r}")
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"para_attn_server_file_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot import {path!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickle look it up there
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigurationError(f"cannot import predictor file {path!r}: {type(exc).__name__}: {exc}") from exc
    return module


def version() -> str:
    try:
        return importlib.metadata.version("para-attn-server")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
