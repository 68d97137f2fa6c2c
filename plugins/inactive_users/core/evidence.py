"""Evidence for auditors: one CSV of every tracked role after a run, and a JSON manifest (pure).

PCI DSS 8.2.6 asks the assessor to "examine user accounts and last logon information"; NIST
800-53 AC-2(3) asks that accounts be disabled after a defined time of inactivity. The CSV is that
examination, as the job saw it at the end of the run: each role's status, last login, days
without one, what this run did to it or why it did nothing, and what protects it. The manifest
says which run and settings produced it and carries the CSV's SHA-256, so a copy can be checked.

Plain data in, bytes out: ``evidencestore`` reads the state schema and writes to S3.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from inactive_users.core.policy import ACTIVE, LOCKED, READY_TO_DELETE, Thresholds

FORMAT = "inactive_users evidence v1"
COLUMNS = (
    "user_name",
    "status",
    "last_login_time",
    "days_inactive",
    "action",
    "action_detail",
    "protection",
    "blockers",
    "status_reason",
    "role_oid",
)
#: Status of a role that left the status table during the run (the table no longer lists it).
DROPPED = "Dropped"
NOT_TRACKED = "NotTracked"
NO_ACTION = "none"

# OWASP "CSV Injection": a cell starting with one of these is a formula to Excel, LibreOffice and
# Google Sheets (= + - @, and tab / carriage return, which some of them skip before looking).
# Such a cell is written with a single quote in front, as OWASP recommends, so a role named
# "=HYPERLINK(...)" is shown as text, never evaluated. A cell that starts with a quote gets one
# too, so that removing exactly one leading quote (``unescape_cell``) always gives the value back.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
# Characters kept as they are in an object key: AWS's "safe characters" for key names.
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class RoleFacts:
    """What the state schema says about one role once the run's actions are done."""

    user_name: str
    role_oid: int | None
    status: str | None  # None: the role left the status table during this run
    last_login: datetime | None
    status_reason: str | None
    actions: tuple[tuple[str, str], ...] = ()  # this run's action_history rows: (action, reason)
    blockers: str | None = None  # what blocks the drop of a ReadyToDelete role
    protection: str | None = None  # an exclusion that keeps the role from being acted on
    exists: bool = True  # the role is in pg_roles under this OID and name


@dataclass(frozen=True)
class EvidenceRow:
    user_name: str
    status: str
    last_login_time: str
    days_inactive: int | None
    action: str
    action_detail: str
    protection: str
    blockers: str
    status_reason: str
    role_oid: int | None

    def cells(self) -> list[str]:
        return [_cell(getattr(self, c)) for c in COLUMNS]


def build_rows(
    facts: Iterable[RoleFacts],
    *,
    as_of: datetime,
    thresholds: Thresholds,
    kept_session: Collection[str] = (),
    kept_settling: Collection[str] = (),
    outcomes: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[EvidenceRow]:
    """One row per role, sorted by name; ``as_of`` is the time the run's plan evaluated.

    ``kept_session`` / ``kept_settling``: roles the plan kept (open session, login still settling);
    ``outcomes``: the action tasks' outcomes by role, for those that write no history row
    (skipped since the plan, still ReadyToDelete).
    """
    outcomes = outcomes or {}
    rows = []
    for f in facts:
        status = f.status or (DROPPED if any(a == "drop" for a, _ in f.actions) else NOT_TRACKED)
        days = (as_of - f.last_login).days if f.last_login is not None else None
        if f.actions:
            action = ", ".join(a for a, _ in f.actions)
            detail = "; ".join(r for _, r in f.actions if r)
        elif (o := outcomes.get(f.user_name)) and o.get("action") in ("skipped", "still_ready_to_delete"):
            action, detail = NO_ACTION, f"{o['action']}: {o.get('reason') or ''}".rstrip(": ")
        else:
            action = NO_ACTION
            detail = why_none(f, status, days, thresholds, kept_session, kept_settling)
        rows.append(
            EvidenceRow(
                user_name=f.user_name,
                status=status,
                last_login_time=_iso(f.last_login),
                days_inactive=days,
                action=action,
                action_detail=detail,
                protection=_protection(f, kept_session, kept_settling),
                blockers=(f.blockers or "") if status == READY_TO_DELETE else "",
                status_reason=f.status_reason or "",
                role_oid=f.role_oid,
            )
        )
    rows.sort(key=lambda r: r.user_name)
    return rows


def why_none(
    f: RoleFacts,
    status: str,
    days: int | None,
    t: Thresholds,
    kept_session: Collection[str],
    kept_settling: Collection[str],
) -> str:
    """Why this run did nothing to a role, in the terms of the thresholds."""
    if f.status is not None and not f.exists:
        return "the role no longer exists under this name; the next run's sync reconciles it"
    if f.protection:
        return f"excluded: {f.protection}"
    if f.user_name in kept_session:
        return "kept: a session was open when the run planned"
    if f.user_name in kept_settling:
        return "kept: a login was still settling when the run planned"
    if days is None:
        return "no last login recorded"
    if status == ACTIVE:
        if t.lock_after_days is None:
            return f"active {days} days without a login; locking is off (lock_after_days: null)"
        if days < t.lock_after_days:
            return f"{days} days without a login, below lock_after_days ({t.lock_after_days})"
        return f"{days} days without a login reached lock_after_days ({t.lock_after_days}) after the plan"
    if status == LOCKED:
        if t.delete_after_days is None:
            return f"locked earlier; dropping is off (delete_after_days: null), {days} days without a login"
        if days < t.delete_after_days:
            return (
                f"locked earlier; {days} days without a login, "
                f"below delete_after_days ({t.delete_after_days})"
            )
        return f"locked earlier; reached delete_after_days ({t.delete_after_days}) after the plan"
    if status == READY_TO_DELETE:
        return "ReadyToDelete earlier; the drop waits for its blockers"
    return "not tracked any more"


def _protection(f: RoleFacts, kept_session: Collection[str], kept_settling: Collection[str]) -> str:
    if f.protection:
        return f.protection
    if f.user_name in kept_session:
        return "open session"
    if f.user_name in kept_settling:
        return "login still settling"
    return ""


def escape_cell(value: str) -> str:
    """The cell as written: a leading formula character (or quote) gets a ``'`` in front (OWASP)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def unescape_cell(value: str) -> str:
    """The value a written cell stands for (the inverse of ``escape_cell``)."""
    return value[1:] if value.startswith("'") else value


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return escape_cell(str(value))


def _iso(ts: datetime | None) -> str:
    if ts is None:
        return ""
    return ts.astimezone(UTC).isoformat(timespec="seconds")


def to_csv(rows: Sequence[EvidenceRow]) -> bytes:
    """RFC 4180 CSV in UTF-8 with a byte-order mark (so spreadsheets read non-ASCII names right).

    Every field is quoted: names with commas, quotes, line breaks or spaces survive a round trip
    through any CSV reader.
    """
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(row.cells())
    return buf.getvalue().encode("utf-8-sig")


def read_csv(data: bytes) -> list[dict[str, str]]:
    """The rows of an evidence CSV with every cell unescaped (for checks and tests)."""
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    return [{k: unescape_cell(v) for k, v in row.items()} for row in reader]


def key_name(run_id: str) -> str:
    """``run_id`` as an object name: AWS's safe characters only, still unique.

    Airflow run ids hold ``:`` and ``+`` (``manual__2026-12-02T06:00:00+00:00``), which S3 accepts
    but which tools and file systems mangle (``+`` is a space in URL queries, ``:`` is not allowed
    on Windows). Each other character becomes ``_``; when anything was replaced, the first 8 hex
    digits of the run id's SHA-256 are added so two run ids never share a name. The manifest
    keeps the exact run id.
    """
    safe = _UNSAFE_KEY_CHARS.sub("_", run_id)
    if safe == run_id:
        return safe
    return f"{safe}.{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def object_keys(prefix: str, cluster_id: str, day: date, run_id: str) -> tuple[str, str]:
    """The CSV's and the manifest's keys: ``<prefix><cluster_id>/<YYYY-MM-DD>/<run>.csv|.json``."""
    base = f"{prefix}{cluster_id}/{day.isoformat()}/{key_name(run_id)}"
    return base + ".csv", base + ".json"


def counts(rows: Sequence[EvidenceRow]) -> tuple[dict[str, int], dict[str, int]]:
    """Rows by status, and this run's actions by kind (``none``: rows it did nothing to)."""
    by_status = Counter(r.status for r in rows)
    by_action: Counter[str] = Counter()
    for r in rows:
        by_action.update(r.action.split(", "))
    return dict(sorted(by_status.items())), dict(sorted(by_action.items()))


def manifest(
    *,
    cluster_id: str,
    dag_id: str,
    run_id: str,
    logical_date: datetime | None,
    evaluated_at: datetime,
    settings: Mapping[str, Any],
    rows: Sequence[EvidenceRow],
    csv_bytes: bytes,
    csv_uri: str,
    job_user: Mapping[str, str],
    encryption: Mapping[str, str],
    written_at: datetime,
    instances_read: Sequence[Mapping[str, Any]] = (),
    unprotected_before: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON manifest of one run's evidence: what produced the CSV, and its checksum.

    ``instances_read``: every instance whose logins and sessions the run read, with where (its
    log group and region, the streams, where its sessions were read). ``unprotected_before``: how
    long no run had acted before this one (``exposure.manifest_entry``), or None when the run
    before it acted or had nothing to do.
    """
    by_status, by_action = counts(rows)
    doc = {
        "format": FORMAT,
        "cluster_id": cluster_id,
        "dag_id": dag_id,
        "run_id": run_id,
        "logical_date": _iso(logical_date) or None,
        "evaluated_at": _iso(evaluated_at),
        "written_at": _iso(written_at),
        "job_user": dict(job_user),
        "settings": dict(settings),
        "instances_read": [dict(i) for i in instances_read],
        "roles": len(rows),
        "counts_by_status": by_status,
        "counts_by_action": by_action,
        "unprotected_before_run": dict(unprotected_before) if unprotected_before else None,
        "csv": {
            "uri": csv_uri,
            "columns": list(COLUMNS),
            "bytes": len(csv_bytes),
            "sha256": hashlib.sha256(csv_bytes).hexdigest(),
            "encoding": "utf-8 with BOM; cells starting with = + - @ tab CR or ' carry one leading '",
        },
        "server_side_encryption": dict(encryption),
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
