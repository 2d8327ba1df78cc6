"""``wan`` image to video, served on 2 ranks from a tiny ``WanImageToVideoPipeline``
directory, vs that pipeline run as it is in one process on the same picture and seed (raw
frames: ``output_format=npy``). The picture travels in the JSON body as a ``data:`` URL.
(A text-to-video directory refusing ``image`` is in test_wan.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from para_attn_server.testing import Server
from tests.contrib.support import PipelineRun, Reference, assert_rejected, cli_options, data_url, generate, npy, picture

pytestmark = pytest.mark.timeout(240)

OPTIONS = {"max_sequence_length": "16"}
PICTURE = data_url(picture(64, 48, seed=0))  # resized to the video's 32 x 32
FIELDS: dict[str, Any] = {
    "prompt": "a cat dancing", "width": 32, "height": 32, "num_frames": 9, "num_inference_steps": 3,
}  # fmt: skip
CALL = {**FIELDS, "negative_prompt": "", "guidance_scale": 5.0, "max_sequence_length": 16}  # the predictor's defaults

REFERENCE = PipelineRun(
    "wan-i2v", "wan-i2v", "WanImageToVideoPipeline", {"seed5": {**CALL, "image": PICTURE, "seed": 5}}
)


@pytest.fixture(scope="module")
def wan_i2v(tiny_dirs: dict[str, Path], launch: Any, reference: Reference) -> tuple[Server, Reference]:
    path = str(tiny_dirs["wan-i2v"])
    server: Server = launch("--model", "wan", "--model-path", path, "--num-devices", "2", *cli_options(OPTIONS))
    return server, reference


def test_image_to_video_on_two_ranks_is_wans_i2v_pipeline(wan_i2v: tuple[Server, Reference]) -> None:
    server, reference = wan_i2v
    video = npy(generate(server, **FIELDS, image=PICTURE, seed=5, output_format="npy"))
    expected = reference.array("wan-i2v", "seed5")
    assert video.shape == expected.shape == (9, 32, 32, 3)
    assert np.abs(video - expected).max() < 1e-4
    other = npy(generate(server, **FIELDS, image=data_url(picture(64, 48, seed=1)), seed=5, output_format="npy"))
    assert np.abs(other - video).max() > 1e-2  # the picture matters


def test_image_to_video_needs_a_picture(wan_i2v: tuple[Server, Reference]) -> None:
    server, _ = wan_i2v
    assert_rejected(server, FIELDS, "image")
