"""``flux``: FLUX.1 text to image (``FluxPipeline``) split across the ranks.

    para-attn-server --model flux --model-path black-forest-labs/FLUX.1-dev --num-devices 4
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from para_attn_server import Output, hookimpl

from .diffusers_base import DiffusersPredictor, Guidance, Prompt, Seed, Side, Steps
from .media import encode_image
from .previews import PreviewEvery


class FluxPredictor(DiffusersPredictor):
    pipeline_class = "diffusers:FluxPipeline"
    splits_text = True  # joint attention: para-attn splits the T5 tokens as well

    def sequence_length(self, inputs: dict[str, Any]) -> int:
        # The VAE downsamples by 2**(levels-1) and the transformer packs 2x2 latents per token.
        pixels_per_token = 2 ** len(self.vae_config["block_out_channels"])
        return int(inputs["height"] // pixels_per_token * (inputs["width"] // pixels_per_token))

    def predict(
        self,
        *,
        prompt: Prompt,
        width: Side = 1024,
        height: Side = 1024,
        num_inference_steps: Steps = 28,
        guidance_scale: Guidance = 3.5,
        seed: Seed = None,
        output_format: Literal["png", "jpeg", "npy"] = "png",
        preview_every: PreviewEvery = 0,
    ) -> Output | None:
        result = self.generate(
            seed,
            preview_every,
            prompt=prompt,
            width=width,
            height=height,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            max_sequence_length=self.max_sequence_length,
        )
        return None if result is None else encode_image(result.images[0], output_format)


@hookimpl
def register_predictors(register: Callable[[str, type[Any]], None]) -> None:
    register("flux", FluxPredictor)
