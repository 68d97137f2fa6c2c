"""The I/O of the evidence: read the state schema after a run's actions, write the objects to S3.

The reads are a fixed number of statements whatever the number of roles, in one read-only
REPEATABLE READ transaction so the CSV is one consistent picture. The writes go through the
amazon provider's ``S3Hook`` with server-side encryption requested on every object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from inactive_users.core.alerts import scrub
from inactive_users.core.config import EvidenceConfig
from inactive_users.core.evidence import RoleFacts
from inactive_users.core.policy import READY_TO_DELETE, Exclusions, exclusion_reason
from inactive_users.postgres.state import fetch_roles, job_user, t

# S3 error codes a retry cannot fix: the task fails at once, naming the bucket, key and cause.
PERMANENT_S3_ERRORS = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidBucketName",
        "InvalidArgument",
        "KMS.NotFoundException",
        "KMS.DisabledException",
        "KMS.InvalidKeyUsageException",
        "NotFoundException",
        "KMSKeyNotFound",
    }
)


class EvidenceError(RuntimeError):
    """The evidence of a run could not be written; the message names bucket, key and cause."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Snapshot:
    """The state schema after the run: every tracked role, and those this run removed."""

    roles: list[RoleFacts]
    job_user: dict[str, str]
    read_at: datetime


# Tracked roles, with the blockers recorded when each ReadyToDelete role was flagged.
_STATUS_SQL = """
SELECT s.user_name, s.role_oid::bigint, s.status, s.last_login_time, s.status_reason, b.blockers
FROM {status} s
LEFT JOIN LATERAL (
    SELECT h.detail->>'blockers' AS blockers FROM {history} h
    WHERE s.status = %s AND h.user_name = s.user_name AND h.action = 'ready_to_delete'
    ORDER BY h.at DESC, h.id DESC LIMIT 1
) b ON true
"""

# This run's history rows, in order; a dropped role's last login is in its drop row.
_HISTORY_SQL = """
SELECT action, user_name, role_oid::bigint, coalesce(reason, ''), detail->>'last_login'
FROM {history} WHERE run_id = %s ORDER BY id
"""


def snapshot(
    conn: psycopg.Connection, schema: str, run_id: str, exclusions: Exclusions, exempt_groups: Sequence[str]
) -> Snapshot:
    """Read every tracked role, this run's history and the catalog in one consistent snapshot."""
    history_t, status_t = t(schema, "action_history"), t(schema, "user_login_status")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        status_rows = conn.execute(
            sql.SQL(_STATUS_SQL).format(status=status_t, history=history_t), [READY_TO_DELETE]
        ).fetchall()
        history = conn.execute(sql.SQL(_HISTORY_SQL).format(history=history_t), [run_id]).fetchall()
        roles = fetch_roles(conn, exempt_groups)
        session_user, current_user = job_user(conn)
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None

    by_oid: dict[int, list[tuple[str, str]]] = {}
    by_name: dict[str, list[tuple[str, str]]] = {}
    departed: dict[tuple[str, int | None], tuple[list[tuple[str, str]], datetime | None]] = {}
    tracked_oids = {r[1] for r in status_rows if r[1] is not None}
    tracked_names = {r[0] for r in status_rows}
    for action, name, oid, reason, last_login in history:
        entry = (action, reason)
        if oid is not None and oid in tracked_oids:
            by_oid.setdefault(oid, []).append(entry)
        elif oid is None and name in tracked_names:
            by_name.setdefault(name, []).append(entry)
        else:  # dropped or no longer tracked: the status table has no row for it any more
            acts, last = departed.setdefault((name, oid), ([], None))
            acts.append(entry)
            if last_login:
                departed[(name, oid)] = (acts, datetime.fromisoformat(last_login))

    facts = []
    for name, oid, status, last_login, reason, blockers in status_rows:
        role = roles.get(oid) if oid is not None else None
        exists = role is not None and role.name == name
        protection = exclusion_reason(role, exclusions) if role is not None and exists else None
        actions = tuple(by_oid.get(oid, []) if oid is not None else by_name.get(name, []))
        facts.append(RoleFacts(name, oid, status, last_login, reason, actions, blockers, protection, exists))
    for (name, oid), (acts, last) in departed.items():
        facts.append(RoleFacts(name, oid, None, last, None, tuple(acts)))
    return Snapshot(facts, {"session_user": session_user, "current_user": current_user}, row[0])


def encryption_args(ev: EvidenceConfig) -> dict[str, str]:
    """The server-side encryption requested on each object: SSE-KMS with the key, or SSE-S3.

    Passed as the hook's ``extra_args`` rather than ``encrypt=True``, which would set AES256 and
    so override a KMS request.
    """
    if ev.kms_key_id:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": ev.kms_key_id}
    return {"ServerSideEncryption": "AES256"}


def upload(
    ev: EvidenceConfig, objects: Sequence[tuple[str, bytes, str]], metadata: Mapping[str, str]
) -> None:
    """Write each ``(key, body, content type)`` to the evidence bucket, encrypted, in order.

    ``replace=True``: a key holds one run's evidence (its run id is in the name), and the only
    writer of an existing key is a retry of the same run's task, which must succeed. Without
    replace the hook would also need ``s3:GetObject`` to check first. Keep older versions with S3
    Versioning or Object Lock (README).
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    for key, body, content_type in objects:
        extra: dict[str, Any] = {
            **encryption_args(ev),
            "ContentType": content_type,
            "Metadata": dict(metadata),
        }
        hook = S3Hook(aws_conn_id=ev.aws_conn_id, extra_args=extra)
        try:
            hook.load_bytes(body, key=key, bucket_name=ev.bucket, replace=True)
        except Exception as exc:
            code = _error_code(exc)
            raise EvidenceError(
                f"evidence not written to s3://{ev.bucket}/{key}: {code or type(exc).__name__}: "
                f"{scrub(_cause(exc))}",
                permanent=code in PERMANENT_S3_ERRORS,
            ) from exc


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code of ``exc`` or of the ``ClientError`` it wraps (boto3's S3UploadFailedError)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code") or "") or None
        seen = seen.__cause__ or seen.__context__
    return None


def _cause(exc: BaseException) -> str:
    seen: BaseException = exc
    while (inner := seen.__cause__ or seen.__context__) is not None:
        seen = inner
    return str(seen)
