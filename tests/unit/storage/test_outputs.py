"""outputs.OutputStore: client paths confined to the output directory, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from para_attn_server import InputError
from para_attn_server.storage import outputs
from para_attn_server.storage.outputs import OutputStore, content_type


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the output directory, with a file an attacker would like to overwrite."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "victim.txt").write_bytes(b"original")
    return directory


def temp_files(store: OutputStore) -> list[Path]:
    return list(store.root.rglob(".tmp-*"))


@pytest.mark.parametrize("path", ["a.png", "sub/dir/a.png"])
def test_confine_accepts_a_relative_path_inside_the_root(store: OutputStore, path: str) -> None:
    assert store.confine(path) == store.root / path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        pytest.param("../x", "'..'", id="parent"),
        pytest.param("/etc/x", "relative", id="absolute"),
        pytest.param("a/../../x", "'..'", id="parent inside"),
        pytest.param("", "non-empty", id="empty"),
        pytest.param("a\x00.png", "NUL", id="NUL byte"),
        pytest.param("sub\\a.png", "'/'", id="backslash"),
        pytest.param(".hidden.png", "hidden", id="hidden file"),
        pytest.param("sub/.git/a.png", "hidden", id="hidden directory"),
        pytest.param(".jobs/x.png", "hidden", id="the server's own directory"),
        pytest.param(".", "name a file", id="the root itself"),
    ],
)
def test_confine_rejects_paths_that_leave_or_hide(store: OutputStore, path: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason) as info:
        store.confine(path)

    assert info.value.field == "output_path"


def test_confine_rejects_a_symlinked_directory_leading_outside(store: OutputStore, outside: Path) -> None:
    (store.root / "link").symlink_to(outside, target_is_directory=True)

    with pytest.raises(InputError, match="outside"):
        store.confine("link/a.png")


def test_confine_rejects_a_symlinked_file_leading_outside(store: OutputStore, outside: Path) -> None:
    (store.root / "a.txt").symlink_to(outside / "victim.txt")

    with pytest.raises(InputError, match="outside"):
        store.confine("a.txt")


def test_confine_rejects_a_dangling_symlink_leading_outside(store: OutputStore, outside: Path) -> None:
    (store.root / "a.txt").symlink_to(outside / "not-yet.txt")

    with pytest.raises(InputError, match="outside"):
        store.confine("a.txt")


def test_confine_rejects_even_a_symlink_that_stays_inside(store: OutputStore) -> None:
    # Writes refuse every symlink (no check-then-use race), so confine says so up front.
    (store.root / "real").mkdir()
    (store.root / "alias").symlink_to(store.root / "real", target_is_directory=True)

    with pytest.raises(InputError, match="symlink"):
        store.confine("alias/a.png")


def test_confine_rejects_a_directory(store: OutputStore) -> None:
    (store.root / "sub").mkdir()

    with pytest.raises(InputError, match="directory"):
        store.confine("sub")


def test_write_creates_parents_and_leaves_no_temporary_file(store: OutputStore) -> None:
    target = store.confine("sub/dir/a.png")

    store.write(target, b"data")

    assert target.read_bytes() == b"data"
    assert temp_files(store) == []


def test_failed_write_leaves_the_previous_file_whole(store: OutputStore) -> None:
    target = store.confine("a.png")
    store.write(target, b"first")

    with pytest.raises(TypeError):
        store.write(target, "not bytes")  # type: ignore[arg-type]

    assert target.read_bytes() == b"first"
    assert temp_files(store) == []


def test_write_refuses_a_symlink_planted_after_confine(store: OutputStore, outside: Path) -> None:
    target = store.confine("a.txt")
    target.symlink_to(outside / "victim.txt")

    with pytest.raises(InputError, match="outside"):
        store.write(target, b"attack")

    assert (outside / "victim.txt").read_bytes() == b"original"


def test_write_refuses_a_parent_swapped_for_a_symlink_after_confine(store: OutputStore, outside: Path) -> None:
    (store.root / "sub").mkdir()
    target = store.confine("sub/victim.txt")
    (store.root / "sub").rmdir()
    (store.root / "sub").symlink_to(outside, target_is_directory=True)

    with pytest.raises(InputError, match="outside"):
        store.write(target, b"attack")

    assert (outside / "victim.txt").read_bytes() == b"original"


def test_write_replaces_a_symlink_planted_after_every_check(
    store: OutputStore, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the checks cannot close: a link appears between the last check and the
    rename. The rename replaces the link itself; nothing is written through it."""
    target = store.confine("a.txt")
    fsync = os.fsync

    def plant_then_fsync(fd: int) -> None:
        fsync(fd)
        if not target.is_symlink() and not target.exists():
            target.symlink_to(outside / "victim.txt")  # after the data, before the rename

    monkeypatch.setattr(outputs.os, "fsync", plant_then_fsync)

    store.write(target, b"new")

    assert (outside / "victim.txt").read_bytes() == b"original"
    assert not target.is_symlink()
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_written_file_mode_follows_the_umask(store: OutputStore, monkeypatch: pytest.MonkeyPatch, umask: int) -> None:
    old = os.umask(umask)
    try:
        monkeypatch.setattr(outputs, "FILE_MODE", outputs._file_mode())
    finally:
        os.umask(old)
    target = store.confine("a.png")

    store.write(target, b"data")

    assert stat.S_IMODE(target.stat().st_mode) == 0o640 & ~umask


def test_job_files_live_in_the_hidden_jobs_directory(store: OutputStore) -> None:
    target = store.job_file("abc", "png")
    store.write(target, b"data")

    assert target.parent == store.jobs_dir
    assert store.jobs_dir.name.startswith(".")
    assert target.read_bytes() == b"data"


@pytest.mark.parametrize(
    ("file_type", "expected"), [("png", "image/png"), ("mp4", "video/mp4"), ("zzz", "application/octet-stream")]
)
def test_content_type_by_file_type(file_type: str, expected: str) -> None:
    assert content_type(file_type) == expected


@pytest.mark.parametrize("unlink", [True, False], ids=["own copy", "client path"])
def test_a_file_forgotten_while_its_write_waits_leaves_nothing_behind(tmp_path: Path, unlink: bool) -> None:
    """Forgetting a job whose output is still queued for writing: its write lands first, then
    the file goes (the server's own copy) and so does the memory of having verified it. That
    memory stayed for good before: ~0.5 KiB per such job, a leak a long soak showed."""
    import threading

    store = OutputStore(tmp_path / "outputs")
    target = store.job_file("a-job", "png")
    gate = threading.Event()

    def data() -> bytes:
        gate.wait(10)  # the writer holds this write until the job is forgotten
        return b"an output"

    written: list[int | None] = []
    store.write_behind(target, data, lambda size, digest, error: written.append(size))
    store.delete_behind(target, unlink=unlink)
    gate.set()
    store.flush()
    assert written == [9]
    assert target.exists() is not unlink
    assert store._verified == {}


def test_the_backlog_counts_copies_and_deletions_until_they_are_done(tmp_path: Path) -> None:
    """``pending()`` (``para_attn_output_writes_pending``) counts the one being written too."""
    import threading

    store = OutputStore(tmp_path / "outputs")
    gate = threading.Event()
    taken = threading.Event()

    def data() -> bytes:
        taken.set()
        gate.wait(10)
        return b"an output"

    store.write_behind(store.job_file("a", "png"), data, lambda size, digest, error: None)
    store.write_behind(store.job_file("b", "png"), lambda: b"another", lambda size, digest, error: None)
    store.delete_behind(store.job_file("a", "png"))
    assert taken.wait(10)
    assert store.pending() == 3  # the first in the writer's hands, two queued behind it
    gate.set()
    store.flush()
    assert store.pending() == 0
    assert [path.name for path in store.jobs_dir.glob("*.png")] == ["b.png"]
