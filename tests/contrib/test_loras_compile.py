"""Adapters (LoRA) on a compiled model (``-o compile=1``), run in this process at world size 1:
switching adapters and scales never recompiles (diffusers' LoRA hotswap into fixed slots, see
``para_attn_predictors.loras``), the outputs stay those of diffusers itself, an adapter above
``--max-lora-rank`` is a clear error, and every job reports what the adapter cache did.

The compiled model is the ``flux`` predictor (``DiffusersPredictor``, whose setup compiles
and warms up) on a tiny saved Flux pipeline: the path a deployment takes, with dynamo's
"eager" backend (what recompiles is dynamo's decision, the same under inductor), 32x32
pictures in 2 steps. Recompiles are read from dynamo's counters: a recompile is
a frame compiled again (``frames.total``) and a new graph (``stats.unique_graphs``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from torch._dynamo.utils import counters

from para_attn_predictors.diffusers_base import DiffusersPredictor
from para_attn_predictors.flux import FluxPredictor
from para_attn_predictors.loras import LoadedLoras
from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline
from para_attn_server import AdapterReport, Lora, Output, RankContext
from para_attn_server.predictor import JobContext, running
from tests.contrib.support import npy

pytestmark = pytest.mark.timeout(300)

FIELDS = {"prompt": "a red cat", "width": 32, "height": 32, "num_inference_steps": 2, "seed": 7}
CALL = {"prompt": "a red cat", "width": 32, "height": 32, "num_inference_steps": 2, "guidance_scale": 3.5,
        "max_sequence_length": 16}  # fmt: skip
# Compiled (inductor, CPU) against eager diffusers: measured at most 2.4e-7 apart (pixels in
# [0, 1], after the VAE), the same for the base model and with adapters: float32 rounding of
# fused kernels and of the rank padding's extra zeros. 1e-5 leaves room for other CPUs and
# is far below what an adapter or a scale changes (> 1e-2, checked).
TOLERANCE = 1e-5

Applied = list[tuple[str, float]]


def make_lora(path: Path, seed: int, rank: int, alpha: int, *extra_targets: str, **config: Any) -> Path:
    """A LoRA of ``rank`` (scale ``alpha / rank``) for the tiny Flux transformer's attention
    (and ``extra_targets``), saved as diffusers saves one, its config (``LoraConfig``, with
    ``config``) in the file's metadata as trainers write it."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = build_tiny_flux_pipeline(seed=0).transformer
    targets = ["to_q", "to_k", "to_v", "to_out.0", *extra_targets]
    lora_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, **config)
    transformer.add_adapter(lora_config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    FluxPipeline.save_lora_weights(
        str(path),
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=lora_config.to_dict(),
    )
    return path


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("loras")
    made = {"a": (1, 4, 4), "b": (2, 2, 4), "c": (3, 4, 2), "big": (4, 8, 8)}  # seed, rank, alpha
    paths = {name: str(make_lora(root / name, *spec)) for name, spec in made.items()}
    paths["wide"] = str(make_lora(root / "wide", 5, 4, 4, "proj_mlp"))  # more layers than the others
    paths["rslora"] = str(make_lora(root / "rslora", 6, 4, 4, use_rslora=True))  # peft will not hotswap it
    return paths


@pytest.fixture(scope="module")
def flux_dir(tiny_pipeline: Callable[[str], Path]) -> Path:
    return tiny_pipeline("flux")


@pytest.fixture(scope="module")
def compiled(flux_dir: Path) -> FluxPredictor:
    """The flux predictor compiled, warmed up at the jobs' size: 2 slots padded to rank 4."""
    # Dynamo decides what recompiles, whatever the backend: "eager" keeps its graphs without
    # inductor's code generation, which took a minute here for nothing this test reads.
    options = {"model_path": str(flux_dir), "max_sequence_length": "16", "compile": "1",
               "compile_backend": "eager", "warmup": '{"width": 32, "height": 32}'}  # fmt: skip
    predictor = FluxPredictor()
    predictor.configure(1, options)
    predictor.setup(RankContext(0, 1, 0, torch.device("cpu"), options, max_loaded_loras=2, max_lora_rank=4))
    return predictor


@pytest.fixture(scope="module")
def reference(flux_dir: Path, loras: dict[str, str]) -> Callable[[Applied], np.ndarray]:
    """Eager diffusers with the adapters loaded and set (``set_adapters``), as its users do."""
    pipe = FluxPipeline.from_pretrained(str(flux_dir))
    pipe.set_progress_bar_config(disable=True)
    for name in ("a", "b"):
        pipe.load_lora_weights(loras[name], adapter_name=name)

    def run(applied: Applied) -> np.ndarray:
        if applied:
            pipe.enable_lora()
            pipe.set_adapters([name for name, _ in applied], [scale for _, scale in applied])
        else:
            pipe.disable_lora()
        result = pipe(**CALL, generator=torch.Generator("cpu").manual_seed(7), output_type="np")
        return np.asarray(result.images[0])

    return run


def run(predictor: DiffusersPredictor, applied: Applied, paths: dict[str, str]) -> tuple[np.ndarray, AdapterReport]:
    """One job's picture (``npy``) and the adapter report it made."""
    loras = [Lora(name, scale, paths[name]) for name, scale in applied]
    kwargs = FIELDS | {"output_format": "npy"}
    job = JobContext("job", kwargs, 0, 1, lambda step, total: False, loras=loras)
    with running(job):
        output = predictor.predict(**kwargs)
    assert isinstance(output, Output)
    assert job.adapters is not None
    return npy(output.data), job.adapters


def compiles() -> tuple[int, int]:
    """Frames dynamo compiled (a recompile compiles one again) and graphs it made, so far."""
    return counters["frames"]["total"], counters["stats"]["unique_graphs"]


def test_switching_adapters_and_scales_never_recompiles_and_equals_diffusers(
    compiled: FluxPredictor, loras: dict[str, str], reference: Callable[[Applied], np.ndarray]
) -> None:
    # The first adapter creates the slots: one recompile, like the warm-up's compile.
    base, _ = run(compiled, [], loras)
    assert np.abs(base - reference([])).max() < TOLERANCE
    warm, report = run(compiled, [("b", 0.8)], loras)
    assert (report.loaded, [name for name, _ in report.loads]) == (("b",), ["b"])
    assert np.abs(warm - reference([("b", 0.8)])).max() < TOLERANCE

    before = compiles()
    jobs: list[Applied] = [[("a", 1.0)], [("b", 0.5)], [("a", -0.7)], [("b", 1.3)], [("a", 0.6), ("b", -0.4)], []]
    outputs: dict[str, np.ndarray] = {}
    reports: list[AdapterReport] = []
    for applied in jobs:
        got, report = run(compiled, applied, loras)
        assert np.abs(got - reference(applied)).max() < TOLERANCE, applied
        outputs[str(applied)] = got
        reports.append(report)
        assert compiles() == before, f"recompiled for {applied}"  # frames and graphs alike
    assert [name for name, _ in reports[0].loads] == ["a"]  # hotswapped into the second slot
    assert all(report.loads == () and report.evicted == () for report in reports[1:])
    assert (compiled.loras.loads, compiled.loras.evictions) == (2, 0)
    assert np.abs(outputs[str([("a", 1.0)])] - base).max() > 1e-2  # adapters do change the picture
    assert np.abs(outputs[str([("a", -0.7)])] - outputs[str([("a", 1.0)])]).max() > 1e-2  # and scales
    assert np.abs(outputs["[]"] - base).max() < TOLERANCE  # every slot at 0: the base model


def test_an_adapter_above_max_lora_rank_is_refused_and_the_next_job_works(
    compiled: FluxPredictor, loras: dict[str, str], reference: Callable[[Applied], np.ndarray]
) -> None:
    run(compiled, [("a", 0.9)], loras)  # its slot exists: no load below
    before, loaded = compiles(), list(compiled.loras.loaded)
    with pytest.raises(ValueError, match=r"adapter 'big' has rank 8, above --max-lora-rank 4"):
        run(compiled, [("big", 1.0)], loras)
    assert list(compiled.loras.loaded) == loaded  # nothing evicted for it
    got, report = run(compiled, [("a", 0.9)], loras)
    assert (report.loads, report.evicted) == ((), ())
    assert np.abs(got - reference([("a", 0.9)])).max() < TOLERANCE
    assert compiles() == before


@pytest.fixture
def tiny_pipe() -> Any:
    pipe = build_tiny_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("max_rank", [None, 4], ids=["eager", "hotswap"])
def test_every_job_reports_what_the_cache_loaded_and_evicted(
    tiny_pipe: Any, loras: dict[str, str], max_rank: int | None
) -> None:
    """Both ways of the cache (hotswap without compiling: the same slots, cheaply), 2 adapters
    kept of 3 named; each job's report and output, against diffusers with the same adapter."""
    cache = LoadedLoras(tiny_pipe, 2, max_rank=max_rank)
    expected = {name: direct(name, loras) for name in "abc"}
    steps = [
        ("a", ("a",), ("a",), ()),
        ("b", ("a", "b"), ("b",), ()),
        ("c", ("b", "c"), ("c",), ("a",)),
        ("b", ("c", "b"), (), ()),
        ("a", ("b", "a"), ("a",), ("c",)),
        (None, ("b", "a"), (), ()),
    ]
    for name, loaded, loads, evicted in steps:
        applied = [] if name is None else [Lora(name, 1.0, loras[name])]
        job = JobContext("job", {}, 0, 1, lambda step, total: False, loras=applied)
        with running(job), cache.applied(applied):
            got = tiny_pipe(**CALL, generator=torch.Generator("cpu").manual_seed(7), output_type="np").images[0]
        assert job.adapters is not None
        assert (job.adapters.loaded, job.adapters.evicted) == (loaded, evicted)
        assert tuple(loaded for loaded, _ in job.adapters.loads) == loads
        assert all(seconds > 0 for _, seconds in job.adapters.loads)
        if name is not None:
            assert np.abs(got - expected[name]).max() < TOLERANCE
    assert (cache.loads, cache.evictions) == (4, 2)
    with cache.applied([]):  # outside any job (a warm-up): nothing to report to, no error
        pass


def direct(name: str, loras: dict[str, str]) -> np.ndarray:
    pipe = build_tiny_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(loras[name], adapter_name=name)
    result = pipe(**CALL, generator=torch.Generator("cpu").manual_seed(7), output_type="np")
    return np.asarray(result.images[0])


def test_an_adapter_the_slots_cannot_take_fails_its_job_and_the_next_works(
    tiny_pipe: Any, loras: dict[str, str]
) -> None:
    """Hotswap without compiling: refused before the model is touched (layers the slots lack),
    or by peft while swapping (``use_rslora`` differs): then the slots are made again."""
    cache = LoadedLoras(tiny_pipe, 2, max_rank=4)
    expected = {name: direct(name, loras) for name in "ab"}

    def job(name: str) -> np.ndarray:
        with cache.applied([Lora(name, 1.0, loras[name])]):
            result = tiny_pipe(**CALL, generator=torch.Generator("cpu").manual_seed(7), output_type="np")
        return np.asarray(result.images[0])

    assert np.abs(job("a") - expected["a"]).max() < TOLERANCE
    with pytest.raises(ValueError, match=r"adapter 'wide' adapts layers the compiled model's hotswap slots lack"):
        job("wide")
    assert (list(cache.loaded), cache.slots) == (["a"], {"a": "slot0"})  # untouched
    with pytest.raises(ValueError, match="use_rslora"):
        job("rslora")
    assert (list(cache.loaded), cache.evictions) == ([], 1)  # every slot dropped, "a" with them
    assert np.abs(job("b") - expected["b"]).max() < TOLERANCE  # the slots made again
    assert np.abs(job("a") - expected["a"]).max() < TOLERANCE
