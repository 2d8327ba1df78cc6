"""The models a server serves, planned from its settings before any rank starts.

One model from the flags (``--model``, ``--model-path``, ``-o``, ``--served-model-name``),
or several from ``[[models]]`` tables of ``--config``. For each: the predictor (named, or
found from the directory's pipeline class), the name requests and ``/v1/models`` use, its
options, and the devices its groups take. Every mistake is a ``ConfigurationError`` naming
the flag (or the table) and the reason.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from para_attn_server import modelpath
from para_attn_server.errors import ConfigurationError
from para_attn_server.legacy import as_predictor
from para_attn_server.options import MODEL_PATH

if TYPE_CHECKING:
    from para_attn_server.plugin.manager import Plugins
    from para_attn_server.predictor import Predictor
    from para_attn_server.settings import ModelEntry, Settings

DEFAULT_PREDICTOR = "tiny"


@dataclass
class ModelPlan:
    name: str  # what requests, /v1/models, the logs and the web page call it
    spec: str | None  # the predictor as the ranks resolve it (None: ``pickled``)
    predictor: Predictor  # the server process's instance
    pickled: bytes | None  # an instance handed to ParaAttentionServer, for the ranks
    options: dict[str, str]  # its -o values, model_path included
    num_devices: int | None  # ranks on this host (None: the server's default)
    devices: list[int] | None  # its CUDA devices, when the table names them
    group_size: int | None


def plan(settings: Settings, plugins: Plugins, instance: object | None = None) -> list[ModelPlan]:
    """The models to serve, the first the default; ``instance``: a predictor object handed
    to the Python entry (served alone)."""
    model = settings.model
    if model.models:
        given = [flag for flag, value in _single_flags(settings) if value]
        if given or instance is not None:
            what = ", ".join(given) or "a predictor object"
            raise ConfigurationError(f"[[models]] in --config lists the models: drop {what}")
        if settings.group.nnodes > 1:
            raise ConfigurationError("--nnodes > 1 serves one model: [[models]] cannot be used with it")
        plans = [_entry(entry, plugins, index) for index, entry in enumerate(model.models)]
        names = [p.name for p in plans]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ConfigurationError(f"[[models]]: the name {twice[0]!r} is given twice")
        return plans
    options = dict(model.options)
    if instance is not None:
        predictor = as_predictor(instance)
        name = model.served_model_name or _registered_name(plugins, predictor)
        if model.model_path and MODEL_PATH not in options:
            options[MODEL_PATH] = model.model_path
        return [ModelPlan(name, None, predictor, pickle.dumps(predictor), options, None, None, None)]
    spec, predictor, source = _resolve(plugins, model.model, model.model_path)
    if source is not None:
        options.setdefault(MODEL_PATH, source.path)
    named = model.model if model.model and ":" not in model.model else None  # a path is no name
    name = model.served_model_name or (source.name if source else named or _registered_name(plugins, predictor))
    return [ModelPlan(name, spec, predictor, None, options, None, None, None)]


def _single_flags(settings: Settings) -> list[tuple[str, Any]]:
    model = settings.model
    return [
        ("--model", model.model),
        ("--model-path", model.model_path),
        ("-o", model.options),
        ("--served-model-name", model.served_model_name),
    ]


def _entry(entry: ModelEntry, plugins: Plugins, index: int) -> ModelPlan:
    where = f"[[models]] {entry.name!r}"
    try:
        spec, predictor, source = _resolve(plugins, entry.model, entry.model_path)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    options = {key: value if isinstance(value, str) else json.dumps(value) for key, value in entry.options.items()}
    if source is not None:
        options.setdefault(MODEL_PATH, source.path)
    num = entry.num_devices
    if entry.devices is not None:
        if num is not None and num != len(entry.devices):
            raise ConfigurationError(f"{where}: num_devices {num} but {len(entry.devices)} devices listed")
        num = len(entry.devices)
    return ModelPlan(entry.name, spec, predictor, None, options, num or 1, entry.devices, entry.group_size)


def _resolve(
    plugins: Plugins, model: str | None, model_path: str | None
) -> tuple[str, Predictor, modelpath.ModelSource | None]:
    """The predictor's spec and instance, and the model directory when one is given."""
    source = modelpath.inspect(model_path) if model_path else None
    if model is None:
        model = modelpath.predictor_for(source, plugins.predictors()) if source else DEFAULT_PREDICTOR
    spec = plugins.normalize_model_spec(model)  # the form the ranks resolve (an absolute file path)
    predictor = plugins.resolve_predictor(spec)
    if source is not None:
        modelpath.check_fits(model, predictor, source)
    return spec, predictor, source


def _registered_name(plugins: Plugins, predictor: Predictor) -> str:
    """An instance's name: the one its class is registered under, else its class's."""
    cls = type(getattr(predictor, "inner", predictor))
    return next((name for name, known in sorted(plugins.predictors().items()) if known is cls), cls.__name__)
