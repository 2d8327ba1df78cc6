"""A tiny, randomly initialised Flux pipeline built entirely in code.

No files and no downloads; for tests of the serving / parallel machinery only
(its images are noise). Weights depend only on ``seed`` (and the torch version),
so every rank building it with the same seed gets bit-identical weights. The same
components make the image-to-image, inpainting and Kontext pipelines (diffusers' Flux
pipelines share one set of components; Kontext is a Flux transformer trained to read a
picture's tokens beside its own).
"""

from __future__ import annotations

import string
from typing import Any, TypeVar

import torch

# Imported from their modules, not the top-level package: type checkers resolve the
# names in diffusers' lazy __init__ to its dummy placeholder classes.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import FluxKontextPipeline
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

_VOCAB_SIZE = 1000
_P = TypeVar("_P", bound=DiffusionPipeline)
_CLIP_MAX_LENGTH = 77
_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def _clip_tokenizer() -> CLIPTokenizer:
    # Byte-level BPE without merges: every byte is its own token, either inside a
    # word or word-final ("</w>"), so any text tokenizes.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pieces = [_CLIP_BOS, _CLIP_EOS, *alphabet, *(c + "</w>" for c in alphabet)]
    # model_max_length is unset without a tokenizer file; FluxPipeline pads CLIP to it.
    return CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[], model_max_length=_CLIP_MAX_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    # Unigram over single printable ASCII characters (ids 0-2 are T5's pad/eos/unk);
    # anything else maps to <unk>.
    chars = ["▁", *(c for c in string.printable if not c.isspace())]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((c, -1.0) for c in chars)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def build_tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """Build a deterministic tiny ``FluxPipeline`` (float32, CPU, eval mode)."""
    return eval_components(FluxPipeline(**tiny_flux_components(seed)))


def build_tiny_flux_kontext_pipeline(seed: int = 0) -> FluxKontextPipeline:
    """The tiny Flux components as a ``FluxKontextPipeline`` (an image editing model)."""
    return eval_components(FluxKontextPipeline(**tiny_flux_components(seed)))


def tiny_flux_components(seed: int = 0) -> dict[str, Any]:
    """The components of the tiny Flux pipelines, by their diffusers names."""
    clip_tokenizer = _clip_tokenizer()
    t5 = t5_tokenizer()
    # Seed a forked RNG so the caller's global RNG state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[4, 4, 8],
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=_VOCAB_SIZE,
                max_position_embeddings=_CLIP_MAX_LENGTH,
                hidden_size=32,
                intermediate_size=37,
                projection_dim=32,
                num_hidden_layers=5,
                num_attention_heads=4,
                layer_norm_eps=1e-5,
                hidden_act="gelu",
                # Must match the tokenizer; eos != 2 also selects the pooled token by
                # eos position rather than CLIP's legacy argmax-of-id rule.
                bos_token_id=clip_tokenizer.bos_token_id,
                eos_token_id=clip_tokenizer.eos_token_id,
                pad_token_id=clip_tokenizer.pad_token_id,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=_VOCAB_SIZE,
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=t5.pad_token_id,
                eos_token_id=t5.eos_token_id,
            )
        )
        vae = AutoencoderKL(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(4,),
            layers_per_block=1,
            latent_channels=1,
            norm_num_groups=1,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": t5,
        "transformer": transformer,
    }


def eval_components(pipe: _P) -> _P:
    """Put every module of a pipeline built from configs in eval mode: T5's dropout would
    otherwise make two runs (and two ranks) with one seed differ."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe
