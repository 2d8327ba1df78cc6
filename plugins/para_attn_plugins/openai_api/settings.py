"""The plugin's section of the server's settings (``--max-n``, ``--video-poll-after-ms``)."""

from __future__ import annotations

from typing import Annotated

import msgspec


class OpenAISettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The OpenAI-compatible API: /v1/images/generations and /edits, /v1/videos, /v1/models."""

    max_n: Annotated[
        int,
        msgspec.Meta(ge=1, le=64, description="most images one images request (generations, edits) may ask for (n)"),
    ] = 4
    video_poll_after_ms: Annotated[
        int,
        msgspec.Meta(
            ge=10,
            le=60_000,
            description="milliseconds a client polling an unfinished video is told to wait (openai-poll-after-ms)",
        ),
    ] = 1000
