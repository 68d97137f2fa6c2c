"""The server's own log format, end to end: a real server writing each ``log_line_prefix``, its log
shipped to moto's CloudWatch Logs, and the real DAG reading the prefix at run time.

Every prefix must give the same decisions as Aurora's default; a prefix without ``%u`` is refused
by preflight with the message that names it, and changes nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from devstack.motoserver import MotoServer
from devstack.pgcluster import PgBinaries, PgCluster, cluster_from_template
from tests.conftest import PASSWORD
from tests.dagrun import DagHarness
from tests.scenario import Scenario

PREFIXES = {
    "aurora-default": "%t:%r:%u@%d:[%p]:",
    "aurora-16-alternative": "%m:%r:%u@%d:[%p]:%l:%e:%s:%v:%x:%c:%q%a",
    "debian": "%m [%p] %q%u@%d ",
    "keyed-with-app": "%t [%p]: user=%u,db=%d,app=%a,client=%h ",
    "session-id": "%m %c %q%u@%d ",
}
#: Every prefix on the newest server; the alternative Aurora prefix on every version.
EVERY_VERSION = {"aurora-16-alternative"}


@pytest.fixture
def prefixed(
    request: pytest.FixtureRequest, pg_binaries: PgBinaries, pg_template: Path
) -> Iterator[PgCluster]:
    name = request.param
    if name not in EVERY_VERSION and pg_binaries.version != 18:
        pytest.skip(f"prefix {name!r} runs on PostgreSQL 18 only (the parser is the same on every version)")
    prefix = PREFIXES.get(name, name)
    cluster = cluster_from_template(
        pg_template,
        pg_binaries,
        PASSWORD,
        extra_conf={"log_line_prefix": "'" + prefix.replace("'", "''") + "'"},
    )
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def sc(prefixed: PgCluster, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scenario]:
    scenario = Scenario(prefixed, moto, monkeypatch)
    try:
        yield scenario
    finally:
        scenario.close()


def db_now(sc: Scenario) -> datetime:
    return sc.sql("SELECT now()")[0][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("prefixed", list(PREFIXES), indirect=True)
def test_every_prefix_gives_the_same_decisions(sc: Scenario, tmp_path: Path, airflow_db: None) -> None:
    h = DagHarness(sc, tmp_path)
    names = ["active", 'odd "name" @x:y', "limited", "idle"]
    for name in names:
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name in names:
        sc.set_last_login(name, 120)
    sc.sql('ALTER ROLE "limited" CONNECTION LIMIT 0')  # authorized, then "too many connections"
    assert sc.login("active")
    assert sc.login('odd "name" @x:y')
    assert not sc.login("limited")
    assert sc.ship(sc.writer) > 0
    assert sc.login("postgres", password=sc.pg.password)
    assert sc.ship(sc.reader) > 0

    states = h.run()
    assert states["report"] == "success", states
    st = sc.statuses()
    now = db_now(sc)
    for name in ("active", 'odd "name" @x:y'):
        assert st[name]["status"] == "Active", name
        assert abs(st[name]["last_login"] - now) < timedelta(minutes=2), name
    assert st["limited"]["status"] == "Locked"  # its rejected login did not reset its clock
    assert st["idle"]["status"] == "Locked"


@pytest.mark.single_pg_version("the refusal reads the configured prefix, not a server's log")
@pytest.mark.parametrize(
    "prefixed, missing",
    [("%m [%p] ", "%u"), ("%t:%r:%u@%d:", "%p")],
    indirect=["prefixed"],
)
def test_a_prefix_without_user_or_process_is_refused_by_preflight(
    sc: Scenario, tmp_path: Path, airflow_db: None, missing: str, capfd: pytest.CaptureFixture[str]
) -> None:
    h = DagHarness(sc, tmp_path)
    sc.create_role("idle")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("idle", 120)
    before = sc.snapshot()
    states = h.run()
    assert states["preflight"] == "failed", states
    assert sc.snapshot() == before
    out = capfd.readouterr()
    assert f"has no {missing}" in out.out + out.err
