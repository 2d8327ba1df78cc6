"""LoRA weight files, read in the server process: which file of a directory diffusers loads,
what its safetensors header says, and whether the adapter fits the model the ranks serve.

Only the header is read (a few kilobytes of JSON: tensor names and shapes), never the
weights, so checking an adapter at start or at ``POST /v1/loras`` costs no memory and no
rank's time. What it catches before any rank loads the file: a file that is not
safetensors or is cut short, one that holds no LoRA tensors, an adapter whose layers the
model does not have or whose shapes are another base model's (``AdapterFit.targets``, which
rank 0 reports after its setup), and a rank above what hotswapping reserved
(``AdapterFit.max_rank``). Keys in diffusers' own layout (``transformer.<module>.lora_A.weight``,
what ``save_lora_weights`` writes) are checked module by module; other layouts diffusers
converts while loading (Kohya's ``lora_down``/``lora_up``) are checked for their rank only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on a header
DOWN = (".lora_A.weight", ".lora_down.weight", ".lora.down.weight")
UP = (".lora_B.weight", ".lora_up.weight", ".lora.up.weight")


class AdapterFileError(ValueError):
    """An adapter that cannot be loaded, with the reason."""


@dataclass(frozen=True)
class AdapterFit:
    """What an adapter must fit: the model's linear layers by the name an adapter's keys
    give them (``transformer.single_transformer_blocks.0.attn.to_q``) with their (in, out)
    features, and the largest rank that can be loaded (None: any)."""

    targets: dict[str, tuple[int, int]] = field(default_factory=dict)
    max_rank: int | None = None


@dataclass(frozen=True)
class AdapterFile:
    path: Path  # the .safetensors file itself
    shapes: dict[str, list[int]]  # tensor name -> shape

    @property
    def rank(self) -> int:
        """The adapter's rank: the most rows of any of its down-projections."""
        return max((shape[0] for key, shape in self.shapes.items() if key.endswith(DOWN) and shape), default=0)


def weights_file(path: str | Path) -> Path:
    """The file diffusers' ``load_lora_weights`` reads for ``path``: the file itself, or in
    a directory ``pytorch_lora_weights.safetensors``, else its only ``.safetensors`` file."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / DEFAULT_WEIGHT_NAME).is_file():
        return path / DEFAULT_WEIGHT_NAME
    found = sorted(entry for entry in path.glob("*.safetensors") if entry.is_file())
    if len(found) != 1:
        names = ", ".join(entry.name for entry in found) or "none"
        raise AdapterFileError(f"a LoRA directory holds {DEFAULT_WEIGHT_NAME} or one .safetensors file, not: {names}")
    return found[0]


def read(path: str | Path) -> AdapterFile:
    """The adapter's tensor names and shapes, from its safetensors header (checked to
    describe a file of this size: a file cut short is refused here, not on a rank)."""
    file = weights_file(path)
    try:
        with file.open("rb") as stream:
            size = file.stat().st_size
            head = stream.read(8)
            if len(head) < 8:
                raise AdapterFileError(f"{file.name} is not a safetensors file: {size} bytes")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER, size - 8):
                raise AdapterFileError(f"{file.name} is not a safetensors file (or is cut short): bad header length")
            header = json.loads(stream.read(length))
    except OSError as exc:
        raise AdapterFileError(f"cannot read {file.name}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFileError(f"{file.name} is not a safetensors file: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"{file.name} is not a safetensors file: its header is not an object")
    shapes: dict[str, list[int]] = {}
    data = size - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            shape, (start, end) = [int(n) for n in entry["shape"]], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise AdapterFileError(f"{file.name} is not a safetensors file: bad entry {key!r}") from None
        if not 0 <= start <= end <= data:
            raise AdapterFileError(f"{file.name} is cut short or corrupt: {key!r} lies past its end")
        shapes[key] = shape
    return AdapterFile(file, shapes)


def check(path: str | Path, fit: AdapterFit | None) -> AdapterFile:
    """The adapter at ``path`` when it can be loaded into the model ``fit`` describes
    (None: only the file is checked); ``AdapterFileError`` with the reason otherwise."""
    adapter = read(path)
    downs = [key for key in adapter.shapes if key.endswith(DOWN)]
    if not downs:
        raise AdapterFileError(f"{adapter.path.name} holds no LoRA weights (no lora_A or lora_down tensors)")
    if fit is None:
        return adapter
    if fit.max_rank is not None and adapter.rank > fit.max_rank:
        raise AdapterFileError(
            f"its rank is {adapter.rank}, above --max-lora-rank {fit.max_rank} (the rank reserved for "
            "hotswapping adapters into the compiled model): start the server with a larger --max-lora-rank"
        )
    if fit.targets:
        _check_modules(adapter, fit.targets)
    return adapter


def _check_modules(adapter: AdapterFile, targets: dict[str, tuple[int, int]]) -> None:
    components = {name.partition(".")[0] for name in targets}
    missing: dict[str, None] = {}  # each module once (its lora_A and lora_B), in order
    for key, shape in adapter.shapes.items():
        suffix = next((end for end in (".lora_A.weight", ".lora_B.weight") if key.endswith(end)), None)
        if suffix is None:
            continue  # another layout: diffusers converts its names while loading
        module = key[: -len(suffix)]
        if module.partition(".")[0] not in components:
            module = f"transformer.{module}"  # peft's own keys name no component
        features = targets.get(module)
        if features is None:
            missing[module] = None
            continue
        wanted = features[0] if suffix == ".lora_A.weight" else features[1]
        got = shape[1] if suffix == ".lora_A.weight" else shape[0]
        if len(shape) != 2 or got != wanted:
            raise AdapterFileError(
                f"{module} is {features[0]}->{features[1]} in this model, the adapter was made for one of "
                f"{'in' if suffix == '.lora_A.weight' else 'out'} {got} features: an adapter for another base model"
            )
    if missing:
        raise AdapterFileError(
            f"targets {len(missing)} layer(s) this model does not have, such as {next(iter(missing))!r}: "
            "an adapter for another model"
        )
