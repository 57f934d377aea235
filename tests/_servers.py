"""A real uvicorn server on loopback for tests that need HTTP (concurrency, the browser), and a
prefix-stripping reverse proxy for the tests of serving under a sub-path."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import uvicorn


@contextmanager
def live_server(app, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# Hop-by-hop headers (RFC 9110 section 7.6.1): a proxy does not forward them.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


@contextmanager
def prefix_proxy(upstream: str, prefix: str) -> Iterator[str]:
    """A reverse proxy on 127.0.0.1 (a free port) that publishes ``upstream`` under ``prefix``; yields its base URL.

    It does what nginx does with ``location PREFIX/ { proxy_pass UPSTREAM/; proxy_set_header Host
    $http_host; proxy_set_header X-Forwarded-Proto $scheme; }``: ``PREFIX/rest`` is forwarded as
    ``/rest`` with the client's Host header, ``PREFIX`` alone is redirected (301) to ``PREFIX/``,
    and every other path is a 404 from the proxy itself. GET and POST; bodies with Content-Length.
    """
    up = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.split("?")[0] == prefix:
                self._answer(301, [("Location", prefix + "/")], b"")
                return
            if not self.path.startswith(prefix + "/"):
                self._answer(404, [("Content-Type", "text/plain")], b"not proxied")
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["X-Forwarded-Proto"] = "http"
            headers["X-Forwarded-For"] = self.client_address[0]
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
            try:
                conn.request(self.command, self.path[len(prefix):], body=body, headers=headers)
                resp = conn.getresponse()
                self._answer(resp.status, resp.getheaders(), resp.read())
            finally:
                conn.close()

        do_GET = do_POST = _forward

        def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows failures
            pass

    with http_server(Handler) as url:
        yield url


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free port of 127.0.0.1 in a daemon thread; yields ``http://127.0.0.1:<port>``.

    The server is shut down and its socket closed when the block ends.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
