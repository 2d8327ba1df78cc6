"""Run predictor requests, or diffusers pipeline calls as they are, in this one process at
world size 1: the reference that a server's multi-rank outputs are compared against.

    python tests/contrib/reference.py OUT_DIR < runs.json

``runs.json`` maps a key to a run, either a predictor's
``{"predictor": MODEL, "options": {KEY: VALUE}, "requests": {NAME: fields}}`` or a pipeline's
``{"pipeline": CLASS, "model_path": DIR or null (the tiny predictor's components), "calls":
{NAME: kwargs}}`` (kwargs with ``seed`` and pictures as ``data:`` URLs); each output is
written to ``OUT_DIR/KEY/NAME.<file_type>`` (``.npy`` for a pipeline's). A process of its
own, because para-attn patches pipeline classes process-wide and the reference must stay
unpatched.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from para_attn_server.media import decode
from para_attn_server.plugin.manager import Plugins
from para_attn_server.predictor import JobContext, RankContext, running
from para_attn_server.schema import InputSchema

MEDIA_KINDS = {"image": "image", "mask_image": "mask"}


def picture(value: Any, kind: str) -> Any:
    """A ``data:`` URL decoded as the ranks decode it (the server's ``media.decode``)."""
    if not (isinstance(value, str) and value.startswith("data:")):
        return value
    return decode(base64.b64decode(value.partition(",")[2]), kind)  # type: ignore[arg-type]


def run_predictor(plugins: Plugins, run: dict[str, Any], out_dir: Path) -> None:
    options: dict[str, str] = run["options"]
    predictor = plugins.resolve_predictor(run["predictor"])
    schema = InputSchema(predictor)
    predictor.configure(1, options)
    predictor.setup(RankContext(0, 1, 0, torch.device("cpu"), options))
    for name, fields in run["requests"].items():
        inputs = schema.convert(fields)
        predictor.validate(inputs)
        kwargs = schema.predict_kwargs(inputs)
        kwargs |= {key: picture(kwargs[key], kind) for key, kind in MEDIA_KINDS.items() if key in kwargs}
        with running(JobContext(name, kwargs, 0, 1, lambda step, total: False)):
            output = predictor.predict(**kwargs)
        (out_dir / f"{name}.{output.file_type}").write_bytes(output.data)


def run_pipeline(run: dict[str, Any], out_dir: Path) -> None:
    import diffusers

    from para_attn_predictors.compat import apply_diffusers_shims

    apply_diffusers_shims()  # Wan image to video without ftfy, as the predictor runs it
    cls = getattr(diffusers, run["pipeline"])
    if run["model_path"] is None:
        from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline

        pipe = cls(**build_tiny_flux_pipeline(seed=0).components)
    else:
        pipe = cls.from_pretrained(run["model_path"])  # float32, as the predictors load on CPU
    pipe.set_progress_bar_config(disable=True)
    for name, call in run["calls"].items():
        kwargs = {key: picture(value, MEDIA_KINDS.get(key, "image")) for key, value in call.items() if key != "seed"}
        result = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(call["seed"]), output_type="np")
        frames = getattr(result, "frames", None)
        np.save(out_dir / f"{name}.npy", np.asarray(frames[0] if frames is not None else result.images[0]))


def main() -> int:
    out_dir = Path(sys.argv[1])
    plugins = Plugins.load()
    for key, run in json.load(sys.stdin).items():
        (out_dir / key).mkdir(parents=True, exist_ok=True)
        if "pipeline" in run:
            run_pipeline(run, out_dir / key)
        else:
            run_predictor(plugins, run, out_dir / key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
