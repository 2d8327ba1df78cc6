"""A tiny, randomly initialised Wan text-to-video pipeline built entirely in code.

Its transformer and VAE follow the dummy components of diffusers' own Wan pipeline tests;
the T5 text encoder and tokenizer are the local ones of ``tiny_flux`` (no download).
For tests and trials of the serving machinery only: its videos are noise.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import WanPipeline
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from transformers import UMT5Config, UMT5EncoderModel

from .tiny_flux import eval_components, t5_tokenizer

_TEXT_DIM = 32


def build_tiny_wan_pipeline(seed: int = 0) -> WanPipeline:
    """Build a deterministic tiny ``WanPipeline`` (float32, CPU, eval mode).

    Two attention heads, so Ulysses splits it across at most two ranks; the VAE keeps
    Wan's 8x spatial and 4x temporal compression.
    """
    tokenizer = t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=1000,
                d_model=_TEXT_DIM,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=_TEXT_DIM,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
    pipe = WanPipeline(
        tokenizer=tokenizer,  # type: ignore[arg-type]  # any T5 tokenizer; diffusers annotates AutoTokenizer
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=transformer,
    )
    return eval_components(pipe)
