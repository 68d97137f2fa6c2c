"""Recognise logins under any ``log_line_prefix``, built from the prefix itself (pure: no I/O).

``logparse`` reads Aurora's default prefix ``%t:%r:%u@%d:[%p]:`` with hand-made fast paths. A
server may use another prefix (Aurora PostgreSQL 16+ offers
``%m:%r:%u@%d:[%p]:%l:%e:%s:%v:%x:%c:%q%a``, Debian's default is ``%m [%p] %q%u@%d ``), and its
``log_timezone`` need not be UTC. ``compile_format(prefix, timezone)`` turns the prefix into
regular expressions that match exactly what PostgreSQL's ``log_status_format`` (elog.c) writes for
each escape, so ``LoginAggregator(settle, log_format)`` can apply the same rules to any prefix:

* A login is credited only when the prefix's ``%u`` (and ``%d``, if the prefix has it) equal the
  message's ``user=`` (and ``database=``) and what follows is one ``logparse`` accepts. Free-text
  fields (``%u``, ``%d``, ``%a``, ``%b``, ``%i``) may hold the prefix's own separators, so they are
  matched lazily (shortest first, ``%u`` before ``%d`` as in ``logparse``) and the message refers
  back to them: a split is taken only where prefix and message agree.
* A FATAL from the same process identity (``%p``, else the session id ``%c``) that ends a
  just-authorized session cancels its pending login, by the rules ``logparse`` uses too
  (``pgmessages.is_rejection``, ``failed_user``). If the first reading of the FATAL's prefix
  disagrees with the pending login, every other reading that agrees with it is tried
  (``LogFormat.said_by``): a name or application name that looks like more prefix cannot hide a
  rejection.
* ``%q`` is ignored: login and rejection lines come from session processes, which print the rest.

Times: the login time is ``%m``, else ``%n``, else ``%t`` (never ``%s``, the session start). The
zone abbreviation is resolved in ``log_timezone`` (``zoneinfo``), the abbreviation choosing the
fold in the repeated hour at the end of DST; numeric zones (``+03``, ``-0330``) and UTC names are
exact. A stamp whose abbreviation does not fit ``log_timezone`` is not guessed: the event's
CloudWatch time is used, as when the prefix has no time at all; a line with neither is not
credited (and is offered as ``LoginSummary.unrecognised_example``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from inactive_users.core.pgmessages import (
    AUTHORIZED_SUFFIXES,
    REPLICATION_SUFFIXES,
    UTC_ZONE_NAMES,
    failed_user,
    is_rejection,
)

AURORA_PREFIX = "%t:%r:%u@%d:[%p]:"
AURORA_16_PREFIX = "%m:%r:%u@%d:[%p]:%l:%e:%s:%v:%x:%c:%q%a"
DEBIAN_PREFIX = "%m [%p] %q%u@%d "

#: ``log_timezone`` values whose stamps ``logparse``'s default paths read exactly (offset 0, and
#: an abbreviation in ``UTC_ZONE_NAMES``).
UTC_ZONES = frozenset(
    {"UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu"}
    | {"GMT", "Etc/GMT", "GMT0", "Etc/GMT0", "GMT+0", "Etc/GMT+0", "GMT-0", "Etc/GMT-0"}
    | {"Greenwich", "Etc/Greenwich"}
)

_DATE_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
# pg_strftime's %Z: the tzdb abbreviation ("CET", "EST", "ChST") or a numeric one ("+03", "-0330").
_ZONE = r"[A-Za-z]+|[+-][0-9]{2}(?::?[0-9]{2}){0,2}"
_NUMERIC_ZONE = re.compile(r"([+-])([0-9]{2})(?::?([0-9]{2}))?(?::?([0-9]{2}))?")

# What each escape prints for a session process (elog.c, log_status_format), as a pattern that
# never crosses a line break. PostgreSQL prints "[unknown]" for an empty %a, %u or %d, so those
# are never empty. Free text is lazy and bounded, which also bounds the backtracking a line
# quoting the login phrase can cause: role and database names are cut to NAMEDATALEN - 1 (63)
# bytes, host names to NI_MAXHOST; the others are generous.
_VALUES = {
    "a": ".{1,1024}?",  # application_name (at login time "[unknown]": it is set after that)
    "u": ".{1,63}?",
    "d": ".{1,63}?",
    "b": ".{1,128}?",  # backend type: "client backend", "walsender", a background worker's type
    "i": ".{0,1024}?",  # the ps display (command tag)
    "r": r"(?:\[local\]|[^\s()]{1,1025}\([0-9]+\))?",  # host(port), [local], nothing if no remote host
    "h": r"[^\s()]{0,1025}?",  # remote host or [local]
    "L": r"[^\s()]{0,1025}?",  # local address, [local], [none] (PostgreSQL 18+)
    "p": "[0-9]+",
    "P": "[0-9]*",  # the parallel group leader's pid; nothing for a session's own lines
    "l": "[0-9]+",
    "x": "[0-9]+",
    "Q": "-?[0-9]+",
    "e": "[0-9A-Z]{5}",
    "c": r"[0-9a-f]+\.[0-9a-f]+",  # %lx.%x of the session start and the pid
    "v": "(?:-?[0-9]+/[0-9]+)?",  # virtual transaction id, nothing before one exists
    "t": _DATE_TIME + f" (?:{_ZONE})",
    "s": _DATE_TIME + f" (?:{_ZONE})",
    "m": _DATE_TIME + rf"\.[0-9]{{3}} (?:{_ZONE})",
    "n": r"[0-9]+\.[0-9]{3}",
}
# Escapes that print the same text every time they occur in one line: a repeat refers back.
_SAME = {"u": "u", "d": "d", "p": "p", "c": "c", "a": "a", "h": "h", "r": "r"}
_TIME_ESCAPES = ("m", "n", "t")  # in order of preference for the login time
_MILLIS = {f"{i:03d}": timedelta(milliseconds=i) for i in range(1000)}

_Token = tuple[str, int]  # (escape letter, padding), or ("", 0) with the literal in _Literal


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str


class LogFormatError(ValueError):
    """``log_line_prefix`` (or ``log_timezone``) cannot support login tracking; the message says why."""


def _parse_prefix(prefix: str) -> list[_Token | _Literal]:
    """The prefix as PostgreSQL reads it: literals and (escape, padding), up to where it stops.

    As in elog.c: ``%%`` is a ``%``; a ``-`` and digits after ``%`` are the padding; the format
    stops at a ``%`` (or a padding) that ends the string; unknown escapes print nothing.
    """
    out: list[_Token | _Literal] = []
    i, n = 0, len(prefix)
    while i < n:
        c = prefix[i]
        if c != "%":
            out.append(_Literal(c))
            i += 1
            continue
        i += 1
        if i >= n:
            break
        if prefix[i] == "%":
            out.append(_Literal("%"))
            i += 1
            continue
        padding = 0
        if prefix[i] <= "9":  # elog.c's pre-check: only "-" and digits can start a padding
            sign = 1
            if prefix[i] == "-":
                sign = -1
                i += 1
                if i >= n:
                    break
            while i < n and "0" <= prefix[i] <= "9":
                padding = padding * 10 + ord(prefix[i]) - ord("0")
                i += 1
            if i >= n:
                break
            padding *= sign
        out.append((prefix[i], padding))
        i += 1
    return out


def _padded(pattern: str, padding: int) -> str:
    """``%*s``: right-justified for a positive width, left for a negative one; never cut."""
    if padding > 0:
        return f" {{0,{padding}}}(?:{pattern})"
    if padding < 0:
        return f"(?:{pattern}) {{0,{-padding}}}"
    return pattern


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_ADVICE = (
    "Set log_line_prefix in the DB (cluster) parameter group to include %u and %p, for example "
    "Aurora's default '%t:%r:%u@%d:[%p]:', then re-run."
)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def utc_time(stamp: str, abbreviation: str, zone_name: str) -> datetime | None:
    """The UTC time of a ``YYYY-MM-DD HH:MM:SS`` stamp printed with ``abbreviation`` in ``zone_name``.

    The abbreviation picks the reading of a repeated local time (the hour DST ends); numeric
    ones (``+03``, ``-0330``) and UTC names are exact. None when it fits neither reading (a
    ``log_timezone`` that is not the server's), or there is no such time.
    """
    minute = _utc_minute(stamp[:16], abbreviation, zone_name)
    step = _SECONDS.get(stamp[16:])
    return None if minute is None or step is None else minute + step


_SECONDS = {f":{s:02d}": timedelta(seconds=s) for s in range(60)}


@lru_cache(maxsize=4096)
def _utc_minute(minute: str, abbreviation: str, zone_name: str) -> datetime | None:
    """``utc_time`` of a minute's start, cached: lines come in time order, and minutes repeat more
    than seconds (zones change offset on whole minutes)."""
    try:
        naive = datetime.fromisoformat(minute + ":00")
        numeric = _NUMERIC_ZONE.fullmatch(abbreviation)
        if numeric is not None:
            sign = -1 if numeric[1] == "-" else 1
            offset = timedelta(
                hours=int(numeric[2]), minutes=int(numeric[3] or 0), seconds=int(numeric[4] or 0)
            )
            return naive.replace(tzinfo=timezone(sign * offset)).astimezone(UTC)
        zone = _zone(zone_name)
        for fold in (0, 1):
            local = naive.replace(tzinfo=zone, fold=fold)
            if local.tzname() == abbreviation:
                return local.astimezone(UTC)
        if abbreviation in UTC_ZONE_NAMES:
            return naive.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # no such date, an offset of a day or more, out of range
        return None
    return None


def _session_key(session_id: str) -> int:
    """The pending-login key of a ``%c`` session id (``%lx.%x``: start time, pid): unique, reversible."""
    start, pid = session_id.split(".")
    return int(start, 16) << 32 | int(pid, 16)


def _session_id(key: int) -> str:
    return f"{key >> 32:x}.{key & 0xFFFFFFFF:x}"


_LOGIN_TAIL = "(?=\n|\\Z|" + "|".join(map(re.escape, AUTHORIZED_SUFFIXES)) + ")"
_REPLICATION_TAIL = "(?=\n|\\Z|" + "|".join(map(re.escape, REPLICATION_SUFFIXES)) + ")"
_DIGIT_RUNS = re.compile("[0-9]+")
_SESSION_RUNS = re.compile(r"(?<![0-9a-f])(?=([0-9a-f]+)\.([0-9a-f]+))")


@dataclass(frozen=True)
class LogFormat:
    """A server's ``log_line_prefix`` and ``log_timezone``, compiled into a login recogniser.

    Build it with ``compile_format``; constructing it validates and compiles as well. Raises
    ``LogFormatError`` for a prefix that cannot attribute logins (no ``%u``, or no ``%p``/``%c``
    to tie a rejection to its login), or a time zone ``zoneinfo`` does not know.
    """

    prefix: str
    timezone: str = "UTC"
    _tokens: list[_Token | _Literal] = field(init=False, repr=False, compare=False)
    _identity: str = field(init=False, repr=False, compare=False)  # "p" or "c"
    _time: str | None = field(init=False, repr=False, compare=False)  # "m", "n", "t" or None
    _login: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _fatal: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = _parse_prefix(self.prefix)
        escapes = {t[0] for t in tokens if isinstance(t, tuple)}
        shown = _sql_literal(self.prefix)
        if "\n" in self.prefix:
            raise LogFormatError(
                f"log_line_prefix = {shown} has a line break: a login line would span two. {_ADVICE}"
            )
        if "u" not in escapes:
            raise LogFormatError(
                f"log_line_prefix = {shown} has no %u (user name): a login cannot be attributed to "
                f"a role. {_ADVICE}"
            )
        if "p" not in escapes and "c" not in escapes:
            raise LogFormatError(
                f"log_line_prefix = {shown} has no %p (process ID) or %c (session ID): a login "
                "rejected right after authorization (NOLOGIN, connection limit, no such database) "
                f"cannot be told from a real one. {_ADVICE}"
            )
        try:
            _zone(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise LogFormatError(
                f"log_timezone = {_sql_literal(self.timezone)} is not an IANA time zone name known "
                "here: log times cannot be converted to UTC. Give the server's log_timezone "
                "(SHOW log_timezone), e.g. 'UTC' or 'Europe/Berlin'."
            ) from exc
        time = next((t for t in _TIME_ESCAPES if t in escapes), None)
        set_ = object.__setattr__
        set_(self, "_tokens", tokens)
        set_(self, "_identity", "p" if "p" in escapes else "c")
        set_(self, "_time", time)
        prefix = self._pattern()
        database = "(?P=d)" if "d" in escapes else ".*?"
        set_(
            self,
            "_login",
            re.compile(
                f"(?:{prefix})LOG:  (?:connection authorized: user=(?P=u) database={database}"
                f"{_LOGIN_TAIL}|replication connection authorized: user=(?P=u){_REPLICATION_TAIL})"
            ),
        )
        set_(self, "_fatal", re.compile(f"(?:{prefix})FATAL:  (?P<message>.*)"))

    def _pattern(self, fixed: dict[str, str] | None = None) -> str:
        """The prefix's pattern; ``fixed`` gives the exact text of some escapes (``said_by``)."""
        parts: list[str] = []
        seen: set[str] = set()
        for token in self._tokens:
            if isinstance(token, _Literal):
                parts.append(re.escape(token.text))
                continue
            letter, padding = token
            value = _VALUES.get(letter)
            if value is None:  # %q, and unknown escapes, print nothing
                continue
            group = _SAME.get(letter)
            if fixed is not None and letter in fixed:
                value = re.escape(fixed[letter])
            elif group is not None and group in seen:
                value = f"(?P={group})"
            elif group is not None:
                value = f"(?P<{group}>{value})"
                seen.add(group)
            elif letter == self._time and letter not in seen:
                seen.add(letter)
                if letter == "n":
                    value = r"(?P<epoch>[0-9]+)\.(?P<ms>[0-9]{3})"
                else:
                    ms = r"\.(?P<ms>[0-9]{3})" if letter == "m" else "(?P<ms>)"
                    value = f"(?P<stamp>{_DATE_TIME}){ms} (?P<zone>{_ZONE})"
            parts.append(_padded(value, padding))
        return "".join(parts)

    @property
    def is_default(self) -> bool:
        """Aurora's default prefix in a UTC zone: ``logparse``'s own fast paths read it exactly."""
        return self.prefix == AURORA_PREFIX and self.timezone in UTC_ZONES

    @property
    def has_time(self) -> bool:
        """Whether lines carry their own time (``%m``, ``%n`` or ``%t``); if not, the event time is used."""
        return self._time is not None

    def login(self, text: str, event_ts: datetime | None = None) -> tuple[str, int, datetime] | None:
        """(user, process key, UTC time) of a genuine login on ``text``'s first line, else None.

        The key is the pid (``%p``) or, without one, the session id (``%c``) as an int: what a
        rejecting FATAL is matched by. (Every line of a busy log may come here: it is kept short.)
        """
        m = self._login.match(text)
        if m is None:
            return None
        ts: datetime | None
        if self._time == "t" or self._time == "m":
            user, identity, stamp, zone, ms = m.group("u", self._identity, "stamp", "zone", "ms")
            minute = _utc_minute(stamp[:16], zone, self.timezone)
            step = _SECONDS.get(stamp[16:])
            if minute is None or step is None:
                ts = event_ts
            else:
                ts = minute + step if not ms or ms == "000" else minute + step + _MILLIS[ms]
        else:
            user, identity = m.group("u", self._identity)
            ts = self._when(m, event_ts)
        if ts is None:
            return None
        return user, int(identity) if self._identity == "p" else _session_key(identity), ts

    def _when(self, m: re.Match[str], event_ts: datetime | None) -> datetime | None:
        """The time of a line without ``%t``/``%m``: ``%n``, else the event's."""
        if self._time != "n":
            return event_ts
        try:
            base = datetime.fromtimestamp(int(m["epoch"]), UTC)
        except (ValueError, OverflowError, OSError):
            return event_ts
        ms = m["ms"]
        return base + _MILLIS[ms] if ms != "000" else base

    def fatal(self, text: str) -> tuple[str, int, str] | None:
        """(``%u``, process key, message) of a FATAL on ``text``'s first line, by its first reading."""
        m = self._fatal.match(text)
        if m is None:
            return None
        identity = m[self._identity]
        key = int(identity) if self._identity == "p" else _session_key(identity)
        return m["u"], key, m["message"]

    def rejection(self, text: str) -> tuple[bool, str, int] | None:
        """``logparse``'s verdict on a FATAL line: (True, name, 0) for a failed authentication,
        (False, user, key) for a rejection of a just-authorized session, else None."""
        found = self.fatal(text)
        if found is None:
            return None
        user, key, message = found
        failed = failed_user(message)
        if failed is not None:
            return True, failed, 0
        return (False, user, key) if is_rejection(message) else None

    def identities(self, text: str) -> Iterator[int]:
        """Every process key some reading of ``text``'s first line could hold (for ``said_by``).

        Every run of digits (``%p``) or ``hex.hex`` (``%c``) and every part of it, since a name
        next to it may begin or end with such characters: each is only looked up.
        """
        first = text.partition("\n")[0]
        seen: set[int] = set()
        if self._identity == "p":
            for m in _DIGIT_RUNS.finditer(first):
                run = m[0]
                for i in range(len(run)):
                    for j in range(i + 1, min(len(run), i + 10) + 1):
                        key = int(run[i:j])
                        if key not in seen:
                            seen.add(key)
                            yield key
            return
        for m in _SESSION_RUNS.finditer(first):
            start, pid = m[1], m[2]
            for i in range(max(0, len(start) - 16), len(start)):
                for j in range(1, min(len(pid), 8) + 1):
                    key = _session_key(f"{start[i:]}.{pid[:j]}")
                    if key not in seen:
                        seen.add(key)
                        yield key

    def said_by(self, text: str, user: str, key: int) -> bool:
        """Whether ``text`` reads as a FATAL whose prefix has ``%u`` = ``user`` and process ``key``.

        Compiled per question (``re`` caches recent ones); asked only when a rejection's first
        reading disagrees with a pending login, which is rare.
        """
        identity = str(key) if self._identity == "p" else _session_id(key)
        pattern = self._pattern({"u": user, self._identity: identity})
        return re.match(f"(?:{pattern})FATAL:  ", text) is not None


DEFAULT_FORMAT = LogFormat(AURORA_PREFIX, "UTC")


def compile_format(prefix: str, timezone: str = "UTC") -> LogFormat:
    """The recogniser for a server's ``log_line_prefix`` and ``log_timezone``.

    Raises ``LogFormatError`` (a ``ValueError``) naming what to change when logins cannot be
    tracked with this prefix.
    """
    return LogFormat(prefix, timezone)
