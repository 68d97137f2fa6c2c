"""Run the real DAG with ``dag.test()`` against a Scenario's cluster and the moto server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from devstack.awsfixtures import alert_topic_with_queue, create_aurora, create_rds_instance, drain_alerts
from tests.scenario import Scenario

MASTER = "clustermaster"
PARSING_CONTEXT_DAG_ID = "_AIRFLOW_PARSING_CONTEXT_DAG_ID"


class DagHarness:
    """An Aurora cluster in moto (two instances, log export on), an SNS topic with an SQS queue,
    and a config file naming them; ``run()`` executes the generated DAG end to end."""

    def __init__(
        self,
        sc: Scenario,
        tmp_path: Path,
        *,
        global_cluster: str | None = None,
        db_instance: str | None = None,
        **cluster_overrides: Any,
    ) -> None:
        """``global_cluster``: make the cluster the primary of a new Aurora Global Database.
        ``db_instance``: instead of the Aurora cluster, an RDS for PostgreSQL DB instance of that id
        (log export on), configured with ``db_instance_id``; the scenario's server is that instance."""
        self.sc = sc
        self.db_instance = db_instance
        self.rds = _client(sc, "rds")
        self.sns = _client(sc, "sns")
        self.sqs = _client(sc, "sqs")
        self.config_path = tmp_path / "inactive_users.yaml"
        if global_cluster:
            self.rds.create_global_cluster(GlobalClusterIdentifier=global_cluster, Engine="aurora-postgresql")
        if db_instance:
            create_rds_instance(self.rds, db_instance, master_user=MASTER, exports=["postgresql"])
        else:
            create_aurora(
                self.rds,
                sc.cluster_id,
                master_user=MASTER,
                exports=["postgresql"],
                global_cluster=global_cluster,
            )
        self.topic_arn, self.queue_url = alert_topic_with_queue(self.sns, self.sqs, "dba-alerts", "dba-inbox")
        self.write_config(**cluster_overrides)
        sc.monkeypatch.setenv("INACTIVE_USERS_CONFIG", str(self.config_path))

    def create_aurora(self, cluster_id: str, exports: list[str]) -> None:
        create_aurora(self.rds, cluster_id, master_user=MASTER, exports=exports)

    def write_config(self, defaults: dict[str, Any] | None = None, **cluster: Any) -> None:
        # moto's instance endpoints are names no server answers: both instances are this server
        here = f"127.0.0.1:{self.sc.pg.port}"
        target: dict[str, Any] = (
            {"db_instance_id": self.db_instance, "instance_endpoints": {self.db_instance: here}}
            if self.db_instance
            else {
                "cluster_id": self.sc.cluster_id,
                "instance_endpoints": {self.sc.writer: here, self.sc.reader: here},
                "global_secondaries": [],
            }
        )
        entry = {
            **target,
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
        from inactive_users.face.dag_factory import build_dags

        target = self.db_instance or self.sc.cluster_id
        return build_dags(self.config_path)[dag_id or f"inactive_users__{target.replace('-', '_')}"]

    def run(self, conf: dict[str, Any] | None = None, dag_id: str | None = None) -> dict[str, str]:
        """One DAG run; returns each task's final state."""
        from airflow.sdk import timezone

        # Airflow 3.1's dag.test() leaves _AIRFLOW_PARSING_CONTEXT_DAG_ID set in this process (its
        # parsing context restores only a value that was there before), so a later parse in this
        # test process would build that one DAG only: put the variable back as it was.
        before = os.environ.get(PARSING_CONTEXT_DAG_ID)
        try:
            dr = self.dag(dag_id).test(run_conf=conf, logical_date=timezone.utcnow())
        finally:
            if before is None:
                os.environ.pop(PARSING_CONTEXT_DAG_ID, None)
        return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}

    def messages(self) -> list[dict[str, str]]:
        """Alerts delivered to the queue since the last call."""
        return drain_alerts(self.sqs, self.queue_url)


def _client(sc: Scenario, service: str) -> Any:
    from devstack.motoserver import boto_client

    return boto_client(sc.moto.endpoint_url, service)
