"""Request bodies decoded strictly against the predictor's schema.

Litestar decodes the body leniently ("3" for an int, 0 for a bool) to document and check it;
the same bytes are decoded again strictly, so a job gets exactly the types /schema documents
(and a ``predict(**kwargs)`` also gets the fields it does not name). A handler that submits
a job takes ``inputs: Inputs`` (with ``dependencies=INPUTS``): the strict decoding.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec
from litestar import Request
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from para_attn_server.engine.service import JobService
from para_attn_server.errors import InputError
from para_attn_server.http.dependencies import Service
from para_attn_server.schema import MODEL

#: A request's inputs, decoded strictly: what a handler submits.
Inputs: TypeAlias = NamedDependency[dict[str, Any]]


async def provide_inputs(
    request: Request[Any, Any, Any], service: Service, data: JSONBody[InputBody]
) -> dict[str, Any]:
    # ``data`` (Litestar's lenient decoding) is not used: declared here, once, it makes Litestar
    # check the body (400 naming the field) and document it for every handler taking ``inputs``.
    return decode(service, await request.body())


async def provide_submission(request: Request[Any, Any, Any], service: Service) -> dict[str, Any]:
    """The inputs of ``POST /v1/jobs``: a JSON body, or a multipart form whose file parts are
    pictures (``curl -F prompt=... -F image=@cat.png``). Its OpenAPI body is written by hand
    (``Doc(inputs_body=True)``): a ``data`` parameter would make Litestar read every body as JSON."""
    if request.content_type[0] == "multipart/form-data":
        return await decode_form(service, request)
    return decode(service, await request.body())


# Per handler, not per controller: Litestar documents a body for every handler that could
# resolve a dependency taking ``data``.
INPUTS = {"inputs": Provide(provide_inputs)}
SUBMISSION = {"inputs": Provide(provide_submission)}


async def decode_form(service: JobService, request: Request[Any, Any, Any]) -> dict[str, Any]:
    """A multipart form's fields checked by the same schema as a JSON body: text parts are
    converted to the fields' types (JSON text for lists and objects), file parts are the
    bytes of media fields; a field given twice is a list."""
    try:
        form = await request.form()
    except LookupError:  # a part naming a charset Python does not know
        raise InputError("a part of the form names an unknown charset") from None
    chosen = form.get(MODEL)
    schema = service.models.named(chosen if isinstance(chosen, str) else None).schema
    media = schema.media_fields
    parts: dict[str, list[Any]] = {}
    for name, part in form.multi_items():
        if isinstance(part, UploadFile):
            if name not in media:
                raise InputError("is a file, and only picture fields take files", name)
            parts.setdefault(name, []).append(await part.read())
        elif not (name in media and part == ""):  # a browser's file input left empty
            parts.setdefault(name, []).append(_form_text(part))
    raw = {
        name: values if len(values) > 1 or (name in media and media[name].many) else values[0]
        for name, values in parts.items()
    }
    try:
        inputs = schema.convert(raw)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None
    schema.check_fields(inputs)
    return inputs


def _form_text(text: str) -> Any:
    """A text part's value: JSON for what reads as a JSON list or object, else the text."""
    if text.startswith(("[", "{")):
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError:
            pass
    return text


class _Chosen(msgspec.Struct):
    model: str | None = None  # the rest of the body is the chosen model's schema's to check


def decode(service: JobService, body: bytes) -> dict[str, Any]:
    """A JSON body decoded by the schema of the model it chooses (its ``model`` field)."""
    schema = service.schema
    if len(service.models) > 1:
        # Not JSON, or a model that is not a string: the first schema's decode says so.
        with contextlib.suppress(msgspec.DecodeError):
            schema = service.models.named(msgspec.json.decode(body, type=_Chosen).model).schema
    try:
        return schema.decode_json(body)
    except msgspec.DecodeError as exc:
        if not isinstance(exc, msgspec.ValidationError):  # not JSON at all (an empty body, say)
            raise InputError(f"the body is not a JSON object ({exc})", None) from None
        try:  # JSON Schema counts 3.0 as an integer, as the document's readers will
            return schema.decode_json(msgspec.json.encode(_integral(msgspec.json.decode(body))))
        except msgspec.ValidationError:
            raise invalid(exc) from None


def invalid(exc: msgspec.ValidationError) -> InputError:
    """msgspec's message, and the field its path names, items and their keys included
    (``loras[0].scale``; None when it names none)."""
    message, _, where = str(exc).partition(" - at `$.")
    return InputError(message, where.rstrip("`") or None)


def _integral(value: Any) -> Any:
    """``value`` with every float that has no fractional part as an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


if TYPE_CHECKING:
    # At run time the predictor's request type, given to Litestar as ``signature_namespace``:
    # it exists only once the predictor is loaded.
    InputBody = msgspec.Struct
