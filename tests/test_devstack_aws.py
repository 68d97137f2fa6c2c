"""The AWS double (moto server) and the Aurora-style log shipper, end to end over HTTP."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devstack.motoserver import MotoServer, MotoServerError, airflow_aws_conn, boto_client
from devstack.shipper import events_from_lines, group_name, ship, ship_log_file

CLUSTER = "aurora-demo"
INSTANCE = "aurora-demo-instance-1"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def url(moto: MotoServer) -> str:
    moto.reset()
    return moto.endpoint_url


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def pg_time(dt: datetime, tz: str = "UTC") -> str:
    """``%t`` as PostgreSQL prints it with log_timezone = tz."""
    return dt.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def recent(hours_ago: float = 1) -> datetime:
    """A whole-second UTC time in the past, well inside the 14-day window PutLogEvents accepts."""
    return (datetime.now(UTC) - timedelta(hours=hours_ago)).replace(microsecond=0)


def authorized(client: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """The 'connection authorized' events of INSTANCE, all pages."""
    paginator = client.get_paginator("filter_log_events")
    out: list[dict[str, Any]] = []
    for page in paginator.paginate(
        logGroupName=group_name(CLUSTER),
        logStreamNames=[INSTANCE],
        filterPattern='"connection authorized"',
        **kwargs,
    ):
        out += [{"timestamp": e["timestamp"], "message": e["message"]} for e in page["events"]]
    return out


# -- events_from_lines (no server) ---------------------------------------------------------------


def test_group_name() -> None:
    assert group_name("prod-db") == "/aws/rds/cluster/prod-db/postgresql"


def test_events_from_lines_groups_continuations_and_drops_leading_orphans() -> None:
    lines = [
        "\tFROM orphan_continuation\n",
        "2026-11-26 09:54:51 UTC:127.0.0.1(51244):alice@postgres:[5969]:LOG:  statement: SELECT 1\n",
        "\tFROM t\n",
        "\n",
        "\tWHERE x = 1\n",
        "2026-11-26 09:54:52.250 UTC:[local]:bob@app:[5970]:LOG:  "
        "connection authorized: user=bob database=app\n",
    ]
    t0 = ms(datetime(2026, 11, 26, 9, 54, 51, tzinfo=UTC))
    assert events_from_lines(lines) == [
        {
            "timestamp": t0,
            "message": lines[1].rstrip("\n") + "\n\tFROM t\n\n\tWHERE x = 1",
        },
        {"timestamp": t0 + 1250, "message": lines[5].rstrip("\n")},
    ]


@pytest.mark.parametrize(
    ("stamp", "tz", "expected_utc"),
    [
        ("2026-07-01 12:00:00 EDT", "America/New_York", datetime(2026, 7, 1, 16, 0)),
        ("2026-01-15 12:00:00 EST", "America/New_York", datetime(2026, 1, 15, 17, 0)),
        # The repeated hour when DST ends: the abbreviation picks which one.
        ("2026-11-01 01:30:00 EDT", "America/New_York", datetime(2026, 11, 1, 5, 30)),
        ("2026-11-01 01:30:00 EST", "America/New_York", datetime(2026, 11, 1, 6, 30)),
        ("2026-06-01 12:00:00 +03", "Europe/Istanbul", datetime(2026, 6, 1, 9, 0)),
        ("2026-06-01 12:00:00 GMT", "GMT", datetime(2026, 6, 1, 12, 0)),
        # The zone, not the printed abbreviation, decides.
        ("2026-06-01 12:00:00 XYZ", "Asia/Kolkata", datetime(2026, 6, 1, 6, 30)),
    ],
)
def test_events_from_lines_timezones(stamp: str, tz: str, expected_utc: datetime) -> None:
    line = f"{stamp}:10.0.0.5(40000):carol@db:[77]:LOG:  connection authorized: user=carol database=db"
    (event,) = events_from_lines([line], tz=tz)
    assert event == {"timestamp": ms(expected_utc.replace(tzinfo=UTC)), "message": line}


# -- against the moto server ---------------------------------------------------------------------


def test_ship_and_read_back_with_filter(url: str) -> None:
    t = recent(hours_ago=3)
    lines = [
        f"{pg_time(t)}:127.0.0.1(51244):[unknown]@[unknown]:[5969]:LOG:  connection received: "
        "host=127.0.0.1 port=51244",
        f"{pg_time(t)}:127.0.0.1(51244):alice@postgres:[5969]:LOG:  connection authorized: "
        "user=alice database=postgres application_name=psql",
        f"{pg_time(t + timedelta(seconds=5))}:127.0.0.1(51244):alice@postgres:[5969]:ERROR:  "
        'syntax error at or near "SELEC"',
        "\tSELEC 1",
        "\t  FROM t",
        f"{pg_time(t + timedelta(seconds=7))}:[local]:bob@app:[5980]:LOG:  connection authorized: "
        "user=bob database=app SSL enabled (protocol=TLSv1.3)",
        "\tDETAIL: a made-up continuation line of an authorized connection",
    ]
    events = events_from_lines(lines)
    assert len(events) == 4
    client = boto_client(url, "logs")
    # Out of order on purpose: ship() sorts.
    assert ship(client, CLUSTER, INSTANCE, list(reversed(events))) == 4
    # Something in another stream must not show up.
    ship(url, CLUSTER, "aurora-demo-instance-2", events_from_lines([lines[1].replace("alice", "mallory")]))

    assert authorized(client) == [
        {"timestamp": ms(t), "message": lines[1]},
        {"timestamp": ms(t) + 7000, "message": lines[5] + "\n" + lines[6]},
    ]
    # The time window filter works on the event timestamps.
    assert authorized(client, startTime=ms(t) + 1) == [
        {"timestamp": ms(t) + 7000, "message": lines[5] + "\n" + lines[6]}
    ]
    streams = client.describe_log_streams(logGroupName=group_name(CLUSTER))["logStreams"]
    assert sorted(s["logStreamName"] for s in streams) == [INSTANCE, "aurora-demo-instance-2"]


def test_ship_non_utc_log_timezone(url: str) -> None:
    tz = "America/New_York"
    t = recent(hours_ago=20)
    line = (
        f"{pg_time(t, tz)}:10.1.2.3(40001):dave@sales:[123]:LOG:  "
        "connection authorized: user=dave database=sales"
    )
    assert " E" in line  # EST or EDT
    assert ship(url, CLUSTER, INSTANCE, events_from_lines([line], tz=tz)) == 1
    assert authorized(boto_client(url, "logs")) == [{"timestamp": ms(t), "message": line}]


def test_ship_is_idempotent_about_group_and_stream_and_batches(url: str) -> None:
    t = recent(hours_ago=2)
    # 12,000 events: more than one PutLogEvents batch, and more than one filter_log_events page.
    events = [
        {
            "timestamp": ms(t) + i,
            "message": f"{pg_time(t)}:127.0.0.1(1):u{i}@db:[{i}]:LOG:  connection authorized: user=u{i}",
        }
        for i in range(12_000)
    ]
    assert ship(url, CLUSTER, INSTANCE, events[:1]) == 1
    assert ship(url, CLUSTER, INSTANCE, events[1:]) == 11_999
    got = authorized(boto_client(url, "logs"))
    assert [e["timestamp"] for e in got] == [e["timestamp"] for e in events]
    assert got[-1]["message"] == events[-1]["message"]


def test_ship_refuses_events_cloudwatch_would_drop(url: str) -> None:
    old = recent(hours_ago=24 * 15)
    with pytest.raises(ValueError, match="outside CloudWatch"):
        ship(url, CLUSTER, INSTANCE, [{"timestamp": ms(old), "message": "too old"}])


def test_ship_log_file_from_offset(url: str, tmp_path: Path) -> None:
    t = recent(hours_ago=1)
    first = (
        f"{pg_time(t)}:127.0.0.1(1):alice@postgres:[1]:LOG:  connection authorized: user=alice "
        "database=postgres application_name=caf\u00e9\n"
    )
    second = (
        f"{pg_time(t + timedelta(seconds=1))}:127.0.0.1(2):bob@postgres:[2]:LOG:  connection authorized: "
    )
    path = tmp_path / "postgresql.log"
    path.write_bytes((first + second).encode() + b"\xff")  # last line incomplete, invalid UTF-8

    shipped, offset = ship_log_file(url, CLUSTER, INSTANCE, path)
    assert (shipped, offset) == (1, len(first.encode()))
    assert ship_log_file(url, CLUSTER, INSTANCE, path, since_offset=offset) == (0, offset)

    with path.open("ab") as f:
        f.write(b" user=bob\n")
    shipped, offset2 = ship_log_file(url, CLUSTER, INSTANCE, path, since_offset=offset)
    assert (shipped, offset2) == (1, path.stat().st_size)
    assert authorized(boto_client(url, "logs")) == [
        {"timestamp": ms(t), "message": first.rstrip("\n")},
        {"timestamp": ms(t) + 1000, "message": second + "\ufffd user=bob"},
    ]


def test_reset_drops_state(moto: MotoServer, url: str) -> None:
    client = boto_client(url, "logs")
    client.create_log_group(logGroupName=group_name(CLUSTER))
    moto.reset()
    assert client.describe_log_groups()["logGroups"] == []


def test_airflow_hook_reaches_moto(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if "AIRFLOW_HOME" not in os.environ:  # only matters if airflow is not imported yet
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_AWS", json.dumps(airflow_aws_conn(url)))
    ship(url, CLUSTER, INSTANCE, [])

    from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook

    hook = AwsLogsHook(aws_conn_id="test_aws", region_name="us-east-1")
    groups = hook.conn.describe_log_groups()["logGroups"]
    assert [g["logGroupName"] for g in groups] == [group_name(CLUSTER)]
    assert hook.conn.meta.endpoint_url == url


def test_airflow_aws_conn_shape() -> None:
    assert airflow_aws_conn("http://127.0.0.1:1", "eu-west-1") == {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": "http://127.0.0.1:1", "region_name": "eu-west-1"},
    }


def test_moto_server_reports_startup_failure_and_stops_cleanly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MotoServer(port=taken.getsockname()[1], startup_timeout=20)
        with pytest.raises(MotoServerError, match="exited with code"):
            server.start()
    assert not server.running

    with MotoServer() as server:
        proc = server._proc
        assert proc is not None and server.running
    assert proc.poll() is not None and not server.running
