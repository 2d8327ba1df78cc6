"""benchmarks/gpu.sh, the prepared GPU run, end to end on CPU: its dry run builds tiny Flux,
times the direct call and real servers (plain, first-block cache, fp8), and writes the table,
the log and the JSON; without CUDA and without the dry run, the suite says it is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import REPO

pytestmark = pytest.mark.timeout(300)  # ~1 minute on a quiet 2-core machine


def script_env(**extra: str) -> dict[str, str]:
    """This environment without the suite's own settings, on CPU even where CUDA is."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PARA_ATTN_BENCH_")}
    return {**env, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **extra}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("gpu-results")
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=script_env(GPU_BENCH_LIMIT="240"),
        capture_output=True, text=True, timeout=290, check=False,
    )  # fmt: skip
    return done, out


def rows_by_config(out: Path) -> dict[str, dict[str, Any]]:
    (path,) = out.glob("gpu-dry-run-*.json")
    rows = json.loads(path.read_text())["rows"]
    return {row["config"]: row for row in rows if row["suite"] == "gpu"}


def test_the_dry_run_times_direct_and_served_calls(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = rows_by_config(out)
    assert list(rows) == ["direct", "server", "cache", "fp8", "compile"]
    card = rows["direct"]["card"]
    assert card.startswith("CPU")
    for config in ("direct", "server", "cache"):
        row = rows[config]
        assert row["status"] == "ok", row
        assert row["value"] > 0
        assert row["stat"]["n"] == 3
        assert row["card"] == card
    assert rows["server"]["ratio"] == pytest.approx(rows["server"]["value"] / rows["direct"]["value"])
    assert rows["cache"]["options"]["cache_threshold"] == "0.08"
    # The table, headed by the card, and the log beside the JSON.
    assert f"{card}: tiny Flux (dry run), 64x64, 4 steps" in done.stdout
    assert "| direct diffusers, no server |" in done.stdout
    (log,) = out.glob("gpu-dry-run-*.log")
    assert "| config | median | vs direct | note |" in log.read_text()


def test_fp8_shows_why_the_server_refused_and_compile_is_left_out(
    dry_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = rows_by_config(out)
    fp8 = rows["fp8"]
    assert fp8["status"] == "failed"
    assert "fp8" in fp8["reason"]
    assert "CUDA" in fp8["reason"]
    assert fp8["value"] is None  # nothing measured: JSON null
    assert f"failed: {fp8['reason']}" in done.stdout
    assert rows["compile"]["status"] == "skipped"
    assert "dry run" in rows["compile"]["reason"]


def test_without_cuda_or_the_dry_run_the_suite_is_skipped(tmp_path: Path) -> None:
    result = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "gpu", "--json", str(result)], cwd=REPO, env=script_env(),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gpu         skipped: no CUDA device" in done.stdout
    assert json.loads(result.read_text())["rows"] == []
