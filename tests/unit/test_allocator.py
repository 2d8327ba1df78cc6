"""allocator: the settings a long-running server applies at start, and the figures it reads.

Each case runs in a process of its own, as the server does it: at start, before threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from para_attn_server import allocator

pytestmark = pytest.mark.skipif(allocator.heap() is None, reason="glibc 2.33+ only")

# A freed 1 MiB output raises glibc's own threshold past 1 MiB; then ten 96 KiB outputs are
# held, as the output cache holds them: mapped (given back one by one) or in the heap.
HELD_OUTPUTS = """
import json, sys
from para_attn_server import allocator
tuned = allocator.tune()
big = bytes(1 << 20); del big
before = allocator.heap().mapped
held = [bytes(96 << 10) for _ in range(10)]
print(json.dumps({"tuned": tuned, "mapped": allocator.heap().mapped - before}))
"""


def held(env: dict[str, str]) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", HELD_OUTPUTS], env=env, capture_output=True, text=True, check=True)
    result: dict[str, int] = json.loads(done.stdout)
    return result


def plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}


def test_once_set_outputs_of_64_kib_or_more_stay_mapped_after_a_larger_one_was_freed() -> None:
    result = held(plain_env())

    assert result["tuned"]
    # Most of them: a hole already free in the heap still takes one (glibc maps only what
    # would otherwise grow the heap).
    assert result["mapped"] >= 5 * (96 << 10)


def test_an_operators_own_allocator_settings_are_left_alone() -> None:
    result = held({**plain_env(), "MALLOC_ARENA_MAX": "8"})

    assert not result["tuned"]
    assert result["mapped"] < 96 << 10  # glibc's own threshold: these went to the heap


def test_the_figures_add_up() -> None:
    heap = allocator.heap()

    assert heap is not None
    assert heap.in_use >= heap.mapped >= 0
    assert heap.free >= 0
    assert heap.python_blocks == pytest.approx(sys.getallocatedblocks(), rel=0.1)
