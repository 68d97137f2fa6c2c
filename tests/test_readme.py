"""Every command in README.md is run here (or by `make demo` / CI itself), so the README cannot drift."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from devstack.awsfixtures import create_aurora, create_rds_instance
from devstack.motoserver import boto_client
from inactive_users.core.config import load
from tests.privileges import create_job_user
from tests.scenario import ROLE_PASSWORD, Scenario

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return [b.strip() for b in re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)]


def sql_block(containing: str) -> str:
    [found] = [b for b in blocks("sql") if containing in b]
    return found


def console(prefix: str) -> list[str]:
    return [line for b in blocks("console") for line in b.splitlines() if line.startswith(prefix)]


def test_every_console_command_is_accounted_for() -> None:
    commands = [line for b in blocks("console") for line in b.splitlines() if line.strip()]
    known = (
        "make demo",
        "make ui",
        "make test",
        "docker compose up",
        "aws rds ",
        "airflow dags trigger ",
        "airflow pools set ",
        "curl -X PATCH ",
    )
    assert all(c.startswith(known) for c in commands), commands
    # make demo: tests/test_demo.py; make ui: tests/test_ui.py; make test: CI;
    # docker compose up: tests/test_compose.py
    assert console("make demo") and console("make ui") and console("make test")
    assert console("docker compose up")


def test_the_approval_call_is_the_one_the_live_test_makes() -> None:
    """The README's answer to an approval: the same endpoint and body as tests/test_live_approval.py."""
    from tests.test_live_approval import DAG_ID, hitl_path

    [curl] = console("curl -X PATCH ")
    args = shlex.split(curl)
    url = hitl_path("$RUN_ID").replace(DAG_ID, "inactive_users__orders_prod")
    assert args[-1] == f"$AIRFLOW/api/v2/{url}"
    assert json.loads(args[args.index("-d") + 1]) == {"chosen_options": ["Approve"]}


def test_the_aws_cli_commands_are_valid_calls(scenario: Scenario) -> None:
    """Turn each of the README's `aws rds …` lines into the same API call and make it against moto."""
    lines = console("aws rds ")
    assert [shlex.split(line)[2] for line in lines] == ["modify-db-cluster", *["modify-db-instance"] * 2]
    for line in lines:
        args = shlex.split(line)
        options = dict(zip(args[3::2], args[4::2], strict=True))
        rds = boto_client(scenario.moto.endpoint_url, "rds", options.get("--region", "us-east-1"))
        exports = json.loads(options["--cloudwatch-logs-export-configuration"])
        if args[2] == "modify-db-cluster":
            create_aurora(rds, "orders-prod", master_user="master", exports=[])
            rds.modify_db_cluster(
                DBClusterIdentifier=options["--db-cluster-identifier"],
                CloudwatchLogsExportConfiguration=exports,
            )
            # the call was accepted; moto applies export changes to instances only: check the API model
            members = rds.meta.service_model.operation_model("ModifyDBCluster").input_shape.members
            assert members["CloudwatchLogsExportConfiguration"].members["EnableLogTypes"].type_name == "list"
            continue
        iid = options["--db-instance-identifier"]
        create_rds_instance(rds, iid, master_user="master", exports=[])
        rds.modify_db_instance(DBInstanceIdentifier=iid, CloudwatchLogsExportConfiguration=exports)
        described = rds.describe_db_instances(DBInstanceIdentifier=iid)["DBInstances"][0]
        assert described["EnabledCloudwatchLogsExports"] == ["postgresql"]
    assert "--cloudwatch-logs-export-configuration" in README  # preflight's message names the same fix


def test_the_yaml_examples_are_valid_configs(tmp_path: Path) -> None:
    """Each YAML example loads as it is; the CloudWatch agent example ships where the config reads."""
    from datetime import datetime

    from inactive_users.core.config import CLUSTER, DB_INSTANCE

    kinds = []
    for i, block in enumerate(blocks("yaml")):
        path = tmp_path / f"example-{i}.yaml"
        path.write_text(block + "\n", encoding="utf-8")
        loaded = load(path)
        assert loaded.errors == [], loaded.errors
        kinds += [(c.kind, c.dag_id) for c in loaded.clusters]
    assert kinds == [(DB_INSTANCE, "inactive_users__orders_db"), (CLUSTER, "inactive_users__billing_pg")]
    [agent] = [json.loads(b) for b in blocks("json") if '"logs_collected"' in b]
    [shipped] = agent["logs"]["logs_collected"]["files"]["collect_list"]
    standby = next(i for i in loaded.clusters[0].instances or () if i.name == "pg-standby")
    assert (shipped["log_group_name"], shipped["log_stream_name"]) == (standby.log_group, standby.log_stream)
    # the agent's timestamp format reads the start of a line written with %m (milliseconds)
    assert datetime.strptime("2026-12-07 13:27:46.460", shipped["timestamp_format"]).microsecond == 460000


def test_the_pool_command_makes_the_documented_pool(airflow_db: None) -> None:
    [line] = console("airflow pools set ")
    airflow = str(Path(sys.executable).parent / "airflow")
    args = shlex.split(line)
    done = subprocess.run([airflow, *args[1:]], env=os.environ.copy(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = subprocess.run([airflow, "pools", "get", args[3], "-o", "json"], capture_output=True, text=True)
    assert str(json.loads(listed.stdout.strip().splitlines()[-1])[0]["slots"]) == args[4]


def test_the_airflow_trigger_command_creates_a_run(airflow_db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    [line] = console("airflow dags trigger ")
    airflow = str(Path(sys.executable).parent / "airflow")
    env = {**os.environ, "INACTIVE_USERS_CONFIG": str(ROOT / "dags" / "inactive_users.yaml")}
    subprocess.run([airflow, "dags", "reserialize"], env=env, check=True, capture_output=True)
    args = shlex.split(line)
    done = subprocess.run([airflow, *args[1:]], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = subprocess.run(
        [airflow, "dags", "list-runs", "inactive_users__orders_prod", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    runs = json.loads(listed.stdout.strip().splitlines()[-1])
    assert any(r["state"] == "queued" for r in runs)
    # the conf it passes is one the DAG accepts
    from inactive_users.core.config import run_options

    cluster = load(ROOT / "dags" / "inactive_users.yaml").clusters[0]
    assert run_options(cluster, json.loads(args[args.index("--conf") + 1])).unlock_users == ("alice",)


def test_iam_policy_names_exactly_the_calls_the_code_makes() -> None:
    [policy] = [json.loads(b) for b in blocks("json") if '"Statement"' in b]
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert actions == {
        "s3:PutObject",
        "kms:GenerateDataKey",
        "kms:Decrypt",
        "rds:DescribeDBClusters",
        "rds:DescribeDBInstances",
        "rds:DescribeGlobalClusters",
        "logs:FilterLogEvents",
        "logs:DescribeLogGroups",
        "logs:DescribeLogStreams",
        "sns:Publish",
        "rds-db:connect",
    }
    source = "\n".join(p.read_text() for p in (ROOT / "plugins" / "inactive_users").rglob("*.py"))
    calls = set(
        re.findall(
            r"\.(describe_db_clusters|describe_db_instances|filter_log_events|describe_log_groups|"
            r"describe_log_streams|publish_to_target)\(|get_paginator\(\"(describe_global_clusters)\"\)",
            source,
        )
    )
    calls = {c for pair in calls for c in pair if c}
    assert calls == {
        "describe_db_clusters",
        "describe_db_instances",
        "describe_global_clusters",
        "filter_log_events",
        "describe_log_groups",
        "describe_log_streams",
        "publish_to_target",
    }
    other_boto = set(re.findall(r"client\.([a-z_]+)\(", source)) - calls
    assert other_boto == set(), other_boto
    # the evidence: PutObject through S3Hook (SSE-KMS: GenerateDataKey, and Decrypt for multipart)
    assert re.findall(r"hook\.(load_\w+)\(", source) == ["load_bytes"]
    assert '"ServerSideEncryption": "aws:kms"' in source and "replace=True" in source


def test_the_evidence_samples_have_the_columns_and_keys_the_code_writes() -> None:
    from datetime import UTC, datetime

    from inactive_users.core.evidence import COLUMNS, manifest, read_csv

    [sample_csv] = blocks("csv")
    rows = read_csv(sample_csv.encode() + b"\r\n")
    assert list(rows[0]) == list(COLUMNS) and len(rows) >= 3
    [sample] = [json.loads(b) for b in blocks("json") if '"counts_by_status"' in b]
    now = datetime.now(UTC)
    made = json.loads(
        manifest(
            cluster_id="c",
            dag_id="d",
            run_id="r",
            logical_date=now,
            evaluated_at=now,
            settings={},
            rows=[],
            csv_bytes=b"",
            csv_uri="s3://b/c.csv",
            job_user={},
            encryption={},
            written_at=now,
        )
    )
    assert list(sample) == list(made)
    assert set(sample["csv"]) <= set(made["csv"])
    assert {"evidence.s3_uri", "evidence.kms_key_id", "evidence.aws_conn_id"} <= set(
        re.findall(r"^\| `([a-z0-9_.]+)` \|", README, flags=re.M)
    )


def test_secrets_backend_class_exists() -> None:
    [ini] = blocks("ini")
    path = re.search(r"backend = ([\w.]+)", ini).group(1)  # type: ignore[union-attr]
    module, cls = path.rsplit(".", 1)
    assert hasattr(__import__(module, fromlist=[cls]), cls)


def test_documented_config_keys_are_the_accepted_ones() -> None:
    from inactive_users.core.config import ALERT_KEYS, CLUSTER_ONLY_KEYS, ENGINE_KEYS, OTHER_DEFAULT_KEYS

    table = re.findall(r"^\| `([a-z_.]+)` \|", README, flags=re.M)
    documented = {k for k in table if not k.startswith(("alert.", "evidence."))} | {"alert", "evidence"}
    documented |= {k for k in re.findall(r"`([a-z_]+)`", README) if k in CLUSTER_ONLY_KEYS}
    assert set(ENGINE_KEYS) | set(OTHER_DEFAULT_KEYS) <= documented
    assert set(CLUSTER_ONLY_KEYS) <= documented
    assert {f"alert.{k}" for k in ALERT_KEYS} <= set(table)
    example = yaml.safe_load((ROOT / "dags" / "inactive_users.yaml").read_text())
    assert set(example["defaults"]) <= documented


def _as(sc: Scenario, user: str, password: str, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(sc.pg.dsn(user=user, password=password, dbname=dbname), autocommit=True)


def test_the_least_privilege_grants_are_enough_to_lock_and_drop(scenario: Scenario) -> None:
    """Run the README's job-user SQL, then let the engine lock and drop as that user."""
    sc = scenario
    version = sc.pg.binaries.version
    sc.create_role("app_user")
    sc.create_role("stranger")  # not granted to the job on 16+: it must be left alone there
    sc.create_role("pooled_user")  # idle by its logins, but a pool holds a session open
    sc.sql("CREATE ROLE rds_iam NOLOGIN")  # exists on Aurora
    create_job_user(sc, ["app_user", "pooled_user"])
    if version >= 16:
        members = sc.sql(
            "SELECT m.admin_option, m.inherit_option, m.set_option FROM pg_auth_members m "
            "WHERE m.roleid = 'app_user'::regrole AND m.member = 'inactive_users_job'::regrole"
        )
        assert members == [(True, False, False)]
    sc.sql(re.search(r"`(GRANT rds_iam TO inactive_users_job;)`", README).group(1))  # type: ignore[union-attr]
    eng = sc.engine(max_action_ratio=1.0)
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("app_user", 100)
    sc.set_last_login("stranger", 100)
    sc.set_last_login("pooled_user", 100)
    sc.hold_session("pooled_user")
    sc.ship()
    report = eng.run([sc.writer])
    assert "app_user" in report.lock.names("locked")
    # the job user may not read other roles' session details, yet sees that the session is there
    assert report.plan is not None and report.plan.kept_active_session == ["pooled_user"]
    assert sc.role("pooled_user")["can_login"] is True  # type: ignore[index]
    if version >= 16:
        assert report.lock.names("failed") == ["stranger"]
        assert sc.role("stranger")["can_login"] is True  # type: ignore[index]
    else:
        assert "stranger" in report.lock.names("locked")
    sc.set_last_login("app_user", 200)
    assert sc.engine().run([sc.writer]).delete.names("dropped") == ["app_user"]
    # the state schema is the job's own and closed to everyone else
    sc.create_role("outsider")
    with _as(sc, "outsider", ROLE_PASSWORD) as other, pytest.raises(psycopg.errors.InsufficientPrivilege):
        other.execute("SELECT * FROM inactive_users.user_login_status")


def test_finishing_a_ready_to_delete_user_by_hand(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("departed_user")
    sc.create_role("app_owner")
    sc.sql("CREATE DATABASE app2")
    for db in ("postgres", "app2"):
        sc.sql("CREATE TABLE t (id int)", dbname=db)
        sc.sql("ALTER TABLE t OWNER TO departed_user", dbname=db)
        sc.sql("CREATE TABLE g (id int)", dbname=db)
        sc.sql("GRANT SELECT ON g TO departed_user", dbname=db)
    for db in ("postgres", "app2"):  # in each database listed
        for statement in sql_block("REASSIGN OWNED").split(";"):
            if statement.strip():
                sc.sql(statement, dbname=db)
    sc.sql("DROP ROLE departed_user")
    assert sc.role("departed_user") is None
    assert sc.sql("SELECT tableowner FROM pg_tables WHERE tablename = 't'", dbname="app2") == [("app_owner",)]


def test_history_query_and_lambda_migration(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("old_lambda_user")
    sc.create_role("fresh_user")
    # the AWS sample's tables, as its Lambda created them
    sc.sql(
        "CREATE TABLE public.user_login_status "
        "(user_name TEXT PRIMARY KEY, last_login_time TIMESTAMPTZ, status TEXT)"
    )
    sc.sql(
        "INSERT INTO public.user_login_status VALUES "
        "('old_lambda_user', now() - interval '120 days', 'Active'), ('fresh_user', now(), 'Active')"
    )
    eng = sc.engine()
    eng.migrate()
    sc.sql(sql_block("FROM public.user_login_status"))
    sc.sql(sql_block("FROM public.user_login_status"))  # safe to run twice
    sc.ship()
    report = eng.run([sc.writer])
    assert report.sync is not None and sorted(report.sync.adopted) == ["fresh_user", "old_lambda_user"]
    assert report.lock.names("locked") == ["old_lambda_user"]
    rows: list[Any] = sc.sql(sql_block("FROM inactive_users.action_history"))
    assert [r[3:5] for r in rows[:1]] == [("lock", "old_lambda_user")]
