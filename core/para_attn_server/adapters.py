"""Adapters (LoRA) that requests choose by name: what the operator registered, the request
field that names them, and what the ranks receive.

The operator offers adapters with ``--lora NAME=PATH`` and ``--lora-dir DIR``; a request of a
predictor that says ``supports_loras`` may carry ``loras: [{"name": ..., "scale": ...}]``.
The server checks every name against its ``Adapters`` (an unknown one is a 400 naming
``loras[i].name``) and sends each rank ``[{"name", "scale", "path"}]`` with the job; the
ranks load, apply and take the adapters off again themselves (``JobContext.loras``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

from para_attn_server.errors import ConfigurationError, InputError

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
    """The adapters this server offers, by name, each an absolute path."""

    def __init__(self, paths: dict[str, str] | None = None, max_per_request: int = 4) -> None:
        self.paths = dict(paths or {})
        self.max_per_request = max_per_request

    @classmethod
    def from_settings(cls, loras: dict[str, str], lora_dir: str | None, max_per_request: int = 4) -> Adapters:
        """``--lora`` and ``--lora-dir``'s adapters; a missing path, a bad name or a name
        given twice is a ``ConfigurationError`` naming the flag."""
        paths: dict[str, str] = {}
        if lora_dir is not None:
            paths.update(_scan(lora_dir))
        for name, path in loras.items():
            _check_name(name, "--lora")
            if name in paths:
                raise ConfigurationError(f"--lora: {name!r} is also an adapter of --lora-dir {lora_dir!r}")
            paths[name] = _adapter_path(path, f"--lora {name}")
        return cls(paths, max_per_request)

    def names(self) -> list[str]:
        return sorted(self.paths)

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
