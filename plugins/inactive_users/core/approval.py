"""A DBA's approval of a run's drops: what is asked, and what the answer means (pure).

With ``approve_drops`` a run locks on its own (a lock is undone with ``unlock_users``) but asks
before ``DROP ROLE``, which cannot be undone. The question lists each role the run would drop and
each it would only flag ReadyToDelete (objects depend on it). The answer is bound to that exact
set by a fingerprint: ``delete_users`` acts only when the set it is about to act on is the one
that was approved.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from inactive_users.core.alerts import Alert, scrub

APPROVED = "approved"
REJECTED = "rejected"
TIMED_OUT = "timed_out"
#: Nothing the run would do was a drop (every role only flagged ReadyToDelete): nobody was asked.
NOT_ASKED = "not_asked"

#: Roles listed in the question; the rest are counted (the plan task's log lists every one).
MAX_LISTED = 200
_WOULD_DROP = "would_drop"
_EVERY_ONE = "the approve_drops task's log lists every one"


def fingerprint(roles: Iterable[tuple[str, int]]) -> str:
    """The set of (name, OID) pairs a question was about, as a short stable digest."""
    digest = hashlib.sha256()
    for name, oid in sorted(roles, key=lambda r: (r[1], r[0])):
        digest.update(f"{oid}\t{name}\n".encode())
    return digest.hexdigest()[:16]


def would_drop(preview: Sequence[Mapping[str, Any]]) -> int:
    return sum(1 for o in preview if o.get("action") == _WOULD_DROP)


@dataclass(frozen=True)
class Decision:
    outcome: str  # APPROVED, REJECTED, TIMED_OUT or NOT_ASKED
    by: str | None = None  # the Airflow user who answered
    at: str | None = None  # when (ISO 8601)
    fingerprint: str | None = None
    timeout_hours: float | None = None
    due: int = 0  # the roles due to be dropped that the question was about

    @property
    def may_drop(self) -> bool:
        return self.outcome == APPROVED

    @property
    def label(self) -> str:
        """For an alert's subject: ``drops approved``, ``drops rejected``, ``drops timed out``."""
        return "drops " + self.outcome.replace("_", " ")


def decision(
    answer: Mapping[str, Any] | None, asked: Mapping[str, Any] | None, timeout_hours: float
) -> Decision | None:
    """The decision from the approval task's result (``answer``) and what it asked (``asked``).

    A timeout takes the default option, Reject, with nobody as the responder. No answer at all (the
    task marked successful by hand, say) is no decision, and nothing may be dropped on it.
    """
    fp = (asked or {}).get("fingerprint")
    due = int((asked or {}).get("total") or 0)
    if asked is not None and not asked.get("asked"):
        return Decision(NOT_ASKED, fingerprint=fp, due=due)
    if not answer or not answer.get("chosen_options"):
        return None
    user = answer.get("responded_by_user") or {}
    by = user.get("name") or user.get("id")
    at = stamp(answer.get("responded_at"))
    if answer.get("timed_out"):
        return Decision(TIMED_OUT, None, at, fp, timeout_hours, due)
    if answer["chosen_options"] == ["Approve"] and by:
        return Decision(APPROVED, by, at, fp, due=due)
    return Decision(REJECTED, by or "an unknown user", at, fp, due=due)


def stamp(value: Any) -> str | None:
    """``responded_at`` as text: a datetime in the task, already a string when read from XCom."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value) if value else None


def request(
    cluster_id: str,
    run_id: str,
    preview: Sequence[Mapping[str, Any]],
    total: int,
    timeout_hours: float,
    link: str | None,
) -> Alert:
    """The question: subject and body of the approval task, and of the alert that asks it.

    ``preview`` (a sample of ``total`` roles when long) says per role what the drop would do now:
    ``would_drop``, or only flag ReadyToDelete because objects depend on the role.
    """
    drops = [o for o in preview if o.get("action") == _WOULD_DROP]
    flags = [o for o in preview if o.get("action") != _WOULD_DROP]
    subject = f"[inactive_users] {cluster_id}: approve dropping {total} inactive role{'s' * (total != 1)}"
    lines = [
        f"Cluster: {cluster_id}",
        f"Run: {run_id}",
        "",
        f"This run would DROP ROLE {len(drops)} of the roles below, which cannot be undone. Approve: "
        "they are dropped now. Reject: nothing is dropped, and they stay locked. Without an answer "
        f"within {timeout_hours:g} hours the drops are rejected.",
    ]
    if link:
        lines += ["", f"Answer in Airflow: {link}"]
    lines += ["", f"Would be dropped (DROP ROLE): {len(drops)}"]
    lines += [_line(o) for o in drops[:MAX_LISTED]]
    if flags:
        lines += ["", f"Would only be flagged ReadyToDelete (objects depend on them): {len(flags)}"]
        lines += [_line(o) for o in flags[:MAX_LISTED]]
    unlisted = total - min(len(drops), MAX_LISTED) - min(len(flags), MAX_LISTED)
    if unlisted > 0:
        lines += [
            "",
            f"... and {unlisted} more not listed here: the approve_drops task's log lists every one",
        ]
    return Alert(
        scrub(subject[:100]), scrub("\n".join(lines)), "the approve_drops task's log lists every role"
    )


def verbatim(text: str) -> str:
    """``text`` as one Markdown code block, so the UI shows role names as they are.

    The approval page renders its body as Markdown; a role name may hold ``*``, ``[..](..)`` or
    backticks. The fence is longer than any run of backticks in the text, so nothing closes it.
    """
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _line(o: Mapping[str, Any]) -> str:
    line = f"  - {o['name']}: last login {o.get('last_login') or 'unknown'}"
    if o.get("reason"):
        line += f"; {o['reason']}"
    if o.get("blockers"):
        line += f"; blocked by: {o['blockers']}"
    return line


def summary_line(d: Decision) -> str:
    """One line for the alert and the report: what happened to the drops, and who decided."""
    roles = f"{d.due} role{'s' * (d.due != 1)} due to be dropped"
    if d.outcome == APPROVED:
        return f"Drops APPROVED by {d.by} at {d.at}: the {roles} were dropped or flagged as listed."
    if d.outcome == REJECTED:
        return f"Drops REJECTED by {d.by} at {d.at}: nothing was dropped; the {roles} stay locked."
    if d.outcome == TIMED_OUT:
        return (
            f"Drops TIMED OUT: nobody answered approve_drops within {d.timeout_hours:g} hours "
            f"(at {d.at}); nothing was dropped; the {roles} stay locked."
        )
    return f"No drop to approve: each of the {roles} could only be flagged ReadyToDelete."
