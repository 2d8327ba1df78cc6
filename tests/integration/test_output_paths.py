"""``output_path`` stays inside ``--output-dir``: anything else is a 400 and nothing is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from para_attn_server.testing import Server, b64decode

pytestmark = pytest.mark.timeout(180)


def files_under(*roots: Path) -> set[Path]:
    return {path for root in roots for path in root.rglob("*") if ".jobs" not in path.parts}


def test_relative_output_path_is_written_inside_the_output_dir(tiny_server: Server) -> None:
    job = tiny_server.run(prompt="kept", output_path="nested/dir/kept.png")
    assert job["state"] == "succeeded", job
    written = tiny_server.output_dir / "nested" / "dir" / "kept.png"
    assert written.read_bytes() == tiny_server.output(job["id"])
    body = tiny_server.http.get(f"/get_output/{job['id']}").json()
    assert b64decode(body["output"]) == written.read_bytes()
    assert body["output_path"] == "nested/dir/kept.png"


@pytest.mark.parametrize("output_path", ["../x.png", "/etc/x.png", "a/../../x.png", "a\x00b.png", ".jobs/x.png"])
def test_output_path_leaving_the_output_dir_is_400_and_writes_nothing(tiny_server: Server, output_path: str) -> None:
    around = tiny_server.workdir  # holds the output dir and everything "../" reaches
    before = files_under(around)
    for path in ("/generate", "/v1/jobs"):
        response = tiny_server.http.post(path, json={"prompt": "escape", "output_path": output_path})
        assert response.status_code == 400
        assert "output_path" in response.json()["error"]
    assert not Path("/etc/x.png").exists()
    assert files_under(around) == before


@pytest.mark.parametrize("link_target", ["dir", "file"])
def test_output_path_through_a_symlink_out_of_the_output_dir_is_400(
    tiny_server: Server, tmp_path: Path, link_target: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if link_target == "dir":
        link, output_path = tiny_server.output_dir / "to-outside", "to-outside/x.png"
        os.symlink(outside, link)
    else:
        link, output_path = tiny_server.output_dir / "planted.png", "planted.png"
        os.symlink(outside / "x.png", link)
    try:
        response = tiny_server.http.post("/generate", json={"prompt": "escape", "output_path": output_path})
        assert response.status_code == 400
        assert "outside" in response.json()["error"]
        assert list(outside.iterdir()) == []
    finally:
        link.unlink()
