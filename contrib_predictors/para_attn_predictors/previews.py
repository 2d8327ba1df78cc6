"""Previews while denoising: a pipeline's latents at a step as a small RGB picture, cheaply.

Two ways to see latents, both run on rank 0 only, on its preview thread (the step callback
only hands the step's latents over; see ``JobContext.preview``):

- ``LinearPreview``: a linear map from the latent channels to RGB, plus a bias, applied to
  every latent pixel. Its factors are fitted at setup, by least squares, to what the
  pipeline's own VAE decodes from a few random latents (``LinearPreview.fit_to``): each
  model family gets the factors of its own VAE, and no VAE runs while a job denoises.
- ``VaePreview``: a small VAE the operator names (``-o preview_vae=DIR``, a directory that
  diffusers' ``AutoencoderTiny`` loads, such as a TAESD model for the pipeline's latent
  space) decodes the latents instead: closer to the final image, at the cost of a decode.

``preview_callback`` wraps a job's step callback so that it sends a preview every
``preview_every`` steps (a request field; 0, the default, sends none). torch is imported
where it is used: the server process reads the request fields from this module too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from para_attn_server import PREVIEW_MAX_SIDE, current_job

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PreviewEvery = Annotated[
    int, msgspec.Meta(ge=0, le=100, description="Send a preview of the image every this many steps; 0: none")
]
FIT_LATENTS = 4  # random latents decoded at setup
FIT_SIDE = 32  # their height and width in latent pixels: small, so setup stays fast

Previewer = Callable[["torch.Tensor"], "torch.Tensor"]  # latent image [C, H, W] -> [H, W, 3] uint8
StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


def normalized_to_vae(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """What ``vae.decode`` takes, from the latents a denoiser works on, undone as diffusers'
    pipelines undo it: per-channel statistics (Wan) or a scale and shift (Flux, SD)."""
    import torch

    config = vae.config
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (latents.ndim - 2)
        std_t = torch.tensor(std, dtype=latents.dtype, device=latents.device).view(shape)
        return latents * std_t + torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(shape)
    return latents / float(config.get("scaling_factor") or 1.0) + float(config.get("shift_factor") or 0.0)


def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in [0, 1], float32, from normalized latents ``[N, C, h, w]``
    (``[N, C, F, h, w]`` for a video VAE, which gives its first frame)."""
    import torch

    inputs = normalized_to_vae(vae, latents.to(vae.device, vae.dtype))
    with torch.no_grad():
        images: torch.Tensor = vae.decode(inputs, return_dict=False)[0]
    if images.ndim == 5:
        images = images[:, :, 0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    import torch

    return (pixels * 255).round_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class LinearPreview:
    """RGB of a latent pixel = ``weight @ latent + bias``, clamped to [0, 1]."""

    weight: torch.Tensor  # [3, C]
    bias: torch.Tensor  # [3]
    _scaled: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # In 0..255 directly, transposed for addmm; +0.5 rounds where the uint8 cast truncates.
        object.__setattr__(self, "_scaled", ((self.weight * 255).T.contiguous(), self.bias * 255 + 0.5))

    @classmethod
    def fit(cls, latents: torch.Tensor, rgb: torch.Tensor) -> LinearPreview:
        """Least squares over samples: ``latents`` ``[N, C]``, ``rgb`` ``[N, 3]``."""
        import torch

        design = torch.cat([latents.double(), latents.new_ones(len(latents), 1).double()], dim=1)
        solution = torch.linalg.lstsq(design.cpu(), rgb.double().cpu()).solution  # [C + 1, 3]
        return cls(solution[:-1].T.float().contiguous(), solution[-1].float().contiguous())

    @classmethod
    def fit_to(cls, vae: Any, *, video: bool = False, count: int = FIT_LATENTS, side: int = FIT_SIDE) -> LinearPreview:
        """Fitted to ``vae``'s decodes of ``count`` random latents (standard normal, like the
        noise a denoiser starts from) of ``side`` x ``side`` latent pixels; each decoded image
        is averaged over the pixels one latent pixel becomes."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - torch's own name for it

        channels = int(vae.config.get("latent_channels") or vae.config.get("z_dim"))
        generator = torch.Generator("cpu").manual_seed(0)
        shape = (count, channels, 1, side, side) if video else (count, channels, side, side)
        latents = torch.randn(shape, generator=generator)
        images = decode(vae, latents).cpu()
        factor = images.shape[-1] // side
        pooled = F.avg_pool2d(images, factor) if factor > 1 else images
        flat = latents[:, :, 0] if video else latents
        return cls.fit(flat.permute(0, 2, 3, 1).reshape(-1, channels), pooled.permute(0, 2, 3, 1).reshape(-1, 3))

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        import torch

        weight, bias = self._scaled
        if weight.device != latent.device:  # moved once (a GPU rank): later previews reuse them
            weight, bias = weight.to(latent.device), bias.to(latent.device)
            object.__setattr__(self, "_scaled", (weight, bias))  # one preview thread per rank
        pixels = torch.addmm(bias, latent.flatten(1).T.float(), weight)  # [H * W, 3]
        return pixels.clamp_(0, 255).to(torch.uint8).view(*latent.shape[1:], 3)


class VaePreview:
    """Latents decoded by a small VAE (diffusers' ``AutoencoderTiny``), shrunk to ``PREVIEW_MAX_SIDE``."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    @classmethod
    def load(cls, path: str, device: torch.device, dtype: torch.dtype) -> VaePreview:
        from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny

        return cls(AutoencoderTiny.from_pretrained(path).to(device, dtype).eval())

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F  # noqa: N812 - torch's own name for it

        image = decode(self.vae, latent[None])
        height, width = image.shape[-2:]
        if max(height, width) > PREVIEW_MAX_SIDE:  # shrunk on the device: a small copy to the host
            scale = PREVIEW_MAX_SIDE / max(height, width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
        return to_uint8(image[0].permute(1, 2, 0))


def make_previewer(pipe: Any, device: torch.device, preview_vae: str | None, *, video: bool = False) -> Previewer:
    """The operator's small VAE if named, else a projection fitted to ``pipe.vae``. Call it
    before the VAE is parallelized: the fit decodes on this rank alone."""
    started = time.perf_counter()
    previewer: Previewer
    if preview_vae:
        previewer = VaePreview.load(preview_vae, device, pipe.vae.dtype)
    else:
        previewer = LinearPreview.fit_to(pipe.vae, video=video)
    log.info("previews: %s ready in %.2f s", type(previewer).__name__, time.perf_counter() - started)
    return previewer


def latent_image(pipe: Any, latents: torch.Tensor, height: int, width: int, index: int = 0) -> torch.Tensor:
    """The latent image ``[C, H, W]`` of a step's latents for the batch's job ``index`` (the
    first): Flux's packed tokens unpacked; a video's first frame (which its VAE decodes to the
    first video frame)."""
    if latents.ndim == 3:  # Flux packs 2 x 2 latent pixels per token
        unpacked: torch.Tensor = pipe._unpack_latents(latents[index : index + 1], height, width, pipe.vae_scale_factor)
        return unpacked[0]
    return latents[index, :, 0] if latents.ndim == 5 else latents[index]


def preview_callback(
    callback: StepCallback, every: int, render: Callable[[torch.Tensor], Any], index: int = 0
) -> StepCallback:
    """``callback`` (the job's step callback), then every ``every`` steps ``render`` of the
    step's latents sent as the preview of the batch's job ``index`` (a lone job: 0). Use it
    on rank 0 only: the others send none. Wrapped once per job of a batch, the step
    callback still runs once a step.

    ``render`` runs on the preview sender's thread, not in the loop: the pipelines make new
    latents at each step (none changes them in place), so the step's stay as they were.
    """

    def step(pipe: Any, step_index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        tensors = callback(pipe, step_index, timestep, tensors)  # raises on cancel: no preview then
        if (step_index + 1) % every == 0:
            latents = tensors["latents"]
            current_job().preview(lambda: render(latents), index=index)
        return tensors

    return step
