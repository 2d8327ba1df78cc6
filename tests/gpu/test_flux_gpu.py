"""``flux`` on CUDA: FLUX.1-dev's full transformer (random bf16 weights) served vs called
directly, and ring attention across two GPUs. Skipped without CUDA.

The pipeline (``benchmarks.flux_dev``, which the gpu benchmark suite builds too) has FLUX.1-dev's
transformer and VAE dimensions; its text encoders are one-layer models with the widths the
transformer expects (the prompt encoding is not what is timed).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.flux_dev import flux_dev_sized_pipeline
from para_attn_server.testing import Server
from tests.contrib.support import cli_options, npy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.timeout(900),
]

REQUEST: dict[str, Any] = {"prompt": "a lighthouse at dusk", "width": 1024, "height": 1024, "num_inference_steps": 28}


@pytest.fixture(scope="module")
def flux_dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flux-dev-sized")
    pipe = flux_dev_sized_pipeline()
    pipe.save_pretrained(path)
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    return path


def timed_direct_call(path: Path, runs: int = 2) -> float:
    """Seconds of one 1024x1024 generation called directly (after a first, warming call)."""
    from para_attn_predictors.flux import FluxPredictor
    from para_attn_server import RankContext
    from para_attn_server.predictor import JobContext, running

    options = {"model_path": str(path)}
    predictor = FluxPredictor()
    predictor.configure(1, options)
    predictor.setup(RankContext(0, 1, 0, torch.device("cuda", 0), options))
    fields = {**REQUEST, "seed": 0, "output_format": "png"}
    seconds = []
    for _ in range(runs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        with running(JobContext("direct", fields, 0, 1, lambda step, total: False)):
            predictor.predict(**fields)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    del predictor
    gc.collect()  # the server loads its own copy next
    torch.cuda.empty_cache()
    return seconds[-1]


def test_server_adds_little_to_a_full_size_generation(flux_dev_dir: Path, launch: Any) -> None:
    direct = timed_direct_call(flux_dev_dir)
    server: Server = launch("--model", "flux", "--model-path", str(flux_dev_dir), "--num-devices", "1")
    fields = {**REQUEST, "seed": 0, "output_format": "png"}
    server.run(**fields)  # the first run pays CUDA and allocator warm-up, as the direct one did
    started = time.perf_counter()
    view = server.run(**fields)
    served = time.perf_counter() - started
    assert view["state"] == "succeeded", view
    print(f"\n1024x1024, 28 steps, bf16, 1 GPU: direct {direct:.2f} s, through the server {served:.2f} s")
    assert served < direct * 1.1 + 1.0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ring_attention_on_two_gpus_matches_one(tmp_path: Path, launch: Any) -> None:
    # Three heads: Ulysses cannot split them over 2 ranks, so the mesh is all ring attention.
    from diffusers import FluxTransformer2DModel

    from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe.transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=3, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        ).eval()  # fmt: skip
    pipe.save_pretrained(tmp_path / "model")
    options = {"dtype": "float32", "max_sequence_length": "64", "parallel_vae": "0"}
    fields = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 4, "seed": 3, "output_format": "npy"}
    images = []
    for ranks in ("1", "2"):
        server: Server = launch(
            "--model", "flux", "--model-path", str(tmp_path / "model"), "--num-devices", ranks, *cli_options(options)
        )
        view = server.run(**fields)
        assert view["state"] == "succeeded", view
        images.append(npy(server.output(view["id"])))
        server.close()
    assert np.abs(images[0] - images[1]).max() < 1e-3
