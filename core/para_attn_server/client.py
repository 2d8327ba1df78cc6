"""The Python client, kept importable from here for existing code: it lives in the
``para-attn-client`` distribution (``para_attn_client``, installable without torch), which
this one depends on. New code: ``from para_attn_client import Client``."""

from __future__ import annotations

# The same public API, listed once, in para_attn_client.client.
from para_attn_client.client import *  # noqa: F403
from para_attn_client.client import __all__  # noqa: F401
