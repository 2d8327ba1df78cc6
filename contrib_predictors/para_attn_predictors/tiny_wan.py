"""Tiny, randomly initialised Wan pipelines built entirely in code: text to video and image
to video (Wan 2.1 I2V: a CLIP vision encoder beside the text encoder, and a transformer
that reads the picture's latents in extra input channels).

Their transformers, VAE and image encoder follow the dummy components of diffusers' own
Wan pipeline tests (tests/pipelines/wan/test_wan.py and test_wan_image_to_video.py); the
T5 text encoder and tokenizer are the local ones of ``tiny_flux`` (no download).
For tests and trials of the serving machinery only: its videos are noise.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import WanPipeline
from diffusers.pipelines.wan.pipeline_wan_i2v import WanImageToVideoPipeline
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from .tiny_flux import eval_components, t5_tokenizer

_TEXT_DIM = 32
_IMAGE_DIM = 4  # the CLIP vision encoder's hidden size: the transformer reads its hidden states
_IMAGE_SIDE = 32  # pixels the image encoder sees (its processor resizes and crops to this)


def _components(seed: int, *, image_to_video: bool) -> dict[str, Any]:
    tokenizer = t5_tokenizer()
    components: dict[str, Any] = {"tokenizer": tokenizer, "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components["vae"] = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
        components["text_encoder"] = UMT5EncoderModel(
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
        components["transformer"] = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            # Image to video: the noise (16) beside the picture's latents (16) and their mask (4).
            in_channels=36 if image_to_video else 16,
            out_channels=16,
            text_dim=_TEXT_DIM,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
            image_dim=_IMAGE_DIM if image_to_video else None,
        )
        if image_to_video:
            components["image_encoder"] = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=_IMAGE_DIM,
                    projection_dim=_IMAGE_DIM,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    image_size=_IMAGE_SIDE,
                    intermediate_size=16,
                    patch_size=1,
                )
            )
    if image_to_video:
        components["image_processor"] = CLIPImageProcessor(crop_size=_IMAGE_SIDE, size=_IMAGE_SIDE)
    return components


def build_tiny_wan_pipeline(seed: int = 0) -> WanPipeline:
    """Build a deterministic tiny ``WanPipeline`` (float32, CPU, eval mode).

    Two attention heads, so Ulysses splits it across at most two ranks; the VAE keeps
    Wan's 8x spatial and 4x temporal compression.
    """
    return eval_components(WanPipeline(**_components(seed, image_to_video=False)))


def build_tiny_wan_i2v_pipeline(seed: int = 0) -> WanImageToVideoPipeline:
    """Build a deterministic tiny ``WanImageToVideoPipeline`` (Wan 2.1 I2V's layout: float32,
    CPU, eval mode); the same VAE and text encoder as ``build_tiny_wan_pipeline``."""
    return eval_components(WanImageToVideoPipeline(**_components(seed, image_to_video=True)))
