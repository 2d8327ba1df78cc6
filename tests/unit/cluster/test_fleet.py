"""The fleet's side of joined hosts, over a recording job service: a host is checked before
it joins, gets groups with indexes of their own, follows its orders (a long poll answered
when they change), reports its ranks; a silent host is lost, a drained one leaves, and a
host that joins under a name in use replaces the earlier one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from para_attn_server.cluster.fleet import REPLACED, Fleet, HostRefusedError
from para_attn_server.cluster.remote import RemoteExecutor
from para_attn_server.cluster.spec import HostEvent, HostOffer, PluginDist
from para_attn_server.errors import SetupError
from para_attn_server.plugin.manager import version
from para_attn_server.views import HostStatus
from para_attn_server.workers.executor import RankSpec
from tests.unit.fakes import deadline

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60, method="thread")]
PLUGINS = [PluginDist("noop", "para-attn-server", version())]
SPEC = RankSpec(world_size=1, control_host="127.0.0.1", control_port=4000, token="t", generation=1, join_token="j")


@dataclass
class Group:
    index: int
    executor: RemoteExecutor
    host: str


@dataclass
class Service:
    """What the fleet calls on the job service, recorded."""

    hosts: dict[str, HostStatus] = field(default_factory=dict)
    added: list[Group] = field(default_factory=list)
    removed: list[tuple[int, str, float | None]] = field(default_factory=list)
    removing: asyncio.Event = field(default_factory=asyncio.Event)  # set at each removal

    def add_group(self, group: Group, refused: Any = None) -> None:
        self.added.append(group)

    async def remove_group(self, group: Group, reason: str, drain: float | None = None) -> None:
        self.removed.append((group.index, reason, drain))
        self.removing.set()


def offer(name: str = "host-a", **changes: Any) -> HostOffer:
    fields: dict[str, Any] = {
        "name": name, "server_version": version(), "plugins": PLUGINS, "num_devices": 2, "group_size": None,
        "device": "cpu", **changes,
    }  # fmt: skip
    return HostOffer(**fields)


@pytest.fixture
async def fleet() -> Fleet:
    return Fleet(
        Service(), "j", PLUGINS, lambda index, executor, host, local: Group(index, executor, host),  # type: ignore[arg-type,return-value]
        group_size=1, executor="multiprocessing", executor_options={}, host_timeout=0.3, drain_timeout=7,
        first_index=2,
    )  # fmt: skip


def service(fleet: Fleet) -> Service:
    return fleet.service  # type: ignore[return-value]


async def test_a_host_is_refused_with_the_reason(fleet: Fleet) -> None:
    refusals = {
        "version": offer(server_version="0.0.1"),
        "plugins": offer(plugins=[*PLUGINS, PluginDist("extra", "extra-dist", "1.0")]),
        "name": offer(name="no spaces allowed"),
        "group size": offer(group_size=2),
        "devices": offer(num_devices=3, group_size=2),
    }
    reasons = {what: fleet.refusal(o) for what, o in refusals.items()}
    assert reasons["version"] == f"para-attn-server 0.0.1 here, {version()} on the server"
    assert "plugin 'extra' (extra-dist 1.0) is installed here but not loaded by the server" in reasons["plugins"]
    assert reasons["name"] is not None
    assert reasons["name"].startswith("--name 'no spaces allowed'")
    assert reasons["group size"] == "--group-size 2: the server's groups have 1 rank(s) (its --group-size)"
    assert reasons["devices"] is not None  # 3 devices into groups of 2 (also a group size the server lacks)
    fleet.register(offer())
    with pytest.raises(HostRefusedError, match="this host's devices are cuda; the fleet's are cpu"):
        fleet.register(offer("host-b", device="cuda"))


async def test_a_host_gets_groups_of_its_own_and_their_generations_as_orders(fleet: Fleet) -> None:
    accepted = fleet.register(offer())
    added = service(fleet).added
    assert [(g.index, g.host) for g in added] == [(2, "host-a"), (3, "host-a")]
    assert [(o.group, o.local, o.spec) for o in accepted.orders.groups] == [(2, 0, None), (3, 1, None)]
    row = service(fleet).hosts["host-a"]
    assert (row.state, row.devices, row.group_size) == ("serving", 2, 1)

    poll = asyncio.ensure_future(fleet.orders(accepted.host_id, accepted.orders.seq, 5))
    await added[0].executor.launch(SPEC)  # the group starts a generation: the poll is answered
    orders = await deadline(poll)
    spec = orders.groups[0].spec
    assert spec is not None
    assert (spec.generation, spec.join_token) == (1, "")

    fleet.report(accepted.host_id, [HostEvent(group=2, generation=1, kind="started", pids={0: 41})])
    assert added[0].executor.pids() == {0: 41}
    fleet.report(accepted.host_id, [HostEvent(group=2, generation=1, kind="exited", detail="rank 0 (pid 41) exited")])
    assert await deadline(added[0].executor.wait_exit()) == "rank 0 (pid 41) exited on host host-a"


async def test_a_silent_host_is_lost_and_its_groups_leave(fleet: Fleet) -> None:
    accepted = fleet.register(offer())
    group = service(fleet).added[0]
    await group.executor.launch(SPEC)
    fleet.start()
    reason = await deadline(group.executor.wait_exit())  # as a rank's exit would: the group faults
    assert reason.startswith("host host-a lost: sent no poll for")
    with pytest.raises(SetupError, match="host host-a is gone"):
        await group.executor.launch(SPEC)
    orders = await fleet.orders(accepted.host_id, 0, 0)
    assert orders.state == "lost"
    while len(service(fleet).removed) < 2:
        await deadline(service(fleet).removing.wait())
        service(fleet).removing.clear()
    assert [(index, drain) for index, _, drain in service(fleet).removed] == [(2, None), (3, None)]
    assert service(fleet).hosts["host-a"].state == "lost"
    await fleet.close()


async def test_a_drained_host_leaves_once_its_groups_are_out(fleet: Fleet) -> None:
    accepted = fleet.register(offer())
    orders = fleet.drain(accepted.host_id)
    assert orders.state == "draining"
    while (orders := await fleet.orders(accepted.host_id, orders.seq, 5)).state == "draining":
        pass
    assert (orders.state, orders.reason) == ("left", "drained")
    assert [(index, drain) for index, _, drain in service(fleet).removed] == [(2, 7), (3, 7)]


async def test_a_host_joining_under_a_name_in_use_replaces_the_earlier_one(fleet: Fleet) -> None:
    earlier = fleet.register(offer())
    later = fleet.register(offer())
    orders = await fleet.orders(earlier.host_id, 0, 0)
    assert (orders.state, orders.reason) == ("lost", REPLACED)
    assert [g.index for g in service(fleet).added] == [2, 3, 4, 5]
    assert (await fleet.orders(later.host_id, 0, 0)).state == "serving"
    assert service(fleet).hosts["host-a"].state == "serving"  # the row is the newest host's
    with pytest.raises(KeyError):
        await fleet.orders("not-a-host", 0, 0)
