"""A Python client for para-attn-server's job API: ``Client`` (blocking) and ``AsyncClient``,
over httpx, following progress as Server-Sent Events (httpx-sse).

::

    from para_attn_client import Client

    with Client("http://127.0.0.1:5000") as client:
        result = client.generate(prompt="a cat in a hat", seed=7)
        result.save("cat.png")

The API key is ``api_key=`` or else ``$PARA_ATTN_SERVER_API_KEY``. Each job gets an id
chosen here and is submitted with ``PUT /v1/jobs/{id}``, so a request repeated after a lost
answer never runs a job twice; every request is repeated up to ``retries`` times when the
connection fails or the server answers 429/503 (after its ``Retry-After``). An interrupted
``generate`` (Ctrl-C, or its task cancelled) cancels its job on the server before it
re-raises. Errors are ``ClientError`` subclasses (see ``types``).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import aconnect_sse, connect_sse

from para_attn_client.media import has_media, media_inputs
from para_attn_client.types import (
    ClientError,
    Conflict,
    Event,
    InputRejected,
    Job,
    JobCancelled,
    JobFailed,
    JobPage,
    NotFound,
    NotReady,
    Progress,
    QueueFull,
    Result,
    RetryLater,
    ServerError,
    ServerUnreachable,
    Unauthorized,
    backoff,
    decode,
    decode_event,
    error_from,
    job_inputs,
    retry_delay,
    unreachable,
)
from para_attn_client.wire import Adapter, AdapterList

__all__ = [
    "API_KEY_ENV", "Adapter", "AsyncClient", "Client", "ClientError", "Conflict", "Event", "InputRejected", "Job",
    "JobCancelled", "JobFailed", "JobPage", "NotFound", "NotReady", "Progress", "QueueFull", "Result", "RetryLater",
    "ServerError", "ServerUnreachable", "Unauthorized",
]  # fmt: skip

API_KEY_ENV = "PARA_ATTN_SERVER_API_KEY"  # the server's own variable
LORAS_PATH = "/v1/loras"
OnEvent = Callable[[Event], object]


def _path(job_id: str, tail: str = "") -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}{tail}"


class _Settings:
    """What the two clients share: the key, the timeouts, the retries, the end of a job."""

    def __init__(self, api_key: str | None, timeout: float, retries: int) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.retries = retries

    def _timeout(self, wait: float | None) -> httpx.Timeout:
        """The request timeout, its read timeout stretched by a server-side ``wait``
        (None: no read timeout, for event streams)."""
        return httpx.Timeout(self.timeout, read=None if wait is None else self.timeout + wait)

    @staticmethod
    def _list_params(state: str | None, limit: int, after: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
        if after is not None:
            params["after"] = after
        return params

    @staticmethod
    def _raise_unless_succeeded(job: Job) -> None:
        if job.state == "cancelled":
            raise JobCancelled(job)
        if job.state != "succeeded":
            raise JobFailed(job)


class Client(_Settings):
    """A blocking client of one server. Use it as a context manager, or call ``close``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, timeout, retries)
        self.http = httpx.Client(base_url=base_url, headers=self.headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, url: str, *, retries: int | None = None, **options: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                try:
                    response = self.http.request(method, url, **options)
                except httpx.TransportError as exc:
                    raise unreachable(exc) from exc
                if response.is_error:
                    raise error_from(response)
                return response
            except ClientError as exc:
                delay = retry_delay(attempt, exc)
                if delay is None or attempt >= (self.retries if retries is None else retries):
                    raise
            time.sleep(delay)
            attempt += 1

    def submit(
        self, inputs: Mapping[str, Any] | None = None, /, *, job_id: str | None = None, wait: float = 0, **fields: Any
    ) -> Job:
        """Queue a job with ``inputs`` and/or keyword fields (a field named like one of
        these options goes in ``inputs``). ``job_id``: your own UUID (default: a new one);
        the same id and inputs again return the same job. ``wait``: seconds the server
        may hold the answer until the job ends. A picture or video field's value may be a
        ``Path``, bytes, a binary file or a PIL image (or a list of them): it is sent as a
        ``data:`` URL (``para_attn_client.media``); a string (a URL, ``job:<id>``) as it is.
        ``loras``: the adapters to apply, as ``{"a": 0.8}``, ``[("a", 0.8)]`` or the server's
        ``[{"name": "a", "scale": 0.8}]`` (``types.lora_list``)."""
        body = media_inputs(job_inputs(inputs, fields))
        url = _path(job_id or str(uuid.uuid4()))
        response = self._request("PUT", url, json=body, params={"wait": wait}, timeout=self._timeout(wait))
        return decode(response, Job)

    def get(self, job_id: str, *, wait: float = 0) -> Job:
        """The job; with ``wait``, once it ended or after that many seconds."""
        response = self._request("GET", _path(job_id), params={"wait": wait}, timeout=self._timeout(wait))
        return decode(response, Job)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job (at once) or a running one (at its next step; the answer may
        still say running). Raises ``Conflict`` if it already ended."""
        return decode(self._request("POST", _path(job_id, "/cancel")), Job)

    def output(self, job_id: str, *, wait: float = 0) -> tuple[bytes, str]:
        """The output of a succeeded job and its content type."""
        response = self._request("GET", _path(job_id, "/output"), params={"wait": wait}, timeout=self._timeout(wait))
        return response.content, response.headers.get("content-type", "application/octet-stream")

    def events(self, job_id: str) -> Iterator[Event]:
        """The job as it is, then a ``Job`` at each change of state and ``Progress`` at
        each step, until it ends. Kinds of event this client does not know are skipped."""
        try:
            with connect_sse(self.http, "GET", _path(job_id, "/events"), timeout=self._timeout(None)) as source:
                if source.response.is_error:
                    source.response.read()
                    raise error_from(source.response)
                for sse in source.iter_sse():
                    if (event := decode_event(sse.event, sse.data)) is not None:
                        yield event
        except httpx.TransportError as exc:
            raise unreachable(exc) from exc

    def generate(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        job_id: str | None = None,
        on_event: OnEvent | None = None,
        **fields: Any,
    ) -> Result:
        """Run a job to its end and return it with its output. ``on_event`` sees each
        event (``Job`` or ``Progress``) as it comes. Raises ``JobFailed`` (or
        ``JobCancelled``) if the job ends without an output; cancels the job when
        interrupted."""
        job_id = job_id or str(uuid.uuid4())
        try:
            job = self._follow(self.submit(inputs, job_id=job_id, **fields), on_event)
            self._raise_unless_succeeded(job)
            return Result(job, *self.output(job.id))
        except KeyboardInterrupt:
            with contextlib.suppress(ClientError):  # it may not exist yet, or have ended
                self._request("POST", _path(job_id, "/cancel"), retries=0, timeout=5)
            raise

    def _follow(self, job: Job, on_event: OnEvent | None) -> Job:
        """Follow the job's events until it ends, reconnecting when the stream breaks."""
        if job.done and on_event is not None:
            on_event(job)  # it ended before its answer came: there is no stream to follow
        attempt = 0
        while not job.done:
            try:
                for seen, event in enumerate(self.events(job.id)):
                    if seen:
                        attempt = 0  # the stream works again
                    if isinstance(event, Job):
                        job = event
                    if on_event is not None:
                        on_event(event)
            except ServerUnreachable:
                if attempt >= self.retries:
                    raise
            if not job.done:
                time.sleep(backoff(attempt))
                attempt += 1
        return job

    def list(self, *, state: str | None = None, limit: int = 20, after: str | None = None) -> JobPage:
        """A page of jobs, newest first: only those in ``state`` when given, older than the
        job ``after`` names (a page's ``last_id``)."""
        response = self._request("GET", "/v1/jobs", params=self._list_params(state, limit, after))
        return decode(response, JobPage)

    def loras(self) -> builtins.list[Adapter]:
        """The adapters (LoRA) a job may apply by name (``loras=``); [] where the model applies none."""
        with contextlib.suppress(NotFound):  # no /v1/loras: a predictor without adapters
            return decode(self._request("GET", LORAS_PATH), AdapterList).data
        return []


class AsyncClient(_Settings):
    """The same client for asyncio: every method is a coroutine, ``events`` an async
    iterator. Use it as an async context manager, or await ``aclose``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, timeout, retries)
        self.http = httpx.AsyncClient(base_url=base_url, headers=self.headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, url: str, *, retries: int | None = None, **options: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                try:
                    response = await self.http.request(method, url, **options)
                except httpx.TransportError as exc:
                    raise unreachable(exc) from exc
                if response.is_error:
                    raise error_from(response)
                return response
            except ClientError as exc:
                delay = retry_delay(attempt, exc)
                if delay is None or attempt >= (self.retries if retries is None else retries):
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def submit(
        self, inputs: Mapping[str, Any] | None = None, /, *, job_id: str | None = None, wait: float = 0, **fields: Any
    ) -> Job:
        """See ``Client.submit``: files are read and images encoded in a thread."""
        body = job_inputs(inputs, fields)
        if has_media(body):
            body = await asyncio.to_thread(media_inputs, body)
        url = _path(job_id or str(uuid.uuid4()))
        response = await self._request("PUT", url, json=body, params={"wait": wait}, timeout=self._timeout(wait))
        return decode(response, Job)

    async def get(self, job_id: str, *, wait: float = 0) -> Job:
        """See ``Client.get``."""
        response = await self._request("GET", _path(job_id), params={"wait": wait}, timeout=self._timeout(wait))
        return decode(response, Job)

    async def cancel(self, job_id: str) -> Job:
        """See ``Client.cancel``."""
        return decode(await self._request("POST", _path(job_id, "/cancel")), Job)

    async def output(self, job_id: str, *, wait: float = 0) -> tuple[bytes, str]:
        """See ``Client.output``."""
        url = _path(job_id, "/output")
        response = await self._request("GET", url, params={"wait": wait}, timeout=self._timeout(wait))
        return response.content, response.headers.get("content-type", "application/octet-stream")

    async def events(self, job_id: str) -> AsyncIterator[Event]:
        """See ``Client.events``."""
        try:
            async with aconnect_sse(self.http, "GET", _path(job_id, "/events"), timeout=self._timeout(None)) as source:
                if source.response.is_error:
                    await source.response.aread()
                    raise error_from(source.response)
                async for sse in source.aiter_sse():
                    if (event := decode_event(sse.event, sse.data)) is not None:
                        yield event
        except httpx.TransportError as exc:
            raise unreachable(exc) from exc

    async def generate(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        job_id: str | None = None,
        on_event: OnEvent | None = None,
        **fields: Any,
    ) -> Result:
        """See ``Client.generate``; cancelling its task cancels the job on the server."""
        job_id = job_id or str(uuid.uuid4())
        try:
            job = await self._follow(await self.submit(inputs, job_id=job_id, **fields), on_event)
            self._raise_unless_succeeded(job)
            return Result(job, *await self.output(job.id))
        except (KeyboardInterrupt, asyncio.CancelledError):
            with contextlib.suppress(ClientError):
                await self._request("POST", _path(job_id, "/cancel"), retries=0, timeout=5)
            raise

    async def _follow(self, job: Job, on_event: OnEvent | None) -> Job:
        if job.done and on_event is not None:
            on_event(job)  # it ended before its answer came: there is no stream to follow
        attempt = 0
        while not job.done:
            try:
                seen = 0
                async for event in self.events(job.id):
                    if seen:
                        attempt = 0
                    seen += 1
                    if isinstance(event, Job):
                        job = event
                    if on_event is not None:
                        on_event(event)
            except ServerUnreachable:
                if attempt >= self.retries:
                    raise
            if not job.done:
                await asyncio.sleep(backoff(attempt))
                attempt += 1
        return job

    async def list(self, *, state: str | None = None, limit: int = 20, after: str | None = None) -> JobPage:
        """See ``Client.list``."""
        response = await self._request("GET", "/v1/jobs", params=self._list_params(state, limit, after))
        return decode(response, JobPage)

    async def loras(self) -> builtins.list[Adapter]:
        """See ``Client.loras``."""
        with contextlib.suppress(NotFound):
            return decode(await self._request("GET", LORAS_PATH), AdapterList).data
        return []
