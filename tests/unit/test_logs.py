"""logs: the text and JSON formats, what is routed through them (libraries' own handlers,
``warnings``), what ranks other than the first leave out, and the job lines over a real
job service (its worker group played by the test)."""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from para_attn_server import logs
from para_attn_server.engine.service import JobService
from para_attn_server.logs import configure_logging, log_jobs, rank_warnings
from para_attn_server.records import Attempt, JobRecord, JobState
from para_attn_server.workers.outcome import JobOutcome
from tests.unit.fakes import FakeGroup, deadline


class Output(io.StringIO):
    """What the process's handler wrote, line by line."""

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def output() -> Iterator[Output]:
    """A stream for ``configure_logging``; the logging of the test process is put back after.
    The tests force it: pytest's own handlers are on the root logger while a test runs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    showwarning, configured = warnings.showwarning, dict(logs._configured)
    try:
        yield Output()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.setLoggerClass(logging.Logger)
        warnings.showwarning = showwarning
        logs._configured.update(configured)


def rank_json(output: Output) -> None:
    configure_logging("INFO", "json", role="rank", context={"group": 1, "rank": 2}, stream=output, force=True)


# ---- formats ----------------------------------------------------------------------------------


def test_a_json_line_has_the_time_in_utc_the_level_logger_message_context_and_extras(output: Output) -> None:
    rank_json(output)

    logging.getLogger("tests.logs.fields").warning("job %s: %d steps", "j1", 4, extra={"job_id": "j1"})

    (line,) = output.records()
    assert line["time"].endswith("Z")
    when = datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60
    assert {key: line[key] for key in ("level", "logger", "message", "role", "group", "rank", "job_id")} == {
        "level": "WARNING", "logger": "tests.logs.fields", "message": "job j1: 4 steps", "role": "rank",
        "group": 1, "rank": 2, "job_id": "j1",
    }  # fmt: skip
    assert "exc_info" not in line


def test_an_exception_is_one_json_line_with_its_trace_as_a_string(output: Output) -> None:
    rank_json(output)

    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("tests.logs.exc").exception("it failed:\nwith detail")

    (line,) = output.records()  # one line, however many the message and the trace have
    assert line["level"] == "ERROR"
    assert line["message"] == "it failed:\nwith detail"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom\nsecond line" in line["exc_info"]


def test_an_extra_json_cannot_hold_is_written_as_text(output: Output) -> None:
    rank_json(output)

    logging.getLogger("tests.logs.odd").info("odd", extra={"where": {1, 2}.__class__, "data": b"x"})

    (line,) = output.records()
    assert line["where"] == "<class 'set'>"
    assert line["data"] == "b'x'"


def test_the_text_format_is_time_logger_level_message_with_a_ranks_place(output: Output) -> None:
    configure_logging("DEBUG", "text", role="rank", context={"group": 0, "rank": 1}, stream=output, force=True)

    logging.getLogger("tests.logs.text").debug("hello")

    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} tests.logs.text \[group 0 rank 1\] DEBUG hello",
        output.getvalue().strip(),
    )


def test_the_level_is_applied(output: Output) -> None:
    configure_logging("warning", "json", stream=output, force=True)

    logging.getLogger("tests.logs.level").info("not shown")
    logging.getLogger("tests.logs.level").warning("shown")

    assert [line["message"] for line in output.records()] == ["shown"]
    assert output.records()[0]["role"] == "server"


def test_an_applications_own_handlers_are_kept_and_get_every_line(output: Output) -> None:
    application = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(application))  # as a program running the server may
    configure_logging("INFO", "json", stream=output)
    library = logging.getLogger("tests.logs.app_library")
    library.addHandler(logging.StreamHandler(sys.stderr))
    library.propagate = False

    library.warning("to the application's handler")

    assert output.getvalue() == ""
    assert application.getvalue() == "to the application's handler\n"


def test_force_replaces_an_applications_handlers(output: Output) -> None:
    application = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(application))
    configure_logging("INFO", "json", stream=output, force=True)

    logging.getLogger("tests.logs.forced").warning("ours")

    assert application.getvalue() == ""
    assert [line["message"] for line in output.records()] == ["ours"]


def test_a_second_call_replaces_the_first(output: Output) -> None:
    first = Output()
    configure_logging("INFO", "json", stream=first, force=True)
    configure_logging("INFO", "text", stream=output)  # finds only the first's handler

    logging.getLogger("tests.logs.again").warning("once")

    assert first.getvalue() == ""
    assert output.getvalue().strip().endswith("tests.logs.again WARNING once")


def test_an_unknown_format_is_refused_naming_the_flag(output: Output) -> None:
    with pytest.raises(ValueError, match=r"--log-format must be one of text, json, not 'xml'"):
        configure_logging("INFO", "xml", stream=output)


def test_the_format_is_what_the_ranks_started_here_get(output: Output) -> None:
    from para_attn_server.workers.executor import RankSpec

    configure_logging("INFO", "json", stream=output, force=True)
    spec = RankSpec(world_size=1, control_host="127.0.0.1", control_port=1, token="", generation=0)

    assert logs.current_format() == spec.log_format == "json"
    assert RankSpec.from_env(spec.to_env()).log_format == "json"


# ---- what goes through the one handler ----------------------------------------------------------


def test_a_librarys_own_stderr_handler_made_before_or_after_is_replaced_by_ours(output: Output) -> None:
    before = logging.getLogger("tests.logs.library_before")  # as torch does at import
    before.addHandler(logging.StreamHandler(sys.stderr))
    before.propagate = False
    rank_json(output)
    after = logging.getLogger("tests.logs.library_after")  # as diffusers and transformers do at import
    after.addHandler(logging.StreamHandler(sys.stderr))
    after.propagate = False

    before.warning("from before")
    after.warning("from after")

    assert [(line["logger"], line["message"], line["rank"]) for line in output.records()] == [
        ("tests.logs.library_before", "from before", 2),
        ("tests.logs.library_after", "from after", 2),
    ]
    assert before.handlers == after.handlers == []


def test_a_handler_of_a_librarys_own_elsewhere_is_kept(output: Output, tmp_path: Path) -> None:
    rank_json(output)
    library = logging.getLogger("tests.logs.to_file")
    to_file = logging.FileHandler(tmp_path / "library.log")
    library.addHandler(to_file)
    library.propagate = False

    library.warning("to its file only")

    to_file.close()
    assert output.getvalue() == ""
    assert "to its file only" in (tmp_path / "library.log").read_text()


def test_uvicorn_and_litestar_log_through_the_one_handler(output: Output) -> None:
    logging.getLogger("uvicorn").addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("uvicorn").propagate = False
    rank_json(output)

    logging.getLogger("uvicorn.error").warning("from uvicorn")
    logging.getLogger("litestar").warning("from litestar")

    assert [line["message"] for line in output.records()] == ["from uvicorn", "from litestar"]


def test_litestar_keeps_the_process_handler_and_logs_through_it(output: Output) -> None:
    from litestar import Litestar

    from para_attn_server.http import SharedLogging

    rank_json(output)
    handlers = list(logging.getLogger().handlers)
    app = Litestar([], logging_config=SharedLogging())

    app.logger.warning("from litestar")  # type: ignore[union-attr]

    assert logging.getLogger().handlers == handlers
    assert [(line["logger"], line["message"]) for line in output.records()] == [("litestar", "from litestar")]


@pytest.mark.parametrize(("level", "access"), [("INFO", logging.WARNING), ("DEBUG", logging.DEBUG)])
def test_uvicorn_gets_no_handler_of_its_own_and_logs_requests_at_debug(output: Output, level: str, access: int) -> None:
    from para_attn_server.http.listener import config
    from para_attn_server.settings import HttpSettings

    configure_logging(level, "json", stream=output, force=True)
    made = config(object(), HttpSettings(), level)

    assert made.log_config is None
    assert logging.getLogger("uvicorn.access").level == access
    assert logging.getLogger("uvicorn.error").handlers == logging.getLogger("uvicorn.access").handlers == []


def test_a_python_warning_is_one_line_of_py_warnings(output: Output) -> None:
    rank_json(output)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("use the new thing", DeprecationWarning, stacklevel=1)

    (line,) = output.records()
    assert line["logger"] == "py.warnings"
    assert line["level"] == "WARNING"
    assert re.fullmatch(r".*test_logs\.py:\d+: DeprecationWarning: use the new thing", line["message"])


def test_ranks_but_the_first_leave_library_warnings_to_it_and_keep_ours_and_errors(output: Output) -> None:
    rank_json(output)
    rank_warnings(first=False)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated", FutureWarning, stacklevel=1)
    logging.getLogger("diffusers.pipelines").warning("the same on every rank")
    logging.getLogger("para_attn.primitives").warning("ParaAttention's, not ours")
    logging.getLogger("diffusers.pipelines").error("an error of this rank")
    logging.getLogger("para_attn_server.rank").warning("ours")
    logging.getLogger("para_attn_predictors.flux").info("our predictor's")

    assert [line["message"] for line in output.records()] == ["an error of this rank", "ours", "our predictor's"]


def test_the_first_rank_shows_library_warnings(output: Output) -> None:
    rank_json(output)
    rank_warnings(first=True)

    logging.getLogger("diffusers.pipelines").warning("once, here")

    assert [line["message"] for line in output.records()] == ["once, here"]


# ---- job lines --------------------------------------------------------------------------------


def lines_of(output: Output, job_id: str) -> list[dict[str, Any]]:
    return [line for line in output.records() if line.get("job_id") == job_id]


@pytest.mark.anyio
async def test_a_job_has_a_line_when_accepted_started_and_ended_with_its_id(
    output: Output, service: JobService, group: FakeGroup
) -> None:
    configure_logging("INFO", "json", stream=output, force=True)
    stop = log_jobs(service)
    job, _ = service.submit({"prompt": "a"})
    run = await group.next_run()
    run.finish(JobOutcome("failed", error="rank 1: RuntimeError: out of memory"))
    await deadline(job.done.wait())
    stop()

    accepted, started, ended = lines_of(output, job.id)
    assert accepted["message"] == f"job {job.id} accepted"
    assert started["message"] == f"job {job.id} started on group 0 (host fake-host)"
    assert (started["group"], started["host"]) == (0, "fake-host")
    assert re.fullmatch(rf"job {job.id} failed in \d+\.\d\d s: rank 1: RuntimeError: out of memory", ended["message"])
    assert (ended["level"], ended["state"]) == ("WARNING", "failed")
    assert ended["seconds"] >= 0
    assert {line["logger"] for line in (accepted, started, ended)} == {"para_attn_server.jobs"}


@pytest.mark.anyio
async def test_no_job_lines_once_stopped(output: Output, service: JobService) -> None:
    configure_logging("INFO", "json", stream=output, force=True)
    log_jobs(service)()  # stopped at once

    job, _ = service.submit({"prompt": "a"})

    assert lines_of(output, job.id) == []


def record(**changes: Any) -> JobRecord:
    return JobRecord(id="j1", inputs={}, fingerprint=b"", created_at=100.0).evolve(**changes)


def test_a_job_that_never_ran_ends_in_the_seconds_it_waited(output: Output) -> None:
    configure_logging("INFO", "json", stream=output, force=True)

    logs.job_line("state", record(state=JobState.EXPIRED, finished_at=130.0, error="not started in 30 s"))
    logs.job_line("state", record(state=JobState.CANCELLED, finished_at=101.5))

    expired, cancelled = output.records()
    assert (expired["message"], expired["seconds"], expired["level"]) == (
        "job j1 expired in 30.00 s: not started in 30 s", 30.0, "WARNING"
    )  # fmt: skip
    assert (cancelled["message"], cancelled["level"]) == ("job j1 cancelled in 1.50 s", "INFO")


def test_a_succeeded_job_ends_in_the_seconds_it_ran(output: Output) -> None:
    configure_logging("INFO", "json", stream=output, force=True)

    logs.job_line("state", record(state=JobState.SUCCEEDED, started_at=110.0, finished_at=112.25, group=1, host="h"))

    (line,) = output.records()
    assert (line["message"], line["state"], line["seconds"], line["level"]) == (
        "job j1 succeeded in 2.25 s", "succeeded", 2.25, "INFO"
    )  # fmt: skip


def test_a_job_queued_again_and_progress_have_no_line(output: Output) -> None:
    configure_logging("INFO", "json", stream=output, force=True)
    cut_short = Attempt(0, "h", 101.0, 102.0, "rank 1 (pid 4) killed by SIGKILL")

    logs.job_line("state", record(state=JobState.QUEUED, attempts=(cut_short,)))  # the service says why
    logs.job_line("progress", record(state=JobState.RUNNING, step=1, total=4))
    logs.job_line("requeued", record(state=JobState.QUEUED, attempts=(cut_short,)))

    assert output.getvalue() == ""
