"""torchrun's elastic agent, listening only at the address given.

``python -m para_attn_server.cluster.agent ARGS`` is ``torch.distributed.run ARGS`` but for
one thing: the store that the agent of a group's first node hosts for the ranks
(``MASTER_ADDR``/``MASTER_PORT``) listens at the agent's ``--local-addr`` alone. torch's own
listens on every interface, whatever address it was given. The ranks' gloo and NCCL sockets
are kept on the interface of that address too (unless ``GLOO_SOCKET_IFNAME`` and
``NCCL_SOCKET_IFNAME`` already say where).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import socket
import struct
import sys
from datetime import timedelta
from typing import Any

from para_attn_server.workers.executor import listening_socket

log = logging.getLogger("para_attn_server.cluster")
SIOCGIFADDR = 0x8915
STORE_TIMEOUT = timedelta(seconds=300)  # torch's default for this store
_kept: list[socket.socket] = []  # the stores' sockets live as long as the agent


def _bound_store(handler: Any, master_addr: str, master_port: int) -> Any:
    """``DynamicRendezvousHandler._create_tcp_store_server``, on a socket bound at ``master_addr``."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # re-exported at run time only

    sock = listening_socket(master_addr, master_port, 512)
    _kept.append(sock)
    port = sock.getsockname()[1]
    return TCPStore(
        master_addr, port, None, True, STORE_TIMEOUT, wait_for_workers=False, multi_tenant=True,
        master_listen_fd=sock.fileno(),
    )  # fmt: skip


def main(argv: list[str]) -> None:
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous
    from torch.distributed.run import main as run

    local = next((arg.partition("=")[2] for arg in argv if arg.startswith("--local-addr=")), None)
    name = interface_of(local) if local else None
    if name is not None:  # the ranks inherit it
        os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", name)
    handler = dynamic_rendezvous.DynamicRendezvousHandler
    if hasattr(handler, "_create_tcp_store_server"):  # torch >= 2.5: the agent hosts the ranks' store
        handler._create_tcp_store_server = _bound_store  # type: ignore[method-assign,assignment]
    run(argv)


def local_address(host: str, port: int) -> str:
    """The address of this host that ``host`` is reached from (a UDP "connection": no packet)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return str(probe.getsockname()[0])


def interface_of(address: str) -> str | None:
    """The name of the network interface that holds ``address`` (IPv4), or None."""
    try:
        wanted = ipaddress.ip_address(address)
    except ValueError:
        return None
    if wanted.is_loopback:
        wanted = ipaddress.ip_address("127.0.0.1")
    if wanted.version != 4:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address
            if socket.inet_ntoa(answer[20:24]) == str(wanted):
                return name
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
