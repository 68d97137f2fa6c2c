"""What one run reads of a cluster: its instances, where each takes connections, its log streams,
and the secondary clusters of its Aurora Global Database (the AWS I/O shell, through Airflow hooks).

Everything here is found at run time (preflight), never when the DAG file is parsed, and handed to
the other tasks as plain JSON in preflight's XCom.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from inactive_users.aws.cloudwatch import log_group_name
from inactive_users.core.config import ClusterConfig, Endpoint, SecondaryCluster
from inactive_users.postgres.instances import AS_CONFIGURED

log = logging.getLogger("inactive_users")


class TopologyError(RuntimeError):
    """The cluster's shape cannot be found or is not one the job can work on; says what to fix."""


@dataclass
class ClusterView:
    """One cluster as a run reads it. ``endpoints`` maps each instance to ``host:port``,
    ``AS_CONFIGURED`` (the Postgres connection itself) or None (not known: sessions unreadable)."""

    cluster_id: str
    region_name: str | None
    log_group: str
    instances: list[str]
    endpoints: dict[str, str | None] = field(default_factory=dict)
    master_user: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterView:
        return cls(**data)


def describe(cluster: ClusterConfig) -> tuple[ClusterView, list[ClusterView]]:
    """The cluster (writer first) and the secondaries whose logins and sessions also count."""
    if cluster.instances is not None:
        primary = _configured(cluster)
        log.info("instances from config (no DescribeDBClusters): %s", primary.instances)
        secondaries = [_secondary(cluster, s) for s in cluster.global_secondaries or ()]
        return primary, secondaries
    rds = _rds(cluster, cluster.region_name)
    info = _describe_cluster(rds, cluster.cluster_id, "cluster_id and region_name")
    _check_export(cluster.cluster_id, info)
    primary = ClusterView(
        cluster.cluster_id,
        cluster.region_name,
        cluster.log_group or log_group_name(cluster.cluster_id),
        _members(cluster.cluster_id, info),
        master_user=info.get("MasterUsername"),
    )
    primary.endpoints = _endpoints(rds, primary.instances, cluster.instance_endpoints)
    if cluster.global_secondaries is not None:
        secondaries = [_secondary(cluster, s) for s in cluster.global_secondaries]
    else:
        secondaries = [_secondary(cluster, s) for s in _global_secondaries(rds, cluster, info)]
    log.info(
        "cluster %s: instances %s (writer first), master user %r excluded; sessions read at %s",
        cluster.cluster_id,
        primary.instances,
        primary.master_user,
        {i: e or "the Postgres connection" for i, e in primary.endpoints.items()},
    )
    for s in secondaries:
        log.info(
            "Global Database secondary %s in %s: instances %s, log group %s",
            s.cluster_id,
            s.region_name,
            s.instances,
            s.log_group,
        )
    return primary, secondaries


def _configured(cluster: ClusterConfig) -> ClusterView:
    """RDS / self-managed: the instances (log streams) and endpoints the DBA listed."""
    instances = list(cluster.instances or ())
    given = cluster.instance_endpoints or {}
    endpoints: dict[str, str | None] = {i: str(given[i]) if i in given else None for i in instances}
    if not given and len(instances) == 1:
        endpoints = {instances[0]: AS_CONFIGURED}  # one server: the connection is that instance
    return ClusterView(
        cluster.cluster_id,
        cluster.region_name,
        cluster.log_group or log_group_name(cluster.cluster_id),
        instances,
        endpoints,
        cluster.master_user,
    )


def _rds(cluster: ClusterConfig, region_name: str | None) -> Any:
    from airflow.providers.amazon.aws.hooks.rds import RdsHook

    return RdsHook(aws_conn_id=cluster.aws_conn_id, region_name=region_name).conn


def _describe_cluster(rds: Any, cluster_id: str, fix: str) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        return dict(rds.describe_db_clusters(DBClusterIdentifier=cluster_id)["DBClusters"][0])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "DBClusterNotFoundFault":
            raise TopologyError(
                f"DB cluster {cluster_id!r} not found in region {rds.meta.region_name}: check {fix} "
                "(or set 'instances' for RDS / self-managed PostgreSQL)"
            ) from None
        raise


def _check_export(cluster_id: str, info: dict[str, Any]) -> None:
    exports = info.get("EnabledCloudwatchLogsExports") or []
    if "postgresql" not in exports:
        raise TopologyError(
            f"cluster {cluster_id!r} does not export its PostgreSQL log to CloudWatch Logs "
            f"(EnabledCloudwatchLogsExports={exports}). Fix: aws rds modify-db-cluster "
            f"--db-cluster-identifier {cluster_id} --cloudwatch-logs-export-configuration "
            '\'{"EnableLogTypes":["postgresql"]}\''
        )


def _members(cluster_id: str, info: dict[str, Any]) -> list[str]:
    members = sorted(
        info.get("DBClusterMembers") or [],
        key=lambda m: (not m.get("IsClusterWriter"), m["DBInstanceIdentifier"]),
    )
    if not members:
        raise TopologyError(f"cluster {cluster_id!r} has no instances to read logs from")
    return [m["DBInstanceIdentifier"] for m in members]


def _endpoints(
    rds: Any, instances: list[str], overrides: dict[str, Endpoint] | None
) -> dict[str, str | None]:
    """``instance_endpoints`` where given, else each instance's own endpoint (DescribeDBInstances)."""
    overrides = overrides or {}
    found: dict[str, str | None] = {i: str(overrides[i]) for i in instances if i in overrides}
    for instance in instances:
        if instance in found:
            continue
        rows = rds.describe_db_instances(DBInstanceIdentifier=instance).get("DBInstances") or [{}]
        endpoint = rows[0].get("Endpoint") or {}
        address, port = endpoint.get("Address"), endpoint.get("Port")
        found[instance] = f"{address}:{port}" if address and port else None
    return found


def _global_secondaries(rds: Any, cluster: ClusterConfig, info: dict[str, Any]) -> list[SecondaryCluster]:
    """The secondary clusters when this cluster is the primary of a Global Database.

    A secondary cluster cannot run the job (its roles are the primary's, and read-only there).
    """
    from botocore.exceptions import ClientError

    arn = info.get("DBClusterArn")
    try:
        pages = rds.get_paginator("describe_global_clusters").paginate()
        globals_ = [g for page in pages for g in page.get("GlobalClusters", [])]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise TopologyError(
            f"DescribeGlobalClusters failed ({code}): the job must know whether {cluster.cluster_id!r} "
            "is part of an Aurora Global Database, whose secondary clusters share its roles. Allow "
            "rds:DescribeGlobalClusters, or list the secondaries in global_secondaries ([] for none)."
        ) from None
    for g in globals_:
        for member in g.get("GlobalClusterMembers") or []:
            if member.get("DBClusterArn") != arn:
                continue
            if not member.get("IsWriter"):
                writer = next(
                    (m["DBClusterArn"] for m in g["GlobalClusterMembers"] if m.get("IsWriter")), "?"
                )
                raise TopologyError(
                    f"cluster {cluster.cluster_id!r} is a secondary of global cluster "
                    f"{g.get('GlobalClusterIdentifier')!r}: its roles are the primary's. Run the job on "
                    f"the primary cluster ({writer}) instead; it reads this cluster's logins too."
                )
            return [_from_arn(reader) for reader in member.get("Readers") or []]
    return []


def _from_arn(arn: str) -> SecondaryCluster:
    """``arn:aws:rds:<region>:<account>:cluster:<id>`` as a secondary to read."""
    parts = arn.split(":")
    if len(parts) < 7 or parts[5] != "cluster":
        raise TopologyError(f"unexpected DB cluster ARN {arn!r} among the global cluster's members")
    return SecondaryCluster(cluster_id=parts[6], region_name=parts[3])


def _secondary(cluster: ClusterConfig, s: SecondaryCluster) -> ClusterView:
    """A secondary in its own region: its instances from its endpoints map, or from RDS there."""
    group = s.log_group or log_group_name(s.cluster_id)
    if s.instance_endpoints:
        endpoints: dict[str, str | None] = {i: str(e) for i, e in s.instance_endpoints.items()}
        return ClusterView(s.cluster_id, s.region_name, group, list(endpoints), endpoints)
    rds = _rds(cluster, s.region_name)
    info = _describe_cluster(rds, s.cluster_id, "global_secondaries")
    _check_export(s.cluster_id, info)
    instances = _members(s.cluster_id, info)
    # the cluster's instance_endpoints may name a secondary's instances too (tunnels, tests)
    endpoints = _endpoints(rds, instances, cluster.instance_endpoints)
    return ClusterView(s.cluster_id, s.region_name, group, instances, endpoints)
