"""A Slack incoming webhook on loopback that keeps what it is sent, so Slack alerts can be read back.

It answers like Slack does (``200 ok``), or with the status and body it is told to (``sink.status =
500``), so a failing webhook can be tested. :func:`refused_port` gives a port that refuses connections.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

#: A webhook token of the form Slack issues (T<workspace>/B<hook>/<secret>), for tests.
TOKEN = "T0000000/B0000000/XXXXXXXXXXXXXXXXXXXXXXXX"


@dataclass(frozen=True)
class Posted:
    """One request the sink received."""

    path: str
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        sink: WebhookSink = self.server.sink  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        sink.received.append(Posted(self.path, self.headers.get("Content-Type", ""), body))
        status, reply = sink.status, sink.reply.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request line holds the token: keep it out of stderr


class WebhookSink:
    def __init__(self) -> None:
        self.received: list[Posted] = []
        self.status = 200
        self.reply = "ok"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.sink = self  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_with(self, status: int, reply: str) -> None:
        """Answer every later request with this status and body, as Slack does for a bad hook."""
        self.status, self.reply = status, reply

    def airflow_conn(self, token: str = TOKEN) -> dict[str, object]:
        return slack_webhook_conn(f"127.0.0.1:{self.port}", token)


def slack_webhook_conn(host: str, token: str = TOKEN) -> dict[str, object]:
    """A ``slackwebhook`` Airflow connection posting to ``http://<host>/services/<token>``.

    The provider builds the URL as ``<schema>://<host>/<password>`` (the port field is ignored, so
    it rides in ``host``); a real one is ``https``, ``hooks.slack.com/services`` and the token.
    """
    return {
        "conn_type": "slackwebhook",
        "schema": "http",
        "host": f"{host}/services",
        "password": token,
        "extra": {"timeout": 5},
    }


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, so no one else takes it, but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])
