"""predictor: the job context a predictor runs in, and the predictor-facing types."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from para_attn_server import JobCancelled, JobContext, Output, Predictor, RankContext, current_job
from para_attn_server.legacy import OriginalServerPredictor, as_predictor
from para_attn_server.predictor import running
from tests.unit.fakes import LegacyPredictor


class Decisions:
    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.stop_at = stop_at

    def __call__(self, step: int, total: int | None) -> bool:
        self.calls.append((step, total))
        return step == self.stop_at


def job(decide: Any = None, job_id: str = "job-1") -> JobContext:
    return JobContext(job_id, {}, rank=0, world_size=2, decide=decide or Decisions())


def test_step_passes_step_and_total_to_the_decision() -> None:
    decisions = Decisions()
    context = job(decisions)

    context.step(1, 4)
    context.step(2)

    assert decisions.calls == [(1, 4), (2, None)]
    assert context.steps_done == 2


def test_step_raises_job_cancelled_when_the_decision_is_stop() -> None:
    context = job(Decisions(stop_at=2))
    context.step(1, 4)

    with pytest.raises(JobCancelled) as info:
        context.step(2, 4)

    assert info.value.args == ("job-1",)


def test_job_cancelled_passes_through_a_predictors_except_exception() -> None:
    context = job(Decisions(stop_at=1))

    def predict() -> str:
        try:
            context.step(1)
        except Exception:
            return "swallowed"
        return "finished"

    with pytest.raises(JobCancelled):
        predict()


def test_diffusers_callback_reports_steps_done_and_the_pipelines_total() -> None:
    decisions = Decisions()
    context = job(decisions)
    pipe = SimpleNamespace(num_timesteps=8)
    callback_kwargs = {"latents": object()}

    returned = context.diffusers_callback(pipe, 0, 999, callback_kwargs)
    context.diffusers_callback(pipe, 7, 1, callback_kwargs)

    assert decisions.calls == [(1, 8), (8, 8)]
    assert returned is callback_kwargs


def test_diffusers_callback_without_num_timesteps_reports_no_total() -> None:
    decisions = Decisions()

    job(decisions).diffusers_callback(object(), 2, 0, {})

    assert decisions.calls == [(3, None)]


def test_diffusers_callback_raises_job_cancelled_on_stop() -> None:
    with pytest.raises(JobCancelled):
        job(Decisions(stop_at=3)).diffusers_callback(SimpleNamespace(num_timesteps=4), 2, 0, {})


def test_current_job_outside_predict_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside predict"):
        current_job()


def test_current_job_is_the_running_job_and_is_restored_after() -> None:
    outer, inner = job(job_id="outer"), job(job_id="inner")

    with running(outer):
        assert current_job() is outer
        with running(inner):
            assert current_job() is inner
        assert current_job() is outer

    with pytest.raises(RuntimeError):
        current_job()


def test_current_job_is_cleared_when_predict_raises() -> None:
    with pytest.raises(ValueError, match="boom"), running(job()):
        raise ValueError("boom")

    with pytest.raises(RuntimeError):
        current_job()


def test_rank_zero_is_the_leader() -> None:
    assert RankContext(0, 2, 0, device=None).is_leader  # type: ignore[arg-type]
    assert not RankContext(1, 2, 1, device=None).is_leader  # type: ignore[arg-type]


def test_only_predictor_subclasses_are_new_style() -> None:
    predictor = Predictor()
    assert as_predictor(predictor) is predictor
    assert isinstance(as_predictor(LegacyPredictor()), OriginalServerPredictor)


@pytest.mark.parametrize(("file_type", "pil_format"), [("png", "PNG"), ("jpg", "JPEG"), ("JPEG", "JPEG")])
def test_output_from_image_encodes_in_the_named_format(file_type: str, pil_format: str) -> None:
    image = Image.new("RGB", (24, 16), (200, 10, 10))

    output = Output.from_image(image, file_type)

    decoded = Image.open(io.BytesIO(output.data))
    assert decoded.format == pil_format
    assert decoded.size == (24, 16)
    assert output.file_type == file_type.lower()
