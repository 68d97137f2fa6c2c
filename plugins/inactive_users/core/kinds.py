"""What kind of PostgreSQL a cluster entry is, from its configuration keys alone (pure).

The fleet page shows it; nothing else depends on it. One function, one rule per kind, first match
wins: a new way to configure a server (a new key) is one more line here.
"""

from __future__ import annotations

from inactive_users.core.config import ClusterConfig

AURORA = "Aurora cluster"
RDS_INSTANCE = "RDS instance"
MULTI_AZ = "Multi-AZ DB cluster"
SELF_MANAGED = "self-managed"

_RDS_INSTANCE_LOGS = "/aws/rds/instance/"
_RDS_CLUSTER_LOGS = "/aws/rds/cluster/"


def engine_kind(cluster: ClusterConfig) -> str:
    """Aurora (found by DescribeDBClusters), or, with ``instances`` listed: an RDS instance (its
    log group is an instance's), a Multi-AZ DB cluster (a cluster's log group), or self-managed
    (a log group of the DBA's own)."""
    if cluster.instances is None:
        return AURORA
    group = cluster.log_group or _RDS_CLUSTER_LOGS  # the default is a cluster's log group
    if group.startswith(_RDS_INSTANCE_LOGS):
        return RDS_INSTANCE
    if group.startswith(_RDS_CLUSTER_LOGS):
        return MULTI_AZ
    return SELF_MANAGED
