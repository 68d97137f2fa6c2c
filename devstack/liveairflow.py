"""A real Airflow from the venv, for tests and `make ui`: api-server, scheduler, dag-processor, triggerer.

``dag.test()`` runs every task in one process; this runs the deployment our users run. Each
component is its own process (its own session, so every process it forks can be found and
stopped), metadata lives in a real database (a fresh database on the machine's PostgreSQL when
one answers at 127.0.0.1:5432, SQLite otherwise), and everything is reached the way the UI reaches
it: the REST API v2 with a JWT from ``/auth/token``. Waits poll; a wait that times out raises with
the tail of every component's log, which stays in the work directory.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psycopg
from psycopg import sql

from devstack.pgcluster import free_port

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
CELERY_WORKER = "celery-worker"
MACHINE_PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
MACHINE_REDIS = ("127.0.0.1", 6379)
FINISHED = ("success", "failed")
_HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


class LiveAirflowError(RuntimeError):
    """A component died, or a wait timed out; the message carries the components' log tails."""


def machine_postgres_reachable(dsn: str = MACHINE_PG) -> bool:
    """The machine's PostgreSQL (trust auth for ``postgres`` on 127.0.0.1:5432) answers."""
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def redis_unreachable_reason(host: str = MACHINE_REDIS[0], port: int = MACHINE_REDIS[1]) -> str | None:
    """None when a Redis answers PING at ``host:port``; otherwise why not (a skip reason)."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError as exc:
        return f"no Redis at {host}:{port} ({exc}); CeleryExecutor needs one as its broker"
    if not reply.startswith(b"+PONG"):
        return f"{host}:{port} did not answer PING like Redis (got {reply[:20]!r})"
    return None


class LiveAirflow:
    """Airflow 3 components as child processes, at home in ``work``; a context manager.

    ``env`` is the environment of every component (``devstack.airflowenv.airflow_env`` builds one:
    DAG folder, config file, ``AIRFLOW_CONN_*`` of the stage). The harness owns ports, URLs, the
    metadata database, secrets and the executor; any other ``AIRFLOW__*`` key in ``env`` wins
    over the harness's defaults (a test that needs real users sets
    ``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False``, say). With ``CeleryExecutor`` a
    ``celery-worker`` runs too, on the machine's Redis under a key prefix and queue of its own.
    ``setup``: ``airflow`` CLI commands run after ``db migrate`` and before the components start.
    ``airflow``: the ``airflow`` command to run (another venv's); this venv's by default.
    """

    def __init__(
        self,
        work: Path,
        env: Mapping[str, str],
        *,
        executor: str = "LocalExecutor",
        components: Sequence[str] = COMPONENTS,
        metadata_db: str = "auto",
        redis_url: str = "redis://127.0.0.1:6379/0",
        startup_timeout: float = 120.0,
        setup: Sequence[Sequence[str]] = (),
        airflow: Path | None = None,
        celery_workers: int = 1,
    ) -> None:
        unknown = {c for c in components if not c.startswith(CELERY_WORKER)} - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown Airflow components {sorted(unknown)}; choose from {COMPONENTS}")
        if "api-server" not in components:
            raise ValueError("components must include 'api-server': every wait and call goes through it")
        if metadata_db not in ("auto", "postgres", "sqlite"):
            raise ValueError(f"metadata_db={metadata_db!r}: use 'auto', 'postgres' or 'sqlite'")
        self.work = Path(work)
        self.executor = executor
        comps = list(components)
        if executor == "CeleryExecutor" and "scheduler" in comps and CELERY_WORKER not in comps:
            comps.append(CELERY_WORKER)
        if CELERY_WORKER in comps:  # more workers: celery-worker-2, ... (each its own Celery hostname)
            comps += [f"{CELERY_WORKER}-{k}" for k in range(2, celery_workers + 1)]
        self.components: tuple[str, ...] = tuple(comps)
        self.metadata_db = metadata_db
        self.redis_url = redis_url
        self.startup_timeout = startup_timeout
        self.setup = [list(args) for args in setup]  # airflow CLI commands after the migration
        # the airflow command of another venv (an installed wheel's); default: this venv's
        self.airflow = str(airflow or Path(sys.executable).parent / "airflow")
        self.run_key = f"iu-live-{uuid.uuid4().hex[:10]}"
        self.home = Path(env.get("AIRFLOW_HOME") or self.work / "airflow")
        self.log_dir = self.work / "logs"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._caller_env = dict(env)
        self._pg_database: str | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None
        self._http: httpx.Client | None = None
        self.env: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> LiveAirflow:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Create the metadata database, migrate it, start the components, wait for their health."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = self._build_env(self._metadata_url())
        self._run_once(["db", "migrate"], "db-migrate", timeout=self.startup_timeout)
        for args in self.setup:  # e.g. teams sync, before any component reads them
            self._run_once(args, "setup", timeout=self.startup_timeout)
        for name in self.components:
            self._spawn(name)
        self.wait_healthy(self.startup_timeout)

    def stop(self, grace: float = 5.0) -> None:
        """Terminate every process this harness started (whole sessions), then drop its database."""
        if self._http is not None:
            self._http.close()
            self._http = None
        procs, self._procs = self._procs, {}
        sessions = [p.pid for p in procs.values()]
        for p in reversed(list(procs.values())):  # workers and schedulers before the API they call
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)  # the component's own group, as Ctrl-C would
        deadline = time.monotonic() + grace
        for p in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        while any(_session_members(s) for s in sessions) and time.monotonic() < deadline:
            time.sleep(0.1)  # children (task runners, pool workers) finishing after their parent
        for sid in sessions:
            _signal_session(sid, signal.SIGKILL)
        for p in procs.values():
            if p.poll() is None:
                p.wait(timeout=5)
        if self._pg_database is not None:
            self._drop_database(self._pg_database)
            self._pg_database = None
        if CELERY_WORKER in self.components and self.env:
            self._clear_redis_keys()

    @property
    def pids(self) -> dict[str, int]:
        """The process id of each running component (the leader of its own session)."""
        return {name: p.pid for name, p in self._procs.items()}

    # -- configuration ---------------------------------------------------------------------------

    def _metadata_url(self) -> str:
        use_pg = self.metadata_db == "postgres" or (
            self.metadata_db == "auto" and machine_postgres_reachable()
        )
        if not use_pg:
            return f"sqlite:///{self.home / 'airflow.db'}"
        name = self.run_key.replace("-", "_")
        with psycopg.connect(MACHINE_PG, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._pg_database = name
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"

    @staticmethod
    def _drop_database(name: str) -> None:
        with psycopg.connect(MACHINE_PG, autocommit=True, connect_timeout=5) as conn:
            # bounded: a stop must end even when the machine's server is slow to give the lock
            conn.execute("SET lock_timeout = '30s'")
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _build_env(self, metadata_url: str) -> dict[str, str]:
        defaults = {
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__API__WORKERS": "1",
            # fast enough for a test: files listed every 2 s, re-parsed every 5 s
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__CELERY__BROKER_URL": self.redis_url,
        }
        env = {k: v for k, v in self._caller_env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        # PYTHONDONTWRITEBYTECODE (set on some machines) would make each component compile
        # Airflow from source: twice the start-up time.
        for key, value in defaults.items():
            env.setdefault(key, value)
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
                "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                # parallel runs share the machine's Redis: keys and queue of this run only
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{self.run_key}:",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.run_key,
            }
        )
        return env

    # -- processes -------------------------------------------------------------------------------

    def _command(self, name: str) -> list[str]:
        airflow = self.airflow
        if name == "api-server":
            return [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        if name.startswith(CELERY_WORKER):
            return [
                airflow,
                "celery",
                "worker",
                "--queues",
                self.run_key,
                "--celery-hostname",
                f"{self.run_key}{name.removeprefix(CELERY_WORKER)}@%h",
                "--without-mingle",
                "--without-gossip",
            ]
        return [airflow, name]

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _spawn(self, name: str) -> None:
        with self.log_path(name).open("ab") as out:
            self._procs[name] = subprocess.Popen(
                self._command(name),
                env=self.env,
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session: every process it forks is found by sid
            )

    def _run_once(self, args: list[str], name: str, timeout: float) -> None:
        airflow = self.airflow
        with self.log_path(name).open("ab") as out:
            done = subprocess.run(
                [airflow, *args],
                env=self.env,
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise LiveAirflowError(
                f"airflow {' '.join(args)} exited with {done.returncode}:\n{self.tail(name, 60)}"
            )

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        if not path.exists():
            return f"--- {name}: no log at {path}"
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return f"--- {name} ({path}), last {len(text)} lines:\n" + "\n".join(text)

    def tails(self, lines: int = 40) -> str:
        return "\n".join(self.tail(name, lines) for name in self.components)

    def _check_alive(self) -> None:
        for name, p in self._procs.items():
            if p.poll() is not None:
                raise LiveAirflowError(f"{name} exited with {p.returncode}:\n{self.tail(name, 80)}")

    def poll(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
        """Call ``check`` until it returns something truthy; raise with the log tails on timeout."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            self._check_alive()
            try:
                result = check()
                if result:
                    return result
            except (httpx.HTTPError, LiveAirflowError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                message = f"timed out after {timeout:.0f} s waiting for {what}"
                if last_error is not None:
                    message += f" (last error: {last_error})"
                raise LiveAirflowError(f"{message}\n{self.tails()}")
            time.sleep(interval)

    # -- health ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        r = self.client.get("/api/v2/monitor/health")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Every started component reports healthy (the worker: Celery says it is ready)."""

        def healthy() -> bool:
            h = self.health()
            wanted = [_HEALTH_KEYS[c] for c in self.components if c in _HEALTH_KEYS]
            if h["metadatabase"]["status"] != "healthy":
                return False
            return all((h.get(k) or {}).get("status") == "healthy" for k in wanted)

        self.poll("the components' health at /api/v2/monitor/health", healthy, timeout)
        for worker in (c for c in self.components if c.startswith(CELERY_WORKER)):
            self.poll(
                f"the Celery worker {worker} to be ready",
                lambda w=worker: " ready." in self.log_path(w).read_text(errors="replace"),
                timeout,
            )

    # -- REST API v2 -----------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """An HTTP client on the api-server, no proxy (it is on loopback)."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.base_url, trust_env=False, timeout=30.0)
        return self._http

    def token(self) -> str:
        """A JWT as the UI gets one (``GET /auth/token``: every user is an admin here)."""
        r = self.client.get("/auth/token")
        if r.status_code not in (200, 201):
            raise LiveAirflowError(f"GET /auth/token answered {r.status_code}: {r.text[:300]}")
        return str(r.json()["access_token"])

    def user_token(self, username: str, password: str) -> str:
        """A real user's JWT (``POST /auth/token`` with the user's password, as a script gets one)."""
        r = self.client.post("/auth/token", json={"username": username, "password": password})
        if r.status_code != 201:
            raise LiveAirflowError(
                f"POST /auth/token for {username!r} answered {r.status_code}: {r.text[:300]}"
            )
        return str(r.json()["access_token"])

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """An authenticated call to ``/api/v2`` + ``path``; the caller checks the status."""
        if self._token is None:
            self._token = self.token()
        headers = {"Authorization": f"Bearer {self._token}", **kw.pop("headers", {})}
        return self.client.request(method, "/api/v2/" + path.lstrip("/"), headers=headers, **kw)

    def _ok(self, method: str, path: str, **kw: Any) -> Any:
        r = self.api(method, path, **kw)
        if r.status_code >= 400:
            raise LiveAirflowError(f"{method} /api/v2/{path.lstrip('/')} answered {r.status_code}: {r.text}")
        return r.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """The DAG is parsed and serialized (``GET /dags/{id}`` answers 200)."""

        def present() -> bool:
            r = self.api("GET", f"dags/{dag_id}")
            if r.status_code == 404:
                return False
            r.raise_for_status()
            return True

        try:
            self.poll(f"DAG {dag_id!r} at /api/v2/dags/{dag_id}", present, timeout)
        except LiveAirflowError as exc:
            errors = self.api("GET", "importErrors").text[:2000]
            raise LiveAirflowError(f"{exc}\nimport errors: {errors}") from None

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Unpause the DAG and trigger a run now (no logical date); returns its run id."""
        self._ok("PATCH", f"dags/{dag_id}", json={"is_paused": False})
        run = self._ok(
            "POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})}
        )
        return str(run["dag_run_id"])

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float = 300, until: Sequence[str] = FINISHED
    ) -> str:
        """Poll the run until its state is one of ``until``; returns that state."""

        def state() -> str | None:
            s = str(self._ok("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"])
            return s if s in until else None

        try:
            return str(self.poll(f"run {run_id!r} of {dag_id!r} to reach {list(until)}", state, timeout))
        except LiveAirflowError as exc:
            raise LiveAirflowError(f"{exc}\ntask states: {self.task_states(dag_id, run_id)}") from None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Each task's state (``task[i]`` for a mapped task's instance i); unset states as 'none'."""
        body = self._ok("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        out = {}
        for ti in body["task_instances"]:
            index = ti.get("map_index", -1)
            key = ti["task_id"] if index in (-1, None) else f"{ti['task_id']}[{index}]"
            out[key] = str(ti["state"] or "none")
        return out

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task's log as the UI shows it, one line per record: event text then its fields."""
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        body = self._ok("GET", path, params={"full_content": "true"}, headers={"Accept": "application/json"})
        content = body["content"]
        if isinstance(content, str):
            return content
        lines = []
        for record in content:
            if isinstance(record, str):
                lines.append(record)
                continue
            extra = {k: v for k, v in record.items() if k not in ("event", "timestamp", "level", "logger")}
            text = str(record.get("event", ""))
            lines.append(text + (f" {extra}" if extra else ""))
        return "\n".join(lines)

    # -- Redis -----------------------------------------------------------------------------------

    def _clear_redis_keys(self) -> None:
        """Remove this run's broker keys (they all carry its prefix) from the shared Redis."""
        try:
            import redis
        except ImportError:
            return
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            keys = list(client.scan_iter(match=f"{self.run_key}:*", count=500))
            if keys:
                client.delete(*keys)
            client.close()
        except redis.RedisError:
            pass  # best effort: the keys are this run's only and harm nobody


def _session_members(sid: int) -> list[int]:
    """Processes in session ``sid`` (Linux /proc): what a component forked, whatever its group."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        # fields after "(comm)": state ppid pgrp session ...; a zombie is already gone
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def _signal_session(sid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to every process of session ``sid`` (its own groups included)."""
    for pid in _session_members(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
