"""adapters: the adapters an operator registers (--lora, --lora-dir), the ``loras`` request
field of a predictor that supports them, and what the ranks receive."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from para_attn_server import ConfigurationError, InputError, Lora
from para_attn_server.adapters import Adapters
from para_attn_server.cli import parse
from para_attn_server.schema import InputSchema
from para_attn_server.settings import build
from tests.unit.fakes import EchoPredictor, KwargsPredictor


class LoraPredictor(EchoPredictor):
    supports_loras = True


class LoraKwargsPredictor(KwargsPredictor):
    supports_loras = True


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    root = tmp_path / "loras"
    (root / "folder").mkdir(parents=True)
    (root / "folder" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (root / "file.safetensors").write_bytes(b"x")
    (root / "notes.txt").write_text("not an adapter")
    (root / ".hidden").mkdir()
    (root / "empty.d").mkdir()  # holds no weights: no adapter, whatever its name
    return root


def test_lora_flags_register_directories_and_files(lora_dir: Path) -> None:
    settings = parse(["--lora", f"one={lora_dir / 'folder'}", "--lora", f"two={lora_dir / 'file.safetensors'}",
                      "--max-loras-per-request", "2", "--max-loaded-loras", "3"])  # fmt: skip
    assert settings.model.max_loras_per_request == 2
    assert settings.rank.max_loaded_loras == 3
    adapters = Adapters.from_settings(settings.model.loras, settings.model.lora_dir)
    assert adapters.paths == {"one": str(lora_dir / "folder"), "two": str(lora_dir / "file.safetensors")}


def test_lora_dir_offers_each_file_by_stem_and_each_folder_by_name(lora_dir: Path) -> None:
    adapters = Adapters.from_settings({}, str(lora_dir))
    assert adapters.paths == {"file": str(lora_dir / "file.safetensors"), "folder": str(lora_dir / "folder")}


@pytest.mark.parametrize(
    ("loras", "lora_dir", "says"),
    [
        ({"a": "/nowhere/at/all"}, None, "--lora a: '/nowhere/at/all' does not exist"),
        ({"a.b": "."}, None, "--lora: 'a.b' is not an adapter name"),
        ({}, "/nowhere/at/all", "--lora-dir: '/nowhere/at/all' is not a directory"),
    ],
)
def test_a_bad_registration_is_a_startup_error_naming_the_flag(
    loras: dict[str, str], lora_dir: str | None, says: str
) -> None:
    with pytest.raises(ConfigurationError, match="^" + says.replace(".", r"\.")):
        Adapters.from_settings(loras, lora_dir)


def test_a_name_in_both_flags_and_a_file_that_is_no_adapter_are_refused(lora_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="also an adapter of --lora-dir"):
        Adapters.from_settings({"file": str(lora_dir / "folder")}, str(lora_dir))
    with pytest.raises(ConfigurationError, match=r"neither a directory nor a \.safetensors file"):
        Adapters.from_settings({"a": str(lora_dir / "notes.txt")}, None)


def test_the_group_cache_must_hold_a_whole_request() -> None:
    with pytest.raises(ConfigurationError, match="--max-loaded-loras"):
        build({"max_loras_per_request": 4, "max_loaded_loras": 2})


def test_only_a_predictor_that_supports_adapters_has_the_field(lora_dir: Path) -> None:
    assert "loras" not in InputSchema(EchoPredictor()).type.__struct_fields__
    schema = InputSchema(LoraPredictor(), adapters=Adapters.from_settings({}, str(lora_dir)))
    assert "loras" in schema.type.__struct_fields__
    inputs = schema.decode_json(b'{"prompt": "a cat"}')
    assert inputs["loras"] == []
    assert "loras" not in schema.predict_kwargs(inputs)
    # Nor to a predict(**kwargs): the job's adapters are JobContext.loras, never a keyword.
    extra = InputSchema(LoraKwargsPredictor(), adapters=Adapters())
    assert "loras" not in extra.predict_kwargs(extra.decode_json(b'{"prompt": "a", "loras": []}'))


def test_names_are_checked_and_the_ranks_get_each_path(lora_dir: Path) -> None:
    schema = InputSchema(LoraPredictor(), adapters=Adapters.from_settings({}, str(lora_dir), 2))
    inputs = schema.decode_json(b'{"prompt": "a cat", "loras": [{"name": "file", "scale": 0.8}, {"name": "folder"}]}')
    assert inputs["loras"] == [{"name": "file", "scale": 0.8}, {"name": "folder", "scale": 1.0}]
    sent = schema.rank_inputs(inputs)
    assert sent["loras"] == [
        {"name": "file", "scale": 0.8, "path": str(lora_dir / "file.safetensors")},
        {"name": "folder", "scale": 1.0, "path": str(lora_dir / "folder")},
    ]
    # A rank's schema (no registry) takes them with their paths.
    on_rank = InputSchema(LoraPredictor()).convert(msgspec.msgpack.decode(msgspec.msgpack.encode(sent)))
    assert msgspec.convert(on_rank["loras"], list[Lora])[0] == Lora("file", 0.8, str(lora_dir / "file.safetensors"))
    schema.check_stored(inputs)  # a recovered job still fits


def test_an_unknown_name_is_a_400_naming_the_item_and_listing_the_registered(lora_dir: Path) -> None:
    schema = InputSchema(LoraPredictor(), adapters=Adapters.from_settings({}, str(lora_dir)))
    with pytest.raises(InputError) as error:
        schema.decode_json(b'{"prompt": "a cat", "loras": [{"name": "file"}, {"name": "nope"}]}')
    assert error.value.field == "loras[1].name"
    assert "'nope'" in str(error.value)
    assert "registered: file, folder" in str(error.value)
    with pytest.raises(InputError) as error:
        schema.decode_json(b'{"prompt": "a cat", "loras": [{"name": "file"}, {"name": "file"}]}')
    assert error.value.field == "loras[1].name"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"prompt": "a", "loras": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}', "length <= 2 - at `$.loras`"),
        (b'{"prompt": "a", "loras": [{"name": "a", "scale": 11}]}', "<= 10.0 - at `$.loras[0].scale`"),
        (b'{"prompt": "a", "loras": [{"name": "a", "path": "/etc"}]}', "unknown field `path`"),
    ],
)
def test_too_many_adapters_a_wild_scale_or_a_path_are_refused(body: bytes, says: str) -> None:
    schema = InputSchema(LoraPredictor(), adapters=Adapters({"a": "/a", "b": "/b", "c": "/c"}, 2))
    with pytest.raises(msgspec.ValidationError, match=says.replace("[", r"\[").replace("$", r"\$")):
        schema.decode_json(body)
