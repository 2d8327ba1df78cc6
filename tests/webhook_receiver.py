"""A real webhook receiver for the tests: pytest-httpserver (a werkzeug server in a thread)
that checks every delivery's signature with ``standardwebhooks`` as a receiver would."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Request, Response

SECRET = "whsec_" + base64.b64encode(b"para-attn-server test key, 32 B").decode()
PATH = "/hooks/jobs"


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    job: dict[str, Any]  # the verified payload
    at: float  # time.monotonic() when it arrived
    answered: int  # the status the receiver answered

    @property
    def event(self) -> str:
        """Which webhook event the job view is: start, progress or completed."""
        if self.job["state"] in ("succeeded", "failed", "cancelled"):
            return "completed"
        return "progress" if self.job.get("step") is not None else "start"


class Receiver:
    """Answers every POST to ``PATH``: first with the statuses in ``answers`` (a 5xx asks
    for a retry), then 200. ``hold`` (when set) keeps each answer until it is set."""

    def __init__(self, server: HTTPServer, secret: str = SECRET) -> None:
        self.server = server
        self.verifier = Webhook(secret)
        self.deliveries: list[Delivery] = []
        self.refused: list[str] = []  # why a request's signature did not verify
        self.answers: list[int] = []
        self.hold: threading.Event | None = None
        self._changed = threading.Condition()
        server.clear()
        server.clear_all_handlers()
        server.expect_request(PATH, method="POST").respond_with_handler(self._handle)

    @property
    def url(self) -> str:
        return self.server.url_for(PATH)

    @property
    def host(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    def _handle(self, request: Request) -> Response:
        body = request.get_data()
        headers = dict(request.headers.items())
        try:
            job = self.verifier.verify(body, headers)
        except Exception as exc:
            with self._changed:
                self.refused.append(repr(exc))
                self._changed.notify_all()
            return Response("bad signature", status=400)
        if self.hold is not None:
            self.hold.wait(30)
        with self._changed:
            status = self.answers.pop(0) if self.answers else 200
            self.deliveries.append(Delivery(headers, body, job, time.monotonic(), status))
            self._changed.notify_all()
        return Response("", status=status)

    def wait(self, count: int, timeout: float = 30) -> list[Delivery]:
        """The first ``count`` deliveries, once they came; fails after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.deliveries) >= count or self.refused, timeout):
                raise AssertionError(f"{len(self.deliveries)} of {count} deliveries came: {self.deliveries}")
            assert not self.refused, self.refused
            return list(self.deliveries[:count])

    def of_job(self, job_id: str, timeout: float = 60) -> list[Delivery]:
        """One job's deliveries, once its ``completed`` one came."""

        def done() -> bool:
            return bool(self.refused) or any(d.job["id"] == job_id and d.event == "completed" for d in self.deliveries)

        with self._changed:
            if not self._changed.wait_for(done, timeout):
                raise AssertionError(f"no completed delivery of job {job_id} came: {self.deliveries}")
            assert not self.refused, self.refused
            return [d for d in self.deliveries if d.job["id"] == job_id]

    def accepted(self, job_id: str) -> list[Delivery]:
        """The deliveries of one job that the receiver answered 2xx."""
        with self._changed:
            return [d for d in self.deliveries if d.job["id"] == job_id and d.answered < 300]


@contextmanager
def receiver_server() -> Iterator[HTTPServer]:
    """A receiving server on a free loopback port, threaded (a held answer blocks no other);
    give it to ``Receiver`` for each test."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()
