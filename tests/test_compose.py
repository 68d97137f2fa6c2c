"""docker-compose.yaml and the Dockerfile are consistent with the repo (Docker itself is not needed
to check them: there is no Docker daemon here, so neither is built or run by the tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import inactive_users
from devstack.pgcluster import AURORA_PREFIX
from inactive_users.core.config import load
from tests.distbuild import build_dist
from tests.pins import pins

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES = COMPOSE["services"]
AIRFLOW_SERVICES = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-init",
]


def container_to_host(service: dict[str, Any], container_path: str) -> Path | None:
    for volume in service.get("volumes", []):
        host, target = volume.split(":")[:2]
        if container_path.startswith(target + "/") and host.startswith("./"):
            return ROOT / host / container_path[len(target) + 1 :]
    return None


def test_the_official_layout_with_the_demo_parts() -> None:
    assert set(SERVICES) == {
        "postgres",
        *AIRFLOW_SERVICES,
        "target-postgres",
        "moto",
        "log-shipper",
    }
    for name in AIRFLOW_SERVICES:
        service = SERVICES[name]
        assert service["image"] == f"inactive-users-airflow:3.3.2-{inactive_users.__version__}"
        assert service["build"] == {"context": ".", "args": {"AIRFLOW_IMAGE_TAG": "3.3.2"}}
        assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert "./dags:/opt/airflow/dags" in service["volumes"]
        # the package comes from the image (the wheel), not from the checkout
        assert not [v for v in service["volumes"] if v.startswith("./plugins")], name
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in service["environment"]
    assert [SERVICES[s]["command"] for s in AIRFLOW_SERVICES[:4]] == [
        "api-server",
        "scheduler",
        "dag-processor",
        "triggerer",
    ]


def test_every_mounted_path_exists() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("./"):
                assert (ROOT / host).exists(), f"{name} mounts {host}, which is not in the repo"
            else:
                assert host in COMPOSE["volumes"], f"{name} uses undeclared volume {host}"


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, flags=re.M))


def test_the_dockerfile_extends_the_pinned_airflow_image_with_the_wheel_make_dist_builds() -> None:
    req = pins(ROOT / "requirements.txt") | pins(ROOT / "constraints.txt")
    args = dockerfile_args()
    assert args["AIRFLOW_IMAGE_TAG"] == req["apache-airflow"]  # the Airflow make test runs
    assert "FROM apache/airflow:${AIRFLOW_IMAGE_TAG}" in DOCKERFILE
    for name in AIRFLOW_SERVICES:  # the compose file builds it from the same tag
        assert SERVICES[name]["build"]["args"]["AIRFLOW_IMAGE_TAG"] == args["AIRFLOW_IMAGE_TAG"]
        assert SERVICES[name]["image"].split(":")[1].startswith(args["AIRFLOW_IMAGE_TAG"] + "-")
    assert args["INACTIVE_USERS_WHEEL"] == build_dist()["wheel"].name
    assert "COPY dist/${INACTIVE_USERS_WHEEL} /tmp/" in DOCKERFILE
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in DOCKERFILE  # pip keeps the image's Airflow
    installed = re.findall(r"^\s+(apache-airflow-providers-[a-z-]+)==(\S+)", DOCKERFILE, flags=re.M)
    assert {n for n, _ in installed} == {
        "apache-airflow-providers-amazon",
        "apache-airflow-providers-postgres",
        "apache-airflow-providers-standard",
        "apache-airflow-providers-celery",
    }
    for name, version in installed:
        assert req[name] == version, name
    assert (ROOT / ".dockerignore").read_text().splitlines()[-2:] == ["*", "!dist/*.whl"]


def test_pins_match_the_requirements() -> None:
    req = pins(ROOT / "requirements.txt") | pins(ROOT / "constraints.txt")
    moto_cmd = " ".join(SERVICES["moto"]["command"])
    assert f"moto[server]=={req['moto']}" in moto_cmd
    shipper_cmd = " ".join(SERVICES["log-shipper"]["command"])
    assert f"psycopg[binary]=={req['psycopg']}" in shipper_cmd and f"boto3=={req['boto3']}" in shipper_cmd


def test_the_demo_config_and_its_connections_are_provided() -> None:
    service = SERVICES["airflow-scheduler"]
    env = service["environment"]
    config_file = container_to_host(service, env["INACTIVE_USERS_CONFIG"])
    assert config_file is not None and config_file.exists()
    loaded = load(config_file)
    assert loaded.errors == [] and [c.cluster_id for c in loaded.clusters] == ["demo-aurora"]
    cluster = loaded.clusters[0]
    for conn_id in (cluster.postgres_conn_id, cluster.aws_conn_id):
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in env  # type: ignore[union-attr]
    aws = json.loads(env["AIRFLOW_CONN_DEMO_AWS"])
    assert aws["extra"]["endpoint_url"] == "http://moto:5000"
    assert "@target-postgres:5432/" in env["AIRFLOW_CONN_DEMO_PG"]
    assert cluster.alert.sns_topic_arn and cluster.alert.sns_topic_arn.endswith(":dba-alerts")


def test_the_target_is_configured_like_aurora_and_its_log_reaches_the_shipper() -> None:
    cmd = SERVICES["target-postgres"]["command"]
    settings = dict(arg.split("=", 1) for arg in cmd if "=" in arg)
    assert settings["log_connections"] == "on"
    assert settings["log_line_prefix"] == AURORA_PREFIX
    assert settings["log_timezone"] == settings["timezone"] == "UTC"
    logfile = f"{settings['log_directory']}/{settings['log_filename']}"
    shipper = " ".join(SERVICES["log-shipper"]["command"])
    assert f"--logfile {logfile}" in shipper
    assert "target-logs:/var/log/postgresql:ro" in SERVICES["log-shipper"]["volumes"]
    assert "target-logs:/var/log/postgresql" in SERVICES["target-postgres"]["volumes"]


def test_the_compose_helper_sets_the_stage_and_ships_real_logins(scenario: Any) -> None:
    """The log-shipper service's code, run here against a real PostgreSQL and the moto server."""
    from devstack.compose_setup import play_once, setup
    from devstack.motoserver import boto_client

    sc = scenario
    dsn = sc.pg.dsn()
    instances = setup(dsn, sc.moto.endpoint_url, "demo-aurora")
    assert instances == ["demo-aurora-instance-1", "demo-aurora-instance-2"]
    assert setup(dsn, sc.moto.endpoint_url, "demo-aurora") == instances  # a restarted container
    play_once(dsn, sc.moto.endpoint_url, "demo-aurora", str(sc.pg.logfile), instances, 0)
    logs = boto_client(sc.moto.endpoint_url, "logs")
    for stream, user in zip(instances, ["app_daily", "report_reader"], strict=True):
        events = logs.filter_log_events(
            logGroupName="/aws/rds/cluster/demo-aurora/postgresql",
            logStreamNames=[stream],
            filterPattern='"connection authorized"',
        )["events"]
        assert any(f"user={user} " in e["message"] for e in events), stream
    status = sc.sql("SELECT user_name FROM inactive_users.user_login_status ORDER BY 1")
    assert ("ana_100",) in status
    sns = boto_client(sc.moto.endpoint_url, "sns")
    [topic] = sns.list_topics()["Topics"]
    assert len(sns.list_subscriptions_by_topic(TopicArn=topic["TopicArn"])["Subscriptions"]) == 1


@pytest.mark.parametrize("name", ["README.md"])
def test_readme_mentions_compose(name: str) -> None:
    assert "docker compose up" in (ROOT / name).read_text()


CELERY = yaml.safe_load((ROOT / "docker-compose.celery.yaml").read_text())


def test_the_celery_layout_overrides_only_the_executor() -> None:
    """docker-compose.celery.yaml on top: every Airflow service runs CeleryExecutor on the redis
    service, a worker (and Flower) extend the scheduler: same image, DAGs and stage."""
    over = CELERY["services"]
    assert {"redis", "airflow-worker", "flower", *AIRFLOW_SERVICES} == set(over)
    assert over["redis"]["image"].startswith("redis:")
    for name in [*AIRFLOW_SERVICES, "airflow-worker", "flower"]:
        env = {
            **SERVICES.get(name, SERVICES["airflow-scheduler"])["environment"],
            **over[name]["environment"],
        }
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].split("@")[1].startswith("redis:6379"), name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres/airflow")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    for name in ("airflow-worker", "flower"):
        assert over[name]["extends"] == {"file": "docker-compose.yaml", "service": "airflow-scheduler"}
    assert over["airflow-worker"]["command"] == "celery worker"
    assert over["flower"]["profiles"] == ["flower"]
    assert over["airflow-worker"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_celery_layout_uses_the_same_image_and_installs_nothing_at_start() -> None:
    """The image has the Celery provider (the Dockerfile); _PIP_ADDITIONAL_REQUIREMENTS, which
    Airflow says is for quick checks only, is used nowhere."""
    for name, service in CELERY["services"].items():
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in (service.get("environment") or {}), name
        assert "image" not in service or name in ("redis",), name  # the Airflow ones extend ours
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in (ROOT / "docker-compose.celery.yaml").read_text()
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in (ROOT / "docker-compose.yaml").read_text()
