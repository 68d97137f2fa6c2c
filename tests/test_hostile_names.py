"""A corpus of hostile role names, each synced, recognised on a real login, locked, unlocked and dropped."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scenario import Scenario

NAMES: list[str] = json.loads((Path(__file__).parent / "data" / "role_names.json").read_text("utf-8"))[
    "names"
]


def test_corpus_is_large_enough() -> None:
    assert len(NAMES) >= 50 and len(set(NAMES)) == len(NAMES)
    assert max(len(n.encode()) for n in NAMES) == 63


def test_every_hostile_name_goes_through_the_whole_cycle(scenario: Scenario) -> None:
    sc = scenario
    for name in NAMES:
        sc.create_role(name)
    sc.create_role("bystander")
    eng = sc.engine()
    eng.migrate()
    assert sorted(eng.sync_roles().added) == sorted([*NAMES, "bystander"])
    for name in [*NAMES, "bystander"]:
        sc.set_last_login(name, 50)

    # every name logs in for real and is recognised from its own log line, and nobody else is credited
    for name in NAMES:
        assert sc.login(name), name
    sc.ship()
    result = eng.ingest([sc.writer])
    assert result.rows_advanced == len(NAMES)
    statuses = sc.statuses()
    assert statuses["bystander"]["last_login"] < sc.sql("SELECT now() - interval '49 days'")[0][0]

    # lock them all
    for name in NAMES:
        sc.set_last_login(name, 100)
    report = eng.lock(eng.plan())
    assert sorted(report.names("locked")) == sorted(NAMES) and report.failures == []
    for name in NAMES:
        assert sc.role(name)["can_login"] is False, name  # type: ignore[index]
        assert not sc.login(name), name
    assert sc.role("bystander")["can_login"] is True  # type: ignore[index]

    # their retries while locked are not activity
    sc.ship()
    eng.ingest([sc.writer])
    assert all(sc.statuses()[n]["status"] == "Locked" for n in NAMES)
    assert eng.plan().lock == []

    unlocked = eng.unlock(NAMES)
    assert sorted(unlocked.names("unlocked")) == sorted(NAMES)
    for name in NAMES:
        assert sc.login(name), name

    for name in NAMES:
        sc.set_last_login(name, 200)
    dropped = eng.delete(eng.plan())
    assert sorted(dropped.names("dropped")) == sorted(NAMES) and dropped.failures == []
    assert all(sc.role(n) is None for n in NAMES)
    assert sc.role("bystander") is not None and list(sc.statuses()) == ["bystander"]
    history = {(a, u) for a, u, _ in sc.history()}
    for name in NAMES:
        assert {("sync_add", name), ("lock", name), ("unlock", name), ("drop", name)} <= history
