"""The recogniser on real servers' logs: each ``log_line_prefix`` written by PostgreSQL itself.

Each test starts a real server (every major version on the machine) with one prefix, logs in for
real (TCP and the Unix socket, a replication connection, a role whose name holds a quote, a
space, ``@`` and ``:``, with an application name holding separators), makes the server reject a
just-authorized login (NOLOGIN, connection limit) and fail a password, then reads the server's own
log file as Aurora exports it (``shipper.events_from_lines``) and checks that exactly the roles
that got in are credited, at the time they did, by the format compiled from the server's own
``log_line_prefix`` and ``log_timezone``.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from devstack import shipper
from devstack.pgcluster import PgBinaries, PgCluster, cluster_from_template
from inactive_users.core.logformat import (
    AURORA_16_PREFIX,
    AURORA_PREFIX,
    DEBIAN_PREFIX,
    LogFormat,
    compile_format,
)
from inactive_users.core.logparse import LoginAggregator, LoginSummary
from tests.conftest import PASSWORD

ROLE_PASSWORD = "r0le-Passw0rd!"
ODD = "o'b @x:y"  # a quote, a space, "@" and ":"
PREFIXES = {
    "aurora-default": AURORA_PREFIX,
    "aurora-16": AURORA_16_PREFIX,
    "debian": DEBIAN_PREFIX,
    "keyed-with-app": "%t [%p]: user=%u,db=%d,app=%a,client=%h ",
    "session-id": "%m %c %q%u@%d ",
}


def start(pg_binaries: PgBinaries, pg_template: Path, prefix: str, timezone: str = "UTC") -> PgCluster:
    return cluster_from_template(
        pg_template,
        pg_binaries,
        PASSWORD,
        timezone=timezone,
        extra_conf={"log_line_prefix": "'" + prefix.replace("'", "''") + "'"},
    )


@pytest.fixture
def server(request: pytest.FixtureRequest, pg_binaries: PgBinaries, pg_template: Path) -> Iterator[PgCluster]:
    prefix, timezone = request.param
    cluster = start(pg_binaries, pg_template, prefix, timezone)
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.root, ignore_errors=True)


def connect(pg: PgCluster, user: str, password: str = ROLE_PASSWORD, **options: str) -> bool:
    """One real connection (``options``: more connection parameters); True when the server let it in."""
    dsn = psycopg.conninfo.make_conninfo(pg.dsn(user=user, password=password), **options)
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
        return True
    except psycopg.OperationalError:
        return False


def server_format(pg: PgCluster) -> LogFormat:
    """The recogniser for what the server says it writes, as the job builds it."""
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT current_setting('log_line_prefix'), current_setting('log_timezone')"
        ).fetchone()
    assert row is not None
    return compile_format(row[0], row[1])


def flush(pg: PgCluster) -> None:
    """Wait until everything logged so far is in the file (a marker logged after it got there)."""
    marker = f"iu-marker-{uuid.uuid4().hex}"
    with pg.connect() as conn:
        conn.execute(sql.SQL("DO $$BEGIN RAISE LOG {}; END$$").format(sql.Literal(marker)))
    deadline = time.monotonic() + 15
    while marker not in pg.logfile.read_text(encoding="utf-8", errors="replace"):
        assert time.monotonic() < deadline, f"marker never reached {pg.logfile}"
        time.sleep(0.02)


def read_log(
    pg: PgCluster, fmt: LogFormat, written: str | None = None
) -> tuple[LoginSummary, LoginSummary, list[dict[str, object]]]:
    """(summary of the events with their times, summary of the bare messages, the events).

    The log is cut into events by the prefix it was ``written`` with (default: the format's).
    """
    flush(pg)
    events = shipper.events_from_lines(pg.log_lines(), tz=pg.timezone, log_line_prefix=written or fmt.prefix)
    with_times = LoginAggregator(timedelta(seconds=60), fmt)
    with_times.feed_many(
        (str(e["message"]), datetime.fromtimestamp(int(str(e["timestamp"])) / 1000, UTC)) for e in events
    )
    bare = LoginAggregator(timedelta(seconds=60), fmt)
    bare.feed_lines(str(e["message"]) for e in events)
    return with_times.finish(), bare.finish(), events


def play(pg: PgCluster) -> datetime:
    """Create the roles and make every kind of connection; returns when it started (UTC)."""
    began = datetime.now(UTC)
    with pg.connect() as conn:
        for name, attrs in [("plain", "LOGIN"), (ODD, "LOGIN"), ("locked", "NOLOGIN"), ("limited", "LOGIN")]:
            conn.execute(
                sql.SQL("CREATE ROLE {} " + attrs + " PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(ROLE_PASSWORD)
                )
            )
        conn.execute('ALTER ROLE "limited" CONNECTION LIMIT 0')
        conn.execute("CREATE ROLE wrongpw LOGIN PASSWORD 'something-else'")
    assert connect(pg, "plain")
    assert connect(pg, ODD, application_name="my app: x@y [1] z")
    assert not connect(pg, "locked")  # authorized, then "not permitted to log in"
    assert not connect(pg, "limited")  # authorized, then "too many connections for role"
    assert not connect(pg, "wrongpw")  # password authentication failed
    with psycopg.connect(host=str(pg.root / "sock"), port=pg.port, user="plain", dbname="postgres") as conn:
        conn.execute("SELECT 1")  # [local]
    assert connect(pg, "postgres", password=pg.password, replication="true")  # a physical walsender
    return began


def check(summary: LoginSummary, began: datetime, events: list[dict[str, object]]) -> None:
    now = datetime.now(UTC)
    assert set(summary.last_login) == {"plain", ODD, "postgres"}
    for user, ts in summary.last_login.items():
        assert began - timedelta(seconds=2) <= ts <= now + timedelta(seconds=1), (user, ts)
    assert summary.rejected == {"locked": 1, "limited": 1}
    assert summary.failed_auth == {"wrongpw": 1}
    authorized = sum("connection authorized: user=" in str(e["message"]).partition("\n")[0] for e in events)
    assert summary.connection_events == authorized and summary.unrecognised_example is None
    assert summary.logins == authorized - 2


@pytest.mark.parametrize("server", [(p, "UTC") for p in PREFIXES.values()], ids=list(PREFIXES), indirect=True)
def test_exactly_the_roles_that_got_in_are_credited(server: PgCluster) -> None:
    fmt = server_format(server)
    assert fmt.prefix in PREFIXES.values()
    began = play(server)
    with_times, bare, events = read_log(server, fmt)
    check(with_times, began, events)
    assert bare.last_login == with_times.last_login or not fmt.has_time
    assert (bare.rejected, bare.failed_auth, bare.connection_events) == (
        with_times.rejected,
        with_times.failed_auth,
        with_times.connection_events,
    )
    if fmt.is_default:  # the default paths themselves, with no format given
        plain = LoginAggregator(timedelta(seconds=60))
        plain.feed_lines(str(e["message"]) for e in events)
        assert plain.finish() == bare


@pytest.mark.parametrize(
    "server",
    [
        (DEBIAN_PREFIX, "Europe/Berlin"),
        (AURORA_PREFIX, "America/St_Johns"),
        (AURORA_16_PREFIX, "Asia/Kolkata"),
    ],
    ids=["debian-berlin", "aurora-st-johns", "aurora-16-kolkata"],
    indirect=True,
)
def test_a_non_utc_log_timezone_gives_utc_times(server: PgCluster) -> None:
    fmt = server_format(server)
    assert not fmt.is_default and fmt.timezone == server.timezone
    began = play(server)
    with_times, bare, events = read_log(server, fmt)
    check(with_times, began, events)
    check(bare, began, events)  # from the lines' own stamps, without the event times


def test_a_log_read_with_the_wrong_prefix_is_flagged(pg_binaries: PgBinaries, pg_template: Path) -> None:
    """Debian's prefix read as Aurora's: connection events, no logins, an example with no names."""
    pg = start(pg_binaries, pg_template, DEBIAN_PREFIX)
    try:
        play(pg)
        wrong, _bare, events = read_log(pg, compile_format(AURORA_16_PREFIX), DEBIAN_PREFIX)
    finally:
        pg.stop("immediate")
        shutil.rmtree(pg.root, ignore_errors=True)
    assert wrong.logins == 0 and wrong.last_login == {} and wrong.connection_events > 5
    example = wrong.unrecognised_example
    assert example is not None and "connection authorized: user=…" in example
    assert not any(name in example for name in ("plain", "postgres", "127.0.0.1", "o'b", "locked"))
    assert len(events) > wrong.connection_events
