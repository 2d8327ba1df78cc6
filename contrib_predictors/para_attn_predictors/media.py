"""Encoding pipeline outputs (float arrays in [0, 1]) as PNG/JPEG images, MP4 videos or raw ``.npy``."""

from __future__ import annotations

import io
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import cast

import numpy as np
from numpy.typing import NDArray

from para_attn_server import Output


def to_uint8(pixels: NDArray[np.floating]) -> NDArray[np.uint8]:
    return (np.asarray(pixels) * 255).round().clip(0, 255).astype(np.uint8)


def encode_npy(array: NDArray[np.floating]) -> Output:
    """The exact float values, for clients (and tests) that compare numbers, not pictures."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return Output(buffer.getvalue(), "npy")


def encode_image(image: NDArray[np.floating], file_type: str, *, jpeg_quality: int = 95) -> Output:
    """One HxWx3 image as ``png``, ``jpeg`` or ``npy``."""
    if file_type == "npy":
        return encode_npy(image)
    from PIL import Image

    options = {"quality": jpeg_quality} if file_type == "jpeg" else {}
    return Output.from_image(Image.fromarray(to_uint8(image)), file_type, **options)


def encode_video(frames: NDArray[np.floating], fps: int, file_type: str, *, crf: int = 18) -> Output:
    """FxHxWx3 frames as an H.264 ``mp4`` (PyAV's bundled FFmpeg) or ``npy``."""
    if file_type == "npy":
        return encode_npy(frames)
    pixels = to_uint8(frames)
    # A file, not a buffer: moving the index to the front (so browsers can start playing
    # before the download ends) makes FFmpeg reopen what it wrote.
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "video.mp4")
        _write_mp4(path, pixels, fps, crf)
        return Output(path.read_bytes(), "mp4")


def _write_mp4(path: Path, pixels: NDArray[np.uint8], fps: int, crf: int) -> None:
    import av
    from av.video.stream import VideoStream

    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = cast(VideoStream, container.add_stream(codec, rate=Fraction(fps)))
        stream.height, stream.width = pixels.shape[1:3]
        stream.pix_fmt = "yuv420p"  # what players expect; needs even sides (ours are multiples of 16)
        if codec == "libx264":
            stream.options = {"crf": str(crf)}
        for pixel_frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixel_frame, format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames
