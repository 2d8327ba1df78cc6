"""Real models' configs, saved without weights, for the diffusers predictors' checks at start
and at submit (``configure`` reads only the configs); fixtures ``flux_dev`` and ``wan_14b``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from para_attn_predictors.diffusers_base import DiffusersPredictor
from para_attn_server.schema import InputSchema

# The fields of FLUX.1-dev's and Wan2.1-T2V-14B's configs that the predictors read.
FLUX_DEV = {"model_index": {"_class_name": "FluxPipeline"},
            "transformer": {"num_attention_heads": 24, "attention_head_dim": 128},
            "vae": {"block_out_channels": [128, 256, 512, 512]}}  # fmt: skip
WAN_14B = {"model_index": {"_class_name": "WanPipeline"},
           "transformer": {"num_attention_heads": 40, "patch_size": [1, 2, 2]}, "vae": {"z_dim": 16}}  # fmt: skip


def save_configs(root: Path, configs: dict[str, dict[str, Any]]) -> Path:
    for subfolder, config in configs.items():
        if subfolder == "model_index":
            root.mkdir(parents=True, exist_ok=True)
            (root / "model_index.json").write_text(json.dumps(config))
            continue
        (root / subfolder).mkdir(parents=True)
        (root / subfolder / "config.json").write_text(json.dumps(config))
    return root


def configured(cls: type[DiffusersPredictor], world_size: int, **options: str) -> DiffusersPredictor:
    predictor = cls()
    predictor.configure(world_size, options)
    return predictor


def inputs(predictor: DiffusersPredictor, **fields: Any) -> dict[str, Any]:
    return InputSchema(predictor).convert({"prompt": "a cat", **fields})
