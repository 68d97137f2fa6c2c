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
from functools import lru_cache
from itertools import repeat

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

# The fast path (LoginAggregator._feed_fast) looks for these whole: the end of ":[pid]" and the
# severity, with what must follow it.
_MARK_LOGIN = "]:LOG:  " + LOGIN_PHRASE
_MARK_REPLICATION = "]:LOG:  " + REPLICATION_PHRASE
_MARK_FATAL = "]:FATAL:  "
_AUTH_FAILED_TEXT = 'authentication failed for user "'
_REPLICATION_SUFFIXES = tuple(s for s in _SUFFIXES if s != " database=")

_Pending = tuple[datetime, str]  # (login time, user) of a login that a FATAL may still cancel


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


@lru_cache(maxsize=1024)
def _utc_second(stamp: str) -> datetime | None:
    """The time of a ``YYYY-MM-DD HH:MM:SS`` stamp followed by `` UTC:``, or None if invalid.

    Cached because lines arrive in time order, many per second.
    """
    parsed = parse_timestamp(stamp + " UTC:")
    return None if parsed is None else parsed[0]


def _prefix_at(text: str, sev: int) -> tuple[str, int] | None:
    """(``%u@%d``, ``%p``) of a line whose severity ``split_line`` would find right after ``]`` at ``sev``.

    The caller has checked the canonical ``%t`` (`` UTC:`` at 19) and that the line is a single
    line. None means "not certain": no remote, or a ``:[`` before the pid (a name containing it),
    or the ``]`` at ``sev`` not closing the first ``:[digits`` after the remote.
    """
    if text.startswith("[local]:", 24):
        rest = 32
    else:
        remote = _REMOTE.match(text, 24)
        if remote is None:
            return None
        rest = remote.end()
    q = text.find(":[", rest, sev)
    if q < 0:
        return None
    pid = text[q + 2 : sev]
    if not pid.isdecimal():
        return None
    return text[rest:q], int(pid)


def _fast_login(text: str, p: int, replication: bool) -> tuple[int, str] | tuple[()] | None:
    """``parse_login`` for a single canonical line with a login marker at ``p``.

    Returns (pid, user) for a login, ``()`` when the reference certainly finds none, and None when
    only the reference can tell (several ``@`` in ``%u@%d``, or an unusual prefix).
    """
    found = _prefix_at(text, p)
    if found is None:
        return None
    userdb, pid = found
    at = userdb.find("@")
    if at < 0:
        return ()
    if userdb.find("@", at + 1) >= 0:
        return None  # several ways to split %u@%d: let parse_login choose
    if at == 0:
        return ()
    user = userdb[:at]
    if replication:
        start = p + len(_MARK_REPLICATION)
        if not text.startswith(user, start):
            return ()
        end = start + at
        suffixes = _REPLICATION_SUFFIXES
    else:
        start = p + len(_MARK_LOGIN)
        expected = userdb.replace("@", " database=")  # "U database=D", as the message must read
        if not text.startswith(expected, start):
            return ()
        end = start + len(expected)
        suffixes = _SUFFIXES
    if end == len(text) or text.startswith(suffixes, end):
        return pid, user
    return ()


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

    ``feed`` reads one event through the reference parser (``parse_login``/``split_line``).
    ``feed_lines``/``feed_many`` read a batch an order of magnitude faster with the same result:
    see ``_feed_fast``.
    """

    def __init__(self, settle: timedelta = timedelta(seconds=60)) -> None:
        self.settle = settle
        self.summary = LoginSummary()
        self._pending: dict[int, _Pending] = {}

    def feed(self, message: str, event_ts: datetime | None = None) -> None:
        self.summary.events += 1
        self._feed_one(message, event_ts)

    def feed_many(self, events: Iterable[tuple[str, datetime | None]]) -> None:
        """Feed ``(message, event time)`` pairs; same result as ``feed`` on each, much faster."""
        self._feed_fast(events)

    def feed_lines(self, lines: Iterable[str]) -> None:
        """Feed raw lines that have no event time of their own (files, tests, benchmarks)."""
        self._feed_fast(zip(lines, repeat(None)))

    def _feed_one(self, message: str, event_ts: datetime | None) -> None:
        """The reference path: every line through the general parser."""
        if LOGIN_PHRASE in message:
            login = parse_login(message, event_ts)
            if login is not None:
                self._add_pending(login.pid, login.ts, login.user)
            return
        if "FATAL:" in message:
            self._fatal(message, event_ts)

    def _add_pending(self, pid: int, ts: datetime, user: str) -> None:
        s = self.summary
        if s.last_event is None or ts > s.last_event:
            s.last_event = ts
        previous = self._pending.pop(pid, None)
        if previous is not None:  # the pid was reused, so its earlier session was not rejected
            self._accept(previous)
        self._pending[pid] = (ts, user)
        self._settle(ts - self.settle)

    def _settle(self, horizon: datetime) -> None:
        """Accept the pending logins older than ``horizon``, oldest first, up to the first newer one.

        Only the front is looked at (as logins arrive in time order), so an out-of-order login stays
        pending until everything fed before it has been settled.
        """
        pending = self._pending
        while pending:
            pid = next(iter(pending))
            login = pending[pid]
            if login[0] >= horizon:
                break
            del pending[pid]
            self._accept(login)

    def _fatal(self, message: str, event_ts: datetime | None) -> None:
        line = split_line(message)
        if line is None:
            return
        failed = _AUTH_FAILED.search(line.message) if line.severity == "FATAL" else None
        if failed is not None:
            _count(self.summary.failed_auth, failed.group(1))
            return
        user = _rejected_user(line)
        if user is not None:
            self._reject(line.pid, user)

    def _reject(self, pid: int, user: str) -> None:
        """A FATAL ended the session of ``user`` on ``pid``: its pending login was not activity."""
        pending = self._pending.get(pid)
        if pending is not None and pending[1] == user:
            del self._pending[pid]
            _count(self.summary.rejected, user)

    def _accept(self, login: _Pending) -> None:
        ts, user = login
        s = self.summary
        s.logins += 1
        current = s.last_login.get(user)
        if current is None or ts > current:
            s.last_login[user] = ts

    def _feed_fast(self, events: Iterable[tuple[str, datetime | None]]) -> None:
        """Feed a batch with the result of ``_feed_one`` on each event, at a fraction of the cost.

        Why it is fast: most lines are decided by a few ``str`` searches (C loops) and no regex or
        per-line object; the timestamp is parsed once per distinct second (lines arrive in time
        order, many per second); the pending window is only re-examined when its horizon or its
        front may have moved.

        Why it is exact: a line is only decided here when its shape makes the reference's reading
        certain (``_fast_login`` says which); anything else goes to ``_feed_one``. The
        decisions rest on necessary conditions of the reference:

        * a genuine login contains ``]:LOG:  connection authorized: user=`` (or the replication
          form), as its severity ``:[pid]:LOG:  `` is directly followed by the phrase; a line
          that has the phrase without either marker (a quoted statement) is nothing, and as
          in ``feed`` it is not read as a FATAL either;
        * a FATAL that counts contains ``]:FATAL:  ``.
        """
        s = self.summary
        pending = self._pending
        stamp_key: str | None = None  # the last "YYYY-MM-DD HH:MM:SS" seen, and its time
        ts: datetime | None = None
        horizon_of: datetime | None = None  # the login time the window was last settled for
        resettle = True  # the window's front may have changed since it was last settled
        n = 0
        try:
            for n, (text, event_ts) in enumerate(events, 1):  # noqa: B007 (n is read after the loop)
                p = text.find(_MARK_LOGIN)
                if p >= 0:
                    replication = False
                elif LOGIN_PHRASE not in text:
                    if "FATAL:" in text and self._fast_fatal(text):
                        resettle = True
                    continue
                else:
                    p = text.find(_MARK_REPLICATION)
                    if p < 0:
                        continue  # the phrase quoted elsewhere: never a login
                    replication = True
                # the timestamp, parsed once per distinct second
                if not text.startswith(" UTC:", 19):
                    self._feed_one(text, event_ts)
                    resettle = True
                    continue
                key = text[:19]
                if key != stamp_key:
                    stamp_key = key
                    ts = _utc_second(key)
                if ts is None:
                    continue  # not a valid time, so not a prefix
                found = _fast_login(text, p, replication)
                if found is None:
                    self._feed_one(text, event_ts)
                    resettle = True
                    continue
                if not found:
                    continue
                pid, user = found
                previous = pending.pop(pid, None)
                if previous is not None:
                    self._accept(previous)
                    resettle = True
                pending[pid] = (ts, user)
                if ts is not horizon_of:
                    horizon_of = ts
                    resettle = True
                    if s.last_event is None or ts > s.last_event:
                        s.last_event = ts
                if resettle:
                    self._settle(ts - self.settle)
                    resettle = not pending
        finally:
            s.events += n

    def _fast_fatal(self, text: str) -> bool:
        """``_fatal`` for a line with ``FATAL:`` and no login phrase; True if a pending login went."""
        p = text.find(_MARK_FATAL)
        if p < 0:
            return False  # the severity is not FATAL, so the line says nothing
        before = len(self._pending)
        if not text.startswith(" UTC:", 19) or "\n" in text:
            self._fatal(text, None)
            return len(self._pending) != before
        if _utc_second(text[:19]) is None:
            return False
        found = _prefix_at(text, p)
        if found is None:
            self._fatal(text, None)
            return len(self._pending) != before
        if not found:
            return False
        userdb, pid = found
        message = text[p + len(_MARK_FATAL) :]
        i = message.find(_AUTH_FAILED_TEXT)
        if i >= 0:
            j = message.rfind('"')
            if j >= i + len(_AUTH_FAILED_TEXT):
                _count(self.summary.failed_auth, message[i + len(_AUTH_FAILED_TEXT) : j])
                return False
        if not (message.startswith(_REJECTION_STARTS) or message.endswith(_REJECTION_ENDS)):
            return False
        at = userdb.find("@")
        if at >= 0:
            self._reject(pid, userdb[:at])
        return len(self._pending) != before

    def finish(self, read_until: datetime | None = None) -> LoginSummary:
        """Settle the remaining logins.

        Logins within ``settle`` of ``read_until`` might still be rejected by a FATAL not yet
        delivered; they are left out (counted as ``unsettled``) and read again by the next run's
        overlap window.
        """
        for login in self._pending.values():
            if read_until is not None and login[0] > read_until - self.settle:
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
    agg.feed_lines(lines)
    return agg.finish(read_until)
