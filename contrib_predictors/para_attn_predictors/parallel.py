"""Context-parallel (para-attn) setup for a diffusers pipeline across torch.distributed ranks."""

from __future__ import annotations

import math
import types
import weakref
from typing import Any

import torch
import torch.distributed as dist
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from para_attn.context_parallel import init_context_parallel_mesh
from para_attn.context_parallel.diffusers_adapters import parallelize_pipe
from para_attn.parallel_vae import init_parallel_vae_mesh
from para_attn.parallel_vae.diffusers_adapters import parallelize_vae as _parallelize_vae

from para_attn_server import ConfigurationError

from .compat import apply_para_attn_shims, can_parallelize_vae, parallelize_wan_transformers

_parallelized: weakref.WeakSet[DiffusionPipeline] = weakref.WeakSet()


def context_parallel_degrees(world_size: int, num_heads: int) -> tuple[int, int]:
    """``(ulysses, ring)``: Ulysses over the largest share of the ranks that divides the
    head count (it splits heads), ring attention over the rest (it splits only sequences)."""
    ulysses = math.gcd(world_size, num_heads)
    return ulysses, world_size // ulysses


def check_context_parallel(world_size: int, num_heads: int, device_type: str) -> None:
    """Raise ``ConfigurationError`` when ``world_size`` ranks cannot split the attention."""
    ulysses, ring = context_parallel_degrees(world_size, num_heads)
    if ring > 1 and device_type != "cuda":
        raise ConfigurationError(
            f"{world_size} ranks cannot split {num_heads} attention heads: Ulysses covers {ulysses} of them "
            f"and the remaining factor {ring} needs ring attention, which para-attn runs only on CUDA; "
            f"use a rank count that divides {num_heads}"
        )


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def parallelize_pipeline(pipe: DiffusionPipeline, *, device_type: str, parallelize_vae: bool = True) -> bool:
    """Split ``pipe``'s transformer (and optionally VAE decode) across all ranks.

    No-op unless torch.distributed is initialised with world size > 1. Collective:
    every rank must call it, in the same order, with the same arguments. Returns whether
    the VAE was parallelized: its decode is then collective, so every rank must decode.

    The mesh is Ulysses where the head count allows and ring attention for the rest
    (CUDA only); the image and text token counts must divide by the world size. Every
    rank must call the pipeline with the same arguments and a generator seeded alike.
    Note para-attn patches ``__call__`` on the pipeline *class*, process-wide.
    """
    world_size = _world_size()
    if world_size <= 1 or pipe in _parallelized:
        return False
    num_heads = int(pipe.transformer.config.num_attention_heads)
    check_context_parallel(world_size, num_heads, device_type)
    apply_para_attn_shims()
    mesh = init_context_parallel_mesh(device_type, max_ulysses_dim_size=num_heads)
    if type(pipe).__name__.startswith("Wan"):
        parallelize_wan_transformers(pipe, mesh)
    else:
        parallelize_pipe(pipe, mesh=mesh)
    vae = pipe.components.get("vae")
    vae_split = parallelize_vae and vae is not None and can_parallelize_vae(vae)
    if vae_split:
        # For AutoencoderKL this turns on tiling: images larger than
        # vae.tile_sample_min_size are decoded tile-parallel, and tiling changes them slightly.
        _parallelize_vae(vae, mesh=init_parallel_vae_mesh(device_type))
    _parallelized.add(pipe)
    return vae_split


def parallelize_like(pipe: DiffusionPipeline, base: DiffusionPipeline) -> None:
    """Split ``pipe``, a pipeline built from ``base``'s components (``Cls(**base.components)``,
    such as ``FluxImg2ImgPipeline`` beside ``FluxPipeline``), as ``base`` was split.

    The transformer and VAE are ``base``'s own objects, already split (their patches are on
    the objects). What is left is para-attn's patch of the pipeline *class*'s ``__call__``
    (a seed drawn alike on every rank when a call passes no generator): para-attn applies
    it per class, so every pipeline class a predictor calls needs it. No collective; a no-op
    when ``base`` was not split.
    """
    if base not in _parallelized or pipe in _parallelized:
        return
    if getattr(pipe, "transformer", None) is not base.transformer:
        raise ValueError(f"{type(pipe).__name__} does not share {type(base).__name__}'s transformer")
    if not type(base).__name__.startswith("Wan"):  # our Wan split patches no class (compat.py)
        parallelize_pipe(pipe, shallow_patch=True)  # the class patch only: the transformer is split
    _parallelized.add(pipe)


def enable_first_block_cache(transformer: torch.nn.Module, threshold: float) -> None:
    """diffusers' first-block cache, with its skip decision made for all ranks at once.

    Each rank sees only its shard of the sequence, so diffusers' per-rank decision could
    let one rank skip the remaining blocks while another runs them and waits forever in
    their collectives. Here the residual sums are all-reduced first: every rank decides
    as a single process holding the whole sequence would.
    """
    from diffusers.hooks.first_block_cache import FirstBlockCacheConfig

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))  # type: ignore[operator]
    if _world_size() <= 1:
        return
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("fbc_leader_block_hook") if registry is not None else None
        if hook is not None:
            hook._should_compute_remaining_blocks = types.MethodType(_should_compute_everywhere, hook)


@torch.compiler.disable  # type: ignore[untyped-decorator]  # like diffusers' own decision: eager, with .item()
def _should_compute_everywhere(hook: Any, residual: torch.Tensor) -> bool:
    previous = hook.state_manager.get_state().head_block_residual
    if previous is None:  # the first step of a run, on every rank alike
        return True
    sums = torch.stack([(residual - previous).abs().sum(), previous.abs().sum()]).float()
    dist.all_reduce(sums)
    # Same element count on both sides: the ratio of sums is diffusers' ratio of means.
    return bool((sums[0] / sums[1]).item() > hook.threshold)
