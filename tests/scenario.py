"""A test scenario on one real cluster: create roles, log in for real, ship the real log lines.

The engine under test is built exactly as a DAG task builds it (``Engine.from_airflow`` with
Airflow connection ids); the scenario only sets those connections and plays Aurora's log export.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from devstack import shipper
from devstack.motoserver import MotoServer, airflow_aws_conn, boto_client
from devstack.pgcluster import PgCluster
from inactive_users.core.settings import EngineSettings
from inactive_users.engine import Engine

ROLE_PASSWORD = "r0le-Passw0rd!"


class Scenario:
    cluster_id = "test-aurora"
    writer = "test-aurora-instance-1"
    reader = "test-aurora-instance-2"
    pg_conn_id = "iu_pg"
    aws_conn_id = "iu_aws"

    def __init__(self, pg: PgCluster, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pg = pg
        self.moto = moto
        self.monkeypatch = monkeypatch
        self.admin = pg.connect()
        self.logs = boto_client(moto.endpoint_url, "logs")
        self._offsets: dict[Path, int] = {}  # per server log file: how far it was shipped
        self._held: list[psycopg.Connection] = []
        self.use_job_user("postgres", pg.password)
        monkeypatch.setenv(
            "AIRFLOW_CONN_" + self.aws_conn_id.upper(), json.dumps(airflow_aws_conn(moto.endpoint_url))
        )

    # -- connections ---------------------------------------------------------------------------

    def use_job_user(self, user: str, password: str) -> None:
        """Point the job's Airflow Postgres connection at ``user``."""
        conn = self.pg.airflow_conn(user=user, password=password)
        self.monkeypatch.setenv("AIRFLOW_CONN_" + self.pg_conn_id.upper(), json.dumps(conn))

    def engine(self, run_id: str = "test-run", master_user: str | None = None, **overrides: Any) -> Engine:
        settings: dict[str, Any] = {"settle_seconds": 0, "max_action_ratio": 1.0, **overrides}
        return Engine.from_airflow(
            self.pg_conn_id,
            EngineSettings(**settings),
            run_id=run_id,
            cluster_id=self.cluster_id,
            aws_conn_id=self.aws_conn_id,
            region_name="us-east-1",
            master_user=master_user,
        )

    def run(self, *instances: str, **overrides: Any) -> Any:
        """A full engine run over ``instances`` (default: the writer)."""
        return self.engine(**overrides).run(list(instances) or [self.writer])

    # -- roles and logins ----------------------------------------------------------------------

    def sql(self, query: str | sql.Composable, *params: Any, dbname: str | None = None) -> list[tuple]:
        if dbname is None:
            cur = self.admin.execute(query, params or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []
        with self.pg.connect(dbname=dbname) as conn:
            cur = conn.execute(query, params or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def create_role(self, name: str, attrs: str = "LOGIN", *, via: psycopg.Connection | None = None) -> None:
        stmt = sql.SQL("CREATE ROLE {} " + attrs + " PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(ROLE_PASSWORD)
        )
        (via or self.admin).execute(stmt)

    def login(self, name: str, *, dbname: str = "postgres", password: str = ROLE_PASSWORD) -> bool:
        """One real connection as ``name``; True when the server let it in."""
        try:
            with psycopg.connect(self.pg.dsn(user=name, password=password, dbname=dbname), connect_timeout=5):
                return True
        except psycopg.OperationalError:
            return False

    def hold_session(self, name: str) -> psycopg.Connection:
        conn = psycopg.connect(self.pg.dsn(user=name, password=ROLE_PASSWORD), autocommit=True)
        self._held.append(conn)
        return conn

    # -- log export ----------------------------------------------------------------------------

    def flush_log(self, server: PgCluster | None = None) -> None:
        """Wait until everything logged so far is in the log file (a marker line comes after it)."""
        server = server or self.pg
        marker = f"iu-marker-{uuid.uuid4().hex}"
        statement = sql.SQL("DO $$BEGIN RAISE LOG {}; END$$").format(sql.Literal(marker))
        if server is self.pg:
            self.admin.execute(statement)
        else:
            with server.connect() as conn:  # a hot standby runs a read-only DO block too
                conn.execute(statement)
        deadline = time.monotonic() + 15
        while marker not in server.logfile.read_text(encoding="utf-8", errors="replace"):
            if time.monotonic() > deadline:
                raise AssertionError(f"log marker {marker} never reached {server.logfile}")
            time.sleep(0.02)

    def ship(
        self,
        instance: str | None = None,
        *,
        server: PgCluster | None = None,
        cluster_id: str | None = None,
        region: str = "us-east-1",
        log_group: str | None = None,
    ) -> int:
        """Ship the lines ``server`` (default: the primary) logged since its last ship to ``instance``'s
        stream (default: the writer) of ``cluster_id``'s log group (default: this cluster's), or of
        ``log_group``."""
        server = server or self.pg
        self.flush_log(server)
        client = self.logs if region == "us-east-1" else boto_client(self.moto.endpoint_url, "logs", region)
        shipped, self._offsets[server.logfile] = shipper.ship_log_file(
            client,
            cluster_id or self.cluster_id,
            instance or self.writer,
            server.logfile,
            since_offset=self._offsets.get(server.logfile, 0),
            tz=server.timezone,  # Aurora stamps each event with the line's own time
            region=region,
            log_line_prefix=server.log_line_prefix,
            log_group=log_group,
        )
        return shipped

    def skip_log(self, server: PgCluster | None = None) -> None:
        """Forget the log written so far (it is never shipped)."""
        server = server or self.pg
        self.flush_log(server)
        self._offsets[server.logfile] = server.logfile.stat().st_size

    def ensure_stream(self, instance: str) -> None:
        shipper.ship(self.logs, self.cluster_id, instance, [])

    def reconnect(self) -> None:
        """A new admin session, after the server restarted."""
        self.admin.close()
        self.admin = self.pg.connect()

    # -- state inspection ----------------------------------------------------------------------

    def statuses(self, schema: str = "inactive_users") -> dict[str, dict[str, Any]]:
        rows = self.sql(
            sql.SQL(
                "SELECT user_name, status, last_login_time, role_oid::bigint, status_reason, "
                "prior_can_login, prior_conn_limit FROM {}"
            ).format(sql.Identifier(schema, "user_login_status"))
        )
        keys = ("status", "last_login", "oid", "reason", "prior_can_login", "prior_conn_limit")
        return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}

    def role(self, name: str) -> dict[str, Any] | None:
        rows = self.sql(
            "SELECT oid::bigint, rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = %s", name
        )
        return dict(zip(("oid", "can_login", "conn_limit"), rows[0], strict=True)) if rows else None

    def history(
        self, action: str | None = None, schema: str = "inactive_users"
    ) -> list[tuple[str, str, str]]:
        rows = self.sql(
            sql.SQL("SELECT action, user_name, coalesce(run_id, '') FROM {} ORDER BY id").format(
                sql.Identifier(schema, "action_history")
            )
        )
        return [r for r in rows if action is None or r[0] == action]  # type: ignore[misc]

    def set_last_login(self, name: str, days_ago: float, schema: str = "inactive_users") -> datetime:
        """Seed history: pretend the last login was ``days_ago`` days back."""
        rows = self.sql(
            sql.SQL(
                "UPDATE {} SET last_login_time = now() - %s::interval WHERE user_name = %s "
                "RETURNING last_login_time"
            ).format(sql.Identifier(schema, "user_login_status")),
            timedelta(days=days_ago),
            name,
        )
        assert rows, f"{name!r} is not tracked"
        return rows[0][0]  # type: ignore[no-any-return]

    def snapshot(self, schema: str = "inactive_users") -> dict[str, Any]:
        """Everything a run could change: roles and every state table."""
        snap: dict[str, Any] = {
            "roles": self.sql(
                "SELECT oid::bigint, rolname::text, rolcanlogin, rolconnlimit FROM pg_roles ORDER BY oid"
            ),
            "schema": self.sql("SELECT count(*) FROM pg_namespace WHERE nspname = %s", schema),
        }
        if snap["schema"][0][0]:
            for table in ("user_login_status", "user_login_job_status", "action_history"):
                snap[table] = self.sql(
                    sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(schema, table))
                )
        return snap

    def close(self) -> None:
        for conn in self._held:
            conn.close()
        self.admin.close()
