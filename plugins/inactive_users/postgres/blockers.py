"""What blocks ``DROP ROLE``, by name: the objects of each database that depend on a role.

Whether a role is blocked is decided from ``pg_shdepend`` alone, on the action's own connection
(it is shared by every database, so one query sees the whole cluster). The names come after, and
only say more: ``pg_describe_object`` reads the catalogs of the database it runs in, so each
database holding dependencies is asked on its own connection (one set-based query for all roles),
and cluster-wide objects (databases, tablespaces, parameters) on the action's connection. A
database that cannot be asked (``datallowconn`` false, no ``CONNECT`` privilege, dropped meanwhile)
keeps the count form with the reason: the role stays blocked whatever the naming does.

Names are described with ``search_path = pg_catalog`` so every object outside ``pg_catalog`` is
schema-qualified ("table public.orders"); ``pg_describe_object`` quotes identifiers as needed, and
control characters are escaped here so a hostile name cannot forge a line of an alert.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psycopg

from inactive_users.core.alerts import scrub

log = logging.getLogger("inactive_users")

#: Connects to the named database of the cluster as the job user (the Airflow connection, dbname
#: replaced).
ConnectDatabase = Callable[[str], psycopg.Connection]

#: At most this many objects are named per role, database and kind; the rest are counted.
MAX_NAMED = 10
#: A role's blockers text is cut (at a database or object boundary) past this many characters: it
#: is kept in ``status_reason``, the run's XCom sample and every alert line.
MAX_CHARS = 2000
#: The database of cluster-wide objects (``pg_shdepend.dbid`` 0).
CLUSTER_WIDE = 0

_KIND = {
    "o": "owns",
    "a": "holds privileges on",
    "r": "is named in",
    "i": "has initial privileges on",
}
_ORDER = list(_KIND)

_COUNTS_SQL = """
SELECT d.refobjid::bigint, d.dbid::bigint, db.datname::text, coalesce(db.datallowconn, false),
       d.deptype::text, count(*)
FROM pg_shdepend d
LEFT JOIN pg_database db ON db.oid = d.dbid
WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = ANY(%s::oid[]) AND d.deptype <> 'p'
GROUP BY 1, 2, 3, 4, 5
"""

# One query per database for every role: the first MAX_NAMED descriptions of each role and kind,
# in a stable order, with the count of all of them.
_NAMES_SQL = """
WITH deps AS (
    SELECT d.refobjid::bigint AS role, d.dbid::bigint AS dbid, d.deptype::text AS kind,
           coalesce(pg_describe_object(d.classid, d.objid, d.objsubid),
                    format('%%s object %%s', d.classid::regclass, d.objid)) AS what
    FROM pg_shdepend d
    WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = ANY(%(roles)s::oid[])
      AND d.deptype <> 'p' AND d.dbid = ANY(%(dbids)s::oid[])
), ranked AS (
    SELECT role, dbid, kind, what,
           row_number() OVER (PARTITION BY role, dbid, kind ORDER BY what COLLATE "C") AS n,
           count(*) OVER (PARTITION BY role, dbid, kind) AS total
    FROM deps
)
SELECT role, dbid, kind, total, array_agg(what ORDER BY n) FILTER (WHERE n <= %(limit)s)
FROM ranked
GROUP BY role, dbid, kind, total
"""


@dataclass
class _Database:
    """One database's dependencies of the roles: counts always, names when it could be asked."""

    dbid: int
    name: str | None
    allows_connections: bool
    counts: dict[int, dict[str, int]] = field(default_factory=dict)  # role -> kind -> count
    names: dict[int, dict[str, tuple[int, list[str]]]] = field(default_factory=dict)  # role -> kind -> …
    unavailable: str | None = None

    @property
    def label(self) -> str:
        if self.dbid == CLUSTER_WIDE:
            return "cluster-wide"
        return f"database {_ident(self.name) if self.name is not None else f'(oid {self.dbid})'}"


def blockers(
    conn: psycopg.Connection,
    oids: Sequence[int],
    connect_database: ConnectDatabase | None = None,
) -> dict[int, str]:
    """What blocks ``DROP ROLE`` for each role that has dependencies (roles without none are absent).

    ``conn`` is the action's connection (any transaction of it is kept: its own work runs in a
    savepoint that is rolled back). ``connect_database`` reaches the cluster's other databases;
    without it they keep the count form.
    """
    if not oids:
        return {}
    databases = _counts(conn, oids)
    if not databases:
        return {}
    current = _current_dbid(conn)
    here = [d for d in databases.values() if d.dbid in (CLUSTER_WIDE, current)]
    if here:
        _name_on(conn, oids, here, own=True)
    for db in sorted(databases.values(), key=lambda d: d.name or ""):
        if db in here:
            continue
        if not db.allows_connections:
            db.unavailable = "datallowconn is false, the database takes no connections"
        elif db.name is None:
            db.unavailable = "the database was dropped meanwhile"
        elif connect_database is None:
            db.unavailable = "no connection to other databases configured"
        else:
            try:
                with connect_database(db.name) as other:
                    _name_on(other, oids, [db], own=False)
            except Exception as exc:  # any failure keeps the counts: naming never unblocks a role
                db.unavailable = _cause(exc)
        if db.unavailable:
            log.warning("objects in %s cannot be named: %s", db.label, db.unavailable)
    roles = sorted({oid for d in databases.values() for oid in d.counts})
    order = sorted(databases.values(), key=lambda d: (d.dbid != CLUSTER_WIDE, d.name or "", d.dbid))
    return {oid: _text(oid, order) for oid in roles}


def _counts(conn: psycopg.Connection, oids: Sequence[int]) -> dict[int, _Database]:
    databases: dict[int, _Database] = {}
    for role, dbid, name, allows, kind, count in conn.execute(_COUNTS_SQL, [list(oids)]):
        db = databases.setdefault(dbid, _Database(dbid, name, allows))
        db.counts.setdefault(role, {})[kind] = count
    return databases


def _current_dbid(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT oid::bigint FROM pg_database WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0])


def _name_on(conn: psycopg.Connection, oids: Sequence[int], dbs: Sequence[_Database], *, own: bool) -> None:
    """Fill in the names of ``dbs``' objects, asked on ``conn`` (connected to them).

    On the action's own connection (``own``), inside a savepoint that is rolled back, so its
    ``search_path`` change and any error leave the caller's transaction as it was.
    """
    params = {"roles": list(oids), "dbids": [d.dbid for d in dbs], "limit": MAX_NAMED}
    by_id = {d.dbid: d for d in dbs}
    try:
        if own:
            with conn.transaction(force_rollback=True):
                conn.execute("SET LOCAL search_path = pg_catalog")
                rows = conn.execute(_NAMES_SQL, params).fetchall()
        else:
            conn.autocommit = True
            conn.execute("SET search_path = pg_catalog")
            rows = conn.execute(_NAMES_SQL, params).fetchall()
    except Exception as exc:
        for db in dbs:
            db.unavailable = _cause(exc)
        return
    for role, dbid, kind, total, names in rows:
        by_id[dbid].names.setdefault(role, {})[kind] = (total, [_printable(n) for n in names or []])


def _text(oid: int, databases: Iterable[_Database]) -> str:
    """``database app: owns table public.t, sequence public.s; holds privileges on …`` for one role."""
    parts: list[tuple[str, int]] = []  # (text, objects it stands for)
    for db in databases:
        counts = db.counts.get(oid)
        if not counts:
            continue
        named = db.names.get(oid, {})
        kinds = sorted(counts, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))
        phrases = [_named(k, *named[k]) if k in named else _counted(k, counts[k]) for k in kinds]
        text = f"{db.label}: " + "; ".join(phrases)
        if db.unavailable is not None:
            text += f" (names unavailable: {db.unavailable})"
        elif len(named) < len(kinds):
            text += " (names unavailable: gone before they could be named)"
        parts.append((text, sum(counts.values())))
    return _bounded(parts)


def _named(kind: str, total: int, names: Sequence[str]) -> str:
    more = f" and {total - len(names)} more" if total > len(names) else ""
    return f"{_verb(kind)} {', '.join(names)}{more}"


def _counted(kind: str, count: int) -> str:
    if kind == "r":
        return f"is named in {count} {'policy' if count == 1 else 'policies'}"
    return f"{_verb(kind)} {count} {'object' if count == 1 else 'objects'}"


def _verb(kind: str) -> str:
    return _KIND.get(kind, f"depends ({kind}) on")


def _bounded(parts: Sequence[tuple[str, int]]) -> str:
    """The parts joined by ``; ``; past ``MAX_CHARS``, the first parts that fit and a count of the rest."""
    text = "; ".join(p for p, _ in parts)
    if len(text) <= MAX_CHARS:
        return text
    for keep in range(len(parts) - 1, 0, -1):
        rest = parts[keep:]
        head = "; ".join(p for p, _ in parts[:keep])
        note = f"; … and {sum(c for _, c in rest)} objects in {len(rest)} more places not shown here"
        if len(head) + len(note) <= MAX_CHARS:
            return head + note
    note = f" … (cut at {MAX_CHARS} characters; pg_shdepend lists every object)"
    cut = text[: MAX_CHARS - len(note)]
    return (cut.rsplit(", ", 1)[0] if ", " in cut else cut) + note


_SERVER_MESSAGE = re.compile(r"(?:FATAL|ERROR):\s+(.*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _cause(exc: BaseException) -> str:
    """The server's own words for a failure (no host, port or user), at most one line."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    found = _SERVER_MESSAGE.search(text)
    cause = found.group(1) if found else f"{type(exc).__name__}: {text}"
    return _printable(scrub(cause))[:200]


def _printable(text: str) -> str:
    """Control characters as ``\\xNN``: a name with a line break stays on its line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _ident(name: str) -> str:
    """A database name as PostgreSQL's ``quote_ident`` writes it."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + _printable(name).replace('"', '""') + '"'
