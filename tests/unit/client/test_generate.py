"""para_attn_client.generate's pure parts: -p values, the URL, the output path, and the
one-line errors of a bad command line (before anything reaches a server); the
``para-attn-client`` command that runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from para_attn_client import cli
from para_attn_client.generate import Param, _inputs, main, parse_param

PREFIX = "para-attn-client generate: error: "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seed=7", ("seed", 7)),
        ("scale=3.5", ("scale", 3.5)),
        ("tiled=true", ("tiled", True)),
        ("negative=null", ("negative", None)),
        ('tags=["a", "b"]', ("tags", ["a", "b"])),
        ('size={"w": 1}', ("size", {"w": 1})),
        ("prompt=a cat in a hat", ("prompt", "a cat in a hat")),
        ('prompt="7"', ("prompt", "7")),  # JSON text: how to pass digits as a string
        ("prompt=", ("prompt", "")),
        ("prompt=a=b", ("prompt", "a=b")),  # only the first = splits
        ("word=NaN", ("word", "NaN")),  # a word, not float('nan')
        ("word=Infinity", ("word", "Infinity")),
        (" seed =7", ("seed", 7)),
    ],
)
def test_param_values_are_json_when_they_parse_else_text(text: str, expected: tuple[str, object]) -> None:
    assert parse_param(text) == Param(*expected)


@pytest.mark.parametrize("text", ["seed", "=7", " =7", "+=7"])
def test_a_param_without_a_key_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        parse_param(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http://127.0.0.1:9", "-p", "seed"], "argument -p/--param: expected KEY=VALUE, got 'seed'"),
        (
            ["http://127.0.0.1:9", "-p", "seed=1", "-p", "seed=2"],
            "-p seed: given twice (to send a list: -p seed+=VALUE, repeated)",
        ),
        (["ftp://127.0.0.1:9"], "URL: expected http://HOST:PORT, got 'ftp://127.0.0.1:9'"),
        (["http://"], "URL: expected http://HOST:PORT, got 'http://'"),
        ([], "the following arguments are required: URL"),
        (["http://127.0.0.1:9", "--colour"], "unrecognized arguments: --colour"),
    ],
)
def test_a_bad_command_line_is_one_line_and_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{PREFIX}{message}\n")


def test_an_output_path_in_a_missing_directory_is_refused_before_the_job_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 9 (discard) has no server here: reaching it would be a different error.
    assert main(["http://127.0.0.1:9", "-o", str(tmp_path / "missing" / "cat.png")]) == 2
    assert capsys.readouterr().err == f"{PREFIX}-o: directory '{tmp_path / 'missing'}' does not exist\n"


def test_a_server_that_does_not_answer_is_status_1_with_the_reason(
    unused_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([f"127.0.0.1:{unused_port}", "-q"]) == 1  # host:port alone means http://
    err = capsys.readouterr().err
    assert err.startswith(f"{PREFIX}no answer from the server (ConnectError")
    assert err.count("\n") == 1


def test_the_client_command_runs_generate_and_names_itself(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["generate", "http://127.0.0.1:9", "-p", "seed"]) == 2
    assert capsys.readouterr().err == f"{PREFIX}argument -p/--param: expected KEY=VALUE, got 'seed'\n"
    assert main(["http://127.0.0.1:9", "-p", "seed"], prog="para-attn-server generate") == 2
    assert capsys.readouterr().err.startswith("para-attn-server generate: error: ")


@pytest.mark.parametrize("argv", [[], ["serve"]])
def test_the_client_command_without_generate_is_status_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "para-attn-client: error: expected the command 'generate'" in capsys.readouterr().err


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---- files and lists --------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image=@cat.png", Param("image", Path("cat.png"))),
        ("image=@dir/a b.png", Param("image", Path("dir/a b.png"))),
        ("image=@~/cat.png", Param("image", Path.home() / "cat.png")),
        ("prompt=@@home", Param("prompt", "@home")),  # @@: text that starts with @
        ('prompt="@home"', Param("prompt", "@home")),  # so does JSON text
        ("image=job:6f1f0c1e-8c3a-4c8e-9a53-0d6f2a1b9e11", Param("image", "job:6f1f0c1e-8c3a-4c8e-9a53-0d6f2a1b9e11")),
        ("image=https://example.com/cat.png", Param("image", "https://example.com/cat.png")),
        ("images+=@a.png", Param("images", Path("a.png"), append=True)),
        ("tags+=7", Param("tags", 7, append=True)),
    ],
)
def test_at_file_is_a_file_and_plus_equals_adds_to_a_list(text: str, expected: Param) -> None:
    assert parse_param(text) == expected


def test_files_are_read_before_the_job_is_sent_and_lists_collect_their_items(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.png").write_bytes(PNG + b"b")
    params = [
        parse_param(f"image=@{tmp_path / 'a.png'}"),
        parse_param(f"images+=@{tmp_path / 'a.png'}"),
        parse_param(f"images+=@{tmp_path / 'b.png'}"),
        parse_param("images+=job:x"),
        parse_param("prompt=a cat"),
    ]
    assert _inputs(params) == {"image": PNG, "images": [PNG, PNG + b"b", "job:x"], "prompt": "a cat"}
    assert _inputs([parse_param('tags=["a"]'), parse_param("tags+=b")]) == {"tags": ["a", "b"]}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-p", "image=@missing.png"], "-p image: cannot read 'missing.png': No such file or directory"),
        (["-p", "image=@"], "argument -p/--param: image: expected @FILE, got '@' alone (a literal '@' is '@@')"),
        (["-p", "image=@."], "-p image: cannot read '.': Is a directory"),
        (["-p", "image=a", "-p", "image=b"], "-p image: given twice (to send a list: -p image+=VALUE, repeated)"),
        (["-p", "seed=1", "-p", "seed+=2"], "-p seed+=: seed is not a list"),
    ],
)
def test_a_file_that_cannot_be_read_is_a_usage_error_before_anything_is_sent(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["http://127.0.0.1:9", *argv]) == 2  # port 9: nothing is sent there
    assert capsys.readouterr().err == f"{PREFIX}{message}\n"
