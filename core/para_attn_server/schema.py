"""The request schema, derived from the predictor's ``predict`` signature.

The server decodes every request body into this msgspec Struct, so unknown fields,
missing fields, wrong types and ``Meta`` limits fail with msgspec's message, which names
the field; Litestar renders the same type into the OpenAPI document.
"""

from __future__ import annotations

import copy
import functools
import inspect
import typing
from typing import Annotated, Any

import msgspec

OUTPUT_PATH = "output_path"
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


class InputSchema:
    """The request type of one predictor and how its fields map onto ``predict``."""

    def __init__(self, predictor: object) -> None:
        source = getattr(predictor, "request_function", None)
        predict = source() if callable(source) else getattr(predictor, "predict", None)
        if not callable(predict):
            raise TypeError(f"{type(predictor).__name__} has no predict method")
        signature = inspect.signature(predict)
        try:
            hints = typing.get_type_hints(predict, include_extras=True)
        except Exception:  # unresolvable forward references: fall back to Any
            hints = {}
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        self.accepts_extra = False
        self.predict_params: set[str] = set()
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                self.accepts_extra = True
                continue
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            self.predict_params.add(name)
            annotation = hints.get(name, Any)
            if name == OUTPUT_PATH:
                # Whatever predict declares, the server confines this path before anything runs.
                fields.append((name, OutputPathField, None))
            elif param.default is inspect.Parameter.empty:
                fields.append((name, annotation))
            elif isinstance(param.default, list | dict | set):
                default = param.default
                factory = functools.partial(copy.deepcopy, default)  # a fresh copy per request
                fields.append((name, annotation, msgspec.field(default_factory=factory)))
            else:
                fields.append((name, annotation, param.default))
        self.predict_takes_output_path = OUTPUT_PATH in self.predict_params
        if not self.predict_takes_output_path:
            fields.append((OUTPUT_PATH, OutputPathField, None))
        self.type: type[msgspec.Struct] = msgspec.defstruct(
            f"{type(getattr(predict, '__self__', predictor)).__name__}Input",
            fields,
            kw_only=True,
            forbid_unknown_fields=not self.accepts_extra,
        )
        self._decoder = msgspec.json.Decoder(self.type)

    def decode_json(self, body: bytes) -> dict[str, Any]:
        """Decode and check a JSON body; raises ``msgspec.ValidationError`` naming the field."""
        inputs = self.to_inputs(self._decoder.decode(body))
        return self.with_extras(inputs, msgspec.json.decode(body)) if self.accepts_extra else inputs

    def convert(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Rebuild typed inputs from their msgpack form (used on the ranks)."""
        return self.with_extras(self.to_inputs(msgspec.convert(raw, self.type, strict=False)), raw)

    def with_extras(self, inputs: dict[str, Any], raw: object) -> dict[str, Any]:
        """Add the raw fields beyond the named parameters, for a ``predict(**kwargs)``:
        msgspec drops unknown fields, but the original's predictors read them from kwargs."""
        if not self.accepts_extra or not isinstance(raw, dict):
            return inputs
        return inputs | {k: v for k, v in raw.items() if k not in inputs}

    @staticmethod
    def to_inputs(obj: msgspec.Struct) -> dict[str, Any]:
        return {name: getattr(obj, name) for name in obj.__struct_fields__}

    def predict_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The subset of ``inputs`` that ``predict`` accepts (drops the server's own fields)."""
        if self.accepts_extra:
            kwargs = dict(inputs)
            if not self.predict_takes_output_path:
                kwargs.pop(OUTPUT_PATH, None)
            return kwargs
        return {k: v for k, v in inputs.items() if k in self.predict_params}
