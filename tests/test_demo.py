"""`make demo` runs the real DAG on embedded defaults: run it as a user would and read what it prints."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from inactive_users.core.evidence import read_csv

ROOT = Path(__file__).resolve().parents[1]


def test_demo_shows_every_outcome_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INACTIVE_USERS"))}
    env["INACTIVE_USERS_DEMO_DIR"] = str(tmp_path / "demo")
    for attempt in (1, 2):  # it works again when run a second time
        done = subprocess.run(
            [sys.executable, "-m", "devstack.demo"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        out = done.stdout
        assert done.returncode == 0, f"attempt {attempt}:\n{out}\n{done.stderr}"
        for n in range(1, 8):
            assert f"[{n}/7]" in out
        rows = {
            line.split()[0]: line
            for line in out.splitlines()
            if line.startswith(("ana_100", "carl_200", "bob_", "svc_", "erin_80"))
        }
        assert "Locked NOLOGIN" in rows["ana_100"]
        assert "dropped" in rows["carl_200"]
        assert "ReadyToDelete" in rows["bob_200_owner"]
        assert "untouched (excluded)" in rows["svc_etl"]
        assert (
            "Subject: [inactive_users] demo-aurora: 2 locked, 1 dropped, 1 ready to delete, 1 upcoming" in out
        )
        assert "Active" in rows["erin_80"]
        assert "| Upcoming (within 14 days): 1" in out and "|   - erin_80: will be locked on " in out
        assert "blocked by: database postgres: owns table sales.q3_report" in out
        assert "demo-only-Passw0rd" not in out and "demo-only-Passw0rd" not in done.stderr
        # the run's evidence, written to the moto bucket and copied where the demo says
        written = re.findall(r"^evidence written to (s3://\S+) ; a copy at (.+)$", out, flags=re.M)
        assert [Path(uri).suffix for uri, _ in written] == [".csv", ".json"], out
        for uri, copy in written:
            assert uri.startswith("s3://demo-audit-evidence/inactive-users/demo-aurora/")
            assert Path(copy).is_file() and Path(copy).name == uri.rsplit("/", 1)[1]
        (_, csv_copy), (_, manifest_copy) = written
        evidence = {r["user_name"]: r for r in read_csv(Path(csv_copy).read_bytes())}
        assert (evidence["ana_100"]["status"], evidence["ana_100"]["action"]) == ("Locked", "lock")
        assert evidence["carl_200"]["status"] == "Dropped"
        assert evidence["bob_200_owner"]["blockers"] == "database postgres: owns table sales.q3_report"
        assert json.loads(Path(manifest_copy).read_text())["csv"]["uri"] == written[0][0]
        assert "the CSV's SHA-256 matches the manifest" in out
    log = (tmp_path / "demo" / "dags-test.log").read_text()
    assert "demo-only-Passw0rd" not in log and "demo-role-Passw0rd" not in log
    ports = re.search(r"PostgreSQL \d+ on 127\.0\.0\.1:(\d+), moto on http://127\.0\.0\.1:(\d+)", out)
    assert ports is not None
    for port in ports.groups():  # the demo stopped its PostgreSQL and moto server
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", int(port)))
