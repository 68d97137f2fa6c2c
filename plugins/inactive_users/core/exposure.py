"""Compliance exposure: dormant roles that keep their access while the runs do not act (pure).

A run that refuses (a guard, a log gap, an unreachable instance) rightly changes nothing; but then
roles past ``lock_after_days`` can still log in, and nobody acts on them until a run does. PCI DSS
8.2.6 counts exactly those. The numbers come from the state table (``postgres.exposure`` reads
them), so they are right even when the run failed before its ingest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

#: What a run did, as ``run_outcome`` records it.
ACTED = "acted"
NOTHING_TO_DO = "nothing_to_do"
REFUSED = "refused"  # a guard or a check refused: the reason says what to fix
FAILED = "failed"  # an error outlasted the task's retries before the actions
PROTECTED = (ACTED, NOTHING_TO_DO)
NOT_ACTED = (REFUSED, FAILED)

#: The tasks before the actions: one of them failing means the run did not act.
PRE_ACTION_TASKS = (
    "preflight",
    "sync_roles",
    "ingest_logins",
    "plan",
    "choose_actions",
    "approve_drops",
    "lock_users",
    "delete_users",
)

# What makes a refused run act again, by the guard (the start of its message) or the error class.
_FIXES = (
    (
        "safety guard",
        "check that the connection logs are complete; if the plan is right, set "
        "override_guard: true for one run (or raise max_action_ratio)",
    ),
    (
        "retention guard",
        "check the roles that could have logged in only during the gap, then trigger "
        'once with {"override_retention": true} (recorded in action_history)',
    ),
    (
        "log format guard",
        "set log_line_prefix in the instance's parameter group to the one the server reports",
    ),
    ("log gap guard", "turn log_connections on and export the 'postgresql' log to CloudWatch Logs"),
    (
        "session guard",
        "make every instance's open sessions readable (instance_endpoints, security "
        "group, the job user's access)",
    ),
    ("ConcurrentRunError", "let the other run finish or its lease expire, then trigger a new run"),
    ("ConfigError", "correct the configuration entry or trigger parameter named above"),
)
_PERMANENT_FIX = "do what the reason above says; the next run acts (or clear the failed task)"
_TRANSIENT_FIX = (
    "an error outlasted the task's retries: check that the cluster, its endpoints and AWS answer, "
    "then clear the failed task"
)


@dataclass(frozen=True)
class RoleExposure:
    """Dormant roles that keep access, from the state table at ``as_of`` (the cluster's clock)."""

    as_of: datetime
    lock_after_days: int | None
    delete_after_days: int | None
    past_lock: int = 0  # past lock_after_days and can still log in
    past_lock_since: datetime | None = None  # when the oldest of them passed the threshold
    past_drop: int = 0  # past delete_after_days, neither dropped nor flagged ReadyToDelete
    past_drop_since: datetime | None = None
    upcoming: int = 0  # reaching a threshold within warn_before_days
    counts: tuple[tuple[str, int], ...] = ()  # tracked roles by status

    @property
    def total(self) -> int:
        return self.past_lock + self.past_drop


@dataclass(frozen=True)
class RunRecord:
    """What ``run_outcome`` says of the runs: the last that protected, and those that did not since."""

    last_protected_at: datetime | None = None  # the last run that acted or had nothing to do
    not_acted: int = 0  # runs since then that refused or failed
    first_not_acted_at: datetime | None = None
    last_refusal: tuple[datetime, str, str | None, str | None] | None = None  # (at, outcome, run, why)
    recorded: bool = True  # False: the state schema predates run_outcome (no run recorded yet)

    @property
    def unprotected_since(self) -> datetime | None:
        """Since when no run has acted: the last run that did (or the first that did not)."""
        if not self.not_acted:
            return None
        return self.last_protected_at or self.first_not_acted_at

    def unprotected_days(self, now: datetime) -> float | None:
        since = self.unprotected_since
        return None if since is None else max(0.0, (now - since) / timedelta(days=1))

    def days_since_protected(self, now: datetime) -> float | None:
        last = self.last_protected_at
        return None if last is None else max(0.0, (now - last) / timedelta(days=1))


@dataclass(frozen=True)
class Report:
    roles: RoleExposure
    runs: RunRecord

    def escalated(self, max_unprotected_days: float) -> bool:
        days = self.runs.unprotected_days(self.roles.as_of)
        return days is not None and days > max_unprotected_days


def fix_for(reason: str | None, outcome: str = REFUSED) -> str:
    """What to do so that the next run acts, for a refusal's reason (our messages start with it)."""
    text = reason or ""
    for key, fix in _FIXES:
        if key in text:
            return fix
    return _PERMANENT_FIX if outcome == REFUSED else _TRANSIENT_FIX


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _oldest(n: int, since: datetime | None, now: datetime) -> str:
    """``; the oldest past it since 2026-01-02 (40 days).`` for a count above 0, else ``.``."""
    if not n or since is None:
        return "."
    return f"; the oldest past it since {since:%Y-%m-%d} ({max(0, (now - since).days)} days)."


def alert_lines(
    report: Report, *, reason: str | None, outcome: str, max_unprotected_days: float
) -> list[str]:
    """The failure alert's exposure section: what stays open, for how long, why, and the fix."""
    r, runs, now = report.roles, report.runs, report.roles.as_of
    lines = [f"Exposure (the state table at {now.isoformat(timespec='minutes')}; this run changed nothing):"]
    if r.lock_after_days is None:
        lines.append("  lock_after_days is null: no role is due to be locked.")
    else:
        lines.append(
            f"  {_n(r.past_lock, 'role', 'roles')} past lock_after_days ({r.lock_after_days}): "
            "can still log in" + _oldest(r.past_lock, r.past_lock_since, now)
        )
    if r.delete_after_days is not None:
        lines.append(
            f"  {_n(r.past_drop, 'role', 'roles')} past delete_after_days ({r.delete_after_days}): "
            "neither dropped nor flagged ReadyToDelete" + _oldest(r.past_drop, r.past_drop_since, now)
        )
    if not runs.recorded:
        lines.append("  Runs that did not act: not recorded yet (the state schema predates run_outcome).")
    else:
        since = runs.unprotected_since
        at = runs.last_protected_at
        last = (
            f"the last run that acted or had nothing to do was at {at.isoformat(timespec='minutes')}"
            if at
            else "no run has acted yet"
        )
        in_a_row = _n(runs.not_acted, "run in a row has", "runs in a row have")
        lines.append(f"  {in_a_row} not acted ({last}).")
        if since is not None and report.escalated(max_unprotected_days):
            days = runs.unprotected_days(now) or 0.0
            lines.append(
                f"  ESCALATED: not acted for {days:.1f} days, longer than max_unprotected_days "
                f"({max_unprotected_days:g}); every alert says so until a run acts."
            )
    lines += [f"  Why: {(reason or 'unknown')[:1000]}", f"  Fix: {fix_for(reason, outcome)}"]
    return lines


def escalation_label(report: Report, max_unprotected_days: float) -> str | None:
    """For the subject: ``UNPROTECTED 4 DAYS`` once past ``max_unprotected_days``, else None."""
    if not report.escalated(max_unprotected_days):
        return None
    days = report.runs.unprotected_days(report.roles.as_of) or 0.0
    return f"UNPROTECTED {int(days)} DAYS"


def manifest_entry(runs: RunRecord, now: datetime) -> dict[str, Any] | None:
    """How long the cluster had been unprotected before a run that acted (None: it had not been)."""
    since = runs.unprotected_since
    if since is None:
        return None
    return {
        "since": since.isoformat(),
        "days": round(runs.unprotected_days(now) or 0.0, 3),
        "runs_not_acted": runs.not_acted,
        "last_protected_at": runs.last_protected_at.isoformat() if runs.last_protected_at else None,
    }
