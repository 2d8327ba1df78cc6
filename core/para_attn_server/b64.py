"""Base64 for outputs, at SIMD speed (pybase64, as vLLM uses it): a 16 MiB output's
base64 decodes in ~3 ms here where ``binascii`` takes ~100 ms, and encodes in ~2.5 ms where
it takes ~40 ms. Same results and the same ``binascii.Error`` on bad input. Only the strict
decode has the SIMD path: without ``validate`` pybase64 takes ~12 ms."""

from __future__ import annotations

import pybase64


def decode(text: bytes) -> bytes:
    """The bytes of base64 ``text`` (strict: only its alphabet, whole quanta)."""
    return pybase64.b64decode(text, validate=True)


def encode(data: bytes) -> bytes:
    """The base64 text of ``data``, without newlines."""
    return pybase64.b64encode(data)
