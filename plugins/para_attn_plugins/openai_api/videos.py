"""OpenAI's videos API over a served video predictor (``wan``; the one the request's
``model`` chooses, left out: the first served model): a video is one job, and its id is the
job's id.

``POST /v1/videos`` (JSON, or the multipart form the SDK sends), ``GET /v1/videos/{id}``
(with ``openai-poll-after-ms`` while it runs: the SDK's ``videos.poll()`` waits that long),
``GET /v1/videos`` (``after``, ``limit``, ``order``), ``GET /v1/videos/{id}/content``
(``variant=video``, or ``thumbnail``: the first frame as WebP, as OpenAI serves it) and
``DELETE /v1/videos/{id}`` (cancels the job and forgets it). An ``input_reference`` (a file
part, or ``{"image_url": ...}``) is the predictor's ``image`` where it has one.
"""

from __future__ import annotations

import asyncio
import io
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, delete, get, post, route
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, RequestBody, Schema
from litestar.params import FromPath, QueryParameter

from para_attn_server import InputError
from para_attn_server.plugin import Doc, Job, JobsDependency, JobState, output_response, spec

from .context import Api, Chosen, OpenAIContext
from .errors import OpenAIError, responses
from .forms import request_fields
from .mapping import fold_reference, openai_params, refuse_files, split, video_inputs, video_media_names, video_object
from .schemas import MODEL, Video, VideoDeleted, VideoList, VideoRequest

POLL_HEADER = "openai-poll-after-ms"  # read by the SDK's videos.poll() (openai/resources/videos.py)
PageCursor = Annotated[str | None, QueryParameter(description="A page's last_id: the videos after it")]
PageLimit = Annotated[int, QueryParameter(ge=1, le=100, description="At most this many videos")]
Order = Annotated[Literal["asc", "desc"], QueryParameter(description="By creation time")]
Variant = Annotated[
    Literal["video", "thumbnail", "spritesheet"],
    QueryParameter(description="video: the MP4; thumbnail: its first frame (WebP); spritesheet: not offered"),
]
_TEXT = Schema(type=OpenAPIType.STRING)
_FIELDS = Schema(
    type=OpenAPIType.OBJECT,
    required=["prompt"],
    properties={
        "prompt": _TEXT,
        "model": Schema(type=OpenAPIType.STRING, description=MODEL),
        "seconds": _TEXT,
        "size": _TEXT,
        "input_reference": Schema(
            type=OpenAPIType.STRING,
            format=OpenAPIFormat.BINARY,
            description="A picture the video starts from, for models whose predict takes an image",
        ),
    },
    additional_properties=True,
    description="OpenAI's fields; any field of POST /v1/jobs (fps, num_inference_steps, seed, ...) beside them",
)
CREATE_BODY = RequestBody(
    content={
        "application/json": OpenAPIMediaType(schema=_FIELDS),
        "multipart/form-data": OpenAPIMediaType(schema=_FIELDS),
    },
    required=True,
)


class VideosController(Controller):
    path = "/videos"
    tags = ("OpenAI",)

    # Litestar's own OPTIONS answer names the methods of one handler of a path only (as in
    # http/v1.py): answer it here. Handlers register sorted by name: these sort first.
    @route("/", http_method=["OPTIONS"], status_code=204, include_in_schema=False)
    async def allowed_collection_methods(self) -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, POST"})

    @route("/{video_id:str}", http_method=["OPTIONS"], status_code=204, include_in_schema=False)
    async def allowed_methods(self, video_id: FromPath[str]) -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": "DELETE, GET, OPTIONS"})

    @post(
        "/",
        status_code=200,
        summary="Create a video (OpenAI's videos API)",
        responses={200: spec(Video, "The video job, queued"), **responses(400, 404, 413, 429, 503)},
        opt={"openapi": Doc(request_body=CREATE_BODY)},
    )
    async def create_video(self, request: Request[Any, Any, Any], jobs: JobsDependency, api: Api) -> Response[Video]:
        body, form = await request_fields(request)
        model = api.choose(body.get("model"))
        _require_videos(api, model)
        fold_reference(body)
        fields, extras = split(body, VideoRequest, model.fields)
        refuse_files(extras, model.fields)
        inputs = video_inputs(fields, extras, model.fields, model.name, model.predictor, model.adapters)
        with openai_params(video_media_names(fields, model.fields)):
            job, _ = await jobs.accept(api.checked(inputs, fields.size, form=form, model=model))
        return _answer(api, job)

    @get(
        "/",
        summary="List videos (OpenAI's videos API)",
        responses={200: spec(VideoList, "A page"), **responses(400, 404)},
    )
    async def list_videos(
        self, jobs: JobsDependency, api: Api, after: PageCursor = None, limit: PageLimit = 20, order: Order = "desc"
    ) -> VideoList:
        _require_videos(api)
        # Jobs come newest first; a page of videos is cut from one walk of them (the jobs
        # another model left in the journal are no videos).
        videos = jobs.find(is_video)
        if order == "asc":
            videos.reverse()
        ids = [job.id for job in videos]
        if after is not None and after not in ids:
            raise InputError("no such video (ids are forgotten --result-ttl seconds after the job ended)", "after")
        start = 0 if after is None else ids.index(after) + 1
        page, has_more = videos[start : start + limit], start + limit < len(videos)
        data = [video_object(job.record, api.model_of(job.record), api.result_ttl) for job in page]
        return VideoList(data, data[0].id if data else None, data[-1].id if data else None, has_more)

    @get("/{video_id:str}", summary="Get a video (OpenAI's videos API)", responses=responses(404))
    async def get_video(self, api: Api, video_id: FromPath[str]) -> Response[Video]:
        _require_videos(api)
        return _answer(api, find_video(api, video_id))

    @get(
        "/{video_id:str}/content",
        summary="Download a video or its thumbnail (OpenAI's videos API)",
        responses={
            200: spec(bytes, "video/mp4, or image/webp for the thumbnail", "*/*"),
            **responses(400, 404, 409, 410),
        },
    )
    async def video_content(
        self, jobs: JobsDependency, api: Api, video_id: FromPath[str], variant: Variant = "video"
    ) -> Response[Any]:
        _require_videos(api)
        job = find_video(api, video_id)
        if variant == "spritesheet":
            raise InputError("spritesheets are not offered: use video or thumbnail", "variant")
        if job.state is not JobState.SUCCEEDED or job.record.file_type != "mp4":
            status = video_object(job.record, api.model_of(job.record), api.result_ttl).status
            raise OpenAIError(
                409, f"the video is {status}", code="video_not_ready", headers={"x-should-retry": "false"}
            )
        if variant == "thumbnail":
            return Response(await asyncio.to_thread(first_frame, await api.output(job)), media_type="image/webp")
        return await output_response(jobs, job)  # from memory, or streamed from its checked file

    @delete(
        "/{video_id:str}",
        status_code=200,
        summary="Delete a video: cancel its job and forget it (OpenAI's videos API)",
        responses=responses(404, 409),
    )
    async def delete_video(self, jobs: JobsDependency, api: Api, video_id: FromPath[str]) -> VideoDeleted:
        _require_videos(api)
        job = find_video(api, video_id)
        await jobs.cancel_and_wait(job.id)
        if not job.terminal:  # past --cancel-grace the group restarts, which ends it
            raise OpenAIError(409, "the video is still stopping: delete it again in a moment", code="conflict")
        jobs.forget(job)
        return VideoDeleted(job.id)


def _require_videos(api: OpenAIContext, model: Chosen | None = None) -> None:
    """A 404 unless ``model`` makes videos; without one (the routes of videos already
    made), unless a served model does."""
    if model is None:
        if any(fields.makes_videos for fields in api.fields_of.values()):
            return
        model = api.choose(None)
    if not model.fields.makes_videos:
        why = "makes images: use /v1/images/generations" if model.fields.makes_images else "takes no prompt"
        raise OpenAIError(404, f"the served model ({model.name}) makes no videos; it {why}")


def is_video(job: Job) -> bool:
    return "num_frames" in job.inputs


def find_video(api: OpenAIContext, video_id: str) -> Job:
    job = api.jobs.get(video_id)
    if job is None or not is_video(job):
        raise OpenAIError(404, "no such video (ids are forgotten --result-ttl seconds after the job ended)")
    return job


def _answer(api: OpenAIContext, job: Job) -> Response[Video]:
    video = video_object(job.record, api.model_of(job.record), api.result_ttl)
    running = video.status in ("queued", "in_progress")
    return Response(video, headers={POLL_HEADER: str(api.settings.video_poll_after_ms)} if running else None)


def first_frame(mp4: bytes) -> bytes:
    """The video's first frame as WebP."""
    import av
    from PIL import Image

    with av.open(io.BytesIO(mp4), mode="r") as container:
        pixels = next(container.decode(video=0)).to_ndarray(format="rgb24")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="WEBP")
    return buffer.getvalue()
