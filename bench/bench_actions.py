"""Actions: lock 5,000 inactive login roles in one run (and drop 5,000), against a per-role baseline.

Real PostgreSQL (embedded 18). Ours: the engine's own lock, unlock and delete steps (``Engine.lock``,
``Engine.unlock``, ``Engine.delete`` on a plan made by ``Engine.plan``), which run one transaction
with a savepoint per role. Baseline, measured in the same run: the AWS sample's way, one
transaction per role holding one ``ALTER ROLE … NOLOGIN`` (or ``DROP ROLE``), one UPDATE (or
DELETE) of the status row and one history INSERT.

Counting is done in a separate, untimed round on the job's real connections, with nothing patched:
round trips on the wire, by a TCP relay that counts each time the client speaks after the server
did (the login handshake and the closing Terminate message excluded), and statements on the
server, from the log of sessions run with ``log_statement = all``. Timed rounds log nothing extra.
Between rounds the engine's unlock restores the roles and their last logins are set back 100 days;
each drop round uses new roles.
"""

from __future__ import annotations

import os
import re
import select
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from devstack.pgcluster import PgCluster, embedded_binaries, running_cluster  # noqa: E402
from inactive_users import migrations  # noqa: E402
from inactive_users.core.policy import Plan, Planned  # noqa: E402
from inactive_users.core.settings import EngineSettings  # noqa: E402
from inactive_users.engine import Engine  # noqa: E402

ROLES = int(os.environ.get("BENCH_ACTION_ROLES", "5000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
DELETE = os.environ.get("BENCH_ACTION_DELETE", "1") != "0"
PASSWORD = "bench-only-pw"
SCHEMA = "inactive_users"
STATUS = f"{SCHEMA}.user_login_status"
HISTORY = f"{SCHEMA}.action_history"
TERMINATE = b"X\x00\x00\x00\x04"  # the client closing the connection: not a round trip


class Counted:
    """Connections whose round trips and statements are counted.

    Round trips on the wire: the connection goes through a relay that counts the times the client
    speaks after the server did (a request and its answer), from the end of the login handshake on.
    Statements on the server: the session runs with ``log_statement = all`` and its log lines are
    counted.
    """

    def __init__(self, pg: PgCluster) -> None:
        self.pg = pg
        self.pids: list[int] = []
        self.relays: list[tuple[Relay, int]] = []

    def connect(self) -> psycopg.Connection:
        relay = Relay(self.pg.port)
        conn = psycopg.connect(
            self.pg.dsn(), port=relay.port, sslmode="disable", autocommit=True, options="-c log_statement=all"
        )
        self.pids.append(conn.info.backend_pid)
        self.relays.append((relay, relay.turns))  # the handshake is not the job's work
        return conn

    def round_trips(self) -> int:
        return sum(relay.turns - handshake for relay, handshake in self.relays)

    def statements(self) -> int:
        flush_log(self.pg)
        pids = "|".join(str(p) for p in self.pids)
        logged = re.compile(rf":\[(?:{pids})\]:LOG:  (?:statement|execute [^:]*):")
        return sum(1 for line in self.pg.log_lines() if logged.search(line))


class Relay:
    """A TCP relay for one connection to the server on 127.0.0.1:``upstream``, counting turns."""

    def __init__(self, upstream: int) -> None:
        self.turns = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._upstream = upstream
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self._listener.accept()
        self._listener.close()
        server = socket.create_connection(("127.0.0.1", self._upstream))
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        other = {client: server, server: client}
        server_spoke = True
        with client, server:
            while True:
                ready, _, _ = select.select([client, server], [], [])
                for s in ready:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    if s is client and server_spoke and data != TERMINATE:
                        self.turns += 1
                    server_spoke = s is server
                    other[s].sendall(data)


def flush_log(pg: PgCluster) -> None:
    """Wait until the logging collector has written everything logged so far."""
    marker = f"bench-marker-{uuid.uuid4().hex}"
    with pg.connect() as conn:
        conn.execute(sql.SQL("DO $$BEGIN RAISE LOG {}; END$$").format(sql.Literal(marker)))
    deadline = time.monotonic() + 30
    while marker not in pg.logfile.read_text(encoding="utf-8", errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"log marker never reached {pg.logfile}")
        time.sleep(0.05)


def create_roles(pg: PgCluster, prefix: str) -> list[str]:
    with pg.connect() as admin:
        admin.execute(
            f"DO $$BEGIN FOR i IN 1..{ROLES} LOOP "
            f"EXECUTE format('CREATE ROLE %I LOGIN', '{prefix}' || i); END LOOP; END$$"
        )
    return [f"{prefix}{i}" for i in range(1, ROLES + 1)]


def age(pg: PgCluster, names: list[str], days: int) -> None:
    """Seed history as the engine tests do: the last login was ``days`` days ago."""
    with pg.connect() as admin:
        admin.execute(
            f"UPDATE {STATUS} SET last_login_time = now() - make_interval(days => %s) "
            "WHERE user_name = ANY(%s::text[])",
            [days, names],
        )


def engine(connect: Callable[[], psycopg.Connection], run_id: str) -> Engine:
    return Engine(connect, EngineSettings(max_action_ratio=1.0), run_id=run_id)


def plan_of(eng: Engine, names: list[str], step: str) -> Plan:
    """The engine's own plan; it must act on exactly ``names``."""
    plan = eng.plan()
    items: list[Planned] = getattr(plan, step)
    assert sorted(p.name for p in items) == sorted(names), f"plan has {len(items)} roles to {step}"
    return plan


def can_login(pg: PgCluster, names: list[str]) -> int:
    with pg.connect() as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s::text[]) AND rolcanlogin", [names]
        ).fetchone()
    assert row is not None
    return int(row[0])


def baseline_lock(conn: psycopg.Connection, items: list[Planned]) -> None:
    """The AWS sample's way: one transaction and three statements per role."""
    for item in items:
        with conn.transaction():
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(item.name)))
            conn.execute(
                f"UPDATE {STATUS} SET status = 'Locked', status_reason = %s, locked_at = now(), "
                "lock_method = 'nologin', prior_can_login = true, prior_conn_limit = -1, "
                "updated_at = now() WHERE user_name = %s",
                [f"inactive {item.inactive_days} days", item.name],
            )
            conn.execute(
                f"INSERT INTO {HISTORY} (run_id, action, user_name, role_oid, reason) "
                "VALUES ('baseline', 'lock', %s, %s, %s)",
                [item.name, item.oid, f"inactive {item.inactive_days} days"],
            )


def baseline_drop(conn: psycopg.Connection, items: list[Planned]) -> None:
    for item in items:
        with conn.transaction():
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(item.name)))
            conn.execute(f"DELETE FROM {STATUS} WHERE user_name = %s", [item.name])
            conn.execute(
                f"INSERT INTO {HISTORY} (run_id, action, user_name, role_oid, reason) "
                "VALUES ('baseline', 'drop', %s, %s, %s)",
                [item.name, item.oid, f"inactive {item.inactive_days} days"],
            )


Act = Callable[[Callable[[], psycopg.Connection]], None]  # a step, given how to connect


@dataclass
class Figures:
    label: str
    seconds: list[float] = field(default_factory=list)
    round_trips: int = 0
    statements: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def row(self) -> str:
        return (
            f"{self.label:<58} {ROLES:>7,} {self.median:>8.3f} {self.round_trips:>12,} {self.statements:>11,}"
        )


def measure(fig: Figures, pg: PgCluster, counting: bool, act: Act) -> None:
    """Time ``act`` on plain connections, or count what it does on counted ones (untimed)."""
    if counting:
        counted = Counted(pg)
        act(counted.connect)
        fig.round_trips, fig.statements = counted.round_trips(), counted.statements()
        return
    started = time.perf_counter()
    act(lambda: psycopg.connect(pg.dsn(), autocommit=True))
    fig.seconds.append(time.perf_counter() - started)


def compare(ours: Figures, base: Figures, step: str) -> None:
    fewer = base.round_trips / max(ours.round_trips, 1)
    shown = f"{fewer:,.0f}" if fewer >= 10 else f"{fewer:.1f}"
    print(f"{step}: {base.median / ours.median:.1f}x faster than the baseline, {shown}x fewer round trips")


def engine_lock(plan: Plan, run_id: str) -> Act:
    def act(connect: Callable[[], psycopg.Connection]) -> None:
        report = engine(connect, run_id).lock(plan)
        assert len(report.names("locked")) == ROLES, report.failures[:3]

    return act


def engine_unlock(names: list[str], run_id: str) -> Act:
    def act(connect: Callable[[], psycopg.Connection]) -> None:
        report = engine(connect, run_id).unlock(names)
        assert len(report.names("unlocked")) == ROLES, report.failures[:3]

    return act


def engine_delete(plan: Plan, run_id: str) -> Act:
    def act(connect: Callable[[], psycopg.Connection]) -> None:
        report = engine(connect, run_id).delete(plan)
        assert len(report.names("dropped")) == ROLES, report.outcomes[:3]

    return act


def baseline(step: Callable[[psycopg.Connection, list[Planned]], None], items: list[Planned]) -> Act:
    def act(connect: Callable[[], psycopg.Connection]) -> None:
        with connect() as conn:
            step(conn, items)

    return act


def main() -> None:
    with running_cluster(embedded_binaries(), PASSWORD, extra_conf={"shared_buffers": "128MB"}) as pg:
        started = time.perf_counter()
        names = create_roles(pg, "idle_")
        print(f"created {ROLES:,} login roles in {time.perf_counter() - started:.1f} s")
        with pg.connect() as admin:
            migrations.migrate(admin, SCHEMA)
        eng = engine(lambda: psycopg.connect(pg.dsn(), autocommit=True), "bench")
        assert len(eng.sync_roles().added) == ROLES
        age(pg, names, 100)

        lock = Figures(f"lock: Engine.lock (median of {REPEAT})")
        unlock = Figures("unlock: Engine.unlock (median)")
        base = Figures("baseline lock: per role 1 transaction, 3 statements")
        for rep in range(REPEAT + 1):
            counting = rep == REPEAT  # the last round counts; it is not timed
            measure(lock, pg, counting, engine_lock(plan_of(eng, names, "lock"), f"bench-lock-{rep}"))
            assert can_login(pg, names) == 0
            measure(unlock, pg, counting, engine_unlock(names, f"bench-unlock-{rep}"))
            assert can_login(pg, names) == ROLES
            age(pg, names, 100)
            measure(base, pg, counting, baseline(baseline_lock, plan_of(eng, names, "lock").lock))
            assert can_login(pg, names) == 0
            assert len(eng.unlock(names).names("unlocked")) == ROLES
            age(pg, names, 100)

        print()
        print(f"{'step':<58} {'roles':>7} {'seconds':>8} {'round trips':>12} {'statements':>11}")
        for fig in (lock, unlock, base):
            print(fig.row())
        if DELETE:
            age(pg, names, 1)  # out of the way of the delete plans
            drop, base_drop = bench_delete(pg, eng)
            print(drop.row())
            print(base_drop.row())
        print()
        compare(lock, base, "lock")
        if DELETE:
            compare(drop, base_drop, "drop")


def bench_delete(pg: PgCluster, eng: Engine) -> tuple[Figures, Figures]:
    """New roles each round (a drop cannot be undone): ours and the baseline on 5,000 each."""
    drop = Figures(f"drop: Engine.delete (median of {REPEAT})")
    base = Figures("baseline drop: per role 1 transaction, 3 statements")
    for rep in range(REPEAT + 1):
        counting = rep == REPEAT
        for prefix, ours in ((f"gone{rep}_", True), (f"base{rep}_", False)):
            names = create_roles(pg, prefix)
            assert len(eng.sync_roles().added) == ROLES
            age(pg, names, 200)
            plan = plan_of(eng, names, "delete")
            if ours:
                measure(drop, pg, counting, engine_delete(plan, f"bench-drop-{rep}"))
            else:
                measure(base, pg, counting, baseline(baseline_drop, plan.delete))
            with pg.connect() as admin:
                left = admin.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE %s", [prefix + "%"])
                assert left.fetchone() == (0,)
    return drop, base


if __name__ == "__main__":
    main()
