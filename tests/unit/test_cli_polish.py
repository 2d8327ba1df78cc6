"""cli: ``--version``, the ``plugins`` table, one-line usage errors with "did you mean", and
the forms ``--model`` takes (``Plugins.resolve_predictor``, ``normalize_model_spec``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from para_attn_server import cli
from para_attn_server.errors import ConfigurationError
from para_attn_server.plugin.manager import AUTOLOAD_ENV, Plugins, version

PREDICTOR = """
from para_attn_server import Output, Predictor


class {name}(Predictor):
    def setup(self, context):
        pass

    def predict(self, prompt: str = "x") -> Output:
        return Output(prompt.encode(), "txt")
"""


def test_version_prints_the_distribution_version() -> None:
    # The installed console script, as an operator runs it.
    command = Path(sys.executable).with_name("para-attn-server")
    done = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=60, check=False)

    assert (done.returncode, done.stdout, done.stderr) == (0, f"para-attn-server {version()}\n", "")


def test_plugins_prints_a_table_that_fits_100_columns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)

    assert cli.main(["plugins"]) == 0

    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "DISTRIBUTION", "VERSION", "PREDICTORS", "EXECUTORS", "HOOKS"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert rows["tiny"] == ["tiny", "para-attn-server", version(), "tiny", "-", "1"]
    assert rows["multiprocessing"][3:5] == ["-", "multiprocessing"]
    assert max(len(line) for line in [header, *lines]) <= 100


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The stderr of a command line that must stop with a usage error (exit 2)."""
    with pytest.raises(SystemExit) as info:
        cli.parse(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--max-queu", "3"], "unrecognized flag --max-queu (did you mean --max-queue?)"),
        (["--num-device=2"], "unrecognized flag --num-device (did you mean --num-devices?)"),
        (["--num-devices", "two"], "--num-devices: expected an integer >= 0, got 'two'"),
        (["--port", "70000"], "--port: expected an integer from 0 to 65535, got '70000'"),
        (["--log-format", "xml"], "--log-format: expected one of json, text, got 'xml'"),
        (["--max-queue-seconds", "0"], "--max-queue-seconds: expected a number > 0, got '0'"),
        (["-o", "novalue"], "--option: expected KEY=VALUE, got 'novalue'"),
        (["--port"], "--port: expected one argument"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_flag(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert usage_error(argv, capsys) == f"para-attn-server: error: {says}\n"


def test_help_keeps_the_full_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse(["--help"])

    out = capsys.readouterr().out
    assert info.value.code == 0
    for flag in ("--version", "--config FILE", "--max-queue", "--num-devices", "PARA_ATTN_SERVER_<FLAG>"):
        assert flag in out


# ---- --model ---------------------------------------------------------------------------------


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory that is not on sys.path (as for the console script),
    and sys.path and sys.modules as they were afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".", str(tmp_path))])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("cwd_predictor", "para_attn_server_file_")):
            del sys.modules[name]


def test_model_module_and_class_from_the_current_directory(cwd: Path) -> None:
    (cwd / "cwd_predictor.py").write_text(PREDICTOR.format(name="Here"))

    predictor = Plugins.load(autoload=False).resolve_predictor("cwd_predictor:Here")

    assert type(predictor).__name__ == "Here"
    assert Plugins.load(autoload=False).normalize_model_spec("cwd_predictor:Here") == "cwd_predictor:Here"


def test_model_file_and_class_from_the_current_directory(cwd: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    (cwd / "models").mkdir()
    (cwd / "models" / "mine.py").write_text(PREDICTOR.format(name="Mine"))
    plugins = Plugins.load(autoload=False)

    predictor = plugins.resolve_predictor("models/mine.py:Mine")
    spec = plugins.normalize_model_spec("models/mine.py:Mine")

    assert type(predictor).__name__ == "Mine"
    assert spec == f"{cwd / 'models' / 'mine.py'}:Mine"
    # A rank resolves the spec the server sends from wherever it runs, to the same class.
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert type(plugins.resolve_predictor(spec)) is type(predictor)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("missing.py:Mine", "no predictor file"),
        ("mine.py", "a file needs its class: mine.py:ClassName"),
        ("broken.py:Mine", "cannot import predictor file"),
    ],
)
def test_a_model_file_that_cannot_serve_says_why(cwd: Path, spec: str, says: str) -> None:
    (cwd / "broken.py").write_text("raise RuntimeError('no')\n")

    with pytest.raises(ConfigurationError, match=says):
        Plugins.load(autoload=False).resolve_predictor(spec)


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A distribution installed on sys.path whose entry points are ``my_model`` (registering
    the predictor ``my-model``) and ``acme_plugin`` (registering ``acme-painter``)."""
    for module, name in (("my_model_plugin", "my-model"), ("acme_plugin_mod", "acme-painter")):
        (tmp_path / f"{module}.py").write_text(
            PREDICTOR.format(name="P")
            + f"\n\nfrom para_attn_server import hookimpl\n\n\n@hookimpl\ndef register_predictors(register):\n"
            f"    register({name!r}, P)\n"
        )
    info = tmp_path / "my_model_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-model-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[para_attn_server]\nmy_model = my_model_plugin\nacme_plugin = acme_plugin_mod\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield
    for module in ("my_model_plugin", "acme_plugin_mod"):
        sys.modules.pop(module, None)


@pytest.mark.parametrize(
    ("spec", "registered"),
    [("my_model", "my-model"), ("my-model", "my-model"), ("MY_MODEL", "my-model"), ("acme-plugin", "acme-painter")],
)
def test_model_by_entry_point_name(installed_plugin: None, spec: str, registered: str) -> None:
    plugins = Plugins.load()

    assert plugins.normalize_model_spec(spec) == registered  # what the ranks get: they load no entry points
    assert type(plugins.resolve_predictor(spec)) is plugins.predictors()[registered]
