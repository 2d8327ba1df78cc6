"""para-attn-server: serve diffusers pipelines split across worker ranks over HTTP."""

from typing import TYPE_CHECKING, Any

from para_attn_server.adapters import AdapterReport, Lora
from para_attn_server.errors import ConfigurationError, InputError, JobCancelled, SetupError
from para_attn_server.lorafiles import AdapterFit
from para_attn_server.media import Image, Mask, Video
from para_attn_server.plugin.markers import hookimpl
from para_attn_server.predictor import PREVIEW_MAX_SIDE, JobContext, Output, Predictor, RankContext, current_job
from para_attn_server.settings import Settings

if TYPE_CHECKING:
    from para_attn_server.server import ParaAttentionServer

__all__ = [
    "PREVIEW_MAX_SIDE",
    "AdapterFit",
    "AdapterReport",
    "ConfigurationError",
    "Image",
    "InputError",
    "JobCancelled",
    "JobContext",
    "Lora",
    "Mask",
    "Output",
    "ParaAttentionServer",
    "Predictor",
    "RankContext",
    "Settings",
    "SetupError",
    "Video",
    "current_job",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    # The server (Litestar: see ``benchmarks --only micro``) loads on first use: ranks and predictors
    # import this package and never need it.
    if name == "ParaAttentionServer":
        from para_attn_server.server import ParaAttentionServer

        return ParaAttentionServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
