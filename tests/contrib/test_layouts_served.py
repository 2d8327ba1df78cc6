"""CFG-parallel and explicit layouts served on real ranks, against one process: tiny Wan
(guided by ``guidance_scale``) and tiny Flux (guided by ``true_cfg_scale`` with a negative
prompt), with ``-o cfg=2`` alone and beside ``-o ulysses=2``; and layouts refused at start."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from para_attn_predictors.flux import FluxPredictor
from para_attn_server.testing import CLI, server_env
from tests.contrib.support import Reference, ReferenceRun, build, cli_options, generate, npy

pytestmark = pytest.mark.timeout(300)

OPTIONS = {"max_sequence_length": "16"}
TOLERANCE = 2 / 255  # the bound on raw frames
CLOSE = 1e-4  # what gloo and one process really agree to (test_wan.py)
GUIDED: dict[str, dict[str, Any]] = {
    "wan": {"prompt": "a cat dancing", "negative_prompt": "blurry", "width": 32, "height": 32, "num_frames": 5,
            "num_inference_steps": 3, "guidance_scale": 5.0, "seed": 3, "output_format": "npy"},
    "flux": {"prompt": "a cat", "negative_prompt": "blurry", "true_cfg_scale": 4.0, "width": 32, "height": 32,
             "num_inference_steps": 3, "seed": 3, "output_format": "npy"},
}  # fmt: skip
UNGUIDED = {"wan": {**GUIDED["wan"], "guidance_scale": 1.0}, "flux": {**GUIDED["flux"], "true_cfg_scale": 1.0}}
REFERENCE = tuple(
    ReferenceRun(model, OPTIONS, {"guided": GUIDED[model], "unguided": UNGUIDED[model]}, key=f"{model}-layouts")
    for model in GUIDED
)


@pytest.mark.parametrize(
    ("model", "devices", "layout"),
    [
        ("wan", 2, {"cfg": "2"}),
        ("wan", 4, {"ulysses": "2", "cfg": "2"}),
        ("flux", 2, {"cfg": "2"}),
        ("flux", 4, {"ulysses": "2", "cfg": "2"}),  # Flux split by our adapter: a half's own ids
    ],
)
def test_cfg_parallel_equals_one_process(
    launch: Any, tiny_dirs: dict[str, Path], reference: Reference, model: str, devices: int, layout: dict[str, str]
) -> None:
    path, options = str(tiny_dirs[model]), cli_options(OPTIONS | layout)
    server = launch("--model", model, "--model-path", path, "--num-devices", str(devices), *options)
    try:
        degrees = {"ulysses": 1, "ring": 1, "cfg": 1} | {name: int(value) for name, value in layout.items()}
        assert server.status()["models"][0]["layout"] == degrees
        shown = " x ".join(f"{name}={value}" for name, value in degrees.items())
        assert f"ready: {devices} rank(s) of '{model}', split {shown}" in server.log.text
        guided, unguided = (reference.array(f"{model}-layouts", name) for name in ("guided", "unguided"))
        # Guidance changes the output a hundred times past what the ranks agree to, so halves
        # that kept their own pass (no exchange) or swapped the wrong way could not pass.
        assert np.abs(guided - unguided).max() > 100 * CLOSE
        served = npy(generate(server, **GUIDED[model]))
        assert np.abs(served - guided).max() <= min(TOLERANCE, CLOSE)
        # Without guidance both halves run the one pass alike.
        assert np.abs(npy(generate(server, **UNGUIDED[model])) - unguided).max() <= min(TOLERANCE, CLOSE)
    finally:
        server.stop()


@pytest.mark.parametrize(("args", "reason"), [
    (["--model", "tiny", "--num-devices", "2", "-o", "cfg=2"], "cfg=2: this model runs one transformer pass per step"),
    (["--model", "tiny", "--num-devices", "2", "-o", "ulysses=2", "-o", "ring=2"],
     r"ulysses=2 x ring=2 x cfg=1 makes 4 rank(s), but the group has 2"),
    (["--model", "tiny", "--num-devices", "2", "-o", "ring=2"], "ring attention (ring=2) runs only on CUDA"),
    (["--model", "wan", "--model-path", "{wan}", "--num-devices", "4", "-o", "ulysses=4"],
     "ulysses=4 does not divide the model's 2 attention heads"),
    (["--model", "wan", "--model-path", "{wan}", "--num-devices", "2", "-o", "cfg=3"], "so cfg is 1 or 2"),
    (["--model", "flux", "--model-path", "{flux}", "--num-devices", "1", "-o", "fp8=1"],
     "fp8=1: float8 matmuls need a CUDA GPU"),
])  # fmt: skip
def test_layouts_that_cannot_work_stop_the_start_with_the_reason(
    tiny_dirs: dict[str, Path], tmp_path: Path, args: list[str], reason: str
) -> None:
    args = [arg.replace("{wan}", str(tiny_dirs["wan"])).replace("{flux}", str(tiny_dirs["flux"])) for arg in args]
    started = subprocess.run(
        [str(CLI), *args, "--port", "0", "--output-dir", str(tmp_path)],
        env=server_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 2, started.stderr
    assert reason in started.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offloaded_ranks_give_what_one_process_gives(
    launch: Any, tiny_dirs: dict[str, Path], reference: Reference, offload: str
) -> None:
    """diffusers' CPU offload on each of 2 ranks (on this CPU machine the weights move from
    the host to the host: the hooks and the order of setup are what runs)."""
    options = cli_options(OPTIONS | {"offload": offload})
    server = launch("--model", "flux", "--model-path", str(tiny_dirs["flux"]), "--num-devices", "2", *options)
    try:
        served = npy(generate(server, **UNGUIDED["flux"]))
        assert np.abs(served - reference.array("flux-layouts", "unguided")).max() <= CLOSE
    finally:
        server.stop()


def test_offload_hooks_each_model_or_each_layer(tiny_dirs: dict[str, Path]) -> None:
    """What each ``offload`` installs: a hook per model that moves it whole (accelerate's),
    or one per layer (diffusers' group offload); none without it."""
    import torch

    def hooks(offload: str) -> tuple[bool, bool]:
        transformer = build(FluxPredictor, tiny_dirs["flux"], offload=offload).pipe.transformer
        layer = next(module for module in transformer.modules() if isinstance(module, torch.nn.Linear))
        registry = getattr(layer, "_diffusers_hook", None)
        return hasattr(transformer, "_hf_hook"), registry is not None and "group_offloading" in registry.hooks

    assert hooks("none") == (False, False)
    assert hooks("model") == (True, False)
    assert hooks("sequential") == (False, True)
