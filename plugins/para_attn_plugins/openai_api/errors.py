"""Errors of the OpenAI routes in OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, with the status codes the SDK maps to its exceptions (400 BadRequestError,
401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, 500, 503).

Every exception the rest of the server maps (InputError, QueueFullError, NotReadyError,
Litestar's own) is answered first as the server answers it everywhere (same status, same
message, same Retry-After), then put in OpenAI's shape: the field the server names becomes
``param``. These handlers sit on the plugin's own router; the app's stay as they are.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Reference
from litestar.types import ExceptionHandler, ExceptionHandlersMap

from para_attn_server.plugin import ERROR_DESCRIPTIONS, ERROR_HANDLERS, NAMED_FIELD, spec

from .schemas import OpenAIErrorBody, OpenAIErrorDetail

# status -> (type, code), as OpenAI names them where it has a name.
KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    409: ("invalid_request_error", "conflict"),
    410: ("invalid_request_error", "output_gone"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "queue_full"),
    503: ("server_error", "not_ready"),
}
# The API-key middleware's refusal on these routes (handler ``opt``, see http/auth.py).
UNAUTHORIZED = msgspec.json.encode(
    OpenAIErrorBody(OpenAIErrorDetail("missing or invalid API key", "invalid_request_error", None, "invalid_api_key"))
)
# ... and its entry in the OpenAPI document (http/openapi.py).
UNAUTHORIZED_RESPONSE = OpenAPIResponse(
    description=ERROR_DESCRIPTIONS[401],
    content={
        "application/json": OpenAPIMediaType(schema=Reference(ref=f"#/components/schemas/{OpenAIErrorBody.__name__}"))
    },
)


class OpenAIError(Exception):
    """An answer these routes give of their own (a job that failed, a route the served
    model cannot serve). ``headers``: ``x-should-retry: false`` tells the SDK not to retry."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


def answer(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[OpenAIErrorBody]:
    kind, default_code = KINDS.get(status, ("server_error", None))
    body = OpenAIErrorBody(OpenAIErrorDetail(message, kind, param, code or default_code))
    return Response(body, status_code=status, headers=headers)


def responses(*codes: int) -> dict[int, ResponseSpec]:
    """The OpenAPI document's error answers of a handler."""
    return {code: spec(OpenAIErrorBody, ERROR_DESCRIPTIONS[code]) for code in codes}


def _own(request: Request[Any, Any, Any], exc: OpenAIError) -> Response[OpenAIErrorBody]:
    return answer(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)


def _translated(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    handler = _core_handler(exc)
    served = handler(request, exc)
    content = msgspec.to_builtins(served.content)  # the core's ErrorBody, as a dict
    content = content if isinstance(content, dict) else {}
    headers = {key: value for key, value in served.headers.items() if key.lower() != "content-type"}
    message, param = str(content.get("error", "error")), content.get("field")
    if param is None and served.status_code == 400:  # msgspec names an unknown or missing field in its message
        named = NAMED_FIELD.search(message)
        param = named[1] if named else None
    return answer(served.status_code or 500, message, param=param, headers=headers)


def _core_handler(exc: Exception) -> ExceptionHandler[Any]:
    for kind in type(exc).__mro__:
        if kind in ERROR_HANDLERS:
            return ERROR_HANDLERS[kind]
    return ERROR_HANDLERS[Exception]


# Every type the app maps is mapped here too: Litestar picks the most specific type across
# all layers, so an app-level InputError handler would otherwise win over Exception here.
HANDLERS: ExceptionHandlersMap = {
    **dict.fromkeys(ERROR_HANDLERS, _translated),
    OpenAIError: _own,
}
