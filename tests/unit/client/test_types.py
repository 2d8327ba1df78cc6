"""para_attn_client.types: how the server's answers become the client's jobs, events and errors
(httpx Response objects built here, no server), and the retry policy."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from para_attn_client.types import (
    MAX_RETRY_WAIT,
    ClientError,
    Conflict,
    InputRejected,
    Job,
    JobCancelled,
    JobFailed,
    NotFound,
    NotReady,
    Progress,
    QueueFull,
    Result,
    ServerError,
    ServerUnreachable,
    Unauthorized,
    backoff,
    decode_event,
    error_from,
    job_inputs,
    retry_after,
    retry_delay,
    unreachable,
)
from para_attn_client.wire import AppliedLora

JOB = {"id": "6f1f0c1e-8c3a-4c8e-9a53-0d6f2a1b9e11", "state": "running", "created_at": 1.0, "step": 2}


def answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else msgspec.json.encode(body) if body is not None else b""
    return httpx.Response(status, content=content, headers=headers)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, InputRejected), (413, InputRejected), (401, Unauthorized), (404, NotFound), (409, Conflict),
     (429, QueueFull), (503, NotReady), (500, ServerError), (502, ServerError)],
)  # fmt: skip
def test_each_error_status_has_its_own_error(status: int, kind: type[ClientError]) -> None:
    error = error_from(answer(status, {"error": "what happened"}))
    assert type(error) is kind
    assert (error.status, error.message, str(error)) == (status, "what happened", "what happened")


def test_a_rejected_input_names_the_field_from_the_answer() -> None:
    error = error_from(answer(400, {"error": "output_path: must be relative", "field": "output_path"}))
    assert isinstance(error, InputRejected)
    assert (error.field, error.reason) == ("output_path", "must be relative")


def test_a_rejected_input_names_the_field_from_the_message_prefix_when_the_answer_does_not() -> None:
    error = error_from(answer(400, {"error": "steps: Expected `int` >= 0"}))
    assert isinstance(error, InputRejected)
    assert (error.field, error.reason) == ("steps", "Expected `int` >= 0")


def test_a_rejected_input_names_an_unknown_field_from_the_message() -> None:
    error = error_from(answer(400, {"error": "Object contains unknown field `colour`"}))
    assert isinstance(error, InputRejected)
    assert (error.field, error.reason) == ("colour", "Object contains unknown field `colour`")


def test_a_rejected_input_without_a_named_field_keeps_the_whole_message() -> None:
    error = error_from(answer(400, {"error": "the request body is not valid UTF-8"}))
    assert isinstance(error, InputRejected)
    assert (error.field, error.reason) == (None, "the request body is not valid UTF-8")


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert retry_after(answer(429, {"error": "full"}, **{"Retry-After": "7"})) == 7
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= retry_after(answer(503, {"error": "x"}, **{"Retry-After": in_ten})) <= 10
    assert retry_after(answer(429, {"error": "full"})) == 1.0  # no header: the default
    assert retry_after(answer(429, {"error": "full"}, **{"Retry-After": "soon"})) == 1.0
    error = error_from(answer(429, {"error": "full"}, **{"Retry-After": "3"}))
    assert isinstance(error, QueueFull)
    assert error.retry_after == 3


def test_an_answer_that_is_not_json_still_gives_a_message() -> None:
    error = error_from(answer(502, b"<html>Bad Gateway</html>"))
    assert isinstance(error, ServerError)
    assert error.message == "<html>Bad Gateway</html>"
    assert error_from(answer(500)).message == "Internal Server Error"  # the reason phrase


def test_retries_wait_for_retry_after_capped_back_off_after_no_answer_and_never_else() -> None:
    assert retry_delay(0, QueueFull("full", 2, 429)) == 2
    assert retry_delay(0, NotReady("starting", 3600, 503)) == MAX_RETRY_WAIT
    refused = unreachable(httpx.ConnectError("refused"))
    assert [retry_delay(attempt, refused) for attempt in range(6)] == [0.25, 0.5, 1, 2, 4, 4]
    assert [backoff(attempt) for attempt in range(3)] == [0.25, 0.5, 1]
    for error in (InputRejected("bad", "x"), NotFound("gone"), Conflict("ended"), ServerError("boom", 500)):
        assert retry_delay(0, error) is None


def test_no_answer_is_a_client_error_that_keeps_httpx_error_as_its_cause() -> None:
    cause = httpx.ReadTimeout("timed out")
    error = unreachable(cause)
    assert isinstance(error, ServerUnreachable)
    assert isinstance(error, ClientError)
    assert error.__cause__ is cause
    assert "ReadTimeout: timed out" in error.message


def test_events_decode_to_jobs_and_progress_and_unknown_kinds_are_skipped() -> None:
    job = decode_event("state", msgspec.json.encode({**JOB, "a_field_from_a_newer_server": 1}).decode())
    assert isinstance(job, Job)
    assert (job.id, job.state, job.step, job.done) == (JOB["id"], "running", 2, False)
    assert decode_event("progress", '{"step": 3, "total": 10}') == Progress(3, 10)
    assert decode_event("progress", '{"step": 3, "total": null}') == Progress(3, None)
    assert decode_event("preview", '{"image": "..."}') is None


def test_a_job_is_done_in_every_terminal_state_only() -> None:
    states = {state: Job(**{**JOB, "state": state}).done for state in ("queued", "running", "succeeded", "failed")}
    assert states == {"queued": False, "running": False, "succeeded": True, "failed": True}
    assert Job(**{**JOB, "state": "cancelled"}).done


def test_job_failed_says_which_job_ended_how_and_why() -> None:
    job = Job(**{**JOB, "state": "failed", "error": "output too large"})
    error = JobFailed(job)
    assert error.job is job
    assert str(error) == f"job {job.id} failed: output too large"
    assert isinstance(JobCancelled(Job(**{**JOB, "state": "cancelled"})), JobFailed)


def test_result_saves_to_a_file_or_names_it_after_the_job_in_a_directory(tmp_path: Path) -> None:
    result = Result(Job(**{**JOB, "state": "succeeded", "file_type": "png"}), b"\x89PNG...", "image/png")
    assert result.save(tmp_path / "cat.png") == tmp_path / "cat.png"
    assert (tmp_path / "cat.png").read_bytes() == b"\x89PNG..."
    named = result.save(tmp_path)
    assert named == tmp_path / f"{JOB['id']}.png"
    assert named.read_bytes() == b"\x89PNG..."


# ---- adapters: the loras field ------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        {"a": 0.8, "b": -0.5},
        [("a", 0.8), ("b", -0.5)],
        [["a", 0.8], ["b", -0.5]],  # as JSON has pairs (-p loras='[["a", 0.8], ...]')
        [{"name": "a", "scale": 0.8}, {"name": "b", "scale": -0.5}],
        [AppliedLora("a", 0.8), AppliedLora("b", -0.5)],  # a job's own: loras=job.loras
    ],
)
def test_loras_are_sent_as_the_server_takes_them(given: Any) -> None:
    expected = [{"name": "a", "scale": 0.8}, {"name": "b", "scale": -0.5}]
    assert job_inputs({"prompt": "p"}, {"loras": given}) == {"prompt": "p", "loras": expected}
    assert msgspec.json.encode(job_inputs({"loras": given}, {})) == msgspec.json.encode({"loras": expected})


def test_loras_of_another_shape_go_as_they_are_for_the_server_to_refuse() -> None:
    assert job_inputs(None, {"loras": "a"}) == {"loras": "a"}
    assert job_inputs(None, {"loras": [{"name": "a"}, 7]}) == {"loras": [{"name": "a"}, 7]}
    assert job_inputs(None, {"prompt": "p"}) == {"prompt": "p"}
