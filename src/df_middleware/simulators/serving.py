"""Serve an ASGI app (a simulator, or the service itself) on a local port in a background thread.

Used by `df-middleware demo` and by the test suite, which run the service and the simulators in
one process and talk to them over real HTTP.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

#: How long a server may take to start (its lifespan included) on a loaded machine.
START_TIMEOUT_SECONDS = 60.0


def free_port() -> int:
    """A port that was free a moment ago. Only for a port another process must bind (a
    subprocess told `--port N`): something else may take it in between, so `serve_app` binds its
    own socket instead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_app(app: Any, *, port: int | None = None) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 in a thread; yields `http://127.0.0.1:<port>`."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port or 0, log_level="warning", lifespan="on")
    with serve_config(config) as url:
        yield url


@contextmanager
def serve_config(config: uvicorn.Config) -> Iterator[str]:
    """Serve a uvicorn `config` (the service's own, with its protocol and limits, or a simulator's)
    on its host in a thread; yields its base URL.

    The listening socket is bound here (to `config.port`, or to one the system picks when it is 0)
    and handed to uvicorn, so no other process can take the port between choosing and binding it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        # Listen at once: two SO_REUSEADDR sockets bound to one port before either listens may
        # both listen on Linux, and then share its connections (two demos started together).
        sock.listen(config.backlog)
        bound: int = sock.getsockname()[1]
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{bound}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError(f"server on port {bound} did not start")
            time.sleep(0.01)
        try:
            yield f"http://{config.host}:{bound}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    finally:
        sock.close()
