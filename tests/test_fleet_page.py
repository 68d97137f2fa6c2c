"""The fleet page on a real api-server with real users: 200 configured clusters, 10 unreachable.

Three real PostgreSQL servers carry 190 clusters' state schemas (each its own ``state_schema``,
made by the real migrations and sync, logins seeded as history); ten entries point at ports that
refuse connections. The DAGs sit in two bundles of two teams, so the auth manager lets ``ateam``
read only half of them (multi-team mode, SimpleAuthManager, passwords). What the page shows is
checked against the state tables and ``pg_roles`` read here, and a real browser takes a picture.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from devstack.airflowenv import airflow_env
from devstack.liveairflow import LiveAirflow
from devstack.motoserver import MotoServer
from devstack.pgcluster import PgBinaries, PgCluster, cluster_from_template
from devstack.webhooksink import refused_port
from inactive_users.core.exposure import ACTED, NOTHING_TO_DO, REFUSED
from inactive_users.core.settings import EngineSettings
from inactive_users.engine import Engine
from inactive_users.face.page.fleet import DEADLINE_S
from tests.browser import logged_in, needs_browser, screenshot
from tests.conftest import PASSWORD

pytestmark = pytest.mark.single_pg_version("the page's subject is HTTP, threads and the auth manager")

USERS = {"dba": "dba-pw-Fl33t", "ateam": "ateam-pw-Qx12", "outsider": "outsider-pw-Zr55"}
SERVERS = 3
READABLE, DOWN = 190, 10
ROLES = ("ana", "ben", "cat", "dan", "eve")
FORMULA = '=HYPERLINK("http://evil.example")'
DAG_FILE = """# Airflow DAG file (Airflow's safe mode reads only files that say "airflow" and "dag")
from inactive_users.face.dag_factory import build_dags

globals().update(build_dags({path!r}))
"""


def cluster_ids() -> list[str]:
    return [f"fleet-{i:03d}" for i in range(READABLE)] + [f"down-{j:02d}" for j in range(DOWN)]


def team_of(cluster_id: str) -> str:
    return "a" if int(cluster_id.rsplit("-", 1)[1]) % 2 == 0 else "b"


def age(i: int, k: int) -> int:
    """Days since role ``k``'s last login in cluster ``i``'s state table (seeded)."""
    return (i * 13 + k * 47) % 260


def history_of(i: int) -> list[tuple[str, float, str | None]]:
    """Cluster i's runs as run_outcome records them: (outcome, days ago, reason)."""
    if i == 2:
        return [(ACTED, 9, None), (REFUSED, 8, FORMULA), (REFUSED, 5, "LogSourceError: gone")]
    if i % 3 == 0:
        return [(ACTED, 6, None)]
    if i % 3 == 1:
        return [(NOTHING_TO_DO, 2, None), (REFUSED, 1, "SafetyGuardError: safety guard")]
    return []


@dataclass
class Stage:
    servers: list[PgCluster]
    base_url: str
    tokens: dict[str, str]
    run_id: str  # a run of fleet-000, queued (no scheduler here)

    def get(self, path: str, user: str | None = "dba") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.get(self.base_url + path, headers=headers, trust_env=False, timeout=60)

    def server_of(self, i: int) -> PgCluster:
        return self.servers[i % SERVERS]


def _entry(cluster_id: str, conn_id: str, schema: str, i: int) -> dict[str, Any]:
    """Every kind of engine, from the config keys that say it."""
    entry: dict[str, Any] = {"postgres_conn_id": conn_id, "state_schema": schema}
    if i % 3 == 1:
        return entry | {"db_instance_id": cluster_id}
    if i % 3 == 2:
        return entry | {"cluster_id": cluster_id, "instances": [f"{cluster_id}-1", f"{cluster_id}-2"]}
    return entry | {"cluster_id": cluster_id}


def _seed(server: PgCluster, i: int) -> None:
    """Cluster i's state schema as real runs leave it: migrated, synced, with a seeded history."""
    schema = f"fleet_{i:03d}"
    eng = Engine(lambda: server.connect(), EngineSettings(state_schema=schema), run_id=f"seed-{i}")
    eng.migrate()
    eng.sync_roles()
    with server.connect() as conn:
        for k, name in enumerate(ROLES):
            conn.execute(
                sql.SQL("UPDATE {} SET last_login_time = now() - %s::interval WHERE user_name = %s").format(
                    sql.Identifier(schema, "user_login_status")
                ),
                [timedelta(days=age(i, k)), name],
            )
        if i % 5 == 1:  # a role the job locked in this cluster's table
            conn.execute(
                sql.SQL("UPDATE {} SET status = 'Locked' WHERE user_name = 'cat'").format(
                    sql.Identifier(schema, "user_login_status")
                )
            )
    for n, (outcome, days, reason) in enumerate(history_of(i)):
        run = f"run-{i}-{n}"
        Engine(lambda: server.connect(), EngineSettings(state_schema=schema), run_id=run).record_outcome(
            outcome, "plan", reason
        )
        with server.connect() as conn:
            conn.execute(
                sql.SQL("UPDATE {} SET recorded_at = now() - %s::interval WHERE run_id = %s").format(
                    sql.Identifier(schema, "run_outcome")
                ),
                [timedelta(days=days), run],
            )


@pytest.fixture(scope="module")
def stage(
    pg_binaries: PgBinaries,
    pg_template: Path,
    moto_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stage]:
    work = tmp_path_factory.mktemp("fleet-page")
    with ExitStack() as stack:
        servers = []
        for _ in range(SERVERS):
            server = cluster_from_template(pg_template, pg_binaries, PASSWORD)
            stack.callback(shutil.rmtree, server.root, ignore_errors=True)
            stack.callback(server.stop, "immediate")
            servers.append(server)
        for n, server in enumerate(servers):
            with server.connect() as conn:
                for name in ROLES:
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
                if n == 0:
                    conn.execute("ALTER ROLE dan NOLOGIN")  # locked for real on this server
        for i in range(READABLE):
            _seed(servers[i % SERVERS], i)
        ports = [stack.enter_context(refused_port()) for _ in range(DOWN)]

        entries = [
            _entry(f"fleet-{i:03d}", f"fleet_pg{i % SERVERS}", f"fleet_{i:03d}", i) for i in range(READABLE)
        ]
        entries += [_entry(f"down-{j:02d}", f"fleet_down{j}", "inactive_users", j) for j in range(DOWN)]
        defaults = {"lock_after_days": 90, "delete_after_days": 180, "schedule": None}
        everything = work / "fleet.yaml"
        everything.write_text(yaml.safe_dump({"defaults": defaults, "clusters": entries}))
        bundles = []
        for team in ("a", "b"):
            folder = work / f"bundle_{team}"
            folder.mkdir()
            mine = [e for e in entries if team_of(e.get("cluster_id") or e["db_instance_id"]) == team]
            config = work / f"fleet_{team}.yaml"
            config.write_text(yaml.safe_dump({"defaults": defaults, "clusters": mine}))
            (folder / f"fleet_{team}.py").write_text(DAG_FILE.format(path=str(config)))
            bundles.append(
                {
                    "name": f"fleet_{team}",
                    "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {"path": str(folder), "refresh_interval": 0},
                    "team_name": team,
                }
            )
        env = airflow_env(work, everything, "iu", servers[0], moto_server)
        passwords = work / "passwords.json"
        passwords.write_text(json.dumps(USERS))
        env.update(
            {
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "dba:op:a|b,ateam:viewer:a,outsider:viewer:other",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__CORE__MULTI_TEAM": "True",
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            }
        )
        for n, server in enumerate(servers):
            env[f"AIRFLOW_CONN_FLEET_PG{n}"] = json.dumps(server.airflow_conn())
        for j, port in enumerate(ports):
            down = {"conn_type": "postgres", "host": "127.0.0.1", "port": port, "login": "job_user"}
            env[f"AIRFLOW_CONN_FLEET_DOWN{j}"] = json.dumps(
                {**down, "password": "Down-s3cret-9", "schema": "db"}
            )
        setup = (["teams", "sync"], ["teams", "create", "other"], ["dags", "reserialize"])
        af = stack.enter_context(
            LiveAirflow(work, env, components=("api-server",), metadata_db="sqlite", setup=setup)
        )
        tokens = {user: af.user_token(user, password) for user, password in USERS.items()}
        trigger = httpx.post(
            f"{af.base_url}/api/v2/dags/inactive_users__fleet_000/dagRuns",
            json={"logical_date": None},
            headers={"Authorization": f"Bearer {tokens['dba']}"},
            trust_env=False,
            timeout=30,
        )
        assert trigger.status_code == 200, trigger.text
        yield Stage(servers, af.base_url, tokens, trigger.json()["dag_run_id"])


# -- what the state tables say, read here -------------------------------------------------------


def _expected(stage: Stage, i: int, as_of: datetime) -> dict[str, Any]:
    server, schema = stage.server_of(i), f"fleet_{i:03d}"
    with server.connect() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT u.user_name, u.status, u.last_login_time, r.rolcanlogin, r.rolconnlimit "
                "FROM {} u LEFT JOIN pg_roles r ON r.oid = u.role_oid"
            ).format(sql.Identifier(schema, "user_login_status"))
        ).fetchall()
    lock = [last + timedelta(days=90) for _, _, last, can, limit in rows if can and limit != 0]
    lock = [d for d in lock if d <= as_of]
    drop = [
        last + timedelta(days=180)
        for _, status, last, can, _ in rows
        if can is not None and status != "ReadyToDelete"
    ]
    drop = [d for d in drop if d <= as_of]
    return {
        "active": sum(1 for r in rows if r[1] == "Active"),
        "locked": sum(1 for r in rows if r[1] == "Locked"),
        "ready_to_delete": sum(1 for r in rows if r[1] == "ReadyToDelete"),
        "past_lock_can_log_in": len(lock),
        "past_lock_since": min(lock).isoformat() if lock else None,
        "past_drop_not_dropped": len(drop),
        "past_drop_since": min(drop).isoformat() if drop else None,
    }


# -- who sees what --------------------------------------------------------------------------------


def test_each_user_sees_exactly_the_clusters_they_may_read(stage: Stage) -> None:
    assert stage.get("/inactive-users/api/clusters", user=None).status_code == 401
    assert stage.get("/inactive-users/", user=None).status_code == 401
    every = {r["cluster_id"] for r in stage.get("/inactive-users/api/clusters").json()["clusters"]}
    assert every == set(cluster_ids())
    half = {r["cluster_id"] for r in stage.get("/inactive-users/api/clusters", "ateam").json()["clusters"]}
    assert half == {c for c in cluster_ids() if team_of(c) == "a"} and len(half) == 100
    assert stage.get("/inactive-users/api/clusters", "outsider").json() == {"clusters": []}
    # the same auth manager answer as each cluster's own page
    assert stage.get("/inactive-users/clusters/fleet-001", "ateam").status_code == 403
    assert stage.get("/inactive-users/clusters/fleet-000", "ateam").status_code == 200


def test_every_row_matches_its_state_table_and_the_unreachable_ones_say_so(stage: Stage) -> None:
    started = time.monotonic()
    r = stage.get("/inactive-users/api/clusters")
    elapsed = time.monotonic() - started
    print(f"\nfleet page: 200 clusters (10 unreachable) answered in {elapsed:.2f} s")
    assert r.status_code == 200 and elapsed < DEADLINE_S, elapsed
    rows = r.json()["clusters"]
    by_id = {row["cluster_id"]: row for row in rows}
    # worst exposure first: the unreadable, then the most roles exposed
    assert [row["cluster_id"] for row in rows[:DOWN]] == sorted(f"down-{j:02d}" for j in range(DOWN))
    exposed = [row["past_lock_can_log_in"] + row["past_drop_not_dropped"] for row in rows[DOWN:]]
    assert exposed == sorted(exposed, reverse=True) and exposed[0] > exposed[-1]
    for j in range(DOWN):
        down = by_id[f"down-{j:02d}"]
        assert down["unreachable"] == "the connection failed (OperationalError)"
        assert (
            down["active"] is None
            and down["links"]["cluster_page"] == f"/inactive-users/clusters/down-{j:02d}"
        )
        assert "Down-s3cret" not in json.dumps(down) and "127.0.0.1" not in json.dumps(down)
    for i in range(READABLE):
        row = by_id[f"fleet-{i:03d}"]
        want = _expected(stage, i, datetime.fromisoformat(row["as_of"]))
        got = {k: row[k] for k in want}
        assert got == want, (i, got, want)
        assert row["unreachable"] is None
    kinds = [by_id[f"fleet-00{i}"]["kind"] for i in range(3)]
    assert kinds == ["Aurora or Multi-AZ DB cluster", "RDS instance", "self-managed"]
    # runs: Airflow's latest run, and the state schema's record of what the runs did
    first = by_id["fleet-000"]
    assert (first["last_run_id"], first["last_run_state"]) == (stage.run_id, "queued")
    assert first["links"]["last_run"].startswith("/dags/inactive_users__fleet_000/runs/manual__")
    assert first["days_since_acted"] == pytest.approx(6, abs=0.1) and first["runs_not_acted"] == 0
    refused = by_id["fleet-001"]
    assert refused["days_since_acted"] == pytest.approx(2, abs=0.1) and refused["runs_not_acted"] == 1
    assert refused["last_refusal"] == "SafetyGuardError: safety guard"
    twice = by_id["fleet-002"]
    assert (twice["runs_not_acted"], twice["last_refusal"]) == (2, "LogSourceError: gone")
    # no run has acted for 9 days, past max_unprotected_days (3): as its alerts say, the row says
    assert [by_id[f"fleet-00{i}"]["escalated"] for i in range(3)] == [False, False, True]
    assert by_id["fleet-003"]["runs_not_acted"] == 0 and by_id["fleet-003"]["days_since_acted"] is not None
    assert by_id["fleet-004"]["last_run_id"] is None and by_id["fleet-004"]["awaiting_approval"] == 0


def test_a_cluster_that_does_not_answer_in_time_is_a_row_that_says_so(stage: Stage) -> None:
    """A lock on one state table holds its read: the page answers at its statement timeout."""
    server = stage.server_of(7)
    with psycopg.connect(server.dsn()) as holder:
        holder.execute("LOCK TABLE fleet_007.user_login_status IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        rows = {r["cluster_id"]: r for r in stage.get("/inactive-users/api/clusters").json()["clusters"]}
        elapsed = time.monotonic() - started
        holder.rollback()
    print(f"\nfleet page with one locked state table: {elapsed:.2f} s")
    assert rows["fleet-007"]["unreachable"] == "it did not answer within 5 s"
    assert elapsed < DEADLINE_S and rows["fleet-008"]["unreachable"] is None


def test_the_csv_is_the_json_and_opens_without_formulas(stage: Stage) -> None:
    r = stage.get("/inactive-users/clusters.csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="inactive_users_fleet_')
    rows = {row["cluster_id"]: row for row in csv.DictReader(io.StringIO(r.text))}
    assert set(rows) == set(cluster_ids())
    by_id = {row["cluster_id"]: row for row in stage.get("/inactive-users/api/clusters").json()["clusters"]}
    for cid, row in rows.items():
        for key in ("kind", "active", "past_lock_can_log_in", "past_drop_not_dropped", "runs_not_acted"):
            want = by_id[cid][key]
            assert row[key] == ("" if want is None else str(want)), (cid, key)
    # a refusal whose text a spreadsheet would run is text; no cell starts a formula
    with stage.server_of(2).connect() as conn:
        conn.execute("UPDATE fleet_002.run_outcome SET recorded_at = now() WHERE reason = %s", [FORMULA])
    try:
        text = stage.get("/inactive-users/clusters.csv").text
        cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
        assert "'" + FORMULA in cells and FORMULA not in cells
        assert not [
            c
            for c in cells
            if c[:1] in ("=", "+", "@", "\t", "\r") or (c[:1] == "-" and not c[1:2].isdigit())
        ]
    finally:
        with stage.server_of(2).connect() as conn:
            conn.execute(
                "UPDATE fleet_002.run_outcome SET recorded_at = now() - interval '8 days' WHERE reason = %s",
                [FORMULA],
            )


def test_the_html_page_and_its_link_in_the_navigation(stage: Stage) -> None:
    r = stage.get("/inactive-users/")
    html = r.text
    assert r.status_code == 200 and "script-src 'nonce-" in r.headers["content-security-policy"]
    assert html.count('<tr id="row-') == 200
    assert '<a href="/inactive-users/clusters/fleet-000">fleet-000</a>' in html
    assert (
        '<tr id="row-fleet-002" class="escalated"' in html
        and 'class="unreachable"' in html
        and "Cannot be read: the connection failed (OperationalError)" in html
    )
    assert f'<a href="/dags/inactive_users__fleet_000/runs/{quote(stage.run_id, safe="")}">queued</a>' in html
    plugins = httpx.get(
        stage.base_url + "/api/v2/plugins",
        headers={"Authorization": f"Bearer {stage.tokens['dba']}"},
        trust_env=False,
    ).json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "inactive_users")
    nav = [v for v in ours["external_views"] if v["destination"] == "nav"]
    assert [(v["name"], v["href"]) for v in nav] == [("Inactive users", "/inactive-users/")]


# -- a real browser -------------------------------------------------------------------------------


@needs_browser
def test_a_browser_sorts_and_filters_the_fleet_and_keeps_a_picture(stage: Stage) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    with logged_in(stage.base_url + "/inactive-users/", "dba", USERS["dba"], "1600,1000") as driver:
        table = WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "fleet")))

        def shown_ids() -> list[str]:
            return [
                row.find_elements(By.TAG_NAME, "td")[1].text.split()[0]
                for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
                if row.is_displayed()
            ]

        assert shown_ids()[0] == "down-00"  # the unreadable first
        header = table.find_element(By.CSS_SELECTOR, "th[data-key=past_lock]")
        header.click()
        header.click()  # descending: the most roles that can still log in first
        cells = [
            row.find_elements(By.TAG_NAME, "td")[7].get_attribute("data-v")
            for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
        ]
        numbers = [int(c) for c in cells if c]
        assert numbers == sorted(numbers, reverse=True) and cells[-DOWN:] == [""] * DOWN
        Select(driver.find_element(By.ID, "kind")).select_by_value("RDS instance")
        rds = sum(1 for c in cluster_ids() if int(c.rsplit("-", 1)[1]) % 3 == 1)
        assert (
            len(shown_ids()) == rds
            and driver.find_element(By.ID, "shown").text == f"{rds} of 200 clusters shown"
        )
        Select(driver.find_element(By.ID, "kind")).select_by_value("")
        table.find_element(By.CSS_SELECTOR, "th[data-key=rank]").click()  # worst first again
        driver.find_element(By.ID, "filter").send_keys("fleet-00")
        assert len(shown_ids()) == 10
        driver.find_element(By.ID, "filter").send_keys(Keys.CONTROL + "a", Keys.BACKSPACE)
        assert len(shown_ids()) == 200  # worst first: the unreadable, then the most exposed
        screenshot(driver, "fleet_page.png")
