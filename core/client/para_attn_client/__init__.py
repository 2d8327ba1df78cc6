"""The Python client of para-attn-server, installable without the server (no torch):
``Client`` (blocking) and ``AsyncClient`` over httpx, and the ``para-attn-client generate``
command. ::

    from pathlib import Path

    from para_attn_client import Client

    with Client("http://127.0.0.1:5000") as client:
        client.generate(prompt="a cat in a hat", seed=7).save("cat.png")
        client.generate(prompt="a cat in a hat", image=Path("cat.png"), strength=0.6)
        client.generate(prompt="a cat in a hat", loras={"a": 0.8})  # [a.name for a in client.loras()]

``client`` holds the two clients, ``types`` what they return and raise, ``wire`` the job
views as the server sends them, ``media`` files and images as request fields (data URLs),
``generate`` the command.
"""

from __future__ import annotations

from para_attn_client.client import (
    API_KEY_ENV,
    Adapter,
    AsyncClient,
    Client,
    ClientError,
    Conflict,
    Event,
    InputRejected,
    Job,
    JobCancelled,
    JobFailed,
    JobPage,
    NotFound,
    NotReady,
    Progress,
    QueueFull,
    Result,
    RetryLater,
    ServerError,
    ServerUnreachable,
    Unauthorized,
)
from para_attn_client.media import data_url, media_value
from para_attn_client.wire import TERMINAL, AppliedLora, JobState

__all__ = [
    "API_KEY_ENV",
    "TERMINAL",
    "Adapter",
    "AppliedLora",
    "AsyncClient",
    "Client",
    "ClientError",
    "Conflict",
    "Event",
    "InputRejected",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobPage",
    "JobState",
    "NotFound",
    "NotReady",
    "Progress",
    "QueueFull",
    "Result",
    "RetryLater",
    "ServerError",
    "ServerUnreachable",
    "Unauthorized",
    "data_url",
    "media_value",
]
