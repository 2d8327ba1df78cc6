"""Fixtures of the unit suite: an output store in a temporary directory, plugins without
entry points, and a job service over a fake worker group (see fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from para_attn_server.engine.service import JobService
from para_attn_server.legacy import as_predictor
from para_attn_server.plugin.manager import Plugins
from para_attn_server.schema import InputSchema
from para_attn_server.settings import JobSettings
from para_attn_server.storage.outputs import OutputStore
from tests.unit.fakes import EchoPredictor, FakeGroup, MakeService


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path) -> OutputStore:
    return OutputStore(tmp_path / "outputs")


@pytest.fixture
def plugins() -> Plugins:
    return Plugins.load(autoload=False)


@pytest.fixture
def group() -> FakeGroup:
    return FakeGroup()


@pytest.fixture
def settings() -> JobSettings:
    # restart_backoff=0: a failed restart is retried at once instead of after a second.
    return JobSettings(max_queue=4, restart_backoff=0.0, job_timeout=None)


@pytest.fixture
async def make_service(
    group: FakeGroup, store: OutputStore, plugins: Plugins, settings: JobSettings
) -> AsyncIterator[MakeService]:
    """``await make_service(predictor=None, start=True)``: a JobService over ``group``."""
    made: list[JobService] = []

    async def make(predictor: object | None = None, *, start: bool = True) -> JobService:
        predictor = as_predictor(predictor if predictor is not None else EchoPredictor())
        service = JobService([group], store, plugins, predictor, InputSchema(predictor), settings)
        made.append(service)
        if start:
            await service.start()
        return service

    yield make
    # Tear down without waiting: a job a test left running is cancelled at once.
    settings.drain_timeout = 0
    group.stop_on_cancel = True
    for service in made:
        await service.drain()


@pytest.fixture
async def service(make_service: MakeService) -> JobService:
    return await make_service()
