"""Apply: sync 100,000 login roles and apply 100,000 last logins, against the AWS sample's per-row way.

Real PostgreSQL (embedded 18). Ours: the engine's one-statement sync, and ``state.apply_logins``
(COPY in binary into a temporary table, then one ``UPDATE ... FROM``). Apply is measured in three
cases: every user logged in since the last run (all 100,000 rows written: the worst case), one user
in ten did (a busy day), and none did (the overlap window read again: nothing written). The
logins come in a shuffled order, as from a log; every user is also timed with the logins in the
order of the table's rows, which is faster (fewer cache misses) but not what a log gives.

Baseline, measured in the same run and interleaved with ours so both see the same load: one SELECT
and one UPDATE per user, as the AWS sample's Lambda did, each statement in its own transaction
(autocommit, as the sample ran) and, as a stricter second baseline, all in one transaction. It is
timed on a sample of users and its per-user cost is scaled to the full count. The benchmark
cluster runs with ``fsync`` and ``synchronous_commit`` off, which flatters the autocommit baseline:
on a real server each of its commits waits for the WAL flush.

The floor is a bare ``UPDATE`` of every row (no join, no input): the cost of writing 100,000 new
row versions on this machine, which no way of sending the logins can go below.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

import psycopg  # noqa: E402

from devstack.pgcluster import embedded_binaries, running_cluster  # noqa: E402
from inactive_users import migrations, state  # noqa: E402
from inactive_users.core.settings import EngineSettings  # noqa: E402
from inactive_users.engine import Engine  # noqa: E402

ROLES = int(os.environ.get("BENCH_ROLES", "100000"))
BASELINE_SAMPLE = int(os.environ.get("BENCH_BASELINE_SAMPLE", "5000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
PASSWORD = "bench-only-pw"
SCHEMA = "inactive_users"


def main() -> None:
    with running_cluster(embedded_binaries(), PASSWORD, extra_conf={"shared_buffers": "256MB"}) as pg:
        with pg.connect() as admin:
            started = time.perf_counter()
            for first in range(1, ROLES + 1, 5000):  # batches: each role created holds a lock slot
                last = min(first + 4999, ROLES)
                admin.execute(
                    f"DO $$BEGIN FOR i IN {first}..{last} LOOP "
                    "EXECUTE format('CREATE ROLE %I LOGIN', 'user_' || i); END LOOP; END$$"
                )
            print(f"created {ROLES:,} login roles in {time.perf_counter() - started:.1f} s")
            migrations.migrate(admin, SCHEMA)

        engine = Engine(lambda: psycopg.connect(pg.dsn(), autocommit=True), EngineSettings(), run_id="bench")
        started = time.perf_counter()
        synced = engine.sync_roles()
        sync_first = time.perf_counter() - started
        assert len(synced.added) == ROLES
        sync_again = []
        for _ in range(REPEAT):
            started = time.perf_counter()
            assert engine.sync_roles().changes() == 0
            sync_again.append(time.perf_counter() - started)

        with pg.connect() as conn:
            base = state.db_now(conn) + timedelta(seconds=1)
        keys = ("all", "ordered", "tenth", "none", "floor", "auto", "one_tx")
        times: dict[str, list[float]] = {k: [] for k in keys}
        users = [f"user_{i}" for i in range(1, ROLES + 1)]
        # the order logins reach apply_logins: first appearance in the log, unrelated to where the
        # rows sit in the table
        log_order = random.Random(6).sample(users, len(users))
        for r in range(REPEAT):
            # round r: every user at base + r + 1 s (+ i us), one in ten at + 0.5 s, the baseline's
            # samples at + 0.8 s, every user in table order at + 0.85 s, the floor 1 us later
            second = base + timedelta(seconds=r + 1)
            logins = {name: second + timedelta(microseconds=i) for i, name in enumerate(log_order)}
            times["all"].append(timed_apply(pg.dsn(), logins, ROLES))
            times["none"].append(timed_apply(pg.dsn(), logins, 0))
            busy = {n: t + timedelta(milliseconds=500) for n, t in list(logins.items())[::10]}
            times["tenth"].append(timed_apply(pg.dsn(), busy, len(busy)))
            when = second + timedelta(milliseconds=800)
            times["auto"].append(per_row_baseline(pg.dsn(), users[:BASELINE_SAMPLE], when, one_tx=False))
            sample = users[BASELINE_SAMPLE : 2 * BASELINE_SAMPLE]
            times["one_tx"].append(per_row_baseline(pg.dsn(), sample, when, one_tx=True))
            ordered = {
                name: second + timedelta(milliseconds=850, microseconds=i) for i, name in enumerate(users)
            }
            times["ordered"].append(timed_apply(pg.dsn(), ordered, ROLES))
            times["floor"].append(bare_update(pg.dsn()))

        with pg.connect() as conn:
            conn.execute("SELECT pg_stat_force_next_flush()")
            upd, hot = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE schemaname = %s AND relname = 'user_login_status'",
                [SCHEMA],
            ).fetchone() or (0, 0)

        med = {k: statistics.median(v) for k, v in times.items()}
        auto_full, one_tx_full = med["auto"] * ROLES, med["one_tx"] * ROLES
        print()
        print(f"medians of {REPEAT} rounds; apply and the baselines interleaved in each round")
        print(f"{'step':<58} {'rows':>8} {'seconds':>9}")
        rows = [
            ("sync, first run (adds every role)", ROLES, sync_first),
            ("sync, no change", ROLES, statistics.median(sync_again)),
            ("apply, every user logged in (100% of rows written)", ROLES, med["all"]),
            ("  the same, logins in the table's row order", ROLES, med["ordered"]),
            ("apply, one user in ten logged in (10% written)", ROLES // 10, med["tenth"]),
            ("apply, same logins again (overlap window: 0 written)", 0, med["none"]),
            ("floor: bare UPDATE of every row, no join, no input", ROLES, med["floor"]),
            ("baseline: SELECT + UPDATE per user, autocommit", ROLES, auto_full),
            ("baseline: SELECT + UPDATE per user, one transaction", ROLES, one_tx_full),
        ]
        for label, count, seconds in rows:
            print(f"{label:<58} {count:>8,} {seconds:>9.3f}")
        print(
            f"baseline measured on {BASELINE_SAMPLE:,} users per round: "
            f"{med['auto'] * 1e6:.0f} us per user autocommit, {med['one_tx'] * 1e6:.0f} us in one transaction"
        )
        print(f"HOT updates of the status table: {hot:,} of {upd:,}")
        for label, key in (("log order", "all"), ("table order", "ordered")):
            print(
                f"apply (every user, {label}) vs baseline: {auto_full / med[key]:.0f}x autocommit, "
                f"{one_tx_full / med[key]:.0f}x one transaction; {med[key] / med['floor']:.1f}x the floor"
            )
        print(f"per round, apply (every user, log order):   {fmt(times['all'])}")
        print(f"per round, apply (every user, table order): {fmt(times['ordered'])}")
        print(f"per round, floor:                           {fmt(times['floor'])}")


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def timed_apply(dsn: str, logins: dict[str, datetime], expect: int) -> float:
    """One ingest-style transaction around ``apply_logins``; seconds for the call (commit included)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        with conn.transaction():
            moved = state.apply_logins(conn, SCHEMA, logins)
        elapsed = time.perf_counter() - started
    assert moved == expect, (moved, expect)
    return elapsed


def bare_update(dsn: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        with conn.transaction():
            conn.execute(
                "UPDATE inactive_users.user_login_status "
                "SET last_login_time = last_login_time + interval '1 microsecond', updated_at = now()"
            )
        return time.perf_counter() - started


def per_row_baseline(dsn: str, names: list[str], when: datetime, *, one_tx: bool) -> float:
    """Seconds per user for the AWS sample's way: look the user up, then update it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        if one_tx:
            with conn.transaction():
                _per_row(conn, names, when)
        else:
            _per_row(conn, names, when)
        return (time.perf_counter() - started) / len(names)


def _per_row(conn: psycopg.Connection, names: list[str], when: datetime) -> None:
    for name in names:
        row = conn.execute(
            "SELECT last_login_time FROM inactive_users.user_login_status WHERE user_name = %s",
            [name],
        ).fetchone()
        assert row is not None and row[0] < when
        conn.execute(
            "UPDATE inactive_users.user_login_status SET last_login_time = %s WHERE user_name = %s",
            [when, name],
        )


if __name__ == "__main__":
    main()
