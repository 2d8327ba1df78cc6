"""Bodies the HTTP layer sends of its own (job and status views come from ``views``)."""

from __future__ import annotations

from typing import Literal

import msgspec


class Submitted(msgspec.Struct):
    request_id: str


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error answer: the message, the request field it concerns, the job's state."""

    error: str
    field: str | None = None
    state: str | None = None


class OutputBody(msgspec.Struct, omit_defaults=True):
    """A finished job (original API): the output as base64, or for a predictor that wrote
    ``output_path`` itself, that path."""

    output: str
    file_type: str
    output_path: str | None = None


class ProgressBody(msgspec.Struct):
    step: int
    total: int | None


class PendingBody(msgspec.Struct, omit_defaults=True):
    status: Literal["queued", "running"]
    progress: ProgressBody | None = None


class CancelBody(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str | None = None


class CancelResult(msgspec.Struct):
    status: str
    state: str


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    reason: str | None = None


class ServerSentJobEvent(msgspec.Struct):
    """One Server-Sent Event of /v1/jobs/{id}/events, for the OpenAPI document only (the
    route sends the service's ``JobEvent`` tuples): ``state`` carries the job (as
    /v1/jobs/{id} shows it), ``progress`` ``{"step": k, "total": n}``, ``preview``
    ``{"step": k, "url": ...}`` (the URL answers the latest preview as a JPEG), each as JSON
    text."""

    event: Literal["state", "progress", "preview"]
    data: str
