"""Request sizes a model and its layout can run: checked at submit, with the sizes that work.

A job whose token sequence does not split evenly across the ranks of one pass (ulysses x
ring), or whose positions run past the model's rotary table, would fail on every rank;
the server refuses it instead with a 400 that names the field and the nearest sizes that work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from para_attn_server import InputError

SIDE_STEP, SIDE_MIN, SIDE_MAX = 16, 16, 2048  # the predictors' Side field: multiples of 16
NEAREST = 2  # sizes offered on each side of the asked one


def check_split(tokens_of: Callable[[dict[str, Any]], int], inputs: dict[str, Any], ranks: int, layout: str) -> None:
    """Refuse, naming ``height``, sizes whose tokens (``tokens_of``) do not divide by ``ranks``,
    offering the nearest heights and widths (the other sides kept) whose tokens do."""
    tokens = tokens_of(inputs)
    if tokens % ranks == 0:
        return
    frames = f" x {inputs['num_frames']} frame(s)" if "num_frames" in inputs else ""
    offers = []
    for field in ("height", "width"):

        def works(value: int, field: str = field) -> bool:
            return tokens_of({**inputs, field: value}) % ranks == 0

        near = nearest_sizes(works, inputs[field])
        if near:
            offers.append(f"{field} {' or '.join(map(str, near))}")
    offer = f"; sizes that work near it: {', or '.join(offers)}" if offers else ""
    raise InputError(
        f"{inputs['width']}x{inputs['height']}{frames} make {tokens} tokens, which do not split across "
        f"{ranks} ranks ({layout}){offer}",
        "height",
    )


def nearest_sizes(works: Callable[[int], bool], asked: int) -> list[int]:
    """Up to ``NEAREST`` allowed sides below ``asked`` and as many above it that ``works``."""
    below = [v for v in range(asked - SIDE_STEP, SIDE_MIN - 1, -SIDE_STEP) if works(v)][:NEAREST]
    above = [v for v in range(asked + SIDE_STEP, SIDE_MAX + 1, SIDE_STEP) if works(v)][:NEAREST]
    return sorted(below) + above


def check_positions(field: str, value: int, positions: int, limit: int, largest: int) -> None:
    """Refuse ``value`` of ``field`` when it makes more ``positions`` along its axis than the
    model's rotary embedding covers (``limit``); ``largest`` is the largest value that fits."""
    if positions > limit:
        raise InputError(
            f"{value} makes {positions} positions along this axis, past the {limit} this model's rotary "
            f"embedding covers (its rope_max_seq_len): at most {largest}",
            field,
        )
