"""Run predictor requests in this one process at world size 1: the reference that a
server's multi-rank outputs are compared against.

    python tests/contrib/reference.py OUT_DIR < runs.json

``runs.json`` maps a model name to ``{"options": {KEY: VALUE}, "requests": {NAME: fields}}``;
each output is written to ``OUT_DIR/MODEL/NAME.<file_type>``. A process of its own, because
para-attn patches pipeline classes process-wide and the reference must stay unpatched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from para_attn_server.plugin.manager import Plugins
from para_attn_server.predictor import JobContext, RankContext, running
from para_attn_server.schema import InputSchema


def main() -> int:
    out_dir = Path(sys.argv[1])
    plugins = Plugins.load()
    for model, run in json.load(sys.stdin).items():
        options: dict[str, str] = run["options"]
        predictor = plugins.resolve_predictor(model)
        schema = InputSchema(predictor)
        predictor.configure(1, options)
        predictor.setup(RankContext(0, 1, 0, torch.device("cpu"), options))
        (out_dir / model).mkdir(parents=True, exist_ok=True)
        for name, fields in run["requests"].items():
            inputs = schema.convert(fields)
            predictor.validate(inputs)
            kwargs = schema.predict_kwargs(inputs)
            with running(JobContext(name, kwargs, 0, 1, lambda step, total: False)):
                output = predictor.predict(**kwargs)
            (out_dir / model / f"{name}.{output.file_type}").write_bytes(output.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
