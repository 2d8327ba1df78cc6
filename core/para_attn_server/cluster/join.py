"""``para-attn-server join URL --token-file F --num-devices N``: this host's part of a server.

Against a server whose one group spans hosts (``--nnodes`` > 1, ``--executor torchrun``) it
runs this host's node of that group (below). Otherwise (``--group-size``, or a server without
``--nnodes``) the host brings groups of its own: ``hostagent.serve_host``.

It proves the join token to the server and has the server prove it back before it sends
or takes anything else (``auth``; a fake server at the URL gets a nonce and ``join`` exits
2), fetches the group's ``JoinSpec`` (signed by the server; never a pickle), refuses when
this host's plugins or their versions differ from the server's or when it offers another
number of ranks than the group's nodes have, and runs torchrun's elastic agent for this
node, one per generation of the group, through its own way to the rendezvous (a
``tunnel.StoreForwarder``: the store's gate must prove the token too). When the server
launches a new generation (after a fault anywhere in the group) the old agent is stopped and
a new one starts; when the agent exits while the server still waits for its generation, it
is started again after a back-off. The agent dies with this process
(``PR_SET_PDEATHSIG``) and its ranks die with the agent, so a ``join`` killed by SIGKILL takes
its node out of the group at once; running ``join`` again brings it back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

import httpx
import msgspec

from para_attn_server.cluster.agent import local_address
from para_attn_server.cluster.auth import JoinAuth, RouteMissingError, hello_proof
from para_attn_server.cluster.spec import (
    JOIN_ROUTE,
    JoinRefusedError,
    JoinSpec,
    agent_command,
    installed_plugins,
    network_spec,
    plugin_differences,
    reachable,
    split_endpoint,
)
from para_attn_server.cluster.tunnel import StoreForwarder
from para_attn_server.logs import FORMATS, configure_logging, current_format
from para_attn_server.plugin.manager import Plugins
from para_attn_server.settings import JOIN_TOKEN_ENV, LOG_LEVELS, secret_from_file
from para_attn_server.workers.executor import RANK_SPEC_ENV, die_with_parent

PROG = "para-attn-server join"
DESCRIPTION = (
    "Serve a server's jobs on this host. With --group-size (or against a server without --nnodes) this host "
    "brings worker groups of its own to the server's queue; SIGTERM drains them (their jobs finish) and leaves. "
    "Against a server with --nnodes > 1 it runs this host's node of the one group that spans the hosts, keeping "
    "torchrun's elastic agent running, one per generation of the group."
)
log = logging.getLogger("para_attn_server.join")
POLL_SECONDS = 2.0  # the longest a generation change or the agent's exit goes unnoticed
BACKOFF_MAX = 30.0
STOP_GRACE = 10.0


class _Stop(BaseException):
    pass


class _NoGroupAcrossHostsError(Exception):
    """The server has no group that spans hosts (no --nnodes): hosts join with groups of their own."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    p.add_argument("url", metavar="URL", help="the server, as this host reaches it (http://HOST:PORT)")
    p.add_argument("--token-file", help="read the join token from this file (its first line)")
    p.add_argument(
        "--token", default=os.environ.get(JOIN_TOKEN_ENV),
        help=f"the join token (default ${JOIN_TOKEN_ENV}; ps shows a --token: prefer the file or the variable)",
    )  # fmt: skip
    p.add_argument("--num-devices", type=int, default=None, help="ranks to start here (default: CUDA devices, or 1)")
    p.add_argument(
        "--group-size", type=int, default=None, help="ranks per group of this host's own (default: the server's)"
    )
    p.add_argument("--name", default=socket.gethostname(), help="this node's name in the server's messages")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    p.add_argument(
        "--log-format", default="text", choices=FORMATS, help="text, or JSON a line: this host's ranks print it too"
    )
    return p


class JoinedNode:
    """The loop that keeps this host's node in the server's group."""

    def __init__(self, url: str, token: str, num_devices: int, name: str) -> None:
        self.url = url if "://" in url else f"http://{url}"
        self.num_devices = num_devices
        self.name = name
        self.token = token
        self.http = httpx.Client(base_url=self.url, auth=JoinAuth(token, JOIN_ROUTE), timeout=POLL_SECONDS + 30)
        self.generation = 0  # the last generation this node saw launched
        self.agent: subprocess.Popen[bytes] | None = None
        self.forwarder: StoreForwarder | None = None  # the agent's way to the server's rendezvous
        self._plugins = installed_plugins(Plugins.load())

    def run(self) -> None:
        backoff = 1.0
        while True:
            current = self.fetch(self.generation, POLL_SECONDS)
            if self.forwarder is not None and self.forwarder.failure:
                raise JoinRefusedError(self.forwarder.failure)
            self.check(current)
            if current.generation > self.generation:
                self.generation = current.generation
                backoff = 1.0
                if current.state == "starting":
                    self.start_agent(current)
                else:  # it set up without this host, or already failed: wait for the next
                    log.info("generation %d is %s; waiting for the next", current.generation, current.state)
                    self.stop_agent()
            elif self.agent is not None and (code := self.agent.poll()) is not None:
                log.warning("the agent of generation %d exited with code %d", self.generation, code)
                self.agent = None
                if current.state == "starting":  # the server still waits for this node
                    log.info("starting it again in %.0f s", backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    self.start_agent(current)

    def spans_hosts(self) -> bool:
        """Whether the server's one group spans hosts (else this host brings its own groups)."""
        try:
            self.fetch(0, 0)
        except _NoGroupAcrossHostsError:
            return False
        return True

    def fetch(self, after: int, wait: float) -> JoinSpec:
        """The server's answer; retries (with back-off, a line each) while it is unreachable."""
        delay = 1.0
        while True:
            try:  # the call is signed and so is the answer (``JoinAuth``: ProofError otherwise)
                response = self.http.get(JOIN_ROUTE, params={"after": after, "wait": wait})
            except httpx.TransportError as exc:
                log.warning("cannot reach %s (%s); trying again in %.0f s", self.url, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            except RouteMissingError:
                raise _NoGroupAcrossHostsError from None
            if response.status_code != 200:
                raise JoinRefusedError(f"{self.url} answered {response.status_code}: {response.text[:200]}")
            return msgspec.json.decode(response.content, type=JoinSpec)

    def check(self, joined: JoinSpec) -> None:
        network_spec(joined.spec)
        if joined.nproc_per_node != self.num_devices:
            raise JoinRefusedError(
                f"the group's nodes run {joined.nproc_per_node} rank(s) each; this host offers {self.num_devices} "
                f"(--num-devices)"
            )
        differences = plugin_differences(joined.plugins, self._plugins)
        if differences:
            raise JoinRefusedError("this host's plugins differ from the server's:\n  " + "\n  ".join(differences))

    def start_agent(self, joined: JoinSpec) -> None:
        self.stop_agent()
        spec, rendezvous = network_spec(joined.spec), joined.spec.rendezvous
        assert rendezvous is not None, "a group that spans hosts has a rendezvous"
        host, port = split_endpoint(rendezvous.endpoint)
        gate = (reachable(host, self.url), port)
        if self.forwarder is None or self.forwarder.gate != gate:
            if self.forwarder is not None:
                self.forwarder.close()
            self.forwarder = StoreForwarder(gate, self.token)
        here = local_address(*gate)  # this host's address as the server's host sees it
        spec = msgspec.structs.replace(
            spec,
            control_host=reachable(spec.control_host, self.url),
            rendezvous=msgspec.structs.replace(rendezvous, endpoint=self.forwarder.endpoint),
            node=self.name,
            join_token=hello_proof(self.token),
            log_format=current_format(),  # the ranks print to this host's output: its format
        )
        log.info(
            "joining generation %d of group %d: torchrun's agent for %d rank(s), rendezvous at %s:%d, this node at %s",
            spec.generation, spec.group, self.num_devices, *gate, here,
        )  # fmt: skip
        self.agent = subprocess.Popen(
            agent_command(spec, self.num_devices, local_addr=here),
            env={**os.environ, RANK_SPEC_ENV: spec.to_env()},
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),  # noqa: PLW1509 (no threads run here)
        )

    def stop_agent(self) -> None:
        agent, self.agent = self.agent, None
        if agent is None or agent.poll() is not None:
            return
        agent.terminate()  # the agent stops its ranks, then exits
        try:
            agent.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            agent.kill()  # its ranks follow it (they die with their parent)
            agent.wait()


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format, role="join", context={"node": args.name})
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll
    if args.token_file is not None:
        try:
            args.token = secret_from_file(args.token_file)
        except ValueError as exc:
            parser().error(f"--token-file: {exc}")
    if not args.token:
        parser().error(
            f"--token-file (or ${JOIN_TOKEN_ENV}, or --token) is required: the server logs where its token is"
        )
    if not args.name:
        parser().error("--name: Expected a name (this node's, in the server's messages)")
    if args.num_devices is None:
        from para_attn_server.server import default_num_devices

        args.num_devices = default_num_devices()
    if args.num_devices < 1:
        parser().error("--num-devices: Expected int >= 1")
    if args.group_size is not None and args.group_size < 1:
        parser().error("--group-size: Expected int >= 1")
    node = JoinedNode(args.url, args.token, args.num_devices, args.name)
    try:
        spans_hosts = args.group_size is None and node.spans_hosts()
    except JoinRefusedError as exc:
        log.error("refused: %s", exc)  # a line in the --log-format, as every other
        return 2
    if not spans_hosts:
        from para_attn_server.cluster.hostagent import serve_host

        return asyncio.run(serve_host(node.url, args.token, args.num_devices, args.group_size, args.name))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    try:
        node.run()
    except JoinRefusedError as exc:
        log.error("refused: %s", exc)  # a line in the --log-format, as every other
        return 2
    except _Stop:
        log.info("stopping: the agent and its ranks leave the group")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second signal stops at once
        signal.signal(signal.SIGINT, signal.default_int_handler)
        node.stop_agent()
        if node.forwarder is not None:
            node.forwarder.close()
    return 0
