"""``flux`` served by ``para-attn-server`` on 2 ranks vs the same pipeline in one process.

One server for the module: a tiny FluxPipeline saved to disk and loaded with --model-path.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from para_attn_server.testing import CLI, Server, server_env
from tests.contrib.support import (
    Reference,
    ReferenceRun,
    assert_rejected,
    cli_options,
    data_url,
    generate,
    npy,
    picture,
)

pytestmark = pytest.mark.timeout(240)

OPTIONS = {"max_sequence_length": "64"}  # T5 tokens; split across the ranks with the image's
REQUEST: dict[str, Any] = {"prompt": "a red cat on a mat", "num_inference_steps": 4, "output_format": "npy"}
# (width, height, seed). The tiny VAE's tiles are 32 pixels: the parallel VAE decodes the
# first whole on rank 0 and the last in tiles spread over the ranks.
CASES = ((32, 32, 3), (32, 32, 4), (64, 48, 3))


def request(width: int, height: int, seed: int) -> dict[str, Any]:
    return {**REQUEST, "width": width, "height": height, "seed": seed}


def name(width: int, height: int, seed: int) -> str:
    return f"{width}x{height}-seed{seed}"


# Image to image at a size the VAE tiles: the picture's encode is split across the ranks too.
IMG2IMG = {**request(64, 48, 3), "image": data_url(picture(64, 48, seed=0)), "strength": 0.7}

# One process tiles as the parallel VAE does, so the two encode and decode alike.
REFERENCE = ReferenceRun(
    "flux", {"vae_tiling": "1", **OPTIONS}, {name(*case): request(*case) for case in CASES} | {"img2img": IMG2IMG}
)


@pytest.fixture(scope="module")
def flux(tiny_dirs: dict[str, Path], launch: Any, reference: Reference) -> tuple[Server, Reference]:
    path = str(tiny_dirs["flux"])
    server: Server = launch("--model", "flux", "--model-path", path, "--num-devices", "2", *cli_options(OPTIONS))
    return server, reference


def test_two_ranks_match_one_process_with_the_same_seed(flux: tuple[Server, Reference]) -> None:
    server, reference = flux
    served = {case: npy(generate(server, **request(*case))) for case in CASES}
    for case, image in served.items():
        expected = reference.array("flux", name(*case))
        assert image.shape == expected.shape == (case[1], case[0], 3)
        assert np.abs(image - expected).max() < 1e-4, case
    # The comparison has teeth: the seed moves the output far more than that.
    assert np.abs(served[CASES[0]] - served[CASES[1]]).max() > 1e-2


def test_image_to_image_with_the_vae_split_matches_one_process(flux: tuple[Server, Reference]) -> None:
    server, reference = flux
    image = npy(generate(server, **IMG2IMG))
    expected = reference.array("flux", "img2img")
    assert image.shape == expected.shape == (48, 64, 3)
    assert np.abs(image - expected).max() < 1e-4
    assert np.abs(image - npy(generate(server, **request(64, 48, 3)))).max() > 1e-2  # the picture matters


@pytest.mark.parametrize(("output_format", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG")])
def test_image_formats_decode_to_the_requested_size(
    flux: tuple[Server, Reference], output_format: str, pil_format: str
) -> None:
    server, _ = flux
    data = generate(server, prompt="a dog", width=64, height=32, num_inference_steps=2, output_format=output_format)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size, image.mode) == (pil_format, (64, 32), "RGB")


def test_without_a_seed_each_job_draws_its_own(flux: tuple[Server, Reference]) -> None:
    server, _ = flux
    fields = {**REQUEST, "width": 32, "height": 32, "num_inference_steps": 2}
    first, second = npy(generate(server, **fields)), npy(generate(server, **fields))
    assert np.abs(first - second).max() > 1e-2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"width": 40}, "width"),  # not a multiple of 16
        ({"height": 4096}, "height"),  # above the maximum
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 101}, "num_inference_steps"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"seed": -1}, "seed"),
        ({"output_format": "gif"}, "output_format"),
        ({"mask_image": data_url(picture(32, 32, seed=0, mask=True))}, "mask_image"),  # no picture to mask
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    flux: tuple[Server, Reference], fields: dict[str, Any], field: str
) -> None:
    server, _ = flux
    assert_rejected(server, fields, field)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA ring attention covers the remaining factor")
def test_ranks_that_cannot_split_the_heads_stop_the_server_at_startup(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # The tiny transformer has 2 heads: Ulysses takes 1 of 3 ranks, ring attention (CUDA only) the rest.
    # Its own output directory: a server the checkout's user runs holds ./outputs.
    result = subprocess.run(
        [str(CLI), "--model", "flux", "--model-path", str(tiny_dirs["flux"]), "--num-devices", "3", "--port", "0",
         "--output-dir", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=60, env=server_env(),
    )  # fmt: skip
    assert result.returncode == 2
    assert "para-attn-server: error: ulysses=1 x ring=3 x cfg=1: ring attention (ring=3) runs only on CUDA" in (
        result.stderr
    )
