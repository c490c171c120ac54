"""A tiny scriptable HTTP server standing in for the IHC API in client and hook tests.

Each test gives a ``responder(call) -> Reply`` function; the server runs it for every POST, in
its own thread, and records what it received. Real sockets, so the client's timeouts, connection
handling and headers are exercised for real.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Call:
    """One request as the stub saw it."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def conversion_ids(self) -> list[str]:
        return sorted({row["conversion_id"] for row in self.body["customer_journeys"]})


@dataclass
class Reply:
    """What the stub answers: a status and a JSON (or raw) body, after an optional delay.

    ``trickle`` > 0 sends the answer one byte at a time, that many seconds apart: the status line
    and headers too when ``trickle_headers`` is set, else only the body.
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    trickle: float = 0.0
    trickle_headers: bool = False


Responder = Callable[[Call], Reply]


def split_evenly(n: int) -> list[float]:
    """n shares rounded to 4 decimals summing to exactly 1 (like the service's rounding)."""
    base = [10_000 // n] * n
    for i in range(10_000 - sum(base)):
        base[-1 - i] += 1
    return [b / 10_000 for b in base]


def ihc_answer(call_body: Mapping[str, Any], fail: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A valid answer to a request body; journeys in ``fail`` (id -> message) are partial failures."""
    fail = dict(fail or {})
    journeys: dict[Any, list[Any]] = {}
    for row in call_body["customer_journeys"]:
        journeys.setdefault(row["conversion_id"], []).append(row["session_id"])
    value = []
    for conv_id, sessions in journeys.items():
        if conv_id in fail:
            continue
        for session_id, share in zip(sessions, split_evenly(len(sessions)), strict=True):
            value.append(
                {
                    "conversion_id": conv_id,
                    "session_id": session_id,
                    "initializer": share,
                    "holder": share,
                    "closer": share,
                    "ihc": share,
                }
            )
    errors = [{"conversion_id": conv_id, "message": message} for conv_id, message in fail.items()]
    return {"statusCode": 206 if errors else 200, "value": value, "partialFailureErrors": errors}


def ok(call: Call) -> Reply:
    """Responder answering every request correctly."""
    return Reply(200, ihc_answer(call.body))


class StubServer:
    """The running stub: its URL, the calls it received and peak concurrency."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.url = ""

    def _enter(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _handler(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            parsed = urlparse(self.path)
            call = Call(
                path=parsed.path,
                query=parse_qs(parsed.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=json.loads(raw or b"{}"),
            )
            stub._enter(call)
            try:
                reply = stub.responder(call)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                head = [f"HTTP/1.1 {reply.status} Stub", "Content-Type: application/json",
                        f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in reply.headers.items())]
                head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode()
                fast, slow = (b"", head_bytes + payload) if reply.trickle_headers else (head_bytes, payload)
                self.wfile.write(fast)
                if not reply.trickle:
                    self.wfile.write(slow)
                for i in range(len(slow) if reply.trickle else 0):
                    self.wfile.write(slow[i : i + 1])
                    self.wfile.flush()
                    time.sleep(reply.trickle)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # the client gave up (timeout); nothing to answer
            finally:
                stub._leave()

    return Handler


@contextmanager
def stub_server(responder: Responder = ok) -> Iterator[StubServer]:
    """Run a stub IHC server on a free local port for the duration of the block."""
    stub = StubServer(responder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port() -> int:
    """A local port with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
