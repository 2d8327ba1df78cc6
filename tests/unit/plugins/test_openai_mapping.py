"""The openai plugin's field mapping (para_attn_plugins.openai_api.mapping): OpenAI's
request fields onto the served predictor's, over the real predictors' schemas, and a job's
record back onto OpenAI's Video object."""

from __future__ import annotations

import random
from typing import Annotated, Any

import msgspec
import pytest

from para_attn_plugins.openai_api import mapping
from para_attn_plugins.openai_api.mapping import ModelFields
from para_attn_plugins.openai_api.schemas import ImageRequest, VideoRequest
from para_attn_predictors.flux import FluxPredictor
from para_attn_predictors.noop import NoopPredictor
from para_attn_predictors.tiny import TinyFluxPredictor
from para_attn_predictors.wan import WanPredictor
from para_attn_server import Output, Predictor
from para_attn_server.records import JobRecord, JobState
from para_attn_server.schema import InputSchema
from tests.unit.plugins.checks import rejected

TINY = ModelFields.of(InputSchema(TinyFluxPredictor()))
FLUX = ModelFields.of(InputSchema(FluxPredictor()))  # seed: optional, None by default
WAN = ModelFields.of(InputSchema(WanPredictor()))


class Styled(Predictor):
    """A predictor with a field named like one OpenAI accepts and ignores."""

    def predict(self, prompt: str, style: str = "plain", steps: Annotated[int, msgspec.Meta(ge=1)] = 2) -> Output:
        raise NotImplementedError


def images(body: dict[str, Any], fields: ModelFields = TINY, max_n: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    request, extras = mapping.split(body, ImageRequest, fields)
    return mapping.image_inputs(request, extras, fields, "tiny", max_n, random.Random(seed))


def wan_predictor() -> WanPredictor:
    predictor = WanPredictor()
    # What configure() reads from the model's config files; Wan's VAE packs 4 frames.
    predictor.vae_config = {"scale_factor_temporal": 4, "scale_factor_spatial": 8}
    predictor.transformer_config = {"patch_size": [1, 2, 2]}
    return predictor


# ---- what each predictor can serve ------------------------------------------------------


def test_image_predictors_take_a_prompt_and_video_predictors_frames_and_fps_too() -> None:
    assert (TINY.makes_images, TINY.makes_videos) == (True, False)
    assert (WAN.makes_images, WAN.makes_videos) == (False, True)
    noop = ModelFields.of(InputSchema(NoopPredictor()))
    assert (noop.makes_images, noop.makes_videos) == (False, False)
    assert set(TINY.literals["output_format"]) == {"png", "jpeg", "webp", "npy"}
    assert WAN.limits["num_frames"] == (1, 241)


# ---- images ------------------------------------------------------------------------------


def test_size_maps_to_width_and_height_and_auto_leaves_the_defaults() -> None:
    assert images({"prompt": "a cat", "size": "48x32"}) == [{"prompt": "a cat", "width": 48, "height": 32, "seed": 0}]
    assert images({"prompt": "a cat", "size": "auto"}) == [{"prompt": "a cat", "seed": 0}]


@pytest.mark.parametrize("size", ["banana", "48", "48x", "x32", "48X32", "-48x32", "48x32x2", "123456x1"])
def test_a_size_that_is_not_width_x_height_is_refused(size: str) -> None:
    message = rejected(lambda: images({"prompt": "a cat", "size": size}), "size")
    assert "WIDTHxHEIGHT" in message


def test_size_is_refused_for_a_model_without_width_and_height_or_beside_them() -> None:
    styled = ModelFields.of(InputSchema(Styled()))
    assert "no width and height" in rejected(lambda: images({"prompt": "a", "size": "32x32"}, styled), "size")
    assert "not both" in rejected(lambda: images({"prompt": "a", "size": "32x32", "width": 48}), "size")
    assert images({"prompt": "a", "width": 48}) == [{"prompt": "a", "width": 48, "seed": 0}]


def test_n_images_get_consecutive_seeds_from_the_given_one() -> None:
    made = images({"prompt": "a cat", "n": 3, "seed": 41, "num_inference_steps": 2})
    assert [inputs["seed"] for inputs in made] == [41, 42, 43]
    assert all(inputs["num_inference_steps"] == 2 for inputs in made)


def test_n_images_start_from_the_predictors_default_seed() -> None:
    assert [inputs["seed"] for inputs in images({"prompt": "a cat", "n": 2})] == [0, 1]  # tiny's default: 0


def test_an_optional_seed_left_out_becomes_a_random_start_with_consecutive_values() -> None:
    first = [inputs["seed"] for inputs in images({"prompt": "a cat", "n": 3}, FLUX, seed=1)]
    other = [inputs["seed"] for inputs in images({"prompt": "a cat", "n": 3}, FLUX, seed=2)]
    assert first[1:] == [first[0] + 1, first[0] + 2]
    assert first != other
    assert 0 <= first[0] < mapping.RANDOM_SEEDS


def test_a_predictor_without_a_seed_gets_n_copies_of_the_inputs() -> None:
    styled = ModelFields.of(InputSchema(Styled()))
    assert images({"prompt": "a", "n": 2}, styled) == [{"prompt": "a"}, {"prompt": "a"}]


def test_an_ill_typed_seed_is_left_for_the_schema_to_refuse() -> None:
    assert images({"prompt": "a", "n": 2, "seed": "7"}) == [{"prompt": "a", "seed": "7"}] * 2


@pytest.mark.parametrize("n", [0, 5, -1])
def test_n_outside_one_to_max_n_is_refused_naming_the_limit(n: int) -> None:
    assert rejected(lambda: images({"prompt": "a", "n": n}), "n") == "must be between 1 and 4 (--max-n)"


def test_n_is_one_by_default() -> None:
    assert len(images({"prompt": "a"})) == 1


def test_output_format_maps_where_the_predictor_offers_it() -> None:
    assert images({"prompt": "a", "output_format": "webp"})[0]["output_format"] == "webp"
    message = rejected(lambda: images({"prompt": "a", "output_format": "webp"}, FLUX), "output_format")
    assert message == "this model makes jpeg, png, not webp"
    styled = ModelFields.of(InputSchema(Styled()))
    assert "does not choose" in rejected(
        lambda: images({"prompt": "a", "output_format": "png"}, styled), "output_format"
    )


def test_openai_fields_are_checked_by_type() -> None:
    assert rejected(lambda: images({"prompt": "a", "n": "2"}), "n").startswith("Expected `int | null`")
    assert rejected(lambda: images({"prompt": "a", "response_format": "gif"}), "response_format")
    assert rejected(lambda: images({"n": 1}), "prompt")


def test_the_model_must_be_the_served_one_and_stream_is_refused() -> None:
    assert images({"prompt": "a", "model": "tiny"})
    assert "serves 'tiny' only" in rejected(lambda: images({"prompt": "a", "model": "dall-e-3"}), "model")
    assert "streaming" in rejected(lambda: images({"prompt": "a", "stream": True}), "stream")


def test_ignored_openai_fields_are_dropped_unless_the_predictor_has_one_of_that_name() -> None:
    body = {"prompt": "a", "quality": "hd", "style": "vivid", "user": "u1", "background": "opaque"}
    assert images(body) == [{"prompt": "a", "seed": 0}]
    styled = ModelFields.of(InputSchema(Styled()))
    assert images(body, styled) == [{"prompt": "a", "style": "vivid"}]


def test_predictor_fields_pass_through_as_given_for_the_schema_to_check() -> None:
    assert images({"prompt": "a", "colour": "red"})[0]["colour"] == "red"


# ---- videos ------------------------------------------------------------------------------


def videos(body: dict[str, Any], predictor: object | None = None) -> dict[str, Any]:
    request, extras = mapping.split(body, VideoRequest, WAN)
    return mapping.video_inputs(request, extras, WAN, "wan", predictor if predictor is not None else wan_predictor())


@pytest.mark.parametrize(
    ("count", "frames"), [(0, 1), (1, 1), (2, 1), (3, 5), (6, 5), (7, 9), (8, 9), (16, 17), (64, 65), (10_000, 241)]
)
def test_wan_takes_the_nearest_4k_plus_1_frame_count(count: int, frames: int) -> None:
    assert wan_predictor().nearest_num_frames(count) == frames


def test_seconds_become_frames_through_the_default_or_given_fps() -> None:
    assert videos({"prompt": "a", "seconds": "4"})["num_frames"] == 65  # 4 s x 16 fps = 64 -> 65
    assert videos({"prompt": "a", "seconds": 1, "fps": 8})["num_frames"] == 9
    assert videos({"prompt": "a", "seconds": "1", "fps": "8"})["num_frames"] == 9  # a multipart form's text
    assert "num_frames" not in videos({"prompt": "a"})


def test_without_a_nearest_frames_method_the_count_is_kept_within_the_fields_limits() -> None:
    assert videos({"prompt": "a", "seconds": "100"}, object())["num_frames"] == 241
    assert videos({"prompt": "a", "seconds": "0.5", "fps": 6}, object())["num_frames"] == 3


@pytest.mark.parametrize("seconds", ["0", "-1", "soon", "nan", "inf", "3601"])
def test_seconds_must_be_a_positive_number(seconds: str) -> None:
    rejected(lambda: videos({"prompt": "a", "seconds": seconds}), "seconds")


def test_video_fields_that_cannot_map_are_refused_naming_them() -> None:
    assert "not both" in rejected(lambda: videos({"prompt": "a", "seconds": "1", "num_frames": 9}), "seconds")
    # Wan's schema takes an image (its image-to-video models need one): the reference maps onto it,
    # and a text-to-video directory refuses it in its validate (test_openai_edits: a text-only model).
    assert videos({"prompt": "a", "input_reference": b"png"})["image"] == b"png"
    assert "MP4" in rejected(lambda: videos({"prompt": "a", "output_format": "npy"}), "output_format")
    assert videos({"prompt": "a", "size": "48x32"})["width"] == 48


def record(state: JobState, **changes: Any) -> JobRecord:
    inputs = {"prompt": "a cat", "width": 48, "height": 32, "num_frames": 9, "fps": 8}
    base = JobRecord(id="v1", inputs=inputs, fingerprint=b"", created_at=100.5, state=state)
    return base.evolve(**changes)


def test_a_job_becomes_an_openai_video_object() -> None:
    queued = mapping.video_object(record(JobState.QUEUED), "wan", 3600)
    assert (queued.status, queued.progress, queued.completed_at, queued.expires_at) == ("queued", 0, None, None)
    assert (queued.seconds, queued.size, queued.prompt, queued.created_at) == ("1.125", "48x32", "a cat", 100)
    running = mapping.video_object(record(JobState.RUNNING, step=3, total=4), "wan", 3600)
    assert (running.status, running.progress) == ("in_progress", 75)
    done = mapping.video_object(record(JobState.SUCCEEDED, step=4, total=4, finished_at=200.0), "wan", 3600)
    assert (done.status, done.progress, done.completed_at, done.expires_at, done.error) == (
        "completed", 100, 200, 3800, None,
    )  # fmt: skip
    failed = mapping.video_object(record(JobState.FAILED, error="rank 0: boom", finished_at=200.0), "wan", 60)
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("job_failed", "rank 0: boom")
    cancelled = mapping.video_object(record(JobState.CANCELLED, finished_at=200.0), "wan", 60)
    assert cancelled.status == "failed"
    assert cancelled.error is not None
    assert cancelled.error.code == "cancelled"
