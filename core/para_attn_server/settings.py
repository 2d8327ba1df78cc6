"""Every setting of the server, declared once: one tree of msgspec Structs.

Each field carries its type, default, limits (``Meta``) and help text; the command line
(``cli.py``), the Python entry's keywords (``ParaAttentionServer(..., max_queue=8)``), the
rank processes' spec and ``--help`` are all derived from this tree. Sections by layer:

- ``ModelSettings``: what is served (predictor, its options, extra plugins);
- ``HttpSettings``: the HTTP listener;
- ``JobSettings``: the job service (queue, timeouts, outputs, restarts);
- ``GroupSettings``: how worker groups are started and watched (server side);
- ``RankSettings``: what every rank process is told (it travels in the ``RankSpec``).

Plugins add sections of their own (``register_settings``); their fields become flags too.
Field names are unique across the whole tree, so a flag or keyword names one setting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from para_attn_server import settings_sources as sources
from para_attn_server.errors import ConfigurationError

MODEL_PATH_ENV = "PARA_ATTN_SERVER_MODEL_PATH"
API_KEY_ENV = "PARA_ATTN_SERVER_API_KEY"
JOIN_TOKEN_ENV = "PARA_ATTN_SERVER_JOIN_TOKEN"
# Every variable of the server is PARA_ATTN_SERVER_*; the older name is still read (with a
# warning) so that deployments setting it keep working.
OLD_MODEL_PATH_ENV = "PARA_ATTN_MODEL_PATH"
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

Seconds = Annotated[float, msgspec.Meta(ge=0)]
Bytes = Annotated[int, msgspec.Meta(ge=0)]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^/?#@\s]+(/[^?#\s]*)?$")]


def _help(text: str, **extra: Any) -> msgspec.Meta:
    """A field's help text; ``extra`` holds command-line details: ``flags`` (instead of
    ``--field-name``), ``metavar``, ``env`` (an environment variable that sets it),
    ``old_env`` (its older name, still read with a deprecation warning) and ``cli=False``
    (no flag: set by the config file or the Python entry only)."""
    return msgspec.Meta(description=text, extra=extra)


class ModelEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One model of a server serving several: a ``[[models]]`` table of ``--config``. Each
    gets groups of its own; requests choose one by its ``name`` (their ``model`` field)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
    model: str | None = None  # predictor, as --model; None: detected from model_path
    model_path: str | None = None
    options: dict[str, Any] = {}
    num_devices: Annotated[int, msgspec.Meta(ge=1)] | None = None
    devices: list[Annotated[int, msgspec.Meta(ge=0)]] | None = None  # CUDA devices, instead of num_devices
    group_size: Annotated[int, msgspec.Meta(ge=1)] | None = None


class ModelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What is served."""

    model: Annotated[
        str | None,
        _help(
            "predictor: installed name (as 'plugins' lists it), module:Class or path/file.py:Class "
            "(default: detected from --model-path, else tiny)"
        ),
    ] = None
    served_model_name: Annotated[
        str | None,
        _help("the name /v1/models, the logs and the web page show (default: --model-path's name, else --model)"),
    ] = None
    models: Annotated[
        list[ModelEntry],
        _help("several models, each with groups of its own ([[models]] tables of --config only)", cli=False),
    ] = []
    model_path: Annotated[
        str | None,
        _help(
            "weights directory or hub id, the predictor's model_path option",
            env=MODEL_PATH_ENV,
            old_env=OLD_MODEL_PATH_ENV,
        ),
    ] = None
    options: Annotated[
        dict[str, str], _help("predictor option, repeatable", flags=["--option", "-o"], metavar="KEY=VALUE")
    ] = {}
    plugins: Annotated[
        list[str], _help("extra plugin module to load, repeatable", flags=["--plugin"], metavar="MODULE")
    ] = []
    loras: Annotated[
        dict[str, str],
        _help(
            "adapter (LoRA) requests may apply by NAME: a directory or .safetensors file as diffusers' "
            "load_lora_weights reads it, repeatable",
            flags=["--lora"],
            metavar="NAME=PATH",
        ),
    ] = {}
    lora_dir: Annotated[
        str | None,
        _help("offer every adapter in this directory: each .safetensors file by its stem, each folder of one by name"),
    ] = None
    max_loras_per_request: Annotated[
        int, msgspec.Meta(ge=1, le=64), _help("adapters one request may apply at once (its loras field)")
    ] = 4


class HttpSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The HTTP listener."""

    host: Annotated[str, _help("address to listen on")] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535), _help("port to listen on, 0 for any")] = 5000
    api_key: Annotated[
        str | None,
        _help("require this key on every route but /health/live (ps shows it: prefer the file)", env=API_KEY_ENV),
    ] = None
    api_key_file: Annotated[str | None, _help("read the API key from this file (its first line)")] = None
    public_url: Annotated[HttpUrl | None, _help("URL clients reach it at (a proxy's): url answers use it")] = None
    max_body_bytes: Annotated[
        Bytes, _help("largest request body (pictures included: --max-input-bytes of them take 4/3 as much in base64)")
    ] = 48 * 1024 * 1024
    max_connections: Annotated[int, msgspec.Meta(ge=1), _help("connections at once; more get 503 but /health/*")] = 1024
    header_timeout: Annotated[
        Seconds, _help("seconds a client may take to send a request's head (from its connection or first byte)")
    ] = 10.0
    keepalive_timeout: Annotated[int, msgspec.Meta(ge=1), _help("seconds an idle kept-alive connection stays open")] = 5
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024), _help("largest request head, trailers too (431)")] = 65536
    body_timeout: Annotated[float, msgspec.Meta(gt=0), _help("seconds a body may take after its head (408)")] = 60
    join_token: Annotated[
        str | None,
        _help(
            "token 'join' must prove it holds (never sent; ps shows this flag: prefer the file or the variable); "
            "hosts may join with their own groups when set or with --num-devices 0 (default: generated to a file)",
            env=JOIN_TOKEN_ENV,
        ),
    ] = None
    join_token_file: Annotated[str | None, _help("read the join token from this file (its first line)")] = None

    def key(self) -> str | None:
        """The API key: ``api_key``, or the first line of ``api_key_file``."""
        if self.api_key_file is None:
            return self.api_key or None
        if self.api_key:
            raise ConfigurationError("give the API key once: --api-key (or its variable) or --api-key-file")
        try:
            return secret_from_file(self.api_key_file)
        except ValueError as exc:
            raise ConfigurationError(f"--api-key-file: {exc}") from None


def secret_from_file(path: str) -> str:
    """A secret kept in a file (out of ``ps``): its first line, stripped. ValueError says
    why there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().strip()
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from None
    if not line:
        raise ValueError("its first line is empty")
    return line


class JobSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The job service: queue, limits, outputs, restarts."""

    output_dir: Annotated[str, _help("where outputs are written")] = "outputs"
    max_queue: Annotated[int, msgspec.Meta(ge=0), _help("jobs that may wait")] = 64
    job_timeout: Annotated[float | None, _help("seconds a job may run before its group is restarted; 0: no limit")] = (
        3600.0
    )
    result_ttl: Annotated[Seconds, _help("seconds finished jobs and their outputs are kept")] = 3600.0
    result_poll_wait: Annotated[
        Annotated[float, msgspec.Meta(ge=0, le=30)],
        _help("seconds /get_output holds a poll of an unfinished job for it to end, before answering 202"),
    ] = 0.1
    max_records: Annotated[
        int, msgspec.Meta(ge=1), _help("finished jobs kept at most (the oldest are forgotten first)")
    ] = 100_000
    drain_timeout: Annotated[Seconds, _help("seconds SIGTERM waits for running jobs")] = 30.0
    output_memory_bytes: Annotated[Bytes, _help("recent outputs kept in memory for fast download, in all")] = (
        512 * 1024 * 1024
    )
    max_event_streams: Annotated[int, msgspec.Meta(ge=1), _help("event streams (SSE) open at once, in all")] = 256
    max_event_streams_per_job: Annotated[int, msgspec.Meta(ge=1), _help("event streams open at once per job")] = 16
    preview_memory_bytes: Annotated[Bytes, _help("jobs' latest previews kept in memory, in all")] = 64 * 1024 * 1024
    restart_backoff: Annotated[Seconds, _help("seconds before retrying a failed restart; doubles each time")] = 1.0
    restart_backoff_max: Annotated[Seconds, _help("longest wait between restart attempts")] = 30.0
    max_input_bytes: Annotated[Bytes, _help("bytes of pictures and videos one request may bring, in all")] = (
        32 * 1024 * 1024
    )
    max_input_pixels: Annotated[
        int, msgspec.Meta(ge=1), _help("pixels one input picture (or video frame) may have, checked before decoding")
    ] = 4096 * 4096
    max_priority: Annotated[
        int, msgspec.Meta(ge=-100, le=100), _help("the highest priority a request may ask (its priority field)")
    ] = 100
    max_queue_seconds: Annotated[
        Annotated[float, msgspec.Meta(gt=0)] | None,
        _help("seconds a job may wait to start before it expires, for requests that give no max_queue_seconds"),
    ] = None
    max_attempts: Annotated[
        int,
        msgspec.Meta(ge=1, le=10),
        _help("runs a job may have in all when its group loses a rank or host mid-job (1: no retry)"),
    ] = 2
    max_batch: Annotated[
        int, msgspec.Meta(ge=1, le=256), _help("compatible jobs one pipeline call may run at once (1: no batching)")
    ] = 1
    batch_wait_ms: Annotated[
        Annotated[float, msgspec.Meta(ge=0, le=60_000)],
        _help("milliseconds a job may wait for others to batch with (0: only what is already queued)"),
    ] = 0.0
    input_allow_hosts: Annotated[
        list[str],
        _help(
            "a host whose http(s) URLs requests may give as pictures, HOST or HOST:PORT, repeatable (none: URL "
            "inputs are refused)",
            flags=["--input-allow-host"],
            metavar="HOST[:PORT]",
        ),
    ] = []

    def __post_init__(self) -> None:
        if self.job_timeout is not None and self.job_timeout <= 0:
            self.job_timeout = None  # 0 (or less) means no limit, as the CLI documents


class GroupSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How worker groups are started and watched."""

    num_devices: Annotated[
        Annotated[int, msgspec.Meta(ge=0)] | None,
        _help("ranks to start on this host (default: CUDA devices, or 1; 0: none, a front for joined hosts)"),
    ] = None
    group_size: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _help("ranks per worker group, of --nnodes x --num-devices in all (default: all in one group)"),
    ] = None
    nnodes: Annotated[
        int, msgspec.Meta(ge=1, le=1024), _help("hosts the ranks span: this one and --nnodes - 1 that join (torchrun)")
    ] = 1
    executor: Annotated[str, _help("how ranks are started: multiprocessing or torchrun")] = "multiprocessing"
    executor_options: Annotated[
        dict[str, str], _help("executor option, repeatable", flags=["--executor-option"], metavar="KEY=VALUE")
    ] = {}
    control_host: Annotated[str, _help("address the ranks connect back to")] = "127.0.0.1"
    rdzv_endpoint: Annotated[
        str | None,
        _help("HOST:PORT of the c10d rendezvous this server hosts for --nnodes > 1 (default: --control-host:29400)"),
    ] = None
    host_timeout: Annotated[Seconds, _help("seconds a joined host may go without polling before it counts as lost")] = (
        15.0
    )
    setup_timeout: Annotated[Seconds, _help("seconds a group's setup may take")] = 1800.0
    heartbeat_timeout: Annotated[Seconds, _help("seconds of rank silence before a restart")] = 30.0
    cancel_grace: Annotated[Seconds, _help("seconds a cancelled job may take to stop before a restart")] = 10.0
    error_grace: Annotated[Seconds, _help("seconds the other ranks get to leave a job that failed on one rank")] = 3.0
    stop_grace: Annotated[Seconds, _help("seconds between SIGTERM and SIGKILL when stopping ranks")] = 5.0


class RankSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What every rank process is told (part of its ``RankSpec``)."""

    backend: Annotated[str | None, _help("torch.distributed backend (default: nccl on CUDA, else gloo)")] = None
    heartbeat_interval: Annotated[Seconds, _help("seconds between a rank's heartbeats")] = 1.0
    collective_timeout: Annotated[Seconds, _help("torch.distributed collective timeout in seconds")] = 1800.0
    max_output_bytes: Annotated[Bytes, _help("largest output a job may return")] = 1 << 30
    max_loaded_loras: Annotated[
        int, msgspec.Meta(ge=1), _help("adapters each worker group keeps loaded (the least recently used leave)")
    ] = 8
    max_lora_rank: Annotated[
        int, msgspec.Meta(ge=1), _help("largest adapter rank to reserve room for when adapters hotswap (compile)")
    ] = 64


CORE_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "model": ModelSettings,
    "http": HttpSettings,
    "jobs": JobSettings,
    "group": GroupSettings,
    "rank": RankSettings,
}


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The whole tree. ``extensions`` holds the sections plugins registered, by name."""

    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    jobs: JobSettings = msgspec.field(default_factory=JobSettings)
    group: GroupSettings = msgspec.field(default_factory=GroupSettings)
    rank: RankSettings = msgspec.field(default_factory=RankSettings)
    log_level: Annotated[str, _help("log level: " + ", ".join(LOG_LEVELS))] = "INFO"
    log_format: Annotated[
        Literal["text", "json"], _help("one format for every line the server, its ranks and join print")
    ] = "text"
    extensions: dict[str, Any] = {}

    def __post_init__(self) -> None:
        level = logging.getLevelName(self.log_level) if isinstance(self.log_level, int) else self.log_level.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        self.log_level = level
        if self.rank.max_loaded_loras < self.model.max_loras_per_request:
            raise ValueError(
                f"--max-loaded-loras ({self.rank.max_loaded_loras}) must be at least --max-loras-per-request "
                f"({self.model.max_loras_per_request}): a job's adapters are all loaded at once"
            )

    def section(self, cls: type[_S]) -> _S:
        """A plugin's own section (its defaults when nothing set it)."""
        for value in self.extensions.values():
            if isinstance(value, cls):
                return value
        return cls()


_S = TypeVar("_S", bound=msgspec.Struct)


class Field(msgspec.Struct, frozen=True):
    """One setting, as the command line and the Python keywords see it."""

    section: str  # "" for the root
    name: str
    info: msgspec.inspect.Field
    help: str
    extra: dict[str, Any]

    @property
    def flags(self) -> list[str]:
        return list(self.extra.get("flags") or ["--" + self.name.replace("_", "-")])


def fields(sections: dict[str, type[msgspec.Struct]] | None = None) -> Iterator[Field]:
    """Every setting of the tree: core's sections, the plugins' ``sections``, the root's."""
    for section, cls in {**CORE_SECTIONS, **(sections or {}), "": Settings}.items():
        for info in msgspec.inspect.type_info(cls).fields:  # type: ignore[attr-defined]
            if section == "" and info.name in (*CORE_SECTIONS, "extensions"):
                continue
            meta = info.type if isinstance(info.type, msgspec.inspect.Metadata) else None
            described = meta.extra_json_schema.get("description", "") if meta and meta.extra_json_schema else ""
            yield Field(section, info.name, info, described, dict(meta.extra or {}) if meta else {})


def build(
    values: dict[str, Any],
    sections: dict[str, type[msgspec.Struct]] | None = None,
    *,
    config: dict[str, Any] | None = None,
    config_path: str = "config file",
) -> Settings:
    """Settings from flat values (``{"max_queue": 8}``; strings converted) over the variables
    (``$PARA_ATTN_SERVER_MAX_QUEUE``) over ``config`` (``read_config_file``'s) over the
    defaults. Unknown names and bad values raise ``ConfigurationError`` naming their source."""
    sections = {**CORE_SECTIONS, **(sections or {})}
    known = {field.name: field for field in fields(sections)}
    if unknown := sorted(set(values) - set(known)):
        raise ConfigurationError(f"unknown setting(s): {', '.join(unknown)}")
    values, labels = sources.layered(values, config or {}, config_path, known, dict(os.environ))
    tree: dict[str, Any] = {name: {} for name in sections}
    for name, value in values.items():
        (tree[known[name].section] if known[name].section else tree)[name] = value
    plugins = {name: cls for name, cls in sections.items() if name not in CORE_SECTIONS}
    try:
        tree["extensions"] = {name: msgspec.convert(tree.pop(name), cls, strict=False) for name, cls in plugins.items()}
        return msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(sources.explain(exc, values, known, labels)) from None


def read_config_file(path: str, sections: dict[str, type[msgspec.Struct]] | None = None) -> dict[str, Any]:
    """The settings of a TOML file (``--config``), flat, for ``build``'s ``config``; its
    keys are checked against the tree with the plugins' ``sections``."""
    return sources.config_values(sources.load_config(path), path, list(fields(sections)))


def describe_error(exc: msgspec.ValidationError) -> str:
    """msgspec's ``Expected int >= 1 - at `$.max_queue``` as ``max_queue: Expected int >= 1``."""
    message, _, where = str(exc).partition(" - at `$.")
    return f"{where.rstrip('`')}: {message}" if where else message


def check_unique(sections: dict[str, type[msgspec.Struct]]) -> None:
    """Refuse a plugin section whose field name or flag is already taken."""
    seen: dict[str, str] = {}
    for field in fields(sections):
        for key in (field.name, *field.flags):
            if key in seen and seen[key] != field.section:
                owner = seen[key] or "root"
                raise ConfigurationError(f"setting {key!r} of section {field.section!r} is defined by {owner!r} too")
            seen[key] = field.section
