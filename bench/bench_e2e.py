"""End to end: one cluster with 10,000 roles, 3 instance streams, 500,000 login events, one DAG run.

Real parts only: an embedded PostgreSQL 18 configured like Aurora (``devstack.pgcluster``), a moto
server holding an aurora-postgresql cluster with 3 instances and its log group with one stream per
instance (``devstack.awsfixtures``), and an SNS topic with an SQS queue for the alert. The roles
are created set-based; ``BENCH_EVENTS`` synthetic events in the exact Aurora format
(``bench/synthlog.py``: logins, failed authentications, sessions rejected after authorization) are
spread over the last 23 hours and dealt to the streams, and shipped with PutLogEvents.

Of the roles, 90% log in during those hours. 9% carry a history from the AWS sample's table (a
last login 100 days ago: to lock) and 1% one of 200 days (to drop), so the run locks and drops
for real. Then ``airflow db migrate`` and the real DAG with ``airflow dags test`` (``dag.test()``,
every task in that one process) as a child process; reported: each task's wall time from
Airflow's task instances (start and end dates in the metadata DB), the whole run, and the peak
RSS of that process (``os.wait4``'s ``ru_maxrss`` of that child alone). The outcome is checked.

``BENCH_PROFILE=1`` also runs the process under cProfile and prints the top functions by
cumulative and own time (the profile slows it; the timed run is the first one, unprofiled).

Environment: ``BENCH_ROLES`` (default 10,000), ``BENCH_EVENTS`` (500,000), ``BENCH_STREAMS`` (3),
``BENCH_KEEP=1`` keeps the work directory (task logs in ``dags-test.log``), ``BENCH_NO_BYTECODE=1``
keeps ``PYTHONDONTWRITEBYTECODE`` for Airflow if set (see ``airflow_env``).
"""

from __future__ import annotations

import importlib.util
import os
import pstats
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("devstack") is None:
    sys.path.insert(0, str(ROOT))

from bench.synthlog import aurora_events  # noqa: E402
from devstack import shipper  # noqa: E402
from devstack.airflowenv import airflow_env as devstack_airflow_env  # noqa: E402
from devstack.awsfixtures import alert_topic_with_queue, create_aurora, drain_alerts  # noqa: E402
from devstack.motoserver import MotoServer, boto_client  # noqa: E402
from devstack.pgcluster import PgCluster, embedded_binaries, running_cluster  # noqa: E402

ROLES = int(os.environ.get("BENCH_ROLES", "10000"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "500000"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "3"))
PROFILE = os.environ.get("BENCH_PROFILE", "") == "1"
KEEP = os.environ.get("BENCH_KEEP", "") == "1"
NO_BYTECODE = os.environ.get("BENCH_NO_BYTECODE", "") == "1"
CLUSTER = "bench-aurora"
DAG_ID = "inactive_users__bench_aurora"
MASTER = "clustermaster"
PASSWORD = "bench-only-pw"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    n_active = ROLES * 9 // 10
    n_lock = ROLES * 9 // 100
    n_drop = ROLES - n_active - n_lock
    users = [f"user_{i}" for i in range(ROLES)]
    active, to_lock, to_drop = (
        users[:n_active],
        users[n_active : n_active + n_lock],
        users[n_active + n_lock :],
    )
    try:
        with (
            running_cluster(embedded_binaries(), PASSWORD, extra_conf={"shared_buffers": "256MB"}) as pg,
            MotoServer() as moto,
        ):
            print(f"PostgreSQL {pg.binaries.version} on 127.0.0.1:{pg.port}, moto on {moto.endpoint_url}")
            rds, logs, sns, sqs = (boto_client(moto.endpoint_url, s) for s in ("rds", "logs", "sns", "sqs"))
            instances = create_aurora(
                rds, CLUSTER, master_user=MASTER, exports=["postgresql"], instances=STREAMS
            )
            topic_arn, queue_url = alert_topic_with_queue(sns, sqs, "dba-alerts", "dba-inbox")

            t0 = time.perf_counter()
            create_roles(pg, users)
            seed_history(pg, active, 30)
            seed_history(pg, to_lock, 100)
            seed_history(pg, to_drop, 200)
            roles_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            now = datetime.now(UTC)
            events, expected = aurora_events(
                EVENTS, active, instances, end=now - timedelta(minutes=2), span=timedelta(hours=23)
            )
            gen_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for instance in instances:
                shipper.ship(logs, CLUSTER, instance, events[instance])
            ship_s = time.perf_counter() - t0
            del events
            print(
                f"{ROLES:,} login roles created set-based, each with a row from the AWS sample's table "
                f"(last login "
                f"30 days ago: {n_active:,}, 100: {n_lock:,}, 200: {n_drop:,}) in {roles_s:.1f} s; "
                f"{EVENTS:,} events ({expected.logins:,} logins, {expected.fatals:,} FATAL, "
                f"{len(expected.last_login):,} users) generated in {gen_s:.1f} s, shipped to "
                f"{STREAMS} streams in {ship_s:.1f} s"
            )

            env = airflow_env(work, pg, moto)
            write_config(work, topic_arn)
            t0 = time.perf_counter()
            run([venv_bin("airflow"), "db", "migrate"], env, work / "db-migrate.log")
            print(f"airflow db migrate: {time.perf_counter() - t0:.1f} s (not counted)")

            assert moto._proc is not None
            moto_cpu = proc_cpu(moto._proc.pid)
            wall, usage, code = dags_test(env, work / "dags-test.log")
            moto_cpu = proc_cpu(moto._proc.pid) - moto_cpu
            tasks = task_times(work / "airflow" / "airflow.db")
            report(tasks, wall, usage.ru_maxrss, work / "dags-test.log")
            print(
                f"CPU during the run: the airflow process {usage.ru_utime + usage.ru_stime:.1f} s, "
                f"the moto server {moto_cpu:.1f} s (moto rescans a whole stream for every page it returns)"
            )
            if code != 0:
                raise SystemExit(f"airflow dags test exited with {code}; see {work / 'dags-test.log'}")
            verify(pg, expected.last_login, to_lock, to_drop, drain_alerts(sqs, queue_url))

            if PROFILE:
                profile_run(env, work, pg, active, to_lock, to_drop)
    finally:
        if KEEP:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# -- setup -----------------------------------------------------------------------------------------


def create_roles(pg: PgCluster, users: list[str]) -> None:
    """``CREATE ROLE`` in server-side loops of 5,000 (each role created holds a lock slot)."""
    with pg.connect() as admin:
        for first in range(0, len(users), 5000):
            last = min(first + 5000, len(users)) - 1
            admin.execute(
                f"DO $$BEGIN FOR i IN {first}..{last} LOOP "
                "EXECUTE format('CREATE ROLE %I LOGIN', 'user_' || i); END LOOP; END$$"
            )


def seed_history(pg: PgCluster, names: list[str], days: int) -> None:
    """Rows carried over from the AWS sample's table: by name, no OID (as ``tests/test_dag_e2e.py``).

    The job adopts them by name; a login it reads then moves ``last_login_time`` forward, so the
    stored times can be checked against the events (a role first seen by the job would instead
    start at the time it was first seen, later than any login read).
    """
    from inactive_users.postgres import migrations

    with pg.connect() as admin:
        migrations.migrate(admin, "inactive_users")
        admin.execute(
            "INSERT INTO inactive_users.user_login_status (user_name, last_login_time, status) "
            "SELECT unnest(%s::text[]), now() - make_interval(days => %s), 'Active'",
            [names, days],
        )


def airflow_env(work: Path, pg: PgCluster, moto: MotoServer) -> dict[str, str]:
    env = devstack_airflow_env(work, work / "bench.yaml", "bench", pg, moto)
    if not NO_BYTECODE:
        # Workers run from compiled bytecode; where PYTHONDONTWRITEBYTECODE is set (as on the machine
        # these figures come from) every Airflow process would compile its ~6,000 modules afresh:
        # about 10 s of CPU. Bytecode goes to the work directory, never into the venv;
        # `airflow db migrate` warms most of it.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def write_config(work: Path, topic_arn: str) -> None:
    doc = {
        "defaults": {"retries": 0, "alert": {"sns_topic_arn": topic_arn}},
        "clusters": [
            {
                "cluster_id": CLUSTER,
                "postgres_conn_id": "bench_pg",
                "aws_conn_id": "bench_aws",
                "region_name": "us-east-1",
            }
        ],
    }
    (work / "bench.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("w") as out:
        code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {code}; see {log}")


# -- the run ---------------------------------------------------------------------------------------


def dags_test(
    env: dict[str, str], log: Path, prefix: list[str] | None = None
) -> tuple[float, resource.struct_rusage, int]:
    """``airflow dags test`` as a child; (wall seconds, its resource usage alone, exit code).

    ``os.wait4`` gives the usage of that one child (``ru_maxrss``: its peak RSS in kB), not of
    every child this process has waited for, as ``getrusage(RUSAGE_CHILDREN)`` would.
    """
    cmd = [*(prefix or []), venv_bin("airflow"), "dags", "test", DAG_ID]
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return wall, usage, proc.returncode


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def task_times(db: Path) -> dict[str, tuple[str, float | None, datetime | None, datetime | None]]:
    """task_id -> (state, seconds, start, end) of the latest run, from the metadata DB."""
    with sqlite3.connect(db) as conn:
        (run_id,) = conn.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", [DAG_ID]
        ).fetchone()
        rows = conn.execute(
            "SELECT task_id, state, start_date, end_date FROM task_instance WHERE dag_id = ? AND run_id = ?",
            [DAG_ID, run_id],
        ).fetchall()
    out = {}
    for task_id, state, start, end in rows:
        s, e = _dt(start), _dt(end)
        out[task_id] = (str(state), (e - s).total_seconds() if s and e else None, s, e)
    return out


def _dt(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def report(
    tasks: dict[str, tuple[str, float | None, datetime | None, datetime | None]],
    wall: float,
    maxrss_kb: int,
    log: Path,
) -> None:
    text = log.read_text(errors="replace")
    own = callable_times(text)
    print()
    print(f"{'task':<16} {'state':<10} {'seconds':>8} {'callable':>9}")
    ran = 0.0
    never = datetime.max.replace(tzinfo=UTC)  # skipped tasks have no start: listed last
    for task_id in sorted(tasks, key=lambda t: (tasks[t][2] or never, t)):  # in the order they ran
        state, secs, _, _ = tasks[task_id]
        ran += secs or 0.0
        mine = f"{own[task_id]:>9.2f}" if task_id in own else f"{'-':>9}"
        print(f"{task_id:<16} {state:<10} {secs if secs is not None else float('nan'):>8.2f} {mine}")
    starts = [s for _, _, s, _ in tasks.values() if s]
    ends = [e for _, _, _, e in tasks.values() if e]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    print(f"{'sum of tasks':<27} {ran:>8.2f} {sum(own.values()):>9.2f}")
    print(f"{'first start to last end':<27} {span:>8.2f}")
    print(f"{'airflow dags test, whole':<27} {wall:>8.2f}   (Airflow import, DAG parse, run, teardown)")
    print(
        "  seconds: the task instance's start to end date in Airflow's metadata DB; callable: the "
        "task's own code (its log from the end of pre-execute to post-execute)"
    )
    slowest = max(own or tasks, key=lambda t: own[t] if own else tasks[t][1] or 0.0)
    share = own[slowest] / sum(own.values()) if own else 0.0
    print(
        f"bottleneck: {slowest} ({own.get(slowest, float('nan')):.2f} s of callable time, {100 * share:.0f}%)"
    )
    print(f"peak RSS of the process running the tasks: {maxrss_kb / 1024:.0f} MB")
    verdict_time = "met" if wall < 120 else "NOT met"
    verdict_mem = "met" if maxrss_kb / 1024 < 500 else "NOT met"
    print(
        f"targets: whole run under 2 minutes: {verdict_time} ({wall:.1f} s); "
        f"memory under 500 MB: {verdict_mem}"
    )
    pattern = (
        r"(sync: \d+ roles in cluster.*?\(\d+\.\d+s\)|ingest \S+: read .*?\(\d+\.\d+s\)|ingest: \d+ users.*)"
    )
    for m in re.finditer(pattern, text):
        line = re.sub(r"read \S+ \.\. \S+, ", "", m.group(0))
        line = re.sub(r" \[[^\]]*…[^\]]*\]", "", line)  # the name lists
        print("  log: " + re.sub(r"\s+\[inactive_users\].*", "", line))


_LINE_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) ")


def callable_times(text: str) -> dict[str, float]:
    """task_id -> seconds from the end of its pre-execute log group to its post-execute group."""
    out: dict[str, float] = {}
    task, began = None, None
    for line in text.splitlines():
        m = _LINE_TS.match(line)
        if not m:
            continue
        if "[DAG TEST] starting task_id=" in line:
            task, began = line.split("task_id=")[1].split()[0], None
        elif task and began is None and "::endgroup::" in line:
            began = datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
        elif task and began is not None and "::group::Post Execute" in line:
            ended = datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
            out[task] = (ended - began).total_seconds()
            task = None
    return out


def verify(
    pg: PgCluster,
    expected: dict[str, datetime],
    to_lock: list[str],
    to_drop: list[str],
    alerts: list[dict[str, str]],
) -> None:
    with pg.connect() as admin:
        status: dict[str, int] = dict(
            admin.execute(
                "SELECT status, count(*) FROM inactive_users.user_login_status GROUP BY status"
            ).fetchall()
        )
        last: dict[str, datetime] = dict(
            admin.execute(
                "SELECT user_name, last_login_time FROM inactive_users.user_login_status "
                "WHERE user_name = ANY(%s)",
                [list(expected)],
            ).fetchall()
        )
        locked = admin.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s) AND NOT rolcanlogin", [to_lock]
        ).fetchone()
        left = admin.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", [to_drop]).fetchone()
    wrong = sum(last.get(u) != ts for u, ts in expected.items())
    print(
        f"outcome: statuses {status}; {locked[0] if locked else '?'} of {len(to_lock)} roles "
        "locked (NOLOGIN), "
        f"{len(to_drop) - (left[0] if left else 0)} of {len(to_drop)} dropped; "
        f"{len(expected) - wrong:,} of {len(expected):,} last logins exact; {len(alerts)} alert(s)"
    )
    if wrong or not locked or locked[0] != len(to_lock) or not left or left[0] != 0 or len(alerts) != 1:
        raise SystemExit("the run's outcome is not the expected one")


def profile_run(
    env: dict[str, str],
    work: Path,
    pg: PgCluster,
    active: list[str],
    to_lock: list[str],
    to_drop: list[str],
) -> None:
    """Reset what the first run did, then the same run under cProfile (a fresh DAG run, same events)."""
    with pg.connect() as admin:
        admin.execute("DROP SCHEMA inactive_users CASCADE")
        for name in to_drop:
            admin.execute(f'CREATE ROLE "{name}" LOGIN')
        admin.execute(
            "DO $$DECLARE r text; BEGIN FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'user\\_%' "
            "AND NOT rolcanlogin LOOP EXECUTE format('ALTER ROLE %I LOGIN', r); END LOOP; END$$"
        )
    seed_history(pg, active, 30)
    seed_history(pg, to_lock, 100)
    seed_history(pg, to_drop, 200)
    prof = work / "dags-test.prof"
    wall, usage, code = dags_test(
        env, work / "dags-test-profiled.log", [sys.executable, "-m", "cProfile", "-o", str(prof)]
    )
    maxrss_kb = usage.ru_maxrss
    print()
    print(
        f"profiled run: {wall:.1f} s, exit {code}, peak RSS {maxrss_kb / 1024:.0f} MB "
        "(cProfile overhead included)"
    )
    tasks = task_times(work / "airflow" / "airflow.db")
    print("  " + ", ".join(f"{t} {v[1]:.1f}s" for t, v in tasks.items() if v[1] is not None and v[1] >= 0.5))
    stats = pstats.Stats(str(prof)).strip_dirs()
    for key in ("cumulative", "tottime"):
        print(f"--- top 25 by {key}")
        stats.sort_stats(key).print_stats(25)


if __name__ == "__main__":
    main()
