"""A local AWS double: moto in server mode, as a subprocess answering real HTTP on 127.0.0.1.

Server mode (rather than ``mock_aws`` in-process) is used so that the code under test talks to AWS
exactly as it would in production: boto3 / Airflow hooks over HTTP to an ``endpoint_url``.  Nothing
leaves the machine: the server binds to loopback and is reached without any HTTP proxy.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

from devstack.pgcluster import free_port
from devstack.setuperror import SetupError

TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"
DEFAULT_REGION = "us-east-1"

# Talk to the local server directly even if the environment configures an HTTP proxy.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Variables that could make anything in the subprocess pick up real credentials or profiles.
_SCRUBBED_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)


class MotoServerError(SetupError):
    """moto could not be started (or died while starting); the first line says what to do."""


class MotoServer:
    """One moto server process; share it between tests and call :meth:`reset` between them."""

    def __init__(self, port: int | None = None, *, startup_timeout: float = 20.0) -> None:
        self._requested_port = port
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.log_path: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> MotoServer:
        """Launch the server and block until it answers HTTP; returns self."""
        if self._proc is not None:
            raise MotoServerError("moto server already started")
        # free_port() is racy (the port is released before moto binds it): retry a clash with
        # a fresh port, unless the caller asked for a specific one.
        attempts = 1 if self._requested_port else 3
        last_error: MotoServerError | None = None
        for _ in range(attempts):
            try:
                self._start_once(self._requested_port or free_port())
                atexit.register(self.stop)
                return self
            except MotoServerError as exc:
                last_error = exc
                self.stop()
                if "in use" not in str(exc).lower():
                    break
        assert last_error is not None
        raise last_error

    def _start_once(self, port: int) -> None:
        self.port = port
        # Kept open for the life of the process (closed in stop()), hence no context manager.
        self._log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="moto-server-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log_file.name)
        self._proc = subprocess.Popen(
            # moto.server with its RDS read replicas fixed (motomain.py says what and why)
            [
                sys.executable,
                str(Path(__file__).with_name("motomain.py")),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            # To a file, not a pipe: the server logs every request and would block on a full pipe.
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=_subprocess_env(),
            start_new_session=True,  # a Ctrl-C in the terminal is for the test runner, not moto
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise MotoServerError(
                    f"moto server exited with code {self._proc.returncode} while starting "
                    f"on port {port}; check that moto[server] is installed (`make venv`) and see "
                    f"its output:\n{self.output()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise MotoServerError(
                    f"moto server did not answer on {self.endpoint_url} within "
                    f"{self.startup_timeout:.0f}s; on a busy machine run fewer test workers "
                    f"(PYTEST_ARGS='-n 1'); its output:\n{self.output()}"
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with _NO_PROXY_OPENER.open(f"{self.endpoint_url}/moto-api/", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self) -> None:
        """Terminate the process (kill it if it does not exit); safe to call repeatedly."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            atexit.unregister(self.stop)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- use -------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def endpoint_url(self) -> str:
        """Base URL for boto3 / the Airflow connection's ``endpoint_url``."""
        if self.port is None:
            raise MotoServerError("moto server not started")
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Drop all state (every service, every region) so tests can share one server."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", data=b"", method="POST")
        with _NO_PROXY_OPENER.open(req, timeout=10) as resp:
            if resp.status != 200:
                raise MotoServerError(f"moto reset failed: HTTP {resp.status}")

    def output(self, limit: int = 20_000) -> str:
        """The tail of the server's combined stdout/stderr, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-limit:]
        return data.decode("utf-8", errors="replace")


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(
        AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY,
        AWS_DEFAULT_REGION=DEFAULT_REGION,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_CONFIG_FILE=os.devnull,
    )
    return env


def airflow_aws_conn(endpoint_url: str, region: str = DEFAULT_REGION) -> dict[str, Any]:
    """The Airflow ``aws`` connection (JSON form, e.g. for ``AIRFLOW_CONN_<ID>``) pointing at moto."""
    return {
        "conn_type": "aws",
        "login": TEST_ACCESS_KEY,
        "password": TEST_SECRET_KEY,
        "extra": {"endpoint_url": endpoint_url, "region_name": region},
    }


def boto_client(endpoint_url: str, service: str, region: str = DEFAULT_REGION) -> Any:
    """A boto3 client on the moto server with dummy credentials, for test setup and inspection.

    Credentials are explicit so that no profile, environment key or instance role is consulted.
    """
    session = boto3.session.Session(
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
        region_name=region,
    )
    return session.client(
        service,
        endpoint_url=endpoint_url,
        config=Config(
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )
