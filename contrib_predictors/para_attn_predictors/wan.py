"""``wan``: Wan 2.1 / 2.2 text to video (``WanPipeline``) or image to video
(``WanImageToVideoPipeline``) split across the ranks, as MP4.

    para-attn-server --model wan --model-path Wan-AI/Wan2.1-T2V-14B-Diffusers --num-devices 8
    para-attn-server --model wan --model-path Wan-AI/Wan2.1-I2V-14B-480P-Diffusers --num-devices 8

The model directory's pipeline class (``model_index.json``) decides which. An image-to-video
model needs ``image`` (the first frame, resized to ``width`` x ``height``); a text-to-video
model refuses one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from para_attn_server import Image, InputError, Output, RankContext, hookimpl

from .diffusers_base import DiffusersPredictor, Guidance, Prompt, Seed, Side, Steps
from .media import encode_video
from .previews import PreviewEvery
from .sizes import check_positions

MAX_FRAMES = 241
Frames = Annotated[int, msgspec.Meta(ge=1, le=MAX_FRAMES, description="Frames, 4k+1 (the VAE packs 4 per latent)")]


TEXT_TO_VIDEO, IMAGE_TO_VIDEO = "WanPipeline", "WanImageToVideoPipeline"


class WanPredictor(DiffusersPredictor):
    pipeline_class = "diffusers:WanPipeline"
    pipeline_classes: ClassVar[dict[str, str]] = {
        TEXT_TO_VIDEO: "diffusers:WanPipeline",
        IMAGE_TO_VIDEO: "diffusers:WanImageToVideoPipeline",
    }
    video = True
    # Wan's VAE decodes visibly worse in bfloat16; the I2V image encoder runs in float32 in
    # Wan's own examples (a directory without one ignores the entry).
    component_dtypes: ClassVar[dict[str, str]] = {"vae": "float32", "image_encoder": "float32"}
    warmup_inputs: ClassVar[dict[str, Any]] = {"prompt": "warm-up", "num_inference_steps": 2, "num_frames": 5}
    guidance_field = "guidance_scale"

    @property
    def image_to_video(self) -> bool:
        return self.pipeline_name == IMAGE_TO_VIDEO

    def setup(self, context: RankContext) -> None:
        from .compat import apply_diffusers_shims

        apply_diffusers_shims()  # image to video without ftfy
        super().setup(context)

    def warmup_media(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if not self.image_to_video:
            return {}
        from PIL import Image as PILImage

        return {"image": PILImage.new("RGB", (inputs["width"], inputs["height"]), (128, 128, 128))}

    def _factors(self) -> tuple[int, int, int]:
        # Older configs lack the scale factors; these are AutoencoderKLWan's defaults.
        _, patch_h, patch_w = (int(p) for p in self.transformer_config.get("patch_size", (1, 2, 2)))
        spatial = int(self.vae_config.get("scale_factor_spatial", 8))
        return int(self.vae_config.get("scale_factor_temporal", 4)), spatial * patch_h, spatial * patch_w

    def sequence_length(self, inputs: dict[str, Any]) -> int:
        temporal, per_row, per_column = self._factors()
        latent_frames = (inputs["num_frames"] - 1) // temporal + 1
        return int(latent_frames * (inputs["height"] // per_row) * (inputs["width"] // per_column))

    def nearest_num_frames(self, count: int) -> int:
        """The frame count the VAE accepts (temporal*k + 1, within the field's limits) nearest
        ``count``, the larger on a tie (what a client asking for a length in seconds gets)."""
        temporal = self._factors()[0]
        nearest = (max(count, 1) - 1 + temporal // 2) // temporal * temporal + 1
        return min(nearest, MAX_FRAMES - (MAX_FRAMES - 1) % temporal)

    def validate(self, inputs: dict[str, Any]) -> None:
        # One schema for every Wan directory, with ``image`` optional, rather than a schema per
        # directory (``request_function``): the ranks derive the schema before ``configure``
        # reads the directory (rank/worker.py), and one schema per predictor keeps the OpenAPI
        # document, clients and recorded inputs alike across models. The directory decides
        # here, with a message that says what is served instead of "unknown field".
        if self.image_to_video and inputs.get("image") is None:
            raise InputError(f"this model ({IMAGE_TO_VIDEO}) makes a video from a picture: send image", "image")
        if not self.image_to_video and inputs.get("image") is not None:
            raise InputError(
                f"this model ({self.pipeline_name}, text to video) takes no image; "
                f"image to video needs a {IMAGE_TO_VIDEO} model",
                "image",
            )
        temporal, per_row, per_column = self._factors()
        if (inputs["num_frames"] - 1) % temporal:
            raise InputError(f"must be {temporal}k+1 (1, {temporal + 1}, {2 * temporal + 1}, ...)", "num_frames")
        # The rotary table covers rope_max_seq_len positions per axis (patches of latents).
        limit = int(self.transformer_config.get("rope_max_seq_len", 1024))
        patch_frames = int(self.transformer_config.get("patch_size", (1, 2, 2))[0])
        latent_frames = (inputs["num_frames"] - 1) // temporal + 1
        check_positions("num_frames", inputs["num_frames"], latent_frames // patch_frames, limit,
                        (limit * patch_frames - 1) * temporal + 1)  # fmt: skip
        check_positions("height", inputs["height"], inputs["height"] // per_row, limit, limit * per_row)
        check_positions("width", inputs["width"], inputs["width"] // per_column, limit, limit * per_column)
        super().validate(inputs)

    def predict(
        self,
        *,
        prompt: Prompt,
        image: Image | None = None,
        negative_prompt: Prompt = "",
        width: Side = 832,
        height: Side = 480,
        num_frames: Frames = 81,
        fps: Annotated[int, msgspec.Meta(ge=1, le=60)] = 16,
        num_inference_steps: Steps = 50,
        guidance_scale: Guidance = 5.0,
        seed: Seed = None,
        output_format: Literal["mp4", "npy"] = "mp4",
        preview_every: PreviewEvery = 0,
    ) -> Output | None:
        fields = dict(locals())  # the request's fields, as predict_batch takes each job's
        del fields["self"]
        return self.predict_batch([fields])[0]  # a lone job is a batch of one: one code path

    def pipeline_call(self, fields: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        image = fields.get("image")
        call: dict[str, Any] = {"image": image} if image is not None else {}  # a PIL image, RGB
        call.update(
            prompt=fields["prompt"],
            negative_prompt=fields["negative_prompt"],
            width=fields["width"],
            height=fields["height"],
            num_frames=fields["num_frames"],
            num_inference_steps=fields["num_inference_steps"],
            guidance_scale=fields["guidance_scale"],
            max_sequence_length=self.max_sequence_length,
        )
        return None, call

    def guided(self, call: dict[str, Any]) -> bool:
        return bool(call["guidance_scale"] > 1)  # WanPipeline.do_classifier_free_guidance

    def encode(self, result: Any, index: int, fields: dict[str, Any]) -> Output:
        return encode_video(result.frames[index], fields["fps"], fields["output_format"])


@hookimpl
def register_predictors(register: Callable[[str, type[Any]], None]) -> None:
    register("wan", WanPredictor)
