"""Approval before DROP ROLE, the pure parts: the plan locks first, the question, the answer's meaning.

The approval task itself runs on a live Airflow (tests/test_live_approval.py): a human answer needs
the api-server and a timeout needs the scheduler. Here: what the policy plans with approvals on,
what the question says, how an answer (or its absence) decides, and what the alert then says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from inactive_users.core import approval
from inactive_users.core.alerts import compose
from inactive_users.core.config import load
from inactive_users.core.policy import (
    ACTIVE,
    LOCKED,
    READY_TO_DELETE,
    Exclusions,
    RoleInfo,
    Thresholds,
    UserState,
)
from inactive_users.core.policy import make_plan as plan_of
from inactive_users.core.settings import EngineSettings
from inactive_users.face.dag_factory import TASK_IDS, build_dag

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ADMIN = {"id": "admin", "name": "Ada Admin"}


def states(*rows: tuple[int, str, float, str]) -> tuple[list[UserState], dict[int, RoleInfo]]:
    users = [UserState(name, oid, NOW - timedelta(days=days), status) for oid, name, days, status in rows]
    roles = {oid: RoleInfo(oid, name, status == ACTIVE) for oid, name, _, status in rows}
    return users, roles


# -- the plan ------------------------------------------------------------------------------------


def test_with_approvals_a_role_due_to_be_dropped_is_locked_first() -> None:
    users, roles = states(
        (1, "active_200", 200, ACTIVE),  # past both thresholds, never locked
        (2, "locked_200", 200, LOCKED),
        (3, "flagged_200", 200, READY_TO_DELETE),
        (4, "active_100", 100, ACTIVE),
    )
    without = plan_of(users, roles, Exclusions(), Thresholds(), NOW)
    with_approval = plan_of(users, roles, Exclusions(), Thresholds(lock_before_drop=True), NOW)

    assert [p.name for p in without.lock] == ["active_100"]
    assert [p.name for p in with_approval.lock] == ["active_200", "active_100"]
    assert [p.name for p in with_approval.delete] == [p.name for p in without.delete]
    assert [p.name for p in with_approval.delete] == ["active_200", "locked_200", "flagged_200"]
    # a role both locked and dropped counts once against the safety guard
    assert without.new_actions == with_approval.new_actions == 3


def test_the_setting_turns_on_the_lock_before_the_drop() -> None:
    assert EngineSettings(approve_drops=True).thresholds().lock_before_drop is True
    assert EngineSettings().thresholds().lock_before_drop is False


def test_config_keys_and_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "defaults": {"approve_drops": True},
                "clusters": [
                    {"cluster_id": "orders", "postgres_conn_id": "pg"},
                    {"cluster_id": "billing", "postgres_conn_id": "pg", "approval_timeout_hours": 0.5},
                    {"cluster_id": "ops", "postgres_conn_id": "pg", "approve_drops": False},
                ],
            }
        )
    )
    orders, billing, ops = load(path).clusters
    assert (orders.settings.approve_drops, orders.approval_timeout_hours) == (True, 72)
    assert (billing.settings.approve_drops, billing.approval_timeout_hours) == (True, 0.5)
    assert ops.settings.approve_drops is False


# -- the DAG ---------------------------------------------------------------------------------------


def test_the_dag_asks_between_the_lock_and_the_drop(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    entry = {"cluster_id": "orders", "postgres_conn_id": "pg", "approve_drops": True}
    path.write_text(yaml.safe_dump({"clusters": [{**entry, "approval_timeout_hours": 12}]}))
    [cluster] = load(path).clusters
    dag = build_dag(cluster)
    edges = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert set(edges) == set(TASK_IDS) | {"approve_drops"}
    assert edges["choose_actions"] == {"lock_users", "approve_drops", "nothing_to_do"}
    assert edges["lock_users"] == {"approve_drops", "alert", "write_evidence"}
    # a rejection skips the approval's downstream tasks: delete_users alone
    assert edges["approve_drops"] == {"delete_users"}
    assert edges["delete_users"] == {"alert", "write_evidence"}
    assert dag.get_task("alert").trigger_rule == "none_failed"
    approve = dag.get_task("approve_drops")
    assert type(approve).__mro__[1].__name__ == "ApprovalOperator"
    assert approve.response_timeout == timedelta(hours=12)  # type: ignore[attr-defined]
    assert approve.defaults == ["Reject"]  # type: ignore[attr-defined]
    assert approve.options == ["Approve", "Reject"]  # type: ignore[attr-defined]


# -- the question ----------------------------------------------------------------------------------


def preview(name: str, action: str, days: int = 200, blockers: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "action": action,
        "reason": f"inactive {days} days",
        "last_login": (NOW - timedelta(days=days)).isoformat(timespec="seconds"),
        "blockers": blockers,
    }


def test_the_question_lists_each_drop_and_each_flag_with_its_last_login() -> None:
    items = [
        preview("gone", "would_drop"),
        preview('Zoë "Q"', "would_drop", 250),
        preview("owner", "would_flag_ready_to_delete", blockers="database app: owns table public.t"),
    ]
    q = approval.request("orders", "manual__1", items, 3, 72, "http://af/dags/x/required_actions")
    assert q.subject == "[inactive_users] orders: approve dropping 3 inactive roles"
    body = q.body
    assert "Run: manual__1" in body
    assert "Answer in Airflow: http://af/dags/x/required_actions" in body
    assert "without an answer within 72 hours the drops are rejected" in body.lower()
    drops, flags = body.split("Would only be flagged ReadyToDelete")
    assert "Would be dropped (DROP ROLE): 2" in drops
    assert f"  - gone: last login {items[0]['last_login']}; inactive 200 days" in drops
    assert f'  - Zoë "Q": last login {items[1]["last_login"]}; inactive 250 days' in drops
    assert flags.startswith(" (objects depend on them): 1")
    assert "owner" in flags and "blocked by: database app: owns table public.t" in flags
    assert "owner" not in drops


def test_a_long_question_says_how_many_it_does_not_list() -> None:
    items = [preview(f"r{i:04}", "would_drop") for i in range(approval.MAX_LISTED + 30)]
    q = approval.request("orders", "run", items, len(items) + 5, 1, None)
    assert q.body.count("\n  - ") == approval.MAX_LISTED
    assert "... and 35 more not listed here: the approve_drops task's log lists every one" in q.body
    assert "Answer in Airflow" not in q.body


def test_the_fingerprint_is_of_the_set() -> None:
    a = approval.fingerprint([("x", 1), ("y", 2)])
    assert a == approval.fingerprint([("y", 2), ("x", 1)])
    assert a != approval.fingerprint([("x", 1)])
    assert a != approval.fingerprint([("x", 1), ("y", 3)])  # the same name, re-created
    assert a != approval.fingerprint([("x", 1), ("z", 2)])


# -- the answer ------------------------------------------------------------------------------------

ASKED = {"asked": True, "fingerprint": "f00", "total": 2, "would_drop": 1}


@pytest.mark.parametrize(
    "answer, asked, outcome, by",
    [
        ({"chosen_options": ["Approve"], "responded_by_user": ADMIN}, ASKED, approval.APPROVED, "Ada Admin"),
        ({"chosen_options": ["Reject"], "responded_by_user": ADMIN}, ASKED, approval.REJECTED, "Ada Admin"),
        (
            {"chosen_options": ["Reject"], "responded_by_user": None, "timed_out": True},
            ASKED,
            "timed_out",
            None,
        ),
        # a timeout never approves, whatever a default might say
        (
            {"chosen_options": ["Approve"], "responded_by_user": None, "timed_out": True},
            ASKED,
            "timed_out",
            None,
        ),
        # "Approve" without anyone who chose it is not an approval
        (
            {"chosen_options": ["Approve"], "responded_by_user": None},
            ASKED,
            approval.REJECTED,
            "an unknown user",
        ),
        (None, {"asked": False, "fingerprint": "f00"}, approval.NOT_ASKED, None),
    ],
)
def test_what_an_answer_decides(answer: Any, asked: Any, outcome: str, by: str | None) -> None:
    d = approval.decision(answer, asked, 72)
    assert d is not None
    assert (d.outcome, d.by) == (outcome, by)
    assert d.may_drop is (outcome == approval.APPROVED)
    assert d.fingerprint == "f00"
    assert d.due == (2 if asked is ASKED else 0)  # the roles the question was about


@pytest.mark.parametrize("answer", [None, {}, {"chosen_options": []}])
def test_no_answer_is_no_decision(answer: Any) -> None:
    """The task marked successful by hand leaves no answer: nothing may be dropped on it."""
    assert approval.decision(answer, ASKED, 72) is None
    assert approval.decision(answer, None, 72) is None


def test_the_time_of_an_answer_reads_from_a_datetime_or_from_xcom_text() -> None:
    at = datetime(2026, 12, 2, 9, 30, 5, 123, tzinfo=UTC)
    answer = {"chosen_options": ["Reject"], "responded_by_user": ADMIN}
    assert approval.decision({**answer, "responded_at": at}, ASKED, 72).at == "2026-12-02T09:30:05+00:00"  # type: ignore[union-attr]
    assert approval.decision({**answer, "responded_at": "2026-12-02T09:30:05Z"}, ASKED, 72).at == (  # type: ignore[union-attr]
        "2026-12-02T09:30:05Z"
    )


def test_each_decision_reads_as_one_line_naming_who_and_what_happened() -> None:
    at = "2026-12-02T09:30:05+00:00"
    lines = {
        o: approval.summary_line(
            approval.Decision(o, "Ada Admin" if o in ("approved", "rejected") else None, at, "f", 3, due=2)
        )
        for o in (approval.APPROVED, approval.REJECTED, approval.TIMED_OUT, approval.NOT_ASKED)
    }
    assert lines[approval.APPROVED].startswith(f"Drops APPROVED by Ada Admin at {at}")
    assert lines[approval.REJECTED] == (
        f"Drops REJECTED by Ada Admin at {at}: nothing was dropped; "
        "the 2 roles due to be dropped stay locked."
    )
    assert lines[approval.TIMED_OUT] == (
        f"Drops TIMED OUT: nobody answered approve_drops within 3 hours (at {at}); nothing was dropped; "
        "the 2 roles due to be dropped stay locked."
    )
    assert "could only be flagged ReadyToDelete" in lines[approval.NOT_ASKED]
    labels = [approval.Decision(o).label for o in (approval.APPROVED, approval.REJECTED, approval.TIMED_OUT)]
    assert labels == ["drops approved", "drops rejected", "drops timed out"]


def test_a_rejection_alone_is_alerted_and_named_in_the_subject() -> None:
    line = "Drops REJECTED by Ada Admin at 2026-12-02T09:30:05+00:00: nothing was dropped; ..."
    alert = compose("orders", "run-1", [], dry_run=False, decision=("drops rejected", line))
    assert alert is not None
    assert alert.subject == "[inactive_users] orders: drops rejected"
    assert line in alert.body
    locked = [{"name": "gone", "action": "locked", "last_login": "2026-05-01T00:00:00+00:00"}]
    with_locks = compose("orders", "run-1", locked, dry_run=False, decision=("drops rejected", line))
    assert (
        with_locks is not None and with_locks.subject == "[inactive_users] orders: 1 locked, drops rejected"
    )
    assert compose("orders", "run-1", [], dry_run=False) is None


@pytest.mark.parametrize("name", ["plain", "[click](http://x.example)", "a`b", "tick```s", "*bold*"])
def test_the_approval_page_shows_role_names_verbatim(name: str) -> None:
    """The page renders Markdown: the body is one code block that no role name can close."""
    body = approval.request("orders", "run", [preview(name, "would_drop")], 1, 72, None).body
    shown = approval.verbatim(body)
    fence = shown.split("text\n", 1)[0]
    assert set(fence) == {"`"} and len(fence) >= 3
    assert shown.endswith("\n" + fence) and fence not in shown[len(fence) : -len(fence)]
    assert f"  - {name}: last login" in shown
