"""Apply: sync 100,000 login roles and apply 100,000 last logins, against the AWS sample's per-row way.

Real PostgreSQL (embedded 18). Ours: the engine's one-statement sync and one-statement apply.
Baseline, measured in the same run: one SELECT and one UPDATE per user, as the AWS sample's
Lambda did; it is timed on a sample of users and its per-user cost is scaled to the full count.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

import psycopg  # noqa: E402

from devstack.pgcluster import embedded_binaries, running_cluster  # noqa: E402
from inactive_users import migrations, state  # noqa: E402
from inactive_users.engine import Engine  # noqa: E402
from inactive_users.settings import EngineSettings  # noqa: E402

ROLES = int(os.environ.get("BENCH_ROLES", "100000"))
BASELINE_SAMPLE = int(os.environ.get("BENCH_BASELINE_SAMPLE", "5000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
PASSWORD = "bench-only-pw"


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
            migrations.migrate(admin, "inactive_users")

        engine = Engine(lambda: psycopg.connect(pg.dsn(), autocommit=True), EngineSettings(), run_id="bench")
        started = time.perf_counter()
        first = engine.sync_roles()
        sync_first = time.perf_counter() - started
        assert len(first.added) == ROLES
        sync_again = []
        for _ in range(REPEAT):
            started = time.perf_counter()
            assert engine.sync_roles().changes() == 0
            sync_again.append(time.perf_counter() - started)

        base = datetime.now(UTC)
        apply_times = []
        for r in range(REPEAT):
            logins = {
                f"user_{i}": base + timedelta(seconds=r + 1, microseconds=i) for i in range(1, ROLES + 1)
            }
            with psycopg.connect(pg.dsn(), autocommit=True) as conn, conn.transaction():
                started = time.perf_counter()
                moved = state.apply_logins(conn, "inactive_users", logins)
                apply_times.append(time.perf_counter() - started)
            assert moved == ROLES

        baseline = per_row_baseline(pg.dsn(), base + timedelta(seconds=REPEAT + 1))
        apply_median = statistics.median(apply_times)
        baseline_full = baseline * ROLES
        print()
        print(f"{'step':<46} {'roles':>8} {'seconds':>9}")
        print(f"{'sync, first run (adds every role)':<46} {ROLES:>8,} {sync_first:>9.3f}")
        label = f"sync, no change (median of {REPEAT})"
        print(f"{label:<46} {ROLES:>8,} {statistics.median(sync_again):>9.3f}")
        print(f"{'apply logins, one statement (median)':<46} {ROLES:>8,} {apply_median:>9.3f}")
        print(
            f"{'baseline: SELECT + UPDATE per user':<46} {ROLES:>8,} {baseline_full:>9.3f}"
            f"  (measured on {BASELINE_SAMPLE:,} users: {baseline * 1e6:.0f} us per user)"
        )
        print(f"apply speed-up over the baseline: {baseline_full / apply_median:.0f}x")


def per_row_baseline(dsn: str, when: datetime) -> float:
    """Seconds per user for the AWS sample's way: look the user up, then update it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        with conn.transaction():
            for i in range(1, BASELINE_SAMPLE + 1):
                name = f"user_{i}"
                row = conn.execute(
                    "SELECT last_login_time FROM inactive_users.user_login_status WHERE user_name = %s",
                    [name],
                ).fetchone()
                if row is not None and row[0] < when:
                    conn.execute(
                        "UPDATE inactive_users.user_login_status SET last_login_time = %s "
                        "WHERE user_name = %s",
                        [when, name],
                    )
        return (time.perf_counter() - started) / BASELINE_SAMPLE


if __name__ == "__main__":
    main()
