"""Fleet: how long Airflow takes to parse the DAG file with 1, 50, 200 and 500 clusters configured.

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
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "INACTIVE_USERS_CONFIG": str(cfg),
        "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}",
        "PYTHONPYCACHEPREFIX": str(home / "pycache"),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
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


if __name__ == "__main__":
    main()
