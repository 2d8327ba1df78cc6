"""cli: the ``para-attn-server`` command's options map onto ServerConfig, and ``plugins``
prints what is installed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from para_attn_server import cli
from para_attn_server.errors import ConfigurationError, SetupError
from para_attn_server.plugins import AUTOLOAD_ENV, version
from para_attn_server.server import ParaAttentionServer, ServerConfig


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServerConfig]:
    """The config of every server the CLI runs; nothing is started."""
    configs: list[ServerConfig] = []

    def run(self: ParaAttentionServer) -> None:
        configs.append(self.config)

    monkeypatch.setattr(ParaAttentionServer, "run", run)
    return configs


def test_no_options_give_the_config_defaults(served: list[ServerConfig]) -> None:
    assert cli.main([]) == 0

    assert served == [ServerConfig()]


def test_options_map_onto_config_fields(served: list[ServerConfig]) -> None:
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
    assert (config.model, config.host, config.port, config.num_devices) == ("my_package.models:Flux", "0.0.0.0", 0, 2)
    assert (config.executor, config.backend, config.output_dir) == ("torchrun", "gloo", "/srv/out")
    assert (config.max_queue, config.job_timeout, config.result_ttl) == (3, 90.0, 60.0)
    assert (config.cancel_grace, config.max_output_bytes, config.log_level) == (2.5, 1000, "DEBUG")


def test_repeated_option_and_plugin_flags_collect_in_order(served: list[ServerConfig]) -> None:
    cli.main(["--option", "steps=4", "-o", "scheduler=a=b", "--option", "steps=8", "--plugin", "p1", "--plugin", "p2"])

    (config,) = served
    assert config.options == {"steps": "8", "scheduler": "a=b"}
    assert config.plugins == ["p1", "p2"]


@pytest.mark.parametrize(("value", "expected"), [("0", None), ("-1", None), ("2.5", 2.5)])
def test_job_timeout_zero_means_no_limit(served: list[ServerConfig], value: str, expected: float | None) -> None:
    cli.main(["--job-timeout", value])

    assert served[0].job_timeout == expected


@pytest.mark.parametrize("option", ["novalue", "=value"])
def test_option_without_key_value_is_a_usage_error(
    served: list[ServerConfig], capsys: pytest.CaptureFixture[str], option: str
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

    assert cli.main(["plugins"]) == 0

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
