"""The request schema, derived from the predictor's ``predict`` signature.

The server decodes every request body into this msgspec Struct, so unknown fields,
missing fields, wrong types and ``Meta`` limits fail with msgspec's message, which names
the field; Litestar renders the same type into the OpenAPI document.

Besides ``predict``'s parameters every schema has the server's own fields: ``output_path``
and the fields plugins add (``register_request_fields``, such as ``webhook``). Those are
the server's: they are checked when a request is decoded and never reach ``predict``.
A predictor that ``supports_loras`` gets one more, ``loras`` (see ``adapters``): the server
checks its names and the ranks receive each adapter with its path (``JobContext.loras``).
"""

from __future__ import annotations

import copy
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from para_attn_server.adapters import LORAS, Adapters, Lora, request_annotation
from para_attn_server.errors import ConfigurationError, InputError
from para_attn_server.media import MediaField, media_field, wire_annotation

OUTPUT_PATH = "output_path"
# Which served model runs the request (a server with several): the server's, never predict's.
MODEL = "model"
ModelField = Annotated[
    str | None,
    msgspec.Meta(description="The served model to run it (GET /v1/models); omitted: the server's first"),
]
# The scheduling fields every request has (the core's built-in plugin registers them).
PRIORITY = "priority"
MAX_QUEUE_SECONDS = "max_queue_seconds"
# Added to every schema: the server writes the output there, confined to --output-dir.
OutputPathField = (
    Annotated[
        str,
        msgspec.Meta(
            description="Where to write the output, relative to the server's --output-dir: '/' separators, "
            "no '..' or hidden ('.'-prefixed) components, none over 255 bytes, not through a symlink out of the "
            "directory, not an existing directory. Anything else is a 400 and nothing is written.",
            min_length=1,
            max_length=1024,
        ),
    ]
    | None
)


@dataclass(frozen=True)
class RequestField:
    """A request field a plugin adds for the server's own use (``register_request_fields``).

    ``check(value)`` runs on every decoded request; a ``ValueError`` it raises is a 400
    naming the field, with the error's message as the reason."""

    name: str
    annotation: Any
    default: Any
    plugin: str
    check: Callable[[Any], None] | None = None


class InputSchema:
    """The request type of one predictor and how its fields map onto ``predict``."""

    def __init__(
        self,
        predictor: object,
        request_fields: Sequence[RequestField] = (),
        adapters: Adapters | None = None,
        defaults: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        """``adapters``: the server's registered adapters (its schema checks ``loras``'
        names); None on a rank, whose ``loras`` carry their paths. ``defaults``: request
        defaults over ``predict``'s (``-o defaults``), each checked against its field.
        ``model``: the served model's name (the ``model`` field names it), None on a rank."""
        source = getattr(predictor, "request_function", None)
        predict = source() if callable(source) else getattr(predictor, "predict", None)
        if not callable(predict):
            raise TypeError(f"{type(predictor).__name__} has no predict method")
        signature = inspect.signature(predict)
        try:
            hints = typing.get_type_hints(predict, include_extras=True)
        except Exception:  # unresolvable forward references: fall back to Any
            hints = {}
        defaults = _checked_defaults(defaults or {}, signature, hints)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        self.accepts_extra = False
        self.predict_params: set[str] = set()
        self.media_fields: dict[str, MediaField] = {}  # pictures and videos: strings on the wire
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                self.accepts_extra = True
                continue
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            self.predict_params.add(name)
            annotation = hints.get(name, Any)
            media = media_field(name, annotation)
            if media is not None:
                self.media_fields[name] = media
                annotation = wire_annotation(media)
            if name == OUTPUT_PATH:
                # Whatever predict declares, the server confines this path before anything runs.
                fields.append((name, OutputPathField, None))
            elif name in defaults:
                fields.append((name, annotation, _default(defaults[name])))
            elif param.default is inspect.Parameter.empty:
                fields.append((name, annotation))
            else:
                fields.append((name, annotation, _default(param.default)))
        self.predict_takes_output_path = OUTPUT_PATH in self.predict_params
        if not self.predict_takes_output_path:
            fields.append((OUTPUT_PATH, OutputPathField, None))
        self.name = model
        if MODEL in self.predict_params:
            raise ConfigurationError(
                f"{type(predictor).__name__}.predict takes {MODEL!r}, the server's field naming the served model: "
                "rename the parameter"
            )
        fields.append((MODEL, ModelField, None))
        self.server_fields = {field.name: field for field in request_fields}
        for field in request_fields:
            if field.name in self.predict_params or field.name in (OUTPUT_PATH, LORAS, MODEL):
                owner = f"{type(getattr(predict, '__self__', predictor)).__qualname__}.predict"
                raise ConfigurationError(
                    f"request field {field.name!r} of plugin {field.plugin!r} clashes with a parameter of {owner}: "
                    "rename the parameter or leave that plugin out"
                )
            fields.append((field.name, field.annotation, _default(field.default)))
        self.adapters = adapters
        self.takes_loras = bool(getattr(predictor, "supports_loras", False))
        if self.takes_loras:
            if LORAS in self.predict_params:
                raise ConfigurationError(f"{type(predictor).__name__} supports_loras: predict must not take {LORAS!r}")
            annotation = request_annotation(adapters.max_per_request) if adapters is not None else list[Lora]
            fields.append((LORAS, annotation, _default([])))
        self.type: type[msgspec.Struct] = msgspec.defstruct(
            f"{type(getattr(predict, '__self__', predictor)).__name__}Input",
            fields,
            kw_only=True,
            forbid_unknown_fields=not self.accepts_extra,
        )
        self._decoder = msgspec.json.Decoder(self.type)

    def decode_json(self, body: bytes) -> dict[str, Any]:
        """Decode and check a JSON body; raises ``msgspec.ValidationError`` naming the field,
        or ``InputError`` when a plugin's field check refuses its value."""
        inputs = self.to_inputs(self._decoder.decode(body))
        self.check_fields(inputs)
        return self.with_extras(inputs, msgspec.json.decode(body)) if self.accepts_extra else inputs

    def check_fields(self, inputs: dict[str, Any]) -> None:
        """Run the plugins' checks of their fields (a webhook's host, ...): every way a
        request's inputs come in must pass here. ``InputError`` names the field refused."""
        if self.adapters is not None and inputs.get(LORAS):
            self.adapters.check(inputs[LORAS])
        for field in self.server_fields.values():
            if field.check is not None:
                try:
                    field.check(inputs[field.name])
                except ValueError as exc:
                    raise InputError(str(exc), field.name) from None

    def rank_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs the ranks get: without the fields plugins added for the server, and
        with each adapter's path (``InputError`` if one is no longer registered)."""
        sent = {k: v for k, v in inputs.items() if k not in self.server_fields and k != MODEL}
        if self.adapters is not None and sent.get(LORAS):
            sent = sent | {LORAS: self.adapters.resolve(sent[LORAS])}
        return sent

    def check_stored(self, inputs: dict[str, Any]) -> None:
        """Check a stored job's inputs against this schema (a job recovered after a restart:
        the model and adapters served now may differ); raises as ``convert`` and ``check_fields``."""
        self.convert({k: v for k, v in inputs.items() if k not in self.server_fields})
        if self.adapters is not None and inputs.get(LORAS):
            self.adapters.check(inputs[LORAS])

    def convert(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Rebuild typed inputs from plain values: their msgpack form on the ranks, a
        multipart form's text (``msgspec.ValidationError`` names the field). A media field
        may hold a file's bytes (a multipart part): those pass as they are, for the server
        to check with the rest of the request's pictures."""
        files = {name: raw[name] for name in self.media_fields if _is_file(raw.get(name))}
        # A placeholder of the wire type stands in for the bytes while the rest is converted.
        typed = raw | {name: ["file"] * len(v) if isinstance(v, list) else "file" for name, v in files.items()}
        inputs = self.with_extras(self.to_inputs(msgspec.convert(typed, self.type, strict=False)), raw)
        return inputs | files

    def with_extras(self, inputs: dict[str, Any], raw: object) -> dict[str, Any]:
        """Add the raw fields beyond the named parameters, for a ``predict(**kwargs)``:
        msgspec drops unknown fields, but the original's predictors read them from kwargs."""
        if not self.accepts_extra or not isinstance(raw, dict):
            return inputs
        return inputs | {k: v for k, v in raw.items() if k not in inputs}

    @staticmethod
    def to_inputs(obj: msgspec.Struct) -> dict[str, Any]:
        inputs = {name: getattr(obj, name) for name in obj.__struct_fields__}
        if inputs.get(MODEL, "") is None:  # not chosen: the inputs of a one-model server stay as they were
            del inputs[MODEL]
        if inputs.get(LORAS):  # plain values, as the journal keeps them and the ranks get them
            inputs[LORAS] = msgspec.to_builtins(inputs[LORAS])
        return inputs

    def predict_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The subset of ``inputs`` that ``predict`` accepts (drops the server's own fields)."""
        if self.accepts_extra:
            kwargs = dict(inputs)
            if not self.predict_takes_output_path:
                kwargs.pop(OUTPUT_PATH, None)
            if self.takes_loras:  # the job's (``JobContext.loras``), never a keyword of predict
                kwargs.pop(LORAS, None)
            kwargs.pop(MODEL, None)
            return kwargs
        return {k: v for k, v in inputs.items() if k in self.predict_params}


def _checked_defaults(defaults: dict[str, Any], signature: inspect.Signature, hints: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` converted to their fields' types; ``ConfigurationError`` names a field
    predict lacks, a picture's, or a value outside its field's limits."""
    params = {name for name, p in signature.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    checked = {}
    for name, value in defaults.items():
        annotation = hints.get(name, Any)
        if name not in params or name == OUTPUT_PATH:
            raise ConfigurationError(f"-o defaults: {name!r} is not a request field of this model")
        if media_field(name, annotation) is not None:
            raise ConfigurationError(f"-o defaults: {name!r} is a picture or video: it has no default")
        try:
            checked[name] = msgspec.convert(value, annotation)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"-o defaults: {name}: {exc} (got {value!r})") from None
    return checked


def _is_file(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(item, bytes | bytearray | memoryview) for item in value)
    return isinstance(value, bytes | bytearray | memoryview)


def _default(value: Any) -> Any:
    """A field's default; a mutable one is copied afresh for every request."""
    if isinstance(value, list | dict | set):
        return msgspec.field(default_factory=functools.partial(copy.deepcopy, value))
    return value
