"""Batches of the shipped predictors: ``predict_batch`` of jobs with their own prompts and
seeds gives each job what ``predict`` gives it alone, within 1/255 per pixel (float32 on the
CPU): in this process at world size 1 (``tiny``, and ``flux`` and ``wan`` from their saved
tiny directories), and on 2 ranks split by para-attn, whose context parallelism splits each
sequence and never the batch (2 processes of their own: para-attn patches pipeline classes
process-wide). The batch keys say which jobs may share a call."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing

from para_attn_predictors.flux import FluxPredictor
from para_attn_predictors.tiny import TinyFluxPredictor
from para_attn_predictors.wan import WanPredictor
from para_attn_server import Predictor, RankContext
from para_attn_server.predictor import JobContext, running
from para_attn_server.schema import InputSchema
from para_attn_server.testing import free_port
from tests.contrib.support import npy

pytestmark = pytest.mark.timeout(300)

TOLERANCE = 1 / 255
IDS = [f"job-{index}" for index in range(4)]
PROMPTS = ["a red cat", "a blue dog on a boat", "mountains", "a small green house by the sea"]
# Per model: the fields the 4 jobs share, and each job's own besides its prompt and seed.
SHARED: dict[str, dict[str, Any]] = {
    "tiny": {"width": 48, "height": 32, "num_inference_steps": 4},
    "flux": {"width": 48, "height": 32, "num_inference_steps": 4},
    "wan": {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 3},
}
OWN: dict[str, list[dict[str, Any]]] = {
    "tiny": [{}, {"preview_every": 2}, {}, {}],
    "flux": [{}, {}, {"preview_every": 1}, {}],
    "wan": [{"negative_prompt": f"blurry {index}", "preview_every": index % 2} for index in range(4)],
}
OPTIONS = {"max_sequence_length": "16"}
Sent = list[tuple[str, int, Any]]  # (job id, step, picture) previews


def jobs_of(model: str) -> list[dict[str, Any]]:
    return [
        {"prompt": prompt, "seed": 100 + index, "output_format": "npy", **SHARED[model], **OWN[model][index]}
        for index, prompt in enumerate(PROMPTS)
    ]


def make(model: str, rank: int = 0, world_size: int = 1, model_path: str = "") -> Predictor:
    """A predictor set up as ``rank`` of ``world_size`` on the CPU."""
    predictor: Predictor
    if model == "tiny":
        predictor, options = TinyFluxPredictor(), {}
    else:
        predictor = FluxPredictor() if model == "flux" else WanPredictor()
        options = {"model_path": model_path, **OPTIONS}
    predictor.configure(world_size, options)
    predictor.setup(RankContext(rank, world_size, rank, torch.device("cpu"), options))
    return predictor


def run(predictor: Predictor, jobs: list[dict[str, Any]], *, batch: bool, rank: int = 0, world_size: int = 1) -> Any:
    """Each job's output array (rank 0) and the previews sent: one ``predict_batch`` call,
    or one ``predict`` per job, each inside its job's context as a rank runs it."""
    schema = InputSchema(predictor)
    kwargs = []
    for fields in jobs:
        inputs = schema.convert(fields)
        predictor.validate(inputs)  # the server's check: the sizes split across the ranks
        kwargs.append(schema.predict_kwargs(inputs))
    sent: Sent = []

    def context(index: int, batch_of: list[dict[str, Any]]) -> JobContext:
        ids = IDS[index : index + len(batch_of)]
        return JobContext(
            ids[0], batch_of[0], rank, world_size, lambda step, total: False,
            batch=batch_of if len(batch_of) > 1 else (), job_ids=ids,
            send_preview=lambda job_id, step, image: sent.append((job_id, step, image())),
        )  # fmt: skip

    if batch:
        with running(context(0, kwargs)):
            outputs = predictor.predict_batch(kwargs)
    else:
        outputs = []
        for index, one in enumerate(kwargs):
            with running(context(index, [one])):
                outputs.append(predictor.predict(**one))
    assert len(outputs) == len(jobs)
    return [None if output is None else npy(output.data) for output in outputs], sent


def assert_alike(batched: list[np.ndarray], alone: list[np.ndarray]) -> None:
    for index, (one, expected) in enumerate(zip(batched, alone, strict=True)):
        assert one.shape == expected.shape
        assert np.abs(one - expected).max() <= TOLERANCE, f"job {index}"
    assert np.abs(alone[0] - alone[1]).max() > 0.05  # the jobs differ: prompts and seeds reach each


def assert_previews_alike(batched: Sent, alone: Sent) -> None:
    """The batch previews the jobs that ask, under their own ids, as they are alone."""
    batched, alone = (sorted(sent, key=lambda preview: preview[:2]) for sent in (batched, alone))  # by job, step
    assert [(job_id, step) for job_id, step, _ in batched] == [(job_id, step) for job_id, step, _ in alone]
    for (_, _, picture), (_, _, expected) in zip(batched, alone, strict=True):
        assert np.abs(np.asarray(picture, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


@pytest.fixture(scope="module")
def tiny() -> Predictor:
    return make("tiny")


def test_tiny_runs_four_jobs_as_one_call_each_as_alone(tiny: Predictor) -> None:
    jobs = jobs_of("tiny")

    alone, alone_previews = run(tiny, jobs, batch=False)
    batched, previews = run(tiny, jobs, batch=True)

    assert_alike(batched, alone)
    assert_previews_alike(previews, alone_previews)
    assert {job_id for job_id, _, _ in previews} == {"job-1"}  # the one that asked


def test_jobs_that_differ_in_what_the_call_shares_are_refused(tiny: Predictor) -> None:
    jobs = jobs_of("tiny")
    jobs[2] = jobs[2] | {"width": 64}

    with pytest.raises(ValueError, match="the jobs of a batch differ in 'width'"):
        run(tiny, jobs, batch=True)


@pytest.mark.parametrize("model", ["flux", "wan"])
def test_diffusers_predictors_run_four_jobs_as_one_call_each_as_alone(model: str, tiny_dirs: dict[str, Path]) -> None:
    predictor = make(model, model_path=str(tiny_dirs[model]))
    jobs = jobs_of(model)

    alone, alone_previews = run(predictor, jobs, batch=False)
    batched, previews = run(predictor, jobs, batch=True)

    assert_alike(batched, alone)
    assert previews
    assert_previews_alike(previews, alone_previews)


# ---- batch keys (the server process: no setup) ------------------------------------------------


def keys(predictor: Predictor) -> Callable[..., Any]:
    """``key(**fields)``: the batch key of a request's fields, as the server asks for it
    (adapters by name and scale: the server resolves their paths only for the ranks)."""
    schema = InputSchema(predictor)

    def key(loras: list[dict[str, Any]] | None = None, **fields: Any) -> Any:
        return predictor.batch_key(schema.convert({"prompt": "a cat"} | fields) | {"loras": loras or []})

    return key


@pytest.mark.parametrize("model", ["tiny", "flux", "wan"])
def test_jobs_that_differ_only_in_their_own_fields_share_a_key(model: str, tiny_dirs: dict[str, Path]) -> None:
    predictor = TinyFluxPredictor() if model == "tiny" else FluxPredictor() if model == "flux" else WanPredictor()
    predictor.configure(1, {} if model == "tiny" else {"model_path": str(tiny_dirs[model]), **OPTIONS})
    key = keys(predictor)
    own = {"negative_prompt": "dull", "fps": 8, "output_format": "npy"} if model == "wan" else {"output_format": "npy"}

    base = key(width=32, height=32)
    assert base is not None
    assert hash(base) == hash(key(width=32, height=32))
    assert key(prompt="a dog", seed=9, preview_every=3, width=32, height=32, **own) == base
    assert key(width=48, height=32) != base
    assert key(width=32, height=32, num_inference_steps=7) != base
    assert key(width=32, height=32, guidance_scale=1.0) != base
    # Adapters: the same names and scales, in order, or another call.
    with_a = key(width=32, height=32, loras=[{"name": "a", "scale": 0.5}])
    assert with_a == key(width=32, height=32, loras=[{"name": "a", "scale": 0.5}])
    assert with_a not in (base, key(width=32, height=32, loras=[{"name": "a", "scale": 0.7}]))
    # A picture (a reference at this point) runs alone.
    assert key(width=32, height=32, image="media:" + "0" * 64) is None


def test_the_first_block_cache_batches_nothing(tiny_dirs: dict[str, Path]) -> None:
    predictor = FluxPredictor()
    predictor.configure(1, {"model_path": str(tiny_dirs["flux"]), **OPTIONS, "cache_threshold": "0.1"})

    assert keys(predictor)(width=32, height=32) is None


# ---- 2 ranks ------------------------------------------------------------------------------------


def two_ranks(rank: int, model: str, model_path: str, port: int, out: str) -> None:
    """One rank of 2 (a process of its own): the jobs alone, then as one batch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        predictor = make(model, rank, 2, model_path)
        alone, alone_previews = run(predictor, jobs_of(model), batch=False, rank=rank, world_size=2)
        batched, previews = run(predictor, jobs_of(model), batch=True, rank=rank, world_size=2)
        if rank == 0:
            assert previews
            assert_previews_alike(previews, alone_previews)
            np.savez(out, alone=np.stack(alone), batched=np.stack(batched))
        else:
            assert alone == batched == [None] * 4
            assert previews == alone_previews == []
    finally:
        dist.destroy_process_group()


# tiny on 2 ranks is served so in tests/integration/test_batching.py.
@pytest.mark.parametrize("model", ["flux", "wan"])
def test_a_batch_of_four_on_two_ranks_is_each_job_alone(model: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "outputs.npz"
    path = "" if model == "tiny" else str(tiny_dirs[model])

    torch.multiprocessing.spawn(two_ranks, args=(model, path, free_port(), str(out)), nprocs=2, join=True)

    arrays = np.load(out)
    assert_alike(list(arrays["batched"]), list(arrays["alone"]))
