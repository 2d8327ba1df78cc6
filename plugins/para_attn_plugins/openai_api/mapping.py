"""OpenAI's request fields mapped onto the served predictor's own fields, and a job back
onto OpenAI's answer fields. No HTTP here: plain functions over the predictor's request
schema, so the unit tests call them directly.

- ``size`` "WxH" -> ``width``/``height``; "auto" leaves the predictor's defaults;
- ``n`` -> n inputs whose seeds are seed, seed+1, ... (a random start when the
  predictor's seed is optional and none is given);
- ``seconds`` -> ``num_frames`` through the request's (or the predictor's default) ``fps``,
  to the nearest frame count the predictor accepts;
- ``output_format`` -> the predictor's ``output_format`` where it offers that format;
- ``model`` naming an adapter the server offers -> ``loras`` applying it at scale 1
  (``adapters``);
- an edit's ``image`` (one or several) and ``mask`` -> the predictor's picture fields (its
  ``image`` and ``mask_image``, or the first field of that kind), a video's
  ``input_reference`` -> its ``image``: bytes of an uploaded file, or a string (a ``data:``
  URL, an allowed ``http(s)://`` URL, ``job:<id>``) for the server to check.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from para_attn_server import InputError
from para_attn_server.plugin import NAMED_FIELD, InputSchema, JobRecord, JobState, invalid

from .adapters import model_adapter, with_adapter
from .schemas import ImageEditRequest, ImageRequest, Video, VideoError, VideoRequest

MISSING: Any = msgspec.NODEFAULT
SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
MAX_SECONDS = 3600.0
# OpenAI's fields that these routes accept and ignore.
IGNORED = frozenset(
    {"quality", "style", "background", "moderation", "output_compression", "user", "safety_identifier"}
    | {"input_fidelity"}  # the edits route's
)
# An edit's picture parts: ``image``, or ``image[]`` / ``image[0]``... for several (the SDK's
# array form), in that order.
IMAGE_PART = re.compile(r"image(?:\[(\d*)\])?")
MEDIA_KINDS = ("image", "mask", "video")
RANDOM_SEEDS = 2**31  # a random first seed leaves room for seed + n - 1 in any seed field
VIDEO_STATUS = {
    JobState.QUEUED: "queued",
    JobState.RUNNING: "in_progress",
    JobState.SUCCEEDED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "failed",
    JobState.EXPIRED: "failed",
}


@dataclass(frozen=True)
class Media:
    """A picture or video field: its kind ("image", "mask", "video") and whether it is a list."""

    kind: str
    many: bool = False


@dataclass(frozen=True)
class ModelFields:
    """What the served predictor's request fields let these routes map."""

    defaults: dict[str, Any]  # every field -> its default (MISSING when required)
    literals: dict[str, tuple[Any, ...]]  # fields whose type is a Literal -> its values
    limits: dict[str, tuple[float | None, float | None]]  # numeric fields -> (ge, le)
    media: dict[str, Media]  # picture and video fields (``media_of``)

    @classmethod
    def of(cls, schema: InputSchema) -> ModelFields:
        defaults, literals, limits, media = {}, {}, {}, {}
        for field in msgspec.inspect.type_info(schema.type).fields:  # type: ignore[attr-defined]
            defaults[field.name] = field.default if field.default_factory is MISSING else field.default_factory()
            kind = field.type.type if isinstance(field.type, msgspec.inspect.Metadata) else field.type
            if isinstance(kind, msgspec.inspect.LiteralType):
                literals[field.name] = tuple(kind.values)
            elif isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType):
                limits[field.name] = (kind.ge, kind.le)
            if (found := media_of(field.type)) is not None:
                media[field.name] = found
        return cls(defaults, literals, limits, media)

    def takes(self, *names: str) -> bool:
        return all(name in self.defaults for name in names)

    def media_field(self, kind: str, preferred: str) -> str | None:
        """The field that takes ``kind``: the one named ``preferred`` when it does (diffusers'
        names: ``image``, ``mask_image``), else the first such field; None when none does."""
        if preferred in self.media and self.media[preferred].kind == kind:
            return preferred
        return next((name for name, media in self.media.items() if media.kind == kind), None)

    @property
    def makes_videos(self) -> bool:
        return self.takes("prompt", "num_frames", "fps")

    @property
    def makes_images(self) -> bool:
        return self.takes("prompt") and not self.makes_videos


def media_of(kind: Any) -> Media | None:
    """The picture or video field a schema type is, or None. The server marks each in its
    JSON schema: a string with ``contentMediaType`` and its kind ("image", "mask", "video")
    as ``format``; a list field is an array of those."""
    many = False
    while True:
        if isinstance(kind, msgspec.inspect.Metadata):
            extra = kind.extra_json_schema or {}
            marked = extra.get("format") if "contentMediaType" in extra else None
            if marked in MEDIA_KINDS:
                return Media(marked, many)
            kind = kind.type
        elif isinstance(kind, msgspec.inspect.UnionType):
            members = [member for member in kind.types if not isinstance(member, msgspec.inspect.NoneType)]
            if len(members) != 1:
                return None
            kind = members[0]
        elif isinstance(kind, msgspec.inspect.ListType) and not many:
            many, kind = True, kind.item_type
        else:
            return None


# ---- requests -------------------------------------------------------------------------


def split(
    body: dict[str, Any], request_type: type[msgspec.Struct], fields: ModelFields, *, form: bool = False
) -> tuple[Any, dict[str, Any]]:
    """OpenAI's fields of ``body`` (checked, as ``request_type``; ``form``: text of a form,
    converted to their types) and the predictor's. A field OpenAI's API accepts and ignores
    goes to a predictor that has a field of that name."""
    own = set(request_type.__struct_fields__)
    openai = {key: value for key, value in body.items() if key in own}
    extras = {key: value for key, value in body.items() if key not in own or (key in IGNORED and fields.takes(key))}
    return converted(openai, request_type, strict=not form), extras


def converted(values: dict[str, Any], kind: type[Any], *, strict: bool = True) -> Any:
    """``msgspec.convert``, its error as an ``InputError`` naming the field."""
    try:
        return msgspec.convert(values, kind, strict=strict)
    except msgspec.ValidationError as exc:
        raise input_error(exc) from None


def refuse_files(extras: dict[str, Any], fields: ModelFields) -> None:
    """A form's file part is for a picture field only (OpenAI's own are taken out before)."""
    for name, value in extras.items():
        values = value if isinstance(value, list) else [value]
        if name not in fields.media and any(isinstance(item, bytes) for item in values):
            raise InputError("is a file, and only picture fields take files", name)


def input_error(exc: msgspec.ValidationError) -> InputError:
    """As the core API reports it, and a field that only the message names (unknown or
    required) as the field: OpenAI's ``param`` is where clients look."""
    error = invalid(exc)
    named = NAMED_FIELD.search(error.message) if error.field is None else None
    return InputError(error.message, named[1]) if named else error


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``"1024x768"`` -> (1024, 768); ``"auto"`` or None -> None."""
    if size is None or size == "auto":
        return None
    match = SIZE.fullmatch(size)
    if match is None:
        raise InputError('must be "WIDTHxHEIGHT" (such as "1024x1024") or "auto"', "size")
    return int(match[1]), int(match[2])


def sides(size: str | None, extras: dict[str, Any], fields: ModelFields) -> dict[str, int]:
    """``width`` and ``height`` from ``size``; nothing for "auto" (the predictor's defaults)."""
    parsed = parse_size(size)
    if parsed is None:
        return {}
    if not fields.takes("width", "height"):
        raise InputError("this model takes no size (it has no width and height fields)", "size")
    if "width" in extras or "height" in extras:
        raise InputError("give size or width and height, not both", "size")
    return {"width": parsed[0], "height": parsed[1]}


def seeds(extras: dict[str, Any], fields: ModelFields, n: int, rng: random.Random) -> list[int] | None:
    """Consecutive seeds for ``n`` images, or None to leave ``seed`` as the request has it
    (no seed field, or a value the predictor's own check should refuse)."""
    if not fields.takes("seed"):
        return None
    first = extras.get("seed", fields.defaults["seed"])
    if first is None:  # the predictor would pick one at random: pick it here, so the n differ
        first = rng.randrange(RANDOM_SEEDS)
    if not isinstance(first, int) or isinstance(first, bool):
        return None
    return [first + index for index in range(n)]


def image_inputs(
    request: ImageRequest,
    extras: dict[str, Any],
    fields: ModelFields,
    served: str,
    max_n: int,
    rng: random.Random,
    adapters: Collection[str] = (),
) -> list[dict[str, Any]]:
    """The inputs of each of the ``n`` jobs of one images request (as JSON values, to be
    checked against the predictor's schema). ``model`` may name one of ``adapters``, the
    adapters offered now: the jobs apply it (``adapters.with_adapter``)."""
    adapter = model_adapter(request.model, served, adapters)
    n = 1 if request.n is None else request.n
    if not 1 <= n <= max_n:
        raise InputError(f"must be between 1 and {max_n} (--max-n)", "n")
    if request.stream:
        raise InputError("streaming is not offered: leave it out or false", "stream")
    base = with_adapter({**extras, "prompt": request.prompt, **sides(request.size, extras, fields)}, adapter)
    if request.output_format is not None:
        offered = [value for value in fields.literals.get("output_format", ()) if value in ("png", "jpeg", "webp")]
        if request.output_format not in offered:
            made = ", ".join(offered) if offered else "one format it does not choose"
            raise InputError(f"this model makes {made}, not {request.output_format}", "output_format")
        base["output_format"] = request.output_format
    chosen = seeds(extras, fields, n, rng)
    if chosen is None:
        return [dict(base) for _ in range(n)]
    return [{**base, "seed": seed} for seed in chosen]


def take_images(body: dict[str, Any]) -> list[Any]:
    """Take an edit's pictures out of its body: ``image`` (one, or a list in JSON), then
    ``image[]`` and ``image[0]``, ``image[1]``... (the SDK's array form) in order."""

    def order(key: str) -> tuple[int, int]:
        index = IMAGE_PART.fullmatch(key)[1]  # type: ignore[index]
        return (0, 0) if index is None else (1, 0) if index == "" else (2, int(index))

    images: list[Any] = []
    for key in sorted((key for key in body if IMAGE_PART.fullmatch(key)), key=order):
        value = body.pop(key)
        images.extend(value if isinstance(value, list) else [value])
    return images


def edit_media(
    images: list[Any], mask: Any, extras: dict[str, Any], fields: ModelFields
) -> tuple[dict[str, Any], dict[str, str]]:
    """An edit's pictures as the predictor's fields (``image`` -> its image field, a list
    field taking them all; ``mask`` -> its mask field), and OpenAI's name of each field."""
    field = fields.media_field("image", "image")
    if field is None:
        raise InputError(
            "this model takes no input image (its predict has no image field): use /v1/images/generations", "image"
        )
    if not images:
        raise InputError("required: one or more picture files", "image")
    media, names = {field: picture(images, fields.media[field], "image")}, {field: "image"}
    if mask is not None:
        mask_field = fields.media_field("mask", "mask_image")
        if mask_field is None:
            raise InputError("this model takes no mask (its predict has no mask_image field)", "mask")
        media[mask_field], names[mask_field] = picture([mask], fields.media[mask_field], "mask"), "mask"
    for name, param in names.items():
        if name in extras:
            raise InputError(f"give {param} or {name}, not both", name)
    return media, names


def picture(values: list[Any], media: Media, param: str) -> Any:
    """One field's value from the pictures given for it: a list for a list field."""
    for value in values:
        if not isinstance(value, str | bytes) or value == "":
            raise InputError("expected a picture file (or a data: URL, an http(s):// URL or job:<id>)", param)
    if media.many:
        return list(values)
    if len(values) > 1:
        raise InputError(f"this model takes one picture here, not {len(values)}", param)
    return values[0]


def edit_inputs(
    request: ImageEditRequest,
    images: list[Any],
    mask: Any,
    extras: dict[str, Any],
    fields: ModelFields,
    served: str,
    max_n: int,
    rng: random.Random,
    adapters: Collection[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The inputs of each of the ``n`` jobs of one edits request, and OpenAI's name of each
    picture field (``{"mask_image": "mask"}``), for errors the server gives about them."""
    media, names = edit_media(images, mask, extras, fields)
    planned = image_inputs(request, extras, fields, served, max_n, rng, adapters)
    return [{**each, **media} for each in planned], names


def reference(value: Any) -> str | bytes:
    """A video's ``input_reference``: a file (its bytes), a string, or ``{"image_url": ...}``."""
    if isinstance(value, dict):
        if "file_id" in value and "image_url" not in value:
            raise InputError("file ids are not offered here: upload the file, or give image_url", "input_reference")
        value = value.get("image_url")
    if not isinstance(value, str | bytes) or value in ("", b""):
        raise InputError("expected a picture file, or {\"image_url\": a data: URL, an http(s):// URL or job:<id>}",
                         "input_reference")  # fmt: skip
    return value


def parse_seconds(seconds: str | float) -> float:
    try:
        value = float(seconds)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_SECONDS:  # NaN fails this too
        raise InputError(f'must be a number of seconds above 0, at most {MAX_SECONDS:g} (such as "4")', "seconds")
    return value


def frame_count(seconds: float, fps: int, fields: ModelFields, predictor: object) -> int:
    """The frame count nearest ``seconds`` at ``fps`` that the predictor accepts: its own
    ``nearest_num_frames`` where it has one, else within the field's limits."""
    wanted = max(1, round(seconds * fps))
    nearest = getattr(predictor, "nearest_num_frames", None)
    if callable(nearest):
        return int(nearest(wanted))
    low, high = fields.limits.get("num_frames", (None, None))
    return int(min(max(wanted, low or 1), high if high is not None else wanted))


def video_inputs(
    request: VideoRequest,
    extras: dict[str, Any],
    fields: ModelFields,
    served: str,
    predictor: object,
    adapters: Collection[str] = (),
) -> dict[str, Any]:
    """The inputs of the job of one videos request (as JSON values and uploaded bytes, to be
    checked against the predictor's schema). An ``input_reference`` goes to the predictor's
    image field (see ``video_media_names``); ``model`` may name one of ``adapters``."""
    adapter = model_adapter(request.model, served, adapters)
    media = {}
    if request.input_reference is not None:
        field = fields.media_field("image", "image")
        if field is None:
            raise InputError("this model generates from text only: it takes no input_reference", "input_reference")
        if field in extras:
            raise InputError(f"give input_reference or {field}, not both", "input_reference")
        media[field] = picture([reference(request.input_reference)], fields.media[field], "input_reference")
    if extras.get("output_format", "mp4") != "mp4":
        raise InputError("the videos API serves MP4 only", "output_format")
    inputs = with_adapter({**extras, "prompt": request.prompt, **sides(request.size, extras, fields), **media}, adapter)
    if request.seconds is not None:
        if "num_frames" in extras:
            raise InputError("give seconds or num_frames, not both", "seconds")
        seconds = parse_seconds(request.seconds)
        fps = extras.get("fps", fields.defaults["fps"])
        if isinstance(fps, str) and fps.isdigit():  # a multipart form's text
            fps = int(fps)
        if isinstance(fps, int) and not isinstance(fps, bool) and fps > 0:  # else the schema's check names fps
            inputs["num_frames"] = frame_count(seconds, fps, fields, predictor)
    return inputs


@contextlib.contextmanager
def openai_params(names: dict[str, str]) -> Iterator[None]:
    """An ``InputError`` about a picture field the request filled names OpenAI's field
    (``mask_image`` -> ``mask``), where the client looks for it."""
    try:
        yield
    except InputError as exc:
        name, bracket, index = (exc.field or "").partition("[")  # image[1]: the second of a list
        if name not in names or names[name] == name:
            raise
        raise InputError(f"{exc.message} (as the model's {exc.field})", names[name] + bracket + index) from None


def video_media_names(request: VideoRequest, fields: ModelFields) -> dict[str, str]:
    """OpenAI's name of the picture field a videos request filled (``{"image": "input_reference"}``)."""
    field = fields.media_field("image", "image")
    return {field: "input_reference"} if request.input_reference is not None and field is not None else {}


def fold_reference(body: dict[str, Any]) -> None:
    """A form's ``input_reference[image_url]`` (how the SDK sends ``{"image_url": ...}`` in a
    form) as the dict a JSON body has."""
    for key in [key for key in body if key.startswith("input_reference[") and key.endswith("]")]:
        folded = body.setdefault("input_reference", {})
        if not isinstance(folded, dict):
            raise InputError("give a file or its fields, not both", "input_reference")
        folded[key[len("input_reference[") : -1]] = body.pop(key)


# ---- answers --------------------------------------------------------------------------


def size_of(inputs: dict[str, Any]) -> str | None:
    width, height = inputs.get("width"), inputs.get("height")
    return f"{width}x{height}" if isinstance(width, int) and isinstance(height, int) else None


def progress(record: JobRecord) -> int:
    if record.state is JobState.SUCCEEDED:
        return 100
    if record.step is None or not record.total:
        return 0
    return min(100, record.step * 100 // record.total)


def video_object(record: JobRecord, served: str, result_ttl: float) -> Video:
    """The job as OpenAI's ``Video``: queued, in_progress (``progress`` from the step
    hook), completed, or failed (a cancelled job too, with code ``cancelled``; an expired
    one with ``expired``)."""
    inputs = record.inputs
    frames, fps = inputs.get("num_frames"), inputs.get("fps")
    seconds = f"{frames / fps:.4g}" if isinstance(frames, int) and isinstance(fps, int) and fps else ""
    error = None
    if record.state is JobState.FAILED:
        error = VideoError("job_failed", record.error or "failed")
    elif record.state is JobState.CANCELLED:
        error = VideoError("cancelled", record.error or "cancelled")
    elif record.state is JobState.EXPIRED:  # never started within its max_queue_seconds
        error = VideoError("expired", record.error or "expired")
    finished = record.finished_at
    return Video(
        id=record.id,
        model=served,
        status=VIDEO_STATUS[record.state],  # type: ignore[arg-type]
        progress=progress(record),
        created_at=int(record.created_at),
        completed_at=None if finished is None else int(finished),
        expires_at=None if finished is None else int(finished + result_ttl),
        prompt=inputs.get("prompt") if isinstance(inputs.get("prompt"), str) else None,
        seconds=seconds,
        size=size_of(inputs) or "",
        error=error,
    )
