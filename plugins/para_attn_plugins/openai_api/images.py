"""``POST /v1/images/generations``: ``n`` jobs of the served image predictor, submitted at
once (they queue), answered when all succeeded as OpenAI's ``ImagesResponse``.

A job that fails ends the request at once: the others are cancelled and the answer is a
500 with ``x-should-retry: false``, so the SDK (which retries a 500 twice by default) does
not run a failing generation three times. A client that goes away cancels its jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.params import JSONBody

from para_attn_server.plugin import Job, JobsDependency, JobState, spec

from .context import Api
from .errors import OpenAIError, responses
from .mapping import image_inputs, size_of, split
from .schemas import ImageData, ImageRequest, ImagesResponse

log = logging.getLogger("para_attn_plugins.openai_api")
NO_RETRY = {"x-should-retry": "false"}
CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, the log does


class ImagesController(Controller):
    path = "/images"
    tags = ("OpenAI",)

    @post(
        "/generations",
        status_code=200,
        summary="Generate images (OpenAI's images API)",
        description="n jobs (seeds seed, seed+1, ...), answered once all succeeded. Fields of POST /v1/jobs "
        "(seed, num_inference_steps, ...) are accepted beside OpenAI's.",
        responses={200: spec(ImagesResponse, "The images"), **responses(400, 404, 410, 413, 429, 500, 503)},
    )
    async def generate_images(
        self, request: Request[Any, Any, Any], jobs: JobsDependency, api: Api, data: JSONBody[ImageRequest]
    ) -> ImagesResponse:
        # ``data``: Litestar checks and documents OpenAI's fields; the body is read again
        # whole, with the predictor's fields beside them.
        if not api.fields.makes_images:
            why = "makes videos: use /v1/videos" if api.fields.makes_videos else "takes no prompt"
            raise OpenAIError(404, f"the served model ({api.served}) {why}")
        request_fields, extras = split(msgspec.json.decode(await request.body()), ImageRequest, api.fields)
        planned = image_inputs(request_fields, extras, api.fields, api.served, api.settings.max_n, api.rng)
        inputs = [api.checked(each, request_fields.size) for each in planned]
        submitted: list[Job] = []
        try:
            for each in inputs:
                submitted.append((await jobs.accept(each))[0])
            ids = " ".join(job.id for job in submitted)
            log.info("POST /v1/images/generations: %d job(s): %s", len(submitted), ids)
            await wait_all(submitted, request)
        finally:
            for job in submitted:  # the rest, when one failed or the client went away; no-op for ended jobs
                jobs.cancel(job.id)
        if request_fields.response_format == "url":
            base = str(request.base_url).rstrip("/")
            items = [ImageData(url=f"{base}/v1/jobs/{job.id}/output") for job in submitted]
        else:
            items = [ImageData(b64_json=await api.output_base64(job)) for job in submitted]
        first = submitted[0].record
        return ImagesResponse(int(time.time()), items, first.file_type, size_of(first.inputs))


async def wait_all(jobs: list[Job], request: Request[Any, Any, Any]) -> None:
    """Until every job succeeded. Raises ``OpenAIError`` (500) as soon as one ended
    otherwise, and (499) when the client disconnects first."""
    gone: asyncio.Future[Any] = asyncio.ensure_future(disconnected(request))
    waits: dict[asyncio.Future[Any], Job] = {asyncio.ensure_future(job.done.wait()): job for job in jobs}
    pending = set(waits)
    try:
        while pending:
            done, pending = await asyncio.wait(pending | {gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                log.info("client of %d image job(s) went away: cancelling them", len(jobs))
                raise OpenAIError(CLIENT_GONE, "the client disconnected")
            pending.discard(gone)
            for finished in done:
                job = waits[finished]
                if job.state is not JobState.SUCCEEDED:
                    reason = f": {job.record.error}" if job.record.error else ""
                    message = f"image {jobs.index(job) + 1} of {len(jobs)} (job {job.id}) {job.state.value}{reason}"
                    raise OpenAIError(500, message, code="job_failed", headers=NO_RETRY)
    finally:
        gone.cancel()
        for wait in waits:
            wait.cancel()


async def disconnected(request: Request[Any, Any, Any]) -> None:
    """Returns when the client closes the connection. The body has been read, so the next
    ASGI message is the disconnect (or, once the answer is sent, its end)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
