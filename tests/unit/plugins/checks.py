"""A check the OpenAI plugin's unit tests share."""

from __future__ import annotations

from typing import Any

import pytest

from para_attn_server import InputError


def rejected(call: Any, field: str) -> str:
    """``call()`` raises an ``InputError`` naming ``field``; its message."""
    with pytest.raises(InputError) as caught:
        call()
    assert caught.value.field == field, caught.value
    return caught.value.message
