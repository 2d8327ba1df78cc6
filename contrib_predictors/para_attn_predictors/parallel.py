"""Context-parallel (para-attn) setup for a diffusers pipeline across torch.distributed ranks."""

from __future__ import annotations

import functools
import types
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from para_attn import primitives
from para_attn.context_parallel.diffusers_adapters import parallelize_pipe
from para_attn.para_attn_interface import UnifiedAttnMode
from para_attn.parallel_vae import init_parallel_vae_mesh
from para_attn.parallel_vae.diffusers_adapters import parallelize_vae as _parallelize_vae
from torch.distributed.device_mesh import DeviceMesh

from .compat import apply_para_attn_shims, can_parallelize_vae, parallelize_wan_transformers
from .guidance import CfgSplit
from .layouts import Layout, LayoutOptions, choose_layout, layout_mesh

CONTROLNET_SAMPLES = ("controlnet_block_samples", "controlnet_single_block_samples")

_parallelized: weakref.WeakSet[DiffusionPipeline] = weakref.WeakSet()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


@dataclass(frozen=True)
class Parallel:
    """How ``parallelize_pipeline`` split a pipeline, for the predictor that calls it."""

    layout: Layout
    decode_on_every_rank: bool  # the VAE decode is split: every rank must decode
    cfg: CfgSplit | None = None  # cfg=2: wrap each transformer's forward with it
    sequence_group: dist.ProcessGroup | None = None  # the ranks that split one pass


def parallelize_pipeline(
    pipe: DiffusionPipeline, *, device_type: str, parallelize_vae: bool = True, layout: Layout | None = None
) -> Parallel:
    """Split ``pipe``'s transformer (and optionally VAE decode) across all ranks as ``layout``
    says (None: the automatic one, ``layouts.choose_layout``).

    No-op unless torch.distributed is initialised with world size > 1. Collective:
    every rank must call it, in the same order, with the same arguments. The result says
    whether the VAE was parallelized (its decode is then collective, so every rank must
    decode) and, with ``cfg=2``, the split of the guided and unguided passes.

    Every rank must call the pipeline with the same arguments and a generator seeded alike
    (the second half of a cfg=2 layout with the prompts swapped: ``CfgSplit.swap_prompts``).
    Note para-attn patches ``__call__`` on the pipeline *class*, process-wide.
    """
    world_size = _world_size()
    if layout is None:
        heads = int(pipe.transformer.config.num_attention_heads)
        layout = choose_layout(LayoutOptions(), world_size, heads=heads, device_type=device_type, guidance=None)
    if world_size <= 1 or pipe in _parallelized:
        return Parallel(layout, decode_on_every_rank=False)
    apply_para_attn_shims()
    mesh = layout_mesh(layout, device_type)
    sequence_mesh = mesh["batch", "ring", "ulysses"]  # this rank's half: one pass, split
    # The ranks of this half's pass as one group (None: every rank, the default group).
    group = mesh["ring", "ulysses"]._flatten().get_group() if layout.cfg > 1 else None
    if type(pipe).__name__.startswith("Wan"):
        parallelize_wan_transformers(pipe, sequence_mesh)
    elif group is not None:
        parallelize_flux_transformer(pipe.transformer, sequence_mesh, group)
        parallelize_pipe(pipe, shallow_patch=True)  # para-attn's class patch: a shared seed
    else:
        parallelize_pipe(pipe, mesh=sequence_mesh)
    vae = pipe.components.get("vae")
    vae_split = parallelize_vae and vae is not None and can_parallelize_vae(vae)
    if vae_split:
        # For AutoencoderKL this turns on tiling: images larger than
        # vae.tile_sample_min_size are decoded tile-parallel, and tiling changes them slightly.
        _parallelize_vae(vae, mesh=init_parallel_vae_mesh(device_type))
    _parallelized.add(pipe)
    cfg = CfgSplit(mesh["cfg"].get_group(), mesh["cfg"].get_local_rank()) if layout.cfg > 1 else None
    return Parallel(layout, vae_split, cfg, group)


def parallelize_flux_transformer(transformer: torch.nn.Module, mesh: DeviceMesh, group: dist.ProcessGroup) -> None:
    """Split a ``FluxTransformer2DModel``'s sequence across ``mesh``, a part of the ranks
    (``group``: the same ranks as one process group).

    para-attn's Flux adapter chunks the position ids over the whole world, so it splits
    correctly only when one pass spans every rank; with cfg=2 each half splits its own pass
    here, as that adapter does otherwise: image and text tokens chunked, attention under
    para-attn's ``UnifiedAttnMode``, the output gathered.
    """
    if getattr(transformer, "_is_parallelized", False):
        return
    forward = transformer.forward

    def chunk(tensor: torch.Tensor) -> torch.Tensor:
        part: torch.Tensor = primitives.get_assigned_chunk(tensor, dim=-2, group=group)
        return part

    @functools.wraps(forward)
    def split_forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if any(kwargs.get(name) is not None for name in CONTROLNET_SAMPLES) or args:
            raise NotImplementedError("splitting Flux with cfg=2 takes keyword arguments and no ControlNet")
        for name in ("encoder_hidden_states", "img_ids", "txt_ids"):
            if kwargs.get(name) is not None:
                kwargs[name] = chunk(kwargs[name])
        with UnifiedAttnMode(mesh):
            output = forward(chunk(hidden_states), **kwargs)
        sample = primitives.get_complete_tensor(output[0], dim=-2, group=group)
        return (sample, *output[1:]) if isinstance(output, tuple) else type(output)(sample=sample)

    transformer.forward = split_forward
    transformer._is_parallelized = True  # type: ignore[assignment]


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


def enable_first_block_cache(
    transformer: torch.nn.Module, threshold: float, group: dist.ProcessGroup | None = None
) -> None:
    """diffusers' first-block cache, with its skip decision made for all ranks at once.

    Each rank sees only its shard of the sequence, so diffusers' per-rank decision could
    let one rank skip the remaining blocks while another runs them and waits forever in
    their collectives. Here the residual sums are all-reduced first: every rank decides
    as a single process holding the whole sequence would (``group``: the ranks that split
    one pass, with cfg=2 half of them; None: all).
    """
    from diffusers.hooks.first_block_cache import FirstBlockCacheConfig

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))  # type: ignore[operator]
    if _world_size() <= 1:
        return
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("fbc_leader_block_hook") if registry is not None else None
        if hook is not None:
            hook.sequence_group = group
            hook._should_compute_remaining_blocks = types.MethodType(_should_compute_everywhere, hook)


@torch.compiler.disable  # type: ignore[untyped-decorator]  # like diffusers' own decision: eager, with .item()
def _should_compute_everywhere(hook: Any, residual: torch.Tensor) -> bool:
    previous = hook.state_manager.get_state().head_block_residual
    if previous is None:  # the first step of a run, on every rank alike
        return True
    sums = torch.stack([(residual - previous).abs().sum(), previous.abs().sum()]).float()
    dist.all_reduce(sums, group=hook.sequence_group)
    # Same element count on both sides: the ratio of sums is diffusers' ratio of means.
    return bool((sums[0] / sums[1]).item() > hook.threshold)
