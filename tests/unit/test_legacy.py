"""legacy and core_plugin: a predictor's methods as hooks, the original server's result
forms, and the step hook installed into a legacy predictor's pipeline."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from para_attn_server import JobCancelled, JobContext, Output, Predictor, RankContext
from para_attn_server.legacy import as_predictor, install_step_callback
from para_attn_server.plugin.manager import Plugins
from para_attn_server.predictor import running
from tests.unit.fakes import EchoPredictor

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


class Returns:
    """A legacy predictor whose predict returns whatever it was built with."""

    def __init__(self, result: object) -> None:
        self.result = result
        self.calls: list[dict[str, Any]] = []
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def predict(self, **kwargs: Any) -> object:
        self.calls.append(kwargs)
        return self.result


class StepPipe:
    """The shape of a diffusers pipeline: ``__call__`` runs steps and calls
    ``callback_on_step_end(pipe, i, t, kwargs)`` after each."""

    def __init__(self, steps: int = 3) -> None:
        self.num_timesteps = steps
        self.ran: list[int] = []

    def __call__(self, prompt: str = "", callback_on_step_end: Any = None) -> str:
        for i in range(self.num_timesteps):
            self.ran.append(i)
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, 1000 - i, {"latents": i})
        return f"image of {prompt}"


class PlainPipe:
    def __call__(self, prompt: str = "") -> str:
        return prompt


@pytest.fixture
def plugins() -> Plugins:
    return Plugins.load(autoload=False)


def job(inputs: dict[str, Any] | None = None, decide: Any = None) -> JobContext:
    return JobContext("job-1", inputs or {}, rank=0, world_size=1, decide=decide or (lambda step, total: False))


def predict(plugins: Plugins, predictor: object, context: JobContext | None = None) -> Output | None:
    """``plugins.predict`` as a rank calls it: inside the job's context."""
    context = context or job()
    with running(context):
        return plugins.predict(as_predictor(predictor), context)


class Decisions:
    """A ``decide`` that records its calls and says stop at ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.stop_at = stop_at

    def __call__(self, step: int, total: int | None) -> bool:
        self.calls.append((step, total))
        return step == self.stop_at


# ---- results --------------------------------------------------------------------------------


def test_legacy_base64_result_stays_base64_and_decodes_to_the_bytes(plugins: Plugins) -> None:
    predictor = Returns((base64.b64encode(PNG).decode(), "png"))

    output = predict(plugins, predictor, job({"prompt": "a"}))

    assert output == Output(base64.b64encode(PNG), "png", base64=True)  # passed through, not decoded
    assert output.raw() == PNG
    assert predictor.calls == [{"prompt": "a"}]


def test_legacy_raw_bytes_result_becomes_output(plugins: Plugins) -> None:
    assert predict(plugins, Returns((PNG, "png"))) == Output(PNG, "png")


def test_legacy_result_that_is_not_base64_is_a_type_error(plugins: Plugins) -> None:
    with pytest.raises(TypeError, match="predict returned a string that is not base64"):
        predict(plugins, Returns(("not base64!", "png")))


def test_output_result_passes_through_unchanged(plugins: Plugins) -> None:
    output = Output(PNG, "png")

    assert predict(plugins, Returns(output)) is output


def test_none_result_passes_through(plugins: Plugins) -> None:
    assert predict(plugins, Returns(None)) is None


@pytest.mark.parametrize("result", ["just a string", (PNG,), [PNG, "png"]], ids=["str", "1-tuple", "list"])
def test_any_other_result_is_a_type_error_naming_it(plugins: Plugins, result: object) -> None:
    with pytest.raises(TypeError, match=f"not {type(result).__name__}"):
        predict(plugins, Returns(result))


def test_new_style_predictor_gets_the_job_inputs_as_keywords(plugins: Plugins) -> None:
    assert predict(plugins, EchoPredictor(), job({"prompt": "ab", "repeat": 3})) == Output(b"ababab", "txt")


# ---- setup and validate ------------------------------------------------------------------------


def test_legacy_setup_is_called_without_arguments(plugins: Plugins) -> None:
    predictor = Returns(None)

    plugins.setup(as_predictor(predictor), RankContext(0, 1, 0, device=None))  # type: ignore[arg-type]

    assert predictor.setups == 1


def test_new_style_setup_receives_the_rank_context(plugins: Plugins) -> None:
    predictor = EchoPredictor()
    context = RankContext(1, 2, 1, device=None, options={"k": "v"})  # type: ignore[arg-type]

    plugins.setup(predictor, context)

    assert predictor.context is context


def test_predictor_without_validate_accepts_everything(plugins: Plugins) -> None:
    plugins.validate(as_predictor(Returns(None)), {"anything": 1})


def test_base_predictor_validate_accepts_everything(plugins: Plugins) -> None:
    plugins.validate(Predictor(), {"anything": 1})


# ---- step hook in a legacy pipeline ----------------------------------------------------------


def test_install_keeps_the_pipeline_an_instance_of_its_class() -> None:
    pipe = StepPipe()

    assert install_step_callback(pipe)

    assert isinstance(pipe, StepPipe)
    assert type(pipe).__name__ == "StepPipe"
    assert pipe.num_timesteps == 3


def test_installed_hook_reports_each_step_of_the_running_job() -> None:
    pipe = StepPipe(steps=3)
    install_step_callback(pipe)
    decisions = Decisions()

    with running(job(decide=decisions)):
        assert pipe(prompt="a cat") == "image of a cat"

    assert decisions.calls == [(1, 3), (2, 3), (3, 3)]


def test_installed_hook_stops_the_pipeline_when_the_job_is_cancelled() -> None:
    pipe = StepPipe(steps=4)
    install_step_callback(pipe)

    with running(job(decide=Decisions(stop_at=2))), pytest.raises(JobCancelled):
        pipe()

    assert pipe.ran == [0, 1]


def test_installed_hook_chains_the_callers_own_callback_first() -> None:
    pipe = StepPipe(steps=2)
    install_step_callback(pipe)
    order: list[str] = []

    def user_callback(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        order.append(f"user {i} {kwargs['latents']}")
        return kwargs

    def decide(step: int, total: int | None) -> bool:
        order.append(f"job {step}")
        return False

    with running(job(decide=decide)):
        pipe(callback_on_step_end=user_callback)

    assert order == ["user 0 0", "job 1", "user 1 1", "job 2"]


def test_installed_pipeline_outside_a_job_runs_the_callers_callback_only() -> None:
    pipe = StepPipe(steps=2)
    install_step_callback(pipe)
    steps: list[int] = []

    pipe(callback_on_step_end=lambda p, i, t, kwargs: steps.append(i) or kwargs)

    assert steps == [0, 1]


def test_installing_twice_does_not_report_each_step_twice() -> None:
    pipe = StepPipe(steps=2)
    decisions = Decisions()

    assert install_step_callback(pipe)
    assert install_step_callback(pipe)
    with running(job(decide=decisions)):
        pipe()

    assert decisions.calls == [(1, 2), (2, 2)]


def test_install_leaves_other_instances_of_the_class_alone() -> None:
    pipe, other = StepPipe(), StepPipe()

    install_step_callback(pipe)

    assert type(other) is StepPipe


def test_pipeline_without_the_callback_parameter_is_left_alone() -> None:
    pipe = PlainPipe()

    assert not install_step_callback(pipe)
    assert type(pipe) is PlainPipe
