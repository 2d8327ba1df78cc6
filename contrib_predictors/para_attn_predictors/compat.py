"""Compatibility shims for para-attn 0.3.38 on current diffusers.

diffusers' native attention backend calls
``F.scaled_dot_product_attention(..., enable_gqa=False)``. para-attn's
``UnifiedAttnMode`` intercepts that call and forwards every keyword to
``ulysses_attn_func`` / ``ring_attn_func``, which do not accept ``enable_gqa``,
so every parallel forward pass dies with a ``TypeError``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from para_attn.para_attn_interface import UnifiedAttnMode

_UnifiedCall = Callable[..., torch.Tensor]


class _State:
    lock = threading.Lock()
    checked = False
    # The upstream method as it was before we patched it (None until patched).
    original_call: _UnifiedCall | None = None


def _upstream_call() -> _UnifiedCall:
    """The upstream ``_call_unified_attn_func``, ignoring our own patch."""
    return _State.original_call or UnifiedAttnMode._call_unified_attn_func


def para_attn_needs_enable_gqa_shim() -> bool:
    """Whether upstream para-attn still chokes on ``enable_gqa=False``.

    Calls the real upstream method through its Ulysses branch on a private
    single-rank process group (no default group needed, no communication happens
    at world size 1). Any failure other than the known ``enable_gqa`` TypeError
    propagates, so a test built on this notices when upstream changes.
    """
    # Constructed directly so the caller's default process group (if any) is not
    # touched and no collective across ranks is needed.
    group = dist.ProcessGroup(dist.HashStore(), 0, 1)  # type: ignore[attr-defined]  # public, not re-exported
    mode = UnifiedAttnMode(group)
    call = _upstream_call()
    q = torch.zeros(1, 2, 4, 8)
    call(mode, q, q, q)  # sanity: the probe itself must work without the keyword
    try:
        call(mode, q, q, q, enable_gqa=False)
    except TypeError as exc:
        if "enable_gqa" in str(exc):
            return True
        raise
    return False


def _drop_enable_gqa(original: _UnifiedCall) -> _UnifiedCall:
    @functools.wraps(original)
    def call(self: UnifiedAttnMode, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("enable_gqa", False):
            # Ulysses would also need the key/value heads split consistently; not
            # something to paper over silently.
            raise NotImplementedError("para-attn context parallelism does not support enable_gqa=True")
        return original(self, *args, **kwargs)

    return call


def apply_para_attn_shims() -> None:
    """Patch para-attn in place for current diffusers. Idempotent and thread-safe."""
    with _State.lock:
        if _State.checked:
            return
        if not para_attn_needs_enable_gqa_shim():
            _State.checked = True
            return
        original = UnifiedAttnMode._call_unified_attn_func
        # Dropping the keyword is exact: False is the default of
        # scaled_dot_product_attention, which every para-attn path ends in.
        UnifiedAttnMode._call_unified_attn_func = _drop_enable_gqa(original)
        _State.original_call = original
        _State.checked = True
