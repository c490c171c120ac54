"""Run the local IHC double inside a test: real HTTP on a free port, in a background thread.

    from ihc_attribution_dev.server.config import ServerConfig
    from ihc_attribution_dev.server.testing import serve

    with serve(ServerConfig(api_keys=("k1",))) as base_url:
        requests.post(f"{base_url}/v1/compute_ihc?conv_type_id=demo", json=..., headers={"x-api-key": "k1"})
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from ihc_attribution_dev.server.app import create_app
from ihc_attribution_dev.server.config import ServerConfig


@contextmanager
def serve(
    config: ServerConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 5.0,
) -> Iterator[str]:
    """Serve ``config`` on ``host:port`` (0: a free port) and yield the base URL, e.g. ``http://127.0.0.1:41234``.

    Returns once the server accepts connections (typically well under a second) and stops it on
    exit. ``config.host``/``config.port`` are ignored: tests choose where to listen here. Requests
    still in flight at exit (a hang fault, say) are cancelled after one second.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Bind before starting: the port is known at once and nobody else can take it meanwhile.
    sock = socket.create_server((host, port), family=family, backlog=128)
    # Accepted connections inherit this; without it keep-alive requests can stall ~40 ms on
    # Nagle's algorithm meeting delayed ACKs.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bound_port = sock.getsockname()[1]

    server = uvicorn.Server(uvicorn.Config(
        create_app(config),
        # No dictConfig of the logging tree: the test runner owns logging.
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
    ))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"ihc-local-double:{bound_port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the local IHC double failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local IHC double did not start within {startup_timeout} s")
            time.sleep(0.005)
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout)
        if thread.is_alive():
            # Still busy: stop waiting for connections and tasks.
            server.force_exit = True
            thread.join(shutdown_timeout)
        sock.close()
