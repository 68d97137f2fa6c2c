"""`make ui`: the demo's stage in a local Airflow UI, no Docker.

The same stage as `make demo` (PostgreSQL configured like Aurora, moto playing RDS, CloudWatch Logs
and SNS, the story roles with their real logins shipped), then a live Airflow with every component
on it. Prints the URL and how to log in, runs until Ctrl-C (or SIGTERM), then stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType

from devstack.airflowenv import airflow_env
from devstack.awsfixtures import alert_topic_with_queue, create_aurora
from devstack.demo import CLUSTER, DAG_ID, PASSWORD, write_config
from devstack.liveairflow import LiveAirflow
from devstack.motoserver import MotoServer, boto_client
from devstack.pgcluster import embedded_binaries, running_cluster
from devstack.stories import MASTER, create_roles, log_in_active_roles, seed_history

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("INACTIVE_USERS_UI_DIR", ROOT / ".ui"))


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Ctrl-C is how this stops, also when started from a shell that ignores SIGINT for what it
    # runs in the background (a non-interactive shell does, and Python then keeps it ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir()
    config = WORK / "demo.yaml"
    try:
        print("starting PostgreSQL configured like Aurora and a moto server", flush=True)
        with running_cluster(embedded_binaries(), PASSWORD) as pg, MotoServer() as moto:
            print(f"  PostgreSQL {pg.binaries.version} on 127.0.0.1:{pg.port}, moto on {moto.endpoint_url}")
            rds, logs, sns, sqs = (boto_client(moto.endpoint_url, s) for s in ("rds", "logs", "sns", "sqs"))
            writer, reader = create_aurora(rds, CLUSTER, master_user=MASTER, exports=["postgresql"])
            topic_arn, _ = alert_topic_with_queue(sns, sqs, "dba-alerts", "dba-inbox")
            here = f"127.0.0.1:{pg.port}"
            write_config(topic_arn, {writer: here, reader: here}, config)
            with pg.connect() as admin:
                create_roles(admin)
                seed_history(admin)
            log_in_active_roles(pg.dsn, logs, CLUSTER, (writer, reader), pg.logfile)
            print(
                "starting Airflow: api-server, scheduler, dag-processor, triggerer (LocalExecutor)",
                flush=True,
            )
            env = airflow_env(WORK, config, "demo", pg, moto)
            with LiveAirflow(WORK, env) as af:
                af.wait_for_dag(DAG_ID)
                print(f"Airflow UI: {af.base_url}/", flush=True)
                print("  Log in: no password; every visitor is an admin (simple auth manager, all admins).")
                print(f"  Unpause {DAG_ID} and trigger it; the alert lands in moto's SQS queue dba-inbox.")
                print(f"  Component logs: {af.log_dir}")
                print("Press Ctrl-C to stop everything.", flush=True)
                while True:
                    af.poll("Ctrl-C", lambda: False, timeout=3600 * 24 * 365, interval=1.0)
    except KeyboardInterrupt:
        pass
    print("stopped: Airflow, moto and PostgreSQL", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
