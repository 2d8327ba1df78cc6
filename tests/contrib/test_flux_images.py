"""``flux`` with pictures, served on 2 ranks, vs diffusers' own pipelines run as they are in
one process on the same picture, seed and strength: image to image (``FluxImg2ImgPipeline``)
and inpainting (``FluxInpaintPipeline``) from one tiny FluxPipeline directory, and image
editing from a tiny Kontext directory (``FluxKontextPipeline``). Pictures travel in the
JSON body as ``data:image/png;base64,...`` strings.

One server per model directory for the module; the VAE is not split (``parallel_vae=0``),
so the decode is the one-process decode.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from para_attn_server.testing import Server
from tests.contrib.support import (
    PipelineRun,
    Reference,
    assert_rejected,
    cli_options,
    data_url,
    generate,
    npy,
    picture,
)

pytestmark = pytest.mark.timeout(240)

OPTIONS = {"max_sequence_length": "64", "parallel_vae": "0"}
KONTEXT_OPTIONS = {**OPTIONS, "kontext_auto_resize": "0"}  # the picture at its own size: tiny
PICTURE = data_url(picture(64, 48, seed=0))  # resized to the output's 48 x 32 (not Kontext)
MASK = data_url(picture(64, 48, seed=1, mask=True))
OTHER_PICTURE = data_url(picture(64, 48, seed=2))
FIELDS: dict[str, Any] = {"prompt": "a red cat", "width": 48, "height": 32, "num_inference_steps": 4}
CALL = {**FIELDS, "guidance_scale": 3.5, "max_sequence_length": 64}  # the predictor's defaults, spelled out
IMG2IMG = {"image": PICTURE, "strength": 0.7, "seed": 2}
INPAINT = {"image": PICTURE, "mask_image": MASK, "strength": 0.9, "seed": 2}
KONTEXT = {"image": PICTURE, "seed": 4}

REFERENCE = (
    PipelineRun("flux-img2img", "flux", "FluxImg2ImgPipeline", {"seed2": {**CALL, **IMG2IMG}}),
    PipelineRun("flux-inpaint", "flux", "FluxInpaintPipeline", {"seed2": {**CALL, **INPAINT}}),
    # max_area: the output's (diffusers' default scales width x height to a megapixel).
    PipelineRun("flux-kontext", "flux-kontext", "FluxKontextPipeline",
                {"seed4": {**CALL, **KONTEXT, "max_area": 48 * 32, "_auto_resize": False}}),
)  # fmt: skip


@pytest.fixture(scope="module")
def flux(tiny_dirs: dict[str, Path], launch: Any, reference: Reference) -> tuple[Server, Reference]:
    path = str(tiny_dirs["flux"])
    server: Server = launch("--model", "flux", "--model-path", path, "--num-devices", "2", *cli_options(OPTIONS))
    return server, reference


@pytest.fixture(scope="module")
def kontext(tiny_dirs: dict[str, Path], launch: Any, reference: Reference) -> tuple[Server, Reference]:
    path = str(tiny_dirs["flux-kontext"])
    server: Server = launch(
        "--model", "flux", "--model-path", path, "--num-devices", "2", *cli_options(KONTEXT_OPTIONS)
    )
    return server, reference


def served(server: Server, **fields: Any) -> np.ndarray:
    return npy(generate(server, **FIELDS, **fields, output_format="npy"))


def assert_matches(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape == (32, 48, 3)  # width x height, whatever the picture's size
    assert np.abs(got - expected).max() < 1e-4  # Ulysses on 2 ranks vs 1 process: ~1e-7


def test_image_to_image_on_two_ranks_is_flux_img2img(flux: tuple[Server, Reference]) -> None:
    server, reference = flux
    image = served(server, **IMG2IMG)
    assert_matches(image, reference.array("flux-img2img", "seed2"))
    # The comparison has teeth: the picture and the strength move the output far more.
    assert np.abs(served(server, **IMG2IMG | {"image": OTHER_PICTURE}) - image).max() > 1e-2
    assert np.abs(served(server, **IMG2IMG | {"strength": 0.3}) - image).max() > 1e-2


def test_inpainting_on_two_ranks_is_flux_inpaint(flux: tuple[Server, Reference]) -> None:
    server, reference = flux
    image = served(server, **INPAINT)
    assert_matches(image, reference.array("flux-inpaint", "seed2"))
    assert np.abs(served(server, **IMG2IMG | {"strength": 0.9}) - image).max() > 1e-2  # the mask matters


def test_kontext_on_two_ranks_is_flux_kontext(kontext: tuple[Server, Reference]) -> None:
    server, reference = kontext
    image = served(server, **KONTEXT)
    assert_matches(image, reference.array("flux-kontext", "seed4"))
    # The tiny model reads its picture faintly (two noise pictures differ by ~7e-4), but a
    # black and a white one well beyond the ranks' rounding (~1e-7).
    black, white = (data_url(Image.new("RGB", (64, 48), colour)) for colour in ("black", "white"))
    on_black, on_white = served(server, **KONTEXT | {"image": black}), served(server, **KONTEXT | {"image": white})
    assert np.abs(on_black - on_white).max() > 1e-3


def test_a_png_of_an_edited_picture_is_the_reference_within_rounding(flux: tuple[Server, Reference]) -> None:
    server, reference = flux
    data = generate(server, **FIELDS, **IMG2IMG)  # png, the default
    png = Image.open(io.BytesIO(data))
    assert (png.format, png.size, png.mode) == ("PNG", (48, 32), "RGB")
    assert np.abs(np.asarray(png) / 255 - reference.array("flux-img2img", "seed2")).max() <= 3 / 255


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mask_image": MASK}, "mask_image"),  # a mask without the picture it masks
        ({"image": PICTURE, "strength": 1.5}, "strength"),
        ({"image": PICTURE, "strength": 0}, "strength"),  # no denoising step left
        ({"image": "not a picture"}, "image"),
    ],
)
def test_invalid_picture_fields_are_400_naming_the_field(
    flux: tuple[Server, Reference], fields: dict[str, Any], field: str
) -> None:
    server, _ = flux
    assert_rejected(server, fields, field)


def test_kontext_takes_no_mask(kontext: tuple[Server, Reference]) -> None:
    server, _ = kontext
    assert_rejected(server, {"image": PICTURE, "mask_image": MASK}, "mask_image")
