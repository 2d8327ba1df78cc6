"""Compatibility shims for para-attn 0.3.38 on current diffusers (and one for diffusers itself).

Each breakage has a detector that runs the upstream code and a shim applied only where
the detector finds it broken; tests/contrib/test_compat.py fails when upstream changes.

1. diffusers' native attention backend calls
``F.scaled_dot_product_attention(..., enable_gqa=False)``. para-attn's
``UnifiedAttnMode`` intercepts that call and forwards every keyword to
``ulysses_attn_func`` / ``ring_attn_func``, which do not accept ``enable_gqa``,
so every parallel forward pass dies with a ``TypeError``.
2. para-attn's Wan adapter cannot run diffusers' current ``WanTransformer3DModel`` (below).
3. diffusers 0.42's ``WanImageToVideoPipeline`` cleans prompts with ``ftfy`` whether or
not it is installed (``WanPipeline`` skips it when it is not), so without ftfy every
image-to-video call dies with a ``NameError`` (below).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from para_attn import primitives
from para_attn.para_attn_interface import UnifiedAttnMode
from torch.distributed.device_mesh import DeviceMesh

log = logging.getLogger(__name__)

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


# ---- Wan: para-attn's adapter predates diffusers' (cos, sin) rotary embedding ----------
#
# para-attn 0.3.38's Wan adapter replaces WanTransformer3DModel.forward with a copy of an
# older diffusers forward. Since diffusers made ``rope`` return a (cos, sin) tuple of shape
# (1, seq, 1, dim) the copy dies chunking that tuple as one tensor (and would chunk the
# wrong axis of it); it also drops Wan 2.2's per-token timesteps. Our replacement leaves
# diffusers' forward alone and splits the sequence around the blocks with module hooks.

_WAN_ROTARY_ERROR = "'tuple' object has no attribute 'shape'"


def para_attn_wan_adapter_is_broken(mesh: DeviceMesh) -> bool:
    """Whether para-attn's Wan adapter fails on this diffusers' ``WanTransformer3DModel``.

    Runs a tiny random transformer unsplit and through para-attn's adapter over ``mesh``
    and compares. Collective: every rank of ``mesh`` must call it. The known rotary
    failure and a wrong result return True; any other error propagates, so a test built
    on this notices when upstream changes.
    """
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
    from para_attn.context_parallel.diffusers_adapters.wan import parallelize_transformer

    apply_para_attn_shims()  # so only the Wan breakage can show
    ulysses = mesh["ulysses"].size()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=ulysses, attention_head_dim=12, in_channels=4,
            out_channels=4, text_dim=8, freq_dim=16, ffn_dim=8, num_layers=1, rope_max_seq_len=max(32, mesh.size()),
        ).to(mesh.device_type).eval()
        latents = torch.randn(1, 4, mesh.size(), 4, 4, device=mesh.device_type)  # 4 tokens per rank
        text = torch.randn(1, 5, 8, device=mesh.device_type)
    timestep = torch.tensor([500], device=mesh.device_type)
    with torch.no_grad():
        expected = transformer(latents, timestep, text, return_dict=False)[0]
        parallelize_transformer(transformer, mesh=mesh)
        try:
            got = transformer(latents, timestep, text, return_dict=False)[0]
        except AttributeError as exc:
            if _WAN_ROTARY_ERROR in str(exc):
                return True
            raise
    return not torch.allclose(got, expected, atol=1e-4)


def _split_wan_block_inputs(
    seq_group: Any, *, first: bool
) -> Callable[[torch.nn.Module, tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]:
    names = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb")

    def chunk(tensor: torch.Tensor) -> torch.Tensor:
        part: torch.Tensor = primitives.get_assigned_chunk(tensor, dim=1, group=seq_group)
        return part

    def split(
        module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        inputs = {**dict(zip(names, args, strict=False)), **kwargs}
        if first:  # the later blocks get the previous block's (split) output
            inputs["hidden_states"] = chunk(inputs["hidden_states"])
        # The forward hands every block the same full rotary and timestep tensors.
        rotary = inputs["rotary_emb"]
        if not (isinstance(rotary, tuple) and all(t.ndim == 4 for t in rotary)):
            raise NotImplementedError("expected Wan's rotary embedding as (cos, sin) of shape (1, seq, 1, dim)")
        inputs["rotary_emb"] = tuple(chunk(t) for t in rotary)
        if inputs["temb"].ndim == 4:  # Wan 2.2 TI2V: one timestep embedding per token
            inputs["temb"] = chunk(inputs["temb"])
        return (), inputs

    return split


def _without_context_parallel(forward: Callable[..., Any]) -> Callable[..., Any]:
    # Cross-attention: this rank's queries against the whole prompt, which every rank
    # holds, is exact without communication.
    @functools.wraps(forward)
    def local(*args: Any, **kwargs: Any) -> Any:
        with UnifiedAttnMode.disable():
            return forward(*args, **kwargs)

    return local


def parallelize_wan_transformer(transformer: Any, mesh: DeviceMesh) -> None:
    """Split a ``WanTransformer3DModel``'s token sequence across ``mesh`` (our adapter).

    The blocks' inputs are chunked along the sequence, self-attention runs under
    para-attn's ``UnifiedAttnMode`` (Ulysses, and ring attention on CUDA), and the last
    block's output is gathered, so the output norm and unpatchify see the full sequence.
    """
    if getattr(transformer, "_is_parallelized", False):
        return
    apply_para_attn_shims()
    seq_group = mesh["ring", "ulysses"]._flatten()  # as para-attn's adapters do
    blocks = transformer.blocks
    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(_split_wan_block_inputs(seq_group, first=index == 0), with_kwargs=True)
    blocks[-1].register_forward_hook(
        lambda module, args, output: primitives.get_complete_tensor(output, dim=1, group=seq_group)
    )
    for block in blocks:
        block.attn2.forward = _without_context_parallel(block.attn2.forward)
    forward = transformer.forward

    @functools.wraps(forward)
    def parallel_forward(*args: Any, **kwargs: Any) -> Any:
        with UnifiedAttnMode(mesh):
            return forward(*args, **kwargs)

    transformer.forward = parallel_forward
    transformer._is_parallelized = True


def parallelize_wan_transformers(pipe: Any, mesh: DeviceMesh) -> None:
    """Split a Wan pipeline's transformer(s) (Wan 2.2 A14B has two) across ``mesh``,
    with para-attn's adapter where it works on this diffusers and ours where not."""
    from para_attn.context_parallel.diffusers_adapters.wan import parallelize_transformer

    ours = para_attn_wan_adapter_is_broken(mesh)
    if ours:
        log.info("para-attn's Wan adapter fails on this diffusers: splitting Wan with ours (compat.py)")
    for name in ("transformer", "transformer_2"):
        transformer = getattr(pipe, name, None)
        if transformer is None:
            continue
        if ours:
            parallelize_wan_transformer(transformer, mesh)
        else:
            parallelize_transformer(transformer, mesh=mesh)


def can_parallelize_vae(vae: torch.nn.Module) -> bool:
    """Whether para-attn's parallel decode reproduces this VAE's own (tiled) decode.

    para-attn's AutoencoderKLWan decode predates Wan 2.2's patchified VAE (it never
    unpatchifies), so such VAEs decode on each rank alone.
    """
    if type(vae).__name__ == "AutoencoderKLWan":
        return getattr(vae.config, "patch_size", None) is None
    return True


# ---- diffusers: Wan image to video needs ftfy, text to video does not -----------------------


class _NoFtfy:
    """What diffusers' Wan text-to-video pipeline does without ftfy: the text unchanged."""

    @staticmethod
    def fix_text(text: str) -> str:
        return text


def wan_i2v_needs_ftfy_shim() -> bool:
    """Whether diffusers' image-to-video prompt cleaning still fails without ftfy. Runs the
    upstream function; any failure other than the known ``NameError`` propagates."""
    from diffusers.pipelines.wan import pipeline_wan_i2v

    if getattr(pipeline_wan_i2v, "ftfy", None) is _NoFtfy:
        return True  # ours already
    try:
        pipeline_wan_i2v.basic_clean("a cat")  # type: ignore[no-untyped-call]
    except NameError as exc:
        if "ftfy" in str(exc):
            return True
        raise
    return False


def apply_diffusers_shims() -> None:
    """Clean Wan image-to-video prompts as Wan text to video does when ftfy is missing
    (install ftfy to have both fix mis-encoded text). Idempotent."""
    if wan_i2v_needs_ftfy_shim():
        from diffusers.pipelines.wan import pipeline_wan_i2v

        pipeline_wan_i2v.ftfy = _NoFtfy  # type: ignore[attr-defined]
