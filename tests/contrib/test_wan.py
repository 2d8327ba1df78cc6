"""``wan`` served by ``para-attn-server`` on 2 ranks (first-block cache on) vs one process,
and its MP4 output decoded back with PyAV."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from para_attn_server.testing import Server
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

# The cache threshold sits inside the range of the tiny model's first-block changes, so
# some steps skip the remaining blocks: the ranks must agree on which (they decide on the
# whole sequence, though each holds half).
OPTIONS = {"max_sequence_length": "16", "cache_threshold": "0.1"}
REQUEST: dict[str, Any] = {
    "prompt": "a cat dancing", "width": 32, "height": 32, "num_frames": 9, "num_inference_steps": 6,
    "output_format": "npy",
}  # fmt: skip
SEEDS = (5, 6)


REFERENCE = ReferenceRun("wan", OPTIONS, {f"seed{seed}": {**REQUEST, "seed": seed} for seed in SEEDS})


@pytest.fixture(scope="module")
def wan(tiny_dirs: dict[str, Path], launch: Any, reference: Reference) -> tuple[Server, Reference]:
    path = str(tiny_dirs["wan"])
    server: Server = launch("--model", "wan", "--model-path", path, "--num-devices", "2", *cli_options(OPTIONS))
    return server, reference


def test_two_ranks_match_one_process_with_the_same_seed(wan: tuple[Server, Reference]) -> None:
    server, reference = wan
    served = {seed: npy(generate(server, **REQUEST, seed=seed)) for seed in SEEDS}
    for seed in SEEDS:
        expected = reference.array("wan", f"seed{seed}")
        assert served[seed].shape == expected.shape == (9, 32, 32, 3)
        assert np.abs(served[seed] - expected).max() < 1e-4
    assert np.abs(served[SEEDS[0]] - served[SEEDS[1]]).max() > 1e-2


def test_mp4_decodes_to_the_requested_frames_size_and_rate(wan: tuple[Server, Reference]) -> None:
    server, _ = wan
    fields = {**REQUEST, "width": 48, "height": 32, "num_frames": 13, "fps": 8, "output_format": "mp4"}
    data = generate(server, **fields, seed=1)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert stream.average_rate == 8
    assert len(frames) == 13
    assert {frame.shape for frame in frames} == {(32, 48, 3)}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"num_frames": 8}, "num_frames"),  # the VAE packs 4 frames per latent: 4k+1
        ({"num_frames": 0}, "num_frames"),
        ({"fps": 0}, "fps"),
        ({"width": 16, "height": 16, "num_frames": 1}, "height"),  # one token cannot split over 2 ranks
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"output_format": "gif"}, "output_format"),
        ({"image": data_url(picture(32, 32, seed=0))}, "image"),  # a text-to-video model takes no picture
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    wan: tuple[Server, Reference], fields: dict[str, Any], field: str
) -> None:
    server, _ = wan
    assert_rejected(server, fields, field)
