"""The package as a registry and a user see it: what make dist builds, the pins of each supported
Airflow minor, and the error an unsupported Airflow gets (the Dockerfile: tests/test_compose.py).

The wheel is built once per session the way ``make dist`` builds it (``uv build``: the sdist, then
the wheel from the sdist, so a file missing from the sdist is missing from the wheel too).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import inactive_users
from inactive_users.face import compat
from inactive_users.face.provider_info import get_provider_info
from tests.distbuild import ROOT, build_dist
from tests.pins import pins

README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE_DAG = ROOT / "plugins" / "inactive_users" / "example_dags" / "inactive_users_dags.py"


@pytest.fixture(scope="module")
def dist() -> dict[str, Path]:
    return build_dist()


def metadata(wheel: Path) -> tuple[dict[str, list[str]], str]:
    with zipfile.ZipFile(wheel) as z:
        [name] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(z.read(name).decode())
    fields: dict[str, list[str]] = {}
    for key, value in message.items():
        fields.setdefault(key, []).append(value)
    return fields, str(message.get_payload())


def test_the_wheel_carries_the_package_its_data_and_the_example_dag(dist: dict[str, Path]) -> None:
    wheel = dist["wheel"]
    assert wheel.name == f"inactive_users-{inactive_users.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    source = {
        str(p.relative_to(ROOT / "plugins"))
        for p in (ROOT / "plugins" / "inactive_users").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert source <= names, f"missing from the wheel: {sorted(source - names)}"
    for needed in (
        "inactive_users/py.typed",
        "inactive_users/face/page/templates/cluster.html",
        "inactive_users/example_dags/inactive_users_dags.py",
    ):
        assert needed in names
    assert not [n for n in names if n.startswith(("tests/", "devstack/", "dags/", "bench/"))]
    with zipfile.ZipFile(wheel) as z:
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(entry_points).decode()
    assert "inactive_users = inactive_users.face.plugin:InactiveUsersPlugin" in text
    assert "provider_info = inactive_users.face.provider_info:get_provider_info" in text


def test_the_sdist_has_what_the_wheel_is_built_from(dist: dict[str, Path]) -> None:
    sdist = dist["sdist"]
    assert sdist.name == f"inactive_users-{inactive_users.__version__}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "plugins/inactive_users/py.typed",
    ):
        assert needed in names, needed


def test_the_metadata_a_registry_shows(dist: dict[str, Path]) -> None:
    fields, description = metadata(dist["wheel"])
    assert fields["Name"] == ["inactive-users"] and fields["Version"] == [inactive_users.__version__]
    assert fields["Requires-Python"] == [">=3.11"]
    assert fields["Description-Content-Type"] == ["text/markdown"]
    assert description.strip() == README.strip()  # the README is the long description
    assert fields["License-Expression"] == ["Apache-2.0"]
    requires = fields["Requires-Dist"]
    assert "apache-airflow<4,>=3.1" in requires, requires  # 3.1 to 3.3 tested, as the issue asks
    for provider in ("amazon", "postgres", "standard"):
        assert any(r.startswith(f"apache-airflow-providers-{provider}>=") for r in requires), provider
    classifiers = fields["Classifier"]
    for classifier in (
        "Framework :: Apache Airflow",
        "Framework :: Apache Airflow :: Provider",
        "Programming Language :: Python :: 3.11",
        "Typing :: Typed",
    ):
        assert classifier in classifiers
    assert "Project-URL" not in fields  # none is invented: the project has no public address yet


def test_the_version_is_in_one_place_and_the_changelog_names_it() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "\nversion =" not in pyproject.split("[tool.")[0]
    assert 'version = { attr = "inactive_users.__version__" }' in pyproject
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {inactive_users.__version__} " in changelog
    assert get_provider_info()["versions"][0] == inactive_users.__version__


def test_the_provider_info_is_what_airflow_validates() -> None:
    import json

    import airflow
    import jsonschema

    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    info = get_provider_info()
    jsonschema.validate(info, json.loads(schema_path.read_text()))
    assert info["package-name"] == "inactive-users"
    [plugin] = info["plugins"]
    assert plugin["plugin-class"] == "inactive_users.face.plugin.InactiveUsersPlugin"


def test_the_repository_dag_file_is_the_packaged_example_and_the_readme_shows_it() -> None:
    assert (ROOT / "dags" / "inactive_users_dags.py").read_text() == EXAMPLE_DAG.read_text()
    code = [line for line in EXAMPLE_DAG.read_text().split('"""')[-1].strip().splitlines()]
    install = README.split("## Install into your Airflow", 1)[1].split("\n## ", 1)[0]
    assert "```python\n" + "\n".join(code) + "\n```" in install
    assert README.index("## Install into your Airflow") < README.index("## Production set-up")


# -- the supported Airflow minors -------------------------------------------------------------


@pytest.mark.parametrize("minor", ["3.1", "3.2"])
def test_each_older_minor_pins_its_newest_release_and_our_versions_of_the_rest(minor: str) -> None:
    wanted = pins(ROOT / "requirements.txt") | pins(ROOT / "requirements-dev.txt")
    listed = pins(ROOT / "constraints" / f"airflow-{minor}.in")
    resolved = pins(ROOT / "constraints" / f"airflow-{minor}.txt")
    assert listed["apache-airflow"].startswith(minor + ".")
    assert resolved["apache-airflow"] == listed["apache-airflow"]
    for name, version in listed.items():
        assert resolved[name] == version, name
        if name != "apache-airflow" and name in wanted:
            assert version == wanted[name], f"{name}: {version} here, {wanted[name]} in requirements*.txt"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^COMPAT_MINORS := .*\b{re.escape(minor)}\b", makefile, flags=re.M)


def test_make_test_compat_collects_every_file_with_compat_tests() -> None:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    [listed] = re.findall(r"^COMPAT_TESTS := (.*)$", makefile, flags=re.M)
    marked = {
        f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py") if "pytest.mark.compat" in p.read_text()
    }
    assert set(listed.split()) == marked


def test_the_running_airflow_is_a_supported_one() -> None:
    assert compat.MINIMUM_AIRFLOW <= compat.AIRFLOW_VERSION.release[:2] < (3, 4)


@pytest.mark.compat
@pytest.mark.parametrize("version", ["3.0.6", "2.11.0"])
def test_an_older_airflow_gets_one_error_naming_the_minimum(version: str) -> None:
    with pytest.raises(compat.AirflowVersionError) as raised:
        compat.check_airflow_version(version)
    assert str(raised.value).startswith(
        f"inactive_users needs Apache Airflow 3.1 or newer; this is Airflow {version}."
    )
    for ok in ("3.1.0", "3.1.8", "3.2.2", "3.3.2"):
        compat.check_airflow_version(ok)


@pytest.mark.compat
def test_the_dag_file_of_an_older_airflow_fails_at_parse_with_that_error(tmp_path: Path) -> None:
    """The DAG file imported where ``airflow`` reports 3.0.6: the check runs before any other import.

    No Airflow 3.0 is installed here; a stand-in ``airflow`` package that has only a version
    (and would fail any other import) shows that the first thing the DAG file's import does is
    the version check.
    """
    fake = tmp_path / "fake" / "airflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "3.0.6"\n')
    dag_file = tmp_path / "inactive_users_dags.py"
    dag_file.write_text(EXAMPLE_DAG.read_text())
    done = subprocess.run(
        [sys.executable, str(dag_file)],
        env={"PYTHONPATH": f"{tmp_path / 'fake'}:{ROOT / 'plugins'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "inactive_users.face.compat.AirflowVersionError: inactive_users needs Apache Airflow 3.1 or "
        "newer; this is Airflow 3.0.6. Upgrade Airflow to 3.1, 3.2 or 3.3 (with its constraints file), "
        "or keep this deployment on a release of inactive_users that supports it."
    ), done.stderr


@pytest.mark.compat
def test_the_yaml_defaults_to_airflows_dag_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inactive_users.face.config_file import config_file

    monkeypatch.delenv("INACTIVE_USERS_CONFIG", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(tmp_path))
    assert config_file() == tmp_path / "inactive_users.yaml"
    monkeypatch.setenv("INACTIVE_USERS_CONFIG", str(tmp_path / "elsewhere.yaml"))
    assert config_file() == tmp_path / "elsewhere.yaml"
