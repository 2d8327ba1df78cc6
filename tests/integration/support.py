"""Helpers the integration tests share: reading a metric, an image's size."""

from __future__ import annotations

import io

from PIL import Image

from para_attn_server.testing import Server
from tests.prometheus import Scrape


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def scrape(server: Server) -> Scrape:
    response = server.http.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of ``/metrics``, parsed with prometheus_client's parser: ``metric(server,
    "para_attn_jobs_finished_total", state="succeeded")``."""
    return scrape(server).value(name, **labels)
