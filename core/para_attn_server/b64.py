"""Base64 for outputs, at SIMD speed (pybase64, as vLLM uses it): an order of magnitude
faster than ``binascii`` on a 16 MiB output, both ways (``python -m benchmarks --only micro``;
figures in benchmarks/README.md). Same results and the same ``binascii.Error`` on bad input.
Only the strict decode has the SIMD path, so decoding always validates."""

from __future__ import annotations

import pybase64


def decode(text: bytes) -> bytes:
    """The bytes of base64 ``text`` (strict: only its alphabet, whole quanta)."""
    return pybase64.b64decode(text, validate=True)


def encode(data: bytes) -> bytes:
    """The base64 text of ``data``, without newlines."""
    return pybase64.b64encode(data)
