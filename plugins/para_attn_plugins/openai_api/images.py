"""``POST /v1/images/generations`` and ``POST /v1/images/edits``: ``n`` jobs of the image
predictor the request's ``model`` chooses (left out: the first served model), submitted at
once (they queue), answered when all succeeded as OpenAI's ``ImagesResponse``. An edit is
a multipart form (as the SDK sends it; JSON works too): its ``image`` part(s) and ``mask``
go to the predictor's picture fields (``mapping.edit_media``).

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
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, RequestBody, Schema
from litestar.params import JSONBody

from para_attn_server.plugin import Doc, Job, Jobs, JobsDependency, JobState, spec

from .context import Api, Chosen, OpenAIContext
from .errors import OpenAIError, responses
from .forms import request_fields
from .mapping import edit_inputs, image_inputs, openai_params, refuse_files, size_of, split, take_images
from .schemas import MODEL, ImageData, ImageEditRequest, ImageRequest, ImagesResponse

log = logging.getLogger("para_attn_plugins.openai_api")
NO_RETRY = {"x-should-retry": "false"}
_TEXT = Schema(type=OpenAPIType.STRING)
_FILE = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
_EDIT_FIELDS = Schema(
    type=OpenAPIType.OBJECT,
    required=["image", "prompt"],
    properties={
        "image": Schema(
            one_of=[_FILE, Schema(type=OpenAPIType.ARRAY, items=_FILE)],
            description="The picture (PNG, JPEG, WebP); several as image[] for a predictor that takes a list",
        ),
        "mask": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description="For the mask_image field"),
        "prompt": _TEXT,
        "model": Schema(type=OpenAPIType.STRING, description=MODEL),
        "n": Schema(type=OpenAPIType.INTEGER, minimum=1),
        "size": Schema(type=OpenAPIType.STRING, description='"WIDTHxHEIGHT" or "auto"'),
        "response_format": Schema(type=OpenAPIType.STRING, enum=["b64_json", "url"]),
        "output_format": Schema(type=OpenAPIType.STRING, enum=["png", "jpeg", "webp"]),
    },
    additional_properties=True,
    description="OpenAI's fields; any field of POST /v1/jobs (strength, seed, num_inference_steps, ...) beside them",
)
EDIT_BODY = RequestBody(content={"multipart/form-data": OpenAPIMediaType(schema=_EDIT_FIELDS)}, required=True)
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
        body = msgspec.json.decode(await request.body())
        model = api.choose(body.get("model"))
        _require_images(model)
        fields, extras = split(body, ImageRequest, model.fields)
        planned = image_inputs(fields, extras, model.fields, model.name, api.settings.max_n, api.rng, model.adapters)
        inputs = [api.checked(each, fields.size, model=model) for each in planned]
        return await run_images(request, jobs, api, inputs, fields.response_format, "generations")

    @post(
        "/edits",
        status_code=200,
        summary="Edit images (OpenAI's images API)",
        description="A multipart form: image (one part, or several as image[] for a predictor whose image field "
        "is a list), optional mask, prompt, n, size, response_format, ... The pictures go to the predictor's image "
        "and mask_image fields; n jobs (seeds seed, seed+1, ...), answered once all succeeded. Fields of "
        "POST /v1/jobs (strength, seed, ...) are accepted beside OpenAI's.",
        responses={200: spec(ImagesResponse, "The images"), **responses(400, 404, 410, 413, 429, 500, 503)},
        opt={"openapi": Doc(request_body=EDIT_BODY)},
    )
    async def edit_images(self, request: Request[Any, Any, Any], jobs: JobsDependency, api: Api) -> ImagesResponse:
        body, form = await request_fields(request)
        model = api.choose(body.get("model"))
        _require_images(model)
        images, mask = take_images(body), body.pop("mask", None)
        fields, extras = split(body, ImageEditRequest, model.fields, form=form)
        refuse_files(extras, model.fields)
        planned, names = edit_inputs(
            fields, images, mask, extras, model.fields, model.name, api.settings.max_n, api.rng, model.adapters
        )  # fmt: skip
        with openai_params(names):
            inputs = [api.checked(each, fields.size, form=form, model=model) for each in planned]
            return await run_images(request, jobs, api, inputs, fields.response_format, "edits")


def _require_images(model: Chosen) -> None:
    if not model.fields.makes_images:
        why = "makes videos: use /v1/videos" if model.fields.makes_videos else "takes no prompt"
        raise OpenAIError(404, f"the served model ({model.name}) {why}")


async def run_images(
    request: Request[Any, Any, Any],
    jobs: Jobs,
    api: OpenAIContext,
    inputs: list[dict[str, Any]],
    response_format: str | None,
    route: str,
) -> ImagesResponse:
    """Submit the jobs of ``inputs``, wait until all succeeded, answer their images."""
    submitted: list[Job] = []
    try:
        for each in inputs:
            submitted.append((await jobs.accept(each))[0])
        ids = " ".join(job.id for job in submitted)
        log.info("POST /v1/images/%s: %d job(s): %s", route, len(submitted), ids)
        await wait_all(submitted, request)
    finally:
        for job in submitted:  # the rest, when one failed or the client went away; no-op for ended jobs
            jobs.cancel(job.id)
    if response_format == "url":
        items = [ImageData(url=api.output_url(request, job)) for job in submitted]
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
