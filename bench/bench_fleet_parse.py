"""Fleet: what the DAG file costs Airflow with 1, 50, 200 and 500 clusters configured.

Three parts. (1) Parse: how long a DagBag takes over the DAG file. (2) Build and serialize: the
CPU per cluster of building its DAG and of serializing it as the dag-processor does on every pass
(``DagSerialization.to_dict`` and the JSON it stores), for 100, 500 and 1,000 clusters; target
<= 30 ms per cluster, so a 1,000-cluster fleet parses within the default 30 s
``min_file_process_interval`` on one core. (3) The idle dag-processor: the CPU a real
``airflow dag-processor`` spends per second with 100 and 500 clusters and Airflow's default
intervals, nothing running (``BENCH_PROCESSOR_SECONDS`` each, default 95: three passes).

Airflow re-parses DAG files every few minutes, so top-level work is multiplied. Each figure is the
median of several fresh-interpreter parses through Airflow's own DagBag (importing our package
included; importing Airflow itself is not, since the DAG processor has it imported already), plus
the time spent in our factory alone (YAML read + DAG construction) inside a warm process. The
DagBag's CPU time is printed too: on a shared machine it moves less than the wall-clock time.

Python bytecode is cached (in a temporary PYTHONPYCACHEPREFIX, warmed by one uncounted parse) even
where PYTHONDONTWRITEBYTECODE is set, because an installed Airflow and package have their .pyc
files; without them every parse would also compile our package and psycopg from source.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZES = [int(x) for x in os.environ.get("BENCH_FLEET_SIZES", "1,50,200,500").split(",")]
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
TARGET_500_S = 2.0

PROBE = r"""
import json, os, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t1, c1 = time.perf_counter(), time.process_time()
bag = DagBag(dag_folder=sys.argv[1])
t2, c2 = time.perf_counter(), time.process_time()
from inactive_users.face.dag_factory import build_dags
t3 = time.perf_counter()
dags = build_dags()
t4 = time.perf_counter()
print(json.dumps({"import_airflow": t1 - t0, "dagbag": t2 - t1, "dagbag_cpu": c2 - c1,
                  "factory_warm": t4 - t3,
                  "dags": len(bag.dag_ids), "errors": len(bag.import_errors)}))
"""


def config(n: int) -> dict:
    return {
        "defaults": {
            "exclude_users": ["app", "etl"],
            "alert": {"sns_topic_arn": "arn:aws:sns:us-east-1:1:dba"},
        },
        "clusters": [
            {"cluster_id": f"cluster-{i:04d}", "postgres_conn_id": f"pg_{i}", "region_name": "us-east-1"}
            for i in range(n)
        ],
    }


def parse(n: int, home: Path) -> dict[str, float]:
    """One DagBag parse of an n-cluster config in a fresh interpreter."""
    cfg = home / f"fleet-{n}.yaml"
    cfg.write_text(yaml.safe_dump(config(n)))
    env = {**_env(home), "INACTIVE_USERS_CONFIG": str(cfg)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "dags")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(n: int, home: Path) -> dict[str, float]:
    runs = [parse(n, home) for _ in range(REPEAT)]
    assert all(r["dags"] == n and r["errors"] == 0 for r in runs), runs
    keys = ("import_airflow", "dagbag", "dagbag_cpu", "factory_warm")
    return {k: statistics.median(r[k] for r in runs) for k in keys}


SERIALIZE_SIZES = [int(x) for x in os.environ.get("BENCH_SERIALIZE_SIZES", "100,500,1000").split(",")]
PROCESSOR_SIZES = [int(x) for x in os.environ.get("BENCH_PROCESSOR_SIZES", "100,500").split(",")]
PROCESSOR_SECONDS = float(os.environ.get("BENCH_PROCESSOR_SECONDS", "95"))
TARGET_MS_PER_CLUSTER = 30.0

SERIALIZE_PROBE = r"""
import gc, json, sys, time
from inactive_users.face.compat import DagSerialization
from inactive_users.face.dag_factory import build_dags
build_dags()  # warm: imports, caches
c0 = time.process_time()
dags = build_dags()
c1 = time.process_time()
for dag in dags.values():
    json.dumps(DagSerialization.to_dict(dag), sort_keys=True)
c2 = time.process_time()
print(json.dumps({"build": c1 - c0, "serialize": c2 - c1, "dags": len(dags)}))
"""


def build_and_serialize(n: int, home: Path) -> dict[str, float]:
    """CPU seconds to build n clusters' DAGs and to serialize them (median of REPEAT fresh processes)."""
    cfg = home / f"fleet-{n}.yaml"
    cfg.write_text(yaml.safe_dump(config(n)))
    env = {**_env(home), "INACTIVE_USERS_CONFIG": str(cfg)}
    runs = []
    for _ in range(REPEAT):
        out = subprocess.run(
            [sys.executable, "-c", SERIALIZE_PROBE], env=env, capture_output=True, text=True, check=True
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["dags"] == n for r in runs), runs
    return {k: statistics.median(r[k] for r in runs) for k in ("build", "serialize")}


def _env(home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}",
        "PYTHONPYCACHEPREFIX": str(home / "pycache"),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its children it has reaped (the parsing processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_processor(n: int, work: Path) -> dict[str, float]:
    """An idle ``airflow dag-processor`` with n clusters, Airflow's default intervals: CPU per second
    and per pass, once every DAG is serialized."""
    sys.path.insert(0, str(ROOT))
    from devstack.liveairflow import LiveAirflow

    cfg = work / f"fleet-{n}.yaml"
    cfg.write_text(yaml.safe_dump(config(n)))
    env = {
        **_env(work),
        "AIRFLOW_HOME": str(work / f"airflow-{n}"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "INACTIVE_USERS_CONFIG": str(cfg),
        # Airflow's defaults, not the test harness's quick ones
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "300",
        "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "300",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
    }
    with LiveAirflow(
        work / f"run-{n}", env, components=("api-server", "dag-processor"), metadata_db="sqlite"
    ) as af:
        last = f"inactive_users__cluster_{n - 1:04d}"
        af.wait_for_dag(last, timeout=600)
        time.sleep(35)  # past the first pass's writes
        pid = af.pids["dag-processor"]
        c0, t0 = _cpu_seconds(pid), time.monotonic()
        time.sleep(PROCESSOR_SECONDS)
        c1, t1 = _cpu_seconds(pid), time.monotonic()
    cores = (c1 - c0) / (t1 - t0)
    return {"cores": cores, "per_pass": cores * 30.0}


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        print(f"DAG file parse time (median of {REPEAT}, fresh interpreter, {os.cpu_count()} cores)")
        print(
            f"{'clusters':>8} {'DagBag parse s':>15} {'DagBag CPU s':>13} {'factory only s':>15} "
            f"{'per cluster ms':>15}"
        )
        parse(1, Path(home))  # warms the bytecode cache
        results = {}
        for n in SIZES:
            m = results[n] = measure(n, Path(home))
            per_cluster_ms = 1000 * m["factory_warm"] / n
            print(
                f"{n:>8} {m['dagbag']:>15.3f} {m['dagbag_cpu']:>13.3f} {m['factory_warm']:>15.3f} "
                f"{per_cluster_ms:>15.2f}"
            )
        print(f"(importing airflow itself, before any DAG file: {m['import_airflow']:.2f} s)")
        if 500 in results:
            verdict = "met" if results[500]["dagbag"] < TARGET_500_S else "NOT met"
            print(f"target: 500 clusters parse in under {TARGET_500_S:.0f} s: {verdict}")

        print(f"\nbuild and serialize, CPU per cluster (median of {REPEAT}, fresh process, warm)")
        print(f"{'clusters':>8} {'build ms':>9} {'serialize ms':>13} {'total ms':>9} {'a pass s':>9}")
        worst = 0.0
        for n in SERIALIZE_SIZES:
            m = build_and_serialize(n, Path(home))
            build, ser = 1000 * m["build"] / n, 1000 * m["serialize"] / n
            worst = max(worst, build + ser)
            print(
                f"{n:>8} {build:>9.2f} {ser:>13.2f} {build + ser:>9.2f} {m['build'] + m['serialize']:>9.2f}"
            )
        verdict = "met" if worst <= TARGET_MS_PER_CLUSTER else "NOT met"
        print(f"target: <= {TARGET_MS_PER_CLUSTER:.0f} ms CPU per cluster, build and serialize: {verdict}")

        print(f"\nidle dag-processor, Airflow's default intervals ({PROCESSOR_SECONDS:.0f} s each)")
        print(f"{'clusters':>8} {'CPU cores':>10} {'CPU s per 30 s pass':>20}")
        for n in PROCESSOR_SIZES:
            m = idle_processor(n, Path(home))
            print(f"{n:>8} {m['cores']:>10.3f} {m['per_pass']:>20.2f}")


if __name__ == "__main__":
    main()
