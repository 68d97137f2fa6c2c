"""Fleet capacity: N cluster DAGs triggered at once under a live scheduler, beside Airflow's floor.

For each executor (``BENCH_EXECUTORS``: LocalExecutor, and CeleryExecutor with two workers on the
machine's Redis, skipped saying why where none answers) and each N (``BENCH_FLEET_RUNS``, default
1, 10, 50): one real PostgreSQL carries N clusters (a state schema each, a few login roles), moto
carries each cluster's log group with a recent login; N runs of the real cluster DAG are
triggered at once and waited for, then N runs of a *floor* DAG with the same task graph (same
branch, same trigger rules) whose tasks do nothing: what Airflow itself costs for that shape.

Reported per N: wall time until every run finished, CPU seconds per run (every Airflow process:
api-server, scheduler, dag-processor, executor, task processes, workers; and the metadata
database's backends), median and max run time (the runs' own start and end). The steady state is
measured: each cluster ran once before (its roles synced, nothing to lock), as on any day after
the first. Target: our CPU per run within 1.5x of the floor's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("devstack") is None:
    sys.path.insert(0, str(ROOT))

from devstack import shipper  # noqa: E402
from devstack.airflowenv import airflow_env  # noqa: E402
from devstack.liveairflow import MACHINE_PG, LiveAirflow, redis_unreachable_reason  # noqa: E402
from devstack.motoserver import MotoServer, boto_client  # noqa: E402
from devstack.pgcluster import PgCluster, embedded_binaries, running_cluster  # noqa: E402

SIZES = [int(x) for x in os.environ.get("BENCH_FLEET_RUNS", "1,10,50").split(",")]
EXECUTORS = os.environ.get("BENCH_EXECUTORS", "LocalExecutor,CeleryExecutor").split(",")
TARGET_RATIO = 1.5
PASSWORD = "bench-only-pw"
ROLES = ("app_ro", "app_rw", "etl", "report")
FLOOR_FILE = '''"""Airflow DAG file: the floor, the cluster DAG's task graph with tasks that do nothing."""
from bench.fleetfloor import floor_dags

globals().update(floor_dags({n}))
'''
OURS_FILE = '''"""Airflow DAG file: the clusters of the bench's config."""
from inactive_users.face.dag_factory import build_dags

globals().update(build_dags())
'''


# -- CPU ------------------------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime: the process and the children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _session_pids(sid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:
                found.append(int(entry.name))
    return found


def airflow_cpu(af: LiveAirflow) -> float:
    """Every live process of every component's session (a reaped one counts in its reaper)."""
    return sum(_proc_cpu(pid) for sid in af.pids.values() for pid in _session_pids(sid))


def metadata_cpu(af: LiveAirflow) -> dict[int, float]:
    """CPU of each backend of the harness's metadata database on the machine's PostgreSQL."""
    if af.metadata_db == "sqlite" or not af.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgres"):
        return {}
    name = af.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]
    with psycopg.connect(MACHINE_PG, connect_timeout=5) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [name])]
    return {pid: _proc_cpu(pid) for pid in pids}


@dataclass
class Batch:
    n: int
    wall: float
    cpu: float
    durations: list[float]

    @property
    def cpu_per_run(self) -> float:
        return self.cpu / self.n


def run_batch(af: LiveAirflow, dag_ids: list[str]) -> Batch:
    """Trigger a run of every DAG at once, wait for all; CPU of Airflow and its metadata database."""
    for dag_id in dag_ids:  # unpaused first: the batch is only the triggers
        af.api("PATCH", f"dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    db0, cpu0, t0 = metadata_cpu(af), airflow_cpu(af), time.monotonic()
    runs = {}
    for dag_id in dag_ids:
        r = af.api("POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": {}})
        r.raise_for_status()
        runs[dag_id] = str(r.json()["dag_run_id"])
    for dag_id, run_id in runs.items():
        state = af.wait_for_run(dag_id, run_id, timeout=1800)
        if state != "success":
            raise SystemExit(f"{dag_id} {run_id}: {state}: {af.task_states(dag_id, run_id)}")
    wall = time.monotonic() - t0
    cpu = airflow_cpu(af) - cpu0
    db1 = metadata_cpu(af)
    cpu += sum(c - db0.get(pid, 0.0) for pid, c in db1.items())
    durations = []
    for dag_id, run_id in runs.items():
        run = af.api("GET", f"dags/{dag_id}/dagRuns/{run_id}").json()
        start, end = (datetime.fromisoformat(run[k]) for k in ("start_date", "end_date"))
        durations.append((end - start).total_seconds())
    return Batch(len(dag_ids), wall, cpu, durations)


# -- the stage ------------------------------------------------------------------------------------


def stage(work: Path, pg: PgCluster, moto: MotoServer, n: int) -> dict[str, str]:
    """n clusters on one server, each with its state schema and a log group with a recent login."""
    with pg.connect() as admin:
        for name in ROLES:
            admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'")
    logs = boto_client(moto.endpoint_url, "logs")
    for name in ROLES:  # real logins, in the server's own log
        psycopg.connect(pg.dsn(user=name, password=PASSWORD), connect_timeout=5).close()
    with pg.connect() as admin:  # the log reaches the file before it is shipped
        admin.execute("SELECT pg_sleep(0.5)")
    clusters = []
    for i in range(n):
        cid = f"fleet-{i:03d}"
        shipper.ship_log_file(
            logs, cid, f"{cid}-1", pg.logfile, tz=pg.timezone, log_line_prefix=pg.log_line_prefix
        )
        clusters.append(
            {
                "cluster_id": cid,
                "postgres_conn_id": "bench_pg",
                "instances": [f"{cid}-1"],
                "state_schema": f"fleet_{i:03d}",
                "aws_conn_id": "bench_aws",
                "region_name": "us-east-1",
            }
        )
    config = work / "fleet.yaml"
    doc = {
        "defaults": {
            "schedule": None,
            "retries": 0,
            "settle_seconds": 0,
        },
        "clusters": clusters,
    }
    config.write_text(yaml.safe_dump(doc))
    from inactive_users.core.config import load

    loaded = load(config)  # a config error fails here, not after the DAG processor's timeouts
    assert not loaded.errors and len(loaded.clusters) == n, loaded.errors
    dags = work / "dags"
    dags.mkdir()
    (dags / "inactive_users_dags.py").write_text(OURS_FILE)
    (dags / "floor_dags.py").write_text(FLOOR_FILE.format(n=n))
    env = airflow_env(work, config, "bench", pg, moto)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        {
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "PYTHONPYCACHEPREFIX": str(work / "pycache"),
            # Airflow's defaults, not the test harness's quick ones
            "AIRFLOW__CORE__PARALLELISM": "32",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "300",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "5",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "16",
        }
    )
    return env


def measure(executor: str, n: int) -> tuple[Batch, Batch]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-fleet-runs-{n}-"))
    try:
        with running_cluster(embedded_binaries(), PASSWORD) as pg, MotoServer() as moto:
            env = stage(work, pg, moto, n)
            workers = 2 if executor == "CeleryExecutor" else 1
            components = ("api-server", "scheduler", "dag-processor")
            with LiveAirflow(
                work / "af", env, executor=executor, components=components, celery_workers=workers
            ) as af:
                ours = [f"inactive_users__fleet_{i:03d}" for i in range(n)]
                floor = [f"floor_{i:03d}" for i in range(n)]
                for dag_id in (*ours, *floor):
                    af.wait_for_dag(dag_id, timeout=300)
                run_batch(af, ours)  # the first run of each cluster: migrations, first sync (not counted)
                return run_batch(af, ours), run_batch(af, floor)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    print(f"fleet capacity on {os.cpu_count()} cores: N runs triggered at once, steady state (second run)")
    header = (
        f"{'executor':<15} {'N':>3} {'DAG':<6} {'wall s':>7} {'runs/h':>7} {'CPU s/run':>10} "
        f"{'median s':>9} {'max s':>7}"
    )
    print(header)
    ratios = []
    for executor in EXECUTORS:
        if executor == "CeleryExecutor" and (why := redis_unreachable_reason()):
            print(f"{executor}: skipped: {why}")
            continue
        for n in SIZES:
            ours, floor = measure(executor, n)
            for label, b in (("ours", ours), ("floor", floor)):
                print(
                    f"{executor:<15} {n:>3} {label:<6} {b.wall:>7.1f} {3600 * n / b.wall:>7.0f} "
                    f"{b.cpu_per_run:>10.2f} {statistics.median(b.durations):>9.1f} {max(b.durations):>7.1f}"
                )
            ratios.append(ours.cpu_per_run / floor.cpu_per_run)
            print(f"{'':<15} {n:>3} ours / floor CPU per run: {ratios[-1]:.2f}x")
    if ratios:
        verdict = "met" if max(ratios) <= TARGET_RATIO else "NOT met"
        print(
            f"target: our CPU per run within {TARGET_RATIO}x of the floor's: {verdict} "
            f"(worst {max(ratios):.2f}x)"
        )
    print(json.dumps({"ratios": [round(r, 2) for r in ratios]}))


if __name__ == "__main__":
    main()
