"""Tell the DBA: compose the alert (pure); ``face.notify`` sends it through SNS, Slack and e-mail.

Messages carry role names, actions, last-login times and blockers; never connection details.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from inactive_users.core.exposure import REFUSED, Report, alert_lines, escalation_label

log = logging.getLogger("inactive_users")

#: Outcome actions worth telling someone about (a re-check of an already flagged role is not).
ALERTING = {
    "locked": "Locked",
    "dropped": "Dropped (DROP ROLE)",
    "ready_to_delete": "Flagged ReadyToDelete (not dropped: objects depend on the role)",
    "failed": "FAILED (the role was left as it was)",
    "would_lock": "Would lock",
    "would_drop": "Would drop (DROP ROLE)",
    "would_flag_ready_to_delete": "Would flag ReadyToDelete (objects depend on the role)",
}
_ORDER = list(ALERTING)
_CREDENTIALS_IN_URI = re.compile(r"(\w+://)[^/\s:@]+:[^/\s@]+@")
_PASSWORD_PAIR = re.compile(r"(password\s*[=:]\s*)\S+", re.IGNORECASE)
# A Slack webhook URL is its own credential: everything after /services/ (or /workflows/,
# /triggers/) is the token; the token alone (T.../B.../secret) too.
_WEBHOOK_URL = re.compile(r"(\w+://[^/\s]+/(?:services|workflows|triggers)/)[^\s'\"<>]+")
_WEBHOOK_TOKEN = re.compile(r"\bT[A-Z0-9]+/B[A-Z0-9]+/\w+")

#: Slack truncates a message's text past 40,000 characters (cutting off the end of the alert).
SLACK_TEXT_LIMIT = 40_000
#: SNS refuses a message over 256 KiB (its UTF-8 bytes); many roles with named blockers reach it.
SNS_MESSAGE_LIMIT = 262_144


@dataclass(frozen=True)
class Alert:
    subject: str
    body: str
    #: Where the complete record is, for a notifier that has to cut the body short (Slack).
    full_record: str = "the task log in Airflow has the full alert"


def alerting_outcomes(outcomes: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [o for o in outcomes if o.get("action") in ALERTING]


def compose(
    cluster_id: str,
    run_id: str,
    outcomes: Sequence[Mapping[str, Any]],
    *,
    dry_run: bool,
    as_of: str | None = None,
    totals: Mapping[str, int] | None = None,
    upcoming: Sequence[Mapping[str, Any]] = (),
    upcoming_total: int | None = None,
    warn_before_days: int | None = None,
    decision: tuple[str, str] | None = None,
    instances: Sequence[str] = (),
) -> Alert | None:
    """The alert for one run, or None when nobody was locked, dropped, flagged or failed, no
    approval was decided and none is upcoming.

    ``decision``: what a DBA decided on the run's drops, as a label for the subject and a line.
    ``instances``: every instance whose logins and open sessions the run read (replicas too).

    ``outcomes`` may be a sample: ``totals`` then gives the complete count of each action, which
    the subject and each group's heading state, and each group says how many it does not list.
    ``upcoming`` (a sample of ``upcoming_total``) are the roles reaching a threshold within
    ``warn_before_days``, listed after the actions.
    """
    items = alerting_outcomes(outcomes)
    counts: dict[str, int] = {}
    for o in items:
        counts[o["action"]] = counts.get(o["action"], 0) + 1
    for action, n in (totals or {}).items():
        if action in ALERTING and n:
            counts[action] = max(n, counts.get(action, 0))
    n_upcoming = max(upcoming_total or 0, len(upcoming))
    if not counts and not n_upcoming and decision is None:
        return None
    summary = ", ".join(
        [f"{n} {a.replace('_', ' ')}" for a, n in sorted(counts.items(), key=lambda kv: _ORDER.index(kv[0]))]
        + ([decision[0]] if decision else [])
    )
    if n_upcoming:
        summary = f"{summary}, {n_upcoming} upcoming" if summary else f"{n_upcoming} upcoming, no action"
    label = "DRY RUN " if dry_run else ""
    subject = subject_line(f"[inactive_users] {label}{cluster_id}: {summary}")
    lines = [f"Cluster: {cluster_id}", f"Run: {run_id}"]
    if instances:
        lines.append(f"Logins and open sessions read on: {', '.join(instances)}")
    if dry_run:
        lines.append(
            "DRY RUN: nothing was changed. This is the plan a real run would carry out"
            + (f" at {as_of}." if as_of else ".")
        )
    if decision:
        lines += ["", decision[1]]
    for action in _ORDER:
        if action not in counts:
            continue
        group = [o for o in items if o["action"] == action]
        lines += ["", f"{ALERTING[action]}: {counts[action]}"]
        for o in group:
            line = f"  - {o['name']}: last login {o.get('last_login') or 'unknown'}"
            if o.get("reason"):
                line += f"; {o['reason']}"
            if o.get("blockers"):
                line += f"; blocked by: {o['blockers']}"
            lines.append(line)
        if counts[action] > len(group):
            where = (
                "the plan task's log lists them"
                if dry_run
                else f"action_history lists them (run_id = '{run_id}')"
            )
            lines.append(f"  ... and {counts[action] - len(group)} more not listed here: {where}")
    if n_upcoming:
        lines += ["", *upcoming_section(upcoming, n_upcoming, warn_before_days)]
    lines += [
        "",
        "Unlock a role by triggering this DAG with unlock_users; finish a ReadyToDelete role by hand "
        "(REASSIGN OWNED / DROP OWNED in each database listed, then DROP ROLE).",
    ]
    listing = (
        "the plan task's log every planned role"
        if dry_run
        else f"action_history every action (run_id = '{run_id}')"
    )
    full_record = f"the alert task's log has this alert in full, {listing}"
    return Alert(subject, scrub("\n".join(lines)), scrub(full_record))


_WILL = {
    "lock": "will be locked",
    "drop": "will be dropped (or flagged ReadyToDelete if objects depend on it)",
}


def upcoming_section(
    upcoming: Sequence[Mapping[str, Any]], total: int, warn_before_days: int | None
) -> list[str]:
    """The ``Upcoming`` lines: each role, its last login and when it will be locked or dropped."""
    within = f" (within {warn_before_days} days)" if warn_before_days else ""
    lines = [f"Upcoming{within}: {total}"]
    for u in upcoming:
        lines.append(
            f"  - {u['name']}: {_WILL.get(u['action'], u['action'])} on {_day(u['due'])}; "
            f"last login {u.get('last_login') or 'unknown'}"
        )
    if total > len(upcoming):
        lines.append(
            f"  ... and {total - len(upcoming)} more not listed here: the plan task's log lists them"
        )
    lines.append("  A login before that date keeps the role active; no action is needed for roles in use.")
    return lines


def _day(stamp: str) -> str:
    return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M UTC")


def compose_contact_notice(cluster_id: str, notice: Mapping[str, str]) -> Alert:
    """The short notice to one role's own contact, named in the role's comment."""
    will = "locked (it can be unlocked by the DBA)" if notice["action"] == "lock" else "dropped"
    body = (
        f"The database login {notice['name']} on cluster {cluster_id} was last used "
        f"{notice['last_login']}.\n\nIt will be {will} on {_day(notice['due'])}, when it will have been "
        "unused for longer than the cluster's policy allows.\n\nIf it is still needed, log in with it "
        "before then, or ask the DBA team to exclude it. If it is not needed, nothing is to be done.\n\n"
        "You get this notice because the role's comment names this address as its contact."
    )
    done = "locked" if notice["action"] == "lock" else "dropped"
    return Alert(subject_line(f"[inactive_users] {cluster_id}: login {notice['name']} will be {done}"), body)


def compose_failure(
    cluster_id: str,
    run_id: str,
    task_id: str,
    error: BaseException | str | None,
    exposure: Report | str | None = None,
    *,
    reason: str | None = None,
    outcome: str = REFUSED,
    max_unprotected_days: float = 3,
) -> Alert:
    """The alert of a failed task; with ``exposure`` (the run did not act) what stays exposed and
    since when, or why that could not be read (a string), with ``reason`` (the refusal as the check
    said it) and its fix. Past ``max_unprotected_days`` without a run that acted, the subject says so."""
    text = scrub(f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error))
    body = (
        f"Cluster: {cluster_id}\nRun: {run_id}\nTask: {task_id}\n\n"
        f"The task failed: {text[:2000]}\n\nSee the task log in Airflow for details."
    )
    subject = f"[inactive_users] FAILED {cluster_id}: task {task_id}"
    if isinstance(exposure, Report):
        why = scrub(reason) if reason else text
        lines = alert_lines(exposure, reason=why, outcome=outcome, max_unprotected_days=max_unprotected_days)
        body += "\n\n" + "\n".join(lines)
        label = escalation_label(exposure, max_unprotected_days)
        if label:
            subject = f"[inactive_users] {label} {cluster_id}: task {task_id} failed"
    elif exposure is not None:
        body += f"\n\nExposure: unknown: {scrub(exposure)[:1000]}"
    return Alert(subject_line(subject), body)


def scrub(text: str) -> str:
    """Remove credentials that might ride along in an error message."""
    text = _CREDENTIALS_IN_URI.sub(r"\1***@", text)
    text = _WEBHOOK_TOKEN.sub("***", _WEBHOOK_URL.sub(r"\1***", text))
    return _PASSWORD_PAIR.sub(r"\1***", text)


def slack_text(alert: Alert, limit: int = SLACK_TEXT_LIMIT) -> str:
    """The Slack message: the subject in bold, the body in a code block.

    A body too long for Slack is cut at a line, with a note saying how much is missing and where
    the full record is, rather than letting Slack drop the end silently.
    """

    def note(missing: int) -> str:
        return _slack_escape(
            f"\n... {missing} more lines not shown here (Slack takes at most {limit:,} characters): "
            f"{alert.full_record}."
        )

    head, tail = f"*{_slack_escape(alert.subject)}*\n```", "```"
    return _cut(_slack_escape(alert.body).split("\n"), head, tail, limit, _slack_len, note)


def sns_message(alert: Alert, limit: int = SNS_MESSAGE_LIMIT) -> str:
    """The body as SNS takes it: past ``limit`` bytes (SNS refuses a longer message) it is cut at a
    line, with a note saying how much is missing and where the full record is.

    Measured as the amazon provider's ``SnsHook`` sends it: inside ``{"default": ...}`` as JSON, so
    a line break counts two bytes and a non-ASCII character six or twelve.
    """

    def note(missing: int) -> str:
        return (
            f"\n... {missing} more lines not shown here (SNS takes at most {limit:,} bytes): "
            f"{alert.full_record}."
        )

    return _cut(alert.body.split("\n"), "", "", limit - _SNS_ENVELOPE, _sns_len, note)


def _cut(
    lines: Sequence[str],
    head: str,
    tail: str,
    limit: int,
    length: Callable[[str], int],
    note: Callable[[int], str],
) -> str:
    """``head``, as many whole ``lines`` as fit within ``limit`` (measured by ``length``), ``tail``,
    and ``note(lines left out)`` when any were."""
    text = head + "\n".join(lines) + tail
    if length(text) <= limit:
        return text
    budget = limit - length(head + tail + note(len(lines)))
    kept = 0
    for line in lines:
        budget -= length(line) + length("\n")
        if budget < 0:
            break
        kept += 1
    return head + "\n".join(lines[:kept]) + tail + note(len(lines) - kept)


_SNS_ENVELOPE = len(json.dumps({"default": ""}))


def _sns_len(text: str) -> int:
    return len(json.dumps(text)) - 2  # ASCII (non-ASCII is escaped), without the quotes


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>): a role name must not become one.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_len(text: str) -> int:
    # Counted in UTF-16 code units, as Slack's JavaScript does: an emoji in a role name counts twice.
    return len(text.encode("utf-16-le")) // 2


def subject_line(text: str) -> str:
    # SNS subjects: at most 100 printable ASCII characters, no line breaks.
    ascii_only = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return ascii_only if len(ascii_only) <= 100 else ascii_only[:97] + "..."
