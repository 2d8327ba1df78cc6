"""rank.StepDecider: the step hook's decision and its progress reports (one rank, no
collective: the broadcast itself is covered by the integration suite)."""

from __future__ import annotations

from typing import Any

from para_attn_server.protocol import Progress
from para_attn_server.rank.decisions import DecisionChannel
from para_attn_server.rank.worker import StepDecider


class FakeLink:
    def __init__(self) -> None:
        self.cancelled: set[str] = set()
        self.sent: list[Any] = []

    def poll_cancels(self) -> None:
        pass

    def send(self, message: Any) -> None:
        self.sent.append(message)


def decider(link: FakeLink) -> StepDecider:
    return StepDecider("job-1", 0, link, DecisionChannel())  # type: ignore[arg-type]


def test_fast_steps_are_reported_sparingly_but_always_the_last() -> None:
    link = FakeLink()
    decide = decider(link)

    stops = [decide(step, 1000) for step in range(1, 1001)]

    assert not any(stops)
    steps = [message.step for message in link.sent]
    assert steps[0] == 1
    assert steps[-1] == 1000
    assert len(steps) < 1000  # steps faster than PROGRESS_INTERVAL are coalesced


def test_the_last_step_of_an_unknown_total_is_reported_at_the_end() -> None:
    link = FakeLink()
    decide = decider(link)
    for step in range(1, 501):
        decide(step, None)

    decide.report_last()

    assert link.sent[-1] == Progress("job-1", 500, None)


def test_nothing_is_reported_twice_at_the_end() -> None:
    link = FakeLink()
    decide = decider(link)
    decide(1, 1)

    decide.report_last()

    assert link.sent == [Progress("job-1", 1, 1)]


def test_a_cancel_that_arrived_stops_at_this_step() -> None:
    link = FakeLink()
    decide = decider(link)
    assert not decide(1, 4)

    link.cancelled.add("job-1")

    assert decide(2, 4)
