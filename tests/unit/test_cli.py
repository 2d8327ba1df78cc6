"""cli: the ``para-attn-server`` command's flags map onto the settings tree, and ``plugins
--json`` prints what is installed (test_cli_polish.py: the table, --version, one-line errors)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pluggy
import pytest

from para_attn_server import cli
from para_attn_server.errors import ConfigurationError, SetupError
from para_attn_server.plugin.manager import AUTOLOAD_ENV, Plugins, version
from para_attn_server.server import ParaAttentionServer
from para_attn_server.settings import API_KEY_ENV, MODEL_PATH_ENV, OLD_MODEL_PATH_ENV, HttpSettings, Settings


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings of every server the CLI runs; nothing is started."""
    configs: list[Settings] = []
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(MODEL_PATH_ENV, raising=False)
    monkeypatch.delenv(OLD_MODEL_PATH_ENV, raising=False)

    def run(self: ParaAttentionServer) -> None:
        configs.append(self.settings)

    monkeypatch.setattr(ParaAttentionServer, "run", run)
    return configs


def test_no_options_give_the_config_defaults(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")  # installed plugins would add sections of their own
    assert cli.main([]) == 0

    # Installed plugins' sections (the openai plugin's) come with their own defaults.
    sections = Plugins.load().settings_sections()
    assert served == [Settings(extensions={name: section() for name, section in sections.items()})]


def test_options_map_onto_config_fields(served: list[Settings]) -> None:
    cli.main(
        [
            "--model", "my_package.models:Flux",
            "--host", "0.0.0.0",
            "--port", "0",
            "--num-devices", "2",
            "--executor", "torchrun",
            "--backend", "gloo",
            "--output-dir", "/srv/out",
            "--max-queue", "3",
            "--job-timeout", "90",
            "--result-ttl", "60",
            "--cancel-grace", "2.5",
            "--max-output-bytes", "1000",
            "--log-level", "debug",
        ]
    )  # fmt: skip

    (config,) = served
    model, http, jobs, group, rank = config.model, config.http, config.jobs, config.group, config.rank
    assert (model.model, http.host, http.port, group.num_devices) == ("my_package.models:Flux", "0.0.0.0", 0, 2)
    assert (group.executor, rank.backend, jobs.output_dir) == ("torchrun", "gloo", "/srv/out")
    assert (jobs.max_queue, jobs.job_timeout, jobs.result_ttl) == (3, 90.0, 60.0)
    assert (group.cancel_grace, rank.max_output_bytes, config.log_level) == (2.5, 1000, "DEBUG")


def test_repeated_option_and_plugin_flags_collect_in_order(
    served: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugin_modules"))
    cli.main(["--option", "steps=4", "-o", "scheduler=a=b", "--option", "steps=8", "--plugin", "p1", "--plugin", "p2"])

    (config,) = served
    assert config.model.options == {"steps": "8", "scheduler": "a=b"}
    assert config.model.plugins == ["p1", "p2"]


@pytest.mark.parametrize(("value", "expected"), [("0", None), ("-1", None), ("2.5", 2.5)])
def test_job_timeout_zero_means_no_limit(served: list[Settings], value: str, expected: float | None) -> None:
    cli.main(["--job-timeout", value])

    assert served[0].jobs.job_timeout == expected


@pytest.mark.parametrize("option", ["novalue", "=value"])
def test_option_without_key_value_is_a_usage_error(
    served: list[Settings], capsys: pytest.CaptureFixture[str], option: str
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--option", option])

    assert info.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert served == []


@pytest.mark.parametrize(
    ("error", "code", "prefix"),
    [
        (ConfigurationError("unknown model 'nope'"), 2, "para-attn-server: error: unknown model 'nope'"),
        (SetupError("setup failed on rank 1: no weights"), 1, "para-attn-server: setup failed: setup failed on rank 1"),
    ],
)
def test_server_errors_become_exit_codes_and_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception, code: int, prefix: str
) -> None:
    def run(self: ParaAttentionServer) -> None:
        raise error

    monkeypatch.setattr(ParaAttentionServer, "run", run)

    assert cli.main([]) == code
    err = capsys.readouterr().err
    assert err.startswith(prefix)
    assert "Traceback" not in err


def test_plugins_command_prints_the_installed_plugins_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)

    assert cli.main(["plugins", "--json"]) == 0

    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    predictors = {name: row for row in rows for name in row["predictors"]}
    executors = {name: row for row in rows for name in row["executors"]}
    assert {"tiny", "noop"} <= set(predictors)
    assert "multiprocessing" in executors
    for row in (predictors["tiny"], predictors["noop"], executors["multiprocessing"]):
        assert row["distribution"] == "para-attn-server"
        assert row["version"] == version()
    assert "register_predictors" in predictors["tiny"]["hooks"]
    assert "register_executors" in executors["multiprocessing"]["hooks"]


def test_an_unknown_log_level_is_a_usage_error_naming_the_flag(
    served: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--log-level", "TRACE"])

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--log-level" in err
    assert "Traceback" not in err
    assert served == []


def test_an_api_key_on_the_command_line_is_warned_about(
    served: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(["--api-key", "s3cret"])

    assert "--api-key-file" in capsys.readouterr().err
    assert served[0].http.key() == "s3cret"


def test_the_api_key_file_gives_its_first_line(served: list[Settings], tmp_path: Path) -> None:
    (tmp_path / "key").write_text("s3cret\nrest\n")

    cli.main(["--api-key-file", str(tmp_path / "key")])

    assert served[0].http.key() == "s3cret"


@pytest.mark.parametrize(("content", "says"), [(None, "cannot read it"), ("\n", "empty")])
def test_an_unusable_api_key_file_is_an_error(tmp_path: Path, content: str | None, says: str) -> None:
    if content is not None:
        (tmp_path / "key").write_text(content)
    settings = HttpSettings(api_key_file=str(tmp_path / "key"))

    with pytest.raises(ConfigurationError, match=says):
        settings.key()


def test_the_model_path_comes_from_its_variable(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_PATH_ENV, "/weights")
    monkeypatch.setenv(OLD_MODEL_PATH_ENV, "/old")  # the new name wins

    cli.main([])

    assert MODEL_PATH_ENV == "PARA_ATTN_SERVER_MODEL_PATH"
    assert served[0].model.model_path == "/weights"


def test_the_old_model_path_variable_still_works_with_a_warning(
    served: list[Settings], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PARA_ATTN_MODEL_PATH", "/old")

    with caplog.at_level(logging.WARNING):
        cli.main([])

    assert served[0].model.model_path == "/old"
    assert "$PARA_ATTN_MODEL_PATH is deprecated: set $PARA_ATTN_SERVER_MODEL_PATH instead" in caplog.text


@pytest.fixture
def entry_point_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every load of the installed plugins' entry points (autoload on)."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    loads: list[str] = []
    load = pluggy.PluginManager.load_setuptools_entrypoints

    def counted(self: pluggy.PluginManager, group: str, name: str | None = None) -> int:
        loads.append(group)
        return load(self, group, name)

    monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", counted)
    return loads


def test_a_start_from_the_command_line_loads_the_plugins_once(
    entry_point_loads: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # An unknown model stops the start right after the server has its plugins.
    assert cli.main(["--model", "no-such-model", "--port", "0", "--output-dir", str(tmp_path)]) == 2

    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert entry_point_loads == ["para_attn_server"]


def test_a_start_from_the_python_entry_loads_the_plugins_once(entry_point_loads: list[str], tmp_path: Path) -> None:
    server = ParaAttentionServer("no-such-model", port=0, output_dir=str(tmp_path))

    with pytest.raises(ConfigurationError, match="unknown model 'no-such-model'"):
        asyncio.run(server.serve())

    assert entry_point_loads == ["para_attn_server"]
