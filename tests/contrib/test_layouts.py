"""Layouts (``-o ulysses/ring/cfg``) and request sizes, decided without loading weights:
``configure`` reads only the configs, so real models' dimensions can be used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from para_attn_predictors.flux import FluxPredictor
from para_attn_predictors.layouts import Layout, LayoutOptions, choose_layout
from para_attn_predictors.tiny import TinyFluxPredictor
from para_attn_predictors.wan import WanPredictor
from para_attn_server import ConfigurationError, InputError
from tests.contrib.configs import WAN_14B, configured, inputs, save_configs


@pytest.mark.parametrize(("world_size", "heads", "expected"), [
    (8, 24, (8, 1)), (16, 24, (8, 2)), (5, 24, (1, 5)), (2, 2, (2, 1)), (1, 40, (1, 1)), (16, 40, (8, 2)),
])  # fmt: skip
def test_auto_is_ulysses_where_the_heads_divide_and_ring_for_the_rest(
    world_size: int, heads: int, expected: tuple[int, int]
) -> None:
    layout = choose_layout(LayoutOptions(), world_size, heads=heads, device_type="cuda", guidance=None)
    assert (layout.ulysses, layout.ring, layout.cfg) == (*expected, 1)


@pytest.mark.parametrize(("world_size", "options", "expected"), [
    (2, {"cfg": 2}, Layout(1, 1, 2)),
    (4, {"cfg": 2}, Layout(2, 1, 2)),  # the rest split automatically
    (4, {"ulysses": 2, "cfg": 2}, Layout(2, 1, 2)),
    (8, {"ring": 2, "cfg": 2}, Layout(2, 2, 2)),
    (8, {"ulysses": 2}, Layout(2, 4, 1)),
    (4, {"ulysses": 1, "ring": 4}, Layout(1, 4, 1)),
])  # fmt: skip
def test_explicit_degrees_and_auto_fills_the_rest(world_size: int, options: dict[str, Any], expected: Layout) -> None:
    layout = choose_layout(LayoutOptions(**options), world_size, heads=24, device_type="cuda", guidance="scale")
    assert layout == expected
    assert layout.size == world_size


@pytest.mark.parametrize(("world_size", "options", "heads", "device", "guidance", "reason"), [
    (2, {"ulysses": 2, "ring": 2}, 24, "cuda", "g", r"ulysses=2 x ring=2 x cfg=1 makes 4 rank\(s\), but the group has"),
    (4, {"cfg": 3}, 24, "cuda", "g", "classifier-free guidance makes two passes per step.*cfg is 1 or 2"),
    (2, {"cfg": 2}, 24, "cuda", None, "cfg=2: this model runs one transformer pass per step"),
    (3, {"cfg": 2}, 24, "cuda", "g", r"cfg=2 does not divide the group's 3 rank\(s\)"),
    (6, {"ulysses": 4}, 24, "cuda", "g", r"ulysses=4 does not divide the group's 6 rank\(s\)"),
    (4, {"ulysses": 4}, 2, "cuda", "g", "ulysses=4 does not divide the model's 2 attention heads"),
    (2, {"ring": 2}, 24, "cpu", "g", r"ring attention \(ring=2\) runs only on CUDA"),
    (5, {}, 24, "cpu", None, r"ring attention \(ring=5\) runs only on CUDA"),  # auto needs ring for 5 of 24 heads
])  # fmt: skip
def test_layouts_that_cannot_work_are_refused_with_the_reason(
    world_size: int, options: dict[str, Any], heads: int, device: str, guidance: str | None, reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        choose_layout(LayoutOptions(**options), world_size, heads=heads, device_type=device, guidance=guidance)


def test_predictors_say_whether_they_guide(flux_dev: str, wan_14b: str) -> None:
    assert configured(FluxPredictor, 2, model_path=flux_dev, cfg="2").parallel_layout() == {
        "ulysses": 1, "ring": 1, "cfg": 2}  # fmt: skip
    assert configured(WanPredictor, 8, model_path=wan_14b, cfg="2").layout == Layout(4, 1, 2)
    tiny = TinyFluxPredictor()
    with pytest.raises(ConfigurationError, match="one transformer pass per step"):
        tiny.configure(2, {"cfg": "2"})
    tiny.configure(2, {"ulysses": "2"})
    assert tiny.parallel_layout() == {"ulysses": 2, "ring": 1, "cfg": 1}


def test_guided_is_the_pipelines_own_rule(flux_dev: str, wan_14b: str) -> None:
    flux = configured(FluxPredictor, 1, model_path=flux_dev)
    assert not flux.guided(flux.pipeline_call(inputs(flux, true_cfg_scale=4.0))[1])  # no negative prompt
    assert not flux.guided(flux.pipeline_call(inputs(flux, negative_prompt="blur"))[1])  # scale 1
    assert flux.guided(flux.pipeline_call(inputs(flux, negative_prompt="blur", true_cfg_scale=4.0))[1])
    wan = configured(WanPredictor, 1, model_path=wan_14b)
    assert wan.guided(wan.pipeline_call(inputs(wan))[1])  # guidance_scale 5 by default
    assert not wan.guided(wan.pipeline_call(inputs(wan, guidance_scale=1.0))[1])


def test_fp8_is_refused_without_cuda_and_offload_is_checked(flux_dev: str) -> None:
    with pytest.raises(ConfigurationError, match="fp8=1: float8 matmuls need a CUDA GPU"):
        configured(FluxPredictor, 1, model_path=flux_dev, fp8="1")
    with pytest.raises(ConfigurationError, match=r"at `\$.offload`"):
        configured(FluxPredictor, 1, model_path=flux_dev, offload="disk")
    assert configured(FluxPredictor, 1, model_path=flux_dev, offload="model").settings.offload == "model"


def test_sizes_that_do_not_split_name_the_sizes_that_do(wan_14b: str) -> None:
    auto = configured(WanPredictor, 8, model_path=wan_14b)
    cfg = configured(WanPredictor, 8, model_path=wan_14b, cfg="2")  # 4 ranks split each pass
    square = inputs(cfg, width=32, height=32, num_frames=1)  # 2 x 2 tokens of 16 pixels
    cfg.validate(square)
    with pytest.raises(InputError, match="make 4 tokens, which do not split across 8 ranks"):
        auto.validate(square)
    with pytest.raises(InputError) as error:
        cfg.validate(inputs(cfg, width=48, height=32, num_frames=1))  # 3 x 2 tokens
    assert error.value.field == "height"
    assert "48x32 x 1 frame(s) make 6 tokens, which do not split across 4 ranks (ulysses=4 x ring=1 x cfg=2)" in str(
        error.value
    )
    assert "sizes that work near it: height 64 or 128, or width 32 or 64 or 96" in str(error.value)


@pytest.mark.parametrize(("fields", "field", "largest"), [
    ({"width": 832, "height": 480, "num_frames": 5}, "width", 512),  # 52 patches across, 32 in the table
    ({"width": 32, "height": 528, "num_frames": 5}, "height", 512),
    ({"width": 32, "height": 32, "num_frames": 129}, "num_frames", 125),  # 33 latent frames
])  # fmt: skip
def test_positions_past_the_rotary_table_are_refused(
    tiny_wan_configs: str, fields: dict[str, Any], field: str, largest: int
) -> None:
    predictor = configured(WanPredictor, 2, model_path=tiny_wan_configs)
    with pytest.raises(
        InputError, match=f"past the 32 this model's rotary embedding covers.*at most {largest}"
    ) as error:
        predictor.validate(inputs(predictor, **fields))
    assert error.value.field == field
    predictor.validate(inputs(predictor, **{**fields, field: largest}))


@pytest.fixture
def tiny_wan_configs(tmp_path: Path) -> str:
    configs = {**WAN_14B, "transformer": {"num_attention_heads": 2, "patch_size": [1, 2, 2], "rope_max_seq_len": 32}}
    return str(save_configs(tmp_path / "wan", configs))
