"""Startup and request checks of the diffusers predictors, without loading weights:
``configure`` reads only the configs, so FLUX.1-dev's real dimensions can be used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from para_attn_predictors.flux import FluxPredictor
from para_attn_predictors.wan import WanPredictor
from para_attn_server import ConfigurationError, InputError
from para_attn_server.schema import InputSchema
from tests.contrib.configs import FLUX_DEV, configured, inputs, save_configs


def test_text_tokens_must_split_across_the_ranks(flux_dev: str) -> None:
    with pytest.raises(ConfigurationError, match="max_sequence_length=512 text tokens do not split across 3 ranks"):
        configured(FluxPredictor, 3, model_path=flux_dev)
    configured(FluxPredictor, 3, model_path=flux_dev, max_sequence_length="510")


def test_image_tokens_must_split_across_the_ranks(flux_dev: str) -> None:
    predictor = configured(FluxPredictor, 3, model_path=flux_dev, max_sequence_length="510")
    predictor.validate(inputs(predictor, width=48, height=48))  # 3 x 3 tokens of 16 pixels
    with pytest.raises(InputError, match="32x32 make 4 tokens, which do not split across 3 ranks") as error:
        predictor.validate(inputs(predictor, width=32, height=32))
    assert error.value.field == "height"


def test_video_tokens_and_frame_counts_are_checked(wan_14b: str) -> None:
    predictor = configured(WanPredictor, 8, model_path=wan_14b)
    predictor.validate(inputs(predictor, width=832, height=480, num_frames=81))  # 21 x 30 x 52 tokens
    with pytest.raises(InputError) as error:
        predictor.validate(inputs(predictor, width=832, height=480, num_frames=80))
    assert error.value.field == "num_frames"
    with pytest.raises(InputError) as error:
        predictor.validate(inputs(predictor, width=48, height=16, num_frames=1))  # 3 x 1 tokens
    assert error.value.field == "height"


@pytest.mark.parametrize(("body", "path"), [
    ({"width": 24}, "$.width"), ({"height": 2064}, "$.height"), ({"num_inference_steps": 0}, "$.num_inference_steps"),
    ({"prompt": "x" * 2001}, "$.prompt"), ({"seed": 2**63}, "$.seed"), ({"output_format": "gif"}, "$.output_format"),
])  # fmt: skip
def test_request_limits_are_in_the_schema(flux_dev: str, body: dict[str, Any], path: str) -> None:
    schema = InputSchema(configured(FluxPredictor, 1, model_path=flux_dev))
    with pytest.raises(msgspec.ValidationError, match=rf"at `\{path}`"):
        schema.decode_json(msgspec.json.encode({"prompt": "a cat", **body}))


@pytest.mark.parametrize(("options", "message"), [
    ({}, "needs --model-path"),
    ({"model_path": "{flux}", "cache_treshold": "0.1"}, "unknown field `cache_treshold`"),
    ({"model_path": "{flux}", "cache_threshold": "-1"}, r"at `\$.cache_threshold`"),
    ({"model_path": "{flux}", "dtype": "float8"}, r"at `\$.dtype`"),
    ({"model_path": "{flux}", "warmup": "{not json"}, "warmup must be 0, 1 or a JSON object"),
    ({"model_path": "{flux}", "warmup": '{"width": 40}'}, r"warm-up request: .* at `\$.width`"),
    ({"model_path": "/nonexistent"}, "cannot read model_index.json of model '/nonexistent'"),
])  # fmt: skip
def test_bad_options_are_configuration_errors(flux_dev: str, options: dict[str, str], message: str) -> None:
    options = {key: value.replace("{flux}", flux_dev) for key, value in options.items()}
    with pytest.raises(ConfigurationError, match=message):
        configured(FluxPredictor, 1, **options)


def test_a_hub_id_reads_its_configs_through_huggingface_hub(flux_dev: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    fetched: list[tuple[str, str]] = []

    def download(repo_id: str, filename: str) -> str:
        fetched.append((repo_id, filename))
        return str(Path(flux_dev, filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    configured(FluxPredictor, 2, model_path="black-forest-labs/FLUX.1-dev")
    assert fetched == [("black-forest-labs/FLUX.1-dev", "model_index.json"),
                       ("black-forest-labs/FLUX.1-dev", "transformer/config.json"),
                       ("black-forest-labs/FLUX.1-dev", "vae/config.json")]  # fmt: skip


def test_the_model_directory_names_the_pipeline_it_serves(tmp_path: Path, wan_14b: str) -> None:
    fill = save_configs(tmp_path / "fill", {**FLUX_DEV, "model_index": {"_class_name": "FluxFillPipeline"}})
    with pytest.raises(ConfigurationError, match=r"serves .*FluxKontextPipeline, FluxPipeline.* a FluxFillPipeline"):
        configured(FluxPredictor, 1, model_path=str(fill))
    kontext = save_configs(tmp_path / "kontext", {**FLUX_DEV, "model_index": {"_class_name": "FluxKontextPipeline"}})
    assert configured(FluxPredictor, 1, model_path=str(kontext)).pipeline_spec == "diffusers:FluxKontextPipeline"
    # Flux's own option: the Wan predictor does not take it.
    with pytest.raises(ConfigurationError, match="unknown field `kontext_auto_resize`"):
        configured(WanPredictor, 1, model_path=wan_14b, kontext_auto_resize="0")
