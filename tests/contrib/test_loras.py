"""Adapters (LoRA) a job names, run in this process at world size 1 (no server, no para-attn
patches): a job's adapters give what diffusers gives with ``load_lora_weights`` and
``set_adapters`` called directly, and the job after it is the base model again, byte for
byte; adapters beyond ``--max-loaded-loras`` are evicted and reloaded when named again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline, FluxPipeline

from para_attn_predictors.tiny import TinyFluxPredictor
from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline
from para_attn_server import JobCancelled, Lora, Output, RankContext
from para_attn_server.predictor import JobContext, running
from para_attn_server.schema import InputSchema
from tests.contrib.support import apply_loras, make_lora, npy, picture

pytestmark = pytest.mark.timeout(300)

FIELDS = {"prompt": "a red cat", "width": 32, "height": 32, "num_inference_steps": 3, "seed": 7}
CALL = {"prompt": "a red cat", "width": 32, "height": 32, "num_inference_steps": 3, "guidance_scale": 3.5,
        "max_sequence_length": 64}  # fmt: skip
PICTURE = picture(32, 32, seed=3)


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("loras")
    paths = {name: str(make_lora(root / name, seed)) for name, seed in (("a", 1), ("b", 2), ("c", 3))}
    # One as a bare .safetensors file, the other layout --lora accepts.
    file = root / "c.safetensors"
    file.write_bytes((Path(paths["c"]) / "pytorch_lora_weights.safetensors").read_bytes())
    return paths | {"c": str(file)}


@pytest.fixture(scope="module")
def tiny() -> TinyFluxPredictor:
    predictor = TinyFluxPredictor()
    predictor.setup(RankContext(0, 1, 0, torch.device("cpu"), {}, max_loaded_loras=2))
    return predictor


def run(
    predictor: TinyFluxPredictor,
    applied: list[tuple[str, float]],
    paths: dict[str, str],
    cancel_at: int = 0,
    **extra: Any,
) -> bytes:
    """One job's ``npy`` output bytes, its fields converted as a rank converts them
    (``cancel_at``: the step at which the job is cancelled)."""
    schema = InputSchema(predictor)
    rank_loras = [{"name": name, "scale": scale, "path": paths[name]} for name, scale in applied]
    inputs = schema.convert(FIELDS | {"output_format": "npy", "loras": rank_loras}) | extra
    kwargs = schema.predict_kwargs(inputs)
    assert "loras" not in kwargs  # the server's field: predict reads it from its job
    loras = [Lora(**lora) for lora in inputs["loras"]]
    decide = lambda step, total: step == cancel_at  # noqa: E731
    with running(JobContext("job", kwargs, 0, 1, decide, loras=loras)):
        output = predictor.predict(**kwargs)
    assert isinstance(output, Output)
    return output.data


def direct(
    applied: list[tuple[str, float]], paths: dict[str, str], pipeline: type = FluxPipeline, **extra: Any
) -> np.ndarray:
    """diffusers itself: a fresh pipeline of the same weights, the adapters loaded and set."""
    pipe = pipeline(**build_tiny_flux_pipeline(seed=0).components)
    pipe.set_progress_bar_config(disable=True)
    apply_loras(pipe, applied, paths)
    result = pipe(**CALL, **extra, generator=torch.Generator("cpu").manual_seed(7), output_type="np")
    return np.asarray(result.images[0])


def test_a_job_with_adapters_is_diffusers_with_them_and_the_next_is_the_base_byte_for_byte(
    tiny: TinyFluxPredictor, loras: dict[str, str]
) -> None:
    base = run(tiny, [], loras)  # before any adapter was loaded
    assert np.abs(npy(base) - direct([], loras)).max() < 1e-5

    with_a = npy(run(tiny, [("a", 0.8)], loras))
    assert np.abs(with_a - direct([("a", 0.8)], loras)).max() < 1e-5
    assert np.abs(with_a - npy(base)).max() > 1e-2  # the adapter changes the picture
    assert run(tiny, [], loras) == base

    both = npy(run(tiny, [("a", 0.8), ("b", -0.5)], loras))
    assert np.abs(both - direct([("a", 0.8), ("b", -0.5)], loras)).max() < 1e-5
    assert run(tiny, [], loras) == base
    assert tiny.loras.loaded.keys() == {"a", "b"}


def test_image_to_image_shares_the_adapters_of_the_transformer(tiny: TinyFluxPredictor, loras: dict[str, str]) -> None:
    got = npy(run(tiny, [("b", 0.7)], loras, image=PICTURE, strength=0.7))
    expected = direct([("b", 0.7)], loras, FluxImg2ImgPipeline, image=PICTURE, strength=0.7)
    assert np.abs(got - expected).max() < 1e-5


def test_beyond_max_loaded_loras_the_least_recently_used_is_evicted(loras: dict[str, str]) -> None:
    predictor = TinyFluxPredictor()
    predictor.setup(RankContext(0, 1, 0, torch.device("cpu"), {}, max_loaded_loras=2))
    base = run(predictor, [], loras)
    expected = {name: direct([(name, 1.0)], loras) for name in "abc"}
    for name in "abcab":
        assert np.abs(npy(run(predictor, [(name, 1.0)], loras)) - expected[name]).max() < 1e-5
        assert len(predictor.loras.loaded) <= 2
    assert list(predictor.loras.loaded) == ["a", "b"]  # least recently used first
    assert (predictor.loras.loads, predictor.loras.evictions) == (5, 3)
    assert run(predictor, [], loras) == base


def test_an_adapter_that_fails_to_load_fails_its_job_and_the_base_stays(
    tiny: TinyFluxPredictor, loras: dict[str, str], tmp_path: Path
) -> None:
    base = run(tiny, [], loras)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):  # noqa: B017  # whatever diffusers raises for it
        run(tiny, [("corrupt", 1.0)], loras | {"corrupt": str(corrupt)})
    assert "corrupt" not in tiny.loras.loaded
    assert run(tiny, [], loras) == base
    assert np.abs(npy(run(tiny, [("a", 0.8)], loras)) - direct([("a", 0.8)], loras)).max() < 1e-5


def test_a_job_cancelled_with_adapters_leaves_the_base_model(tiny: TinyFluxPredictor, loras: dict[str, str]) -> None:
    base = run(tiny, [], loras)
    with pytest.raises(JobCancelled):
        run(tiny, [("b", 1.5)], loras, cancel_at=2)
    assert run(tiny, [], loras) == base
