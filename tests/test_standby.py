"""A real streaming-replication hot standby (``pg_basebackup -R -X stream``), on every version.

Like an Aurora reader: roles (and their OIDs) come from the primary, but logins to the reader are
logged in the reader's own log and show in the reader's own ``pg_stat_activity``.
"""

from __future__ import annotations

import re
import time

import psycopg
import pytest

from devstack.pgcluster import AURORA_PREFIX, PgCluster
from inactive_users.core.logparse import parse_login

ROLE = "reader_bob"
ROLE_PASSWORD = "R3ader-pw"
# AURORA_PREFIX '%t:%r:%u@%d:[%p]:' as the server writes it in UTC.
_STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


def _scalar(cluster: PgCluster, sql: str, *params: object) -> object:
    with cluster.connect() as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def _create_role(primary: PgCluster, standby: PgCluster) -> int:
    with primary.connect() as conn:
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
    standby.wait_caught_up()
    oid = _scalar(primary, "SELECT oid FROM pg_roles WHERE rolname = %s", ROLE)
    assert isinstance(oid, int)
    return oid


def _wait_for_log(cluster: PgCluster, pattern: re.Pattern[str], timeout: float = 10) -> str:
    """The first line of cluster's log matching pattern (the logging collector writes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in cluster.log_lines():
            if pattern.search(line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line matching {pattern.pattern!r} in {cluster.logfile}")
        time.sleep(0.05)


def test_standby_streams_from_primary(pg: PgCluster, pg_standby: PgCluster) -> None:
    assert pg_standby.primary is pg
    assert _scalar(pg_standby, "SELECT pg_is_in_recovery()") is True
    assert _scalar(pg, "SELECT pg_is_in_recovery()") is False
    with pg_standby.connect() as conn:
        row = conn.execute("SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver").fetchone()
    assert row == ("streaming", "127.0.0.1", pg.port)
    assert _scalar(pg, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == 1
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), pg_standby.connect() as conn:
        conn.execute("CREATE TABLE t (x int)")

    # Its own port, socket dir and log file; the primary's logging settings.
    assert pg_standby.port != pg.port
    assert pg_standby.logfile != pg.logfile and pg_standby.logfile.exists()
    for name, expected in [
        ("port", str(pg_standby.port)),
        ("unix_socket_directories", str(pg_standby.root / "sock")),
        ("log_directory", str(pg_standby.root / "log")),
        ("log_filename", "postgresql.log"),
        ("logging_collector", "on"),
        ("log_line_prefix", AURORA_PREFIX),
        ("log_timezone", "UTC"),
        ("hot_standby", "on"),
    ]:
        assert _scalar(pg_standby, "SELECT current_setting(%s)", name) == expected, name
    assert _scalar(pg_standby, "SELECT current_setting('log_connections')") == _scalar(
        pg, "SELECT current_setting('log_connections')"
    )

    # Keeps streaming: a later write on the primary shows up.
    with pg.connect() as conn:
        conn.execute("CREATE TABLE later (x int)")
        conn.execute("INSERT INTO later VALUES (42)")
    pg_standby.wait_caught_up()
    assert _scalar(pg_standby, "SELECT x FROM later") == 42


def test_role_on_standby_has_primary_oid(pg: PgCluster, pg_standby: PgCluster) -> None:
    oid = _create_role(pg, pg_standby)
    assert _scalar(pg_standby, "SELECT oid FROM pg_roles WHERE rolname = %s", ROLE) == oid
    assert _scalar(pg_standby, "SELECT rolcanlogin FROM pg_roles WHERE oid = %s", oid) is True


def test_login_to_standby_is_logged_on_standby_only(pg: PgCluster, pg_standby: PgCluster) -> None:
    _create_role(pg, pg_standby)
    with pg_standby.connect(user=ROLE, password=ROLE_PASSWORD) as conn:
        pid = conn.info.backend_pid
    pattern = re.compile(
        rf"^{_STAMP}:127\.0\.0\.1\(\d+\):{ROLE}@postgres:\[{pid}\]:LOG:  "
        rf"connection authorized: user={ROLE} database=postgres\b"
    )
    line = _wait_for_log(pg_standby, pattern)
    login = parse_login(line)
    assert login is not None
    assert (login.user, login.database, login.pid, login.replication) == (ROLE, "postgres", pid, False)
    assert not [x for x in pg.log_lines() if f"user={ROLE}" in x or f":{ROLE}@" in x]


def test_standby_session_shows_in_standby_activity_only(pg: PgCluster, pg_standby: PgCluster) -> None:
    oid = _create_role(pg, pg_standby)
    query = "SELECT pid FROM pg_stat_activity WHERE usesysid = %s"
    with pg_standby.connect(user=ROLE, password=ROLE_PASSWORD) as held:
        pid = held.info.backend_pid
        with pg_standby.connect() as conn:
            rows = conn.execute(query, (oid,)).fetchall()
            name = conn.execute("SELECT usename FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        assert rows == [(pid,)]
        assert name == (ROLE,)
        with pg.connect() as conn:
            assert conn.execute(query, (oid,)).fetchall() == []
