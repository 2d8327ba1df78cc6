"""lorafiles: an adapter's file checked from its header alone: not safetensors, cut short,
no LoRA, a layer the model lacks, another base model's shapes, a rank above the limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from para_attn_server.lorafiles import AdapterFileError, AdapterFit, check, weights_file

TARGETS = {"transformer.blocks.0.to_q": (32, 64), "transformer.blocks.0.to_k": (32, 64), "text_encoder.fc": (8, 8)}
FIT = AdapterFit(TARGETS, max_rank=None)


def lora(
    path: Path, rank: int = 4, module: str = "transformer.blocks.0.to_q", features: tuple[int, int] = (32, 64)
) -> Path:
    save_file(
        {
            f"{module}.lora_A.weight": np.zeros((rank, features[0]), np.float32),
            f"{module}.lora_B.weight": np.zeros((features[1], rank), np.float32),
        },
        str(path),
    )
    return path


def test_a_lora_for_this_model_passes_and_says_its_rank(tmp_path: Path) -> None:
    assert check(lora(tmp_path / "a.safetensors", rank=8), FIT).rank == 8
    # peft's own keys name no component: they are the transformer's
    assert check(lora(tmp_path / "b.safetensors", module="blocks.0.to_k"), FIT).rank == 4


def test_a_directory_gives_diffusers_default_file_or_its_only_one(tmp_path: Path) -> None:
    lora(tmp_path / "pytorch_lora_weights.safetensors")
    lora(tmp_path / "other.safetensors")
    assert weights_file(tmp_path).name == "pytorch_lora_weights.safetensors"
    (tmp_path / "pytorch_lora_weights.safetensors").unlink()
    assert weights_file(tmp_path).name == "other.safetensors"
    lora(tmp_path / "third.safetensors")
    with pytest.raises(AdapterFileError, match=r"other\.safetensors, third\.safetensors"):
        weights_file(tmp_path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a safetensors file: 0 bytes"),
        (b"\xff" * 64, "bad header length"),
        ((10).to_bytes(8, "little") + b"not json!!", "header is not JSON"),
    ],
)
def test_what_is_not_safetensors_is_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "bad.safetensors").write_bytes(content)
    with pytest.raises(AdapterFileError, match=reason):
        check(tmp_path / "bad.safetensors", None)


def test_a_file_cut_short_is_refused(tmp_path: Path) -> None:
    whole = lora(tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "a.safetensors").write_bytes(whole[:-10])
    with pytest.raises(AdapterFileError, match="cut short"):
        check(tmp_path / "a.safetensors", None)


def test_weights_that_are_no_lora_are_refused(tmp_path: Path) -> None:
    save_file({"transformer.blocks.0.to_q.weight": np.zeros((4, 4), np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(AdapterFileError, match="holds no LoRA weights"):
        check(tmp_path / "w.safetensors", None)


def test_a_layer_the_model_lacks_or_another_models_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterFileError, match=r"1 layer\(s\) this model does not have.*to_v"):
        check(lora(tmp_path / "a.safetensors", module="transformer.blocks.0.to_v"), FIT)
    with pytest.raises(AdapterFileError, match=r"32->64 in this model.*another base model"):
        check(lora(tmp_path / "b.safetensors", features=(48, 64)), FIT)
    with pytest.raises(AdapterFileError, match="out 96 features"):
        check(lora(tmp_path / "c.safetensors", features=(32, 96)), FIT)


def test_a_rank_above_the_hotswap_limit_is_refused(tmp_path: Path) -> None:
    path = lora(tmp_path / "a.safetensors", rank=16)
    assert check(path, AdapterFit(TARGETS, max_rank=16)).rank == 16
    with pytest.raises(AdapterFileError, match="rank is 16, above --max-lora-rank 8"):
        check(path, AdapterFit(TARGETS, max_rank=8))
