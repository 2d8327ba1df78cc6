"""The OpenAPI document at /schema: what Litestar builds, plus what its decorators cannot
say, applied in one pass over the built document.

A handler states its additions in ``opt={"openapi": Doc(...)}`` beside its route; ``finish``
walks the app's routes once and applies each to its operation: headers of responses
(Retry-After, Location), a second media type of a response, a request body the handler reads
itself, and (from ``opt["public"]``) that the route needs no API key; a route whose refusal
has another shape (``opt["unauthorized_body"]``, see auth.py) names its 401 answer in
``opt["unauthorized_response"]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.routes import HTTPRoute

from para_attn_server.http import swagger
from para_attn_server.http.schemas import ErrorBody
from para_attn_server.media import MediaField
from para_attn_server.plugin.manager import version

RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=1), required=True, description="Seconds to wait before retrying"
)
LOCATION = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), required=True, description="The job's URL")
PREVIEW_STEP = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0), required=True, description="The step the preview shows"
)
BINARY = Schema(type=OpenAPIType.STRING, content_media_type="application/octet-stream")

ERROR_DESCRIPTIONS = {
    400: "A field, parameter or body is invalid; the message names it",
    401: "Missing or wrong API key",
    404: "Unknown id (ids are forgotten --result-ttl seconds after the job ended)",
    409: "The job is not in a state that allows this",
    410: "The job succeeded but its output is gone (lost with a full disk, deleted, or changed on disk)",
    413: "The request body is larger than --max-body-bytes",
    429: "The queue is full; retry after Retry-After seconds",
    500: "The job failed; the message says why",
    503: "Not ready (first setup still running) or draining; retry after Retry-After seconds",
}


@dataclass(frozen=True)
class Doc:
    """Additions to one operation (see the module docstring)."""

    headers: dict[str, dict[str, OpenAPIHeader]] = field(default_factory=dict)
    content: dict[str, dict[str, Schema]] = field(default_factory=dict)
    request_body: RequestBody | None = None
    inputs_body: bool = False  # the request schema, as JSON or as a multipart form (file parts for pictures)


def spec(container: Any, description: str, media_type: str = "application/json") -> ResponseSpec:
    return ResponseSpec(container, generate_examples=False, description=description, media_type=media_type)


def errors(*codes: int) -> dict[int, ResponseSpec]:
    return {code: spec(ErrorBody, ERROR_DESCRIPTIONS[code]) for code in codes}


def struct_schema(struct: type[msgspec.Struct]) -> Schema:
    """``struct``'s JSON Schema as msgspec writes it, as Litestar's ``Schema``: the document
    of a body a handler decodes itself follows the type it decodes it with."""
    (_,), components = msgspec.json.schema_components([struct])
    return _schema(components[struct.__name__])


def _keyword(item: dataclasses.Field[Any]) -> str:
    head, *rest = item.name.split("_")
    return str(item.metadata.get("alias", head + "".join(word.title() for word in rest)))


# JSON Schema keyword -> Schema field ("anyOf" -> any_of); a keyword Schema lacks fails loudly.
_FIELDS = {_keyword(item): item.name for item in dataclasses.fields(Schema)}


def _schema(node: dict[str, Any]) -> Schema:
    return Schema(**{_FIELDS[key]: _converted(key, value) for key, value in node.items()})


def _converted(key: str, value: Any) -> Any:
    if key in ("anyOf", "oneOf", "allOf"):
        return [_schema(item) for item in value]
    if key == "properties":
        return {name: _schema(item) for name, item in value.items()}
    if key in ("items", "additionalProperties") and isinstance(value, dict):
        return _schema(value)
    return OpenAPIType(value) if key == "type" else value


def config(api_key: bool) -> OpenAPIConfig:
    # The pages' files come from this server (swagger.py): /schema renders without internet.
    if not api_key:
        return OpenAPIConfig(title="para-attn-server", version=version(), render_plugins=swagger.render_plugins())
    schemes: dict[str, SecurityScheme | Reference] = {
        "bearer": SecurityScheme(type="http", scheme="bearer", description="Authorization: Bearer KEY"),
        "apiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
    }
    return OpenAPIConfig(
        title="para-attn-server",
        version=version(),
        components=Components(security_schemes=schemes),
        security=[{"bearer": []}, {"apiKey": []}],
        render_plugins=swagger.render_plugins(),
    )


def finish(app: Litestar, *, api_key: bool, body: str, closed: bool) -> None:
    """Apply every handler's ``Doc``, the 401 answer of protected routes, and (``closed``) that
    the request body (the schema named ``body``) takes no fields beyond its own."""
    document = app.openapi_schema
    error_body = Reference(ref=f"#/components/schemas/{ErrorBody.__name__}")
    unauthorized = OpenAPIResponse(
        description=ERROR_DESCRIPTIONS[401], content={"application/json": OpenAPIMediaType(schema=error_body)}
    )
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or document.paths is None or route.path_format not in document.paths:
            continue
        item = document.paths[route.path_format]
        for handler in route.route_handlers:
            doc, public = handler.opt.get("openapi", Doc()), handler.opt.get("public") is True
            for method in handler.http_methods:
                operation = getattr(item, method.lower(), None)
                if operation is None:
                    continue
                _apply(operation, doc)
                if doc.inputs_body:
                    operation.request_body = _inputs_body(body)
                if public:
                    operation.security = []
                elif api_key and operation.responses is not None:
                    operation.responses.setdefault("401", handler.opt.get("unauthorized_response", unauthorized))
    schemas = document.components.schemas or {} if document.components else {}
    if closed and body in schemas:
        schemas[body].additional_properties = False


def mark_media(app: Litestar, body: str, fields: dict[str, MediaField]) -> None:
    """Mark the request schema's picture fields with standard JSON Schema keywords (Litestar
    drops msgspec's ``extra_json_schema``): ``format`` "image", "mask" or "video" and a
    ``contentMediaType``, on the string itself (inside a list's items, beside null)."""
    components = app.openapi_schema.components
    schema = (components.schemas or {}).get(body) if components else None
    if schema is None or not schema.properties:
        return
    for name, spec in fields.items():
        node = schema.properties.get(name)
        for string in _strings(node):
            string.format = spec.kind  # type: ignore[assignment]  # JSON Schema's format is open-ended
            string.content_media_type = "video/*" if spec.kind == "video" else "image/*"


def _strings(node: Any) -> list[Schema]:
    if not isinstance(node, Schema):
        return []
    if node.type == OpenAPIType.STRING:
        return [node]
    return [found for child in [node.items, *(node.one_of or []), *(node.any_of or [])] for found in _strings(child)]


def _inputs_body(name: str) -> RequestBody:
    inputs = Reference(ref=f"#/components/schemas/{name}")
    return RequestBody(
        required=True,
        description="The job's inputs: JSON (pictures as data: URLs, base64, allowed URLs or job:<id>), or a "
        "multipart form whose file parts are the pictures and whose text parts are the other fields",
        content={media: OpenAPIMediaType(schema=inputs) for media in ("application/json", "multipart/form-data")},
    )


def _apply(operation: Any, doc: Doc) -> None:
    answers = (operation.responses or {}).items()
    responses = {code: response for code, response in answers if isinstance(response, OpenAPIResponse)}
    for code, named in doc.headers.items():
        if code in responses:
            responses[code].headers = {**(responses[code].headers or {}), **named}
    for code, media in doc.content.items():
        if code in responses:
            extra = {name: OpenAPIMediaType(schema=schema) for name, schema in media.items()}
            responses[code].content = {**(responses[code].content or {}), **extra}
    if doc.request_body is not None:
        operation.request_body = doc.request_body
