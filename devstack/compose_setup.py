"""The docker-compose demo's helper: sets the stage once, then plays Aurora's log export forever.

Creates the RDS cluster record, SNS topic + SQS queue, the story roles and their history in the
target PostgreSQL; then, every interval, logs in as the active roles and ships the new lines of the
server log into the moto CloudWatch Logs group, one stream per "instance".
"""

from __future__ import annotations

import argparse
import time

import psycopg

from devstack.awsfixtures import alert_topic_with_queue, create_aurora
from devstack.motoserver import boto_client
from devstack.stories import MASTER, create_roles, log_in_active_roles, seed_history


def wait_for(what: str, check: object, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()  # type: ignore[operator]
            print(f"{what} is up", flush=True)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not come up: {exc}") from exc
            time.sleep(2)


def setup(dsn: str, endpoint: str, cluster: str) -> list[str]:
    rds = boto_client(endpoint, "rds")
    existing = rds.describe_db_clusters()["DBClusters"]
    found = [c for c in existing if c["DBClusterIdentifier"] == cluster]
    if found:  # a restarted container: the cluster record is already there
        instances = sorted(m["DBInstanceIdentifier"] for m in found[0]["DBClusterMembers"])
    else:
        instances = create_aurora(rds, cluster, master_user=MASTER, exports=["postgresql"])
    topic, queue = alert_topic_with_queue(
        boto_client(endpoint, "sns"), boto_client(endpoint, "sqs"), "dba-alerts", "dba-inbox"
    )
    print(f"RDS cluster {cluster} with {instances}; alerts: {topic} -> {queue}", flush=True)
    with psycopg.connect(dsn, autocommit=True) as admin:
        create_roles(admin)
        seed_history(admin)
    return instances


def play_once(dsn: str, endpoint: str, cluster: str, logfile: str, instances: list[str], offset: int) -> int:
    """Log in as each active role and ship what that wrote to its instance's stream; returns the offset."""

    def dsn_for(user: str, password: str) -> str:
        return psycopg.conninfo.make_conninfo(dsn, user=user, password=password)

    logins, offset = log_in_active_roles(
        dsn_for, boto_client(endpoint, "logs"), cluster, instances, logfile, offset, pause=0.5
    )
    for name, shipped, stream in logins:
        print(f"{name} logged in; {shipped} lines shipped to {stream}", flush=True)
    return offset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--cluster", default="demo-aurora")
    ap.add_argument("--logfile", required=True)
    ap.add_argument("--interval", type=float, default=60)
    args = ap.parse_args()
    wait_for("PostgreSQL", lambda: psycopg.connect(args.dsn).close())
    wait_for("moto", lambda: boto_client(args.endpoint, "sts").get_caller_identity())
    instances = setup(args.dsn, args.endpoint, args.cluster)
    offset = 0
    while True:
        offset = play_once(args.dsn, args.endpoint, args.cluster, args.logfile, instances, offset)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
