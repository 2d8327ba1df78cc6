"""Helpers the integration tests share: reading a metric, an image's size."""

from __future__ import annotations

import io
import re

from PIL import Image

from para_attn_server.testing import Server


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def metric(server: Server, name: str) -> float:
    text = server.http.get("/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics:\n{text}"
    return float(match[1])
