"""Temporaries a crash left (``.tmp-`` and 16 hex digits, beside an output) go at start;
nothing else does, and the walk never follows a symlink out of the output directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from para_attn_server.storage.outputs import OutputStore
from para_attn_server.storage.temporaries import sweep_temporaries
from tests.unit.fakes import MakeService

LEFT = ".tmp-0123456789abcdef"


def test_only_the_servers_own_temporaries_go_and_no_symlink_is_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "outputs", tmp_path / "elsewhere"
    (root / ".jobs").mkdir(parents=True)
    (root / "client" / "deep").mkdir(parents=True)
    outside.mkdir()
    ours = [root / LEFT, root / ".jobs" / ".tmp-fedcba9876543210", root / "client" / "deep" / LEFT]
    theirs = [root / ".tmp-notours.png", root / "client" / "result.png", root / ".tmp-0123456789ABCDEF"]
    for path in [*ours, *theirs, outside / LEFT]:
        path.write_bytes(b"x")
    (root / "linked").symlink_to(outside, target_is_directory=True)  # a client's symlink out
    (root / "client" / ".tmp-aaaaaaaaaaaaaaaa").symlink_to(outside / LEFT)  # a symlink, not a file

    assert sweep_temporaries(root) == 3
    assert [path.exists() for path in ours] == [False, False, False]
    assert all(path.exists() for path in theirs)
    assert (outside / LEFT).exists()
    assert os.path.islink(root / "client" / ".tmp-aaaaaaaaaaaaaaaa")


@pytest.mark.anyio
async def test_a_service_sweeps_them_when_it_recovers(make_service: MakeService, store: OutputStore) -> None:
    (store.root / LEFT).write_bytes(b"half an output, from before a crash")
    service = await make_service(start=False)
    service.recover()
    assert not (store.root / LEFT).exists()
