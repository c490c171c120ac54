"""Run the local IHC double inside a test: real HTTP on a free port, in a background thread.

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
def serve(config: ServerConfig) -> Iterator[str]:
    """Serve ``config`` on a free port of 127.0.0.1 and yield the base URL, e.g. ``http://127.0.0.1:41234``.

    Returns once the server accepts connections (typically well under a second) and stops it on
    exit; ``config.host`` and ``config.port`` are ignored. Requests still in flight at exit (a hang
    fault, say) are cancelled after one second.
    """
    # Bound before starting: the port is known at once and nobody else can take it meanwhile.
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    # Accepted connections inherit this; without it keep-alive requests can stall ~40 ms on
    # Nagle's algorithm meeting delayed ACKs.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = sock.getsockname()[1]
    # No dictConfig of the logging tree: the test runner owns logging.
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1
    ))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"ihc-local-double:{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local IHC double did not start within 10 s (see the log above)")
            time.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        if thread.is_alive():
            # Still busy: stop waiting for connections and tasks.
            server.force_exit = True
            thread.join(5)
        sock.close()
