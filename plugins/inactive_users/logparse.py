"""Recognise successful PostgreSQL logins in Aurora's connection log (pure: no I/O).

PostgreSQL keeps no last-login time, so we derive it from ``log_connections`` lines written with
Aurora's prefix ``%t:%r:%u@%d:[%p]:``::

    2026-11-26 09:54:51 UTC:10.0.0.7(51244):al@app:[59]:LOG:  connection authorized: user=al database=app

Rules, and why:

* A login is credited to a user only when the prefix's ``%u`` (and ``%d``) agree with the message's
  ``user=`` (and ``database=``): both are written by the server for the same backend, whereas a logged
  SQL statement or error message that merely *contains* the phrase cannot make them agree.
* ``connection authorized`` is logged *before* PostgreSQL checks ``rolcanlogin``, the connection
  limit and the database. A login followed by such a FATAL from the same ``[pid]`` is therefore not
  activity; otherwise a locked user retrying would keep resetting its own clock.
* Failed authentication is never activity; it is only counted.
* Only the first line of an event is read: continuation lines of a multi-line event (a statement
  spanning lines) can never be a login.

Ambiguity: ``%u@%d`` is split at an ``@`` so that the message agrees; a pair of names for which two
different splits both agree (e.g. role ``a@b`` on database ``c`` vs. role ``a`` on database ``b@c``
with the message ``user=a@b database=c``) cannot be told apart by text. We take the split with the
shortest user name; the message then reads ``user=a database=b@c database=c``, which PostgreSQL
never writes for role ``a``, so in practice the split is unique.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

LOGIN_PHRASE = "connection authorized: user="
REPLICATION_PHRASE = "replication connection authorized: user="

#: Server-side CloudWatch filter patterns: each is one quoted phrase, which real CloudWatch and
#: moto read the same way (OR-terms ``?"a" ?"b"`` are not understood by moto).
FILTER_LOGINS = '"connection authorized"'
FILTER_FATAL = '"FATAL"'

# What may follow ``user=U`` (or ``database=D``) in a connection-authorized message, PG 11-18.
_SUFFIXES = (" application_name=", " SSL enabled (", " GSS (", " database=")

# FATAL messages PostgreSQL emits *after* "connection authorized" that end the session at once,
# by how they start and how they end (names are quoted in the middle).
_REJECTION_STARTS = (
    "too many connections for role ",
    "permission denied for database ",
    "too many connections for database ",
    "remaining connection slots are reserved",
    "must be superuser or replication role to start walsender",
    "permission denied to start WAL sender",
)
_REJECTION_ENDS = (
    " is not permitted to log in",
    " does not exist",
    " is not currently accepting connections",
)

_TS = re.compile(
    r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))? ([A-Za-z]{1,6}|[+-]\d\d(?::?\d\d)?):"
)
# %r: "[local]", "host(port)" (IPv6 hosts contain ':' but never parentheses or spaces), or empty.
_REMOTE = re.compile(r"\[local\]:|[^\s()]+\(\d+\):|:")
_SEVERITY = re.compile(r":\[(\d+)\]:([A-Z]+[0-9]?):  ")
_AUTH_FAILED = re.compile(r'authentication failed for user "(.*)"')
_UTC_NAMES = frozenset({"UTC", "GMT", "Z", "UCT", "UT", "Zulu"})
_MAX_COUNTED_NAMES = 10_000


@dataclass(frozen=True, slots=True)
class Line:
    """One log line split at the Aurora prefix."""

    ts: datetime | None  # from %t; None when its zone abbreviation cannot be resolved
    userdb: str  # raw "%u@%d"
    pid: int
    severity: str
    message: str


@dataclass(frozen=True, slots=True)
class Login:
    user: str
    database: str | None  # None for physical replication connections
    pid: int
    ts: datetime
    replication: bool


def parse_timestamp(text: str) -> tuple[datetime | None, int] | None:
    """Parse a leading ``%t``/``%m``; returns (aware UTC time or None if the zone is unknown, end index)."""
    m = _TS.match(text)
    if m is None:
        return None
    zone = m.group(8)
    tz: timezone | None
    if zone in _UTC_NAMES:
        tz = UTC
    elif zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + (int(digits[2:]) if len(digits) > 2 else 0)
        tz = timezone(timedelta(minutes=minutes if zone[0] == "+" else -minutes))
    else:
        return None, m.end()
    frac = m.group(7)
    micro = int(frac.ljust(6, "0")) if frac else 0
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        ts = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None
    return ts.astimezone(UTC), m.end()


def split_line(text: str) -> Line | None:
    """Split the first line of an event at the Aurora prefix, or None if it has no such prefix."""
    nl = text.find("\n")
    if nl >= 0:
        text = text[:nl]
    parsed = parse_timestamp(text)
    if parsed is None:
        return None
    ts, pos = parsed
    remote = _REMOTE.match(text, pos)
    if remote is None:
        return None
    rest_start = remote.end()
    sev = _SEVERITY.search(text, rest_start)
    if sev is None:
        return None
    return Line(
        ts=ts,
        userdb=text[rest_start : sev.start()],
        pid=int(sev.group(1)),
        severity=sev.group(2),
        message=text[sev.end() :],
    )


def _follows_cleanly(text: str, pos: int) -> bool:
    return pos == len(text) or text.startswith(_SUFFIXES, pos)


def parse_login(text: str, event_ts: datetime | None = None) -> Login | None:
    """The login a line records, if it is a genuine ``connection authorized`` line.

    ``event_ts`` (the CloudWatch event time) is used when the line's own zone abbreviation is not
    resolvable (e.g. ``EST`` when ``log_timezone`` is not UTC).
    """
    if LOGIN_PHRASE not in text:
        return None
    line = split_line(text)
    if line is None or line.severity != "LOG":
        return None
    ts = line.ts or event_ts
    if ts is None:
        return None
    msg = line.message
    if msg.startswith(LOGIN_PHRASE):
        replication = False
        body = msg[len(LOGIN_PHRASE) :]
    elif msg.startswith(REPLICATION_PHRASE):
        replication = True
        body = msg[len(REPLICATION_PHRASE) :]
    else:
        return None
    userdb = line.userdb
    at = userdb.find("@")
    while at >= 0:
        user, database = userdb[:at], userdb[at + 1 :]
        if user and body.startswith(user):
            after = len(user)
            if replication:
                if _follows_cleanly(body, after) and not body.startswith(" database=", after):
                    return Login(user, database or None, line.pid, ts, True)
            elif body.startswith(" database=", after):
                end = after + len(" database=") + len(database)
                if body.startswith(database, after + len(" database=")) and _follows_cleanly(body, end):
                    return Login(user, database, line.pid, ts, False)
        at = userdb.find("@", at + 1)
    return None


def _rejected_user(line: Line) -> str | None:
    """The user whose just-authorized session this FATAL line ends, if it is such a rejection."""
    msg = line.message
    if line.severity != "FATAL" or not (msg.startswith(_REJECTION_STARTS) or msg.endswith(_REJECTION_ENDS)):
        return None
    at = line.userdb.find("@")
    return line.userdb[:at] if at >= 0 else None


@dataclass
class LoginSummary:
    """What one or more log streams say about logins."""

    last_login: dict[str, datetime] = field(default_factory=dict)
    failed_auth: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    events: int = 0
    logins: int = 0
    unsettled: int = 0
    last_event: datetime | None = None

    def merge(self, other: LoginSummary) -> None:
        for user, ts in other.last_login.items():
            if user not in self.last_login or ts > self.last_login[user]:
                self.last_login[user] = ts
        self.failed_auth.update(other.failed_auth)
        self.rejected.update(other.rejected)
        self.events += other.events
        self.logins += other.logins
        self.unsettled += other.unsettled
        if other.last_event and (self.last_event is None or other.last_event > self.last_event):
            self.last_event = other.last_event


class LoginAggregator:
    """Streams one instance's events (in time order) into per-user latest logins.

    Memory holds one entry per distinct user plus the logins of the last ``settle`` seconds that
    may still be rejected by a FATAL from the same pid; it does not grow with the number of lines.
    """

    def __init__(self, settle: timedelta = timedelta(seconds=60)) -> None:
        self.settle = settle
        self.summary = LoginSummary()
        self._pending: dict[int, Login] = {}

    def feed(self, message: str, event_ts: datetime | None = None) -> None:
        self.summary.events += 1
        if LOGIN_PHRASE in message:
            login = parse_login(message, event_ts)
            if login is not None:
                self._add_pending(login)
            return
        if "FATAL:" in message:
            self._fatal(message, event_ts)

    def feed_many(self, events: Iterable[tuple[str, datetime | None]]) -> None:
        for message, ts in events:
            self.feed(message, ts)

    def _add_pending(self, login: Login) -> None:
        s = self.summary
        if s.last_event is None or login.ts > s.last_event:
            s.last_event = login.ts
        previous = self._pending.pop(login.pid, None)
        if previous is not None:  # the pid was reused, so its earlier session was not rejected
            self._accept(previous)
        self._pending[login.pid] = login
        horizon = login.ts - self.settle
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.ts >= horizon:
                break
            del self._pending[oldest.pid]
            self._accept(oldest)

    def _fatal(self, message: str, event_ts: datetime | None) -> None:
        line = split_line(message)
        if line is None:
            return
        failed = _AUTH_FAILED.search(line.message) if line.severity == "FATAL" else None
        if failed is not None:
            _count(self.summary.failed_auth, failed.group(1))
            return
        user = _rejected_user(line)
        if user is None:
            return
        pending = self._pending.get(line.pid)
        if pending is not None and pending.user == user:
            del self._pending[line.pid]
            _count(self.summary.rejected, user)

    def _accept(self, login: Login) -> None:
        s = self.summary
        s.logins += 1
        current = s.last_login.get(login.user)
        if current is None or login.ts > current:
            s.last_login[login.user] = login.ts

    def finish(self, read_until: datetime | None = None) -> LoginSummary:
        """Settle the remaining logins.

        Logins within ``settle`` of ``read_until`` might still be rejected by a FATAL not yet
        delivered; they are left out (counted as ``unsettled``) and read again by the next run's
        overlap window.
        """
        for login in self._pending.values():
            if read_until is not None and login.ts > read_until - self.settle:
                self.summary.unsettled += 1
            else:
                self._accept(login)
        self._pending.clear()
        return self.summary


def _count(counter: Counter[str], name: str) -> None:
    if name in counter or len(counter) < _MAX_COUNTED_NAMES:
        counter[name] += 1
    else:
        counter["<other>"] += 1


def summarize(lines: Iterable[str], read_until: datetime | None = None) -> LoginSummary:
    """Convenience for one stream of raw lines (tests, tools)."""
    agg = LoginAggregator()
    for line in lines:
        agg.feed(line)
    return agg.finish(read_until)
