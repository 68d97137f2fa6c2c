"""Evidence for auditors: the CSV and manifest (pure), and real runs writing them to S3 (moto).

The end-to-end tests run the real DAG against a real cluster; the evidence goes through the
amazon provider's S3Hook to the moto server, where it is read back and checked against the
state table.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.motoserver import boto_client
from inactive_users.core.evidence import (
    COLUMNS,
    DROPPED,
    RoleFacts,
    build_rows,
    escape_cell,
    key_name,
    object_keys,
    read_csv,
    to_csv,
    unescape_cell,
)
from inactive_users.core.policy import ACTIVE, LOCKED, READY_TO_DELETE, Thresholds
from tests.dagrun import DagHarness
from tests.scenario import Scenario

CORPUS: list[str] = json.loads((Path(__file__).parent / "data" / "role_names.json").read_text("utf-8"))[
    "names"
]
# Names a spreadsheet would evaluate, and names only a careful CSV writer keeps whole.
SPREADSHEET = [
    '=HYPERLINK("http://evil.example","x")',
    "+SUM(1,2)",
    "-2+3",
    "@cmd",
    "\tlead tab",
    "\rcarriage",
    "'quoted start",
    "comma, name",
    "line\nbreak",
    '"quoted"',
]
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
T = Thresholds(lock_after_days=90, delete_after_days=180, max_action_ratio=1.0)


# -- the CSV and the keys (pure) ------------------------------------------------------------------


def test_cells_a_spreadsheet_would_evaluate_start_with_a_quote_and_read_back_exactly() -> None:
    for value in [*CORPUS, *SPREADSHEET]:
        written = escape_cell(value)
        assert unescape_cell(written) == value
        if value[:1] in ("=", "+", "-", "@", "\t", "\r", "'"):
            assert written == "'" + value
        else:
            assert written == value


def test_every_hostile_name_round_trips_through_the_csv() -> None:
    names = [*CORPUS, *SPREADSHEET]
    facts = [RoleFacts(n, i, ACTIVE, NOW - timedelta(days=i), None) for i, n in enumerate(names, 1)]
    body = to_csv(build_rows(facts, as_of=NOW, thresholds=T))
    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: spreadsheets read the Unicode names right
    back = read_csv(body)
    assert [r["user_name"] for r in back] == sorted(names)
    assert {r["user_name"]: int(r["days_inactive"]) for r in back} == {n: i for i, n in enumerate(names, 1)}
    # as written (not unescaped), no cell of any row starts with a formula character
    raw = list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline="")))
    assert raw[0] == list(COLUMNS)
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in raw for cell in row)


def test_rows_say_what_the_run_did_or_why_it_did_nothing() -> None:
    def f(name: str, days: int, status: str | None, **kw: Any) -> RoleFacts:
        return RoleFacts(name, abs(hash(name)) % 10_000, status, NOW - timedelta(days=days), None, **kw)

    facts = [
        f("fresh", 10, ACTIVE),
        f("locked_now", 100, LOCKED, actions=(("lock", "inactive 100 days"),)),
        f("dropped_now", 200, None, actions=(("drop", "inactive 200 days"),)),
        f("locked_before", 120, LOCKED),
        f("flagged", 300, READY_TO_DELETE, blockers="owns 1 object (pg_class) in database app"),
        f("kept_for_exclusion", 150, LOCKED, protection="exclude_users"),
        f("busy", 100, ACTIVE),
        f("settling", 100, ACTIVE),
        f("renamed_away", 5, ACTIVE, exists=False),
        f("skipped", 100, ACTIVE),
    ]
    rows = {
        r.user_name: r
        for r in build_rows(
            facts,
            as_of=NOW,
            thresholds=T,
            kept_session={"busy"},
            kept_settling={"settling"},
            outcomes={"skipped": {"action": "skipped", "reason": "logged in since the plan"}},
        )
    }
    assert (rows["fresh"].action, rows["fresh"].action_detail) == (
        "none",
        "10 days without a login, below lock_after_days (90)",
    )
    assert (rows["locked_now"].action, rows["locked_now"].action_detail) == ("lock", "inactive 100 days")
    assert rows["dropped_now"].status == DROPPED and rows["dropped_now"].days_inactive == 200
    assert rows["locked_before"].action_detail == (
        "locked earlier; 120 days without a login, below delete_after_days (180)"
    )
    assert rows["flagged"].blockers == "owns 1 object (pg_class) in database app"
    assert rows["fresh"].blockers == ""
    assert rows["kept_for_exclusion"].protection == "exclude_users"
    assert rows["kept_for_exclusion"].action_detail == "excluded: exclude_users"
    assert rows["busy"].protection == "open session"
    assert rows["settling"].action_detail == "kept: a login was still settling when the run planned"
    assert "no longer exists" in rows["renamed_away"].action_detail
    assert rows["skipped"].action_detail == "skipped: logged in since the plan"


def test_object_keys_are_made_of_safe_characters_and_stay_unique() -> None:
    run = "manual__2026-12-02T06:00:00.123456+00:00"
    csv_key, manifest_key = object_keys("audit/", "orders-prod", NOW.date(), run)
    assert csv_key.startswith("audit/orders-prod/2026-12-02/manual__2026-12-02T06_00_00.123456_00_00.")
    assert csv_key.endswith(".csv") and manifest_key == csv_key[: -len(".csv")] + ".json"
    assert re.fullmatch(r"[A-Za-z0-9._/-]+", csv_key)
    # two run ids that differ only in replaced characters still get their own keys
    assert key_name("a:b") != key_name("a+b") != key_name("a_b")
    assert key_name("scheduled__2026-12-02") == "scheduled__2026-12-02"  # nothing replaced, kept as is
    assert object_keys("", "c", NOW.date(), "r")[0] == "c/2026-12-02/r.csv"


# -- real runs ------------------------------------------------------------------------------------

BUCKET = "audit-evidence"


def _s3(sc: Scenario) -> Any:
    return boto_client(sc.moto.endpoint_url, "s3")


def _objects(s3: Any, bucket: str = BUCKET) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def _seed(sc: Scenario, h: DagHarness) -> None:
    """Roles for each outcome, the hostile names, and real logins on both instances."""
    for name in ["active", "idle100", "gone200", "owner200", "held_excluded", *CORPUS, *SPREADSHEET]:
        sc.create_role(name)
    sc.sql("CREATE TABLE report_data (id int)")
    sc.sql("ALTER TABLE report_data OWNER TO owner200")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name, days in (("idle100", 100), ("gone200", 200), ("owner200", 200), ("held_excluded", 150)):
        sc.set_last_login(name, days)
    # locked by an earlier run, excluded since: still tracked (it can be unlocked), never acted on
    sc.sql("ALTER ROLE held_excluded NOLOGIN")
    sc.sql("UPDATE inactive_users.user_login_status SET status = 'Locked' WHERE user_name = 'held_excluded'")
    assert sc.login("active")
    sc.ship(sc.writer)
    assert sc.login("active")
    sc.ship(sc.reader)


@pytest.mark.single_pg_version("the evidence is read from the state table; its SQL is version-neutral")
def test_a_real_run_writes_evidence_that_matches_the_state_table(
    scenario: Scenario, dag_harness: DagHarness
) -> None:
    sc, h = scenario, dag_harness
    s3 = _s3(sc)
    s3.create_bucket(Bucket=BUCKET)
    _seed(sc, h)
    h.write_config(
        evidence={"s3_uri": f"s3://{BUCKET}/inactive-users"},  # no trailing slash: still a folder
        exclude_users=["held_excluded"],
    )
    day_before = datetime.now(UTC).date()
    states = h.run()
    assert states["write_evidence"] == "success" and states["report"] == "success", states
    [run_id] = {r for _, _, r in sc.history("lock")}

    keys = _objects(s3)
    [csv_key, manifest_key] = keys
    day = csv_key.split("/")[2]
    assert day in {day_before.isoformat(), datetime.now(UTC).date().isoformat()}
    assert (csv_key, manifest_key) == object_keys(
        "inactive-users/", sc.cluster_id, datetime.fromisoformat(day).date(), run_id
    )
    body = s3.get_object(Bucket=BUCKET, Key=csv_key)["Body"].read()
    rows = {r["user_name"]: r for r in read_csv(body)}

    # every tracked role of the state table, as the table has it, and the role this run dropped
    statuses = sc.statuses()
    assert set(rows) == set(statuses) | {"gone200"}
    for name, st in statuses.items():
        assert rows[name]["status"] == st["status"], name
        assert datetime.fromisoformat(rows[name]["last_login_time"]) == st["last_login"].replace(
            microsecond=0
        )
        assert rows[name]["role_oid"] == str(st["oid"])
        assert rows[name]["status_reason"] == (st["reason"] or "")
    assert {*CORPUS, *SPREADSHEET} <= set(rows)  # hostile names round-trip from the real catalog
    assert (rows["idle100"]["action"], rows["idle100"]["days_inactive"]) == ("lock", "100")
    assert rows["gone200"]["status"] == "Dropped" and rows["gone200"]["action"] == "drop"
    assert rows["gone200"]["days_inactive"] == "200" and rows["gone200"]["last_login_time"]
    assert rows["owner200"]["action"] == "ready_to_delete"
    assert rows["owner200"]["blockers"].startswith("database postgres: owns table ")  # named (blockers.py)
    assert rows["held_excluded"]["protection"] == "exclude_users"
    assert (rows["held_excluded"]["action"], rows["held_excluded"]["action_detail"]) == (
        "none",
        "excluded: exclude_users",
    )
    assert rows["active"]["action"] == "none"
    assert rows["active"]["action_detail"] == "0 days without a login, below lock_after_days (90)"

    # the manifest names the run, its settings and counts, and the CSV's exact bytes
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    assert manifest["csv"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert manifest["csv"]["bytes"] == len(body)
    assert manifest["csv"]["uri"] == f"s3://{BUCKET}/{csv_key}"
    assert (manifest["cluster_id"], manifest["run_id"]) == (sc.cluster_id, run_id)
    assert manifest["counts_by_status"] == dict(Counter(r["status"] for r in rows.values()))
    by_action = manifest["counts_by_action"]
    assert (by_action["lock"], by_action["drop"], by_action["ready_to_delete"]) == (1, 1, 1)
    assert manifest["settings"]["lock_after_days"] == 90
    assert manifest["settings"]["exclude_users"] == ["held_excluded"]
    # where the logins and sessions were read: both instances of the cluster, at their endpoints
    assert [(i["instance"], i["log_group"], i["sessions"]) for i in manifest["instances_read"]] == [
        (instance, f"/aws/rds/cluster/{sc.cluster_id}/postgresql", f"127.0.0.1:{sc.pg.port}")
        for instance in (sc.writer, sc.reader)
    ]
    assert manifest["job_user"]["session_user"] == sc.sql("SELECT current_user::text")[0][0]
    assert manifest["roles"] == len(rows)

    # server-side encryption was requested on both objects (SSE-S3 by default)
    for key, content_type in ((csv_key, "text/csv; charset=utf-8"), (manifest_key, "application/json")):
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "AES256" and head["ContentType"] == content_type
        assert head["Metadata"]["csv-sha256"] == manifest["csv"]["sha256"]

    # a dry run changes nothing and writes nothing
    states = h.run({"dry_run": True})
    assert states["write_evidence"] == "skipped" and states["report"] == "success", states
    assert _objects(s3) == keys

    # with a KMS key, the next run's objects are encrypted with it
    kms = boto_client(sc.moto.endpoint_url, "kms")
    key_id = kms.create_key(Description="audit evidence")["KeyMetadata"]["KeyId"]
    h.write_config(evidence={"s3_uri": f"s3://{BUCKET}/inactive-users/", "kms_key_id": key_id})
    states = h.run()
    assert states["write_evidence"] == "success" and states["report"] == "success", states
    new = sorted(set(_objects(s3)) - set(keys))
    assert len(new) == 2
    for key in new:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]


@pytest.mark.single_pg_version("an S3 failure after the actions; PostgreSQL is not the subject")
def test_a_missing_bucket_fails_the_run_after_its_actions(
    scenario: Scenario, dag_harness: DagHarness, capfd: pytest.CaptureFixture[str]
) -> None:
    sc, h = scenario, dag_harness
    sc.create_role("idle100")
    sc.create_role("active")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("idle100", 100)
    assert sc.login("active")
    sc.ship(sc.writer)
    assert sc.login("active")
    sc.ship(sc.reader)
    h.write_config(evidence={"s3_uri": "s3://no-such-evidence-bucket/audit/"})
    states = h.run()
    assert states["lock_users"] == "success" and states["alert"] == "success", states
    assert states["write_evidence"] == "failed" and states["report"] == "failed", states
    # the lock happened and stands
    assert sc.statuses()["idle100"]["status"] == "Locked"
    assert sc.role("idle100")["can_login"] is False  # type: ignore[index]
    out, err = capfd.readouterr()
    logs = out + err
    [run_id] = {r for _, _, r in sc.history("lock")}
    key = (
        re.escape(f"audit/{sc.cluster_id}/") + r"\d{4}-\d{2}-\d{2}/" + re.escape(key_name(run_id)) + r"\.csv"
    )
    assert re.search(r"evidence not written to s3://no-such-evidence-bucket/" + key + ": NoSuchBucket", logs)
    assert "This run's actions are done and recorded in inactive_users.action_history" in logs
    assert "its evidence was not written: see the write_evidence task log" in logs
    assert sc.pg.password not in logs


def test_the_snapshot_has_tracked_roles_this_runs_actions_and_dropped_roles(scenario: Scenario) -> None:
    """The state-schema read (no DAG): one consistent picture, on every PostgreSQL version."""
    sc = scenario
    for name in ("idle100", "gone200", "owner200", "fresh", 'We"ird 👀'):
        sc.create_role(name)
    sc.sql("CREATE TABLE owned (id int)")
    sc.sql("ALTER TABLE owned OWNER TO owner200")
    eng = sc.engine(run_id="seed", max_action_ratio=1.0)
    eng.migrate()
    eng.sync_roles()
    for name, days in (("idle100", 100), ("gone200", 200), ("owner200", 200)):
        sc.set_last_login(name, days)
    sc.ship()
    run = sc.engine(run_id="evidence-run", max_action_ratio=1.0)
    run.run([sc.writer])
    snap = run.evidence_snapshot()
    facts = {f.user_name: f for f in snap.roles}
    assert set(facts) == set(sc.statuses()) | {"gone200"}
    assert facts["idle100"].actions == (("lock", facts["idle100"].actions[0][1]),)
    assert facts["idle100"].status == LOCKED
    assert facts["gone200"].status is None and [a for a, _ in facts["gone200"].actions] == ["drop"]
    assert facts["gone200"].last_login is not None  # kept in the drop's history row
    assert facts["owner200"].status == READY_TO_DELETE
    assert facts["owner200"].blockers == "database postgres: owns table public.owned"
    assert facts['We"ird 👀'].actions == () and facts["fresh"].actions == ()  # added by the seed run
    assert snap.job_user["session_user"] == sc.sql("SELECT current_user::text")[0][0]
