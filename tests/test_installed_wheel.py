"""The built wheel in a fresh venv with stock Airflow, as a user installs it (README: Install into
your Airflow), on the Airflow minor of the venv running the test: make test-compat runs it on
3.1 and 3.2 (their venvs) and on 3.3 (the project's venv); make test leaves it out for time.

Nothing of the checkout is on the fresh venv's path: it gets the wheel and Airflow with its
providers from the minor's constraints, and every command runs from a temporary folder without
PYTHONPATH. There Airflow lists the provider and the plugin, parses a DAG file copied from the
packaged example with the YAML beside it; then the fresh venv's api-server, scheduler and
dag-processor list the DAG, run it end to end against a real PostgreSQL and the moto server, and
serve the plugin's page with what the run did (who may see it: tests/test_status_page.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

import inactive_users
from devstack.liveairflow import LiveAirflow
from devstack.stories import seed_last_login
from inactive_users.face.compat import AIRFLOW_VERSION
from tests.dagrun import DagHarness
from tests.distbuild import ROOT, build_dist, uv
from tests.scenario import Scenario

pytestmark = [
    pytest.mark.compat,
    pytest.mark.installed_wheel,
    pytest.mark.single_pg_version("the subject is the installed package, not PostgreSQL"),
]

MINOR = f"{AIRFLOW_VERSION.major}.{AIRFLOW_VERSION.minor}"
DAG_ID = "inactive_users__test_aurora"


def constraints_of_this_minor() -> Path:
    """constraints/airflow-<minor>.txt for an older minor, constraints.txt for the pinned newest."""
    older = ROOT / "constraints" / f"airflow-{MINOR}.txt"
    path = older if older.exists() else ROOT / "constraints.txt"
    assert f"\napache-airflow=={AIRFLOW_VERSION}\n" in path.read_text(), (
        f"{path.name} does not pin apache-airflow=={AIRFLOW_VERSION}, the Airflow running this test"
    )
    return path


class FreshAirflow:
    """A venv with only the wheel, Airflow and its providers; commands run outside the checkout."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.venv = work / "venv"
        self.home = work / "airflow-home"
        self.dags = work / "dags"
        self.dags.mkdir(parents=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "PYTHON", "INACTIVE_USERS", "AWS_", "VIRTUAL_ENV", "_AIRFLOW"))
        }
        self.env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__API_AUTH__JWT_SECRET": "iu-fresh-venv-jwt-secret-0123456789",
                "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            }
        )

    def install(self, wheel: Path, constraints: Path) -> None:
        self.run_tool([uv(), "venv", "--python", sys._base_executable, str(self.venv)])  # type: ignore[attr-defined]
        self.run_tool(
            [
                uv(),
                "pip",
                "install",
                "--python",
                str(self.venv / "bin" / "python"),
                str(wheel),
                f"apache-airflow=={AIRFLOW_VERSION}",
                "-c",
                str(constraints),
            ]
        )

    def run_tool(self, args: Sequence[str], env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            args,
            cwd=self.work,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
        assert done.returncode == 0, (
            f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def airflow(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
        done = subprocess.run(
            [str(self.venv / "bin" / "airflow"), *args],
            cwd=self.work,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        tail = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        assert done.returncode == 0, f"airflow {' '.join(args)} exited {done.returncode}:\n{tail}"
        return done.stdout

    def python(self, code: str) -> str:
        return self.run_tool([str(self.venv / "bin" / "python"), "-c", code]).strip()


def json_of(output: str) -> Any:
    """The JSON document that ends a CLI's output (Airflow may log lines, even ``[warning ...``, first)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("[", "{")):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise AssertionError(f"no JSON document in:\n{output[-3000:]}")


def stage(sc: Scenario, h: DagHarness) -> None:
    """Roles due to be locked, dropped and flagged; an active one whose logins are shipped."""
    for name in ("gone200", "owner200", "idle100", "app"):
        sc.create_role(name)
    sc.sql("CREATE TABLE ledger (id int)")
    sc.sql("ALTER TABLE ledger OWNER TO owner200")
    sc.engine().migrate()
    for name, days in {"gone200": 200, "owner200": 200, "idle100": 100}.items():
        seed_last_login(sc.admin, name, days)
    for instance in (sc.writer, sc.reader):
        assert sc.login("app")
        sc.ship(instance)


def test_the_wheel_installs_lists_parses_and_runs_without_the_checkout(
    scenario: Scenario, tmp_path: Path
) -> None:
    sc = scenario
    wheel = build_dist()["wheel"]
    fresh = FreshAirflow(tmp_path)
    fresh.install(wheel, constraints_of_this_minor())

    # the package is the installed one, not the checkout
    where = fresh.python("import inactive_users; print(inactive_users.__file__)")
    assert where.startswith(str(fresh.venv)) and not where.startswith(str(ROOT)), where
    assert fresh.python("import airflow; print(airflow.__version__)") == str(AIRFLOW_VERSION)

    providers = json_of(fresh.airflow("providers", "list", "--output", "json"))
    ours = [p for p in providers if p["package_name"] == "inactive-users"]
    assert ours and ours[0]["version"] == inactive_users.__version__, providers
    plugins = json_of(fresh.airflow("plugins", "--output", "json"))
    [plugin] = [p for p in plugins if p["name"] == "inactive_users"]
    assert "inactive_users.face.plugin" in json.dumps(plugin), plugin

    # a user's DAG folder: the packaged example DAG file, and the YAML beside it
    example = fresh.python(
        "import importlib.resources as r; "
        "print(r.files('inactive_users.example_dags') / 'inactive_users_dags.py')"
    )
    (fresh.dags / "inactive_users_dags.py").write_text(Path(example).read_text())
    h = DagHarness(sc, tmp_path)
    (fresh.dags / "inactive_users.yaml").write_text(h.config_path.read_text())
    stage(sc, h)
    conns = {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW_CONN_IU_")}
    assert set(conns) == {"AIRFLOW_CONN_IU_PG", "AIRFLOW_CONN_IU_AWS"}

    # the user's Airflow: api-server, scheduler and dag-processor of the fresh venv (LocalExecutor)
    airflow = fresh.venv / "bin" / "airflow"
    components = ("api-server", "scheduler", "dag-processor")
    with LiveAirflow(tmp_path / "live", {**fresh.env, **conns}, airflow=airflow, components=components) as af:
        af.wait_for_dag(DAG_ID)  # the dag-processor parsed the copied DAG file: the DAG is listed
        assert af.api("GET", "importErrors").json()["total_entries"] == 0
        ours = [p for p in af.api("GET", "plugins").json()["plugins"] if p["name"] == "inactive_users"]
        assert ours and ours[0]["external_views"], ours  # the plugin, from the wheel
        page = f"{af.base_url}/inactive-users/api/clusters/{sc.cluster_id}/roles"
        run_id = af.trigger(DAG_ID)
        state = af.wait_for_run(DAG_ID, run_id, timeout=300)
        assert state == "success", af.task_states(DAG_ID, run_id)
        auth = {"Authorization": f"Bearer {af.token()}"}
        roles = httpx.get(page, headers=auth, trust_env=False, timeout=30)
        assert roles.status_code == 200 and roles.json()["counts"]["Locked"] == 1, roles.text
    st = sc.statuses()
    assert st["idle100"]["status"] == "Locked" and sc.role("idle100")["can_login"] is False  # type: ignore[index]
    assert sc.role("gone200") is None and "gone200" not in st
    assert st["owner200"]["status"] == "ReadyToDelete"
    assert st["app"]["status"] == "Active" and sc.role("app")["can_login"] is True  # type: ignore[index]
    [alert] = h.messages()
    assert "Dropped (DROP ROLE): 1" in alert["message"] and "idle100" in alert["message"]
