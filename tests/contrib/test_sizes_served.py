"""Every request size is served or refused at submit: a sweep over the tiny models' sizes on
2 ranks, where each job the server accepts must succeed (no rank fails on a shape) and each
refusal is a 400 naming the size field that decides it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(600)

SIZE_FIELDS = ("width", "height", "num_frames")
# Sides across the fields' range: the smallest (one token row), odd token counts (48, 80),
# the tiny Wan's rotary limit (512 = 32 patches of 16 pixels) and just past it, and Wan's
# own default width (832), which the tiny Wan cannot place.
SWEEPS: dict[str, tuple[list[str], list[dict[str, Any]]]] = {
    "tiny": ([], [{"width": w, "height": h} for w in (16, 48, 80, 128, 256) for h in (16, 32, 48, 80, 256)]),
    "flux": (
        ["-o", "max_sequence_length=16"],
        [{"width": w, "height": h} for w in (16, 48, 80, 128, 256) for h in (16, 32, 48, 80, 256)],
    ),
    "wan": (
        ["-o", "max_sequence_length=16"],
        [
            {"width": w, "height": h, "num_frames": f}
            for w, h in ((16, 16), (48, 16), (48, 32), (80, 48), (512, 32), (528, 32), (832, 480), (32, 512))
            for f in (1, 5, 129)
        ],
    ),
}


@pytest.mark.parametrize("model", list(SWEEPS))
def test_each_size_is_served_or_refused_up_front(launch: Any, tiny_dirs: dict[str, Path], model: str) -> None:
    args, sizes = SWEEPS[model]
    path = [] if model == "tiny" else ["--model-path", str(tiny_dirs[model])]
    server = launch("--model", model, *path, "--num-devices", "2", *args)
    served, refused = [], []
    try:
        for size in sizes:
            body = {"prompt": "a cat", **size, "num_inference_steps": 1, "output_format": "npy"}
            response = server.http.post("/v1/jobs", params={"wait": 120}, json=body)
            if response.status_code == 400:
                field = response.json()["field"]
                assert field in SIZE_FIELDS, (size, response.json())
                refused.append((size, field))
                continue
            assert response.status_code == 201, (size, response.text)
            assert response.json()["state"] == "succeeded", (size, response.json())
            served.append(size)
    finally:
        server.stop()
    assert served  # the sweep ran jobs, and (below) met the limits it is meant to meet
    if model == "wan":
        assert ({"width": 832, "height": 480, "num_frames": 5}, "width") in refused
        assert {"width": 512, "height": 32, "num_frames": 5} in served
        assert ({"width": 48, "height": 16, "num_frames": 1}, "height") in refused  # 3 tokens on 2 ranks
