"""adapters: the adapters an operator registers (--lora, --lora-dir), the ``loras`` request
field of a predictor that supports them, and what the ranks receive."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from para_attn_server import ConfigurationError, InputError, Lora
from para_attn_server.adapters import Adapters
from para_attn_server.cli import parse
from para_attn_server.lorafiles import AdapterFit
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


# ---- registered at run time (POST /v1/loras) --------------------------------------------


@pytest.fixture
def offered(tmp_path: Path) -> Adapters:
    """``--lora-dir`` offering ``style``; in its hidden ``.more/`` (which the scan skips)
    adapters to add at run time: a folder of one, and one for another model."""
    from tests.unit.test_lorafiles import lora

    root = tmp_path / "offered"
    (root / ".more" / "folder").mkdir(parents=True)
    lora(root / "style.safetensors")
    lora(root / ".more" / "folder" / "pytorch_lora_weights.safetensors")
    lora(root / ".more" / "wide.safetensors", features=(48, 64))
    lora(tmp_path / "outside.safetensors")
    (root / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    adapters = Adapters.from_settings({}, str(root))
    adapters.remove("link")  # the scan found it; here it stands for a link planted later
    adapters.fits(AdapterFit({"transformer.blocks.0.to_q": (32, 64)}))
    return adapters


def test_an_adapter_under_lora_dir_is_added_by_a_relative_or_absolute_path(offered: Adapters) -> None:
    assert offered.names() == ["style"]
    assert offered.lora_dir is not None
    info = offered.add("mine", ".more/folder/pytorch_lora_weights.safetensors")
    assert (info.name, info.source, info.rank) == ("mine", "api", 4)
    offered.add("again", str(offered.lora_dir / ".more" / "folder"))
    assert offered.resolve([{"name": "again"}])[0]["path"] == str(offered.lora_dir / ".more" / "folder")
    assert offered.remove("mine")
    assert not offered.remove("mine")
    with pytest.raises(InputError, match="no adapter is named 'mine'"):
        offered.check([{"name": "mine"}])


@pytest.mark.parametrize(
    ("name", "path", "field", "reason"),
    [
        ("x", "../outside.safetensors", "path", "must lie under --lora-dir"),
        ("x", "/etc/passwd", "path", "must lie under --lora-dir"),
        ("x", ".", "path", "must lie under --lora-dir"),
        ("x", "link.safetensors", "path", "must lie under --lora-dir"),  # a symlink out of it
        ("x", "missing.safetensors", "path", "does not exist"),
        ("x", ".more/wide.safetensors", "path", "another base model"),
        ("style", ".more/folder", "name", "already named"),
        ("a.b", ".more/folder", "name", "letters, digits"),
    ],
)
def test_what_cannot_be_added_is_an_input_error_naming_the_field(
    offered: Adapters, name: str, path: str, field: str, reason: str
) -> None:
    with pytest.raises(InputError, match=reason) as raised:
        offered.add(name, path)
    assert raised.value.field == field
    assert offered.names() == ["style"]


def test_without_lora_dir_nothing_is_added(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="only from --lora-dir") as raised:
        Adapters.from_settings({}, None).add("x", str(tmp_path))
    assert raised.value.field == "path"


def test_an_adapter_of_the_flags_that_does_not_fit_fails_the_start(offered: Adapters) -> None:
    assert offered.lora_dir is not None
    wide = Adapters.from_settings({"wide": str(offered.lora_dir / ".more" / "wide.safetensors")}, None)
    with pytest.raises(ConfigurationError, match=r"--lora wide: cannot load it: .*another base model"):
        wide.fits(AdapterFit({"transformer.blocks.0.to_q": (32, 64)}))


def test_what_was_added_is_registered_again_after_a_restart_unless_it_no_longer_fits(
    offered: Adapters, tmp_path: Path
) -> None:
    assert offered.lora_dir is not None
    offered.restore(tmp_path / "loras.json")
    offered.add("kept", ".more/folder")
    offered.add("spoiled", ".more/folder/pytorch_lora_weights.safetensors")
    again = Adapters.from_settings({}, str(offered.lora_dir))
    again.remove("link")
    again.restore(tmp_path / "loras.json")
    # Before the ranks are up it holds them (a job recovered for one stays valid)...
    assert again.names() == ["kept", "spoiled", "style"]
    # ... then checks them against the model: one that no longer loads is dropped.
    (offered.lora_dir / ".more" / "folder" / "pytorch_lora_weights.safetensors").write_bytes(b"not a LoRA")
    again.fits(AdapterFit({"transformer.blocks.0.to_q": (32, 64)}))
    assert again.names() == ["style"]
    assert msgspec.json.decode((tmp_path / "loras.json").read_bytes()) == {}  # nor will the next start
