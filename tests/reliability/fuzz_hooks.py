"""Schemathesis hooks for test_fuzz.py (loaded through ``SCHEMATHESIS_HOOKS``).

The predictors' own limits allow jobs that run for minutes (``noop``'s ``steps`` up to
100,000 of up to 60 s each, ``tiny``'s 256x256 at 50 steps) and ``wait`` lets a request
block for 600 s. The fuzzer would spend its time waiting on them, so a generated value that
is *valid but costly* is lowered to a cheap valid one. Invalid values are left alone, so
negative cases stay negative.
"""

from __future__ import annotations

from typing import Any

import schemathesis

# field -> (highest cheap value, the field's own valid range and step)
CHEAP: dict[str, tuple[float, float, float, float]] = {
    "steps": (3, 0, 100_000, 1),  # noop
    "step_seconds": (0.01, 0, 60, 0),  # noop
    "size": (65_536, 0, 1 << 30, 1),  # noop
    "num_inference_steps": (2, 1, 50, 1),  # tiny
    "width": (64, 16, 256, 16),  # tiny
    "height": (64, 16, 256, 16),  # tiny
    "wait": (0.5, 0, 600, 0),  # query parameter of the /v1 routes
}


def _cheapen(values: Any) -> Any:
    if not isinstance(values, dict):
        return values
    out = dict(values)
    for name, (cheap, low, high, step) in CHEAP.items():
        value = out.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        valid = low <= value <= high and (step == 0 or (value - low) % step == 0)
        if valid and value > cheap:
            out[name] = type(value)(cheap)
    return out


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    # map_case, not map_body/map_query: the coverage phase applies only case hooks.
    case.body = _cheapen(case.body)
    case.query = _cheapen(case.query)
    return case
