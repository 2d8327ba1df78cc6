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


SETTLED = """
import gc, json, weakref
from para_attn_server import allocator

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a

gc.disable()  # as if no collection had come yet: start-up's garbage is still there
kept = [cycle() for _ in range(1000)]  # what start-up keeps (modules, the app, the model)
start_garbage = weakref.ref(cycle())
before = len(gc.get_objects())
allocator.settle()
after = len(gc.get_objects())
later = weakref.ref(cycle())
gc.collect()
print(json.dumps({"before": before, "after": after, "start_garbage": start_garbage() is None,
                  "later_garbage": later() is None, "frozen": gc.get_freeze_count()}))
"""


def test_settling_collects_start_ups_garbage_and_leaves_the_rest_out_of_later_collections() -> None:
    done = subprocess.run([sys.executable, "-c", SETTLED], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)

    assert result["start_garbage"], "start-up's garbage was frozen instead of collected"
    assert result["frozen"] >= 3000  # the kept cycles (2 nodes and a dict... each) among them
    assert result["after"] < result["before"] - 3000  # a full collection walks none of them now
    assert result["later_garbage"]  # garbage made after it is still collected


def test_the_idle_collector_collects_once_quiet_after_jobs_and_not_again_until_more() -> None:
    state: dict[str, int | None] = {"quiet": None}  # busy
    collector = allocator.IdleCollector(lambda: state["quiet"])

    busy = [collector.poll() for _ in range(3)]
    state["quiet"] = 5  # quiet, 5 jobs submitted so far
    first_look, second_look = collector.poll(), collector.poll()
    blocks = collector.python_blocks
    still_quiet = [collector.poll() for _ in range(3)]
    state["quiet"] = 6  # a job came and went between two looks
    more = [collector.poll(), collector.poll()]

    assert busy == [False] * 3  # never while jobs wait or run
    assert (first_look, second_look) == (False, True)  # quiet for a whole interval first
    assert blocks > 0
    assert still_quiet == [False] * 3  # no job since: nothing to collect
    assert more == [False, True]
    assert collector.collections == 2
