"""Fleet: how long Airflow takes to parse the DAG file with 1, 50, 200 and 500 clusters configured.

Airflow re-parses DAG files every few minutes, so top-level work is multiplied. Each figure is the
median of several fresh-interpreter parses through Airflow's own DagBag (imports included), plus
the time spent in our factory alone (YAML read + DAG construction) inside a warm process.
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

PROBE = r"""
import json, os, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t1 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
t2 = time.perf_counter()
from inactive_users.dag_factory import build_dags
t3 = time.perf_counter()
dags = build_dags()
t4 = time.perf_counter()
print(json.dumps({"import_airflow": t1 - t0, "dagbag": t2 - t1, "factory_warm": t4 - t3,
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


def measure(n: int, home: Path) -> dict[str, float]:
    cfg = home / f"fleet-{n}.yaml"
    cfg.write_text(yaml.safe_dump(config(n)))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "INACTIVE_USERS_CONFIG": str(cfg),
        "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}",
    }
    runs = []
    for _ in range(REPEAT):
        out = (
            subprocess.run(
                [sys.executable, "-c", PROBE, str(ROOT / "dags")],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        runs.append(json.loads(out))
    assert all(r["dags"] == n and r["errors"] == 0 for r in runs), runs
    return {k: statistics.median(r[k] for r in runs) for k in ("import_airflow", "dagbag", "factory_warm")}


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        print(f"DAG file parse time (median of {REPEAT}, fresh interpreter, {os.cpu_count()} cores)")
        print(f"{'clusters':>8} {'DagBag parse s':>15} {'factory only s':>15} {'per cluster ms':>15}")
        for n in SIZES:
            m = measure(n, Path(home))
            per_cluster_ms = 1000 * m["factory_warm"] / n
            print(f"{n:>8} {m['dagbag']:>15.3f} {m['factory_warm']:>15.3f} {per_cluster_ms:>15.2f}")
        print(f"(importing airflow itself, before any DAG file: {m['import_airflow']:.2f} s)")


if __name__ == "__main__":
    main()
