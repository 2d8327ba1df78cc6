"""Helpers of the flux and wan tests: the 1-rank reference process, generation, pictures as
they travel (``data:`` URLs), and checks."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from para_attn_predictors.diffusers_base import DiffusersPredictor
from para_attn_server import RankContext
from para_attn_server.testing import Server, server_env

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ReferenceRun:
    """Requests of a predictor, run in one process: ``Reference.array(model, name)``."""

    model: str
    options: dict[str, str]  # besides model_path
    requests: dict[str, dict[str, Any]]
    key: str = ""  # the name ``array`` takes (default: ``model``); unique across modules

    @property
    def name(self) -> str:
        return self.key or self.model


@dataclass(frozen=True)
class PipelineRun:
    """Calls of a diffusers pipeline class as they are, no predictor: ``Reference.array(key, name)``.

    ``model`` is a ``tiny_dirs`` kind the pipeline loads from, or ``"tiny"``: the ``tiny``
    predictor's components, built in code. Each call is the pipeline's keyword arguments
    with ``seed`` (for a CPU generator) and pictures as ``data:`` URLs (``image``, and
    ``mask_image`` decoded as a mask), decoded as ranks decode them."""

    key: str
    model: str
    pipeline: str  # a class of the diffusers package: "FluxImg2ImgPipeline"
    calls: dict[str, dict[str, Any]]


class Reference:
    """The running ``reference.py``; ``array(model, name)`` waits for it on first use."""

    def __init__(self, runs: dict[str, dict[str, Any]], out_dir: Path) -> None:
        self.out_dir = out_dir
        self.log = out_dir / "reference.log"  # a file, so a chatty process never blocks on a pipe
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / "reference.py"), str(out_dir)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, text=True, env=server_env(),
            )  # fmt: skip
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(runs))
        self.process.stdin.close()

    def array(self, model: str, name: str) -> np.ndarray:
        code = self.process.wait(timeout=180)
        assert code == 0, self.log.read_text()[-4000:]
        return np.load(self.out_dir / model / f"{name}.npy")


def picture(width: int, height: int, seed: int, *, mask: bool = False) -> Image.Image:
    """A random RGB picture (or a black-and-white mask, mode "L") of that size."""
    rng = np.random.default_rng(seed)
    if mask:
        return Image.fromarray(((rng.random((height, width)) > 0.5) * 255).astype(np.uint8), "L")
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8), "RGB")


def data_url(image: Image.Image) -> str:
    """``image`` as a request's JSON carries it: a ``data:image/png;base64,...`` string."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def cli_options(options: dict[str, str]) -> list[str]:
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))


def generate(server: Server, **fields: Any) -> bytes:
    response = server.http.post("/v1/jobs", params={"wait": 60}, json=fields)
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["state"] == "succeeded", view
    return server.output(view["id"])


def assert_rejected(server: Server, fields: dict[str, Any], field: str) -> None:
    """A request with ``fields`` (beside a prompt) is a 400 whose message names ``field``."""
    response = server.http.post("/v1/jobs", json={"prompt": "a cat", **fields})
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}:")


def build(cls: type[DiffusersPredictor], path: Path, **options: str) -> DiffusersPredictor:
    """A predictor of ``cls`` set up in this process as rank 0 of 1, on the CPU."""
    options = {"model_path": str(path), "max_sequence_length": "16", **options}
    predictor = cls()
    predictor.configure(1, options)
    predictor.setup(RankContext(0, 1, 0, torch.device("cpu"), options))
    return predictor


def make_lora(path: Path, seed: int) -> Path:
    """A LoRA of rank 4 for the tiny Flux transformer (the ``tiny`` predictor's and
    ``make_tiny flux``'s: the same modules), weights drawn from ``seed`` (large
    enough to change the picture), saved as diffusers saves one (a directory)."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline

    transformer = build_tiny_flux_pipeline(seed=0).transformer
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    FluxPipeline.save_lora_weights(str(path), transformer_lora_layers=get_peft_model_state_dict(transformer))
    return path


def apply_loras(pipe: Any, applied: list[tuple[str, float]], paths: Mapping[str, str | Path]) -> None:
    """What diffusers' own users do to apply adapters (the reference the predictors must equal):
    ``load_lora_weights`` each (a ``.safetensors`` file by its folder and name), then ``set_adapters``."""
    for name, _ in applied:
        path = Path(paths[name])
        if path.is_file():
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        else:
            pipe.load_lora_weights(str(path), adapter_name=name)
    if applied:
        pipe.set_adapters([name for name, _ in applied], [scale for _, scale in applied])
