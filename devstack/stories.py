"""The demo's roles and their stories, shared by `make demo` and the docker-compose demo."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from devstack import shipper

MASTER = "demo_master"
ROLE_PASSWORD = "demo-role-Passw0rd"  # throwaway password of the demo roles

# name -> (story, days since last login seeded in the state table or None, logs in now on instance #)
STORIES: dict[str, tuple[str, int | None, int | None]] = {
    "app_daily": ("logs in every day (writer)", 1, 1),
    "report_reader": ("logs in on the reader instance", 30, 2),
    "erin_80": ("80 days ago: upcoming lock in 10 days", 80, None),
    "ana_100": ("last login 100 days ago", 100, None),
    'Zoë "Q" O\'Brien': ("120 days ago; a name that needs quoting", 120, None),
    "bob_200_owner": ("200 days ago, owns a table", 200, None),
    "carl_200": ("200 days ago, owns nothing", 200, None),
    "svc_etl": ("service account, excluded by config", 250, None),
    "dora_never": ("new role, never logged in", None, None),
    MASTER: ("the cluster's master user", None, None),
}


def create_roles(admin: psycopg.Connection) -> None:
    """Create the story roles and the owned table (idempotent: a restarted container runs it again)."""
    existing = {r[0] for r in admin.execute("SELECT rolname::text FROM pg_roles")}
    for name in STORIES:
        if name not in existing:
            stmt = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
            admin.execute(stmt.format(sql.Identifier(name), sql.Literal(ROLE_PASSWORD)))
    admin.execute("CREATE SCHEMA IF NOT EXISTS sales")
    admin.execute("CREATE TABLE IF NOT EXISTS sales.q3_report (id int)")
    admin.execute("ALTER TABLE sales.q3_report OWNER TO bob_200_owner")


def seed_history(admin: psycopg.Connection) -> None:
    """The state a previous job left: last logins of known roles (in the engine's own schema)."""
    from inactive_users.postgres.migrations import migrate

    migrate(admin, "inactive_users")
    for name, (_, days, _) in STORIES.items():
        if days is not None:
            seed_last_login(admin, name, days)


def seed_last_login(admin: psycopg.Connection, name: str, days: float) -> None:
    """Track role ``name`` as Active, last seen ``days`` ago (kept as it is when already tracked)."""
    admin.execute(
        "INSERT INTO inactive_users.user_login_status (user_name, role_oid, last_login_time, status) "
        "SELECT rolname, oid, now() - make_interval(days => %s), 'Active' "
        "FROM pg_roles WHERE rolname = %s "
        "AND NOT EXISTS (SELECT 1 FROM inactive_users.user_login_status WHERE user_name = %s)",
        [days, name, name],
    )


def log_in_active_roles(
    dsn_for: Callable[..., str],
    logs: Any,
    cluster_id: str,
    streams: Sequence[str],
    logfile: str | Path,
    offset: int = 0,
    pause: float = 0.3,
) -> tuple[list[tuple[str, int, str]], int]:
    """Each story role that logs in now does so for real; its log lines go to its instance's stream.

    One PostgreSQL plays every instance: ``streams[i - 1]`` is instance ``i``'s stream.
    ``dsn_for(user=, password=)`` gives the server's DSN; ``pause`` lets the logging collector
    write the line. Returns (role, lines shipped, stream) per login, and the log file offset reached.
    """
    done = []
    for name, (_, _, instance) in STORIES.items():
        if instance is None:
            continue
        with psycopg.connect(dsn_for(user=name, password=ROLE_PASSWORD)):
            pass
        time.sleep(pause)
        stream = streams[instance - 1]
        shipped, offset = shipper.ship_log_file(logs, cluster_id, stream, logfile, since_offset=offset)
        done.append((name, shipped, stream))
    return done, offset
