"""Pictures and videos as request fields, on the client's side: a file, its bytes or an
image object become the ``data:`` URL the server takes in a JSON body.

A field the predictor declares as ``Image``, ``Mask`` or ``Video`` (or a list of them) is a
string on the wire: a ``data:`` URL, an ``http(s)://`` URL the server may fetch, or
``job:<id>`` (an earlier job's output). ``media_value`` turns what a Python caller has into
such a string:

- a ``pathlib.Path`` (or any ``os.PathLike``): the file's bytes;
- ``bytes``, ``bytearray`` or ``memoryview``: those bytes;
- a binary file object (``open(path, "rb")``): what it reads;
- an object with a PIL-like ``save(fp, format=...)`` (a ``PIL.Image.Image``): saved as PNG;
- a ``str``: unchanged (a URL, ``job:<id>``, a data URL or bare base64);
- a list or tuple: each item so.

The media type of the data URL comes from the bytes' signature (PNG, JPEG, WebP, GIF, BMP,
TIFF, MP4, WebM); bytes of no known signature go as bare base64, and the server, which
reads the format from the bytes itself, says what is wrong with them. Nothing here imports
Pillow: the client distribution does not depend on it.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["data_url", "media_type", "media_value"]

OCTET_STREAM = "application/octet-stream"


def media_type(data: bytes | bytearray | memoryview) -> str:
    """The media type the bytes' signature says, or ``application/octet-stream``."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head.startswith(b"BM") and len(head) >= 14:
        return "image/bmp"
    if head[4:8] == b"ftyp":  # ISO base media: MP4 (QuickTime's "qt  " brand too)
        return "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: WebM (Matroska)
        return "video/webm"
    return OCTET_STREAM


def data_url(data: bytes | bytearray | memoryview) -> str:
    """``data:<media type>;base64,...`` for bytes of a known signature, else bare base64."""
    encoded = base64.b64encode(data).decode("ascii")
    kind = media_type(data)
    return encoded if kind == OCTET_STREAM else f"data:{kind};base64,{encoded}"


def media_value(value: Any) -> Any:
    """``value`` as a request field's value: a file, bytes or image object as a data URL,
    a list of them item by item; anything else as it is."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return data_url(value)
    if isinstance(value, os.PathLike):
        with open(value, "rb") as file:
            return data_url(file.read())
    if isinstance(value, list | tuple):
        return [media_value(item) for item in value]
    if _is_image(value):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return data_url(buffer.getvalue())
    if _is_binary_file(value):
        return data_url(value.read())
    return value


def media_inputs(body: Mapping[str, Any]) -> dict[str, Any]:
    """A request body with every field's files, bytes and image objects as data URLs."""
    return {name: media_value(value) for name, value in body.items()}


def has_media(body: Mapping[str, Any]) -> bool:
    """Whether ``media_inputs`` would read or encode anything (the async client does that
    in a thread, off the event loop)."""
    return any(_needs_encoding(value) for value in body.values())


def _needs_encoding(value: Any) -> bool:
    if isinstance(value, str | int | float | bool | dict) or value is None:
        return False
    if isinstance(value, list | tuple):
        return any(_needs_encoding(item) for item in value)
    return True


def _is_image(value: Any) -> bool:
    """A PIL-like image: it saves itself to a file object in a named format. File objects
    (which have no ``save``) and classes are not."""
    return not isinstance(value, type) and callable(getattr(value, "save", None))


def _is_binary_file(value: Any) -> bool:
    return callable(getattr(value, "read", None)) and not isinstance(value, io.TextIOBase)
