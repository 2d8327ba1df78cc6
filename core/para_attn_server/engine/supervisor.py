"""Keeps every worker group serving: a group that faults is started again, by itself.

Each group has its own loop: wait for a fault, wait until the job the group held has ended
(it fails with the fault's reason, or runs again elsewhere), then start a new generation,
retrying a failed start with doubling back-off. Other groups keep running meanwhile; queued
jobs wait for any group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from para_attn_server.errors import SetupError

if TYPE_CHECKING:
    from para_attn_server.engine.contract import Group

log = logging.getLogger("para_attn_server.jobs")


async def start_with_backoff(group: Group, backoff: float, backoff_max: float) -> None:
    """Start ``group``, retrying a failed start after ``backoff`` seconds, doubling."""
    delay = backoff
    while True:
        try:
            await group.start()
            return
        except SetupError as exc:
            log.error("restart failed: %s; retrying in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, backoff_max)


async def supervise(
    group: Group,
    idle: Callable[[], Awaitable[None]],
    restarted: Callable[[], None],
    backoff: float,
    backoff_max: float,
) -> None:
    """Run forever (until cancelled): restart ``group`` after each fault. ``idle()`` returns
    once the group runs no job; ``restarted()`` is called after each successful restart."""
    while True:
        await asyncio.wait({group.fault})  # wait, not await: cancelling us must not cancel it
        await idle()
        await start_with_backoff(group, backoff, backoff_max)
        group.restarts += 1
        restarted()
