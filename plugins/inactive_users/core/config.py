"""The YAML configuration: one entry per cluster, validated with messages that name entry and key.

Reading the file is the only work done when Airflow parses the DAG file: no database, no AWS.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from inactive_users.core.settings import EngineSettings, SettingsError

CONFIG_ENV = "INACTIVE_USERS_CONFIG"
DAG_ID_PREFIX = "inactive_users__"

# Keys of ``defaults`` and of each cluster entry that tune the engine (all optional).
ENGINE_KEYS = (
    "lock_after_days",
    "delete_after_days",
    "lock_method",
    "dry_run",
    "exclude_users",
    "exclude_patterns",
    "exempt_groups",
    "include_superusers",
    "max_action_ratio",
    "override_guard",
    "lookback_hours",
    "overlap_minutes",
    "max_log_gap_hours",
    "state_schema",
    "page_size",
    "settle_seconds",
    "logs_requests_per_second",
    "logs_max_concurrency",
    "warn_before_days",
    "notify_role_contacts",
    "approve_drops",
    "ignore_wal_receivers",
)
OTHER_DEFAULT_KEYS = (
    "schedule",
    "alert",
    "retries",
    "lease_hours",
    "ingest_pool",
    "evidence",
    "approval_timeout_hours",
    "max_unprotected_days",
)
CLUSTER_ONLY_KEYS = (
    "cluster_id",
    "db_instance_id",
    "postgres_conn_id",
    "aws_conn_id",
    "region_name",
    "instances",
    "master_user",
    "log_group",
    "instance_endpoints",
    "global_secondaries",
    "read_replicas",
)
# Keys that only one kind of entry takes, with the kind that does
_CLUSTER_KEYS = ("instances", "global_secondaries")  # with cluster_id
_DB_INSTANCE_KEYS = ("read_replicas",)  # with db_instance_id
SECONDARY_KEYS = ("cluster_id", "region_name", "log_group", "instance_endpoints")
REPLICA_KEYS = ("db_instance_id", "region_name", "log_group")
INSTANCE_KEYS = ("name", "log_group", "log_stream")

#: ``cluster_id``: an Aurora cluster or an RDS Multi-AZ DB cluster (DescribeDBClusters), or with
#: ``instances`` a self-managed set-up; ``db_instance_id``: an RDS for PostgreSQL DB instance and
#: the read replicas that replicate from it (DescribeDBInstances).
CLUSTER = "cluster"
DB_INSTANCE = "db_instance"
ALERT_KEYS = ("sns_topic_arn", "slack_conn_id", "email")
EVIDENCE_KEYS = ("s3_uri", "kms_key_id", "aws_conn_id")
_TYPES: dict[str, tuple[type, ...]] = {
    "lock_after_days": (int, type(None)),
    "delete_after_days": (int, type(None)),
    "lock_method": (str,),
    "dry_run": (bool,),
    "exclude_users": (list,),
    "exclude_patterns": (list,),
    "exempt_groups": (list,),
    "include_superusers": (bool,),
    "max_action_ratio": (int, float),
    "override_guard": (bool,),
    "lookback_hours": (int, float),
    "overlap_minutes": (int, float),
    "max_log_gap_hours": (int, float),
    "state_schema": (str,),
    "page_size": (int,),
    "settle_seconds": (int,),
    "logs_requests_per_second": (int, float),
    "logs_max_concurrency": (int,),
    "warn_before_days": (int, type(None)),
    "notify_role_contacts": (bool,),
    "approve_drops": (bool,),
    "ignore_wal_receivers": (list,),
    "approval_timeout_hours": (int, float),
    "max_unprotected_days": (int, float),
    "ingest_pool": (str, type(None)),
    "instance_endpoints": (dict, type(None)),
    "global_secondaries": (list, type(None)),
    "read_replicas": (list, type(None)),
    "schedule": (str, type(None)),
    "alert": (dict,),
    "evidence": (dict, type(None)),
    "retries": (int,),
    "lease_hours": (int, float),
    "cluster_id": (str,),
    "db_instance_id": (str,),
    "postgres_conn_id": (str,),
    "aws_conn_id": (str, type(None)),
    "region_name": (str, type(None)),
    "instances": (list, type(None)),
    "master_user": (str, type(None)),
    "log_group": (str, type(None)),
}
_CLUSTER_ID = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
# CloudWatch Logs names: a log group 1-512 of these characters, a log stream 1-512 without ':' or '*'
_LOG_GROUP = re.compile(r"[.\-_/#A-Za-z0-9]{1,512}")
_LOG_STREAM = re.compile(r"[^:*]{1,512}")
# S3 bucket naming rules (general purpose buckets): 3-63 of a-z 0-9 . -, a letter or digit at each end
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})")
# The same safe loader, in C where PyYAML has libyaml: 500 clusters load in 10 ms rather than 75 ms
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(ValueError):
    """The configuration is wrong; the message names the entry, the key and the value."""


@dataclass(frozen=True)
class AlertConfig:
    sns_topic_arn: str | None = None
    slack_conn_id: str | None = None
    email: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.sns_topic_arn or self.slack_conn_id or self.email)


@dataclass(frozen=True)
class EvidenceConfig:
    """Where each real run writes its evidence for auditors (a CSV and a JSON manifest in S3)."""

    bucket: str
    prefix: str  # "" or ending with "/"
    kms_key_id: str | None = None  # None: SSE-S3 (AES256)
    aws_conn_id: str | None = None  # the S3 writer's connection (the cluster's unless set)

    @property
    def s3_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Endpoint:
    """Where one instance accepts connections (the Postgres connection's host and port replaced)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SecondaryCluster:
    """A secondary cluster of an Aurora Global Database: its roles are ours, its logins count."""

    cluster_id: str
    region_name: str
    log_group: str | None = None
    instance_endpoints: dict[str, Endpoint] | None = None


@dataclass(frozen=True)
class ReadReplica:
    """An RDS read replica listed by the DBA (``read_replicas``) instead of found by DescribeDBInstances."""

    db_instance_id: str
    region_name: str | None = None  # None: the primary's region
    log_group: str | None = None  # None: /aws/rds/instance/<db_instance_id>/postgresql


@dataclass(frozen=True)
class ConfiguredInstance:
    """One server of a set-up the DBA lists (``instances``) and where its connection log is.

    Without ``log_group`` the instance writes stream ``log_stream`` (default: its name) of the
    entry's log group; with its own ``log_group``, that group's ``log_stream``, or every stream of
    the group when no stream is named.
    """

    name: str
    log_group: str | None = None
    log_stream: str | None = None


@dataclass(frozen=True)
class ClusterConfig:
    cluster_id: str  # the configured identifier: a DB cluster's, or with kind DB_INSTANCE a DB instance's
    postgres_conn_id: str
    aws_conn_id: str | None = "aws_default"
    region_name: str | None = None
    schedule: str | None = "@daily"
    settings: EngineSettings = field(default_factory=EngineSettings)
    alert: AlertConfig = field(default_factory=AlertConfig)
    retries: int = 2
    lease_hours: float = 1
    kind: str = CLUSTER
    instances: tuple[ConfiguredInstance, ...] | None = None  # self-managed: no DescribeDBClusters
    master_user: str | None = None
    log_group: str | None = None
    instance_endpoints: dict[str, Endpoint] | None = None  # instance id -> where to read its sessions
    global_secondaries: tuple[SecondaryCluster, ...] | None = None  # None: ask DescribeGlobalClusters
    read_replicas: tuple[ReadReplica, ...] | None = None  # None: follow DescribeDBInstances
    ingest_pool: str | None = None  # Airflow pool of the ingest task (bounds the fleet's log reads)
    evidence: EvidenceConfig | None = None  # None: no evidence written
    # With settings.approve_drops: how long approve_drops waits for a DBA; then the drops are
    # rejected (nothing dropped, the roles stay locked) and the run goes on.
    approval_timeout_hours: float = 72
    # Runs that have not acted (refused, or failed before their actions) for longer than this make
    # every failure alert's subject say the cluster is unprotected, until a run acts.
    max_unprotected_days: float = 3

    @property
    def dag_id(self) -> str:
        return dag_id_for(self.cluster_id)

    @property
    def id_key(self) -> str:
        """The config key that named this entry (``cluster_id`` or ``db_instance_id``)."""
        return "db_instance_id" if self.kind == DB_INSTANCE else "cluster_id"


def dag_id_for(cluster_id: str) -> str:
    return DAG_ID_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", cluster_id)


@dataclass
class LoadedConfig:
    clusters: list[ClusterConfig]
    errors: list[str]  # one message per bad entry; the good entries still load
    path: Path


def default_path(dags_folder: str | os.PathLike[str]) -> Path:
    """``$INACTIVE_USERS_CONFIG``, else ``inactive_users.yaml`` in ``dags_folder`` (Airflow's DAG
    folder, beside the DAG file): one answer in every component, the api-server's page included."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else Path(dags_folder) / "inactive_users.yaml"


def load(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read and validate the whole file; a broken file is an error, a broken entry only that entry's."""
    p = Path(path)
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {p} not found: put inactive_users.yaml in Airflow's DAG folder or set "
            f"{CONFIG_ENV} to its path (on every Airflow component, the api-server included)"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p}: the top level must be a mapping with 'defaults' and 'clusters'")
    unknown = sorted(set(raw) - {"defaults", "clusters"})
    if unknown:
        raise ConfigError(f"config file {p}: unknown top-level key(s) {unknown}; expected defaults, clusters")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"config file {p}: 'defaults' must be a mapping")
    _check_keys("defaults", defaults, ENGINE_KEYS + OTHER_DEFAULT_KEYS)
    clusters_raw = raw.get("clusters") or []
    if not isinstance(clusters_raw, list):
        raise ConfigError(f"config file {p}: 'clusters' must be a list of cluster entries")

    clusters: list[ClusterConfig] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(clusters_raw, start=1):
        label = _label(index, entry)
        try:
            cluster = parse_cluster(entry, defaults, label)
            if cluster.dag_id in seen:
                raise ConfigError(
                    f"{label}: DAG id {cluster.dag_id} is already used by {seen[cluster.dag_id]}"
                )
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        seen[cluster.dag_id] = label
        clusters.append(cluster)
    return LoadedConfig(clusters, errors, p)


def _label(index: int, entry: object) -> str:
    cid = (entry.get("cluster_id") or entry.get("db_instance_id")) if isinstance(entry, dict) else None
    return f"clusters[{index}] ({cid!r})" if cid else f"clusters[{index}]"


def _check_keys(label: str, mapping: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key, value in mapping.items():
        if key not in allowed:
            raise ConfigError(f"{label}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
        types = _TYPES.get(key)
        if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"{label}: {key} must be {names}, got {value!r}")


def parse_cluster(entry: object, defaults: Mapping[str, Any], label: str) -> ClusterConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{label}: each cluster entry must be a mapping, got {entry!r}")
    _check_keys(label, entry, ENGINE_KEYS + OTHER_DEFAULT_KEYS + CLUSTER_ONLY_KEYS)
    kind, ident = _identity(label, entry)
    if not entry.get("postgres_conn_id"):
        raise ConfigError(f"{label}: postgres_conn_id is required")
    merged = {**defaults, **entry}
    engine_values = {k: merged[k] for k in ENGINE_KEYS if k in merged}
    for key in ("exclude_users", "exclude_patterns", "exempt_groups", "ignore_wal_receivers"):
        if key in engine_values:
            engine_values[key] = tuple(engine_values[key])
    try:
        settings = EngineSettings(**engine_values)
    except SettingsError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    alert = _parse_alert(label, {**(defaults.get("alert") or {}), **(entry.get("alert") or {})})
    aws_conn_id = merged.get("aws_conn_id", "aws_default")
    evidence = _parse_evidence(
        label, {**(defaults.get("evidence") or {}), **(entry.get("evidence") or {})}, aws_conn_id
    )
    instances = _instances(label, merged.get("instances"), merged.get("log_group"))
    retries = merged.get("retries", 2)
    if retries < 0:
        raise ConfigError(f"{label}: retries must be >= 0, got {retries!r}")
    lease = merged.get("lease_hours", 1)
    if lease <= 0:
        raise ConfigError(f"{label}: lease_hours must be > 0, got {lease!r}")
    approval_timeout = merged.get("approval_timeout_hours", 72)
    if approval_timeout <= 0:
        raise ConfigError(
            f"{label}: approval_timeout_hours must be > 0 (how long a DBA has to approve the drops), "
            f"got {approval_timeout!r}"
        )
    unprotected = merged.get("max_unprotected_days", 3)
    if unprotected <= 0:
        raise ConfigError(
            f"{label}: max_unprotected_days must be > 0 (days without a run that acted before alerts "
            f"escalate), got {unprotected!r}"
        )
    pool = merged.get("ingest_pool")
    if pool is not None and not pool.strip():
        raise ConfigError(f"{label}: ingest_pool must be an Airflow pool name or null, got {pool!r}")
    log_group = _log_group(label, merged.get("log_group"))
    return ClusterConfig(
        cluster_id=ident,
        kind=kind,
        postgres_conn_id=entry["postgres_conn_id"],
        aws_conn_id=aws_conn_id,
        region_name=merged.get("region_name"),
        schedule=merged.get("schedule", "@daily"),
        settings=settings,
        alert=alert,
        retries=retries,
        lease_hours=lease,
        instances=instances,
        master_user=merged.get("master_user"),
        log_group=log_group,
        instance_endpoints=_endpoints(label, "instance_endpoints", merged.get("instance_endpoints")),
        global_secondaries=_secondaries(label, merged.get("global_secondaries")),
        read_replicas=_replicas(label, merged.get("read_replicas")),
        ingest_pool=pool,
        evidence=evidence,
        approval_timeout_hours=approval_timeout,
        max_unprotected_days=unprotected,
    )


def _identity(label: str, entry: Mapping[str, Any]) -> tuple[str, str]:
    """The entry's kind and identifier: ``cluster_id`` or ``db_instance_id``, exactly one of them."""
    cid, iid = entry.get("cluster_id"), entry.get("db_instance_id")
    if cid and iid:
        raise ConfigError(
            f"{label}: give either cluster_id (an Aurora or Multi-AZ DB cluster, or a self-managed "
            "set-up with instances) or db_instance_id (an RDS for PostgreSQL DB instance), not both"
        )
    if not cid and not iid:
        raise ConfigError(
            f"{label}: cluster_id or db_instance_id is required (cluster_id: an Aurora or Multi-AZ DB "
            "cluster, or a self-managed set-up with instances; db_instance_id: an RDS for PostgreSQL "
            "DB instance, whose read replicas are found and read too)"
        )
    kind, key, ident = (CLUSTER, "cluster_id", str(cid)) if cid else (DB_INSTANCE, "db_instance_id", str(iid))
    if not _CLUSTER_ID.fullmatch(ident):
        what = "DB cluster" if kind == CLUSTER else "DB instance"
        raise ConfigError(f"{label}: {key} {ident!r} is not a valid {what} identifier")
    wrong = sorted(k for k in (_DB_INSTANCE_KEYS if kind == CLUSTER else _CLUSTER_KEYS) if k in entry)
    if wrong:
        hint = (
            "read_replicas is for an RDS DB instance (db_instance_id)"
            if kind == CLUSTER
            else "with db_instance_id the instances are found by DescribeDBInstances (list replicas "
            "in read_replicas if that is not allowed); instances and global_secondaries are for "
            "cluster_id entries"
        )
        raise ConfigError(f"{label}: {', '.join(wrong)} cannot be used with {key}: {hint}")
    return kind, ident


def _instances(
    label: str, raw: list[Any] | None, entry_group: str | None
) -> tuple[ConfiguredInstance, ...] | None:
    """``instances``: names, or mappings saying where each instance's log is."""
    if raw is None:
        return None
    if not raw:
        raise ConfigError(f"{label}: instances must be a non-empty list of instance names, got {raw!r}")
    found: list[ConfiguredInstance] = []
    for i, item in enumerate(raw, start=1):
        where = f"{label}: instances[{i}]"
        if isinstance(item, str) and item:
            item = {"name": item}
        if not isinstance(item, dict):
            raise ConfigError(
                f"{where} must be an instance name or a mapping with name, log_group and log_stream, "
                f"got {item!r}"
            )
        item = _entry(where, item, INSTANCE_KEYS, "name")
        name, stream = item.get("name"), item.get("log_stream")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: name must be the instance's name, got {name!r}")
        group = _log_group(where, item.get("log_group"))
        if stream is not None and (not isinstance(stream, str) or not _LOG_STREAM.fullmatch(stream)):
            raise ConfigError(
                f"{where}: log_stream must be a CloudWatch Logs log stream name (no ':' or '*'), "
                f"got {stream!r}"
            )
        found.append(ConfiguredInstance(name, group, stream))
    _check_distinct(label, found, entry_group)
    return tuple(found)


def _check_distinct(label: str, instances: list[ConfiguredInstance], entry_group: str | None) -> None:
    """Two instances may not share a name, nor read the same log: whose logins would they be?"""
    names: set[str] = set()
    logs: dict[tuple[str | None, str | None], str] = {}
    for inst in instances:
        if inst.name in names:
            raise ConfigError(f"{label}: instance {inst.name!r} is listed twice in instances")
        names.add(inst.name)
        group = inst.log_group or entry_group
        # an own group without a stream means all of it; otherwise one stream
        stream = inst.log_stream if inst.log_group else (inst.log_stream or inst.name)
        for (g, s), other in logs.items():
            if g == group and (s is None or stream is None or s == stream):
                where = f"log group {group!r}" if group else "the entry's log group"
                raise ConfigError(
                    f"{label}: instances {other!r} and {inst.name!r} both read "
                    + (f"stream {stream!r} of {where}" if stream is not None and s == stream else where)
                    + "; give each its own log_group, or its own log_stream in a shared group"
                )
        logs[group, stream] = inst.name


def _replicas(label: str, raw: list[Any] | None) -> tuple[ReadReplica, ...] | None:
    """The read replicas listed by the DBA (an empty list: there are none, do not look)."""
    if raw is None:
        return None
    found: list[ReadReplica] = []
    for i, entry in enumerate(raw, start=1):
        where = f"{label}: read_replicas[{i}]"
        entry = _entry(where, entry, REPLICA_KEYS, "db_instance_id and region_name")
        iid = entry.get("db_instance_id")
        if not isinstance(iid, str) or not _CLUSTER_ID.fullmatch(iid):
            raise ConfigError(f"{where}: db_instance_id must be a DB instance identifier, got {iid!r}")
        region = None if entry.get("region_name") is None else _region(where, entry["region_name"])
        group = _log_group(where, entry.get("log_group"))
        if any(r.db_instance_id == iid and r.region_name == region for r in found):
            raise ConfigError(f"{where}: {iid!r} is listed twice")
        found.append(ReadReplica(iid, region, group))
    return tuple(found)


def _endpoints(label: str, key: str, raw: Mapping[str, Any] | None) -> dict[str, Endpoint] | None:
    """``{instance id: "host:port"}`` as endpoints; the message names the entry that is wrong."""
    if raw is None:
        return None
    if not raw:
        raise ConfigError(f"{label}: {key} must map instance ids to 'host:port', got an empty mapping")
    found: dict[str, Endpoint] = {}
    for instance, value in raw.items():
        m = _HOST_PORT.fullmatch(value) if isinstance(value, str) else None
        port = int(m["port"]) if m else 0
        if not isinstance(instance, str) or not instance or m is None or not 0 < port < 65536:
            raise ConfigError(
                f"{label}: {key}[{instance!r}] must be 'host:port' (e.g. 'db-1.internal:5432'), got {value!r}"
            )
        found[instance] = Endpoint(m["host"].strip("[]"), port)
    return found


def _entry(where: str, entry: object, allowed: tuple[str, ...], needs: str) -> dict[str, Any]:
    """One mapping of a list in the config, with only ``allowed`` keys."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with {needs}, got {entry!r}")
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (allowed: {', '.join(allowed)})")
    return entry


def _region(where: str, value: object) -> str:
    if not isinstance(value, str) or not _REGION.fullmatch(value):
        raise ConfigError(f"{where}: region_name must be an AWS region such as 'eu-west-1', got {value!r}")
    return value


def _log_group(where: str, value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not _LOG_GROUP.fullmatch(value)):
        raise ConfigError(f"{where}: log_group must be a CloudWatch Logs log group name, got {value!r}")
    return value


def _secondaries(label: str, raw: list[Any] | None) -> tuple[SecondaryCluster, ...] | None:
    """The secondaries listed by the DBA (an empty list: this cluster has none, do not ask AWS)."""
    if raw is None:
        return None
    found = []
    for i, entry in enumerate(raw, start=1):
        where = f"{label}: global_secondaries[{i}]"
        entry = _entry(where, entry, SECONDARY_KEYS, "cluster_id and region_name")
        cid = entry.get("cluster_id")
        if not isinstance(cid, str) or not _CLUSTER_ID.fullmatch(cid):
            raise ConfigError(f"{where}: cluster_id must be a DB cluster identifier, got {cid!r}")
        region = _region(where, entry.get("region_name"))
        group = _log_group(where, entry.get("log_group"))
        endpoints = entry.get("instance_endpoints")
        if endpoints is not None and not isinstance(endpoints, dict):
            raise ConfigError(f"{where}: instance_endpoints must be a mapping, got {endpoints!r}")
        found.append(SecondaryCluster(cid, region, group, _endpoints(where, "instance_endpoints", endpoints)))
    return tuple(found)


def _parse_alert(label: str, raw: Mapping[str, Any]) -> AlertConfig:
    for key, value in raw.items():
        if key not in ALERT_KEYS:
            raise ConfigError(f"{label}: unknown key alert.{key} (allowed: {', '.join(ALERT_KEYS)})")
        if key == "email":
            if not isinstance(value, list) or not all(isinstance(v, str) and "@" in v for v in value):
                raise ConfigError(f"{label}: alert.email must be a list of e-mail addresses, got {value!r}")
        elif value is not None and not isinstance(value, str):
            raise ConfigError(f"{label}: alert.{key} must be a string or null, got {value!r}")
    arn = raw.get("sns_topic_arn")
    if arn and not arn.startswith("arn:"):
        raise ConfigError(f"{label}: alert.sns_topic_arn must be an SNS topic ARN, got {arn!r}")
    return AlertConfig(arn, raw.get("slack_conn_id"), tuple(raw.get("email") or ()))


def _parse_evidence(
    label: str, raw: Mapping[str, Any], cluster_aws_conn_id: str | None
) -> EvidenceConfig | None:
    """``evidence: {s3_uri, kms_key_id, aws_conn_id}``; an empty mapping (or none) writes no evidence."""
    for key, value in raw.items():
        if key not in EVIDENCE_KEYS:
            raise ConfigError(f"{label}: unknown key evidence.{key} (allowed: {', '.join(EVIDENCE_KEYS)})")
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{label}: evidence.{key} must be a string or null, got {value!r}")
    uri = raw.get("s3_uri")
    if uri is None:
        if any(raw.get(k) is not None for k in ("kms_key_id", "aws_conn_id")):
            raise ConfigError(
                f"{label}: evidence.s3_uri is missing (e.g. 's3://audit-bucket/inactive-users/'); "
                "evidence.kms_key_id and evidence.aws_conn_id apply only with it"
            )
        return None
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{label}: evidence.s3_uri must be 's3://<bucket>/<prefix>' with a valid bucket name "
            f"(3-63 characters a-z 0-9 . -), e.g. 's3://audit-bucket/inactive-users/', got {uri!r}"
        )
    if prefix.startswith("/") or "//" in prefix:
        raise ConfigError(
            f"{label}: evidence.s3_uri has an empty path segment ('//') in {uri!r}; "
            "write it as 's3://<bucket>/<prefix>/'"
        )
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # a prefix is a folder: s3://b/audit means s3://b/audit/<cluster_id>/...
    kms = raw.get("kms_key_id")
    if kms is not None and (not kms.strip() or any(c.isspace() for c in kms)):
        raise ConfigError(
            f"{label}: evidence.kms_key_id must be a KMS key id, key ARN or alias ARN without spaces "
            f"(or null for SSE-S3), got {kms!r}"
        )
    conn = raw.get("aws_conn_id") or cluster_aws_conn_id
    return EvidenceConfig(bucket, prefix, kms, conn)


# -- per-run overrides from the trigger form ---------------------------------------------------

RUN_PARAMS = (
    "dry_run",
    "lock_after_days",
    "delete_after_days",
    "exclude_users",
    "unlock_users",
    "as_of",
    "override_retention",
)


@dataclass(frozen=True)
class RunOptions:
    settings: EngineSettings
    unlock_users: tuple[str, ...]
    as_of: datetime | None
    sources: dict[str, str]  # value provenance, for the task log
    override_retention: bool = False  # act although logins may have aged out of the log (recorded)

    def value(self, key: str) -> object:
        """The effective value of a run parameter, as the task log shows it."""
        if key == "unlock_users":
            return list(self.unlock_users)
        if key == "as_of":
            return self.as_of.isoformat() if self.as_of else None
        if key == "override_retention":
            return self.override_retention
        return getattr(self.settings, key)


def run_options(cluster: ClusterConfig, conf: Mapping[str, Any] | None) -> RunOptions:
    """The settings of one run: the cluster's config, overridden by the trigger's conf for this run only.

    ``exclude_users`` from the trigger is added to the configured list (a run can protect more
    roles, never fewer).
    """
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(RUN_PARAMS))
    if unknown:
        raise ConfigError(f"unknown trigger parameter(s) {unknown}; accepted: {', '.join(RUN_PARAMS)}")
    if conf.get("dry_run") is None:
        conf.pop("dry_run", None)  # an empty form field means: as configured
    elif not isinstance(conf["dry_run"], bool):
        raise ConfigError(f"trigger parameter dry_run must be true or false, got {conf['dry_run']!r}")
    base = cluster.settings
    sources = {k: "config" for k in ("dry_run", "lock_after_days", "delete_after_days", "exclude_users")}
    changes: dict[str, Any] = {}
    for key in ("dry_run", "lock_after_days", "delete_after_days"):
        if key in conf and conf[key] != getattr(base, key):
            changes[key] = conf[key]
            sources[key] = "trigger conf"
    extra_excludes = _str_list(conf, "exclude_users")
    if set(extra_excludes) - set(base.exclude_users):
        changes["exclude_users"] = tuple(dict.fromkeys([*base.exclude_users, *extra_excludes]))
        sources["exclude_users"] = "config + trigger conf"
    try:
        settings = replace(base, **changes) if changes else base
    except SettingsError as exc:
        raise ConfigError(f"trigger parameters: {exc}") from None
    unlock = tuple(_str_list(conf, "unlock_users"))
    if unlock:
        sources["unlock_users"] = "trigger conf"
    as_of = _as_of(conf.get("as_of"), settings.dry_run)
    if as_of is not None:
        sources["as_of"] = "trigger conf"
    override = conf.get("override_retention") or False
    if not isinstance(override, bool):
        raise ConfigError(f"trigger parameter override_retention must be true or false, got {override!r}")
    if override:
        sources["override_retention"] = "trigger conf"
    return RunOptions(settings, unlock, as_of, sources, override)


def _str_list(conf: Mapping[str, Any], key: str) -> list[str]:
    value = conf.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"trigger parameter {key} must be a list of role names, got {value!r}")
    return value


def _as_of(value: object, dry_run: bool) -> datetime | None:
    if value in (None, ""):
        return None
    if not dry_run:
        raise ConfigError(
            "trigger parameter as_of is accepted only together with dry_run: true "
            "(it previews what a future date would do)"
        )
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"trigger parameter as_of must be an ISO-8601 date-time, got {value!r}") from None
    if parsed.tzinfo is None:
        raise ConfigError(f"trigger parameter as_of must include a time zone (e.g. 'Z'), got {value!r}")
    return parsed
