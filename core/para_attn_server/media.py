"""Pictures and videos as request fields: the types a predictor declares, and how each side
handles their bytes.

A predictor declares ``image: Image``, ``Image | None``, ``list[Image]``, ``mask_image: Mask``
or ``video: Video`` in ``predict``'s signature like any other field. Clients send each as a
string in JSON (a ``data:`` URL or bare base64, an ``http(s)://`` URL the operator allowed,
or ``job:<id>``, an earlier job's output) or as a file part of a multipart form. The server
checks the bytes (format, dimensions, size; a full decode in a thread, bounded by the pixel
cap), keeps them beside the job's record under their SHA-256 and puts ``media:<sha256>``
in the job's inputs; ranks get the bytes with the job and decode them, so ``predict``
receives a ``PIL.Image.Image`` in RGB (EXIF orientation applied), a ``Mask`` as mode "L",
and a ``Video`` as a list of RGB frames: the same pixels on every rank.

This module is imported by ranks and the server alike: decoding needs only Pillow (and PyAV
for videos), loaded when first used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import types
import typing
from typing import Annotated, Any, Literal

import msgspec

MediaKind = Literal["image", "mask", "video"]
REF_PREFIX = "media:"
# MPO: the JPEGs of phones that carry a second picture (a depth or gain map) after the first.
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF"})


class Image:
    """A picture field: ``predict`` receives a ``PIL.Image.Image`` in RGB."""

    kind: MediaKind = "image"


class Mask(Image):
    """A mask field (``mask_image``): ``predict`` receives a ``PIL.Image.Image`` in mode "L"."""

    kind: MediaKind = "mask"


class Video:
    """A video field (MP4, WebM, animated GIF): ``predict`` receives a list of RGB frames."""

    kind: MediaKind = "video"


@dataclasses.dataclass(frozen=True)
class MediaField:
    """A request field of a media type: its kind, whether it is a list, whether it may be None."""

    name: str
    kind: MediaKind
    many: bool
    optional: bool


class MediaInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the server learned of one input's bytes before accepting it (journaled with the
    job; shown instead of the bytes)."""

    sha256: str
    size: int
    format: str  # PNG, JPEG, MP4, ...
    width: int
    height: int
    frames: int = 1

    @property
    def ref(self) -> str:
        return REF_PREFIX + self.sha256


def media_field(name: str, annotation: Any) -> MediaField | None:
    """The media field ``annotation`` declares, or None for any other type."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            return None
        annotation = members[0]
    many = typing.get_origin(annotation) is list
    if many:
        (annotation,) = typing.get_args(annotation) or (Any,)
    if isinstance(annotation, type) and issubclass(annotation, Image | Video):
        return MediaField(name, annotation.kind, many, optional)
    return None


_MEDIA_TYPES = {"image": "image/*", "mask": "image/*", "video": "video/*"}
_DESCRIPTIONS = {
    "image": "A picture (PNG, JPEG, WebP, ...)",
    "mask": "A mask picture: white where the model repaints, black where it keeps",
    "video": "A video (MP4, WebM, animated GIF)",
}


def wire_annotation(field: MediaField) -> Any:
    """The type a media field has in a request body: one string per picture (or a list)."""
    description = (
        f"{_DESCRIPTIONS[field.kind]}: a data: URL or bare base64, an http(s):// URL from a host the server "
        "allows (--input-allow-host), or job:<id> (the output of an earlier job); in a multipart form, a file part."
    )
    one = Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description=description,
            extra_json_schema={"contentMediaType": _MEDIA_TYPES[field.kind], "format": field.kind},
        ),
    ]
    annotation: Any = list[one] if field.many else one
    return annotation | None if field.optional else annotation


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the server's side: what the bytes are, checked before a job is accepted -------------------


def check(data: bytes, kind: MediaKind, max_pixels: int, budget: int) -> MediaInfo:
    """The ``MediaInfo`` of an input's bytes, or ValueError saying why they cannot be one.

    The dimensions come from the header and are checked against ``max_pixels`` (per picture
    or frame) before any pixel is decoded: a small file can claim a huge picture. Then it is
    decoded exactly as the ranks will decode it (``decode``), within that cap and ``budget``
    (the pixels the request may still bring, frames included), so a file that would fail on
    the ranks is refused here instead. Blocking: call it in a thread."""
    if not data:
        raise ValueError("is empty")
    if kind == "video":
        return _check_video(data, max_pixels, budget)
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(io.BytesIO(data)) as opened:
            width, height, fmt = *opened.size, opened.format
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"is a {fmt} picture; send PNG, JPEG, WebP, GIF, BMP or TIFF")
        _check_pixels(width, height, min(max_pixels, budget))
        decode(data, kind)
    except PILImage.DecompressionBombError:
        raise ValueError(f"is too large a picture (more than {max_pixels} pixels)") from None
    except UnidentifiedImageError:
        raise ValueError("is not a picture this server can read (PNG, JPEG, WebP, GIF, BMP or TIFF)") from None
    except ValueError:
        raise
    except Exception as exc:  # Pillow's ways to say truncated or corrupt: OSError, SyntaxError, KeyError...
        raise ValueError(f"is not a readable picture ({exc or type(exc).__name__})") from None
    return MediaInfo(sha256=digest(data), size=len(data), format=fmt, width=width, height=height)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ValueError(f"is {width}x{height} pixels, more than the {max_pixels} this server takes")


def video_format(data: bytes) -> str:
    """The container of a video, from its first bytes: only these are opened (FFmpeg would
    otherwise guess among all it knows, text playlists that name local files included)."""
    if data[4:8] == b"ftyp":
        return "mov"  # MP4 and QuickTime
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # WebM
    if data[:4] == b"GIF8":
        return "gif"
    raise ValueError("is not a video this server can read (MP4, WebM or animated GIF)")


def _check_video(data: bytes, max_pixels: int, budget: int) -> MediaInfo:
    import av

    fmt = video_format(data)
    frames = width = height = 0
    try:
        with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
            if not container.streams.video:
                raise ValueError("has no video stream")
            for frame in container.decode(video=0):  # each frame's own size: not the header's claim
                width, height = frame.width, frame.height
                _check_pixels(width, height, max_pixels)
                frames += 1
                budget -= width * height
                if budget < 0:
                    raise ValueError("has more frames than this server takes in one request (--max-input-pixels)")
    except ValueError:
        raise
    except Exception as exc:  # FFmpeg's errors, and PyAV's on what it cannot decode
        raise ValueError(f"is not a readable video ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    if frames == 0:
        raise ValueError("is a video without frames")
    return MediaInfo(sha256=digest(data), size=len(data), format=fmt.upper(), width=width, height=height, frames=frames)


# ---- the rank's side: bytes into what predict receives ----------------------------------------


def decode(data: bytes, kind: MediaKind) -> Any:
    """The bytes of a checked input as ``predict`` receives them."""
    if kind == "video":
        return decode_video(data)
    from PIL import Image as PILImage
    from PIL import ImageOps

    with PILImage.open(io.BytesIO(data)) as opened:
        picture = ImageOps.exif_transpose(opened) or opened
        return picture.convert("L" if kind == "mask" else "RGB")


def decode_video(data: bytes) -> list[Any]:
    import av

    with av.open(io.BytesIO(data), mode="r", format=video_format(data)) as container:
        return [frame.to_image().convert("RGB") for frame in container.decode(video=0)]  # type: ignore[no-untyped-call]


def decode_inputs(inputs: dict[str, Any], fields: dict[str, MediaField], blobs: dict[str, bytes]) -> dict[str, Any]:
    """``inputs`` with each ``media:<sha256>`` of a media field replaced by the decoded
    picture (or video) whose bytes ``blobs`` holds under that checksum."""
    decoded = dict(inputs)
    for name, spec in fields.items():
        value = inputs.get(name)
        if value is None:
            continue
        refs = value if isinstance(value, list) else [value]
        items = [decode(blobs[ref.removeprefix(REF_PREFIX)], spec.kind) for ref in refs]
        decoded[name] = items if isinstance(value, list) else items[0]
    return decoded
