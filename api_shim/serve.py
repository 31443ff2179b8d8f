"""Run the API under uvicorn with several worker processes, without uvicorn's 43 ms keep-alive stall.

    python -m api_shim.serve --host 127.0.0.1 --port 8000 --workers 2

Why not plain `uvicorn --workers N`: with more than one worker, uvicorn binds the listening socket
itself and leaves its `proto` at 0 (uvicorn issue #3149, open in 0.54). Accepted connections inherit
that, asyncio then skips TCP_NODELAY, and every request on a keep-alive connection after the first
waits for the client's delayed ACK: measured here, a cache hit took 48 ms instead of 3 ms. This
launcher binds the socket with `IPPROTO_TCP` and hands it to uvicorn's own supervisor; the
single-worker path never had the problem, and is left to uvicorn.

Each spawned worker dies with the launcher (ragfleet/lifeline.py): a SIGKILLed launcher must not
leave workers serving the old socket while its restarted self fails to bind the port.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from ragfleet.lifeline import die_with_parent
from ragfleet.settings import get_settings

APP = "api_shim.app:app"


class NoDelayConfig(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto != socket.IPPROTO_TCP:
            # same file descriptor, now tagged TCP: asyncio sets TCP_NODELAY on every accepted socket
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
            sock.set_inheritable(True)
        return sock

    def configure_logging(self) -> None:
        """Also the first thing uvicorn runs in a spawned worker (`uvicorn._subprocess`), before the
        app loads: there the worker asks to die with the launcher. SIGTERM, uvicorn's graceful
        shutdown: the worker closes its listening socket at once and answers what it holds."""
        super().configure_logging()
        parent = multiprocessing.parent_process()
        if parent is not None and parent.pid is not None:
            die_with_parent(parent.pid, signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    config = NoDelayConfig(
        APP,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,  # the request middleware logs each request, with its request id
        log_level=args.log_level,
        # SIGTERM: stop accepting, end long polls and streams (api_shim/drain.py), let the other
        # requests finish for at most the drain grace, then exit
        timeout_graceful_shutdown=max(1, int(get_settings().drain_grace_s)),
    )
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
