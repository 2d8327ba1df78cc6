"""Exceptions to answers, in one place, keyed by exception type: every error is an
``ErrorBody`` (``{"error": ..., "field"?: ...}``) with the status its type means, and
never a trace."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from para_attn_server.errors import IdConflictError, InputError, LimitError, NotReadyError, OutputGoneError
from para_attn_server.http.schemas import ErrorBody

NOT_READY_RETRY_AFTER = "5"
# How msgspec names a field of the body that is unknown or missing, in the message itself.
NAMED_FIELD = re.compile(r"(?:unknown|required) field `([^`]+)`")


class Conflict(HTTPException):
    status_code = 409


def error(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    field: str | None = None,
    state: str | None = None,
) -> Response[ErrorBody]:
    return Response(ErrorBody(message, field, state), status_code=status, headers=headers)


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts, keys = [], set()
    for problem in problems:
        key = problem.get("key") if isinstance(problem, dict) else None
        message = problem.get("message") if isinstance(problem, dict) else str(problem)
        if key == "data" and message == "'data'":
            message = "a JSON object is required as the request body"  # no body at all
        parts.append(f"{key}: {message}" if key and key != "data" else str(message))
        if key in (None, "data"):
            named = NAMED_FIELD.search(str(message))
            key = named[1] if named else None
        keys.add(key)
    # "field" when one request field is at fault, as InputError answers say it.
    return error(400, "; ".join(parts) or str(exc.detail), field=keys.pop() if len(keys) == 1 else None)


def _input(request: Request[Any, Any, Any], exc: InputError) -> Response[Any]:
    return error(400, str(exc), field=exc.field)


def _id_taken(request: Request[Any, Any, Any], exc: IdConflictError) -> Response[Any]:
    # The id is not invalid, it is taken: the request conflicts with the job it names.
    return error(409, str(exc))


def _limit(request: Request[Any, Any, Any], exc: LimitError) -> Response[Any]:
    return error(429, str(exc), headers={"Retry-After": str(exc.retry_after)})


def _not_ready(request: Request[Any, Any, Any], exc: NotReadyError) -> Response[Any]:
    return error(503, str(exc), headers={"Retry-After": NOT_READY_RETRY_AFTER})


def _gone(request: Request[Any, Any, Any], exc: OutputGoneError) -> Response[Any]:
    return error(410, f"the output is gone: {exc}")


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return error(exc.status_code, str(exc.detail), headers=exc.headers)


def _bad_bytes(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # The JSON decoder lets these two through; both are the client's bytes.
    if isinstance(exc, UnicodeDecodeError):
        return error(400, "the request body is not valid UTF-8")
    if isinstance(exc, RecursionError) and "deserializing" in str(exc):
        return error(400, "the request body is nested too deeply")
    return _unexpected(request, exc)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    request.logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return error(500, "internal server error")


HANDLERS: ExceptionHandlersMap = {
    ValidationException: _validation,
    InputError: _input,
    IdConflictError: _id_taken,
    LimitError: _limit,
    NotReadyError: _not_ready,
    OutputGoneError: _gone,
    HTTPException: _http,
    UnicodeDecodeError: _bad_bytes,
    RecursionError: _bad_bytes,
    Exception: _unexpected,
}
