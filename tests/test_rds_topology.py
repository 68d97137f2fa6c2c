"""What preflight finds of an RDS DB instance, a Multi-AZ DB cluster and a self-managed set-up:
the instances, where each one's log and sessions are, and what keeps one from being read.

Against the moto server over HTTP, through the Airflow connection, as a task would; no PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from devstack.awsfixtures import create_rds_instance, create_read_replica
from devstack.motoserver import MotoServer, airflow_aws_conn, boto_client
from inactive_users.aws import topology
from inactive_users.aws.topology import RDS_INSTANCE, SELF_MANAGED, TopologyError
from inactive_users.core.config import ClusterConfig, parse_cluster

HOME, EU = "us-east-1", "eu-west-1"


@pytest.fixture
def rds(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("AIRFLOW_CONN_IU_AWS", json.dumps(airflow_aws_conn(moto.endpoint_url)))
    return {region: boto_client(moto.endpoint_url, "rds", region) for region in (HOME, EU)}


def entry(**keys: Any) -> ClusterConfig:
    base = {"db_instance_id": "db", "postgres_conn_id": "pg", "aws_conn_id": "iu_aws", "region_name": HOME}
    return parse_cluster({**base, **keys}, {}, "clusters[1]")


def layout(topo: topology.Topology) -> list[tuple[str, str | None, str, Any, str | None]]:
    """Each instance read, with the start of its problem (its first five words)."""
    return [
        (r["instance"], r["region"], r["log_group"], r["log_streams"], r["problem"] and words(r["problem"]))
        for r in topo.instances_read()
    ]


def words(text: str) -> str:
    return " ".join(text.split()[:5])


def test_every_replica_is_found_in_its_region_breadth_first(rds: dict[str, Any]) -> None:
    arn = create_rds_instance(rds[HOME], "db", master_user="dbmaster", exports=["postgresql"])
    create_read_replica(rds[HOME], "db-r1", "db", exports=["postgresql"])
    eu_arn = create_read_replica(rds[EU], "db-eu", arn, exports=["postgresql"])
    create_read_replica(rds[HOME], "db-r1-r1", "db-r1", exports=[])  # its export is off
    create_read_replica(rds[EU], "db-eu-r1", eu_arn, exports=["postgresql"])  # cascading, in eu-west-1

    topo = topology.describe(entry())
    assert topo.kind == RDS_INSTANCE and topo.master_user == "dbmaster"
    assert layout(topo) == [
        ("db", HOME, "/aws/rds/instance/db/postgresql", None, None),
        ("db-r1", HOME, "/aws/rds/instance/db-r1/postgresql", None, None),
        (f"{EU}/db-eu", EU, "/aws/rds/instance/db-eu/postgresql", None, None),
        (
            "db-r1-r1",
            HOME,
            "/aws/rds/instance/db-r1-r1/postgresql",
            None,
            words("does not export its PostgreSQL"),
        ),
        (f"{EU}/db-eu-r1", EU, "/aws/rds/instance/db-eu-r1/postgresql", None, None),
    ]
    assert (
        "aws rds modify-db-instance --region us-east-1 --db-instance-identifier db-r1-r1"
        in (topo.problems()["db-r1-r1"])
    )
    # sessions are read at each instance's own endpoint
    sessions = {r["instance"]: r["sessions"] for r in topo.instances_read()}
    assert sessions[f"{EU}/db-eu"].startswith("db-eu.") and sessions[f"{EU}/db-eu"].endswith(":5432")
    assert topology.Topology.from_json(json.loads(json.dumps(topo.to_json()))) == topo  # the XCom


def test_listed_replicas_need_no_description_and_an_unlisted_one_is_a_problem(rds: dict[str, Any]) -> None:
    arn = create_rds_instance(rds[HOME], "db", master_user="dbmaster", exports=["postgresql"])
    create_read_replica(rds[HOME], "db-r1", "db", exports=["postgresql"])
    create_read_replica(rds[EU], "db-eu", arn, exports=["postgresql"])
    topo = topology.describe(
        entry(
            read_replicas=[
                {"db_instance_id": "db-r1", "log_group": "/custom/db-r1"},
                {"db_instance_id": "db-gone", "region_name": EU},
            ],
            instance_endpoints={"db-r1": "10.0.0.7:5432"},
        )
    )
    assert layout(topo) == [
        ("db", HOME, "/aws/rds/instance/db/postgresql", None, None),
        ("db-r1", HOME, "/custom/db-r1", None, None),
        (
            f"{EU}/db-gone",
            EU,
            "/aws/rds/instance/db-gone/postgresql",
            None,
            words("not found in region eu-west-1"),
        ),
        (
            f"{EU}/db-eu",
            EU,
            "/aws/rds/instance/db-eu/postgresql",
            None,
            words("replicates from db but is"),
        ),
    ]
    assert {r["instance"]: r["sessions"] for r in topo.instances_read()}["db-r1"] == "10.0.0.7:5432"


def test_an_empty_list_of_replicas_still_names_the_ones_rds_reports(rds: dict[str, Any]) -> None:
    create_rds_instance(rds[HOME], "db", master_user="dbmaster", exports=["postgresql"])
    create_read_replica(rds[HOME], "db-r1", "db", exports=["postgresql"])
    assert create_rds_instance(rds[HOME], "lonely", master_user="m", exports=["postgresql"])
    assert list(topology.describe(entry(read_replicas=[])).problems()) == ["db-r1"]
    assert topology.describe(entry(db_instance_id="lonely", read_replicas=[])).problems() == {}


@pytest.mark.parametrize(
    "setup, message",
    [
        ("none", "DB instance 'db' not found in region us-east-1: check db_instance_id and region_name"),
        ("aurora member", "is a member of DB cluster 'aur': configure cluster_id: aur instead"),
        ("cross-region replica", "is a read replica of 'src' (eu-west-1): its roles are the source's"),
    ],
)
def test_a_target_the_job_cannot_work_on_is_named_with_the_fix(
    rds: dict[str, Any], setup: str, message: str
) -> None:
    if setup == "aurora member":
        rds[HOME].create_db_cluster(
            DBClusterIdentifier="aur",
            Engine="aurora-postgresql",
            MasterUsername="m",
            MasterUserPassword="x" * 12,
        )
        rds[HOME].create_db_instance(
            DBInstanceIdentifier="db",
            DBInstanceClass="db.r6g.large",
            Engine="aurora-postgresql",
            DBClusterIdentifier="aur",
        )
    elif setup == "cross-region replica":
        src = create_rds_instance(rds[EU], "src", master_user="m", exports=["postgresql"])
        create_read_replica(rds[HOME], "db", src, exports=["postgresql"])
    with pytest.raises(TopologyError, match=None) as err:
        topology.describe(entry())
    assert message in str(err.value)


def test_self_managed_instances_are_grouped_by_their_log_group(rds: dict[str, Any]) -> None:
    cluster = parse_cluster(
        {
            "cluster_id": "pg-fleet",
            "postgres_conn_id": "pg",
            "log_group": "/pg/shared",
            "instances": [
                "a",
                {"name": "b", "log_stream": "b-host"},
                {"name": "c", "log_group": "/pg/c"},
                {"name": "d", "log_group": "/pg/d", "log_stream": "pg.log"},
            ],
            "instance_endpoints": {"a": "h-a:5432", "c": "h-c:5432"},
        },
        {},
        "clusters[1]",
    )
    topo = topology.describe(cluster)
    assert topo.kind == SELF_MANAGED
    assert [(v.log_group, v.instances, v.streams) for v in topo.views] == [
        ("/pg/shared", ["a", "b"], {"b": ["b-host"]}),
        ("/pg/c", ["c"], {"c": None}),
        ("/pg/d", ["d"], {"d": ["pg.log"]}),
    ]
    assert {r["instance"]: r["sessions"] for r in topo.instances_read()} == {
        "a": "h-a:5432",
        "b": "unknown",
        "c": "h-c:5432",
        "d": "unknown",
    }
