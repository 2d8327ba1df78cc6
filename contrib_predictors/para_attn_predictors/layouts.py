"""How a group's ranks split a job: Ulysses, ring and CFG degrees, chosen or automatic.

    -o ulysses=U -o ring=R -o cfg=C      U x R x C = the group's size; "auto" (the default)
                                         fills what is not given

- **ulysses** splits the attention heads (all-to-all): it must divide the model's head count.
- **ring** splits only the sequence (ring attention): para-attn runs it on CUDA alone.
- **cfg** 2 runs a guided model's conditional and unconditional passes at once, each on half
  of the ranks (``guidance``); each half splits its pass over U x R ranks. A request without
  guidance runs its one pass on both halves alike.

Automatic, as before explicit degrees existed: no CFG split, Ulysses over the largest share
of the ranks that divides the head count, ring attention over the rest. The layout is decided
once, in every process, before a rank loads weights; a layout that cannot work is a
``ConfigurationError`` naming the option, and every request size is then checked against its
sequence split (U x R) at submit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from para_attn_server import ConfigurationError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

# An option's type: a degree, or "auto" (chosen from the others and the group's size).
Degree = Annotated[int, msgspec.Meta(ge=1, le=1024)] | Literal["auto"]
AUTO: Literal["auto"] = "auto"
# The mesh's dimensions, outermost first: ranks 0..U*R-1 hold the guided pass. "batch" (size
# 1) is para-attn's own dimension, which its adapters look up.
MESH_DIMS = ("cfg", "batch", "ring", "ulysses")


class LayoutOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``--option`` values that choose a layout (a predictor's options include them)."""

    ulysses: Degree = AUTO
    ring: Degree = AUTO
    cfg: Degree = AUTO


@dataclass(frozen=True)
class Layout:
    ulysses: int = 1
    ring: int = 1
    cfg: int = 1

    @property
    def sequence(self) -> int:
        """Ranks one pass's sequence splits across: a request's tokens must divide by it."""
        return self.ulysses * self.ring

    @property
    def size(self) -> int:
        return self.sequence * self.cfg

    def degrees(self) -> dict[str, int]:
        return {"ulysses": self.ulysses, "ring": self.ring, "cfg": self.cfg}

    def __str__(self) -> str:
        return " x ".join(f"{name}={value}" for name, value in self.degrees().items())


def choose_layout(
    options: LayoutOptions, world_size: int, *, heads: int, device_type: str, guidance: str | None
) -> Layout:
    """The layout ``options`` ask for on ``world_size`` ranks of a model with ``heads``
    attention heads; ``guidance`` says how the model guides (None: it runs one pass per step).
    Raises ``ConfigurationError`` with the reason when it cannot work."""
    cfg = _given(options.cfg) or 1
    if cfg > 2:
        raise ConfigurationError(
            f"-o cfg={cfg}: classifier-free guidance makes two passes per step (guided and unguided), so cfg is 1 or 2"
        )
    if cfg == 2 and guidance is None:
        raise ConfigurationError(
            "-o cfg=2: this model runs one transformer pass per step (no classifier-free guidance), "
            "so there is no second pass to run beside it"
        )
    if world_size % cfg:
        raise ConfigurationError(f"-o cfg={cfg} does not divide the group's {world_size} rank(s)")
    rest = world_size // cfg  # the ranks that split one pass
    ulysses, ring = _given(options.ulysses), _given(options.ring)
    if ulysses is None:
        ulysses = math.gcd(rest, heads) if ring is None else _remaining("ring", ring, rest, cfg, world_size)
    if ring is None:
        ring = _remaining("ulysses", ulysses, rest, cfg, world_size)
    layout = Layout(ulysses=ulysses, ring=ring, cfg=cfg)
    if layout.size != world_size:
        raise ConfigurationError(f"{layout} makes {layout.size} rank(s), but the group has {world_size}")
    if heads % ulysses:
        raise ConfigurationError(
            f"-o ulysses={ulysses} does not divide the model's {heads} attention heads (Ulysses splits the heads); "
            f"use a divisor of {heads}, and ring for the rest (CUDA)"
        )
    if ring > 1 and device_type != "cuda":
        raise ConfigurationError(
            f"{layout}: ring attention (ring={ring}) runs only on CUDA in para-attn; on {device_type} the "
            f"{world_size} rank(s) need ulysses x cfg = {world_size}, and ulysses must divide the {heads} heads"
        )
    return layout


def _given(degree: Degree) -> int | None:
    return None if isinstance(degree, str) else degree


def _remaining(name: str, given: int, rest: int, cfg: int, world_size: int) -> int:
    if rest % given:
        raise ConfigurationError(
            f"-o {name}={given}" + (f" with cfg={cfg}" if cfg > 1 else "") + f" does not divide the group's "
            f"{world_size} rank(s)"
        )
    return rest // given


def layout_mesh(layout: Layout, device_type: str) -> DeviceMesh:
    """The device mesh of ``layout`` over all ranks (a collective: every rank calls it)."""
    from torch.distributed.device_mesh import init_device_mesh

    shape = (layout.cfg, 1, layout.ring, layout.ulysses)
    return init_device_mesh(device_type, shape, mesh_dim_names=MESH_DIMS)
