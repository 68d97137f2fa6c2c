"""Fixtures: real PostgreSQL clusters (every major version on the machine) and a real moto server.

Nothing here patches our own I/O: the engine reaches PostgreSQL and the AWS endpoint through
Airflow connections given as ``AIRFLOW_CONN_*`` environment variables, exactly as in production.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

# Airflow reads its home at import time: give the test session its own before anything imports it.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="iu-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")
os.environ["INACTIVE_USERS_CONFIG"] = str(_AIRFLOW_HOME / "no-config-yet.yaml")
os.environ.pop("AWS_PROFILE", None)
# dag.test()'s in-process execution API needs one (Airflow 3.1 and 3.2 fail a run's first task without)
os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", "iu-test-session-jwt-secret-0123456789")

import pytest

from devstack.motoserver import MotoServer
from devstack.pgcluster import (
    PgBinaries,
    PgCluster,
    available_binaries,
    cluster_from_template,
    create_template,
)
from devstack.setuperror import SetupError
from tests.dagrun import DagHarness
from tests.scenario import Scenario

PASSWORD = "Sup3r-s3cret-pw"
T = TypeVar("T")


def _set_up(make: Callable[[], T]) -> T:
    """``make()``; a known set-up problem fails the test with its one line, not a traceback."""
    try:
        return make()
    except SetupError as exc:
        problem = str(exc).splitlines()[0]
    # Outside the except block, so no "during handling of the above exception" chain is printed.
    pytest.fail(f"set-up failed: {problem}", pytrace=False)


try:
    _BINARIES = available_binaries()
except SetupError as _exc:
    pytest.exit(f"set-up failed: {str(_exc).splitlines()[0]}", returncode=4)


def pytest_report_header() -> list[str]:
    return ["postgres versions: " + ", ".join(f"{b.version} ({b.bin_dir})" for b in _BINARIES)]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pg-newest-only",
        action="store_true",
        help="run every test on the newest PostgreSQL only (make test-compat: its subject is Airflow)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.single_pg_version(reason)``: run on the newest PostgreSQL only, saying why.

    For tests whose subject is not PostgreSQL (AWS faults, alert bookkeeping) but that need a
    cluster: the other versions would only repeat them. ``--pg-newest-only`` does so for all.
    """
    newest = _BINARIES[0].label if _BINARIES else None
    everywhere = "--pg-newest-only: the subject of this run is the Airflow version, not PostgreSQL"
    for item in items:
        marker = item.get_closest_marker("single_pg_version")
        callspec = getattr(item, "callspec", None)
        if callspec is None or "pg_binaries" not in callspec.params:
            continue
        if marker is None and not config.getoption("--pg-newest-only"):
            continue
        if callspec.params["pg_binaries"].label != newest:
            reason = marker.args[0] if marker is not None else everywhere
            item.add_marker(pytest.mark.skip(reason=f"runs on {newest} only: {reason}"))


@pytest.fixture(scope="session", params=_BINARIES, ids=[b.label for b in _BINARIES])
def pg_binaries(request: pytest.FixtureRequest) -> PgBinaries:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def pg_template(pg_binaries: PgBinaries) -> Iterator[Path]:
    path = _set_up(lambda: create_template(pg_binaries, PASSWORD))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pg(pg_binaries: PgBinaries, pg_template: Path) -> Iterator[PgCluster]:
    """A fresh cluster per test: roles are cluster-wide, so tests cannot share one."""
    cluster = _set_up(lambda: cluster_from_template(pg_template, pg_binaries, PASSWORD))
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def pg_standby(pg: PgCluster) -> Iterator[PgCluster]:
    """A streaming hot standby of ``pg``'s cluster: its own port, socket dir and log file."""
    standby = _set_up(pg.create_standby)
    try:
        yield standby
    finally:
        standby.stop("immediate")
        shutil.rmtree(standby.root, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = _set_up(MotoServer().start)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    moto_server.reset()
    return moto_server


@pytest.fixture
def scenario(pg: PgCluster, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scenario]:
    sc = Scenario(pg, moto, monkeypatch)
    try:
        yield sc
    finally:
        sc.close()


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata DB (SQLite in the session's AIRFLOW_HOME), which dag.test() needs."""
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())


@pytest.fixture
def dag_harness(scenario: Scenario, tmp_path: Path, airflow_db: None) -> DagHarness:
    return DagHarness(scenario, tmp_path)


@pytest.fixture
def task_log(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """What the tasks of a ``dag.test()`` run have logged so far: to the test's output, or to its
    log records once Airflow has set up its logging in this worker process."""

    def read() -> str:
        out = capfd.readouterr()
        return out.out + out.err + caplog.text

    return read


@pytest.fixture(scope="session", autouse=True)
def _cleanup_airflow_home() -> Iterator[None]:
    yield
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)
