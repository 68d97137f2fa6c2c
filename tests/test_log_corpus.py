"""The connection-log corpus (tests/data/log_cases.json): each case counted correctly or ignored."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack import shipper
from inactive_users.core.logparse import LoginAggregator
from tests.scenario import Scenario

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "log_cases.json").read_text("utf-8")
)["cases"]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 50 and len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    agg = LoginAggregator(settle=timedelta(seconds=60))
    for line in case["lines"]:
        agg.feed(line)
    summary = agg.finish()
    assert {u: t.isoformat() for u, t in summary.last_login.items()} == case["logins"]
    assert dict(summary.rejected) == case["rejected"]
    assert dict(summary.failed_auth) == case["failed_auth"]


def test_the_whole_corpus_through_cloudwatch_and_the_engine(scenario: Scenario) -> None:
    """Every case shipped as one stream: only the expected roles are credited, nothing crashes."""
    sc = scenario
    expected = {u for c in CASES for u in c["logins"]}
    mentioned = expected | {"victim", "mallory", "bob", "eve", "ghost", "locked", "capped", "noperm", "typo"}
    real = sorted(n for n in mentioned if n != "rdsadmin")
    for name in real:
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name in real:
        sc.set_last_login(name, 30)
    now = datetime.fromisoformat(str(sc.sql("SELECT now()::text")[0][0]).replace(" ", "T", 1))
    lines: list[str] = []
    for i, case in enumerate(CASES):  # each case a minute apart, starting an hour ago
        stamp = (now - timedelta(hours=1) + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S")
        for line in case["lines"]:
            lines.append(
                re.sub(r"^2026-11-20 \d\d:\d\d:\d\d(\.\d+)? (UTC|GMT|EST|\+02)", stamp + " UTC", line)
            )
    events = shipper.events_from_lines(lines)
    shipper.ship(sc.logs, sc.cluster_id, sc.writer, events)
    result = eng.ingest([sc.writer])
    month_ago = sc.sql("SELECT now() - interval '29 days'")[0][0]
    credited = {n for n, st in sc.statuses().items() if st["last_login"] > month_ago}
    assert credited == expected - {"rdsadmin"}  # rdsadmin is never tracked
    assert "victim" not in credited and "mallory" not in credited
    assert result.rejected == {
        "locked": 1, "capped": 1, "noperm": 1, "typo": 1, "u1": 1, "u2": 1, "u3": 1, "u4": 1,
    }  # fmt: skip
