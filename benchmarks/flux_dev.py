"""A FLUX.1-dev-shaped pipeline with random bf16 weights (no download), saved for a server.

    python -m benchmarks.flux_dev DIR                # FLUX.1-dev's shape, built on CUDA (~24 GB)
    python -m benchmarks.flux_dev --shape tiny DIR   # the tiny Flux of make_tiny, for a dry run

The transformer and VAE have FLUX.1-dev's dimensions; the text encoders are one-layer models
of the widths the transformer expects (the prompt encoding is not what is measured), with the
tiny pipeline's tokenizers and scheduler. The gpu benchmark suite and tests/gpu use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
FLUX_DEV_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "latent_channels": 16, "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False,
}  # fmt: skip
SHAPES = ("flux-dev", "tiny")


def flux_dev_sized_pipeline(device: str = "cuda") -> Any:
    """A ``FluxPipeline`` of FLUX.1-dev's transformer and VAE, random bf16 weights on ``device``."""
    import torch

    # The modules themselves: mypy reads diffusers' lazy __init__ names as its dummy classes.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline

    tiny = build_tiny_flux_pipeline()  # for its tokenizers and scheduler
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # 12B parameters: allocate them in bf16 where they run
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
            vae = AutoencoderKL(**FLUX_DEV_VAE)
            clip = CLIPTextModel(CLIPTextConfig(
                vocab_size=1000, hidden_size=768, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                projection_dim=768, bos_token_id=tiny.tokenizer.bos_token_id,
                eos_token_id=tiny.tokenizer.eos_token_id, pad_token_id=tiny.tokenizer.pad_token_id,
            ))  # fmt: skip
            t5 = T5EncoderModel(T5Config(
                vocab_size=1000, d_model=4096, d_kv=64, d_ff=64, num_layers=1, num_heads=2,
                pad_token_id=tiny.tokenizer_2.pad_token_id, eos_token_id=tiny.tokenizer_2.eos_token_id,
            ))  # fmt: skip
    finally:
        torch.set_default_dtype(previous)
    pipe = FluxPipeline(
        scheduler=tiny.scheduler, vae=vae, text_encoder=clip, tokenizer=tiny.tokenizer, text_encoder_2=t5,
        tokenizer_2=tiny.tokenizer_2, transformer=transformer,
    )  # fmt: skip
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def save(shape: str, directory: Path, device: str = "cuda") -> None:
    """Build the pipeline of ``shape`` (one of ``SHAPES``) and save it, as safetensors, in ``directory``."""
    if shape == "flux-dev":
        pipe = flux_dev_sized_pipeline(device)
    elif shape == "tiny":
        from para_attn_predictors.make_tiny import build

        pipe = build("flux")
    else:
        raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")
    pipe.save_pretrained(directory, safe_serialization=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flux_dev", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--shape", choices=SHAPES, default="flux-dev")
    parser.add_argument("--device", default="cuda", help="where the flux-dev weights are made (default: cuda)")
    args = parser.parse_args(argv)
    save(args.shape, args.directory, args.device)
    print(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
