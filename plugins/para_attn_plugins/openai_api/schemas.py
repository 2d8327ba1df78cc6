"""OpenAI's request and answer bodies, as the official SDK's types have them (msgspec
Structs, so the OpenAPI document at /schema shows them too)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# ---- requests -------------------------------------------------------------------------

MODEL = (
    "A served model's name (left out: the first), or an adapter's: the first model with that adapter (LoRA) "
    "applied at scale 1 (GET /v1/models)"
)


class ImageRequest(msgspec.Struct, kw_only=True):
    """OpenAI's fields of ``POST /v1/images/generations``. Any field of the served
    predictor (``seed``, ``num_inference_steps``, ...) is accepted beside them (the SDK's
    ``extra_body``) and checked as ``POST /v1/jobs`` checks it."""

    prompt: Annotated[str, msgspec.Meta(description="What to generate")]
    model: Annotated[str | None, msgspec.Meta(description=MODEL)] = None
    n: Annotated[int | None, msgspec.Meta(description="Images: 1 to --max-n (default 1), seeds seed, seed+1, ...")] = (
        None
    )
    size: Annotated[
        str | None, msgspec.Meta(description='"WIDTHxHEIGHT" (the predictor\'s width and height) or "auto"')
    ] = None
    response_format: Annotated[
        Literal["b64_json", "url"] | None,
        msgspec.Meta(description="b64_json (default): the image in the answer; url: a link to /v1/jobs/{id}/output"),
    ] = None
    output_format: Annotated[
        Literal["png", "jpeg", "webp"] | None, msgspec.Meta(description="Where the predictor offers it")
    ] = None
    stream: Annotated[bool | None, msgspec.Meta(description="Only false: streaming is not offered")] = None
    # Accepted and ignored (unless the predictor has a field of that name):
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    moderation: str | None = None
    output_compression: int | None = None
    user: str | None = None
    safety_identifier: str | None = None


class ImageEditRequest(ImageRequest, kw_only=True):
    """OpenAI's text fields of ``POST /v1/images/edits`` (a multipart form; its ``image`` and
    ``mask`` parts are taken out before): those of a generation, and ``input_fidelity``
    (accepted and ignored). Any field of the served predictor (``strength``, ``seed``, ...)
    is accepted beside them."""

    input_fidelity: str | None = None


class VideoRequest(msgspec.Struct, kw_only=True):
    """OpenAI's fields of ``POST /v1/videos`` (JSON or multipart form). Any field of the
    served predictor (``num_inference_steps``, ``fps``, ``seed``, ...) is accepted beside them."""

    prompt: Annotated[str, msgspec.Meta(description="What to generate")]
    model: Annotated[str | None, msgspec.Meta(description=MODEL)] = None
    seconds: Annotated[
        str | float | None,
        msgspec.Meta(description="Length: frames = seconds x fps, to the nearest count the model accepts"),
    ] = None
    size: Annotated[str | None, msgspec.Meta(description='"WIDTHxHEIGHT" (the predictor\'s width and height)')] = None
    input_reference: Annotated[
        Any,
        msgspec.Meta(
            description="A picture file (or {image_url}) the video starts from: for models whose predict "
            "takes an image only"
        ),
    ] = None


# ---- answers --------------------------------------------------------------------------


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct):
    """Every error answer of these routes, in OpenAI's shape."""

    error: OpenAIErrorDetail


class ImageData(msgspec.Struct):
    b64_json: str | msgspec.UnsetType = msgspec.UNSET
    url: str | msgspec.UnsetType = msgspec.UNSET
    revised_prompt: None = None


class ImagesResponse(msgspec.Struct):
    created: int
    data: list[ImageData]
    output_format: str | None
    size: str | None


class VideoError(msgspec.Struct):
    code: str
    message: str


class Video(msgspec.Struct, kw_only=True):
    """A video job: its id is the job's id (``/v1/jobs/{id}`` shows the same job)."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    prompt: str | None
    seconds: str
    size: str
    error: VideoError | None
    remixed_from_video_id: None = None


class VideoList(msgspec.Struct):
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class VideoDeleted(msgspec.Struct):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class Model(msgspec.Struct):
    """A served model, or an adapter (LoRA) the first offers: then ``parent`` is the first's id."""

    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"
    parent: str | None = None


class ModelList(msgspec.Struct):
    data: list[Model]
    object: Literal["list"] = "list"
