"""The batch contract as a rank calls it: ``batch_key`` and ``predict_batch`` through the
plugin hooks, and a batch's ``JobContext`` (ids, arguments, previews by index)."""

from __future__ import annotations

from collections.abc import Generator, Hashable
from typing import Any

import pytest

from para_attn_server import Output, Predictor, hookimpl
from para_attn_server.plugin.manager import Plugins
from para_attn_server.predictor import JobContext
from tests.unit.fakes import EchoPredictor


class Doubler(Predictor):
    def predict(self, prompt: str) -> Output | None:
        return Output(prompt.encode(), "txt")

    def batch_key(self, inputs: dict[str, Any]) -> Hashable | None:
        return ("doubler", len(inputs["prompt"]))

    def predict_batch(self, batch: list[dict[str, Any]]) -> list[Output | None]:
        return [Output((one["prompt"] * 2).encode(), "txt") for one in batch]


def batch_job(*prompts: str, rank: int = 0, **extra: Any) -> JobContext:
    batch = [{"prompt": prompt} for prompt in prompts]
    ids = [f"job-{index}" for index in range(len(prompts))]
    return JobContext(ids[0], batch[0], rank, 2, lambda step, total: False, batch=batch, job_ids=ids, **extra)


def test_a_predictor_batches_nothing_unless_it_says_so() -> None:
    plugins = Plugins.load(autoload=False)

    assert plugins.batch_key(EchoPredictor(), {"prompt": "a"}) is None
    assert plugins.batch_key(Doubler(), {"prompt": "ab"}) == ("doubler", 2)
    with pytest.raises(NotImplementedError, match="EchoPredictor gives batch keys but has no predict_batch"):
        plugins.predict_batch(EchoPredictor(), batch_job("a", "b"))


def test_a_plugins_key_wins_over_the_predictors_and_a_wrapper_may_veto_batching() -> None:
    class Override:
        @hookimpl
        def batch_key(self, predictor: Any, inputs: dict[str, Any]) -> Hashable | None:
            return "everything together"

    class Veto:
        @hookimpl(wrapper=True)
        def batch_key(self, predictor: Any, inputs: dict[str, Any]) -> Generator[None, Any, Any]:
            key = yield
            return None if inputs["prompt"] == "alone" else key

    assert Plugins.load([Override()], autoload=False).batch_key(Doubler(), {"prompt": "a"}) == "everything together"
    vetoing = Plugins.load([Veto()], autoload=False)
    assert vetoing.batch_key(Doubler(), {"prompt": "alone"}) is None
    assert vetoing.batch_key(Doubler(), {"prompt": "ab"}) == ("doubler", 2)


def test_predict_batch_gets_every_jobs_arguments_and_returns_an_output_per_job() -> None:
    outputs = Plugins.load(autoload=False).predict_batch(Doubler(), batch_job("a", "b", "c"))

    assert [output.data if output else None for output in outputs] == [b"aa", b"bb", b"cc"]


@pytest.mark.parametrize(
    ("returned", "error"),
    [
        ([Output(b"a", "txt")], "must return a list of 2 outputs"),
        ([Output(b"a", "txt"), b"b"], "must return Outputs or None, not bytes"),
        (Output(b"a", "txt"), "must return a list of 2 outputs"),
    ],
)
def test_a_wrong_answer_of_predict_batch_is_a_type_error(returned: Any, error: str) -> None:
    class Wrong(Doubler):
        def predict_batch(self, batch: list[dict[str, Any]]) -> Any:
            return returned

    with pytest.raises(TypeError, match=error):
        Plugins.load(autoload=False).predict_batch(Wrong(), batch_job("a", "b"))


def test_other_ranks_may_answer_none_for_the_whole_batch() -> None:
    class Quiet(Doubler):
        def predict_batch(self, batch: list[dict[str, Any]]) -> Any:
            return None

    assert Plugins.load(autoload=False).predict_batch(Quiet(), batch_job("a", "b", rank=1)) == [None, None]


def test_a_batchs_previews_go_out_under_the_id_of_the_job_they_show() -> None:
    sent: list[tuple[str, int, Any]] = []
    job = batch_job("a", "b", send_preview=lambda job_id, step, image: sent.append((job_id, step, image)))
    job.steps_done = 3

    job.preview("picture of a")
    job.preview("picture of b", index=1)
    with pytest.raises(IndexError, match="preview index 2 is outside a batch of 2 job"):
        job.preview("nobody", index=2)

    assert sent == [("job-0", 3, "picture of a"), ("job-1", 3, "picture of b")]
    assert job.job_ids == ("job-0", "job-1")
    assert job.batch == ({"prompt": "a"}, {"prompt": "b"})


def test_a_lone_job_is_a_batch_of_itself_with_no_batch_arguments() -> None:
    published: list[tuple[int, Any]] = []
    job = JobContext("alone", {"prompt": "a"}, 0, 1, lambda step, total: False, lambda *sent: published.append(sent))

    job.preview("picture")

    assert (job.job_ids, job.batch) == (("alone",), ())
    assert published == [(0, "picture")]
    with pytest.raises(IndexError):
        job.preview("picture", index=1)
