"""Schema migrations and role sync against a real cluster."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from inactive_users.postgres import migrations, state
from tests.scenario import ROLE_PASSWORD, Scenario


def test_migrations_are_idempotent_private_and_history_is_append_only(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("job", "LOGIN CREATEROLE")
    sc.sql("GRANT CREATE ON DATABASE postgres TO job")
    sc.use_job_user("job", ROLE_PASSWORD)
    eng = sc.engine()
    every = [version for version, _, _ in migrations.MIGRATIONS]
    assert eng.pending_migrations() == every
    assert eng.migrate() == every
    assert eng.migrate() == []
    assert eng.pending_migrations() == []

    owner = sc.sql("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'inactive_users'")
    assert owner == [("job",)]
    assert sc.sql("SELECT has_schema_privilege('public', 'inactive_users', 'USAGE')") == [(False,)]
    tables = dict(sc.sql("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'inactive_users'"))
    assert {
        "action_history",
        "run_lease",
        "schema_version",
        "user_login_job_status",
        "user_login_status",
    } <= set(tables)
    assert set(tables.values()) == {"job"}
    # half of each status page is left free, so applying logins updates rows in place (HOT)
    options = sc.sql(
        "SELECT reloptions FROM pg_class WHERE oid = 'inactive_users.user_login_status'::regclass"
    )
    assert options == [(["fillfactor=50"],)]
    sc.create_role("other")
    with (
        psycopg.connect(sc.pg.dsn(user="other", password=ROLE_PASSWORD)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM inactive_users.user_login_status")

    sc.create_role("alice")
    eng.sync_roles()
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        sc.sql("UPDATE inactive_users.action_history SET reason = 'x'")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        sc.sql("DELETE FROM inactive_users.action_history")


def test_sync_tracks_login_roles_minus_every_kind_of_exclusion(scenario: Scenario) -> None:
    sc = scenario
    for name in ["alice", 'We"ird Name 👀', "svc_app", "tmp_1", "tmp_x", "mastr", "rds_helper", "rdsadmin"]:
        sc.create_role(name)
    sc.create_role("no_login", "NOLOGIN")
    sc.create_role("root2", "LOGIN SUPERUSER")
    # exempt group, with one direct and one inherited (nested) member
    sc.create_role("dba_team", "NOLOGIN")
    sc.create_role("dba_leads", "NOLOGIN")
    sc.create_role("ann")
    sc.create_role("ben")
    sc.sql("GRANT dba_leads TO dba_team")  # dba_team is a member of dba_leads, ann of dba_team
    sc.sql("GRANT dba_team TO ann")
    sc.sql("GRANT dba_leads TO ben")
    sc.create_role("carl")
    sc.sql("GRANT ann TO carl")  # carl -> ann -> dba_team -> dba_leads

    eng = sc.engine(
        master_user="mastr",
        exclude_users=["svc_app"],
        exclude_patterns=[r"tmp_\d+"],
        exempt_groups=["dba_leads"],
    )
    eng.migrate()
    result = eng.sync_roles()
    assert sorted(sc.statuses()) == sorted(["alice", 'We"ird Name 👀', "tmp_x"])
    assert sorted(result.added) == sorted(sc.statuses())
    assert {s["status"] for s in sc.statuses().values()} == {"Active"}
    assert sorted(h[1] for h in sc.history("sync_add")) == sorted(sc.statuses())

    # superusers become candidates only when configured
    sc.engine(master_user="mastr", include_superusers=True, exclude_users=["svc_app"],
              exclude_patterns=[r"tmp_\d+"], exempt_groups=["dba_leads"]).sync_roles()  # fmt: skip
    assert "root2" in sc.statuses()

    # adding a name to the exclusions removes it, with the reason in the history
    sc.engine(master_user="mastr", exclude_users=["svc_app", "alice", "root2"],
              exclude_patterns=[r"tmp_\d+"], exempt_groups=["dba_leads"]).sync_roles()  # fmt: skip
    assert "alice" not in sc.statuses()
    assert ("sync_remove", "alice", "test-run") in sc.history()


def test_sync_follows_oids_through_drop_recreate_and_rename(scenario: Scenario) -> None:
    sc = scenario
    for name in ["carol", "dave", "erin"]:
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name in ["carol", "dave", "erin"]:
        sc.set_last_login(name, 120)
    before = sc.statuses()

    sc.sql("DROP ROLE carol")
    sc.create_role("carol")  # same name, new OID: must not inherit the old clock
    sc.sql("ALTER ROLE dave RENAME TO dave2")  # same role: keeps its own clock
    sc.sql("DROP ROLE erin")
    result = eng.sync_roles()

    after = sc.statuses()
    assert set(after) == {"carol", "dave2"}
    assert after["carol"]["oid"] != before["carol"]["oid"]
    assert (after["carol"]["last_login"] - before["carol"]["last_login"]).days >= 119
    assert after["dave2"]["oid"] == before["dave"]["oid"]
    assert after["dave2"]["last_login"] == before["dave"]["last_login"]
    assert result.renamed == [("dave", "dave2")]
    assert sorted(result.removed) == ["carol", "erin"]
    assert result.added == ["carol"]
    reasons = dict(
        (r[0], r[1])
        for r in sc.sql(
            "SELECT user_name, reason FROM inactive_users.action_history WHERE action = 'sync_remove'"
        )
    )
    assert reasons == {"carol": "role no longer exists", "erin": "role no longer exists"}

    # a second sync with nothing changed changes nothing
    assert eng.sync_roles().changes() == 0


def test_sync_costs_the_same_statements_for_2000_roles_as_for_5(scenario: Scenario) -> None:
    sc = scenario
    eng = sc.engine()
    eng.migrate()
    sc.sql("ALTER ROLE postgres SET log_statement = 'all'")  # the job's new sessions log every statement

    def statements_during_sync(prefix: str, count: int) -> int:
        sc.sql(
            "DO $$BEGIN FOR i IN 1.." + str(count) + " LOOP "
            "EXECUTE format('CREATE ROLE %I LOGIN', '" + prefix + "' || i); END LOOP; END$$"
        )
        sc.flush_log()
        start = len(sc.pg.log_lines())
        assert len(eng.sync_roles().added) == count
        sc.flush_log()
        new = sc.pg.log_lines()[start:]
        return sum(1 for line in new if ":LOG:  statement: " in line or ":LOG:  execute " in line)

    many = statements_during_sync("bulk_", 2000)
    few = statements_during_sync("few_", 5)
    assert many == few
    assert 4 <= many <= 8  # BEGIN, lock, roles, states, job user, the one sync statement, COMMIT


def test_locked_role_unlocked_outside_the_job_is_reconciled(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("frank")
    sc.create_role("gina")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("frank", 100)
    sc.set_last_login("gina", 100)
    eng.lock(eng.plan())
    assert sc.role("frank")["can_login"] is False  # type: ignore[index]

    sc.sql("ALTER ROLE frank LOGIN")  # a DBA unlocked it by hand
    sc.sql("ALTER ROLE gina RENAME TO gina_b")  # locked and renamed: still tracked
    result = eng.sync_roles()
    st = sc.statuses()
    assert result.unlocked_externally == ["frank"]
    assert st["frank"]["status"] == "Active"
    assert st["gina_b"]["status"] == "Locked"
    assert ("sync_unlocked_externally", "frank", "test-run") in sc.history()


def test_state_schema_is_configurable(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("hank")
    eng = sc.engine(state_schema="iu_state")
    eng.migrate()
    eng.sync_roles()
    assert list(sc.statuses("iu_state")) == ["hank"]
    assert sc.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'inactive_users'") == [(0,)]
    assert sc.sql(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("iu_state", "action_history"))
    ) == [(1,)]


def test_history_rows_keep_every_field_in_order(scenario: Scenario) -> None:
    sc = scenario
    sc.engine().migrate()
    weird = 'We"ird\\ Name, {x} 👀'
    entries: list[tuple[str, str, int | None, str, dict]] = [
        ("lock", weird, 4294967295, "inactive 91 days", {"prior": {"can_login": True, "limit": -1}}),
        ("lock_failed", "plain", None, "permission denied", {}),
        *[("drop", f"bulk_{i}", 20000 + i, f"reason {i}", {"i": i}) for i in range(2000)],
    ]
    with sc.pg.connect() as conn, conn.transaction():
        state.record_history(conn, "inactive_users", "run-h", entries)
        state.record_history(conn, "inactive_users", "run-h", [])
    rows = sc.sql(
        "SELECT action, user_name, role_oid::bigint, reason, detail FROM inactive_users.action_history "
        "WHERE run_id = 'run-h' ORDER BY id"
    )
    assert rows == [tuple(e) for e in entries]
