"""Adapters (LoRA) that requests choose by name: what the operator registered, the request
field that names them, and what the ranks receive.

The operator offers adapters with ``--lora NAME=PATH`` and ``--lora-dir DIR``; a request of a
predictor that says ``supports_loras`` may carry ``loras: [{"name": ..., "scale": ...}]``.
The server checks every name against its ``Adapters`` (an unknown one is a 400 naming
``loras[i].name``) and sends each rank ``[{"name", "scale", "path"}]`` with the job; the
ranks load, apply and take the adapters off again themselves (``JobContext.loras``).
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

from para_attn_client.wire import Adapter as AdapterInfo  # what GET /v1/loras lists, as the client reads it
from para_attn_server import lorafiles
from para_attn_server.errors import ConfigurationError, InputError
from para_attn_server.lorafiles import AdapterFileError, AdapterFit

log = logging.getLogger("para_attn_server.adapters")
LORAS = "loras"  # the request field
# An adapter's name becomes a key of the model's module dicts: no '.', nothing odd.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
Scale = Annotated[float, msgspec.Meta(ge=-10, le=10, description="how strongly it applies (1: as trained)")]


class LoraRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One adapter a request applies: a registered name and its scale."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="a registered adapter's name")]
    scale: Scale = 1.0


class Lora(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One adapter as the ranks get it: its name, scale and where its weights are."""

    name: str
    scale: float
    path: str


class AdapterReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a rank's adapter cache did for one job (``JobContext.report_adapters``): rank 0
    sends it with the job's end, and the server keeps it per group (the dispatcher's
    affinity, the metrics)."""

    loaded: tuple[str, ...] = ()  # every adapter loaded after the job, least recently used first
    loads: tuple[tuple[str, float], ...] = ()  # adapters this job loaded, with the seconds each took
    evicted: tuple[str, ...] = ()  # adapters this job evicted


# Seconds an adapter took to load: buckets of the metrics' histogram.
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class AdapterStats(msgspec.Struct):
    """A worker group's adapter cache as its rank 0 reported it: what it holds now, and
    what loading cost over the group's life (a restart empties the cache; the counts go on)."""

    loaded: list[str] = []  # least recently used first
    loads: int = 0
    evictions: int = 0
    load_seconds_sum: float = 0.0
    # Loads per bucket: at most LOAD_BUCKETS[i] seconds (and above the one before), then the rest.
    load_seconds_counts: list[int] = msgspec.field(default_factory=lambda: [0] * (len(LOAD_BUCKETS) + 1))

    def add(self, report: AdapterReport) -> None:
        self.loaded = list(report.loaded)
        self.evictions += len(report.evicted)
        for _, seconds in report.loads:
            self.loads += 1
            self.load_seconds_sum += seconds
            self.load_seconds_counts[bisect.bisect_left(LOAD_BUCKETS, seconds)] += 1


def request_annotation(max_per_request: int) -> Any:
    """The ``loras`` field's type in a request schema."""
    return Annotated[
        list[LoraRef],
        msgspec.Meta(
            max_length=max_per_request,
            description="adapters (LoRA) to apply to this job, each by its registered name with a scale; "
            "none: the base model, exactly",
        ),
    ]


class Adapters:
    """The adapters this server offers, by name, each an absolute path.

    ``--lora`` and ``--lora-dir`` register them at start; ``add`` and ``remove`` at run time
    (``/v1/loras``), where a path must lie under ``--lora-dir``. Once the ranks reported what
    an adapter must fit (``fit``), every adapter is checked against it as it is registered
    (``lorafiles.check``). What ``add`` registered is kept in ``state_file`` (when given) and
    registered again by the next start, so a job accepted for it survives a restart.
    """

    def __init__(
        self, paths: dict[str, str] | None = None, max_per_request: int = 4, lora_dir: str | None = None
    ) -> None:
        self.paths = dict(paths or {})
        self.max_per_request = max_per_request
        self.lora_dir = None if lora_dir is None else Path(lora_dir).expanduser().resolve()
        self.sources = dict.fromkeys(self.paths, "--lora")
        self.ranks: dict[str, int] = {}
        self.fit: AdapterFit | None = None
        self.state_file: Path | None = None

    @classmethod
    def from_settings(cls, loras: dict[str, str], lora_dir: str | None, max_per_request: int = 4) -> Adapters:
        """``--lora`` and ``--lora-dir``'s adapters; a missing path, a bad name or a name
        given twice is a ``ConfigurationError`` naming the flag."""
        found = {} if lora_dir is None else _scan(lora_dir)
        adapters = cls({}, max_per_request, lora_dir)
        for name, path in found.items():
            adapters.paths[name], adapters.sources[name] = path, "--lora-dir"
        for name, path in loras.items():
            _check_name(name, "--lora")
            if name in adapters.paths:
                raise ConfigurationError(f"--lora: {name!r} is also an adapter of --lora-dir {lora_dir!r}")
            adapters.paths[name], adapters.sources[name] = _adapter_path(path, f"--lora {name}"), "--lora"
        return adapters

    def names(self) -> list[str]:
        return sorted(self.paths)

    def restore(self, state_file: Path) -> None:
        """Keep what ``add`` registers in ``state_file``, and register again what an earlier
        run added there (checked by ``fits`` once the ranks are up)."""
        self.state_file = state_file
        for name, path in self._saved().items():
            if self.lora_dir is not None and Path(path).is_relative_to(self.lora_dir) and Path(path).exists():
                self.paths[name], self.sources[name] = path, "api"
            else:
                log.warning("adapter %r added by an earlier run is gone (%s): dropped", name, path)
        self._save()

    def fits(self, fit: AdapterFit | None) -> None:
        """The ranks are up and said what adapters must fit (None: nothing): check every
        registered adapter against it. One of ``--lora`` or ``--lora-dir`` that does not fit
        is a ``ConfigurationError`` naming it; one added at run time is dropped, logged."""
        self.fit = fit
        for name in self.names():
            try:
                self.ranks[name] = lorafiles.check(self.paths[name], fit).rank
            except AdapterFileError as exc:
                if self.sources[name] != "api":
                    raise ConfigurationError(f"{self.sources[name]} {name}: cannot load it: {exc}") from None
                log.warning("adapter %r added by an earlier run no longer loads: %s", name, exc)
                self.remove(name)

    def add(self, name: str, path: str) -> AdapterInfo:
        """Register ``path`` (under ``--lora-dir``, relative to it or absolute) as ``name``.
        ``InputError`` naming ``name`` or ``path`` for a bad or taken name, a path outside
        ``--lora-dir``, or an adapter that cannot load into the model."""
        if not NAME.fullmatch(name):
            raise InputError("1-64 letters, digits, '_' or '-', the first a letter or digit", "name")
        if name in self.paths:
            raise InputError(f"an adapter is already named {name!r}: DELETE /v1/loras/{name} first", "name")
        if self.lora_dir is None:
            raise InputError("adapters are registered at run time only from --lora-dir, which is not set", "path")
        resolved = (self.lora_dir / path).resolve()  # an absolute path replaces the base; symlinks resolved
        if not resolved.is_relative_to(self.lora_dir) or resolved == self.lora_dir:
            raise InputError(f"must lie under --lora-dir ({self.lora_dir.name}/)", "path")
        if not resolved.exists():
            raise InputError(f"{path!r} does not exist under --lora-dir", "path")
        try:
            rank = lorafiles.check(resolved, self.fit).rank
        except AdapterFileError as exc:
            raise InputError(f"cannot load it: {exc}", "path") from None
        self.paths[name], self.sources[name], self.ranks[name] = str(resolved), "api", rank
        self._save()
        return AdapterInfo(name, "api", rank, [])

    def remove(self, name: str) -> bool:
        """Take ``name`` off the register (rank caches keep it until evicted); False when
        no adapter has that name."""
        if self.paths.pop(name, None) is None:
            return False
        self.sources.pop(name, None)
        self.ranks.pop(name, None)
        self._save()
        return True

    def info(self, name: str, loaded_by: list[int]) -> AdapterInfo:
        return AdapterInfo(name, self.sources.get(name, "--lora"), self.ranks.get(name), loaded_by)

    def check(self, loras: Sequence[Any]) -> None:
        """Refuse a name that is not registered, or one named twice (``InputError`` naming
        ``loras[i].name``)."""
        seen: set[str] = set()
        for index, lora in enumerate(loras):
            name = _name_of(lora)
            field = f"{LORAS}[{index}].name"
            if name not in self.paths:
                offered = ", ".join(self.names()) or "none: start the server with --lora or --lora-dir"
                raise InputError(f"no adapter is named {name!r}; registered: {offered}", field)
            if name in seen:
                raise InputError(f"adapter {name!r} is named twice", field)
            seen.add(name)

    def resolve(self, loras: Sequence[Any]) -> list[dict[str, Any]]:
        """What the ranks get: each adapter with its path (checked as ``check`` does)."""
        self.check(loras)
        return [
            {"name": _name_of(lora), "scale": float(_scale_of(lora)), "path": self.paths[_name_of(lora)]}
            for lora in loras
        ]

    def _saved(self) -> dict[str, str]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            saved = msgspec.json.decode(self.state_file.read_bytes(), type=dict[str, str])
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("cannot read %s: %s", self.state_file, exc)
            return {}
        return {name: path for name, path in saved.items() if name not in self.paths}

    def _save(self) -> None:
        """What ``add`` registered, written whole and renamed into place (atomic)."""
        if self.state_file is None:
            return
        added = {name: path for name, path in self.paths.items() if self.sources[name] == "api"}
        part = self.state_file.with_suffix(".part")
        part.write_bytes(msgspec.json.encode(added))
        os.replace(part, self.state_file)


def names_in(inputs: dict[str, Any]) -> list[str]:
    """The adapters a request's inputs apply, by name."""
    return [_name_of(lora) for lora in inputs.get(LORAS) or ()]


def _name_of(lora: Any) -> str:
    return str(lora["name"] if isinstance(lora, dict) else lora.name)


def _scale_of(lora: Any) -> float:
    return float(lora.get("scale", 1.0) if isinstance(lora, dict) else lora.scale)


def _check_name(name: str, flag: str) -> None:
    if not NAME.fullmatch(name):
        raise ConfigurationError(
            f"{flag}: {name!r} is not an adapter name: 1-64 letters, digits, '_' or '-', the first a letter or digit"
        )


def _adapter_path(path: str, flag: str) -> str:
    """``path`` made absolute, when it is a .safetensors file or a directory."""
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():
        return str(resolved)
    if not resolved.exists():
        raise ConfigurationError(f"{flag}: {path!r} does not exist")
    if not resolved.is_file() or resolved.suffix != ".safetensors":
        raise ConfigurationError(f"{flag}: {path!r} is neither a directory nor a .safetensors file")
    return str(resolved)


def _scan(lora_dir: str) -> dict[str, str]:
    """Every adapter in ``lora_dir``: a ``.safetensors`` file by its stem, a folder that
    holds one by its name (hidden entries are skipped)."""
    root = Path(lora_dir).expanduser()
    if not root.is_dir():
        raise ConfigurationError(f"--lora-dir: {lora_dir!r} is not a directory")
    found: dict[str, str] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if not any(entry.glob("*.safetensors")):
                continue  # a folder that holds no weights is no adapter
            name = entry.name
        elif entry.suffix == ".safetensors":
            name = entry.stem
        else:
            continue
        _check_name(name, f"--lora-dir {lora_dir}")
        if name in found:
            raise ConfigurationError(f"--lora-dir: two adapters are named {name!r}")
        found[name] = str(entry.resolve())
    return found
