"""The status page on a real api-server: who may see it, what it shows, and a real browser.

One api-server serves the module (starting it is the slow part): SimpleAuthManager with real
users and passwords, multi-team mode so a user can be denied one DAG (our DAGs are in the bundle
of team ``dba``; ``outsider`` is a viewer of team ``other``: Airflow's auth manager lets them read
DAGs, but not these), the DAGs serialized by ``airflow dags reserialize`` so the auth manager
knows each DAG's team. The state is made by the real engine on a real PostgreSQL.

Airflow 3.1 has no multi-team mode: there both users read every DAG, and the tests of a denied
user skip saying so (make test-compat runs the ones marked ``compat`` on 3.1 and 3.2).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from devstack.airflowenv import ROOT, airflow_env
from devstack.liveairflow import LiveAirflow
from devstack.motoserver import MotoServer
from devstack.pgcluster import PgBinaries, free_port
from inactive_users.face.compat import AIRFLOW_V_3_3_PLUS, MULTI_TEAM
from tests.browser import logged_in, needs_browser, screenshot
from tests.livestage import fresh_scenario
from tests.scenario import Scenario

pytestmark = pytest.mark.single_pg_version("the page's subject is HTTP and the auth manager, not PostgreSQL")

USERS = {"dba": "dba-pw-Xq81", "outsider": "outsider-pw-Zr55"}
DOWN_PASSWORD = "Down-s3cret-pw-9912"
WEIRD = 'We"ird Name 👀'
FORMULA = '=HYPERLINK("http://evil.example")'
AGES = {"alice": 3, "erin": 80, "bob": 100, "carol": 200, "dave": 200, WEIRD: 30, FORMULA: 10}


@dataclass
class Stage:
    sc: Scenario
    base_url: str
    tokens: dict[str, str]

    def get(self, path: str, user: str | None = "dba", **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.get(self.base_url + path, headers=headers, trust_env=False, timeout=30, **kw)  # type: ignore[arg-type]

    def tracked(self) -> dict[str, dict[str, object]]:
        return self.sc.statuses()


def _seed(sc: Scenario) -> None:
    """Roles with histories, then one real engine run: locks, a drop, a ReadyToDelete."""
    for name in AGES:
        sc.create_role(name)
    sc.create_role("root_admin", "LOGIN SUPERUSER")
    sc.sql("CREATE TABLE public.carol_table (id int)")
    sc.sql("ALTER TABLE public.carol_table OWNER TO carol")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name, days in AGES.items():
        sc.set_last_login(name, days)
    sc.ship()
    eng.run([sc.writer])
    st = sc.statuses()
    assert st["bob"]["status"] == "Locked" and st["carol"]["status"] == "ReadyToDelete"
    assert "dave" not in st


def _config(path: Path, sc: Scenario, down_port: int) -> Path:
    common = {"aws_conn_id": "iu_aws", "region_name": "us-east-1", "instances": [sc.writer]}
    path.write_text(
        json.dumps(
            {
                "defaults": {"lock_after_days": 90, "delete_after_days": 180, "schedule": None},
                "clusters": [
                    {"cluster_id": sc.cluster_id, "postgres_conn_id": "iu_pg", **common},
                    {"cluster_id": "down-cluster", "postgres_conn_id": "iu_down", **common},
                ],
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def stage(
    pg_binaries: PgBinaries,
    pg_template: Path,
    moto_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stage]:
    work = tmp_path_factory.mktemp("status-page")
    with fresh_scenario(pg_template, pg_binaries, moto_server) as sc:
        _seed(sc)
        down_port = free_port()  # nothing listens there: the cluster that cannot be reached
        env = airflow_env(work, _config(work / "clusters.yaml", sc, down_port), "iu", sc.pg, moto_server)
        passwords = work / "passwords.json"
        passwords.write_text(json.dumps(USERS))
        env.update(
            {
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "dba:viewer,outsider:viewer",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW_CONN_IU_DOWN": json.dumps(
                    {
                        "conn_type": "postgres",
                        "host": "127.0.0.1",
                        "port": down_port,
                        "login": "job_user",
                        "password": DOWN_PASSWORD,
                        "schema": "postgres",
                    }
                ),
            }
        )
        setup: list[list[str]] = []
        if MULTI_TEAM:
            bundle = {
                "name": "inactive_users",
                "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(ROOT / "dags"), "refresh_interval": 0},
                "team_name": "dba",
            }
            env.update(
                {
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "dba:viewer:dba,outsider:viewer:other",
                    "AIRFLOW__CORE__MULTI_TEAM": "True",
                    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([bundle]),
                }
            )
            setup += [
                ["teams", "create", "dba"],  # the bundle's team
                ["teams", "create", "other"],  # the outsider's team: no DAGs
            ]
        setup.append(["dags", "reserialize"])  # the DAGs, for the auth manager; no dag-processor
        with LiveAirflow(work, env, components=("api-server",), metadata_db="sqlite", setup=setup) as af:
            tokens = {user: af.user_token(user, password) for user, password in USERS.items()}
            yield Stage(sc, af.base_url, tokens)


# -- who may see it -----------------------------------------------------------------------------

PAGES = (
    "/inactive-users/api/clusters/test-aurora/roles",
    "/inactive-users/clusters/test-aurora/roles.csv",
    "/inactive-users/clusters/test-aurora",
)


NO_TEAMS = "Airflow 3.1 has no multi-team mode (since 3.2): no viewer can be denied one DAG"


@pytest.mark.compat
def test_every_endpoint_answers_401_200_404_as_airflow_decides(stage: Stage) -> None:
    for path in PAGES:
        assert stage.get(path, user=None).status_code == 401, path
        assert stage.get(path).status_code == 200, path
        missing = path.replace("test-aurora", "no-such-cluster")
        r = stage.get(missing)
        assert r.status_code == 404 and "no-such-cluster" in r.text, missing
    # the UI's cookie is the same JWT: what a browser (and the DAG tab's frame) sends
    r = httpx.get(
        stage.base_url + PAGES[2], cookies={"_token": stage.tokens["dba"]}, trust_env=False, timeout=30
    )
    assert r.status_code == 200 and '<table id="roles"' in r.text
    # a logged-out browser gets a way to log in, not a blank page
    r = stage.get(PAGES[2], user=None)
    assert '<a href="/auth/login' in r.text and r.headers["content-type"].startswith("text/html")
    if AIRFLOW_V_3_3_PLUS:  # the simple auth manager's login link carries the way back since 3.3
        assert "/auth/login?next=" in r.text
    # the JSON answer says what was wrong
    assert stage.get(PAGES[0], user=None).json() == {"detail": "Not authenticated"}


@pytest.mark.compat
@pytest.mark.skipif(not MULTI_TEAM, reason=NO_TEAMS)
def test_a_viewer_of_another_team_gets_403(stage: Stage) -> None:
    for path in PAGES:
        assert stage.get(path, user="outsider").status_code == 403, path  # a viewer, not of this DAG's team
    assert stage.get("/inactive-users/dags/inactive_users__test_aurora", user="outsider").status_code == 403


@pytest.mark.compat
def test_the_dag_tab_leads_to_its_cluster_and_explains_other_dags(stage: Stage) -> None:
    r = stage.get("/inactive-users/dags/inactive_users__test_aurora", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/inactive-users/clusters/test-aurora"
    r = stage.get("/inactive-users/dags/some_other_dag")
    assert r.status_code == 404 and "not an inactive_users DAG" in r.text
    plugins = httpx.get(
        stage.base_url + "/api/v2/plugins",
        headers={"Authorization": f"Bearer {stage.tokens['dba']}"},
        trust_env=False,
    ).json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "inactive_users")
    views = [(v["destination"], v["href"], v["url_route"]) for v in ours["external_views"]]
    assert views == [
        ("nav", "/inactive-users/", "inactive-users-fleet"),
        ("dag", "/inactive-users/dags/{DAG_ID}", "inactive-users"),
    ]


def test_a_cluster_that_cannot_be_reached_says_so_with_no_connection_detail(stage: Stage) -> None:
    for path in (p.replace("test-aurora", "down-cluster") for p in PAGES):
        r = stage.get(path)
        assert r.status_code == 503, path
        assert "Cluster down-cluster cannot be reached" in r.text, r.text
        for secret in (DOWN_PASSWORD, "job_user", "127.0.0.1", "iu_down", "postgresql://", "port"):
            assert secret not in r.text, (path, secret)
        assert stage.get(path, user="outsider").status_code == 403  # access is checked first


# -- what it shows ------------------------------------------------------------------------------


def _expected(stage: Stage, as_of: datetime) -> dict[str, dict[str, object]]:
    """Each tracked role as the state table has it, with the days the page must show."""
    history = {
        r[0]: r[1:]
        for r in stage.sc.sql(
            "SELECT DISTINCT ON (user_name) user_name, action, at FROM inactive_users.action_history "
            "ORDER BY user_name, at DESC, id DESC"
        )
    }
    out = {}
    for name, row in stage.tracked().items():
        last = row["last_login"]
        assert isinstance(last, datetime)
        locked = row["status"] != "Active"
        lock_at, drop_at = last + timedelta(days=90), last + timedelta(days=180)
        out[name] = {
            "status": row["status"],
            "last_login": last,
            "days_inactive": (as_of - last).days,
            "days_until_lock": None if locked else max(0, -((as_of - lock_at) // timedelta(days=1))),
            "days_until_drop": max(0, -((as_of - drop_at) // timedelta(days=1))),
            "last_action": history[name][0],
        }
    return out


def test_the_json_lists_every_tracked_role_as_the_state_table_has_it(stage: Stage) -> None:
    body = stage.get(PAGES[0]).json()
    as_of = datetime.fromisoformat(body["as_of"])
    roles = {r["name"]: r for r in body["roles"]}
    expected = _expected(stage, as_of)
    tracked = {n: r for n, r in roles.items() if r["status"] != "Excluded"}
    assert set(tracked) == set(expected) == {"alice", "erin", "bob", "carol", WEIRD, FORMULA}
    for name, want in expected.items():
        got = roles[name]
        assert datetime.fromisoformat(got["last_login"]) == want["last_login"], name
        for key in ("status", "days_inactive", "days_until_lock", "days_until_drop", "last_action"):
            assert got[key] == want[key], (name, key, got[key], want[key])
    assert (roles["erin"]["days_until_lock"], roles["erin"]["days_until_drop"]) == (10, 100)
    assert roles["bob"]["last_action"] == "lock" and roles["bob"]["days_until_lock"] is None
    blockers = stage.sc.sql(
        "SELECT detail->>'blockers' FROM inactive_users.action_history "
        "WHERE user_name = 'carol' AND action = 'ready_to_delete'"
    )[0][0]
    assert roles["carol"]["blockers"] == blockers and "database postgres" in blockers
    assert roles["alice"]["blockers"] is None
    # login roles the policy never manages are listed with the reason, for the auditor
    assert roles["root_admin"]["status"] == "Excluded" and roles["root_admin"]["reason"] == "superuser"
    assert roles["postgres"]["reason"] == "master or job user"
    assert body["counts"] == {"Active": 4, "Locked": 1, "ReadyToDelete": 1, "Excluded": 2}


def test_the_csv_is_the_same_data_and_safe_in_a_spreadsheet(stage: Stage) -> None:
    r = stage.get(PAGES[1])
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="inactive_users_test-aurora_')
    rows = list(csv.DictReader(io.StringIO(r.text)))
    by_name = {row["name"]: row for row in rows}
    as_json = {x["name"]: x for x in stage.get(PAGES[0]).json()["roles"]}
    assert len(rows) == len(as_json)
    # a name a spreadsheet would run as a formula is shown as text
    assert "'" + FORMULA in by_name and FORMULA not in by_name
    for name, want in as_json.items():
        got = by_name["'" + name if name.startswith("=") else name]
        for key in (
            "status",
            "days_inactive",
            "days_until_lock",
            "days_until_drop",
            "blockers",
            "last_action",
        ):
            assert got[key] == ("" if want[key] is None else str(want[key])), (name, key)
    assert WEIRD in by_name


def test_the_html_page_shows_counts_chart_table_and_history(stage: Stage) -> None:
    r = stage.get(PAGES[2])
    html = r.text
    assert "script-src 'nonce-" in r.headers["content-security-policy"]
    assert '<span class="count" data-status="Locked"><b>1</b>Locked</span>' in html
    assert '<line class="lock"' in html and '<line class="drop"' in html and "lock 90 d" in html
    assert html.count('<tr data-status="') == len(stage.get(PAGES[0]).json()["roles"])
    assert "We&#34;ird Name 👀" in html and WEIRD not in html  # escaped, never markup
    assert "<td>drop</td><td>dave</td>" in html  # the recent history shows the dropped role


# -- a real browser -----------------------------------------------------------------------------


@needs_browser
def test_a_browser_logs_in_through_the_ui_sorts_the_table_and_sees_the_state(stage: Stage) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    with logged_in(stage.base_url + PAGES[2], "dba", USERS["dba"]) as driver:
        table = WebDriverWait(driver, 20).until(ec.presence_of_element_located((By.ID, "roles")))

        header = table.find_element(By.CSS_SELECTOR, "th[data-key=days_inactive]")
        header.click()
        header.click()  # descending: the longest inactive first
        assert header.get_attribute("aria-sort") == "descending"
        shown = [
            (row.find_elements(By.TAG_NAME, "td")[0].text, row.find_elements(By.TAG_NAME, "td")[3].text)
            for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
        ]
        as_of = datetime.fromisoformat(stage.get(PAGES[0]).json()["as_of"])
        expected = _expected(stage, as_of)
        want = sorted(expected, key=lambda n: (-int(expected[n]["days_inactive"]), n))  # type: ignore[call-overload]
        # the tracked roles first, longest inactive first; the excluded ones (no days) last
        assert shown[: len(want)] == [(n, str(expected[n]["days_inactive"])) for n in want]
        assert all(d == "" for _, d in shown[len(want) :]) and len(shown) > len(want)

        status = Select(driver.find_element(By.ID, "status"))
        status.select_by_value("Locked")
        visible = [r.text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]
        assert len(visible) == 1 and visible[0].startswith("bob")
        status.select_by_value("")
        assert driver.find_element(By.ID, "shown").text == f"{len(shown)} of {len(shown)} roles shown"

        screenshot(driver, "status_page.png")
