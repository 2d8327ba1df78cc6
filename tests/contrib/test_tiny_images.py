"""The default model (``tiny``) with a picture: image to image on 2 ranks (the shared
``tiny_server``) vs ``FluxImg2ImgPipeline`` on the same components in one process, so
``make serve`` shows image to image without a download."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from para_attn_server.testing import Server
from tests.contrib.support import PipelineRun, Reference, assert_rejected, data_url, generate, npy, picture

pytestmark = pytest.mark.timeout(240)

PICTURE = data_url(picture(64, 48, seed=0))
FIELDS: dict[str, Any] = {"prompt": "a red cat", "width": 48, "height": 32, "image": PICTURE, "strength": 0.7}
# The tiny predictor's defaults, spelled out: 4 steps, guidance 3.5, 64 T5 tokens.
CALL = {**FIELDS, "num_inference_steps": 4, "guidance_scale": 3.5, "max_sequence_length": 64}

REFERENCE = PipelineRun("tiny-img2img", "tiny", "FluxImg2ImgPipeline", {"seed3": {**CALL, "seed": 3}})


def test_image_to_image_on_two_ranks_is_flux_img2img(tiny_server: Server, reference: Reference) -> None:
    image = npy(generate(tiny_server, **FIELDS, seed=3, output_format="npy"))
    expected = reference.array("tiny-img2img", "seed3")
    assert image.shape == expected.shape == (32, 48, 3)
    assert np.abs(image - expected).max() < 1e-4
    without = npy(generate(tiny_server, **FIELDS | {"image": None}, seed=3, output_format="npy"))
    assert np.abs(without - image).max() > 1e-2  # text to image, without the picture
    png = Image.open(io.BytesIO(generate(tiny_server, **FIELDS, seed=3)))
    assert png.size == (48, 32)
    assert np.abs(np.asarray(png) / 255 - expected).max() <= 3 / 255


def test_a_strength_that_leaves_no_step_is_400(tiny_server: Server) -> None:
    assert_rejected(tiny_server, {"image": PICTURE, "strength": 0}, "strength")
