"""Fixtures for the flux and wan predictors: tiny saved pipelines and 1-rank references.

The pipelines are saved by the helper users run (``para_attn_predictors.make_tiny``) and
loaded back through ``--model-path``, the path users take. A test module that compares
against one process declares ``REFERENCE = ReferenceRun(...)`` (a predictor's requests) or
``PipelineRun(...)`` (a diffusers pipeline's calls), or a tuple of them; the ``reference``
fixture computes every collected module's runs in one ``reference.py`` process (it must
not be this one: para-attn patches pipeline classes process-wide), started at first use so
it works while the servers' ranks load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from para_attn_predictors.make_tiny import KINDS
from tests.contrib.configs import FLUX_DEV, WAN_14B, save_configs
from tests.contrib.support import PipelineRun, Reference, ReferenceRun


@pytest.fixture
def flux_dev(tmp_path: Path) -> str:
    """A directory of FLUX.1-dev's configs, no weights."""
    return str(save_configs(tmp_path / "flux", FLUX_DEV))


@pytest.fixture
def wan_14b(tmp_path: Path) -> str:
    """A directory of Wan2.1-T2V-14B's configs, no weights."""
    return str(save_configs(tmp_path / "wan", WAN_14B))


@pytest.fixture(scope="session")
def tiny_dirs(tiny_pipeline: Callable[[str], Path]) -> dict[str, Path]:
    """``{"flux": DIR, "flux-kontext": DIR, "wan": DIR, "wan-i2v": DIR}``: tiny pipelines
    saved with ``save_pretrained``."""
    return {kind: tiny_pipeline(kind) for kind in KINDS}


@pytest.fixture(scope="session")
def reference(
    request: pytest.FixtureRequest, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    runs: dict[str, dict[str, Any]] = {}
    for module in {item.module for item in request.session.items if isinstance(item, pytest.Function)}:
        declared = getattr(module, "REFERENCE", ())
        for run in declared if isinstance(declared, tuple) else (declared,):
            if isinstance(run, ReferenceRun):
                options = {"model_path": str(tiny_dirs[run.model]), **run.options}
                runs[run.name] = {"predictor": run.model, "options": options, "requests": run.requests}
            elif isinstance(run, PipelineRun):
                path = None if run.model == "tiny" else str(tiny_dirs[run.model])
                runs[run.key] = {"pipeline": run.pipeline, "model_path": path, "calls": run.calls}
    return Reference(runs, tmp_path_factory.mktemp("reference"))
