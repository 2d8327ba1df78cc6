"""Previews of the diffusers predictors: the projection's fit, and previews of the tiny flux
and wan pipelines run in this process at world size 1 (the 2-rank path is in
tests/integration/test_previews.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from para_attn_predictors.diffusers_base import DiffusersPredictor
from para_attn_predictors.flux import FluxPredictor
from para_attn_predictors.previews import LinearPreview, latent_image
from para_attn_predictors.tiny import TinyFluxPredictor
from para_attn_predictors.wan import WanPredictor
from para_attn_server import RankContext
from para_attn_server.predictor import JobContext, running
from tests.contrib.support import build, npy

pytestmark = pytest.mark.timeout(120)

FLUX_REQUEST = {
    "prompt": "a red cat", "width": 48, "height": 32, "num_inference_steps": 4, "seed": 3, "output_format": "npy",
}  # fmt: skip
WAN_REQUEST = {
    "prompt": "a red cat", "width": 32, "height": 48, "num_frames": 5, "num_inference_steps": 4, "seed": 3,
    "output_format": "npy",
}  # fmt: skip


def run(predictor: DiffusersPredictor, fields: dict[str, Any]) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """The job's output array and its previews, ``(step, HxWx3 uint8)``, in order."""
    previews: list[tuple[int, np.ndarray]] = []

    def publish(step: int, image: Callable[[], torch.Tensor]) -> None:
        previews.append((step, image().numpy().copy()))  # made off the loop, as the sender would

    with running(JobContext("job", fields, 0, 1, lambda step, total: False, publish)):
        output = predictor.predict(**fields)
    assert output is not None
    return npy(output.data), previews


def mean_colour_check(preview: np.ndarray, final: np.ndarray) -> None:
    """The preview's mean colour is near the final image's: much nearer than a flat grey
    (what a projection that ignored the VAE would show) or uniform noise (mean ~ grey)."""
    shown = preview.reshape(-1, 3).mean(axis=0) / 255
    truth = final.reshape(-1, 3).mean(axis=0)
    distance, grey = np.linalg.norm(shown - truth), np.linalg.norm(0.5 - truth)
    assert grey > 0.05, "the final image is too grey to tell anything apart"
    assert distance < grey / 3, (shown, truth)


# ---- the fit ----------------------------------------------------------------------------


def test_the_fit_recovers_a_linear_map_from_its_samples() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 5, generator=generator)
    bias = torch.tensor([0.2, -0.1, 0.7])
    latents = torch.randn(400, 5, generator=generator)
    rgb = latents @ weight.T + bias + 1e-4 * torch.randn(400, 3, generator=generator)

    fitted = LinearPreview.fit(latents, rgb)

    torch.testing.assert_close(fitted.weight, weight, atol=1e-3, rtol=0)
    torch.testing.assert_close(fitted.bias, bias, atol=1e-3, rtol=0)


class LinearVae:
    """A VAE whose decoder is exactly linear per latent pixel (then repeated ``factor`` times
    in each direction), with diffusers' config keys for its latents' normalization."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, factor: int, **config: Any) -> None:
        self.weight, self.bias, self.factor, self.config = weight, bias, factor, config

    def decode(self, latents: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        video = latents.ndim == 5
        flat = latents[:, :, 0] if video else latents
        images = torch.einsum("rc,nchw->nrhw", self.weight, flat) + self.bias[None, :, None, None]
        images = images.repeat_interleave(self.factor, 2).repeat_interleave(self.factor, 3)
        return (images[:, :, None] if video else images,)


def test_fit_to_a_linear_decoder_recovers_it_through_the_latents_scale_and_shift() -> None:
    weight = torch.tensor([[0.10, -0.05], [0.02, 0.08], [-0.06, 0.04]])  # small: nothing clamps
    bias = torch.tensor([0.1, -0.2, 0.05])
    vae = LinearVae(weight, bias, 8, latent_channels=2, scaling_factor=2.0, shift_factor=0.5)

    fitted = LinearPreview.fit_to(vae)

    # normalized z -> the VAE's input z / 2 + 0.5 -> weight @ x + bias in [-1, 1] -> / 2 + 0.5
    torch.testing.assert_close(fitted.weight, weight / 4, atol=1e-5, rtol=0)
    torch.testing.assert_close(fitted.bias, (weight.sum(1) * 0.5 + bias) / 2 + 0.5, atol=1e-5, rtol=0)


def test_fit_to_a_video_decoder_undoes_per_channel_statistics() -> None:
    weight = torch.tensor([[0.10, -0.05], [0.02, 0.08], [-0.06, 0.04]])
    bias = torch.zeros(3)
    mean, std = [0.3, -0.2], [2.0, 0.5]
    vae = LinearVae(weight, bias, 4, z_dim=2, latents_mean=mean, latents_std=std)

    fitted = LinearPreview.fit_to(vae, video=True)

    # normalized z -> z * std + mean (Wan's pipeline) -> the decoder
    scale = torch.tensor(std)
    torch.testing.assert_close(fitted.weight, weight * scale / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(fitted.bias, weight @ torch.tensor(mean) / 2 + 0.5, atol=1e-5, rtol=0)


def test_the_projection_maps_each_latent_pixel_to_rgb() -> None:
    projection = LinearPreview(torch.tensor([[1.0], [0.0], [-1.0]]), torch.tensor([0.0, 0.5, 1.0]))
    latent = torch.tensor([[[0.25, 2.0]]])  # [C=1, H=1, W=2]

    pixels = projection(latent)

    assert pixels.dtype == torch.uint8
    assert pixels.tolist() == [[[64, 128, 191], [255, 128, 0]]]  # rounded, clamped


# ---- the predictors ---------------------------------------------------------------------


def test_flux_previews_every_step_unpacked_to_the_latent_image(tiny_dirs: dict[str, Path]) -> None:
    predictor = build(FluxPredictor, tiny_dirs["flux"])

    final, previews = run(predictor, {**FLUX_REQUEST, "preview_every": 1})

    assert [step for step, _ in previews] == [1, 2, 3, 4]
    scale = predictor.pipe.vae_scale_factor
    assert {image.shape for _, image in previews} == {(32 // scale, 48 // scale, 3)}
    mean_colour_check(previews[-1][1], final)


def test_wan_previews_the_first_frame_every_second_step(tiny_dirs: dict[str, Path]) -> None:
    predictor = build(WanPredictor, tiny_dirs["wan"])

    video, previews = run(predictor, {**WAN_REQUEST, "preview_every": 2})

    assert [step for step, _ in previews] == [2, 4]
    assert {image.shape for _, image in previews} == {(48 // 8, 32 // 8, 3)}  # the VAE's 8x
    mean_colour_check(previews[-1][1], video[0])


def test_without_preview_every_no_preview_is_sent(tiny_dirs: dict[str, Path]) -> None:
    _, previews = run(build(FluxPredictor, tiny_dirs["flux"]), FLUX_REQUEST)

    assert previews == []


def save_tiny_autoencoder(path: Path, latent_channels: int) -> Path:
    """A small random ``AutoencoderTiny`` (TAESD's architecture) that doubles the latents'
    size, saved as an operator would give one."""
    from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=latent_channels,
    ).save_pretrained(path)
    return path


def test_tiny_takes_the_preview_vae_option_too(tmp_path: Path) -> None:
    vae_dir = save_tiny_autoencoder(tmp_path / "taesd", latent_channels=1)
    predictor = TinyFluxPredictor()
    predictor.setup(RankContext(0, 1, 0, torch.device("cpu"), {"preview_vae": str(vae_dir)}))
    fields = {"prompt": "a cat", "width": 48, "height": 32, "num_inference_steps": 2, "preview_every": 1}
    previews: list[tuple[int, tuple[int, ...]]] = []

    def publish(step: int, image: Callable[[], torch.Tensor]) -> None:
        previews.append((step, tuple(image().shape)))

    with running(JobContext("job", fields, 0, 1, lambda step, total: False, publish)):
        assert predictor.predict(**fields) is not None

    assert previews == [(1, (64, 96, 3)), (2, (64, 96, 3))]  # the small VAE doubles; the projection would not


def test_a_preview_vae_decodes_the_steps_latents_instead(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny

    vae_dir = save_tiny_autoencoder(tmp_path / "taesd", latent_channels=1)
    predictor = build(FluxPredictor, tiny_dirs["flux"], preview_vae=str(vae_dir))
    steps = FLUX_REQUEST["num_inference_steps"]

    _, previews = run(predictor, {**FLUX_REQUEST, "preview_every": steps})
    packed = predictor.pipe(
        prompt=FLUX_REQUEST["prompt"], width=48, height=32, num_inference_steps=steps, max_sequence_length=16,
        generator=torch.Generator("cpu").manual_seed(FLUX_REQUEST["seed"]), output_type="latent",
    ).images  # fmt: skip
    tiny = AutoencoderTiny.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        expected = tiny.decode(latent_image(predictor.pipe, packed, 32, 48)[None]).sample[0]

    assert [step for step, _ in previews] == [steps]
    expected_pixels = ((expected / 2 + 0.5).clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    assert previews[0][1].shape == expected_pixels.shape == (64, 96, 3)  # doubled, unlike the projection
    assert np.abs(previews[0][1].astype(int) - expected_pixels).max() <= 1
