"""The environment of an Airflow child process that runs our DAGs against the dev stack."""

from __future__ import annotations

import json
import os
from pathlib import Path

from devstack.motoserver import MotoServer, airflow_aws_conn
from devstack.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parents[1]


def airflow_env(work: Path, config: Path, prefix: str, pg: PgCluster, moto: MotoServer) -> dict[str, str]:
    """Airflow at home in ``work``, our DAG folder and ``config``, connections ``<prefix>_pg``/``_aws``.

    The caller's own Airflow and AWS settings are left out, so nothing reaches a real account.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(work / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "INACTIVE_USERS_CONFIG": str(config),
            f"AIRFLOW_CONN_{prefix.upper()}_PG": json.dumps(pg.airflow_conn()),
            f"AIRFLOW_CONN_{prefix.upper()}_AWS": json.dumps(airflow_aws_conn(moto.endpoint_url)),
            "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}",
        }
    )
    return env
