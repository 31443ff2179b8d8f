"""api_shim.serve: the multi-worker launcher must hand out sockets that asyncio sets TCP_NODELAY on.

Plain `uvicorn --workers N` binds a socket with proto 0; asyncio then leaves Nagle on for every
accepted connection, and each keep-alive request waits ~40 ms for a delayed ACK (uvicorn #3149).
This checks the property itself on a real accepted connection, as asyncio's server sees it.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from api_shim.serve import NoDelayConfig
from tests.conftest import free_port


async def _accepted_nodelay(sock: socket.socket) -> int:
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            s = transport.get_extra_info("socket")
            seen.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    host, port = sock.getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(seen, 5)
    finally:
        writer.close()
        server.close()


def _bound(config_cls: type[uvicorn.Config]) -> socket.socket:
    config = config_cls("api_shim.app:app", host="127.0.0.1", port=free_port(), workers=2)
    return config.bind_socket()


def test_launcher_socket_gets_tcp_nodelay_on_accepted_connections() -> None:
    sock = _bound(NoDelayConfig)
    assert sock.proto == socket.IPPROTO_TCP
    assert sock.get_inheritable()  # the supervisor's worker processes must be able to use it
    assert asyncio.run(_accepted_nodelay(sock)) != 0


def test_plain_uvicorn_socket_still_loses_it() -> None:
    """The reason the launcher exists: if uvicorn fixes #3149 this fails, and serve.py can go."""
    assert asyncio.run(_accepted_nodelay(_bound(uvicorn.Config))) == 0
