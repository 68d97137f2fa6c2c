"""Open sessions on every instance of a cluster (the Postgres I/O shell beyond the writer).

A pooled connection logs in once and may stay open for weeks: its role is active although the log
shows no recent login. Each instance has its own sessions (a reader's are invisible on the writer,
a Global Database secondary's in another region), so each instance is asked, and one that cannot
be asked means the job cannot know: the caller refuses to lock or drop for that run.

Every instance is reached with the cluster's one Airflow Postgres connection, its host and port
replaced: roles are cluster-wide, so the job user exists everywhere, and with IAM authentication
the postgres provider signs the token for the instance's own host.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import cast

import psycopg

from inactive_users.core.alerts import scrub
from inactive_users.postgres import state

log = logging.getLogger("inactive_users")

Connect = Callable[[], psycopg.Connection]

#: Seconds to wait for an instance to answer; an unreachable one must not hang the task.
CONNECT_TIMEOUT = 10

#: The endpoint value that means "the Postgres connection as configured" (one-instance set-ups).
AS_CONFIGURED = ""


@dataclass
class SessionScan:
    """The roles with a session open on any instance read, and why others could not be read; and
    what receives each instance's WAL (its server's identity and the receivers' names)."""

    oids: set[int] = field(default_factory=set)
    read: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    wal_receivers: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


def airflow_connector(postgres_conn_id: str, endpoint: str) -> Connect:
    """Connect to ``endpoint`` (``host:port``, or ``AS_CONFIGURED``) as the Airflow connection's user."""

    def connect() -> psycopg.Connection:
        return _connect(postgres_conn_id, endpoint, None)

    return connect


def airflow_database_connector(postgres_conn_id: str) -> Callable[[str], psycopg.Connection]:
    """Connect to a named database of the cluster: the Airflow connection with its database replaced.

    Same host, user and credentials (with IAM authentication the token is signed for the host, so
    it serves every database); an unreachable database fails within ``CONNECT_TIMEOUT``.
    """

    def connect(database: str) -> psycopg.Connection:
        return _connect(postgres_conn_id, AS_CONFIGURED, database)

    return connect


def bounded_connector(postgres_conn_id: str) -> Connect:
    """The Airflow connection as configured, failing within ``CONNECT_TIMEOUT`` (a page must not hang)."""

    def connect() -> psycopg.Connection:
        return _connect(postgres_conn_id, AS_CONFIGURED, None, bounded=True)

    return connect


def _connect(
    postgres_conn_id: str, endpoint: str, database: str | None, *, bounded: bool = False
) -> psycopg.Connection:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=postgres_conn_id)
    if bounded or endpoint != AS_CONFIGURED or database is not None:
        target = copy.deepcopy(hook.connection)  # a copy: the configured connection is unchanged
        if endpoint != AS_CONFIGURED:
            host, _, port = endpoint.rpartition(":")
            target.host, target.port = host.strip("[]"), int(port)
        extra = target.extra_dejson
        if "connect_timeout" not in extra:
            target.extra = json.dumps({**extra, "connect_timeout": CONNECT_TIMEOUT})
        hook = PostgresHook(postgres_conn_id=postgres_conn_id, connection=target, database=database)
    return cast(psycopg.Connection, hook.get_conn())


def scan_sessions(connectors: Mapping[str, Connect | None]) -> SessionScan:
    """Ask every instance for its open sessions; never skip one silently.

    ``None`` as a connector means no endpoint is known for that instance. Errors are recorded per
    instance (scrubbed, so no secret reaches a log or an alert), not raised: the caller
    decides, and still applies what the other instances showed.
    """
    scan = SessionScan()
    for instance, connect in connectors.items():
        if connect is None:
            scan.errors[instance] = "no endpoint known for this instance; set instance_endpoints for it"
            continue
        try:
            with closing(connect()) as conn:
                scan.oids |= state.active_session_oids(conn)
                scan.wal_receivers[instance] = state.wal_receivers(conn)
        except Exception as exc:  # any failure (network, auth, IAM token) means: cannot know
            first_line = (str(exc).strip().splitlines() or [""])[0]
            scan.errors[instance] = scrub(f"{type(exc).__name__}: {first_line}")
            continue
        scan.read.append(instance)
    for instance, error in scan.errors.items():
        log.warning("open sessions on %s could not be read: %s", instance, error)
    return scan
