"""AWS pieces the job expects around an Aurora cluster or an RDS DB instance, created in the moto
server.

Shared by the tests and the demo: the cluster or instance record RDS returns (members, read
replicas, master user, log export) and an SNS topic whose messages land in an SQS queue, so an
alert can be read back.
"""

from __future__ import annotations

import json
from typing import Any


def create_aurora(
    rds: Any,
    cluster_id: str,
    *,
    master_user: str,
    exports: list[str],
    instances: int = 2,
    global_cluster: str | None = None,
) -> list[str]:
    """An aurora-postgresql cluster with ``instances`` members; returns their identifiers.

    With ``global_cluster`` (an existing global cluster's id) it joins that Aurora Global Database;
    the first cluster to join is its primary (moto marks a cluster writer only this way).
    """
    rds.create_db_cluster(
        DBClusterIdentifier=cluster_id,
        Engine="aurora-postgresql",
        MasterUsername=master_user,
        MasterUserPassword="not-used-by-the-job",
        EnableCloudwatchLogsExports=exports,
        **({"GlobalClusterIdentifier": global_cluster} if global_cluster else {}),
    )
    names = [f"{cluster_id}-instance-{i}" for i in range(1, instances + 1)]
    for name in names:
        rds.create_db_instance(
            DBInstanceIdentifier=name,
            DBInstanceClass="db.r6g.large",
            Engine="aurora-postgresql",
            DBClusterIdentifier=cluster_id,
        )
    return names


def create_rds_instance(rds: Any, db_instance_id: str, *, master_user: str, exports: list[str]) -> str:
    """An RDS for PostgreSQL DB instance (no cluster); returns its ARN."""
    created = rds.create_db_instance(
        DBInstanceIdentifier=db_instance_id,
        DBInstanceClass="db.m6g.large",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername=master_user,
        MasterUserPassword="not-used-by-the-job",
        EnableCloudwatchLogsExports=exports,
    )
    return str(created["DBInstance"]["DBInstanceArn"])


def create_read_replica(rds: Any, db_instance_id: str, source: str, *, exports: list[str]) -> str:
    """A read replica of ``source`` (an id in ``rds``'s region, or an ARN in another); returns its ARN."""
    created = rds.create_db_instance_read_replica(
        DBInstanceIdentifier=db_instance_id,
        SourceDBInstanceIdentifier=source,
        EnableCloudwatchLogsExports=exports,
    )
    return str(created["DBInstance"]["DBInstanceArn"])


def alert_topic_with_queue(sns: Any, sqs: Any, topic: str, queue: str) -> tuple[str, str]:
    """An SNS topic with an SQS queue subscribed; returns (topic ARN, queue URL)."""
    topic_arn = sns.create_topic(Name=topic)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    subscribed = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    if not any(sub["Endpoint"] == queue_arn for sub in subscribed):  # idempotent: one copy per alert
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return topic_arn, queue_url


def drain_alerts(sqs: Any, queue_url: str) -> list[dict[str, str]]:
    """Messages delivered so far, unwrapped from the SNS envelope ({subject, message}); removes them."""
    out = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        batch = got.get("Messages", [])
        if not batch:
            return out
        for m in batch:
            envelope = json.loads(m["Body"])
            out.append({"subject": envelope.get("Subject", ""), "message": envelope["Message"]})
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
