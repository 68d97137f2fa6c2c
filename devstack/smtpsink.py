"""A minimal SMTP server on loopback that keeps what it receives, so e-mail alerts can be read back."""

from __future__ import annotations

import email
import socketserver
import threading
from email.message import Message
from types import TracebackType


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: SmtpSink = self.server.sink  # type: ignore[attr-defined]
        self._send("220 sink ready")
        rcpt: list[str] = []
        while line := self.rfile.readline():
            verb = line.decode("ascii", "replace").strip().split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._send("250 sink")
            elif verb == "MAIL":
                rcpt = []
                self._send("250 ok")
            elif verb == "RCPT":
                rcpt.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                self._send("250 ok")
            elif verb == "DATA":
                self._send("354 end with .")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                server.received.append((rcpt, email.message_from_bytes(data)))
                self._send("250 queued")
            elif verb == "QUIT":
                self._send("221 bye")
                return
            else:  # RSET, NOOP, anything else
                self._send("250 ok")

    def _send(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")


class SmtpSink:
    def __init__(self) -> None:
        self.received: list[tuple[list[str], Message]] = []
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.sink = self  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SmtpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()

    def airflow_conn(self) -> dict[str, object]:
        return {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "inactive-users@example.com"},
        }
