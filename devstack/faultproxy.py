"""A fault-injecting HTTP reverse proxy for the local AWS double (moto), on 127.0.0.1 only.

Tests point an AWS client (or the engine's Airflow ``aws`` connection) at :attr:`FaultProxy.endpoint_url`
instead of moto's.  Every request is forwarded to moto unchanged (method, path and query, headers
and body; only ``Host`` is rewritten to the upstream's and hop-by-hop headers are dropped), unless the
proxy decides, with a seeded random generator, to inject one of these faults instead:

``throttle``
    HTTP 400 with ``{"__type": "ThrottlingException", "message": "Rate exceeded"}`` and
    ``x-amzn-ErrorType: ThrottlingException``, as CloudWatch Logs' JSON protocol answers.
``http500`` / ``http503``
    A bare 500 / 503 with a plain-text body, as a load balancer in front of the service would.
``reset``
    The request is read, then the TCP connection is reset (``SO_LINGER`` 0 and close): no answer.
``slow``
    The request is forwarded after :attr:`FaultProxy.slow_seconds` (default 2 s).

Independently of faults, ``latency_seconds`` holds back every request the proxy forwards (a
network round trip to a distant region, say), and the proxy records when each request arrived
(:attr:`ProxyEvent.at`) and the most it handled at once (:attr:`FaultProxy.max_in_flight`), so a
test or benchmark can check what a client actually sent.

Any other AWS error answer can be injected as an :class:`AwsError` in ``faults`` (e.g. a
``ResourceNotFoundException``); proxies can be chained (one's upstream is another's endpoint) to
give different requests different faults.

Decisions are deterministic for a given seed and sequence of eligible requests (the ones ``only``
accepts; all by default).  ``fault_rate`` and ``faults`` may be changed while the proxy runs, e.g.
``proxy.fault_rate = 1.0`` to make faults persistent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

FAULTS = ("throttle", "http500", "http503", "reset", "slow")
_NOT_FAULTS = ("requests", "forwarded", "upstream_error")
LOOPBACK = "127.0.0.1"
_LOOPBACK_NAMES = {"127.0.0.1", "localhost"}

# RFC 9110 section 7.6.1: these describe one connection, not the message, and are not forwarded.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class FaultProxyError(RuntimeError):
    """The proxy was misconfigured or used in the wrong state."""


@dataclass(frozen=True)
class ProxiedRequest:
    """What the ``only`` predicate sees: one request as the client sent it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def target(self) -> str:
        """The JSON-protocol operation (``Logs_20140328.FilterLogEvents``), or ``""``."""
        for key, value in self.headers.items():
            if key.lower() == "x-amz-target":
                return value
        return ""

    @property
    def operation(self) -> str:
        """The operation name without the service prefix (``FilterLogEvents``), or ``""``."""
        return self.target.rpartition(".")[2]


@dataclass(frozen=True)
class AwsError:
    """A fault answering with an AWS JSON-protocol error (``__type`` body + ``x-amzn-ErrorType``)."""

    name: str  # the key in :attr:`FaultProxy.stats`
    code: str  # e.g. "ResourceNotFoundException"
    message: str = ""
    status: int = 400


THROTTLE = AwsError("throttle", "ThrottlingException", "Rate exceeded")


@dataclass(frozen=True)
class ProxyEvent:
    """One request the proxy handled: its sequence number, operation and what was done with it."""

    seq: int
    operation: str
    action: str  # "forwarded" or the name of the fault
    at: float = 0.0  # time.monotonic() when the proxy had read the request


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    events: list[ProxyEvent] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


class FaultProxy:
    """A threaded reverse proxy to ``upstream_url`` that injects seeded faults.

    Use as a context manager (or :meth:`start` / :meth:`stop`)::

        with FaultProxy(moto.endpoint_url, fault_rate=0.3, faults=FAULTS, seed=7) as proxy:
            client = boto_client(proxy.endpoint_url, "logs")
            ...
            print(proxy.stats)  # {"requests": 40, "forwarded": 31, "throttle": 3, ...}
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        fault_rate: float = 0.0,
        faults: Sequence[str | AwsError] = FAULTS,
        seed: int = 0,
        only: Callable[[ProxiedRequest], bool] | None = None,
        slow_seconds: float = 2.0,
        latency_seconds: float = 0.0,
        upstream_timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname not in _LOOPBACK_NAMES or parts.port is None:
            raise FaultProxyError(
                f"upstream must be http://127.0.0.1:<port> (loopback only), got {upstream_url!r}"
            )
        self.upstream_host = LOOPBACK
        self.upstream_port: int = parts.port
        self.only = only
        self.slow_seconds = slow_seconds
        if latency_seconds < 0:
            raise FaultProxyError(f"latency_seconds must be >= 0, got {latency_seconds!r}")
        self.latency_seconds = latency_seconds  # added to every forwarded request
        self.upstream_timeout = upstream_timeout
        self._rng = random.Random(seed)
        self._fault_rate = 0.0
        self._faults: tuple[str | AwsError, ...] = ()
        self.fault_rate = fault_rate
        self.faults = faults
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- configuration (safe to change while running) -------------------------------------------

    @property
    def fault_rate(self) -> float:
        return self._fault_rate

    @fault_rate.setter
    def fault_rate(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise FaultProxyError(f"fault_rate must be in [0, 1], got {value!r}")
        self._fault_rate = float(value)

    @property
    def faults(self) -> tuple[str | AwsError, ...]:
        return self._faults

    @faults.setter
    def faults(self, value: Iterable[str | AwsError]) -> None:
        chosen = tuple(value)
        unknown = [f for f in chosen if not isinstance(f, AwsError) and f not in FAULTS]
        clash = [f for f in chosen if isinstance(f, AwsError) and f.name in (*FAULTS, *_NOT_FAULTS)]
        if unknown or clash or not chosen:
            raise FaultProxyError(
                f"faults must be a non-empty list of {FAULTS} or AwsError (with another name), got {chosen!r}"
            )
        self._faults = chosen

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._server is not None:
            raise FaultProxyError("fault proxy already started")
        server = _Server((LOOPBACK, 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, drop open client connections and join every thread; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_open_connections()
        server.server_close()  # joins the per-connection threads
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- use --------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise FaultProxyError("fault proxy not started")
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def upstream_url(self) -> str:
        return f"http://{self.upstream_host}:{self.upstream_port}"

    @property
    def stats(self) -> dict[str, int]:
        """``requests`` received, ``forwarded`` to upstream (``slow`` ones included), a count per
        injected fault (by name), and ``upstream_error`` if upstream could not be reached."""
        with self._state.lock:
            return dict(self._state.counts)

    @property
    def faults_injected(self) -> int:
        stats = self.stats
        return sum(n for key, n in stats.items() if key not in _NOT_FAULTS)

    @property
    def events(self) -> list[ProxyEvent]:
        """Every request handled so far, in the order the proxy finished with them (``seq`` and
        ``at`` give the arrival order)."""
        with self._state.lock:
            return list(self._state.events)

    @property
    def max_in_flight(self) -> int:
        """The most requests the proxy was handling at the same time (since the last reset)."""
        with self._state.lock:
            return self._state.max_in_flight

    def reset_stats(self) -> None:
        with self._state.lock:
            self._state.counts.clear()
            self._state.events.clear()
            self._state.max_in_flight = self._state.in_flight

    # -- internals --------------------------------------------------------------------------------

    def _decide(self, request: ProxiedRequest) -> tuple[int, float, str | AwsError | None]:
        """(sequence number, arrival time, fault or None) for one request; one lock so the seed
        decides."""
        eligible = self.only is None or self.only(request)
        with self._state.lock:
            self._state.counts["requests"] += 1
            seq = self._state.counts["requests"]
            at = time.monotonic()
            fault = None
            if eligible and self._rng.random() < self._fault_rate:
                fault = self._rng.choice(self._faults)
            return seq, at, fault

    def _record(self, seq: int, request: ProxiedRequest, action: str, at: float) -> None:
        with self._state.lock:
            self._state.counts[action] += 1
            self._state.events.append(ProxyEvent(seq, request.operation, action, at))

    def _enter(self) -> None:
        with self._state.lock:
            self._state.in_flight += 1
            self._state.max_in_flight = max(self._state.max_in_flight, self._state.in_flight)

    def _leave(self) -> None:
        with self._state.lock:
            self._state.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins them; stop() first unblocks idle keep-alives
    block_on_close = True
    proxy: FaultProxy

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    timeout = 60  # an idle keep-alive connection is dropped after this
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass  # moto logs every request already; keep test output clean

    def _handle(self) -> None:
        proxy = self.server.proxy
        proxy._enter()
        try:
            self._handle_one(proxy)
        finally:
            proxy._leave()

    def _handle_one(self, proxy: FaultProxy) -> None:
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        request = ProxiedRequest(self.command, self.path, headers, body)
        seq, at, fault = proxy._decide(request)
        if fault == "throttle":
            fault = THROTTLE
        if isinstance(fault, AwsError):
            proxy._record(seq, request, fault.name, at)
            payload = json.dumps({"__type": fault.code, "message": fault.message}).encode()
            self._reply(
                fault.status,
                payload,
                {
                    "Content-Type": "application/x-amz-json-1.1",
                    "x-amzn-ErrorType": fault.code,
                    "x-amzn-RequestId": str(uuid.uuid4()),
                },
            )
            return
        if fault == "reset":
            proxy._record(seq, request, fault, at)
            self._reset()
            return
        if fault in ("http500", "http503"):
            proxy._record(seq, request, fault, at)
            status = 500 if fault == "http500" else 503
            self._reply(status, http.client.responses[status].encode(), {"Content-Type": "text/plain"})
            return
        if fault == "slow":
            proxy._record(seq, request, fault, at)
            time.sleep(proxy.slow_seconds)
        if proxy.latency_seconds:
            time.sleep(proxy.latency_seconds)
        self._forward(proxy, seq, at, request)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, proxy: FaultProxy, seq: int, at: float, request: ProxiedRequest) -> None:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        headers["Host"] = f"{proxy.upstream_host}:{proxy.upstream_port}"
        if request.body or "content-length" in {k.lower() for k in self.headers}:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
            headers["Content-Length"] = str(len(request.body))
        conn = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout
        )
        try:
            conn.request(request.method, request.path, body=request.body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            reply_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            status, reason = resp.status, resp.reason
        except OSError as exc:
            proxy._record(seq, request, "upstream_error", at)
            self._reply(502, f"fault proxy: upstream {proxy.upstream_url} failed: {exc}".encode(), {})
            return
        finally:
            conn.close()
        proxy._record(seq, request, "forwarded", at)
        self.send_response(status, reason)
        for key, value in reply_headers:
            if key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reply(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Abort the connection: with SO_LINGER 0 the close sends a TCP RST, not a FIN."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The rfile/wfile still reference the socket, so the descriptor really closes (with
            # the RST) when finish() closes them; the server's later shutdown() of it then fails
            # harmlessly (it catches OSError).
            self.connection.close()
        except OSError:
            pass
