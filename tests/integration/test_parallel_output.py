"""A job split across 2 ranks gives the image of the same pipeline run in one process."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from para_attn_server.testing import Server, server_env

pytestmark = pytest.mark.timeout(180)

PROMPT = "a lighthouse at dusk"

# Unparallelized, in its own process: para-attn patches the pipeline class process-wide.
REFERENCE = """
import sys, numpy as np, torch
from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline
pipe = build_tiny_flux_pipeline(seed=0)
pipe.set_progress_bar_config(disable=True)
image = pipe(prompt=sys.argv[1], width=32, height=32, num_inference_steps=4, guidance_scale=3.5,
             max_sequence_length=64, generator=torch.Generator("cpu").manual_seed(int(sys.argv[2])),
             output_type="np").images[0]
np.save(sys.argv[3], image)
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = tmp_path_factory.mktemp("reference") / "seed7.npy"
    subprocess.run([sys.executable, "-c", REFERENCE, PROMPT, "7", str(path)], env=server_env(), check=True, timeout=120)
    return np.load(path)


def server_image(server: Server, seed: int) -> np.ndarray:
    job = server.run(prompt=PROMPT, seed=seed, output_format="npy")
    assert job["state"] == "succeeded", job
    return np.load(io.BytesIO(server.output(job["id"])))


def test_two_ranks_match_one_process_with_the_same_seed(tiny_server: Server, reference: np.ndarray) -> None:
    assert [row["rank"] for row in tiny_server.status()["ranks"]] == [0, 1]
    image = server_image(tiny_server, seed=7)
    assert image.shape == reference.shape == (32, 32, 3)
    assert image.dtype == np.float32
    diff = np.abs(image - reference).max()
    assert diff < 1e-4


def test_another_seed_gives_another_image(tiny_server: Server, reference: np.ndarray) -> None:
    # Without this, the comparison above could pass on an image that ignores the seed.
    other = server_image(tiny_server, seed=8)
    assert np.abs(other - reference).max() > 1e-2


def test_the_reference_is_not_a_trivial_image(reference: np.ndarray) -> None:
    assert reference.std() > 1e-3
