"""A server whose timezone and log_timezone are not UTC makes the same decisions as a UTC one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack import shipper
from devstack.motoserver import MotoServer
from devstack.pgcluster import PgBinaries, PgCluster, cluster_from_template
from inactive_users.core.logparse import LoginAggregator
from tests.conftest import PASSWORD
from tests.scenario import Scenario


@pytest.fixture
def pg_new_york(pg_binaries: PgBinaries, pg_template: Path) -> Iterator[PgCluster]:
    cluster = cluster_from_template(pg_template, pg_binaries, PASSWORD, timezone="America/New_York")
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.root, ignore_errors=True)


def decisions(sc: Scenario) -> dict[str, object]:
    """The same story on any server: what the job decides, and whether the fresh login was seen."""
    for name in ("alice", "bob", "carl", "dave"):
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name, days in {"alice": 50, "bob": 100, "carl": 200, "dave": 89.99}.items():
        sc.set_last_login(name, days)
    assert sc.login("alice")
    sc.ship()
    report = eng.run([sc.writer])
    now = sc.sql("SELECT now()")[0][0]
    st = sc.statuses()
    return {
        "lines_in_zone": any(" EST:" in line or " EDT:" in line for line in sc.pg.log_lines()),
        "alice_seen_now": abs(st["alice"]["last_login"] - now) < timedelta(minutes=2),
        "locked": report.lock.names("locked"),
        "dropped": report.delete.names("dropped"),
        "statuses": {n: s["status"] for n, s in st.items()},
    }


def test_new_york_server_decides_like_a_utc_server(
    pg: PgCluster, pg_new_york: PgCluster, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    utc = Scenario(pg, moto, monkeypatch)
    try:
        in_utc = decisions(utc)
    finally:
        utc.close()
    moto.reset()
    ny = Scenario(pg_new_york, moto, monkeypatch)
    try:
        in_ny = decisions(ny)
        assert ny.sql("SHOW log_timezone") == [("America/New_York",)]
    finally:
        ny.close()
    assert in_ny.pop("lines_in_zone") is True and in_utc.pop("lines_in_zone") is False
    assert in_ny == in_utc
    assert in_utc["locked"] == ["bob"] and in_utc["dropped"] == ["carl"] and in_utc["alice_seen_now"] is True


def test_logins_across_the_dst_change_keep_their_order() -> None:
    """2026-11-01 01:30 happens twice in New York; the later one (EST) is the last login."""
    login = "{ts}:10.0.0.7(5000):{u}@app:[{pid}]:LOG:  connection authorized: user={u} database=app"
    lines = [
        login.format(ts="2026-11-01 01:30:00 EDT", u="alice", pid=1),
        login.format(ts="2026-11-01 01:10:00 EST", u="bob", pid=2),
        login.format(ts="2026-11-01 01:30:00 EST", u="alice", pid=3),
    ]
    events = shipper.events_from_lines(lines, tz="America/New_York")
    agg = LoginAggregator()
    for event in sorted(events, key=lambda e: e["timestamp"]):
        agg.feed(event["message"], datetime.fromtimestamp(event["timestamp"] / 1000, UTC))
    summary = agg.finish()
    assert summary.last_login["alice"] == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    assert summary.last_login["bob"] == datetime(2026, 11, 1, 6, 10, tzinfo=UTC)  # after alice's EDT login
