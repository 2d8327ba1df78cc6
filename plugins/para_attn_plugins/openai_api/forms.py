"""Request bodies of the OpenAI routes that take uploads: a JSON object, or a form (the
multipart form the SDK sends, or urlencoded) whose text parts are text and whose file parts
are their bytes. A name given several times (``image[]``) is a list."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import UploadFile

from para_attn_server import InputError

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def request_fields(request: Request[Any, Any, Any]) -> tuple[dict[str, Any], bool]:
    """The request's fields, and whether they came as a form (text values to convert)."""
    if request.headers.get("content-type", "").startswith(FORM_TYPES):
        parts: dict[str, list[Any]] = {}
        for name, part in (await request.form()).multi_items():
            parts.setdefault(name, []).append(await part.read() if isinstance(part, UploadFile) else part)
        return {name: values[0] if len(values) == 1 else values for name, values in parts.items()}, True
    try:
        body = msgspec.json.decode(await request.body())
    except msgspec.DecodeError:
        raise InputError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InputError("a JSON object (or a multipart form) is required as the request body")
    return body, False
