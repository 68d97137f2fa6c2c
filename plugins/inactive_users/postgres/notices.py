"""Upcoming locks and drops: what the last alert listed, and which role contacts were told.

A run with nothing to do alerts only when its upcoming set differs from the last one alerted, so
nobody gets the same list every day; a role's own contact (``COMMENT ON ROLE r IS '... contact:
a@b.c ...'``) is told once per upcoming action and due date. Both are remembered in the state
schema (``upcoming_alert``, ``contact_notice``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from inactive_users.core.policy import Upcoming
from inactive_users.postgres.state import t

#: ``contact: someone@example.com`` anywhere in a role's comment (the first one counts).
_CONTACT = re.compile(r"\bcontact\s*:\s*([A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ContactNotice:
    """A notice owed to one role's contact: the role will be locked or dropped on ``due``."""

    name: str
    action: str
    due: datetime
    last_login: datetime
    contact: str

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "action": self.action,
            "due": self.due.isoformat(),
            "last_login": self.last_login.isoformat(),
            "contact": self.contact,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> ContactNotice:
        return cls(
            d["name"],
            d["action"],
            datetime.fromisoformat(d["due"]),
            datetime.fromisoformat(d["last_login"]),
            d["contact"],
        )


def fingerprint(items: Iterable[Upcoming]) -> str:
    """Identifies an upcoming set: its roles, their actions and due days (not the time of day)."""
    lines = sorted(f"{u.action}\t{u.due.date().isoformat()}\t{u.name}" for u in items)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def contact_address(comment: str | None) -> str | None:
    """The address a role's comment names after ``contact:``, or None."""
    match = _CONTACT.search(comment or "")
    return match.group(1) if match else None


def as_sample(items: Sequence[Upcoming]) -> list[dict[str, Any]]:
    """JSON-safe rows for XCom and the alert (soonest first, as the plan keeps them)."""
    return [
        {"name": u.name, "action": u.action, "due": u.due.isoformat(), "last_login": u.last_login.isoformat()}
        for u in items
    ]


def _tables_exist(conn: psycopg.Connection, schema: str) -> bool:
    """A dry run on a cluster never run for real has no state schema (its migration rolled back)."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [t(schema, "contact_notice").as_string(conn)]
    ).fetchone()
    return bool(row and row[0])


def last_alerted(conn: psycopg.Connection, schema: str) -> str | None:
    """The fingerprint of the upcoming set the last alert listed, or None if none was alerted."""
    if not _tables_exist(conn, schema):
        return None
    row = conn.execute(sql.SQL("SELECT fingerprint FROM {}").format(t(schema, "upcoming_alert"))).fetchone()
    return str(row[0]) if row else None


def record_alerted(conn: psycopg.Connection, schema: str, fingerprint: str, roles: int, run_id: str) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (fingerprint, roles, run_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (singleton) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, "
            "roles = EXCLUDED.roles, run_id = EXCLUDED.run_id, "
            "alerted_at = now()"
        ).format(t(schema, "upcoming_alert")),
        [fingerprint, roles, run_id],
    )


def owed(conn: psycopg.Connection, schema: str, items: Sequence[Upcoming]) -> list[ContactNotice]:
    """The notices owed for ``items``: roles whose comment names a contact not yet told of this due date.

    One round trip whatever the number of roles; the comment is read now, from ``pg_authid``.
    """
    if not items or not _tables_exist(conn, schema):
        return []
    rows = conn.execute(
        sql.SQL(
            "SELECT u.name, u.action, u.due, u.last_login, shobj_description(u.oid, 'pg_authid') "
            "FROM unnest(%s::text[], %s::oid[], %s::text[], %s::timestamptz[], %s::timestamptz[]) "
            "AS u(name, oid, action, due, last_login) "
            "WHERE NOT EXISTS (SELECT 1 FROM {} n WHERE n.user_name = u.name AND n.action = u.action "
            "AND n.due = (u.due AT TIME ZONE 'UTC')::date) "
            "ORDER BY u.due, u.name"
        ).format(t(schema, "contact_notice")),
        [
            [u.name for u in items],
            [u.oid for u in items],
            [u.action for u in items],
            [u.due for u in items],
            [u.last_login for u in items],
        ],
    ).fetchall()
    notices = []
    for name, action, due, last_login, comment in rows:
        address = contact_address(comment)
        if address:
            notices.append(ContactNotice(name, action, due, last_login, address))
    return notices


def claim_notice(conn: psycopg.Connection, schema: str, notice: ContactNotice, run_id: str) -> bool:
    """Record ``notice`` as sent before sending it; False if a run (or a retry) sent it already.

    Rows whose due day passed a year ago are pruned.
    """
    table = t(schema, "contact_notice")
    conn.execute(sql.SQL("DELETE FROM {} WHERE due < current_date - 366").format(table))
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {} (user_name, action, due, contact, run_id) "
            "VALUES (%s, %s, (%s::timestamptz AT TIME ZONE 'UTC')::date, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING true"
        ).format(table),
        [notice.name, notice.action, notice.due, notice.contact, run_id],
    ).fetchone()
    return row is not None


def release_notice(conn: psycopg.Connection, schema: str, notice: ContactNotice, run_id: str) -> None:
    """Forget a claimed notice that could not be sent, so the next run owes it again."""
    conn.execute(
        sql.SQL(
            "DELETE FROM {} WHERE user_name = %s AND action = %s "
            "AND due = (%s::timestamptz AT TIME ZONE 'UTC')::date AND run_id = %s"
        ).format(t(schema, "contact_notice")),
        [notice.name, notice.action, notice.due, run_id],
    )
