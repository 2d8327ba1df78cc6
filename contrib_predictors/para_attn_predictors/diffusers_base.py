"""``DiffusersPredictor``: the shared base of predictors serving a diffusers pipeline.

A model's predictor names its pipeline class, says how many tokens a request makes, and
writes ``predict`` (whose parameters are the request fields) around ``self.generate``::

    class FluxPredictor(DiffusersPredictor):
        pipeline_class = "diffusers:FluxPipeline"

        def sequence_length(self, inputs): ...      # image tokens, to check they split
        def predict(self, *, prompt: str, ...) -> Output | None:
            result = self.generate(seed, prompt=prompt, ...)
            return None if result is None else encode_image(result.images[0], output_format)

A predictor serving several pipeline classes maps each class a model directory may name
(``model_index.json``'s ``_class_name``) to the class it loads (``pipeline_classes``), and
names the pipelines it builds from the loaded components (``variant_classes``: Flux's
image-to-image and inpainting pipelines share the text-to-image weights).

The base does the rest: loading from ``--model-path`` (a directory or a hub id) in the
chosen dtype, para-attn context parallelism and parallel VAE over all ranks, diffusers'
first-block cache, ``torch.compile`` with a warm-up generation before the server reports
ready, one generator per request seeded alike on every rank, the job's step callback
(progress and cancellation), and previews every ``preview_every`` steps (a request field
the subclass passes to ``generate``; see ``previews``), and batches: jobs that differ only
in ``per_job_fields`` (prompt, negative prompt, seed, output encoding, previews) and carry no
picture run as one pipeline call (``batch_key``, ``predict_batch``), each with its own prompt
and its own generator, so each output is what the job gives alone. Operators tune it with
``--option key=value``:

    dtype=auto|bfloat16|float16|float32   auto: bfloat16 on CUDA, float32 on CPU
    ulysses=U ring=R cfg=C                 how the group's ranks split a job (``layouts``):
                                           U x R x C = the group's size; auto by default
    fp8=1                                  the transformers' linear layers in float8 (torchao
                                           dynamic quantization; CUDA, compute capability 8.9+):
                                           about half the weights' memory and faster matmuls,
                                           for a small change in the images
    offload=none|model|sequential          diffusers' CPU offload on each rank, for a card too
                                           small for the model: ``model`` moves one model at a
                                           time to the device (slower per job), ``sequential``
                                           one layer at a time (least memory, much slower)
    cache_threshold=0.08                   first-block cache; 0 (default) turns it off
    compile=1  compile_mode=MODE  compile_backend=inductor
                                           with compile, adapters (LoRA) hotswap into
                                           --max-loaded-loras slots of --max-lora-rank: no recompile
    warmup=0|1|{"width": 512, ...}         one generation in setup; default: on with compile
    parallel_vae=1                         split the VAE decode across ranks (tiles large images)
    vae_tiling=0                           decode large outputs in tiles on one rank (less memory)
    max_sequence_length=N                  text tokens (default: the predictor's)
    preview_vae=DIR                        previews decoded by this small VAE (AutoencoderTiny)
                                           instead of a projection fitted to the model's VAE
    kontext_auto_resize=1                  flux, Kontext models: the picture at the trained
                                           resolution nearest its aspect ratio; 0: its own size
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import os
import random
import time
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec

from para_attn_server import (
    AdapterFit,
    ConfigurationError,
    InputError,
    Lora,
    Output,
    Predictor,
    RankContext,
    current_job,
)

from .layouts import Layout, LayoutOptions, choose_layout
from .loras import LoadedLoras
from .previews import Previewer, StepCallback, latent_image, make_previewer, preview_callback

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Request fields shared by the predictors.
Prompt = Annotated[str, msgspec.Meta(max_length=2000, description="What to generate")]
Side = Annotated[int, msgspec.Meta(ge=16, le=2048, multiple_of=16, description="Pixels, a multiple of 16")]
Steps = Annotated[int, msgspec.Meta(ge=1, le=100, description="Denoising steps")]
Guidance = Annotated[float, msgspec.Meta(ge=0, le=30)]
Seed = (
    Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1, description="Same seed, same output; omitted: a random one")] | None
)
Strength = Annotated[
    float,
    msgspec.Meta(
        ge=0,
        le=1,
        description="With an image: how much of it is repainted, from 0 (kept) to 1 (replaced); "
        "the run takes the last strength x num_inference_steps steps of the schedule",
    ),
]


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """The steps an image-to-image run takes: diffusers' ``get_timesteps``, rounding as it does."""
    start = int(max(num_inference_steps - min(num_inference_steps * strength, num_inference_steps), 0))
    return num_inference_steps - start


def check_strength(inputs: dict[str, Any]) -> None:
    """Refuse (naming ``strength``) an image-to-image request that would take no step: the
    pipeline would raise on every rank instead."""
    steps, strength = inputs["num_inference_steps"], inputs["strength"]
    if denoising_steps(steps, strength) < 1:
        raise InputError(
            f"{strength} x {steps} steps leaves no denoising step: raise strength or num_inference_steps", "strength"
        )


# What each job of a batch keeps its own: the pipeline takes lists of the prompts and of
# the generators, and outputs are encoded (and previews sent) per job after the call.
PER_JOB_FIELDS = frozenset({"prompt", "negative_prompt", "seed", "output_format", "preview_every", "fps"})
# Pictures a job may bring: such a job runs alone (its key is None), as its picture's
# preprocessing is not shared; at batch-key time they are only references.
PICTURE_FIELDS = ("image", "mask_image", "video")


def batch_key_of(predictor: Predictor, inputs: dict[str, Any], per_job: Iterable[str]) -> Hashable | None:
    """A key that equals another job's when the two differ only in ``per_job`` fields: every
    other parameter of ``predict`` and the adapters with their scales (``loras``). None (run
    alone) for a job with a picture."""
    if any(inputs.get(name) is not None for name in PICTURE_FIELDS):
        return None
    shared = sorted(set(inspect.signature(predictor.predict).parameters) - set(per_job) - set(PICTURE_FIELDS))
    adapters = tuple((_field(lora, "name"), float(_field(lora, "scale"))) for lora in inputs.get("loras") or ())
    return (type(predictor).__name__, tuple((name, _hashable(inputs.get(name))) for name in shared), adapters)


def check_shared(batch: Sequence[dict[str, Any]], per_job: Iterable[str]) -> None:
    """Refuse a batch whose jobs differ in a field the call shares (a batch key that let them
    in was wrong): one pipeline call cannot honour both."""
    own = set(per_job)
    lead = batch[0]
    for name in lead:
        if name not in own and any(job.get(name) != lead[name] for job in batch[1:]):
            raise ValueError(f"the jobs of a batch differ in {name!r}, which they share in one pipeline call")


def _field(value: Any, name: str) -> Any:
    return value[name] if isinstance(value, dict) else getattr(value, name)


def _hashable(value: Any) -> Hashable:
    if isinstance(value, list | tuple):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return value  # type: ignore[no-any-return]


class Settings(LayoutOptions, kw_only=True, forbid_unknown_fields=True):
    """The ``--option`` values a diffusers predictor accepts (see the module docstring)."""

    model_path: str
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    cache_threshold: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    warmup: str | None = None
    parallel_vae: bool = True
    vae_tiling: bool = False
    max_sequence_length: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None
    preview_vae: str | None = None
    fp8: bool = False
    offload: Literal["none", "model", "sequential"] = "none"


def read_config(model_path: str, subfolder: str) -> dict[str, Any]:
    """``subfolder/config.json`` of a local pipeline directory or a hub repository."""
    return read_json(model_path, f"{subfolder}/config.json")


def read_json(model_path: str, filename: str) -> dict[str, Any]:
    """A JSON file (``model_index.json``, ``vae/config.json``) of a local pipeline directory
    or a hub repository."""
    try:
        if os.path.isdir(model_path):
            path = Path(model_path, filename)
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model_path, filename))
        config: dict[str, Any] = json.loads(path.read_text())
    except Exception as exc:
        raise ConfigurationError(f"cannot read {filename} of model {model_path!r}: {exc}") from exc
    return config


def check_fp8(device_type: str) -> None:
    """Refuse ``-o fp8=1`` where it cannot run, with the reason, before a rank loads weights."""
    if device_type != "cuda":
        raise ConfigurationError(
            f"-o fp8=1: float8 matmuls need a CUDA GPU of compute capability 8.9 or more (Ada, Hopper); "
            f"this machine runs on {device_type}"
        )
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ConfigurationError("-o fp8=1 quantizes with torchao: pip install torchao") from None


def quantize_fp8(transformer: torch.nn.Module) -> None:
    """The transformer's linear layers as float8 weights with float8 activations scaled per
    call (torchao's dynamic quantization), in place."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig())


def _import(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


class DiffusersPredictor(Predictor):
    pipeline_class: ClassVar[str]  # "module:Class" of the diffusers pipeline
    # The model directory's pipeline class (model_index.json's _class_name) -> "module:Class"
    # to load it as; empty: ``pipeline_class``, whatever the directory names.
    pipeline_classes: ClassVar[dict[str, str]] = {}
    options_type: ClassVar[type[Settings]] = Settings  # the --option values, a subclass's own
    default_max_sequence_length: ClassVar[int] = 512
    splits_text: ClassVar[bool] = False  # text tokens split across ranks too (joint attention)
    component_dtypes: ClassVar[dict[str, str]] = {}  # per-component dtypes that override ``dtype``
    warmup_inputs: ClassVar[dict[str, Any]] = {"prompt": "warm-up", "num_inference_steps": 2}
    video: ClassVar[bool] = False  # latents [B, C, F, H, W]: previews show the first frame
    supports_loras = True  # requests may name adapters; ``generate`` applies them (``loras``)
    per_job_fields: ClassVar[frozenset[str]] = PER_JOB_FIELDS  # what jobs of one batch may differ in
    # The request field that turns classifier-free guidance on (two transformer passes per
    # step, which cfg=2 runs at once: ``guided``); None: one pass per step, no cfg=2.
    guidance_field: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "pipeline_names" not in cls.__dict__ and hasattr(cls, "pipeline_class"):
            cls.pipeline_names = tuple(cls.pipeline_classes) or (cls.pipeline_class.rpartition(":")[2],)

    # ---- hooks for subclasses ---------------------------------------------------------------

    def sequence_length(self, inputs: dict[str, Any]) -> int:
        """Tokens the transformer sees for these request fields (split across the ranks)."""
        raise NotImplementedError

    def variant_classes(self) -> dict[str, str]:
        """Pipelines to build from the loaded one's components, by name (``self.variants``):
        ``{"img2img": "diffusers:FluxImg2ImgPipeline"}``. Called after ``configure``."""
        return {}

    def warmup_media(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Pictures the warm-up request needs (a model that cannot run without one), by field."""
        return {}

    def pipeline_call(self, fields: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The pipeline (one of ``self.variants``, or None: the loaded one) and its keyword
        arguments for one job's request fields, without the generator and the step callback
        (``generate`` adds them); ``predict_batch`` passes each job's prompt as a list."""
        raise NotImplementedError

    def encode(self, result: Any, index: int, fields: dict[str, Any]) -> Output:
        """Job ``index``'s output, from the pipeline's output object, as its fields ask."""
        raise NotImplementedError

    def guided(self, call: dict[str, Any]) -> bool:
        """Whether the pipeline, called with ``call``, guides (two passes per step): the
        pipeline's own rule, such as diffusers' ``guidance_scale > 1``."""
        return False

    # ---- the Predictor contract ---------------------------------------------------------

    def configure(self, world_size: int, options: dict[str, str]) -> None:
        import torch

        if "model_path" not in options:
            raise ConfigurationError(
                f"{type(self).__name__} needs --model-path (or $PARA_ATTN_SERVER_MODEL_PATH): "
                "a pipeline directory or hub id"
            )
        try:
            self.settings = msgspec.convert(options, self.options_type, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"bad --option: {exc}") from None
        self.pipeline_name, self.pipeline_spec = self._pipeline_of(self.settings.model_path)
        self.transformer_config = read_config(self.settings.model_path, "transformer")
        self.vae_config = read_config(self.settings.model_path, "vae")
        heads = int(self.transformer_config["num_attention_heads"])
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        self.layout: Layout = choose_layout(
            self.settings, world_size, heads=heads, device_type=device_type, guidance=self.guidance_field
        )
        self.max_sequence_length = self.settings.max_sequence_length or self.default_max_sequence_length
        if self.splits_text and self.max_sequence_length % self.layout.sequence:
            raise ConfigurationError(
                f"max_sequence_length={self.max_sequence_length} text tokens do not split across "
                f"{self.layout.sequence} ranks ({self.layout})"
            )
        if self.settings.fp8:
            check_fp8(device_type)
        self.warmup = self._warmup_request()

    def parallel_layout(self) -> dict[str, int]:
        return self.layout.degrees()

    def setup(self, context: RankContext) -> None:
        from .parallel import parallelize_pipeline

        settings = self.settings
        self.rank, self.device = context.rank, context.device
        pipe = self.load_pipeline(self._dtype(settings.dtype, context.device))
        if settings.offload == "none":
            pipe.to(context.device)
        pipe.set_progress_bar_config(disable=True)
        if settings.vae_tiling:
            pipe.vae.enable_tiling()
        self.pipe = pipe
        self.previewer: Previewer | None = None
        if context.rank == 0:  # before the VAE is split: the fit decodes on this rank alone
            # (with offload on the host, before its hooks leave the weights on the meta device)
            self.previewer = make_previewer(pipe, context.device, settings.preview_vae, video=self.video)
        if settings.offload == "model":
            pipe.enable_model_cpu_offload(device=context.device)
        elif settings.offload == "sequential":
            # diffusers' leaf-level group offload, the successor of enable_sequential_cpu_offload
            # (whose accelerate hooks fail on transformers 5's text encoders); on CUDA a side
            # stream moves the next layer while this one runs.
            cuda = context.device.type == "cuda"
            pipe.enable_group_offload(context.device, offload_type="leaf_level", use_stream=cuda)
        self.parallel = parallelize_pipeline(
            pipe, device_type=context.device.type, parallelize_vae=settings.parallel_vae, layout=self.layout
        )
        self.decode_on_every_rank = self.parallel.decode_on_every_rank
        self.variants = {name: self._variant(spec) for name, spec in self.variant_classes().items()}
        # The variants share the loaded pipeline's models, hence its adapters: one bookkeeping.
        # Compiled, adapters are hotswapped into fixed slots (armed before compiling): no recompiles.
        max_rank = context.max_lora_rank if settings.compile else None
        self.loras = LoadedLoras(pipe, context.max_loaded_loras, max_rank=max_rank)
        self.transformers: list[torch.nn.Module] = [
            t for t in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if t is not None
        ]
        for transformer in self.transformers:
            self._accelerate(transformer)
        if self.warmup is not None:
            started = time.perf_counter()
            self.predict(**self.warmup)  # compiles; every rank runs it, like a job
            log.info("rank %d: warm-up generation took %.1f s", self.rank, time.perf_counter() - started)

    def validate(self, inputs: dict[str, Any]) -> None:
        from .sizes import check_split

        check_split(self.sequence_length, inputs, self.layout.sequence, str(self.layout))

    def batch_key(self, inputs: dict[str, Any]) -> Hashable | None:
        """Jobs that differ only in ``per_job_fields`` share one call (see ``batch_key_of``);
        none does with the first-block cache on, whose skip decisions span the batch."""
        if self.settings.cache_threshold > 0:
            return None
        return batch_key_of(self, inputs, self.per_job_fields)

    def predict_batch(self, batch: list[dict[str, Any]]) -> list[Output | None]:
        """The jobs as one pipeline call: the shared fields are the first job's (alike in
        all: ``check_shared``), each job keeps its prompts, seed, previews and encoding."""
        check_shared(batch, self.per_job_fields)
        pipe, call = self.pipeline_call(batch[0])
        if len(batch) > 1:  # a lone job calls the pipeline exactly as before: a str, one generator
            for name in ("prompt", "negative_prompt"):
                if name in call:
                    call[name] = [job[name] for job in batch]
        seeds = [job.get("seed") for job in batch]
        previews = [job.get("preview_every", 0) for job in batch]
        result = self.generate_batch(seeds, previews, pipe=pipe, **call)
        if result is None:
            return [None] * len(batch)
        return [self.encode(result, index, job) for index, job in enumerate(batch)]

    def adapter_fit(self) -> AdapterFit:
        """The pipeline's layers adapters may target, and with compile (adapters hotswap
        into fixed slots) the rank reserved: the server refuses a larger one up front."""
        return AdapterFit(self.loras.targets(), self.loras.max_rank)

    # ---- the work, for subclasses' predict ----------------------------------------------

    def load_pipeline(self, dtype: torch.dtype) -> Any:
        import torch
        from diffusers.utils import deprecation_utils

        dtypes: dict[str, torch.dtype] = {"default": dtype}
        dtypes.update({name: getattr(torch, value) for name, value in self.component_dtypes.items()})
        # diffusers renamed torch_dtype to dtype (the old name warns); older ones know only torch_dtype.
        keyword = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
        return _import(self.pipeline_spec).from_pretrained(self.settings.model_path, **{keyword: dtypes})

    def generate(self, seed: int | None, preview_every: int = 0, *, pipe: Any = None, **call: Any) -> Any | None:
        """Run the pipeline (``pipe``: one of ``self.variants``; default: the loaded one) on
        this rank; rank 0 gets its output object, the others None.

        Every rank gets a generator seeded alike, and the job's step callback, which
        reports progress and stops every rank at the same step on cancel (before decode);
        on rank 0 it also sends a preview every ``preview_every`` steps (0: none).
        """
        return self.generate_batch([seed], [preview_every], pipe=pipe, **call)

    def generate_batch(
        self, seeds: Sequence[int | None], previews_every: Sequence[int], *, pipe: Any = None, **call: Any
    ) -> Any | None:
        """``generate`` for the jobs of a batch (``call``'s prompts: lists of theirs): one
        generator per job, seeded as that job alone seeds it, and job ``i``'s previews every
        ``previews_every[i]`` steps."""
        import torch

        pipe = self.pipe if pipe is None else pipe
        for transformer in self.transformers:
            if self.settings.cache_threshold > 0:
                # diffusers resets its cache state only when a run completes; a cancelled
                # run would leave residuals that the next run's first steps compare against.
                transformer._reset_stateful_cache()  # type: ignore[operator]
        callback: StepCallback | None
        loras: tuple[Lora, ...] = ()
        try:
            job = current_job()
            callback, loras = job.diffusers_callback, job.loras
        except RuntimeError:  # the warm-up in setup runs outside any job
            callback = None
        for index, every in enumerate(previews_every):
            if callback is not None and every and self.previewer is not None:
                callback = self._with_previews(callback, every, call, index)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in self._shared_seeds(seeds)]
        cfg = self.parallel.cfg
        passes = contextlib.nullcontext() if cfg is None else cfg.run(self.guided(call))
        with self.loras.applied(loras), passes:  # the job's adapters; the base model again afterwards
            if cfg is not None:
                call = cfg.swap_prompts(call)
            result = pipe(
                **call,
                # A list draws each job's noise from its own generator, as that job alone would.
                generator=generators[0] if len(generators) == 1 else generators,
                # The others skip the decode, unless the VAE is split and needs them all.
                output_type="np" if self.rank == 0 or self.decode_on_every_rank else "latent",
                callback_on_step_end=callback,
            )
        return result if self.rank == 0 else None

    # ---- internals ------------------------------------------------------------------------

    def _pipeline_of(self, model_path: str) -> tuple[str, str]:
        """The directory's pipeline class name and the ``module:Class`` it loads as."""
        if not self.pipeline_classes:
            return self.pipeline_class.rpartition(":")[2], self.pipeline_class
        name = read_json(model_path, "model_index.json").get("_class_name")
        if not isinstance(name, str) or name not in self.pipeline_classes:
            raise ConfigurationError(
                f"{type(self).__name__} serves {', '.join(sorted(self.pipeline_classes))} models; "
                f"{model_path!r} holds a {name}"
            )
        return name, self.pipeline_classes[name]

    def _accelerate(self, transformer: torch.nn.Module) -> None:
        """fp8, the first-block cache and compile, as the options ask; with cfg=2 the exchange
        of the two passes wraps the (compiled) forward and stays eager."""
        import torch

        from .parallel import enable_first_block_cache

        settings = self.settings
        if settings.fp8:
            quantize_fp8(transformer)
        if settings.cache_threshold > 0:
            enable_first_block_cache(transformer, settings.cache_threshold, self.parallel.sequence_group)
        mode, backend = settings.compile_mode, settings.compile_backend
        if self.parallel.cfg is None:
            if settings.compile:
                transformer.compile(mode=mode, backend=backend)
            return
        forward = transformer.forward
        if settings.compile:
            forward = torch.compile(forward, mode=mode, backend=backend)
        transformer.forward = self.parallel.cfg.wrap(forward)

    def _variant(self, spec: str) -> Any:
        """A pipeline of class ``spec`` made of the loaded pipeline's components (the same
        objects: no second copy of the weights), split across the ranks as it is."""
        from .parallel import parallelize_like

        pipe = _import(spec)(**self.pipe.components)
        pipe.set_progress_bar_config(disable=True)
        parallelize_like(pipe, self.pipe)
        return pipe

    def _with_previews(self, callback: StepCallback, every: int, call: dict[str, Any], index: int) -> StepCallback:
        previewer, pipe = self.previewer, self.pipe
        assert previewer is not None
        height, width = call.get("height", 0), call.get("width", 0)  # Flux unpacks its tokens with them
        return preview_callback(
            callback, every, lambda latents: previewer(latent_image(pipe, latents, height, width, index)), index
        )

    def _shared_seeds(self, seeds: Sequence[int | None]) -> list[int]:
        """The seeds, each missing one drawn on rank 0 for every rank (one broadcast for all)."""
        if all(seed is not None for seed in seeds):
            return [seed for seed in seeds if seed is not None]
        import torch
        import torch.distributed as dist

        drawn = torch.tensor([random.randrange(2**63) for _ in seeds], dtype=torch.int64, device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(drawn, src=0)  # rank 0's draw for everyone: one noise, split
        return [int(d) if seed is None else seed for seed, d in zip(seeds, drawn.tolist(), strict=True)]

    @staticmethod
    def _dtype(name: str, device: torch.device) -> torch.dtype:
        import torch

        if name == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        dtype: torch.dtype = getattr(torch, name)
        return dtype

    def _warmup_request(self) -> dict[str, Any] | None:
        text = self.settings.warmup
        if text is None:
            text = "1" if self.settings.compile else "0"
        if text.strip().lower() in ("0", "false", "no", "off"):
            return None
        fields = dict(self.warmup_inputs)
        if text.strip().lower() not in ("1", "true", "yes", "on"):
            try:
                fields.update(json.loads(text))
            except (json.JSONDecodeError, TypeError, ValueError) as exc:
                raise ConfigurationError(f"warmup must be 0, 1 or a JSON object of request fields: {exc}") from None
        from para_attn_server.plugin import InputSchema

        schema = InputSchema(self)
        try:
            inputs = schema.convert(fields)
            inputs.update(self.warmup_media(inputs))
            self.validate(inputs)
        except (msgspec.ValidationError, InputError) as exc:
            raise ConfigurationError(f"warm-up request: {exc}") from None
        return schema.predict_kwargs(inputs)
