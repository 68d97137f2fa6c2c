"""The stage a live Airflow runs the cluster DAG on: the demo's roles, Aurora and SNS in moto."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.awsfixtures import alert_topic_with_queue, create_aurora
from devstack.motoserver import MotoServer, boto_client
from devstack.pgcluster import PgBinaries, cluster_from_template
from devstack.stories import MASTER, ROLE_PASSWORD, create_roles, seed_history
from tests.conftest import PASSWORD
from tests.scenario import Scenario


@contextmanager
def fresh_scenario(pg_template: Path, pg_binaries: PgBinaries, moto: MotoServer) -> Iterator[Scenario]:
    """A scenario on a new cluster copied from the template and an emptied moto, for a module's
    live Airflow; stopped afterwards whatever happens."""
    pg = cluster_from_template(pg_template, pg_binaries, PASSWORD)
    moto.reset()
    with pytest.MonkeyPatch.context() as mp:
        sc = Scenario(pg, moto, mp)
        try:
            yield sc
        finally:
            sc.close()
            pg.stop("immediate")
            shutil.rmtree(pg.root, ignore_errors=True)


def stage_demo(sc: Scenario, config: Path, **defaults: Any) -> tuple[Any, str]:
    """Aurora with two instances and an SNS topic read back through SQS; the demo's roles with
    their histories; real logins on the writer and the reader, shipped; the config file, with
    ``defaults`` added to its defaults. Returns the SQS client and the queue the alerts reach."""
    rds, sns, sqs = (boto_client(sc.moto.endpoint_url, s) for s in ("rds", "sns", "sqs"))
    create_aurora(rds, sc.cluster_id, master_user=MASTER, exports=["postgresql"])
    topic_arn, queue_url = alert_topic_with_queue(sns, sqs, "dba-alerts", "dba-inbox")
    create_roles(sc.admin)
    seed_history(sc.admin)
    assert sc.login("app_daily", password=ROLE_PASSWORD)
    sc.ship(sc.writer)
    assert sc.login("report_reader", password=ROLE_PASSWORD)
    sc.ship(sc.reader)
    here = f"127.0.0.1:{sc.pg.port}"  # moto's endpoints are names nothing answers
    doc = {
        "defaults": {
            "schedule": None,  # unpausing must not start a scheduled run beside the triggered one
            "settle_seconds": 0,
            "max_action_ratio": 1.0,
            "retries": 0,
            "exclude_users": ["svc_etl"],
            "alert": {"sns_topic_arn": topic_arn},
            **defaults,
        },
        "clusters": [
            {
                "cluster_id": sc.cluster_id,
                "postgres_conn_id": sc.pg_conn_id,
                "aws_conn_id": sc.aws_conn_id,
                "region_name": "us-east-1",
                "instance_endpoints": {sc.writer: here, sc.reader: here},
                "global_secondaries": [],
            }
        ],
    }
    config.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return sqs, queue_url
