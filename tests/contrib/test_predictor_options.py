"""Operator options of the diffusers predictors, run in this process at world size 1:
the first-block cache, torch.compile with a warm-up in setup, and dtypes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from para_attn_predictors.diffusers_base import DiffusersPredictor
from para_attn_predictors.flux import FluxPredictor
from para_attn_predictors.wan import WanPredictor
from para_attn_server import JobCancelled
from para_attn_server.predictor import JobContext, running
from tests.contrib.support import build, npy

pytestmark = pytest.mark.timeout(120)

FLUX_REQUEST = {
    "prompt": "a cat", "width": 32, "height": 32, "num_inference_steps": 5, "seed": 1, "output_format": "npy",
}  # fmt: skip
WAN_REQUEST = {
    "prompt": "a cat", "width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 5, "seed": 1,
    "output_format": "npy",
}  # fmt: skip


def run(predictor: DiffusersPredictor, fields: dict[str, Any], cancel_at: int | None = None) -> np.ndarray:
    def decide(step: int, total: int | None) -> bool:
        return step == cancel_at

    with running(JobContext("job", fields, 0, 1, decide)):
        output = predictor.predict(**fields)
    assert output is not None
    return npy(output.data)


@contextmanager
def block_computations(predictor: DiffusersPredictor) -> Iterator[list[str]]:
    """Names of transformer blocks whose attention ran, in order. The cache skips a block
    inside its forward, so the hooks sit on the blocks' attention modules."""
    calls: list[str] = []
    handles = []
    transformer = predictor.pipe.transformer
    for name, module in transformer.named_modules():
        block, _, leaf = name.rpartition(".")
        if leaf in ("attn", "attn1") and block.count(".") == 1:  # e.g. blocks.0.attn1
            handles.append(module.register_forward_hook(lambda *_, b=block: calls.append(b)))
    assert handles
    yield calls
    for handle in handles:
        handle.remove()


def blocks_of(predictor: DiffusersPredictor) -> int:
    lists = ("transformer_blocks", "single_transformer_blocks", "blocks")
    return sum(len(getattr(predictor.pipe.transformer, name, ())) for name in lists)


@pytest.mark.parametrize(("cls", "kind", "request_", "passes"), [
    (FluxPredictor, "flux", FLUX_REQUEST, 1),  # guidance is embedded: one transformer pass per step
    (WanPredictor, "wan", WAN_REQUEST, 2),  # classifier-free guidance: conditional and unconditional
])  # fmt: skip
def test_first_block_cache_skips_the_remaining_blocks_as_configured(
    tiny_dirs: dict[str, Path], cls: type[DiffusersPredictor], kind: str, request_: dict[str, Any], passes: int
) -> None:
    steps = request_["num_inference_steps"]
    counts = {}
    outputs = {}
    for threshold in ("0", "1e9"):  # off; and so high every step after the first reuses the cache
        predictor = build(cls, tiny_dirs[kind], cache_threshold=threshold)
        with block_computations(predictor) as calls:
            outputs[threshold] = run(predictor, request_)
        counts[threshold] = len(calls)
    blocks = blocks_of(predictor)
    assert blocks > 1
    assert counts["0"] == passes * steps * blocks
    # The first step runs every block; each later one only the first block, then reuses
    # the remaining blocks' cached residual.
    assert counts["1e9"] == passes * (blocks + steps - 1)
    assert not np.array_equal(outputs["0"], outputs["1e9"])


def test_a_cancelled_run_leaves_no_cache_state_behind(tiny_dirs: dict[str, Path]) -> None:
    predictor = build(FluxPredictor, tiny_dirs["flux"], cache_threshold="1e9")
    first = run(predictor, FLUX_REQUEST)
    with pytest.raises(JobCancelled):
        run(predictor, {**FLUX_REQUEST, "seed": 2}, cancel_at=2)
    # Stale first-block residuals from the cancelled run would make this one skip its blocks.
    np.testing.assert_array_equal(run(predictor, FLUX_REQUEST), first)


def test_compile_warms_up_with_one_generation_during_setup(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    warmups: list[dict[str, Any]] = []
    original: Callable[..., Any] = FluxPredictor.predict

    def spy(self: FluxPredictor, **fields: Any) -> Any:
        # Runs inside setup, after the transformer was compiled.
        assert self.pipe.transformer._compiled_call_impl is not None
        warmups.append(fields)
        return original(self, **fields)

    monkeypatch.setattr(FluxPredictor, "predict", spy)
    predictor = build(
        FluxPredictor, tiny_dirs["flux"], compile="1", compile_backend="eager", warmup='{"width": 48, "height": 32}'
    )
    assert [(w["width"], w["height"], w["num_inference_steps"]) for w in warmups] == [(48, 32, 2)]
    # A compiled predictor still serves jobs.
    assert run(predictor, FLUX_REQUEST).shape == (32, 32, 3)


def test_warm_up_is_off_without_compile(tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FluxPredictor, "predict", lambda self, **fields: pytest.fail("warmed up"))
    build(FluxPredictor, tiny_dirs["flux"])


def test_dtype_option_sets_the_weights_and_keeps_wans_vae_in_float32(tiny_dirs: dict[str, Path]) -> None:
    flux = build(FluxPredictor, tiny_dirs["flux"], dtype="bfloat16")
    assert flux.pipe.transformer.dtype == flux.pipe.vae.dtype == torch.bfloat16
    wan = build(WanPredictor, tiny_dirs["wan"], dtype="bfloat16")
    assert (wan.pipe.transformer.dtype, wan.pipe.vae.dtype) == (torch.bfloat16, torch.float32)
    assert build(FluxPredictor, tiny_dirs["flux"]).pipe.transformer.dtype == torch.float32  # auto on CPU
