"""What kind of PostgreSQL a cluster entry is, from its configuration keys alone (pure).

The fleet page shows it; nothing else depends on it. One function, one rule per kind, first match
wins: a new way to configure a server (a new key) is one more line here.
"""

from __future__ import annotations

from inactive_users.core.config import DB_INSTANCE, ClusterConfig

#: ``cluster_id`` alone: DescribeDBClusters tells an Aurora cluster from a Multi-AZ DB cluster at
#: run time; the configuration does not.
AURORA_OR_MULTI_AZ = "Aurora or Multi-AZ DB cluster"
RDS_INSTANCE = "RDS instance"
SELF_MANAGED = "self-managed"


def engine_kind(cluster: ClusterConfig) -> str:
    """An RDS instance (``db_instance_id``), a self-managed set-up (``cluster_id`` with
    ``instances``), or an Aurora or Multi-AZ DB cluster (``cluster_id`` alone)."""
    if cluster.kind == DB_INSTANCE:
        return RDS_INSTANCE
    if cluster.instances is not None:
        return SELF_MANAGED
    return AURORA_OR_MULTI_AZ
