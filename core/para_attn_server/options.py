"""A predictor's ``--option`` values: checked against the type it declares, and ``defaults``.

The server and every rank call ``configure`` with the same options, so a bad option fails at
start, before any rank loads weights. ``-o defaults='{"num_inference_steps": 4}'`` is the
server's own option: it changes the request schema's defaults (each checked against its
field's limits), over the defaults the predictor knows for the model it loaded
(``Predictor.model_defaults``: a model card's, such as FLUX.1-schnell's 4 steps).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec

from para_attn_server.errors import ConfigurationError

DEFAULTS = "defaults"
MODEL_PATH = "model_path"
log = logging.getLogger("para_attn_server")


def configure(predictor: Any, world_size: int, options: dict[str, str]) -> dict[str, Any]:
    """Check ``options`` against the predictor's ``options_type`` (when it declares one),
    call its ``configure`` with them, and return the request defaults: the model's own,
    then the operator's ``defaults``. ``ConfigurationError`` names the option refused."""
    options = dict(options)
    asked = _parse_defaults(options.pop(DEFAULTS, None))
    check(type(predictor), options)
    predictor.configure(world_size, options)
    model_defaults = getattr(predictor, "model_defaults", None)
    card = model_defaults() if callable(model_defaults) else {}
    return {**card, **asked}


def check(predictor_type: type, options: dict[str, str]) -> None:
    """Refuse an option the predictor does not declare or of the wrong type, naming it."""
    kind: type[msgspec.Struct] | None = getattr(predictor_type, "options_type", None)
    if kind is None:
        return  # a predictor that declares no options reads them itself
    name = predictor_type.__name__
    known = [field.name for field in msgspec.structs.fields(kind)]
    for key in options:
        if key not in known:
            if key == MODEL_PATH:
                raise ConfigurationError(f"--model-path: {name} loads no model directory (it builds its own model)")
            raise ConfigurationError(
                f"-o {key}: not an option of {name} (its options: {', '.join(sorted(known)) or 'none'})"
            )
    try:
        msgspec.convert(options, kind, strict=False)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$.")
        field = where.rstrip("`")
        if field == MODEL_PATH or (not field and MODEL_PATH in message):
            raise ConfigurationError(f"{name} needs --model-path: a pipeline directory or hub id") from None
        raise ConfigurationError(f"-o {field or '?'}: {message} (got {options.get(field)!r})") from None


def _parse_defaults(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"-o defaults: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise ConfigurationError('-o defaults: expected a JSON object such as {"num_inference_steps": 4}')
    return value
