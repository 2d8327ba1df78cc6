"""Context-parallel (para-attn) setup for a diffusers pipeline across torch.distributed ranks."""

from __future__ import annotations

import weakref

import torch.distributed as dist
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from para_attn.context_parallel import init_context_parallel_mesh
from para_attn.context_parallel.diffusers_adapters import parallelize_pipe
from para_attn.parallel_vae import init_parallel_vae_mesh
from para_attn.parallel_vae.diffusers_adapters import parallelize_vae as _parallelize_vae

from .compat import apply_para_attn_shims

_parallelized: weakref.WeakSet[DiffusionPipeline] = weakref.WeakSet()


def parallelize_pipeline(pipe: DiffusionPipeline, *, device_type: str, parallelize_vae: bool = True) -> None:
    """Split ``pipe``'s transformer (and optionally VAE decode) across all ranks.

    No-op unless torch.distributed is initialised with world size > 1. Collective:
    every rank must call it, in the same order, with the same arguments.

    Uses Ulysses attention only (ring attention needs CUDA): the attention head
    count must be divisible by the world size, and so must the image and text
    token counts. Every rank must call the pipeline with the same arguments and a
    generator seeded alike, or with none (para-attn then shares rank 0's seed).
    Note para-attn patches ``__call__`` on the pipeline *class*, process-wide.
    """
    if not dist.is_initialized() or dist.get_world_size() <= 1:
        return
    if pipe in _parallelized:
        return
    apply_para_attn_shims()
    mesh = init_context_parallel_mesh(device_type, max_ring_dim_size=1)
    parallelize_pipe(pipe, mesh=mesh)
    if parallelize_vae:
        # Turns on VAE tiling; only images larger than vae.tile_sample_min_size are
        # decoded tile-parallel, and tiling changes their output slightly.
        _parallelize_vae(pipe.components["vae"], mesh=init_parallel_vae_mesh(device_type))
    _parallelized.add(pipe)
