"""media.py: what a picture field is, and the server's check of a picture's bytes, which says
ValueError (a 400 naming the field) for anything it cannot take, never anything else."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image as PILImage

from para_attn_server import Image, Mask, Video
from para_attn_server.media import MediaField, check, decode, media_field, video_format

MAX_PIXELS = 64 * 64
BUDGET = 8 * MAX_PIXELS


def saved(fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    PILImage.effect_noise((24, 16), 40).convert("RGB").save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("annotation", "field"),
    [
        (Image, MediaField("f", "image", False, False)),
        (Image | None, MediaField("f", "image", False, True)),
        (list[Image], MediaField("f", "image", True, False)),
        (Mask | None, MediaField("f", "mask", False, True)),
        (Video, MediaField("f", "video", False, False)),
        (str, None),
        (Image | str, None),
    ],
)
def test_a_field_is_media_by_its_annotation(annotation: object, field: MediaField | None) -> None:
    assert media_field("f", annotation) == field


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP", "GIF", "BMP"])
def test_damaged_pictures_are_refused_with_a_value_error_only(fmt: str) -> None:
    """Flipped bytes and cut files, in every format taken: the check and the ranks' decode
    agree, and nothing but ValueError leaves the check (anything else would be a 500)."""
    good = saved(fmt)
    assert check(good, "image", MAX_PIXELS, BUDGET).format == fmt
    rng = random.Random(fmt)
    for _ in range(150):
        damaged = bytearray(good[: rng.randrange(1, len(good) + 1)])
        for _ in range(rng.randrange(0, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            check(bytes(damaged), "image", MAX_PIXELS, BUDGET)
        except ValueError:
            continue
        decode(bytes(damaged), "image")  # accepted: the ranks can decode it too


def test_a_picture_is_decoded_as_the_ranks_will_see_it() -> None:
    mask = decode(saved("PNG"), "mask")
    assert (mask.mode, mask.size) == ("L", (24, 16))
    with pytest.raises(ValueError, match="24x16 pixels, more than the 100"):
        check(saved("PNG"), "image", 100, BUDGET)


def test_only_the_video_containers_named_are_opened() -> None:
    with pytest.raises(ValueError, match="MP4, WebM or animated GIF"):
        video_format(b"ffconcat version 1.0\nfile '/etc/passwd'\n")
    assert video_format(b"\0\0\0\x18ftypisom") == "mov"
    assert video_format(saved("GIF")) == "gif"
