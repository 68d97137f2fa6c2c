"""The YAML interface and per-run overrides: every bad value is named in the error."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from inactive_users.core.config import (
    _YAML_LOADER,
    ConfigError,
    EvidenceConfig,
    dag_id_for,
    load,
    run_options,
)

ENTRY = {"cluster_id": "orders-prod", "postgres_conn_id": "orders_pg"}


def write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    return path


def one(tmp_path: Path, defaults: dict[str, Any] | None = None, **entry: Any):  # type: ignore[no-untyped-def]
    loaded = load(write(tmp_path, {"defaults": defaults or {}, "clusters": [{**ENTRY, **entry}]}))
    return loaded


def test_defaults_apply_and_clusters_override(tmp_path: Path) -> None:
    loaded = one(
        tmp_path,
        defaults={"lock_after_days": 60, "exclude_users": ["app"], "alert": {"email": ["dba@example.com"]}},
        delete_after_days=None,
        region_name="eu-west-1",
        alert={"sns_topic_arn": "arn:aws:sns:eu-west-1:1:t"},
    )
    assert loaded.errors == []
    c = loaded.clusters[0]
    assert (c.settings.lock_after_days, c.settings.delete_after_days) == (60, None)
    assert c.settings.exclude_users == ("app",)
    assert c.region_name == "eu-west-1" and c.aws_conn_id == "aws_default" and c.schedule == "@daily"
    assert c.alert.email == ("dba@example.com",) and c.alert.sns_topic_arn == "arn:aws:sns:eu-west-1:1:t"
    assert c.dag_id == "inactive_users__orders_prod"


def test_evidence_is_set_in_defaults_and_per_cluster(tmp_path: Path) -> None:
    doc = {
        "defaults": {"evidence": {"s3_uri": "s3://audit-bucket/inactive-users"}},
        "clusters": [
            {**ENTRY, "aws_conn_id": "ops_aws"},  # prefix made a folder, SSE-S3, the cluster's connection
            {
                "cluster_id": "billing",
                "postgres_conn_id": "b",
                "evidence": {"kms_key_id": "alias/audit", "aws_conn_id": "audit_aws"},
            },
            {"cluster_id": "scratch", "postgres_conn_id": "s", "evidence": {"s3_uri": None}},  # off here
            {"cluster_id": "root", "postgres_conn_id": "r", "evidence": {"s3_uri": "s3://audit.example"}},
            {"cluster_id": "plain", "postgres_conn_id": "p", "aws_conn_id": None},
        ],
    }
    loaded = load(write(tmp_path, doc))
    assert loaded.errors == []
    orders, billing, scratch, root, plain = loaded.clusters
    assert orders.evidence == EvidenceConfig("audit-bucket", "inactive-users/", None, "ops_aws")
    assert orders.evidence.s3_uri == "s3://audit-bucket/inactive-users/"
    assert billing.evidence == EvidenceConfig("audit-bucket", "inactive-users/", "alias/audit", "audit_aws")
    assert scratch.evidence is None
    assert root.evidence == EvidenceConfig("audit.example", "", None, "aws_default")
    assert plain.evidence == EvidenceConfig("audit-bucket", "inactive-users/", None, None)  # boto's chain
    assert one(tmp_path).clusters[0].evidence is None  # not configured: no evidence


def test_shipped_example_config_is_valid() -> None:
    loaded = load(Path(__file__).resolve().parents[1] / "dags" / "inactive_users.yaml")
    assert loaded.errors == [] and [c.cluster_id for c in loaded.clusters] == ["orders-prod"]


def test_the_commented_examples_of_the_shipped_config_are_valid_once_uncommented(tmp_path: Path) -> None:
    shipped = (Path(__file__).resolve().parents[1] / "dags" / "inactive_users.yaml").read_text()
    lines = [
        line.replace("  # ", "  ", 1) if line.startswith(("  # - ", "  #   ")) else line
        for line in shipped.splitlines()
    ]
    loaded = load(write(tmp_path, "\n".join(lines)))
    assert loaded.errors == []
    assert [(c.cluster_id, c.id_key) for c in loaded.clusters] == [
        ("orders-prod", "cluster_id"),
        ("billing-db", "db_instance_id"),
        ("reports-pg", "cluster_id"),
    ]


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"lock_after_dayz": 3}, "clusters[1] ('orders-prod'): unknown key 'lock_after_dayz'"),
    ({"lock_after_days": "90"}, "lock_after_days must be int or null, got '90'"),
    ({"lock_after_days": True}, "lock_after_days must be int or null, got True"),
    ({"lock_after_days": 0}, "lock_after_days must be a whole number of days >= 1 or null, got 0"),
    ({"delete_after_days": 90}, "delete_after_days (90) must be greater than lock_after_days (90)"),
    ({"lock_method": "revoke"}, "lock_method must be one of nologin, connection_limit, got 'revoke'"),
    ({"exclude_patterns": ["(bad"]}, "exclude_patterns: '(bad' is not a valid regular expression"),
    ({"exclude_users": "bob"}, "exclude_users must be list, got 'bob'"),
    ({"exclude_users": [1]}, "exclude_users must be a list of strings, got (1,)"),
    ({"max_action_ratio": 0}, "max_action_ratio must be in (0, 1], got 0"),
    ({"max_action_ratio": 2}, "max_action_ratio must be in (0, 1], got 2"),
    ({"overlap_minutes": -1}, "overlap_minutes must be a positive number, got -1"),
    ({"state_schema": "public"}, "state_schema must be a dedicated schema, not 'public'"),
    ({"state_schema": "Bad Name"}, "state_schema must be a lower-case SQL identifier"),
    ({"dry_run": "yes"}, "dry_run must be bool, got 'yes'"),
    ({"page_size": 20000}, "page_size must be between 1 and 10000, got 20000"),
    ({"schedule": 5}, "schedule must be str or null, got 5"),
    (
        {"alert": {"sns_topic_arn": "dba-topic"}},
        "alert.sns_topic_arn must be an SNS topic ARN, got 'dba-topic'",
    ),
    ({"alert": {"email": "dba@example.com"}}, "alert.email must be a list of e-mail addresses"),
    ({"alert": {"pager": "x"}}, "unknown key alert.pager"),
    ({"cluster_id": "bad_id!"}, "cluster_id 'bad_id!' is not a valid DB cluster identifier"),
    ({"postgres_conn_id": ""}, "postgres_conn_id is required"),
    ({"instances": []}, "instances must be a non-empty list of instance names"),
    ({"retries": -1}, "retries must be >= 0, got -1"),
    ({"retries": 1.5}, "retries must be int, got 1.5"),
    ({"exempt_groups": "dba"}, "exempt_groups must be list, got 'dba'"),
    ({"exempt_groups": [None]}, "exempt_groups must be a list of strings, got (None,)"),
    ({"ignore_wal_receivers": "barman"}, "ignore_wal_receivers must be list, got 'barman'"),
    ({"include_superusers": "no"}, "include_superusers must be bool, got 'no'"),
    ({"override_guard": 1}, "override_guard must be bool, got 1"),
    ({"lookback_hours": 0}, "lookback_hours must be a positive number, got 0"),
    ({"lookback_hours": "1d"}, "lookback_hours must be int or float, got '1d'"),
    ({"max_log_gap_hours": -3}, "max_log_gap_hours must be a positive number, got -3"),
    ({"settle_seconds": 1200}, "overlap_minutes (15) must cover settle_seconds (1200)"),
    ({"settle_seconds": "60"}, "settle_seconds must be int, got '60'"),
    ({"lease_hours": 0}, "lease_hours must be > 0, got 0"),
    ({"aws_conn_id": 5}, "aws_conn_id must be str or null, got 5"),
    ({"region_name": ["us-east-1"]}, "region_name must be str or null, got ['us-east-1']"),
    ({"master_user": 7}, "master_user must be str or null, got 7"),
    ({"log_group": False}, "log_group must be str or null, got False"),
    ({"instances": ["i-1", ""]}, "instances[2] must be an instance name or a mapping with name"),
    ({"db_instance_id": "orders-db"}, "give either cluster_id (an Aurora or Multi-AZ DB cluster"),
    (
        {"read_replicas": [{"db_instance_id": "orders-db-r1"}]},
        "read_replicas cannot be used with cluster_id: read_replicas is for an RDS DB instance",
    ),
    ({"alert": {"slack_conn_id": 3}}, "alert.slack_conn_id must be a string or null, got 3"),
    ({"alert": "sns"}, "alert must be dict, got 'sns'"),
    ({"logs_requests_per_second": 0}, "logs_requests_per_second must be a number in (0, 100], got 0"),
    ({"logs_max_concurrency": 0}, "logs_max_concurrency must be a whole number from 1 to 32, got 0"),
    ({"warn_before_days": 0}, "warn_before_days must be a whole number of days >= 1 or null, got 0"),
    ({"warn_before_days": "2w"}, "warn_before_days must be int or null, got '2w'"),
    ({"notify_role_contacts": "yes"}, "notify_role_contacts must be bool, got 'yes'"),
    ({"approve_drops": "yes"}, "approve_drops must be bool, got 'yes'"),
    (
        {"approval_timeout_hours": 0},
        "approval_timeout_hours must be > 0 (how long a DBA has to approve the drops), got 0",
    ),
    ({"approval_timeout_hours": "3d"}, "approval_timeout_hours must be int or float, got '3d'"),
    (
        {"max_unprotected_days": 0},
        "max_unprotected_days must be > 0 (days without a run that acted before alerts escalate), got 0",
    ),
    ({"max_unprotected_days": "3"}, "max_unprotected_days must be int or float, got '3'"),
    ({"ingest_pool": " "}, "ingest_pool must be an Airflow pool name or null, got ' '"),
    ({"instance_endpoints": {"i-1": "db-1:five"}}, "instance_endpoints['i-1'] must be 'host:port'"),
    ({"instance_endpoints": ["db-1:5432"]}, "instance_endpoints must be dict or null"),
    ({"global_secondaries": [{"cluster_id": "dr"}]}, "global_secondaries[1]: region_name must be an AWS"),
    ({"evidence": "s3://audit/x"}, "evidence must be dict or null, got 's3://audit/x'"),
    (
        {"evidence": {"s3_uri": "https://audit.s3.amazonaws.com/x/"}},
        "evidence.s3_uri must be 's3://<bucket>/<prefix>' with a valid bucket name (3-63 characters "
        "a-z 0-9 . -), e.g. 's3://audit-bucket/inactive-users/', got 'https://audit.s3.amazonaws.com/x/'",
    ),
    ({"evidence": {"s3_uri": "s3:///inactive-users/"}}, "got 's3:///inactive-users/'"),
    ({"evidence": {"s3_uri": "s3://Audit_Bucket/x/"}}, "valid bucket name"),
    ({"evidence": {"s3_uri": "s3://audit//x/"}}, "empty path segment ('//') in 's3://audit//x/'"),
    ({"evidence": {"s3_uri": 5}}, "evidence.s3_uri must be a string or null, got 5"),
    (
        {"evidence": {"s3_uri": "s3://audit/x/", "kms_key_id": "my key"}},
        "evidence.kms_key_id must be a KMS key id, key ARN or alias ARN without spaces "
        "(or null for SSE-S3), got 'my key'",
    ),
    (
        {"evidence": {"kms_key_id": "alias/audit"}},
        "evidence.s3_uri is missing (e.g. 's3://audit-bucket/inactive-users/')",
    ),
    ({"evidence": {"s3_uri": "s3://audit/x/", "aws_conn_id": 3}}, "evidence.aws_conn_id must be a string"),
    (
        {"evidence": {"bucket": "audit"}},
        "unknown key evidence.bucket (allowed: s3_uri, kms_key_id, aws_conn_id)",
    ),
    (
        {"global_secondaries": [{"cluster_id": "dr", "region_name": "eu-west-1", "instances": []}]},
        "global_secondaries[1]: unknown key(s) ['instances']",
    ),
]


def test_every_key_has_a_bad_value_case() -> None:
    from inactive_users.core.config import (
        ALERT_KEYS,
        CLUSTER_ONLY_KEYS,
        ENGINE_KEYS,
        EVIDENCE_KEYS,
        OTHER_DEFAULT_KEYS,
    )

    covered = {next(iter(entry)) for entry, _ in BAD_VALUES}
    alerts = [entry["alert"] for entry, _ in BAD_VALUES if isinstance(entry.get("alert"), dict)]
    covered |= {f"alert.{k}" for alert in alerts for k in alert}
    evidence = [e["evidence"] for e, _ in BAD_VALUES if isinstance(e.get("evidence"), dict)]
    covered |= {f"evidence.{k}" for ev in evidence for k in ev}
    expected = (
        set(ENGINE_KEYS)
        | set(OTHER_DEFAULT_KEYS)
        | set(CLUSTER_ONLY_KEYS)
        | {f"alert.{k}" for k in ALERT_KEYS}
        | {f"evidence.{k}" for k in EVIDENCE_KEYS}
    )
    assert expected - covered == set()


@pytest.mark.parametrize("entry, message", BAD_VALUES)
def test_bad_values_are_named(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    loaded = one(tmp_path, **entry)
    assert loaded.clusters == []
    assert len(loaded.errors) == 1
    assert message in loaded.errors[0]
    assert loaded.errors[0].startswith("clusters[1]")


def test_one_bad_entry_does_not_take_down_the_others(tmp_path: Path) -> None:
    doc = {
        "clusters": [
            ENTRY,
            {"cluster_id": "broken", "postgres_conn_id": "x", "lock_after_days": -5},
            {"cluster_id": "billing", "postgres_conn_id": "billing_pg"},
            {"cluster_id": "orders-prod", "postgres_conn_id": "dup"},  # listed twice
        ]
    }
    loaded = load(write(tmp_path, doc))
    assert [c.cluster_id for c in loaded.clusters] == ["orders-prod", "billing"]
    assert loaded.errors[0].startswith("clusters[2] ('broken'): lock_after_days")
    assert (
        "clusters[4] ('orders-prod'): DAG id inactive_users__orders_prod is already used by clusters[1]"
        in (loaded.errors[1])
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("clusters: [", "is not valid YAML"),
        ("clusters: !!python/object/apply:os.getcwd []\n", "is not valid YAML"),  # a safe loader
        ("- a\n- b\n", "the top level must be a mapping"),
        ("defaults: {}\nclustrs: []\n", "unknown top-level key(s) ['clustrs']"),
        ("defaults: {bogus: 1}\n", "defaults: unknown key 'bogus'"),
        ("clusters: {a: 1}\n", "'clusters' must be a list"),
    ],
)
def test_broken_files_fail_as_a_whole(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load(write(tmp_path, text))
    assert message in str(err.value)


def test_the_loader_reads_what_yaml_safe_load_reads() -> None:
    """The C loader, where PyYAML has it, gives what the pure-Python safe loader gives."""
    text = (
        "defaults: &d {dry_run: yes, lock_after_days: 0o17, exclude_users: [app, 'etl'], schedule: ~}\n"
        "clusters:\n"
        "  - {<<: *d, cluster_id: orders-prod, postgres_conn_id: pg, when: 2024-01-01}\n"
        "  - cluster_id: billing\n"
        "    postgres_conn_id: >\n      folded\n      text\n"
        "    max_action_ratio: 1e-1\n"
    )
    assert yaml.load(text, Loader=_YAML_LOADER) == yaml.safe_load(text)


def test_missing_file_names_the_env_var(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="INACTIVE_USERS_CONFIG"):
        load(tmp_path / "nope.yaml")


def test_dag_ids() -> None:
    assert dag_id_for("orders-prod.eu") == "inactive_users__orders_prod_eu"


def test_run_options_override_for_one_run_and_say_where_values_came_from(tmp_path: Path) -> None:
    cluster = one(tmp_path, exclude_users=["app"]).clusters[0]
    opts = run_options(cluster, {})
    assert opts.settings == cluster.settings and opts.sources["dry_run"] == "config"
    opts = run_options(
        cluster,
        {
            "dry_run": True,
            "lock_after_days": 30,
            "delete_after_days": None,
            "exclude_users": ["bob"],
            "unlock_users": ["carol"],
            "as_of": "2027-03-01T00:00:00Z",
        },
    )
    s = opts.settings
    assert (s.dry_run, s.lock_after_days, s.delete_after_days) == (True, 30, None)
    assert s.exclude_users == ("app", "bob")  # a run can protect more roles, never fewer
    assert opts.unlock_users == ("carol",)
    assert opts.as_of == datetime(2027, 3, 1, tzinfo=UTC)
    assert opts.sources == {
        "dry_run": "trigger conf",
        "lock_after_days": "trigger conf",
        "delete_after_days": "trigger conf",
        "exclude_users": "config + trigger conf",
        "unlock_users": "trigger conf",
        "as_of": "trigger conf",
    }
    # the form sends every field; unchanged values still come from the config
    same = run_options(
        cluster, {"dry_run": False, "lock_after_days": 90, "exclude_users": ["app"], "as_of": None}
    )
    assert same.sources["lock_after_days"] == "config" and same.settings == cluster.settings


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"as_of": "2027-03-01T00:00:00Z"}, "as_of is accepted only together with dry_run: true"),
        (
            {"dry_run": True, "as_of": "next tuesday"},
            "as_of must be an ISO-8601 date-time, got 'next tuesday'",
        ),
        ({"dry_run": True, "as_of": "2027-03-01T00:00:00"}, "as_of must include a time zone"),
        ({"dry_run": "yes"}, "dry_run must be true or false"),
        ({"lock_after_days": 200}, "delete_after_days (180) must be greater than lock_after_days (200)"),
        ({"unlock_users": "bob"}, "unlock_users must be a list of role names"),
        ({"exclude_users": [""]}, "exclude_users must be a list of role names"),
        ({"lock_after": 3}, "unknown trigger parameter(s) ['lock_after']"),
        (
            {"lock_after_days": "ninety"},
            "lock_after_days must be a whole number of days >= 1 or null, got 'ninety'",
        ),
        ({"delete_after_days": 0}, "delete_after_days must be a whole number of days >= 1 or null, got 0"),
        ({"override_retention": "yes"}, "override_retention must be true or false, got 'yes'"),
    ],
)
def test_bad_trigger_conf_is_named(tmp_path: Path, conf: dict[str, Any], message: str) -> None:
    cluster = one(tmp_path).clusters[0]
    with pytest.raises(ConfigError) as err:
        run_options(cluster, conf)
    assert message in str(err.value)


def test_topology_keys(tmp_path: Path) -> None:
    from inactive_users.core.config import Endpoint, SecondaryCluster

    c = one(
        tmp_path,
        instance_endpoints={"w-1": "127.0.0.1:6001", "r-1": "[::1]:6002"},
        global_secondaries=[
            {"cluster_id": "orders-dr", "region_name": "eu-west-1", "instance_endpoints": {"dr-1": "h:5"}}
        ],
        ingest_pool="cloudwatch_us_east_1",
    ).clusters[0]
    assert c.instance_endpoints == {"w-1": Endpoint("127.0.0.1", 6001), "r-1": Endpoint("::1", 6002)}
    assert c.global_secondaries == (
        SecondaryCluster("orders-dr", "eu-west-1", None, {"dr-1": Endpoint("h", 5)}),
    )
    assert c.ingest_pool == "cloudwatch_us_east_1"
    defaults = one(tmp_path).clusters[0]
    assert (defaults.instance_endpoints, defaults.global_secondaries, defaults.ingest_pool) == (None,) * 3
    assert (defaults.settings.logs_requests_per_second, defaults.settings.logs_max_concurrency) == (5, 4)


def test_run_options_report_each_effective_value(tmp_path: Path) -> None:
    cluster = one(tmp_path).clusters[0]
    opts = run_options(cluster, {"dry_run": True, "unlock_users": ["x"], "as_of": "2027-01-01T00:00:00Z"})
    assert {k: opts.value(k) for k in opts.sources} == {
        "dry_run": True,
        "lock_after_days": 90,
        "delete_after_days": 180,
        "exclude_users": (),
        "unlock_users": ["x"],
        "as_of": "2027-01-01T00:00:00+00:00",
    }


RDS = {"db_instance_id": "orders-db", "postgres_conn_id": "orders_pg"}


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"postgres_conn_id": "x"}, "clusters[1]: cluster_id or db_instance_id is required"),
        ({**RDS, "db_instance_id": "orders_db"}, "db_instance_id 'orders_db' is not a valid DB instance"),
        ({**RDS, "instances": ["a"]}, "instances cannot be used with db_instance_id"),
        ({**RDS, "global_secondaries": []}, "global_secondaries cannot be used with db_instance_id"),
        ({**RDS, "read_replicas": [{"region_name": "eu-west-1"}]}, "read_replicas[1]: db_instance_id must"),
        (
            {**RDS, "read_replicas": [{"db_instance_id": "r1", "region_name": "europe"}]},
            "read_replicas[1]: region_name must be an AWS region such as 'eu-west-1', got 'europe'",
        ),
        (
            {**RDS, "read_replicas": [{"db_instance_id": "r1", "log_group": "a b"}]},
            "read_replicas[1]: log_group must be a CloudWatch Logs log group name, got 'a b'",
        ),
        ({**RDS, "read_replicas": [{"db_instance_id": "r1", "port": 1}]}, "unknown key(s) ['port']"),
        ({**RDS, "read_replicas": [{"db_instance_id": "r1"}] * 2}, "read_replicas[2]: 'r1' is listed twice"),
        ({**RDS, "read_replicas": "r1"}, "read_replicas must be list or null, got 'r1'"),
        (
            {**RDS, "log_group": "no spaces please"},
            "log_group must be a CloudWatch Logs log group name, got 'no spaces please'",
        ),
        ({**ENTRY, "instances": [{"name": "a", "host": "x"}]}, "instances[1]: unknown key(s) ['host']"),
        ({**ENTRY, "instances": [{"log_group": "/pg/a"}]}, "instances[1]: name must be the instance's name"),
        ({**ENTRY, "instances": [{"name": "a", "log_stream": "a:b"}]}, "log_stream must be a CloudWatch"),
        ({**ENTRY, "instances": ["a", "a"]}, "instance 'a' is listed twice in instances"),
        (
            {**ENTRY, "instances": [{"name": "a", "log_group": "/pg"}, {"name": "b", "log_group": "/pg"}]},
            "instances 'a' and 'b' both read log group '/pg'; give each its own log_group",
        ),
        (
            {**ENTRY, "instances": ["a", {"name": "b", "log_stream": "a"}]},
            "instances 'a' and 'b' both read stream 'a' of the entry's log group",
        ),
        (
            {
                **ENTRY,
                "instances": [
                    {"name": "a", "log_group": "/pg"},
                    {"name": "b", "log_group": "/pg", "log_stream": "b"},
                ],
            },
            "instances 'a' and 'b' both read log group '/pg'",
        ),
    ],
)
def test_rds_and_self_managed_entries_name_what_is_wrong(tmp_path: Path, entry: Any, message: str) -> None:
    loaded = load(write(tmp_path, {"clusters": [entry]}))
    assert loaded.clusters == [] and len(loaded.errors) == 1
    assert message in loaded.errors[0], loaded.errors[0]


def test_an_rds_instance_entry_and_where_each_instance_log_is(tmp_path: Path) -> None:
    from inactive_users.core.config import CLUSTER, DB_INSTANCE, ConfiguredInstance, ReadReplica

    doc = {
        "clusters": [
            {
                **RDS,
                "region_name": "us-east-1",
                "read_replicas": [
                    {"db_instance_id": "orders-db-r1"},
                    {"db_instance_id": "orders-db-eu", "region_name": "eu-west-1", "log_group": "/x/y"},
                ],
            },
            {"db_instance_id": "billing-db", "postgres_conn_id": "b", "read_replicas": []},
            {
                **ENTRY,
                "log_group": "/pg/shared",
                "instances": [
                    "primary-1",
                    {"name": "standby-1", "log_group": "/pg/standby-1"},
                    {"name": "standby-2", "log_stream": "standby-2.log"},
                    {"name": "standby-3", "log_group": "/pg/standby-3", "log_stream": "s3"},
                ],
            },
        ]
    }
    loaded = load(write(tmp_path, doc))
    assert loaded.errors == [], loaded.errors
    rds, billing, managed = loaded.clusters
    assert (rds.kind, rds.cluster_id, rds.dag_id, rds.id_key) == (
        DB_INSTANCE,
        "orders-db",
        "inactive_users__orders_db",
        "db_instance_id",
    )
    assert rds.read_replicas == (
        ReadReplica("orders-db-r1", None, None),
        ReadReplica("orders-db-eu", "eu-west-1", "/x/y"),
    )
    assert billing.read_replicas == () and billing.instances is None
    assert (managed.kind, managed.id_key) == (CLUSTER, "cluster_id")
    assert managed.instances == (
        ConfiguredInstance("primary-1"),
        ConfiguredInstance("standby-1", "/pg/standby-1"),
        ConfiguredInstance("standby-2", None, "standby-2.log"),
        ConfiguredInstance("standby-3", "/pg/standby-3", "s3"),
    )


@pytest.mark.parametrize(
    ("keys", "kind"),
    [
        ({}, "Aurora or Multi-AZ DB cluster"),
        ({"cluster_id": None, "db_instance_id": "orders-db"}, "RDS instance"),
        ({"instances": ["pg-1", "pg-2"]}, "self-managed"),
    ],
)
def test_the_engine_kind_follows_the_entry_keys(tmp_path: Path, keys: dict[str, Any], kind: str) -> None:
    from inactive_users.core.kinds import engine_kind

    entry = {k: v for k, v in {**ENTRY, **keys}.items() if v is not None}
    [cluster] = load(write(tmp_path, {"clusters": [entry]})).clusters
    assert engine_kind(cluster) == kind
