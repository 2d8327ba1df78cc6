"""para-attn-server: serve diffusers pipelines split across worker ranks over HTTP."""

from .errors import ConfigurationError, InputError, JobCancelled, SetupError
from .plugins import hookimpl
from .predictor import JobContext, Output, Predictor, RankContext, current_job
from .server import ParaAttentionServer
from .settings import Settings

__all__ = [
    "ConfigurationError",
    "InputError",
    "JobCancelled",
    "JobContext",
    "Output",
    "ParaAttentionServer",
    "Predictor",
    "RankContext",
    "Settings",
    "SetupError",
    "current_job",
    "hookimpl",
]
