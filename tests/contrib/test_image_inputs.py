"""Predictors that take pictures, run in this process at world size 1 (no server, no
para-attn patches): each path gives what its diffusers pipeline gives, called directly on
the same picture, seed and strength; and each request a model cannot serve is refused
before it is queued, naming the field. The 2-rank, served runs are in test_flux_images.py,
test_wan_images.py and test_tiny_images.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    WanImageToVideoPipeline,
    WanPipeline,
)
from PIL import Image

from para_attn_predictors.compat import apply_diffusers_shims
from para_attn_predictors.diffusers_base import DiffusersPredictor, denoising_steps
from para_attn_predictors.flux import FluxPredictor, splittable_grid
from para_attn_predictors.layouts import Layout
from para_attn_predictors.make_tiny import build
from para_attn_predictors.tiny import TinyFluxPredictor
from para_attn_predictors.wan import WanPredictor
from para_attn_server import InputError, Predictor, RankContext
from para_attn_server.predictor import JobContext, running
from para_attn_server.schema import InputSchema
from tests.contrib.support import build as build_predictor
from tests.contrib.support import npy, picture

pytestmark = pytest.mark.timeout(180)

PICTURE = picture(64, 48, seed=0)
MASK = picture(64, 48, seed=1, mask=True)
FLUX = {"prompt": "a red cat", "width": 48, "height": 32, "num_inference_steps": 4, "guidance_scale": 3.5}


def predict(predictor: Predictor, **fields: Any) -> np.ndarray:
    """The output array of one job: fields as the ranks get them (pictures decoded, every
    default filled in by the schema, checked by ``validate`` first)."""
    pictures = {name: fields.pop(name) for name in ("image", "mask_image") if name in fields}
    schema = InputSchema(predictor)
    inputs = schema.convert(fields) | pictures
    predictor.validate(inputs)
    kwargs = schema.predict_kwargs(inputs) | {"output_format": "npy"}
    with running(JobContext("job", kwargs, 0, 1, lambda step, total: False)):
        output = predictor.predict(**kwargs)
    assert output is not None
    return npy(output.data)


def direct(pipe: Any, seed: int, **call: Any) -> np.ndarray:
    """A diffusers pipeline called as it is, with a CPU generator of ``seed``."""
    pipe.set_progress_bar_config(disable=True)
    result = pipe(**call, generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    frames = getattr(result, "frames", None)
    return np.asarray(frames[0] if frames is not None else result.images[0])


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


def refused(predictor: DiffusersPredictor | TinyFluxPredictor, field: str, **fields: Any) -> str:
    inputs = InputSchema(predictor).convert({"prompt": "a cat", **fields})
    with pytest.raises(InputError) as error:
        predictor.validate(inputs)
    assert error.value.field == field
    return str(error.value)


@pytest.fixture(scope="module")
def flux(tiny_dirs: dict[str, Path]) -> FluxPredictor:
    predictor = build_predictor(FluxPredictor, tiny_dirs["flux"], max_sequence_length="64")
    assert isinstance(predictor, FluxPredictor)
    return predictor


@pytest.fixture(scope="module")
def kontext(tiny_dirs: dict[str, Path]) -> FluxPredictor:
    path = tiny_dirs["flux-kontext"]
    predictor = build_predictor(FluxPredictor, path, max_sequence_length="64", kontext_auto_resize="0")
    assert isinstance(predictor, FluxPredictor)
    return predictor


@pytest.fixture(scope="module")
def wan_i2v(tiny_dirs: dict[str, Path]) -> WanPredictor:
    predictor = build_predictor(WanPredictor, tiny_dirs["wan-i2v"])
    assert isinstance(predictor, WanPredictor)
    return predictor


def test_the_picture_fields_are_in_the_schema_with_diffusers_names(flux: FluxPredictor) -> None:
    fields = InputSchema(flux).media_fields
    assert {name: (field.kind, field.optional) for name, field in fields.items()} == {
        "image": ("image", True),
        "mask_image": ("mask", True),
    }
    assert set(InputSchema(TinyFluxPredictor()).media_fields) == {"image"}
    assert set(InputSchema(WanPredictor()).media_fields) == {"image"}


def test_make_tiny_saves_each_pipeline_class(tiny_dirs: dict[str, Path]) -> None:
    for kind, cls in [("flux", FluxPipeline), ("flux-kontext", FluxKontextPipeline), ("wan", WanPipeline),
                      ("wan-i2v", WanImageToVideoPipeline)]:  # fmt: skip
        assert type(build(kind)) is cls
        assert f'"_class_name": "{cls.__name__}"' in (tiny_dirs[kind] / "model_index.json").read_text()


def test_tiny_image_to_image_is_flux_img2img_on_the_same_components() -> None:
    predictor = TinyFluxPredictor()
    predictor.setup(RankContext(0, 1, 0, torch.device("cpu"), {}))
    # One set of weights: the image-to-image pipeline holds the loaded pipeline's modules.
    assert predictor.img2img.transformer is predictor.pipe.transformer
    assert predictor.img2img.vae is predictor.pipe.vae
    fields = {"prompt": "a red cat", "width": 48, "height": 32, "num_inference_steps": 4, "seed": 5}
    got = predictor_run = predict(predictor, **fields, image=PICTURE, strength=0.7)
    from para_attn_predictors.tiny_flux import build_tiny_flux_pipeline

    pipe = FluxImg2ImgPipeline(**build_tiny_flux_pipeline(seed=0).components)
    expected = direct(pipe, 5, prompt="a red cat", image=PICTURE, strength=0.7, width=48, height=32,
                      num_inference_steps=4, guidance_scale=3.5, max_sequence_length=64)  # fmt: skip
    assert_same(got, expected)
    assert got.shape == (32, 48, 3)  # the output is width x height, the picture resized to it
    # Text to image still runs without a picture, and the picture matters.
    assert np.abs(predict(predictor, **fields) - predictor_run).max() > 1e-2


def test_flux_image_to_image_and_inpainting_are_diffusers_pipelines(
    flux: FluxPredictor, tiny_dirs: dict[str, Path]
) -> None:
    assert flux.variants["img2img"].transformer is flux.pipe.transformer
    assert flux.variants["inpaint"].text_encoder_2 is flux.pipe.text_encoder_2
    call = {**FLUX, "max_sequence_length": 64}
    img2img = predict(flux, **FLUX, image=PICTURE, strength=0.7, seed=2)
    pipe = FluxImg2ImgPipeline.from_pretrained(tiny_dirs["flux"])
    assert_same(img2img, direct(pipe, 2, **call, image=PICTURE, strength=0.7))
    inpaint = predict(flux, **FLUX, image=PICTURE, mask_image=MASK, strength=0.9, seed=2)
    pipe = FluxInpaintPipeline.from_pretrained(tiny_dirs["flux"])
    assert_same(inpaint, direct(pipe, 2, **call, image=PICTURE, mask_image=MASK, strength=0.9))
    assert np.abs(img2img - inpaint).max() > 1e-2


def test_kontext_edits_the_picture_as_flux_kontext_does(kontext: FluxPredictor, tiny_dirs: dict[str, Path]) -> None:
    assert kontext.variants == {}
    got = predict(kontext, **FLUX, image=PICTURE, seed=4)
    pipe = FluxKontextPipeline.from_pretrained(tiny_dirs["flux-kontext"])
    # The output is width x height (max_area: diffusers' default would scale it to a
    # megapixel); the picture is read at its own size (kontext_auto_resize=0).
    expected = direct(pipe, 4, **FLUX, image=PICTURE, max_sequence_length=64, max_area=48 * 32, _auto_resize=False)
    assert got.shape == (32, 48, 3)
    assert_same(got, expected)
    # Without a picture: text to image. (The tiny model reads its picture faintly.)
    assert np.abs(predict(kontext, **FLUX, seed=4) - got).max() > 1e-3


def test_kontext_reads_the_picture_in_tokens_that_split_across_the_ranks(kontext: FluxPredictor) -> None:
    # The tiny VAE does not downsample: tokens of 2 x 2 pixels.
    assert kontext.kontext_picture(PICTURE).size == (64, 48)  # 32 x 24 tokens
    one_rank = kontext.layout
    kontext.layout = Layout(ulysses=1, ring=5)  # 32 x 24 = 768 tokens do not split 5 ways; 30 x 24 do
    try:
        assert kontext.kontext_picture(PICTURE).size == (60, 48)
        with pytest.raises(InputError) as error:
            kontext.kontext_picture(Image.new("RGB", (3, 3)))  # 1 token
        assert error.value.field == "image"
    finally:
        kontext.layout = one_rank
    assert splittable_grid(7, 3, 4) == (6, 2)  # 12 cells, as 4 x 3, but nearer 7:3
    assert splittable_grid(8, 8, 3) == (8, 6)  # 48 cells; 7 x 7 = 49 does not divide
    assert splittable_grid(1, 1, 2) == (0, 0)
    settings = kontext.settings
    kontext.settings = type(settings)(**{**{f: getattr(settings, f) for f in settings.__struct_fields__},
                                         "kontext_auto_resize": True})  # fmt: skip
    try:  # the trained resolution nearest the aspect ratio, as diffusers picks it: 1184 x 880 for 4:3
        assert kontext.kontext_picture(PICTURE).size == (1184, 880)
    finally:
        kontext.settings = settings


def test_wan_image_to_video_is_wans_i2v_pipeline(wan_i2v: WanPredictor, tiny_dirs: dict[str, Path]) -> None:
    fields = {"prompt": "a cat", "width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 3}
    got = predict(wan_i2v, **fields, image=PICTURE, seed=6)
    apply_diffusers_shims()  # diffusers' I2V pipeline cleans prompts with ftfy, installed or not
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_dirs["wan-i2v"])
    expected = direct(pipe, 6, **fields, image=PICTURE, negative_prompt="", guidance_scale=5.0, max_sequence_length=16)
    assert got.shape == (5, 32, 32, 3)
    assert_same(got, expected)


def test_a_wan_image_to_video_model_warms_up_with_a_picture(tiny_dirs: dict[str, Path]) -> None:
    # It cannot run without one: the warm-up (on with compile=1) brings a grey picture.
    predictor = build_predictor(WanPredictor, tiny_dirs["wan-i2v"], warmup='{"width": 32, "height": 32}')
    assert predictor.warmup is not None
    assert predictor.warmup["image"].size == (32, 32)


@pytest.mark.parametrize(("fields", "message"), [
    ({"mask_image": "m"}, "needs the image it masks"),
    ({"image": "i", "mask_image": "m", "strength": 0.6}, None),
])  # fmt: skip
def test_a_mask_needs_its_picture(flux: FluxPredictor, fields: dict[str, Any], message: str | None) -> None:
    if message is None:
        flux.validate(InputSchema(flux).convert({"prompt": "a cat", **fields}))
    else:
        assert message in refused(flux, "mask_image", **fields)


def test_a_strength_that_leaves_no_step_is_refused(flux: FluxPredictor) -> None:
    # Flux's pipelines keep the last strength x steps steps, rounded up: only 0 leaves none.
    assert [denoising_steps(28, 0.6), denoising_steps(4, 0.25), denoising_steps(4, 0.01)] == [17, 1, 1]
    assert denoising_steps(4, 0.0) == 0
    assert "leaves no denoising step" in refused(flux, "strength", image="i", num_inference_steps=4, strength=0.0)
    assert "leaves no denoising step" in refused(TinyFluxPredictor(), "strength", image="i", strength=0.0)
    flux.validate(InputSchema(flux).convert({"prompt": "a cat", "strength": 0.0}))  # no picture: unused


def test_each_model_refuses_the_pictures_it_cannot_use(
    kontext: FluxPredictor, wan_i2v: WanPredictor, tiny_dirs: dict[str, Path]
) -> None:
    assert "FluxKontextPipeline" in refused(kontext, "mask_image", image="i", mask_image="m")
    wan_fields = {"width": 32, "height": 32, "num_frames": 5}
    assert "send image" in refused(wan_i2v, "image", **wan_fields)
    text_to_video = WanPredictor()
    text_to_video.configure(1, {"model_path": str(tiny_dirs["wan"])})
    assert "WanImageToVideoPipeline" in refused(text_to_video, "image", image="i", **wan_fields)
    text_to_video.validate(InputSchema(text_to_video).convert({"prompt": "a cat", **wan_fields}))
