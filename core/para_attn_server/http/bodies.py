"""Request bodies decoded strictly against the predictor's schema.

Litestar decodes the body leniently ("3" for an int, 0 for a bool) to document and check it;
the same bytes are decoded again strictly, so a job gets exactly the types /schema documents
(and a ``predict(**kwargs)`` also gets the fields it does not name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request

from para_attn_server.engine.registry import Job
from para_attn_server.engine.service import JobService
from para_attn_server.errors import InputError


async def accept(request: Request[Any, Any, Any], service: JobService, job_id: str | None = None) -> tuple[Job, bool]:
    """Decode the request's body and submit it; answered once the job is on record."""
    inputs = decode(service, await request.body())
    return await service.accept(inputs, job_id)


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
