"""Run the real DAG with ``dag.test()`` against a Scenario's cluster and the moto server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.scenario import Scenario

MASTER = "clustermaster"


class DagHarness:
    """An Aurora cluster in moto (two instances, log export on), an SNS topic with an SQS queue,
    and a config file naming them; ``run()`` executes the generated DAG end to end."""

    def __init__(self, sc: Scenario, tmp_path: Path, **cluster_overrides: Any) -> None:
        self.sc = sc
        self.rds = _client(sc, "rds")
        self.sns = _client(sc, "sns")
        self.sqs = _client(sc, "sqs")
        self.config_path = tmp_path / "inactive_users.yaml"
        self.create_aurora(sc.cluster_id, exports=["postgresql"])
        topic = self.sns.create_topic(Name="dba-alerts")["TopicArn"]
        self.queue_url = self.sqs.create_queue(QueueName="dba-inbox")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        self.topic_arn = topic
        self.write_config(**cluster_overrides)
        sc.monkeypatch.setenv("INACTIVE_USERS_CONFIG", str(self.config_path))

    def create_aurora(self, cluster_id: str, exports: list[str]) -> None:
        self.rds.create_db_cluster(
            DBClusterIdentifier=cluster_id,
            Engine="aurora-postgresql",
            MasterUsername=MASTER,
            MasterUserPassword="not-used-by-the-job",
            EnableCloudwatchLogsExports=exports,
        )
        for instance in (f"{cluster_id}-instance-1", f"{cluster_id}-instance-2"):
            self.rds.create_db_instance(
                DBInstanceIdentifier=instance,
                DBInstanceClass="db.r6g.large",
                Engine="aurora-postgresql",
                DBClusterIdentifier=cluster_id,
            )

    def write_config(self, defaults: dict[str, Any] | None = None, **cluster: Any) -> None:
        entry = {
            "cluster_id": self.sc.cluster_id,
            "postgres_conn_id": self.sc.pg_conn_id,
            "aws_conn_id": self.sc.aws_conn_id,
            "region_name": "us-east-1",
            **cluster,
        }
        base = {
            "settle_seconds": 0,
            "max_action_ratio": 1.0,
            "retries": 0,
            "alert": {"sns_topic_arn": self.topic_arn},
        }
        doc = {"defaults": {**base, **(defaults or {})}, "clusters": [entry]}
        self.config_path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")

    def dag(self, dag_id: str | None = None) -> Any:
        from inactive_users.dag_factory import build_dags

        return build_dags(self.config_path)[
            dag_id or f"inactive_users__{self.sc.cluster_id.replace('-', '_')}"
        ]

    def run(self, conf: dict[str, Any] | None = None, dag_id: str | None = None) -> dict[str, str]:
        """One DAG run; returns each task's final state."""
        from airflow.sdk import timezone

        dr = self.dag(dag_id).test(run_conf=conf, logical_date=timezone.utcnow())
        return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}

    def messages(self) -> list[dict[str, str]]:
        """Alerts delivered to the queue since the last call (SNS envelope: Subject, Message)."""
        out = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            batch = got.get("Messages", [])
            if not batch:
                return out
            for m in batch:
                envelope = json.loads(m["Body"])
                out.append({"subject": envelope.get("Subject", ""), "message": envelope["Message"]})
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])


def _client(sc: Scenario, service: str) -> Any:
    from devstack.motoserver import boto_client

    return boto_client(sc.moto.endpoint_url, service)
