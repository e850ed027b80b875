"""Free TCP ports on 127.0.0.1 for the servers openmme starts (MMS, SeaweedFS, test endpoints), and whether the
front can listen on its address before anything is started.

Ports are drawn below the kernel's ephemeral range (32768 and up on Linux): a port picked there could be
taken by some client's outgoing connection between the check and the server's bind. MMS also refuses
ports from 32767 up.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable

__all__ = ["PORT_CEILING", "free_port", "free_ports", "listen_error", "port_is_free"]

PORT_CEILING = 32767


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` of 127.0.0.1 right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listen_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host``:``port`` right now, or None if it could. Binds as asyncio's (and
    aiohttp's) servers do: every address ``host`` resolves to, with SO_REUSEADDR."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None


def free_port(exclude: Iterable[int] = ()) -> int:
    """A port on 127.0.0.1 that nothing listens on now, in 10000 to 32766."""
    excluded = set(exclude)
    for _ in range(500):
        port = random.randrange(10_000, PORT_CEILING)
        if port not in excluded and port_is_free(port):
            return port
    raise RuntimeError(f"no free port below {PORT_CEILING} on 127.0.0.1")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports."""
    ports: list[int] = []
    while len(ports) < count:
        ports.append(free_port(exclude=ports))
    return ports
