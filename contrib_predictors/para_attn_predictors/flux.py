"""``flux``: FLUX.1 split across the ranks: text to image (``FluxPipeline``), image to image
(``FluxImg2ImgPipeline``) and inpainting (``FluxInpaintPipeline``) from one set of weights,
or image editing with a Kontext model (``FluxKontextPipeline``).

    para-attn-server --model flux --model-path black-forest-labs/FLUX.1-dev --num-devices 4
    para-attn-server --model flux --model-path black-forest-labs/FLUX.1-Kontext-dev --num-devices 4

The model directory's pipeline class (``model_index.json``) decides which: a ``FluxPipeline``
directory serves text to image, and image to image (``image`` + ``strength``) and inpainting
(``image`` + ``mask_image`` + ``strength``) through pipelines built from the same loaded
components; a ``FluxKontextPipeline`` directory edits ``image`` as the prompt says (or, without
one, generates from the prompt alone). The output is always ``width`` x ``height``: the picture
is resized to it (image to image, inpainting), or read beside it (Kontext).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, cast

import msgspec

from para_attn_server import Image, InputError, Mask, Output, hookimpl

from .diffusers_base import DiffusersPredictor, Guidance, Prompt, Seed, Settings, Side, Steps, Strength, check_strength
from .media import encode_image
from .previews import PreviewEvery

if TYPE_CHECKING:
    from PIL.Image import Image as Picture

KONTEXT = "FluxKontextPipeline"
TrueCfgScale = Annotated[
    float,
    msgspec.Meta(
        ge=1,
        le=30,
        description="Classifier-free guidance with negative_prompt (two passes per step: -o cfg=2 runs them at "
        "once); 1: none",
    ),
]


class FluxSettings(Settings, kw_only=True, forbid_unknown_fields=True):
    # Kontext reads the picture at the trained resolution nearest its aspect ratio (about a
    # megapixel, diffusers' default); 0: at its own size (rounded down to whole tokens).
    kontext_auto_resize: bool = True


class FluxPredictor(DiffusersPredictor):
    pipeline_class = "diffusers:FluxPipeline"
    pipeline_classes: ClassVar[dict[str, str]] = {
        # Saved from any of the three: the same components, loaded once as text to image.
        "FluxPipeline": "diffusers:FluxPipeline",
        "FluxImg2ImgPipeline": "diffusers:FluxPipeline",
        "FluxInpaintPipeline": "diffusers:FluxPipeline",
        KONTEXT: "diffusers:FluxKontextPipeline",
    }
    options_type = FluxSettings
    splits_text = True  # joint attention: para-attn splits the T5 tokens as well
    guidance_field = "true_cfg_scale"

    def model_defaults(self) -> dict[str, Any]:
        # A transformer without guidance embedding is timestep-distilled (FLUX.1-schnell's
        # card): 4 steps, and guidance does nothing.
        if self.transformer_config.get("guidance_embeds", True):
            return {}
        return {"num_inference_steps": 4, "guidance_scale": 0.0}

    @property
    def kontext(self) -> bool:
        return self.pipeline_name == KONTEXT

    def pixels_per_token(self) -> int:
        # The VAE downsamples by 2**(levels-1) and the transformer packs 2x2 latents per token.
        return int(2 ** len(self.vae_config["block_out_channels"]))

    def sequence_length(self, inputs: dict[str, Any]) -> int:
        # The output's tokens; a Kontext picture's are made to split too (kontext_picture).
        per_token = self.pixels_per_token()
        return int(inputs["height"] // per_token * (inputs["width"] // per_token))

    def variant_classes(self) -> dict[str, str]:
        if self.kontext:
            return {}
        return {"img2img": "diffusers:FluxImg2ImgPipeline", "inpaint": "diffusers:FluxInpaintPipeline"}

    def validate(self, inputs: dict[str, Any]) -> None:
        image, mask = inputs.get("image"), inputs.get("mask_image")
        if mask is not None and self.kontext:
            raise InputError(f"this model ({KONTEXT}) edits the image as the prompt says: no mask", "mask_image")
        if mask is not None and image is None:
            raise InputError("needs the image it masks: send image too", "mask_image")
        if image is not None and not self.kontext:
            check_strength(inputs)
        super().validate(inputs)

    def predict(
        self,
        *,
        prompt: Prompt,
        image: Image | None = None,
        mask_image: Mask | None = None,
        strength: Strength = 0.6,
        width: Side = 1024,
        height: Side = 1024,
        num_inference_steps: Steps = 28,
        guidance_scale: Guidance = 3.5,
        negative_prompt: Prompt | None = None,
        true_cfg_scale: TrueCfgScale = 1.0,
        seed: Seed = None,
        output_format: Literal["png", "jpeg", "npy"] = "png",
        preview_every: PreviewEvery = 0,
    ) -> Output | None:
        # ``image`` and ``mask_image`` arrive as PIL images (RGB and "L"), alike on every rank.
        fields = dict(locals())  # the request's fields, as predict_batch takes each job's
        del fields["self"]
        return self.predict_batch([fields])[0]  # a lone job is a batch of one: one code path

    def pipeline_call(self, fields: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        image, mask_image = fields.get("image"), fields.get("mask_image")
        width, height = fields["width"], fields["height"]
        call: dict[str, Any] = {
            "prompt": fields["prompt"],
            "width": width,
            "height": height,
            "num_inference_steps": fields["num_inference_steps"],
            "guidance_scale": fields["guidance_scale"],
            "max_sequence_length": self.max_sequence_length,
        }
        if fields.get("negative_prompt") is not None:  # diffusers guides only with one
            call.update(negative_prompt=fields["negative_prompt"], true_cfg_scale=fields["true_cfg_scale"])
        pipe = None  # the loaded pipeline: text to image, or Kontext
        if self.kontext:
            # max_area = the output's: diffusers otherwise scales width x height to a megapixel.
            call["max_area"] = width * height
            if image is not None:
                call["image"], call["_auto_resize"] = self.kontext_picture(cast("Picture", image)), False
        elif image is not None:
            pipe = self.variants["img2img" if mask_image is None else "inpaint"]
            call.update(image=image, strength=fields["strength"])
            if mask_image is not None:
                call["mask_image"] = mask_image
        return pipe, call

    def guided(self, call: dict[str, Any]) -> bool:
        # FluxPipeline's do_true_cfg: a scale over 1 and a negative prompt.
        return bool(call.get("true_cfg_scale", 1.0) > 1 and call.get("negative_prompt") is not None)

    def batch_key(self, inputs: dict[str, Any]) -> Hashable | None:
        # A batch's jobs all guide or none does: one call takes one list of negative prompts.
        key = super().batch_key(inputs)
        return None if key is None else (key, inputs.get("negative_prompt") is None)

    def encode(self, result: Any, index: int, fields: dict[str, Any]) -> Output:
        return encode_image(result.images[index], fields["output_format"])

    def kontext_picture(self, picture: Picture) -> Picture:
        """The picture as Kontext reads it: at the trained resolution nearest its aspect ratio
        (as diffusers picks it) or its own size (``-o kontext_auto_resize=0``), in whole tokens,
        shrunk by the fewest tokens that make its token count split across the ranks (its
        tokens join the output's in one sequence). Raises ``InputError`` on every rank alike."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        per_token = self.pixels_per_token()
        height, width = self.pipe.image_processor.get_default_height_width(picture)  # whole tokens
        if cast(FluxSettings, self.settings).kontext_auto_resize and width and height:
            _, width, height = min((abs(width / height - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        columns, rows = splittable_grid(width // per_token, height // per_token, self.layout.sequence)
        if columns < 1:
            raise InputError(
                f"{picture.size[0]}x{picture.size[1]} pixels are too few to split across {self.layout.sequence} ranks "
                f"in tokens of {per_token}x{per_token} pixels",
                "image",
            )
        size = (columns * per_token, rows * per_token)
        # diffusers' own resize (a no-op at the picture's size), as its _auto_resize does it.
        if picture.size == size:
            return picture
        resized: Picture = self.pipe.image_processor.resize(picture, size[1], size[0])
        return resized


def splittable_grid(columns: int, rows: int, world_size: int) -> tuple[int, int]:
    """The largest ``columns' x rows'`` grid within ``columns x rows``, each side shorter by
    less than ``world_size``, whose cell count divides by ``world_size`` (ties: the shape
    nearest the original's); ``(0, 0)`` when there is none."""
    best: tuple[int, float, int, int] = (0, 0.0, 0, 0)
    for c in range(columns, max(columns - world_size, 0), -1):
        for r in range(rows, max(rows - world_size, 0), -1):
            if (c * r) % world_size == 0:
                score = (c * r, -abs(math.log(c * rows / (r * columns))), c, r)
                best = max(best, score)
    return best[2], best[3]


@hookimpl
def register_predictors(register: Callable[[str, type[Any]], None]) -> None:
    register("flux", FluxPredictor)
