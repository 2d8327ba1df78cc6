"""``tiny``: a tiny random-weight Flux pipeline split across the ranks with para-attn.

The CLI's default model: it needs no download and no GPU, so ``para-attn-server`` works on
any machine, and it runs the same code path as a real Flux deployment (Ulysses attention
across the ranks, per-step progress and cancellation, PNG output). Its images are noise.
Heavy imports are deferred to ``setup`` so the server process never loads diffusers.

With ``image`` it runs image to image (``FluxImg2ImgPipeline``, built from the same loaded
components and split the same way): the picture is resized to ``width`` x ``height`` and
``strength`` of the schedule repaints it.

Jobs without a picture that differ only in prompt, seed, output format and previews run as
one pipeline call (``batch_key``, ``predict_batch``), each with its own generator: each
output is what the job gives alone.

``preview_every`` > 0 sends a preview every that many steps: rank 0 projects the latents
to RGB with factors fitted at setup to the pipeline's own (random) VAE, or decodes them
with the small VAE that ``-o preview_vae=DIR`` names (see ``previews``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Hashable
from typing import Annotated, Any, Literal

import msgspec

from para_attn_server import AdapterFit, Image, Output, Predictor, RankContext, current_job, hookimpl

from .diffusers_base import PER_JOB_FIELDS, Strength, batch_key_of, check_shared, check_strength
from .layouts import Layout, LayoutOptions, choose_layout
from .loras import LoadedLoras
from .previews import Previewer, PreviewEvery, StepCallback, latent_image, make_previewer, preview_callback

# Multiples of 16 keep the image token count, (h/2)*(w/2), divisible by any world size
# up to 64; the model's two attention heads cap Ulysses at two ranks anyway.
HEADS = 2  # the tiny transformer's attention heads (tiny_flux, which the server never imports)
Side = Annotated[int, msgspec.Meta(ge=16, le=256, multiple_of=16, description="Pixels, a multiple of 16")]


class TinyOptions(LayoutOptions, kw_only=True, forbid_unknown_fields=True):
    """``-o`` values of ``tiny``: it builds its own random-weight model (no --model-path),
    and the layout's degrees (``layouts``: its two heads allow ulysses 1 or 2; it has no
    classifier-free guidance, so no cfg=2)."""

    weights_seed: Annotated[int, msgspec.Meta(ge=0)] = 0  # the random weights' seed
    preview_vae: str | None = None  # previews decoded by this small VAE (a directory)


class TinyFluxPredictor(Predictor):
    max_sequence_length = 64  # T5 tokens; must divide by the world size too
    supports_loras = True  # requests may name adapters (``--lora``): see ``loras``
    options_type = TinyOptions
    layout: Layout | None = None  # from ``configure``; None (set up without it): automatic

    def configure(self, world_size: int, options: dict[str, str]) -> None:
        import torch

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        # Only the layout's own options: a subclass may declare more (its options_type).
        degrees = {name: value for name, value in options.items() if name in LayoutOptions.__struct_fields__}
        layout_options = msgspec.convert(degrees, LayoutOptions, strict=False)
        self.layout = choose_layout(layout_options, world_size, heads=HEADS, device_type=device_type, guidance=None)

    def parallel_layout(self) -> dict[str, int]:
        return {} if self.layout is None else self.layout.degrees()

    def setup(self, context: RankContext) -> None:
        from diffusers.pipelines.flux.pipeline_flux_img2img import FluxImg2ImgPipeline

        from .parallel import parallelize_like, parallelize_pipeline
        from .tiny_flux import build_tiny_flux_pipeline

        self.rank = context.rank
        self.device = context.device
        self.pipe = build_tiny_flux_pipeline(seed=int(context.options.get("weights_seed", "0"))).to(context.device)
        self.pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]  # diffusers is untyped here
        self.previewer: Previewer | None = None
        if context.rank == 0:  # before parallelizing: the fit decodes on this rank alone
            self.previewer = make_previewer(self.pipe, context.device, context.options.get("preview_vae"))
        # No parallel VAE: it tiles, which changes the image, and tiny images need none.
        parallelize_pipeline(self.pipe, device_type=context.device.type, parallelize_vae=False, layout=self.layout)
        # The same components (no second copy of the weights), its pipeline class patched too.
        self.img2img = FluxImg2ImgPipeline(**self.pipe.components)
        self.img2img.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]
        parallelize_like(self.img2img, self.pipe)
        # Adapters load into the transformer both pipelines share: one bookkeeping for both.
        self.loras = LoadedLoras(self.pipe, context.max_loaded_loras)

    def validate(self, inputs: dict[str, Any]) -> None:
        if inputs.get("image") is not None:
            check_strength(inputs)

    def adapter_fit(self) -> AdapterFit:
        return AdapterFit(self.loras.targets(), None)

    def predict(
        self,
        *,
        prompt: Annotated[str, msgspec.Meta(max_length=1000)],
        image: Image | None = None,
        strength: Strength = 0.6,
        width: Side = 32,
        height: Side = 32,
        num_inference_steps: Annotated[int, msgspec.Meta(ge=1, le=50)] = 4,
        guidance_scale: Annotated[float, msgspec.Meta(ge=0, le=20)] = 3.5,
        seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0,
        output_format: Literal["png", "jpeg", "webp", "npy"] = "png",
        preview_every: PreviewEvery = 0,
    ) -> Output | None:
        fields = dict(locals())  # the request's fields, as predict_batch takes each job's
        del fields["self"]
        return self.predict_batch([fields])[0]  # a lone job is a batch of one: one code path

    def batch_key(self, inputs: dict[str, Any]) -> Hashable | None:
        """Jobs without a picture that differ only in prompt, seed, output format and
        previews (and apply the same adapters) run as one call."""
        return batch_key_of(self, inputs, PER_JOB_FIELDS)

    def predict_batch(self, batch: list[dict[str, Any]]) -> list[Output | None]:
        import torch

        check_shared(batch, PER_JOB_FIELDS)
        lead = batch[0]
        job = current_job()
        callback: StepCallback = job.diffusers_callback
        for index, fields in enumerate(batch):
            if fields["preview_every"] and self.previewer is not None:
                callback = self._with_previews(callback, fields["preview_every"], lead, index)
        # ``image`` arrives as a PIL image in RGB, alike on every rank.
        image = lead["image"]
        picture = {} if image is None else {"image": image, "strength": lead["strength"]}
        prompts = [fields["prompt"] for fields in batch]
        # One generator per job, seeded as the job alone seeds it: each draws its own noise.
        generators = [torch.Generator("cpu").manual_seed(fields["seed"]) for fields in batch]
        with self.loras.applied(job.loras):  # the job's adapters; the base model again afterwards
            result = (self.pipe if image is None else self.img2img)(
                **picture,
                prompt=prompts[0] if len(batch) == 1 else prompts,
                width=lead["width"],
                height=lead["height"],
                num_inference_steps=lead["num_inference_steps"],
                guidance_scale=lead["guidance_scale"],
                max_sequence_length=self.max_sequence_length,
                generator=generators[0] if len(batch) == 1 else generators,
                # Only rank 0 needs pixels; the others skip the (unsplit) VAE decode.
                output_type="np" if self.rank == 0 else "latent",
                callback_on_step_end=callback,
            )
        if self.rank != 0:
            return [None] * len(batch)
        images = result.images  # B x H x W x 3, float32 in [0, 1]
        return [self._encode(pixels, fields["output_format"]) for pixels, fields in zip(images, batch, strict=True)]

    def _with_previews(self, callback: StepCallback, every: int, lead: dict[str, Any], index: int) -> StepCallback:
        previewer, pipe = self.previewer, self.pipe
        assert previewer is not None
        height, width = lead["height"], lead["width"]
        return preview_callback(
            callback, every, lambda latents: previewer(latent_image(pipe, latents, height, width, index)), index
        )

    @staticmethod
    def _encode(pixels: Any, output_format: str) -> Output:
        import numpy as np

        if output_format == "npy":
            buffer = io.BytesIO()
            np.save(buffer, pixels)
            return Output(buffer.getvalue(), "npy")
        from PIL import Image as PILImage

        pil = PILImage.fromarray((pixels * 255).round().clip(0, 255).astype("uint8"))
        return Output.from_image(pil, output_format)


@hookimpl
def register_predictors(register: Callable[[str, type[Any]], None]) -> None:
    register("tiny", TinyFluxPredictor)
