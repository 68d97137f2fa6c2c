"""What one run reads of its target: every instance whose logins count, where each instance's
connection log is (log group, streams, region), and where it takes connections (the AWS I/O shell,
through Airflow hooks).

Roles are shared by every server that replicates from the target, and a login or a session on
any of them is a sign of life. So the job reads:

* an Aurora cluster or an RDS Multi-AZ DB cluster (``cluster_id``): every member, from
  ``DescribeDBClusters``, in the cluster's log group (a stream per instance), and for an Aurora
  Global Database each secondary cluster in its own region;
* an RDS for PostgreSQL DB instance (``db_instance_id``): the instance and every read replica that
  replicates from it, replicas of replicas and cross-region ones included, each in its own log
  group ``/aws/rds/instance/<id>/postgresql`` in its own region, every stream of it;
* a self-managed set-up (``instances``): the servers the DBA lists, each where its log is.

Everything here is found at run time (preflight), never when the DAG file is parsed, and handed to
the other tasks as plain JSON in preflight's XCom. What stops the job from knowing an instance's
logins or sessions is not an error here unless the target itself is wrong: it is recorded as the
instance's *problem*, and the plan refuses to lock or drop while sync and ingest still run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from inactive_users.aws.cloudwatch import instance_log_group_name, log_group_name
from inactive_users.core.config import DB_INSTANCE, ClusterConfig, Endpoint, SecondaryCluster
from inactive_users.postgres.instances import AS_CONFIGURED

log = logging.getLogger("inactive_users")

AURORA = "Aurora cluster"
MULTI_AZ = "Multi-AZ DB cluster"
RDS_INSTANCE = "RDS DB instance"
SELF_MANAGED = "self-managed"


class TopologyError(RuntimeError):
    """The target cannot be found or is not one the job can work on; says what to fix."""


@dataclass
class ClusterView:
    """Instances whose connection log is in one log group (in one region) as a run reads them.

    ``endpoints`` maps each instance to ``host:port``, ``AS_CONFIGURED`` (the Postgres connection
    itself) or None (not known: sessions unreadable). ``streams`` names an instance's log streams
    where they are not simply the stream named after it; None there means every stream of the
    group. An instance is known to the state schema (watermarks, refusals) by its *key*: its name,
    prefixed with ``key_prefix/`` for a Global Database secondary or a replica in another region.
    """

    cluster_id: str
    region_name: str | None
    log_group: str
    instances: list[str]
    endpoints: dict[str, str | None] = field(default_factory=dict)
    master_user: str | None = None
    streams: dict[str, list[str] | None] = field(default_factory=dict)
    key_prefix: str | None = None
    label: str = ""  # how logs and errors name this view ("read replica db-2 (eu-west-1)")
    problems: dict[str, str] = field(default_factory=dict)  # instance -> why it cannot be read
    created: dict[str, str] = field(default_factory=dict)  # instance -> when it was created (ISO)
    missing_hint: str = ""  # what to do when its log group is missing ("": enable the cluster's export)

    def key(self, instance: str) -> str:
        return instance if self.key_prefix is None else f"{self.key_prefix}/{instance}"

    def streams_of(self, instance: str) -> list[str] | None:
        """The instance's log streams; None: every stream of the log group."""
        return self.streams.get(instance, [instance])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterView:
        return cls(**data)


@dataclass
class Topology:
    """The target as one run reads it: the primary view first (the writer's log group), then the
    views of replicas, secondaries and other log groups."""

    kind: str
    views: list[ClusterView]

    @property
    def primary(self) -> ClusterView:
        return self.views[0]

    @property
    def master_user(self) -> str | None:
        return self.primary.master_user

    def problems(self) -> dict[str, str]:
        """Every instance that cannot be read, by key, with the reason."""
        return {v.key(i): why for v in self.views for i, why in v.problems.items()}

    def instances_read(self) -> list[dict[str, Any]]:
        """One line per instance: where its logins and its sessions are read (for logs, alerts,
        the evidence manifest)."""
        rows = []
        for view in self.views:
            for instance in view.instances:
                endpoint = view.endpoints.get(instance)
                rows.append(
                    {
                        "instance": view.key(instance),
                        "role": view.label or view.cluster_id,
                        "region": view.region_name,
                        "log_group": view.log_group,
                        "log_streams": view.streams_of(instance),
                        "sessions": "the Postgres connection"
                        if endpoint == AS_CONFIGURED
                        else endpoint or "unknown",
                        "problem": view.problems.get(instance),
                    }
                )
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "views": [v.to_json() for v in self.views]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Topology:
        return cls(data["kind"], [ClusterView.from_json(v) for v in data["views"]])


def describe(cluster: ClusterConfig) -> Topology:
    """The target's instances, the writer's first, and where each one's logins and sessions are."""
    if cluster.kind == DB_INSTANCE:
        topo = _rds_instance(cluster)
    elif cluster.instances is not None:
        topo = _configured(cluster)
    else:
        topo = _db_cluster(cluster)
    for row in topo.instances_read():
        log.info(
            "%s: %s in %s, log group %s (%s); sessions read at %s%s",
            row["instance"],
            row["role"],
            row["region"] or "the connection's region",
            row["log_group"],
            "every stream" if row["log_streams"] is None else "streams " + ", ".join(row["log_streams"]),
            row["sessions"],
            f"; CANNOT BE READ: {row['problem']}" if row["problem"] else "",
        )
    return topo


# -- self-managed ------------------------------------------------------------------------------


def _configured(cluster: ClusterConfig) -> Topology:
    """The servers the DBA listed, grouped by the log group each one writes to."""
    instances = list(cluster.instances or ())
    given = cluster.instance_endpoints or {}
    names = [i.name for i in instances]
    endpoints: dict[str, str | None] = {n: str(given[n]) if n in given else None for n in names}
    if not given and len(names) == 1:
        endpoints = {names[0]: AS_CONFIGURED}  # one server: the connection is that instance
    shared = cluster.log_group or log_group_name(cluster.cluster_id)
    primary = ClusterView(
        cluster.cluster_id,
        cluster.region_name,
        shared,
        [],
        master_user=cluster.master_user,
        label=f"self-managed {cluster.cluster_id}",
    )
    views = [primary]
    for inst in instances:
        if inst.log_group is None or inst.log_group == shared:
            view = primary
        else:
            view = next((v for v in views if v.log_group == inst.log_group), None) or ClusterView(
                inst.name,
                cluster.region_name,
                inst.log_group,
                [],
                label=f"instance {inst.name}",
                missing_hint=f"check that the CloudWatch agent ships {inst.name}'s PostgreSQL log to it",
            )
            if view not in views:
                views.append(view)
        view.instances.append(inst.name)
        view.endpoints[inst.name] = endpoints[inst.name]
        if inst.log_stream is not None:
            view.streams[inst.name] = [inst.log_stream]
        elif view is not primary:
            view.streams[inst.name] = None  # its own group: every stream of it
    log.info("instances from config (no DescribeDBClusters / DescribeDBInstances): %s", names)
    return Topology(SELF_MANAGED, views)


# -- Aurora and Multi-AZ DB clusters -----------------------------------------------------------


def _db_cluster(cluster: ClusterConfig) -> Topology:
    rds = _rds(cluster, cluster.region_name)
    info = _describe_cluster(rds, cluster.cluster_id, "cluster_id and region_name")
    _check_cluster_export(cluster.cluster_id, info)
    multi_az = info.get("Engine") == "postgres"
    kind = MULTI_AZ if multi_az else AURORA
    primary = ClusterView(
        cluster.cluster_id,
        cluster.region_name,
        cluster.log_group or log_group_name(cluster.cluster_id),
        _members(cluster.cluster_id, info),
        master_user=info.get("MasterUsername"),
        label=f"{kind} {cluster.cluster_id}",
    )
    primary.endpoints, primary.created = _endpoints(rds, primary.instances, cluster.instance_endpoints)
    if cluster.global_secondaries is not None:
        secondaries = [_secondary(cluster, s) for s in cluster.global_secondaries]
    elif multi_az:
        secondaries = []  # a Multi-AZ DB cluster is never part of an Aurora Global Database
    else:
        secondaries = [_secondary(cluster, s) for s in _global_secondaries(rds, cluster, info)]
    log.info(
        "%s %s: instances %s (writer first), master user %r excluded",
        kind,
        cluster.cluster_id,
        primary.instances,
        primary.master_user,
    )
    return Topology(kind, [primary, *secondaries])


def _rds(cluster: ClusterConfig, region_name: str | None) -> Any:
    from airflow.providers.amazon.aws.hooks.rds import RdsHook

    return RdsHook(aws_conn_id=cluster.aws_conn_id, region_name=region_name).conn


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _describe_cluster(rds: Any, cluster_id: str, fix: str) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        return dict(rds.describe_db_clusters(DBClusterIdentifier=cluster_id)["DBClusters"][0])
    except ClientError as exc:
        if _error_code(exc) == "DBClusterNotFoundFault":
            raise TopologyError(
                f"DB cluster {cluster_id!r} not found in region {rds.meta.region_name}: check {fix} "
                "(an RDS for PostgreSQL DB instance is configured with db_instance_id; a self-managed "
                "server with instances)"
            ) from None
        raise


def _check_cluster_export(cluster_id: str, info: dict[str, Any]) -> None:
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
) -> tuple[dict[str, str | None], dict[str, str]]:
    """``instance_endpoints`` where given, else each instance's own endpoint (DescribeDBInstances),
    and the creation time of the instances described."""
    overrides = overrides or {}
    found: dict[str, str | None] = {i: str(overrides[i]) for i in instances if i in overrides}
    created: dict[str, str] = {}
    for instance in instances:
        if instance not in found:
            rows = rds.describe_db_instances(DBInstanceIdentifier=instance).get("DBInstances") or [{}]
            found[instance] = _endpoint_of(rows[0])
            created.update(_created(instance, rows[0]))
    return found, created


def _endpoint_of(info: dict[str, Any]) -> str | None:
    endpoint = info.get("Endpoint") or {}
    address, port = endpoint.get("Address"), endpoint.get("Port")
    return f"{address}:{port}" if address and port else None


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
        raise TopologyError(
            f"DescribeGlobalClusters failed ({_error_code(exc)}): the job must know whether "
            f"{cluster.cluster_id!r} is part of an Aurora Global Database, whose secondary clusters "
            "share its roles. Allow rds:DescribeGlobalClusters, or list the secondaries in "
            "global_secondaries ([] for none)."
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
            return [_cluster_from_arn(reader) for reader in member.get("Readers") or []]
    return []


def _split_arn(arn: str, resource: str) -> tuple[str, str]:
    """``arn:aws:rds:<region>:<account>:<resource>:<id>`` as (region, id)."""
    parts = arn.split(":")
    if len(parts) < 7 or parts[5] != resource:
        raise TopologyError(f"unexpected RDS ARN {arn!r} (expected a {resource} ARN)")
    return parts[3], parts[6]


def _cluster_from_arn(arn: str) -> SecondaryCluster:
    region, cluster_id = _split_arn(arn, "cluster")
    return SecondaryCluster(cluster_id=cluster_id, region_name=region)


def _secondary(cluster: ClusterConfig, s: SecondaryCluster) -> ClusterView:
    """A secondary in its own region: its instances from its endpoints map, or from RDS there."""
    group = s.log_group or log_group_name(s.cluster_id)
    label = f"Global Database secondary cluster {s.cluster_id} ({s.region_name})"
    if s.instance_endpoints:
        endpoints: dict[str, str | None] = {i: str(e) for i, e in s.instance_endpoints.items()}
        return ClusterView(
            s.cluster_id,
            s.region_name,
            group,
            list(endpoints),
            endpoints,
            key_prefix=s.cluster_id,
            label=label,
        )
    rds = _rds(cluster, s.region_name)
    info = _describe_cluster(rds, s.cluster_id, "global_secondaries")
    _check_cluster_export(s.cluster_id, info)
    instances = _members(s.cluster_id, info)
    # the cluster's instance_endpoints may name a secondary's instances too (tunnels, tests)
    endpoints, created = _endpoints(rds, instances, cluster.instance_endpoints)
    return ClusterView(
        s.cluster_id,
        s.region_name,
        group,
        instances,
        endpoints,
        key_prefix=s.cluster_id,
        label=label,
        created=created,
    )


# -- RDS for PostgreSQL DB instances and their read replicas -----------------------------------


@dataclass(frozen=True)
class _Replica:
    db_instance_id: str
    region_name: str
    source: str  # the instance it replicates from, or "read_replicas" (for the log)
    log_group: str | None = None


#: What DescribeDBInstances said of a replica: its entry, None (no such instance), or the error.
_Lookup = dict[str, Any] | None | Exception


def _rds_instance(cluster: ClusterConfig) -> Topology:
    """The primary instance and every instance that replicates from it, each in its own region."""
    clients = _Clients(cluster)
    region = clients.region(cluster.region_name)
    iid = cluster.cluster_id
    info = _describe_instance(clients.get(region), iid)
    if info is None:
        raise TopologyError(
            f"DB instance {iid!r} not found in region {region}: check db_instance_id and region_name "
            "(an Aurora or Multi-AZ DB cluster is configured with cluster_id)"
        )
    _check_primary(iid, region, info)
    exports = info.get("EnabledCloudwatchLogsExports") or []
    if "postgresql" not in exports:
        raise TopologyError(f"DB instance {iid!r} {_no_export(iid, exports, region)}")
    primary = ClusterView(
        iid,
        region,
        cluster.log_group or instance_log_group_name(iid),
        [iid],
        {iid: _endpoint(cluster, iid, info)},
        master_user=cluster.master_user or info.get("MasterUsername"),
        streams={iid: None},
        label=f"{RDS_INSTANCE} {iid} (primary)",
        created=_created(iid, info),
        missing_hint=_export_hint(iid, region),
    )
    if cluster.read_replicas is None:
        found = _follow(clients, iid, region, info)
    else:
        found = [(r, _lookup_listed(cluster, clients, r)) for r in _listed(cluster, region)]
    views = [primary, *(_replica_view(cluster, r, looked_up, region) for r, looked_up in found)]
    if cluster.read_replicas is not None:
        views += _unlisted(iid, [r for r, _ in found], info, region)
    log.info(
        "%s %s: %d read replica(s) %s, master user %r excluded",
        RDS_INSTANCE,
        iid,
        len(found),
        [f"{r.db_instance_id} ({r.region_name}, replica of {r.source})" for r, _ in found],
        primary.master_user,
    )
    return Topology(RDS_INSTANCE, views)


class _Clients:
    """One RDS client per region, made when first needed."""

    def __init__(self, cluster: ClusterConfig) -> None:
        self.cluster = cluster
        self._by_region: dict[str, Any] = {}

    def region(self, region_name: str | None) -> str:
        """``region_name``, or the Airflow connection's region when the entry names none."""
        if region_name is None:
            client = _rds(self.cluster, None)
            region_name = str(client.meta.region_name)
            self._by_region[region_name] = client
        return region_name

    def get(self, region_name: str) -> Any:
        if region_name not in self._by_region:
            self._by_region[region_name] = _rds(self.cluster, region_name)
        return self._by_region[region_name]

    def lookup(self, region_name: str, iid: str) -> _Lookup:
        try:
            return _describe_instance(self.get(region_name), iid)
        except Exception as exc:  # any failure (access denied, region unreachable): cannot know
            return exc


def _describe_instance(rds: Any, iid: str) -> dict[str, Any] | None:
    """The instance's DescribeDBInstances entry; None when there is no such instance."""
    from botocore.exceptions import ClientError

    try:
        rows = rds.describe_db_instances(DBInstanceIdentifier=iid).get("DBInstances") or []
    except ClientError as exc:
        if _error_code(exc) == "DBInstanceNotFound":
            return None
        raise
    return dict(rows[0]) if rows else None


def _check_primary(iid: str, region: str, info: dict[str, Any]) -> None:
    """Refuse a target whose roles are another instance's or cluster's."""
    source = info.get("ReadReplicaSourceDBInstanceIdentifier")
    if source:
        source_region, source_id = _arn_or_id(source, region)
        raise TopologyError(
            f"DB instance {iid!r} is a read replica of {source_id!r} ({source_region}): its roles are "
            f"the source's, and read-only here. Configure db_instance_id: {source_id} (region_name: "
            f"{source_region}) instead; the job finds this replica and reads its logins and sessions too."
        )
    member_of = info.get("DBClusterIdentifier")
    if member_of:
        raise TopologyError(
            f"DB instance {iid!r} is a member of DB cluster {member_of!r}: configure cluster_id: "
            f"{member_of} instead; the job reads every member of the cluster."
        )
    engine = info.get("Engine")
    if engine and engine != "postgres":
        raise TopologyError(f"DB instance {iid!r} runs engine {engine!r}; the job works on 'postgres' only")


def _arn_or_id(value: str, region: str) -> tuple[str, str]:
    """A replica or source as RDS lists it (an id in ``region``, or an ARN elsewhere): (region, id)."""
    return _split_arn(value, "db") if value.startswith("arn:") else (region, value)


def _follow(clients: _Clients, iid: str, region: str, info: dict[str, Any]) -> list[tuple[_Replica, _Lookup]]:
    """Every replica of ``iid``, breadth first, replicas of replicas included, with what
    DescribeDBInstances said of each."""
    found: list[tuple[_Replica, _Lookup]] = []
    seen = {(region, iid)}
    queue: list[tuple[str, str, dict[str, Any]]] = [(iid, region, info)]
    while queue:
        source, source_region, source_info = queue.pop(0)
        for listed in source_info.get("ReadReplicaDBInstanceIdentifiers") or []:
            replica_region, replica_id = _arn_or_id(listed, source_region)
            if (replica_region, replica_id) in seen:
                continue
            seen.add((replica_region, replica_id))
            looked_up = clients.lookup(replica_region, replica_id)
            found.append((_Replica(replica_id, replica_region, source), looked_up))
            if isinstance(looked_up, dict):
                queue.append((replica_id, replica_region, looked_up))
    return found


def _listed(cluster: ClusterConfig, region: str) -> list[_Replica]:
    return [
        _Replica(r.db_instance_id, r.region_name or region, "read_replicas", r.log_group)
        for r in cluster.read_replicas or ()
    ]


def _lookup_listed(cluster: ClusterConfig, clients: _Clients, r: _Replica) -> _Lookup:
    """A listed replica with its endpoint in instance_endpoints needs no DescribeDBInstances (the
    account may not allow it in that region): its log group shows whether it exports."""
    if r.db_instance_id in (cluster.instance_endpoints or {}):
        return {}
    return clients.lookup(r.region_name, r.db_instance_id)


def _replica_view(cluster: ClusterConfig, r: _Replica, looked_up: _Lookup, home: str) -> ClusterView:
    """A replica in its own region and log group; what keeps it from being read is its problem."""
    iid = r.db_instance_id
    info = looked_up if isinstance(looked_up, dict) else {}
    view = ClusterView(
        iid,
        r.region_name,
        r.log_group or instance_log_group_name(iid),
        [iid],
        {iid: _endpoint(cluster, iid, info)},
        streams={iid: None},
        key_prefix=None if r.region_name == home else r.region_name,
        label=f"read replica {iid} ({r.region_name})",
        created=_created(iid, info),
        missing_hint=_export_hint(iid, r.region_name),
    )
    if isinstance(looked_up, Exception):
        code = _error_code(looked_up) or type(looked_up).__name__
        view.problems[iid] = (
            f"DescribeDBInstances failed in {r.region_name} ({code}): its log export and its own "
            "replicas cannot be checked. Allow rds:DescribeDBInstances there, or list the replicas "
            "in read_replicas with their instance_endpoints"
        )
    elif looked_up is None:
        view.problems[iid] = (
            f"not found in region {r.region_name} (being created or deleted?); it is looked for "
            "again by the next run"
        )
    elif info and "postgresql" not in (info.get("EnabledCloudwatchLogsExports") or []):
        view.problems[iid] = _no_export(iid, info.get("EnabledCloudwatchLogsExports") or [], r.region_name)
    return view


def _no_export(iid: str, exports: list[str], region: str) -> str:
    return (
        f"does not export its PostgreSQL log to CloudWatch Logs (EnabledCloudwatchLogsExports="
        f"{exports}), so its logins cannot be read. Fix: {_export_command(iid, region)}"
    )


def _export_command(iid: str, region: str) -> str:
    return (
        f"aws rds modify-db-instance --region {region} --db-instance-identifier {iid} "
        '--cloudwatch-logs-export-configuration \'{"EnableLogTypes":["postgresql"]}\''
    )


def _export_hint(iid: str, region: str) -> str:
    return f"enable the 'postgresql' log export on DB instance {iid!r}: {_export_command(iid, region)}"


def _created(iid: str, info: dict[str, Any]) -> dict[str, str]:
    when = info.get("InstanceCreateTime")
    return {iid: when.isoformat()} if isinstance(when, datetime) else {}


def _endpoint(cluster: ClusterConfig, iid: str, info: dict[str, Any]) -> str | None:
    """Where the instance's sessions are read: ``instance_endpoints``, else its own endpoint."""
    given = (cluster.instance_endpoints or {}).get(iid)
    return str(given) if given else _endpoint_of(info)


def _unlisted(
    primary_id: str, listed: list[_Replica], info: dict[str, Any], region: str
) -> list[ClusterView]:
    """With ``read_replicas`` listed, a replica the primary reports but the list lacks cannot be
    read (its logins would be missed): a view of it that carries that problem."""
    known = {(r.region_name, r.db_instance_id) for r in listed}
    views = []
    for value in info.get("ReadReplicaDBInstanceIdentifiers") or []:
        replica_region, iid = _arn_or_id(value, region)
        if (replica_region, iid) in known:
            continue
        view = ClusterView(
            iid,
            replica_region,
            instance_log_group_name(iid),
            [iid],
            {iid: None},
            streams={iid: None},
            key_prefix=None if replica_region == region else replica_region,
            label=f"read replica {iid} ({replica_region})",
        )
        view.problems[iid] = (
            f"replicates from {primary_id} but is not in read_replicas, so its logins and sessions "
            "would not be read. Add it to read_replicas (or remove read_replicas to let the job "
            "find every replica)"
        )
        views.append(view)
    return views
