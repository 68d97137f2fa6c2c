"""What blocks a drop, by name: every database asked on its own connection, on a real cluster.

The names are the server's own ``pg_describe_object``, so these run on every PostgreSQL version.
"""

from __future__ import annotations

from psycopg import sql

from inactive_users.postgres import blockers
from tests.privileges import JOB_USER, create_job_user
from tests.scenario import Scenario

HOSTILE_SCHEMA = 'We"ird'
HOSTILE_TABLE = "Robert'); DROP TABLE x;--"
NEWLINE_TABLE = "über 👀\nline"

DEPARTED = (
    "cluster-wide: owns database app_b; "
    "database app_a: owns function public.f(integer), sequence public.s, "
    'table "We""ird"."Robert\'); DROP TABLE x;--", table public."über 👀\\x0aline", '
    "table public.report_data; "
    "database app_b: holds privileges on table public.orders; "
    "is named in policy audit on table public.orders; "
    "database closed: owns 1 object (names unavailable: datallowconn is false, the database takes no "
    "connections); "
    'database nogrant: owns 1 object (names unavailable: permission denied for database "nogrant")'
)
HOARDER = "database app_a: owns " + ", ".join(f"table public.t{i:02}" for i in range(1, 11)) + " and 2 more"
STUCK = (
    "database closed: owns 1 object; holds privileges on 1 object (names unavailable: datallowconn is "
    "false, the database takes no connections)"
)


def _objects(sc: Scenario) -> None:
    """departed: objects in app_a, privileges and a policy in app_b, which it owns, one table each in
    a database nobody may connect to and in one the job user may not; hoarder: 12 tables; stuck:
    only objects in the closed database; free: nothing."""
    for name in ("departed", "hoarder", "stuck", "free"):
        sc.create_role(name)
    for db in ("app_a", "app_b", "closed", "nogrant"):
        sc.sql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    statements = {
        "app_a": [
            "CREATE TABLE report_data (id int)",
            "CREATE SEQUENCE s",
            "CREATE FUNCTION f(integer) RETURNS integer LANGUAGE sql AS 'SELECT 1'",
            sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(HOSTILE_SCHEMA)),
            sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE)),
            sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier("public", NEWLINE_TABLE)),
            "ALTER TABLE report_data OWNER TO departed",
            "ALTER SEQUENCE s OWNER TO departed",
            "ALTER FUNCTION f(integer) OWNER TO departed",
            sql.SQL("ALTER TABLE {} OWNER TO departed").format(sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE)),
            sql.SQL("ALTER TABLE {} OWNER TO departed").format(sql.Identifier("public", NEWLINE_TABLE)),
            *[f"CREATE TABLE t{i:02} (id int)" for i in range(1, 13)],
            *[f"ALTER TABLE t{i:02} OWNER TO hoarder" for i in range(1, 13)],
        ],
        "app_b": [
            "CREATE TABLE orders (id int)",
            "GRANT SELECT ON orders TO departed",
            "ALTER TABLE orders ENABLE ROW LEVEL SECURITY",
            "CREATE POLICY audit ON orders TO departed USING (true)",
        ],
        "closed": [
            "CREATE TABLE kept (id int)",
            "ALTER TABLE kept OWNER TO departed",
            "CREATE TABLE shared (id int)",
            "ALTER TABLE shared OWNER TO stuck",
            "CREATE TABLE seen (id int)",
            "GRANT SELECT ON seen TO stuck",
        ],
        "nogrant": ["CREATE TABLE kept (id int)", "ALTER TABLE kept OWNER TO departed"],
    }
    for db, todo in statements.items():
        for statement in todo:
            sc.sql(statement, dbname=db)
    sc.sql("ALTER DATABASE app_b OWNER TO departed")
    sc.sql("ALTER DATABASE closed ALLOW_CONNECTIONS false")
    sc.sql("REVOKE CONNECT ON DATABASE nogrant FROM PUBLIC")


def test_blockers_are_named_per_database_and_kind(scenario: Scenario) -> None:
    sc = scenario
    _objects(sc)
    create_job_user(sc, ["departed", "hoarder", "stuck", "free"])  # not a superuser: CONNECT applies
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name in ("departed", "hoarder", "stuck", "free"):
        sc.set_last_login(name, 200)
    sc.ship()

    preview = sc.engine(dry_run=True).run([sc.writer]).delete
    assert {o.name: o.blockers for o in preview.by_action("would_flag_ready_to_delete")} == {
        "departed": DEPARTED,
        "hoarder": HOARDER,
        "stuck": STUCK,
    }
    assert preview.names("would_drop") == ["free"]

    report = eng.run([sc.writer]).delete
    flagged = {o.name: o.blockers for o in report.by_action("ready_to_delete")}
    assert flagged == {"departed": DEPARTED, "hoarder": HOARDER, "stuck": STUCK}
    assert report.names("dropped") == ["free"]
    statuses = sc.statuses()
    for name, text in flagged.items():
        # a role with dependencies stays ReadyToDelete and locked whatever the naming could do
        assert statuses[name]["status"] == "ReadyToDelete"
        assert statuses[name]["reason"].endswith(f"; blocked by: {text}")
        assert sc.role(name)["can_login"] is False  # type: ignore[index]
    history = sc.sql(
        "SELECT user_name, detail->>'blockers' FROM inactive_users.action_history "
        "WHERE action = 'ready_to_delete' ORDER BY user_name"
    )
    assert history == [("departed", DEPARTED), ("hoarder", HOARDER), ("stuck", STUCK)]
    assert sc.sql("SELECT current_setting('search_path')") == [('"$user", public',)]  # left as it was

    # The DBA handles part of it and lets the job user into nogrant: the next run names what is left.
    sc.sql("DROP TABLE report_data", dbname="app_a")
    sc.sql(sql.SQL("GRANT CONNECT ON DATABASE nogrant TO {}").format(sql.Identifier(JOB_USER)))
    again = sc.engine().run([sc.writer]).delete
    [still] = [o for o in again.by_action("still_ready_to_delete") if o.name == "departed"]
    assert still.blockers is not None
    assert "table public.report_data" not in still.blockers
    assert still.blockers.endswith("database nogrant: owns table public.kept")
    assert sc.statuses()["departed"]["reason"].endswith(f"; blocked by: {still.blockers}")
    assert len(sc.history("ready_to_delete")) == 3  # brought up to date, not flagged again


def test_a_long_list_is_cut_at_a_boundary_and_says_what_is_not_shown() -> None:
    """Bounded whatever the cluster holds: it is kept in status_reason, XCom and every alert line."""
    dbs = []
    for n in range(40):
        db = blockers._Database(100 + n, f"db_{n:02}_" + "x" * 50, True)
        db.counts[7] = {"o": 25, "a": 3}
        db.names[7] = {
            "o": (25, [f"table public.{'t' * 50}_{i}" for i in range(blockers.MAX_NAMED)]),
            "a": (3, ["table public.a", "table public.b", "table public.c"]),
        }
        dbs.append(db)
    text = blockers._text(7, dbs)
    assert len(text) <= blockers.MAX_CHARS
    assert text.startswith("database db_00_")
    shown = text.count("database db_")
    assert 0 < shown < 40
    assert text.endswith(f"; … and {(40 - shown) * 28} objects in {40 - shown} more places not shown here")
    assert "\n" not in text
