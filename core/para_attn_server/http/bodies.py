"""Request bodies decoded strictly against the predictor's schema.

Litestar decodes the body leniently ("3" for an int, 0 for a bool) to document and check it;
the same bytes are decoded again strictly, so a job gets exactly the types /schema documents
(and a ``predict(**kwargs)`` also gets the fields it does not name). A handler that submits
a job takes ``inputs: Inputs`` (with ``dependencies=INPUTS``): the strict decoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec
from litestar import Request
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from para_attn_server.engine.service import JobService
from para_attn_server.errors import InputError
from para_attn_server.http.dependencies import Service

#: A request's inputs, decoded strictly: what a handler submits.
Inputs: TypeAlias = NamedDependency[dict[str, Any]]


async def provide_inputs(
    request: Request[Any, Any, Any], service: Service, data: JSONBody[InputBody]
) -> dict[str, Any]:
    # ``data`` (Litestar's lenient decoding) is not used: declared here, once, it makes Litestar
    # check the body (400 naming the field) and document it for every handler taking ``inputs``.
    return decode(service, await request.body())


# Per handler, not per controller: Litestar documents a body for every handler that could
# resolve a dependency taking ``data``.
INPUTS = {"inputs": Provide(provide_inputs)}


def decode(service: JobService, body: bytes) -> dict[str, Any]:
    try:
        return service.schema.decode_json(body)
    except msgspec.ValidationError as exc:
        try:  # JSON Schema counts 3.0 as an integer, as the document's readers will
            return service.schema.decode_json(msgspec.json.encode(_integral(msgspec.json.decode(body))))
        except msgspec.ValidationError:
            raise invalid(exc) from None


def invalid(exc: msgspec.ValidationError) -> InputError:
    """msgspec's message, and the top-level field its path names (None when it names none)."""
    message, _, where = str(exc).partition(" - at `$.")
    return InputError(message, where.rstrip("`").split(".")[0].split("[")[0] or None)


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
