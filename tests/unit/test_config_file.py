"""Settings from ``--config FILE`` (TOML) and ``$PARA_ATTN_SERVER_<FLAG>`` variables: flag
over variable over file over default; unknown keys and bad values named with their source."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from para_attn_server import cli
from para_attn_server.plugin.manager import AUTOLOAD_ENV
from para_attn_server.settings import ModelEntry, Settings, build, read_config_file

README = Path(__file__).resolve().parents[2] / "README.md"
CONFIG = """
port = 5001
max_queue = 8

[jobs]
max_batch = 2

[[models]]
name = "tiny"
model = "tiny"
num_devices = 2

[[models]]
name = "noop"
model = "noop"
options = { delay = 0 }
"""


@pytest.fixture(autouse=True)
def environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of the server's set, but the one that keeps entry points out."""
    for name in list(os.environ):
        if name.startswith("PARA_ATTN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(AUTOLOAD_ENV, "1")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(CONFIG)
    return path


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.parse(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_the_file_sets_flat_keys_section_tables_and_models(config: Path) -> None:
    settings = cli.parse(["--config", str(config)])

    assert (settings.http.port, settings.jobs.max_queue, settings.jobs.max_batch) == (5001, 8, 2)
    assert settings.model.models == [
        ModelEntry(name="tiny", model="tiny", num_devices=2),
        ModelEntry(name="noop", model="noop", options={"delay": 0}),
    ]
    assert settings.jobs.output_dir == Settings().jobs.output_dir  # what the file leaves out keeps its default


def test_a_table_of_options_reads_as_the_flags_would_give_it(tmp_path: Path) -> None:
    (tmp_path / "options.toml").write_text(
        '[model]\nmodel = "tiny"\noptions = {steps = 4, colour = "red", defaults = {guidance_scale = 0.0}}\n'
    )

    settings = cli.parse(["--config", str(tmp_path / "options.toml")])

    assert settings.model.model == "tiny"
    assert settings.model.options == {"steps": "4", "colour": "red", "defaults": '{"guidance_scale": 0.0}'}


def test_a_flag_wins_over_its_variable_which_wins_over_the_file(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARA_ATTN_SERVER_MAX_QUEUE", "9")
    monkeypatch.setenv("PARA_ATTN_SERVER_PORT", "6000")

    settings = cli.parse(["--config", str(config), "--port", "7000"])

    assert (settings.http.port, settings.jobs.max_queue, settings.jobs.max_batch) == (7000, 9, 2)


def test_the_file_may_come_from_its_variable(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARA_ATTN_SERVER_CONFIG", str(config))

    assert cli.parse([]).http.port == 5001


def test_the_readme_example_is_a_valid_config(tmp_path: Path) -> None:
    section = README.read_text().partition("### Configuration file")[2]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    (tmp_path / "readme.toml").write_text(example[1])

    settings = build({}, config=read_config_file(str(tmp_path / "readme.toml")))

    assert [entry.name for entry in settings.model.models] == ["tiny", "noop"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("max_queu = 3\n", "unknown setting 'max_queu' (did you mean max_queue?)"),
        ("[jobz]\nmax_queue = 3\n", "unknown setting 'jobz' (did you mean jobs?)"),
        ("[http]\nmax_queue = 3\n", "unknown setting '[http] max_queue' (max_queue belongs to [jobs]"),
        ('[[models]]\nnme = "x"\n', "unknown key 'nme' in [[models]] table 1 (did you mean name?)"),
        ('port = "high"\n', "port: expected an integer from 0 to 65535, got 'high'"),
        ('[[models]]\nname = "x"\nnum_devices = 0\n', "models[0].num_devices: Expected `int` >= 1"),
    ],
)
def test_a_bad_key_or_value_names_it_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    (tmp_path / "bad.toml").write_text(text)

    err = usage_error(["--config", str(tmp_path / "bad.toml")], capsys)

    assert err.startswith(f"para-attn-server: error: {tmp_path / 'bad.toml'}: {says}")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("text", "says"), [(None, "cannot read it"), ("port = \n", "not valid TOML")])
def test_an_unreadable_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, says: str
) -> None:
    if text is not None:
        (tmp_path / "bad.toml").write_text(text)

    err = usage_error(["--config", str(tmp_path / "bad.toml")], capsys)

    assert says in err
    assert err.count("\n") == 1


def test_plugins_listed_in_the_file_are_loaded_with_their_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugin_modules"))
    (tmp_path / "plugins.toml").write_text('plugins = ["p1"]\n')

    settings, plugins = cli.configure(["--config", str(tmp_path / "plugins.toml")])

    assert settings.model.plugins == ["p1"]
    assert "p1" in plugins.module_names()


# ---- variables ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a.example, b.example:8080", ["a.example", "b.example:8080"]), ('["a,b.example"]', ["a,b.example"])],
)
def test_a_repeatable_flags_variable_holds_a_list(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: object
) -> None:
    monkeypatch.setenv("PARA_ATTN_SERVER_INPUT_ALLOW_HOST", value)

    assert cli.parse([]).jobs.input_allow_hosts == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("steps=4, scheduler=a=b", {"steps": "4", "scheduler": "a=b"}),
        ('{"defaults": "{\\"a\\": 1, \\"b\\": 2}"}', {"defaults": '{"a": 1, "b": 2}'}),
    ],
)
def test_a_key_value_flags_variable_holds_pairs(monkeypatch: pytest.MonkeyPatch, value: str, expected: object) -> None:
    monkeypatch.setenv("PARA_ATTN_SERVER_OPTION", value)

    assert cli.parse([]).model.options == expected


def test_a_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PARA_ATTN_SERVER_NUM_DEVICES", "two")

    err = usage_error([], capsys)

    assert err == "para-attn-server: error: $PARA_ATTN_SERVER_NUM_DEVICES: expected an integer >= 0, got 'two'\n"


def test_the_older_variable_name_still_reads_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PARA_ATTN_MAX_QUEUE", "5")

    with caplog.at_level(logging.WARNING):
        settings = build({})

    assert settings.jobs.max_queue == 5
    assert "$PARA_ATTN_MAX_QUEUE is deprecated: set $PARA_ATTN_SERVER_MAX_QUEUE instead" in caplog.text


def test_the_new_variable_wins_over_the_older_and_a_keyword_over_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARA_ATTN_MAX_QUEUE", "5")
    monkeypatch.setenv("PARA_ATTN_SERVER_MAX_QUEUE", "6")

    assert build({}).jobs.max_queue == 6
    assert build({"max_queue": 7}).jobs.max_queue == 7
