"""Adapters served: ``flux`` from a saved tiny directory on 2 ranks (``-o parallel_vae=0``)
with one LoRA registered by ``--lora`` and one found by ``--lora-dir``. A job that names
them equals diffusers called directly in this process (``load_lora_weights`` +
``set_adapters``); the next job without them is the base output, byte for byte; a name the
server does not offer is a 400 naming the item."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from para_attn_server.testing import Server
from tests.contrib.support import apply_loras, assert_rejected, generate, make_lora, npy

pytestmark = pytest.mark.timeout(300)

REQUEST: dict[str, Any] = {"prompt": "a red cat", "width": 32, "height": 32, "num_inference_steps": 4, "seed": 3}
CALL = {**{k: v for k, v in REQUEST.items() if k != "seed"}, "guidance_scale": 3.5, "max_sequence_length": 64}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    lora_dir = root / "offered"
    lora_dir.mkdir()
    made = make_lora(root / "b-made", seed=2)
    shutil.copy(made / "pytorch_lora_weights.safetensors", lora_dir / "b.safetensors")
    return {"a": make_lora(root / "a", seed=1), "b": lora_dir / "b.safetensors", "dir": lora_dir}


@pytest.fixture(scope="module")
def served(tiny_dirs: dict[str, Path], launch: Any, adapters: dict[str, Path]) -> Server:
    server: Server = launch(
        "--model", "flux", "--model-path", str(tiny_dirs["flux"]), "--num-devices", "2",
        "-o", "max_sequence_length=64", "-o", "parallel_vae=0",
        "--lora", f"a={adapters['a']}", "--lora-dir", str(adapters["dir"]),
    )  # fmt: skip
    return server


def direct(flux_dir: Path, adapters: dict[str, Path], applied: list[tuple[str, float]]) -> np.ndarray:
    """diffusers as it is: the saved pipeline, the adapters loaded and set, seed 3."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(flux_dir))
    pipe.set_progress_bar_config(disable=True)
    apply_loras(pipe, applied, adapters)
    result = pipe(**CALL, generator=torch.Generator("cpu").manual_seed(3), output_type="np")
    return np.asarray(result.images[0])


def loras(*applied: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"name": name, "scale": scale} for name, scale in applied]


def test_adapters_on_two_ranks_are_diffusers_with_them_and_the_base_comes_back_exactly(
    served: Server, tiny_dirs: dict[str, Path], adapters: dict[str, Path]
) -> None:
    base = generate(served, **REQUEST, output_format="npy")  # before any adapter was applied
    assert np.abs(npy(base) - direct(tiny_dirs["flux"], adapters, [])).max() < 1e-4

    expected = direct(tiny_dirs["flux"], adapters, [("a", 0.8)])
    got = npy(generate(served, **REQUEST, output_format="npy", loras=loras(("a", 0.8))))
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(got - npy(base)).max() > 1e-2  # the adapter changes the picture
    png = Image.open(io.BytesIO(generate(served, **REQUEST, loras=loras(("a", 0.8)))))
    assert np.abs(np.asarray(png) / 255 - expected).max() <= 3 / 255
    assert generate(served, **REQUEST, output_format="npy") == base

    both = npy(generate(served, **REQUEST, output_format="npy", loras=loras(("a", 0.8), ("b", -0.5))))
    assert np.abs(both - direct(tiny_dirs["flux"], adapters, [("a", 0.8), ("b", -0.5)])).max() < 1e-4
    assert generate(served, **REQUEST, output_format="npy") == base


def test_an_unknown_adapter_or_too_many_are_400_and_the_server_keeps_serving(served: Server) -> None:
    assert_rejected(served, {"loras": loras(("a", 1.0), ("nope", 1.0))}, "loras[1].name")
    response = served.http.post("/v1/jobs", json={"prompt": "a cat", "loras": loras(("nope", 1.0))})
    assert "registered: a, b" in response.json()["error"]
    assert_rejected(served, {"loras": loras(*[("a", 1.0)] * 5)}, "loras")
    assert generate(served, **REQUEST, output_format="npy")


def test_the_schema_documents_the_loras_field(served: Server) -> None:
    text = served.http.get("/schema/openapi.json").text
    assert '"loras"' in text
    assert "registered adapter" in text
