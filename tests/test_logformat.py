"""The login recogniser built from ``log_line_prefix`` (logformat.py), on lines written as elog.c does.

``render`` writes a session process's prefix the way PostgreSQL's ``log_status_format`` does (every
escape, padding, ``%%``, ``%q``, unknown escapes, the format stopping at a trailing ``%``); the
recogniser must read back exactly what was logged, refuse what cannot be attributed, and apply
logparse's rules (agreement of prefix and message, rejection by the same process) to any prefix.
tests/test_logformat_server.py does the same on real servers' logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack import shipper
from inactive_users.core import logformat
from inactive_users.core.logformat import (
    AURORA_16_PREFIX,
    AURORA_PREFIX,
    DEBIAN_PREFIX,
    DEFAULT_FORMAT,
    LogFormat,
    LogFormatError,
    compile_format,
    utc_time,
)
from inactive_users.core.logparse import LoginAggregator, LoginSummary, redact, summarize
from tests.test_logparse_fast import mix

WHEN = datetime(2026, 11, 26, 9, 54, 51, 123000, tzinfo=UTC)
START = WHEN.replace(microsecond=0)  # the sessions' start
KEYED = "%t [%p]: user=%u,db=%d,app=%a,client=%h "
SESSION = "%m %c %q%u@%d "


# -- writing lines as the server does ------------------------------------------------------------


@dataclass
class Session:
    """What a session process's escapes print (elog.c), for one backend."""

    user: str = "alice"
    database: str = "app"
    pid: int = 4242
    app: str = "[unknown]"
    host: str = "10.0.0.7"
    port: str = "51244"
    local: str = "10.0.0.1"
    start: datetime = START
    zone: str = "UTC"  # the tzdb name the times are printed in

    def values(self, when: datetime, line_number: int = 1, sqlstate: str = "00000") -> dict[str, str]:
        local = when.astimezone(logformat._zone(self.zone))
        start = self.start.astimezone(logformat._zone(self.zone))
        stamp = f"{local:%Y-%m-%d %H:%M:%S}"
        return {
            "a": self.app,
            "u": self.user,
            "d": self.database,
            "r": f"{self.host}({self.port})" if self.port else self.host,
            "h": self.host,
            "L": self.local,
            "b": "client backend",
            "p": str(self.pid),
            "P": "",  # no parallel leader
            "t": f"{stamp} {local.tzname()}",
            "m": f"{stamp}.{local.microsecond // 1000:03d} {local.tzname()}",
            "n": f"{int(when.timestamp())}.{when.microsecond // 1000:03d}",
            "i": "authentication",
            "e": sqlstate,
            "c": f"{int(self.start.timestamp()):x}.{self.pid:x}",
            "l": str(line_number),
            "s": f"{start:%Y-%m-%d %H:%M:%S} {start.tzname()}",
            "v": "3/7",
            "x": "0",
            "Q": "0",
        }


def render(prefix: str, values: dict[str, str]) -> str:
    """``log_status_format`` for a session process (MyProcPort set: ``%q`` is ignored)."""
    out: list[str] = []
    i, n = 0, len(prefix)
    while i < n:
        if prefix[i] != "%":
            out.append(prefix[i])
            i += 1
            continue
        i += 1
        if i >= n:
            break
        if prefix[i] == "%":
            out.append("%")
            i += 1
            continue
        padding = 0
        if prefix[i] <= "9":
            sign = -1 if prefix[i] == "-" else 1
            i += prefix[i] == "-"
            if i >= n:
                break
            while i < n and prefix[i].isdigit():
                padding = padding * 10 + int(prefix[i])
                i += 1
            if i >= n:
                break
            padding *= sign
        value = values.get(prefix[i])
        i += 1
        if value is None:
            continue
        out.append(value.rjust(padding) if padding > 0 else value.ljust(-padding))
    return "".join(out)


def auth(prefix: str, s: Session, when: datetime = WHEN, tail: str = "") -> str:
    msg = f"connection authorized: user={s.user} database={s.database}{tail}"
    return render(prefix, s.values(when, 3)) + "LOG:  " + msg


def fatal(prefix: str, s: Session, message: str, when: datetime = WHEN, sqlstate: str = "28000") -> str:
    return render(prefix, s.values(when, 4, sqlstate)) + "FATAL:  " + message


def exact(prefix: str, when: datetime) -> datetime:
    """``when`` as a prefix's time shows it: to the millisecond with ``%m``, else to the second."""
    return when if "%m" in prefix else when.replace(microsecond=0)


def read(lines: list[str], fmt: LogFormat, events: list[datetime | None] | None = None) -> LoginSummary:
    agg = LoginAggregator(timedelta(seconds=60), fmt)
    agg.feed_many(zip(lines, events or [None] * len(lines), strict=True))
    return agg.finish()


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "missing"),
    [
        ("%m [%p] ", "%u"),
        ("", "%u"),
        ("%t:%r:%u@%d:", "%p"),
        ("%m %q%u ", "%p"),
        ("%m [%p] %", "%u"),
        ("%m [%p] %%u ", "%u"),  # a literal "%u"
        ("%p %-", "%u"),
        ("%p %u%", None),
        ("%m %5", "%u"),  # the format stops at a trailing padding
    ],
)
def test_a_prefix_without_user_or_process_is_refused(prefix: str, missing: str | None) -> None:
    if missing is None:
        compile_format(prefix)
        return
    with pytest.raises(LogFormatError) as err:
        compile_format(prefix)
    text = str(err.value)
    assert isinstance(err.value, ValueError)
    assert f"has no {missing}" in text and f"log_line_prefix = '{prefix}'" in text
    assert "parameter group" in text and "'%t:%r:%u@%d:[%p]:'" in text


def test_refusal_messages_say_what_to_change() -> None:
    with pytest.raises(LogFormatError, match=r"^log_line_prefix = '%m \[%p\] ' has no %u \(user name\)"):
        compile_format("%m [%p] ")
    with pytest.raises(LogFormatError, match=r"has no %p \(process ID\) or %c \(session ID\)"):
        compile_format("%t:%u@%d:")
    with pytest.raises(LogFormatError, match="log_timezone = 'Mars/Olympus'"):
        compile_format(AURORA_PREFIX, "Mars/Olympus")
    with pytest.raises(LogFormatError, match="line break"):
        compile_format("%m [%p]\n%u ")


def test_user_and_process_after_q_and_session_id_alone_are_fine() -> None:
    assert compile_format(DEBIAN_PREFIX).login(auth(DEBIAN_PREFIX, Session())) is not None
    fmt = compile_format(SESSION)
    s = Session(pid=77)
    user, key, ts = fmt.login(auth(SESSION, s)) or ("", 0, WHEN)
    assert (user, ts) == ("alice", WHEN) and key == logformat._session_key(f"{int(s.start.timestamp()):x}.4d")


def test_is_default_only_for_auroras_prefix_in_utc() -> None:
    assert DEFAULT_FORMAT.is_default and LogFormat(AURORA_PREFIX, "Etc/UTC").is_default
    assert not LogFormat(AURORA_PREFIX, "Europe/Berlin").is_default
    assert not LogFormat(AURORA_16_PREFIX).is_default
    assert compile_format(AURORA_PREFIX) == DEFAULT_FORMAT and hash(compile_format(AURORA_PREFIX))
    assert compile_format("%t [%p] %u ").has_time
    assert not compile_format("[%p] %u ").has_time and compile_format("%n [%p] %u ").has_time


# -- every escape --------------------------------------------------------------------------------

ESCAPES = "aurhLbpPtmnieclsvxQq%zZk"


@pytest.mark.parametrize("padding", ["", "-12", "12", "1", "-1", "0", "-0"])
@pytest.mark.parametrize("escape", list(ESCAPES))
def test_every_escape_with_padding(escape: str, padding: str) -> None:
    """Each escape (and unknown ones) between separators, padded either way, is read back."""
    prefix = f"%m <%{padding}{escape}> [%p] %u@%d "
    fmt = compile_format(prefix)
    for s in (Session(), Session(host="[local]", port="", local="[local]", app="psql")):
        line = auth(prefix, s, tail=" application_name=psql")
        assert fmt.login(line) == ("alice", 4242, WHEN), line


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_every_escape_at_the_start_and_the_end(escape: str) -> None:
    for prefix in (f"%{escape}%t [%p] %u@%d ", f"%t [%p] %u@%d %{escape}", f"%t [%p] %u@%d %-3{escape}:"):
        line = auth(prefix, Session())
        expected = WHEN if escape in "mn" else WHEN.replace(microsecond=0)  # %m and %n before %t
        assert compile_format(prefix).login(line) == ("alice", 4242, expected), line


def test_times_by_preference_and_their_forms() -> None:
    s = Session()
    for prefix, expected in [
        ("%t [%p] %u@%d ", WHEN.replace(microsecond=0)),
        ("%m [%p] %u@%d ", WHEN),
        ("%n [%p] %u@%d ", WHEN),
        ("%t %m [%p] %u@%d ", WHEN),  # %m before %t
        ("%t %n [%p] %u@%d ", WHEN),  # %n before %t
        ("%s [%p] %u@%d ", None),  # the session start is no log time: the event's is used
        ("[%p] %u@%d ", None),
    ]:
        fmt = compile_format(prefix)
        line = auth(prefix, s)
        got = fmt.login(line, event_ts=WHEN - timedelta(hours=1))
        assert got is not None and got[2] == (expected or WHEN - timedelta(hours=1)), prefix
        if expected is None:
            assert fmt.login(line) is None  # no time at all: not credited


@pytest.mark.parametrize(
    ("zone", "abbreviation"),
    [("Asia/Dubai", "+04"), ("America/St_Johns", "NST"), ("Asia/Kolkata", "IST"), ("Etc/GMT+5", "-05")],
)
def test_numeric_and_named_zones(zone: str, abbreviation: str) -> None:
    s = Session(zone=zone)
    line = auth(DEBIAN_PREFIX, s)
    assert f" {abbreviation} [" in line
    assert compile_format(DEBIAN_PREFIX, zone).login(line) == ("alice", 4242, WHEN)


def test_numeric_abbreviations() -> None:
    assert utc_time("2026-11-26 12:54:51", "+03", "UTC") == WHEN.replace(microsecond=0)
    assert utc_time("2026-11-26 06:24:51", "-0330", "UTC") == WHEN.replace(microsecond=0)
    assert utc_time("2026-11-26 06:24:51", "-03:30", "UTC") == WHEN.replace(microsecond=0)
    assert utc_time("2026-02-30 06:24:51", "UTC", "UTC") is None
    assert utc_time("2026-11-26 06:24:61", "UTC", "UTC") is None


def test_a_non_utc_log_timezone_and_the_dst_fold() -> None:
    """Europe/Berlin: CET in winter, CEST in summer, 02:00-03:00 twice on 2026-10-25."""
    fmt = compile_format(DEBIAN_PREFIX, "Europe/Berlin")
    assert utc_time("2026-11-26 10:54:51", "CET", "Europe/Berlin") == WHEN.replace(microsecond=0)
    assert utc_time("2026-07-01 12:00:00", "CEST", "Europe/Berlin") == datetime(2026, 7, 1, 10, tzinfo=UTC)
    first = utc_time("2026-10-25 02:30:00", "CEST", "Europe/Berlin")
    second = utc_time("2026-10-25 02:30:00", "CET", "Europe/Berlin")
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert second == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert utc_time("2026-03-29 03:30:00", "CEST", "Europe/Berlin") == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )
    # A login in each reading of the repeated hour: the later one (CET) is the user's last.
    s = Session(zone="Europe/Berlin")
    lines = [
        auth(DEBIAN_PREFIX, s, datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        auth(DEBIAN_PREFIX, Session(zone="Europe/Berlin", pid=5), datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
    ]
    assert " CEST [" in lines[0] and " CET [" in lines[1] and lines[0][:19] == lines[1][:19]
    assert read(lines, fmt).last_login == {"alice": datetime(2026, 10, 25, 1, 30, tzinfo=UTC)}
    # The default prefix in that zone is read by the format too (the fast paths know only UTC).
    berlin_default = compile_format(AURORA_PREFIX, "Europe/Berlin")
    assert not berlin_default.is_default
    line = auth(AURORA_PREFIX, s, datetime(2026, 10, 25, 1, 30, tzinfo=UTC))
    assert read([line], berlin_default).last_login == {"alice": datetime(2026, 10, 25, 1, 30, tzinfo=UTC)}


def test_an_abbreviation_that_does_not_fit_the_zone_uses_the_event_time() -> None:
    fmt = compile_format(DEBIAN_PREFIX, "Europe/Berlin")
    line = auth(DEBIAN_PREFIX, Session(zone="America/New_York"))  # "EST", not Berlin's
    assert " EST [" in line
    event = WHEN + timedelta(seconds=2)
    assert read([line], fmt, [event]).last_login == {"alice": event}
    s = read([line], fmt)
    assert s.last_login == {} and s.connection_events == 1 and s.unrecognised_example is not None


# -- the prefixes servers use --------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [AURORA_PREFIX, AURORA_16_PREFIX, DEBIAN_PREFIX, KEYED, SESSION])
def test_common_prefixes_credit_logins_and_honour_rejections(prefix: str) -> None:
    fmt = LogFormat(prefix, "UTC")
    al, bo, lo, ev = (
        Session(user=u, pid=p) for u, p in (("al", 10), ("bo", 11), ("locked", 12), ("eve", 13))
    )
    t = [WHEN + timedelta(seconds=i) for i in range(6)]
    lines = [
        auth(prefix, al, t[0], " application_name=psql"),
        auth(prefix, bo, t[1], " SSL enabled (protocol=TLSv1.3, cipher=X, bits=256)"),
        auth(prefix, lo, t[2]),
        fatal(prefix, lo, 'role "locked" is not permitted to log in', t[2]),
        fatal(prefix, ev, 'password authentication failed for user "eve"', t[3], "28P01"),
        render(prefix, al.values(t[4]))
        + "LOG:  statement: select 'connection authorized: user=victim database=app'",
        render(prefix, al.values(t[4]))
        + "LOG:  disconnection: session time: 0:00:01.234 user=al database=app",
    ]
    s = read(lines, fmt)
    assert s.last_login == {"al": exact(prefix, t[0]), "bo": exact(prefix, t[1])}
    assert s.rejected == {"locked": 1} and s.failed_auth == {"eve": 1}
    assert s.logins == 2 and s.connection_events == 3 and s.unrecognised_example is None and s.events == 7


def test_application_name_holding_separators_and_more_prefix() -> None:
    """``%a`` with ``:``, ``@`` and text that looks like the rest of the prefix, before and after ``%p``."""
    for prefix in ("%m:%r:%u@%d:[%p]:%a:", "%m %a [%p] %u@%d ", KEYED, AURORA_16_PREFIX):
        fmt = compile_format(prefix)
        for app in ("my app: x@y", "x [1] bob@db", "]: user=bob,db=db,app=", "a:[1]:LOG:  b", "[unknown]"):
            s = Session(user="bob", database="db", pid=77, app=app)
            line = auth(prefix, s)
            assert fmt.login(line) == ("bob", 77, WHEN if "%m" in prefix else WHEN.replace(microsecond=0))
            # ... and its rejection is found whatever the first reading of the FATAL says
            lines = [line, fatal(prefix, s, 'role "bob" is not permitted to log in')]
            got = read(lines, fmt)
            assert got.rejected == {"bob": 1} and got.last_login == {}, (prefix, app)


def test_names_with_separators() -> None:
    """Role and database names holding the prefix's own separators, split where the message agrees."""
    names = ["a@b", "x:y", "o'b @x:y", "a b", 'q"uote', "user=bob", "[1]", "x:[1]:LOG:  y", "😀", "[unknown]"]
    for prefix in (AURORA_16_PREFIX, DEBIAN_PREFIX, KEYED, SESSION, "%m [%p] %-20u@%20d "):
        fmt = compile_format(prefix)
        lines = []
        for i, user in enumerate(names):
            for j, db in enumerate(["app", "b@c", "d:[2]:", "x y", "[unknown]"]):
                session = Session(user=user, database=db, pid=100 + 10 * i + j)
                lines.append(auth(prefix, session, WHEN + timedelta(seconds=i)))
        s = read(lines, fmt)
        assert s.last_login == {u: exact(prefix, WHEN + timedelta(seconds=i)) for i, u in enumerate(names)}, (
            prefix
        )
        assert s.logins == len(lines) == s.connection_events


def test_a_rejected_user_with_at_in_its_name_is_cancelled() -> None:
    """``%u@%d`` first reads ``a`` for role ``a@b``; the reading that agrees with the pending login wins."""
    s = Session(user="a@b", database="c", pid=9)
    lines = [auth(DEBIAN_PREFIX, s), fatal(DEBIAN_PREFIX, s, 'role "a@b" is not permitted to log in')]
    assert compile_format(DEBIAN_PREFIX).fatal(lines[1])[0] == "a"  # type: ignore[index]
    got = read(lines, compile_format(DEBIAN_PREFIX))
    assert got.rejected == {"a@b": 1} and got.last_login == {}


def test_replication_connections() -> None:
    for prefix in (AURORA_16_PREFIX, DEBIAN_PREFIX):
        fmt = compile_format(prefix)
        s = Session(user="rep", database="[unknown]")
        line = render(prefix, s.values(WHEN)) + "LOG:  replication connection authorized: user=rep"
        assert fmt.login(line) is not None
        assert fmt.login(line + " application_name=walreceiver") is not None
        assert fmt.login(line + " database=app") is None  # never written for replication
        logical = Session(user="rep", database="app")
        assert fmt.login(
            render(prefix, logical.values(WHEN)) + "LOG:  replication connection authorized: user=rep"
        )


# -- forgeries and rejections -----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [AURORA_16_PREFIX, DEBIAN_PREFIX, KEYED, SESSION])
def test_forged_lines_credit_nobody(prefix: str) -> None:
    fmt = compile_format(prefix)
    mallory = Session(user="mallory")
    head = render(prefix, mallory.values(WHEN))
    forged = [
        head + "LOG:  statement: select 'connection authorized: user=victim database=app'",
        head + "LOG:  statement: select '" + auth(prefix, Session(user="victim")) + "'",
        head + "LOG:  connection authorized: user=victim database=app",  # prefix and message disagree
        head + "LOG:  connection authorized: user=mallory database=other",  # %d disagrees
        head + "LOG:  connection authorized: user=mallory database=appx",  # database=appx is another
        head + "LOG:  statement: select 1;\n" + auth(prefix, Session(user="victim")),  # second line
        head + "ERROR:  connection authorized: user=mallory database=app",
        auth(prefix, mallory)[:-3],  # truncated
    ]
    s = read(forged, fmt)
    assert s.last_login == {} and s.logins == 0
    assert "victim" not in (s.unrecognised_example or "") and "mallory" not in (s.unrecognised_example or "")
    # a statement merely quoting the phrase is no connection event; one quoting a whole line is
    assert s.connection_events == 5


def test_fatal_rules_follow_logparse() -> None:
    prefix = AURORA_16_PREFIX
    fmt = compile_format(prefix)
    t = [WHEN + timedelta(seconds=i) for i in range(200)]
    u = {
        name: Session(user=name, pid=pid) for name, pid in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]
    }
    lines = [
        auth(prefix, u["a"], t[0]),
        fatal(prefix, Session(user="a", pid=99), 'role "a" is not permitted to log in', t[0]),  # other pid
        auth(prefix, u["b"], t[1]),
        fatal(prefix, Session(user="x", pid=2), 'role "x" is not permitted to log in', t[1]),  # other user
        auth(prefix, u["c"], t[2]),
        fatal(
            prefix, u["c"], "terminating connection due to administrator command", t[2], "57P01"
        ),  # no rejection
        auth(prefix, u["d"], t[3]),
        fatal(prefix, u["d"], 'too many connections for role "d"', t[3], "53300"),
        auth(prefix, u["e"], t[4]),
        auth(prefix, Session(user="b", pid=6), t[90]),  # the login that settles "e"
        fatal(prefix, u["e"], 'database "nope" does not exist', t[100], "3D000"),  # too late
        render(prefix, u["a"].values(t[150])) + 'LOG:  role "a" is not permitted to log in',  # not FATAL
    ]
    s = read(lines, fmt)
    assert set(s.last_login) == {"a", "b", "c", "e"} and s.rejected == {"d": 1}


def test_the_pid_reused_after_a_login_accepts_it() -> None:
    fmt = compile_format(DEBIAN_PREFIX)
    lines = [
        auth(DEBIAN_PREFIX, Session(user="first", pid=7), WHEN),
        auth(DEBIAN_PREFIX, Session(user="second", pid=7), WHEN + timedelta(seconds=1)),
        fatal(DEBIAN_PREFIX, Session(user="second", pid=7), 'role "second" is not permitted to log in'),
    ]
    s = read(lines, fmt)
    assert set(s.last_login) == {"first"} and s.rejected == {"second": 1}


def test_session_id_keys_rejections() -> None:
    """With ``%c`` and no ``%p``: the same pid in another session (another start time) is another key."""
    fmt = compile_format(SESSION)
    old = Session(user="u", pid=7, start=WHEN - timedelta(hours=1))
    new = Session(user="u", pid=7)
    lines = [auth(SESSION, new), fatal(SESSION, old, 'role "u" is not permitted to log in')]
    assert read(lines, fmt).last_login == {"u": WHEN}
    lines = [auth(SESSION, new), fatal(SESSION, new, 'role "u" is not permitted to log in')]
    assert read(lines, fmt).rejected == {"u": 1}


# -- what the log-gap guard reads ------------------------------------------------------------------


def test_connection_events_and_an_unrecognised_example_are_redacted() -> None:
    """A log in another prefix than the one given: counted, none credited, one example without names."""
    fmt = compile_format(AURORA_16_PREFIX)
    s = Session(user="secretuser", database="secretdb", host="10.9.8.7", port="5432")
    lines = [auth(DEBIAN_PREFIX, s), auth(DEBIAN_PREFIX, Session(user="other")), "garbage"]
    got = read(lines, fmt)
    assert got.logins == 0 and got.connection_events == 2
    example = got.unrecognised_example
    assert example is not None and example == redact(lines[0])
    assert example.startswith("0000-00-00 00:00:00.000 … [0000] …@… LOG:  connection authorized: user=")
    for secret in ("secretuser", "secretdb", "10.9.8.7", "alice", "app"):
        assert secret not in example
    assert redact(
        "2026-11-26 09:54:51 UTC:10.0.0.7(5):al@app:[59]:LOG:  replication connection authorized: user=al"
    ) == ("0000-00-00 00:00:00 …:00.0.0.0(0):…@…:[00]:LOG:  replication connection authorized: user=…")


def test_merge_combines_the_new_fields() -> None:
    a, b = LoginSummary(connection_events=2), LoginSummary(connection_events=3, unrecognised_example="x")
    a.merge(b)
    assert a.connection_events == 5 and a.unrecognised_example == "x"
    a.merge(LoginSummary(unrecognised_example="y"))
    assert a.unrecognised_example == "x"


# -- the default format ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_the_default_format_is_the_default_path(seed: int) -> None:
    events = mix(2000, seed)
    texts = [text for text, _ts in events]
    for fmt in (DEFAULT_FORMAT, LogFormat(AURORA_PREFIX, "Etc/UTC")):
        plain, explicit = LoginAggregator(), LoginAggregator(log_format=fmt)
        assert explicit._format is None
        plain.feed_lines(texts)
        explicit.feed_lines(texts)
        assert explicit.finish() == plain.finish()
        plain, explicit = LoginAggregator(), LoginAggregator(log_format=fmt)
        plain.feed_many(events)
        explicit.feed_many(events)
        assert explicit.finish() == plain.finish()
    assert summarize(texts, log_format=DEFAULT_FORMAT) == summarize(texts)
    assert summarize(texts).connection_events > 0


def test_the_default_paths_count_connection_events_as_feed_does() -> None:
    events = mix(3000, 7)
    ref = LoginAggregator()
    for text, ts in events:
        ref.feed(text, ts)
    fast = LoginAggregator()
    fast.feed_many(events)
    r, f = ref.finish(), fast.finish()
    assert f.connection_events == r.connection_events > f.logins > 0
    assert f.unrecognised_example == r.unrecognised_example is not None


@dataclass
class Event:
    """One thing a backend logged, to be written in any prefix."""

    second: int
    session: Session
    kind: str  # login, login_app, replication, rejected, failed, statement, received


def events(n: int, seed: int) -> list[Event]:
    import random

    rng = random.Random(seed)
    users = ["alice", "bob", "carol", "a b", "x:y", "a@b", 'q"uote', "😀"]
    dbs = ["app", "analytics", "d:[2]:", "b@c"]
    out, second = [], 0
    for i in range(n):
        second += rng.choice([0, 0, 1, 3, 61])
        s = Session(
            user=rng.choice(users),
            database=rng.choice(dbs),
            pid=1000 + i,
            host=rng.choice(["10.0.0.7", "::1"]),
        )
        kind = rng.choices(
            ["login", "login_app", "replication", "rejected", "failed", "statement", "received"],
            [40, 20, 5, 5, 10, 10, 10],
        )[0]
        if kind == "rejected" and "@" in s.user:  # the default path splits %u@%d at the first "@" for FATALs
            kind = "login"
        out.append(Event(second, s, kind))
    return out


def write(prefix: str, evs: list[Event]) -> list[str]:
    lines: list[str] = []
    for ev in evs:
        s, when = ev.session, WHEN.replace(microsecond=0) + timedelta(seconds=ev.second)
        head = render(prefix, s.values(when))
        if ev.kind == "login":
            lines.append(auth(prefix, s, when))
        elif ev.kind == "login_app":
            lines.append(
                auth(prefix, s, when, " application_name=psql SSL enabled (protocol=TLSv1.3, bits=256)")
            )
        elif ev.kind == "replication":
            rep = Session(user=s.user, database="[unknown]", pid=s.pid)
            lines.append(
                render(prefix, rep.values(when)) + f"LOG:  replication connection authorized: user={s.user}"
            )
        elif ev.kind == "rejected":
            lines.append(auth(prefix, s, when))
            lines.append(fatal(prefix, s, f'role "{s.user}" is not permitted to log in', when))
        elif ev.kind == "failed":
            lines.append(
                fatal(prefix, s, f'password authentication failed for user "{s.user}"', when, "28P01")
            )
        elif ev.kind == "statement":
            lines.append(head + "LOG:  statement: select 'connection authorized: user=victim database=app'")
        else:
            lines.append(head + f"LOG:  connection received: host={s.host} port={s.port}")
    return lines


@pytest.mark.parametrize("seed", range(4))
def test_the_alternative_aurora_prefix_gives_the_default_result(seed: int) -> None:
    """The same events written in both Aurora prefixes: the same logins, rejections and failures."""
    evs = events(3000, seed)
    default = summarize(write(AURORA_PREFIX, evs))
    for prefix in (AURORA_16_PREFIX, DEBIAN_PREFIX, KEYED, SESSION):
        other = summarize(write(prefix, evs), log_format=compile_format(prefix))
        assert other.last_login == default.last_login, prefix
        assert (other.rejected, other.failed_auth) == (default.rejected, default.failed_auth)
        assert (other.logins, other.connection_events, other.events) == (
            default.logins,
            default.connection_events,
            default.events,
        )
    assert default.rejected and default.failed_auth and default.logins


# -- any prefix ------------------------------------------------------------------------------------

# Free-text values hold separators but no digits, so that a lazy field cannot take a time's digits.
free = st.sampled_from(["x", "a b", "a@b", "x:y", "[x]", "a,b", "q'", "(p)", "-", "é", "user=x", "]: "])
escape = st.sampled_from([*"aurhLbpPtmnieclsvxQq%", "u", "p", "d", "z"])
literal = st.sampled_from([":", " ", "@", "[", "]", "|", ",", "=", "-", "user=", " db=", "(", ")", "/"])


@st.composite
def prefixes(draw: st.DrawFn) -> str:
    """Escapes (padded or not) each followed by a separator, %u and a process identity among them.

    The separator keeps two escapes from running together ("%p%r" prints "3110.0.0.7(1)", which
    no reader can split): that ambiguity is the prefix's, not the recogniser's.
    """
    units: list[str] = []
    for _ in range(draw(st.integers(1, 8))):
        pad = draw(st.sampled_from(["", "", "-5", "7", "-1"]))
        units.append(f"%{pad}{draw(escape)}{draw(literal)}" if draw(st.booleans()) else draw(literal))
    units.insert(draw(st.integers(0, len(units))), "%u" + draw(literal))
    units.insert(
        draw(st.integers(0, len(units))), draw(st.sampled_from(["%p", "%c", "%-8p"])) + draw(literal)
    )
    units.insert(0, draw(st.sampled_from(["%m ", "%t:", "%n ", "", "%q"])))
    return "".join(units)


@settings(max_examples=300, deadline=None)
@given(prefixes(), st.lists(free, min_size=4, max_size=4), free, free)
def test_any_prefix_reads_back_what_the_server_writes(
    prefix: str, users: list[str], db: str, app: str
) -> None:
    fmt = compile_format(prefix)
    if len(set(users)) < 4:
        return
    when = [WHEN + timedelta(seconds=i) for i in range(4)]
    ok, locked, failed, other = (
        Session(user=u, database=db, app=app, pid=p, host=h)
        for u, p, h in zip(
            users, (31, 32, 33, 34), ("10.0.0.7", "[local]", "::1", "db.example.com"), strict=True
        )
    )
    lines = [
        auth(prefix, ok, when[0], " application_name=x"),
        auth(prefix, locked, when[1]),
        fatal(prefix, locked, f'role "{locked.user}" is not permitted to log in', when[1]),
        fatal(prefix, failed, f'password authentication failed for user "{failed.user}"', when[2], "28P01"),
        render(prefix, other.values(when[3]))
        + f"LOG:  connection authorized: user=not{other.user} database={db}",
    ]
    event = WHEN - timedelta(days=1)
    found = fmt.login(lines[0], event)
    expected = when[0] if fmt._time in ("m", "n") else when[0].replace(microsecond=0)
    if fmt._time is None:
        expected = event
    # the key is the true one unless a name or address next to it begins or ends like one (a
    # prefix such as "%p%r"); the readings of the login and its rejection still agree
    assert found is not None and found[0] == ok.user and found[2] == expected
    s = read(lines, fmt, [event] * len(lines))
    assert s.last_login == {ok.user: expected}, lines
    assert s.rejected == {locked.user: 1} and s.failed_auth == {failed.user: 1}
    assert s.connection_events == 3 and s.unrecognised_example is not None


# -- the shipper ----------------------------------------------------------------------------------


def test_shipper_starts_entries_at_any_leading_time() -> None:
    s = Session(zone="Europe/Berlin")
    for prefix in (DEBIAN_PREFIX, AURORA_16_PREFIX, KEYED, "%-30m|[%p] %u@%d "):
        lines = [auth(prefix, s), "\tcontinued", auth(prefix, s, WHEN + timedelta(seconds=1)), "DETAIL:  x"]
        got = shipper.events_from_lines(lines, tz="Europe/Berlin", log_line_prefix=prefix)
        assert [e["message"] for e in got] == [lines[0] + "\n\tcontinued", lines[2] + "\nDETAIL:  x"], prefix
        expected_ms = int(WHEN.timestamp() * 1000) if "m" in prefix[:5] else int(WHEN.timestamp()) * 1000
        assert got[0]["timestamp"] == expected_ms
    default = [auth(AURORA_PREFIX, Session()), "2026-11-26 09:54:51 UTC more"]  # a space: a continuation
    assert len(shipper.events_from_lines(default)) == 1
    assert shipper.entry_start() is shipper.ENTRY_START
    with pytest.raises(ValueError, match="does not start with %t or %m"):
        shipper.entry_start("[%p] %m %u ")
