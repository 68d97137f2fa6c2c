"""The batch path (``feed_lines``/``feed_many``) against the line-by-line reference (``feed``).

The batch path decides common lines itself and hands the rest to the general parser, so its
result must be exactly what ``feed`` gives: same logins, rejections, failures, counts, pending
window, on any input.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inactive_users.core import logparse
from inactive_users.core.logparse import LoginAggregator, LoginSummary, parse_timestamp, summarize
from inactive_users.core.pgmessages import failed_user

WHEN = datetime(2026, 11, 26, 9, 54, 51, tzinfo=UTC)
Event = tuple[str, datetime | None]


def reference(
    events: list[Event], settle: timedelta = timedelta(seconds=60), read_until: datetime | None = None
) -> tuple[LoginSummary, list[tuple[int, tuple[str, datetime]]]]:
    agg = LoginAggregator(settle)
    for message, ts in events:
        agg.feed(message, ts)
    pending = list(agg._pending.items())
    return agg.finish(read_until), pending


def batched(
    events: list[Event],
    settle: timedelta = timedelta(seconds=60),
    read_until: datetime | None = None,
    cuts: tuple[int, ...] = (),
) -> tuple[LoginSummary, list[tuple[int, tuple[str, datetime]]]]:
    """The batch path, the events split into several ``feed_many`` calls at ``cuts``."""
    agg = LoginAggregator(settle)
    start = 0
    for cut in (*sorted(cuts), len(events)):
        agg.feed_many(events[start:cut])
        start = max(start, cut)
    pending = list(agg._pending.items())
    return agg.finish(read_until), pending


def assert_same(
    events: list[Event],
    settle: timedelta = timedelta(seconds=60),
    read_until: datetime | None = None,
    cuts: tuple[int, ...] = (),
) -> LoginSummary:
    expected = reference(events, settle, read_until)
    got = batched(events, settle, read_until, cuts)
    assert got[1] == expected[1]  # the same logins still pending, in the same order
    assert got[0] == expected[0]
    return got[0]


def line(
    user: str, db: str, message: str, remote: str = "10.0.0.7(5000)", pid: int = 42, ts: str = ""
) -> str:
    return f"{ts or stamp(0)}:{remote}:{user}@{db}:[{pid}]:{message}"


def auth(
    user: str, db: str, suffix: str = "", remote: str = "10.0.0.7(5000)", pid: int = 42, ts: str = ""
) -> str:
    return line(user, db, f"LOG:  connection authorized: user={user} database={db}{suffix}", remote, pid, ts)


def stamp(seconds: int) -> str:
    return (WHEN + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- a generated mix -------------------------------------------------------------------------------

# Names that look like more prefix ("x:[1]:LOG:  y") make split_line find the severity inside them;
# "[local]:x(1)" is a remote that only a backtracking regex would read as "host(port)".
USERS = [
    "alice",
    "bob",
    "carol",
    "a b",
    "a@b",
    "x:y",
    "😀 emoji",
    'q"uote',
    "user=bob",
    "Ünïcødé",
    "x:[1]:LOG:  y",
]
DATABASES = ["app", "analytics", "b@c", "d:[2]:", "база", "", "d:[1]:LOG:  "]
REMOTES = [
    "10.0.0.7(51244)",
    "[local]",
    "::1(5432)",
    "2001:db8::17(60000)",
    "db.example.com(1)",
    "",
    "[local]:x(1)",
]
SUFFIXES = [
    "",
    " application_name=psql",
    " application_name=x y SSL enabled (protocol=TLSv1.3, cipher=Y, bits=256)",
    " SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)",
    " GSS (authenticated=yes, encrypted=yes, principal=a@EX.COM)",
]
# What may not follow "user=U database=D" ("database=appx" names another database).
NOT_SUFFIXES = ["x", " x", " database=other", "\x00"]
REJECTIONS = [
    'role "{u}" is not permitted to log in',
    'too many connections for role "{u}"',
    'permission denied for database "{d}"',
    'database "{d}" does not exist',
    "remaining connection slots are reserved for non-replication superuser connections",
    "terminating connection due to administrator command",  # not a rejection
]


def mix(n: int, seed: int) -> list[Event]:
    """Time-ordered lines of every shape, hostile ones included, with an event time each."""
    rng = random.Random(seed)
    events: list[Event] = []
    second = 0
    for _ in range(n):
        second += rng.choice([0, 0, 0, 1, 1, 7, 61])
        when = WHEN + timedelta(seconds=second)
        user = rng.choice(USERS[:3]) if rng.random() < 0.7 else rng.choice(USERS)
        db = rng.choice(DATABASES[:2]) if rng.random() < 0.7 else rng.choice(DATABASES)
        remote, pid, ts = rng.choice(REMOTES), rng.randrange(1, 40), stamp(second)

        def said(
            message: str, user: str = user, db: str = db, remote: str = remote, pid: int = pid, ts: str = ts
        ) -> str:
            return line(user, db, message, remote, pid, ts)

        r = rng.random()
        if r < 0.40:
            text = said(
                f"LOG:  connection authorized: user={user} database={db}{rng.choice(SUFFIXES + NOT_SUFFIXES)}"
            )
        elif r < 0.45:
            tail = rng.choice(SUFFIXES + NOT_SUFFIXES)
            text = said(f"LOG:  replication connection authorized: user={user}{tail}", db="")
        elif r < 0.55:  # authorized, then (maybe) rejected by the same backend
            events.append((said(f"LOG:  connection authorized: user={user} database={db}"), when))
            reason = rng.choice(REJECTIONS).format(u=user, d=db)
            text = said(f"FATAL:  {reason}", user=user if rng.random() < 0.9 else "bob")
        elif r < 0.62:
            text = said(f'FATAL:  password authentication failed for user "{user}"')
        elif r < 0.67:  # a statement quoting the phrase, the victim's name in it
            text = said(f"LOG:  statement: select 'connection authorized: user=victim database={db}'")
        elif r < 0.70:  # the same, forging the whole prefix
            text = said(
                f"LOG:  statement: select ':[1]:LOG:  connection authorized: user=victim database={db}'"
            )
        elif r < 0.74:  # the prefix's user and the message's disagree
            text = said(f"LOG:  connection authorized: user=victim database={db}")
        elif r < 0.77:  # truncated
            full = said(f"LOG:  connection authorized: user={user} database={db}{rng.choice(SUFFIXES)}")
            text = full[: rng.randrange(len(full))]
        elif r < 0.80:  # a zone abbreviation that cannot be resolved: the event time is used
            text = auth(user, db, ts=when.strftime("%Y-%m-%d %H:%M:%S EST"))
        elif r < 0.82:  # milliseconds, or a numeric zone
            text = auth(
                user, db, ts=when.strftime("%Y-%m-%d %H:%M:%S") + rng.choice([".123 UTC", " +01", " -05:30"])
            )
        elif r < 0.84:  # a multi-line event: only its first line counts
            text = said("LOG:  statement: select 1;\n") + auth("victim", "app", ts=ts)
        elif r < 0.85:
            text = auth(user, db, ts=ts) + "\n" + rng.choice(["", "DETAIL:  x", auth("victim", "app")])
        elif r < 0.86:  # no such date, or non-ASCII digits
            text = auth(
                user,
                db,
                ts=rng.choice(["2026-02-30 01:00:00 UTC", "\uff12\uff10\uff12\uff16-11-26 09:54:51 UTC"]),
            )
        elif r < 0.87:
            text = auth(user, db, pid=pid, ts=stamp(second - 30))  # out of order
        elif r < 0.94:
            text = said(
                rng.choice(
                    [
                        "LOG:  connection received: host=10.0.0.7 port=5000",
                        "LOG:  disconnection: session time: 0:00:01.234 user=x database=y host=z port=1",
                    ]
                )
            )
        else:
            text = rng.choice(
                ["", "garbage", "LOG:  connection authorized: user=alice database=app", "FATAL:"]
            )
        events.append((text, when))
    return events


@pytest.mark.parametrize("seed", range(8))
def test_generated_mix_gives_the_same_summary(seed: int) -> None:
    events = mix(3000, seed)
    s = assert_same(events, cuts=(100, 101, 1500))
    assert s.logins and s.rejected and s.failed_auth  # the mix exercises every outcome
    for read_until in (None, WHEN + timedelta(seconds=len(events) // 2)):
        assert_same(events, read_until=read_until)
    for settle in (timedelta(0), timedelta(seconds=5), timedelta(seconds=-1)):
        assert_same(events, settle=settle)


def test_lines_without_event_times() -> None:
    texts = [text for text, _ts in mix(2000, 99)]
    agg = LoginAggregator()
    agg.feed_lines(texts)
    assert agg.finish() == reference([(t, None) for t in texts])[0]
    assert summarize(texts) == agg.summary


def test_hostile_lines_are_ignored_by_the_batch_path_too() -> None:
    lines = [
        line("mallory", "app", "LOG:  statement: select 'connection authorized: user=victim database=app'"),
        line(
            "mallory",
            "app",
            "LOG:  statement: select ':[1]:LOG:  connection authorized: user=victim database=app'",
        ),
        line("mallory", "app", "LOG:  connection authorized: user=victim database=app"),
        line("alice", "app", "LOG:  connection authorized: user=alice database=other"),
        line("alice", "app", "LOG:  connection authorized: user=ali"),
        line("alice", "app", "FATAL:  connection authorized: user=alice database=app"),
        line("mallory", "app", "LOG:  statement: select 1;\n") + auth("victim", "app"),
        auth("locked", "app", pid=7),
        line("locked", "app", 'FATAL:  role "locked" is not permitted to log in', pid=7),
    ]
    agg = LoginAggregator()
    agg.feed_lines(lines)
    s = agg.finish()
    assert s.last_login == {} and s.rejected == {"locked": 1} and s.events == len(lines)


def test_common_lines_never_reach_the_general_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise the comparisons above would only compare the general parser with itself."""

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("general parser used")

    monkeypatch.setattr(logparse, "parse_login", boom)
    monkeypatch.setattr(logparse, "split_line", boom)
    lines = []
    for i in range(300):
        remote, pid, ts = REMOTES[i % 5], 1000 + i, stamp(i // 3)
        lines += [
            auth(USERS[i % 3], "app", SUFFIXES[i % len(SUFFIXES)], remote, pid, ts),
            line(
                "rep",
                "",
                "LOG:  replication connection authorized: user=rep application_name=w",
                remote,
                pid,
                ts,
            ),
            line("bob", "app", 'FATAL:  password authentication failed for user "bob"', remote, pid, ts),
            line("x", "app", "LOG:  statement: select 'connection authorized: user=victim'", remote, pid, ts),
            line("x", "app", "LOG:  connection received: host=10.0.0.7 port=5000", remote, pid, ts),
        ]
    lines += [
        auth("locked", "app", pid=1),
        line("locked", "app", 'FATAL:  role "locked" is not permitted to log in', pid=1),
    ]
    agg = LoginAggregator()
    agg.feed_lines(lines)
    s = agg.finish()
    assert set(s.last_login) == {"alice", "bob", "carol", "rep"}
    assert s.logins == 600 and s.failed_auth == {"bob": 300} and s.rejected == {"locked": 1}


def test_window_stays_bounded_and_latest_wins() -> None:
    agg = LoginAggregator(settle=timedelta(seconds=60))
    for i in range(5000):
        agg.feed_lines([auth(f"user{i % 10}", "app", ts=stamp(i), pid=1000 + i)])
        assert len(agg._pending) <= 62
    s = agg.finish()
    assert len(s.last_login) == 10 and s.logins == 5000
    assert s.last_login["user9"] == WHEN + timedelta(seconds=4999)


def test_feed_and_batches_can_be_mixed() -> None:
    events = mix(1000, 7)
    agg = LoginAggregator()
    for i, (text, ts) in enumerate(events):
        if i % 3:
            agg.feed_many([(text, ts)])
        else:
            agg.feed(text, ts)
    assert agg.finish() == reference(events)[0]


def test_out_of_order_logins_keep_the_latest() -> None:
    events: list[Event] = [
        (auth("alice", "app", ts=stamp(100), pid=1), None),
        (auth("alice", "app", ts=stamp(10), pid=2), None),  # earlier, fed later
        (auth("bob", "app", ts=stamp(500), pid=3), None),
        (auth("alice", "app", ts=stamp(50), pid=1), None),  # pid 1 reused
        (auth("carol", "app", ts=stamp(1000), pid=4), None),
    ]
    s = assert_same(events)
    assert s.last_login["alice"] == WHEN + timedelta(seconds=100)


def test_a_general_path_login_within_one_second_keeps_the_order_known() -> None:
    """A login read by the general parser, later than the fast lines of the same second around it."""
    events: list[Event] = [
        (auth("x", "app", ts=stamp(0), pid=1), None),
        (auth("x", "app", ts="2026-11-26 04:54:51 EST", pid=2), WHEN + timedelta(hours=1)),
        (auth("x", "app", ts=stamp(0), pid=3), None),
    ]
    s = assert_same(events)
    assert s.last_login == {"x": WHEN + timedelta(hours=1)}


def test_a_reused_pid_at_the_front_lets_the_window_settle() -> None:
    """An older login held behind the front is settled once the front's pid is reused, as in feed."""
    events: list[Event] = [
        (auth("f", "app", ts=stamp(100), pid=1), None),
        (auth("e", "app", ts=stamp(0), pid=2), None),  # older, behind the front
        (auth("l", "app", ts=stamp(100), pid=3), None),
        (auth("m", "app", ts=stamp(100), pid=1), None),  # pid 1 reused in the same second
        (line("e", "app", 'FATAL:  role "e" is not permitted to log in', pid=2, ts=stamp(100)), None),
    ]
    s = assert_same(events)
    assert "e" in s.last_login and not s.rejected


def test_a_rejected_front_lets_the_window_settle() -> None:
    """The same after the front's login is rejected: what it held back is settled, as in feed."""
    events: list[Event] = [
        (auth("f", "app", ts=stamp(100), pid=1), None),
        (auth("e", "app", ts=stamp(0), pid=2), None),  # older, behind the front
        (auth("l", "app", ts=stamp(100), pid=3), None),
        (line("f", "app", 'FATAL:  role "f" is not permitted to log in', pid=1, ts=stamp(100)), None),
        (auth("m", "app", ts=stamp(100), pid=4), None),  # same second: the window must be settled
        (line("e", "app", 'FATAL:  role "e" is not permitted to log in', pid=2, ts=stamp(100)), None),
    ]
    s = assert_same(events)
    assert "e" in s.last_login and s.rejected == {"f": 1}


# The window's bookkeeping is shared by both paths, so these pin it down against fixed answers.


@pytest.mark.parametrize("feed", ["reference", "batch"])
def test_a_later_login_accepted_first_is_kept(feed: str) -> None:
    """A reused pid accepts a later login before an earlier one of the same user is settled."""
    events: list[Event] = [
        (auth("u", "app", ts=stamp(0), pid=1), None),
        (auth("u", "app", ts=stamp(10), pid=2), None),
        (auth("v", "app", ts=stamp(20), pid=2), None),  # pid 2 reused: u's login at 10 s accepted
        (auth("w", "app", ts=stamp(200), pid=3), None),  # settles u's login at 0 s
    ]
    s = (reference if feed == "reference" else batched)(events)[0]
    assert s.last_login["u"] == WHEN + timedelta(seconds=10)


@pytest.mark.parametrize("feed", ["reference", "batch"])
def test_window_edges(feed: str) -> None:
    """A login exactly ``settle`` old is still pending; at ``read_until - settle`` it is settled."""
    run = reference if feed == "reference" else batched
    events: list[Event] = [
        (auth("locked", "app", ts=stamp(0), pid=1), None),
        (auth("other", "app", ts=stamp(60), pid=2), None),  # exactly 60 s later: not yet settled
        (
            line("locked", "app", 'FATAL:  role "locked" is not permitted to log in', pid=1, ts=stamp(60)),
            None,
        ),
    ]
    s = run(events)[0]
    assert s.rejected == {"locked": 1} and "locked" not in s.last_login
    s = run([(auth("alice", "app"), None)], read_until=WHEN + timedelta(seconds=60))[0]
    assert s.last_login == {"alice": WHEN} and s.unsettled == 0


def test_year_one_in_an_eastern_zone_is_no_time() -> None:
    """It used to raise OverflowError (from astimezone) and stop the whole read."""
    assert parse_timestamp("0001-01-01 00:00:00 +01:rest") is None
    assert parse_timestamp("9999-12-31 23:59:59 -01:rest") is None
    assert_same([(auth("alice", "app", ts="0001-01-01 00:00:00 +01"), None)])


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 99),
)
def test_utc_second_is_parse_timestamp(
    year: int, month: int, day: int, hour: int, minute: int, second: int
) -> None:
    text = f"{year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
    parsed = parse_timestamp(text + " UTC:")
    assert logparse._utc_second(text) == (None if parsed is None else parsed[0])


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789-: +_\u0662\uff12", min_size=19, max_size=19))
def test_utc_second_never_disagrees(text: str) -> None:
    """Odd stamps (int() takes " 1", "+1", "1_0" and other digits) are left to the general parser."""
    parsed = parse_timestamp(text + " UTC:")
    got = logparse._utc_second(text)
    assert got is None or (parsed is not None and got == parsed[0])


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=30),
    st.sampled_from(["", '"', '""', '"x"']),
)
def test_failed_user_is_the_regex(name: str, tail: str) -> None:
    for message in (f'password authentication failed for user "{name}{tail}', f"x{name}", f'{name}"{tail}'):
        m = re.search(r'authentication failed for user "(.*)"', message)
        assert failed_user(message) == (m.group(1) if m else None)


# -- properties ------------------------------------------------------------------------------------

STAMPS = [
    stamp(0),
    stamp(0),
    stamp(1),
    stamp(59),
    stamp(61),
    stamp(-30),
    stamp(3600),
    "2026-11-26 09:54:51.5 UTC",
    "2026-11-26 04:54:51 EST",
    "2026-11-26 10:54:51 +01",
    "2026-02-30 01:00:00 UTC",
    "2026-11-26 09:54:61 UTC",
    "0001-01-01 00:00:00 +01",
    "2026-1 -26 09:54:51 UTC",  # int() would read these, _TS does not
    "+026-11-26 09:54:51 UTC",
    "2_26-11-26 09:54:51 UTC",
    "\u0662\u0660\u0662\u0666-11-26 09:54:51 UTC",  # Arabic-Indic digits
]
names = st.sampled_from(
    ["alice", "bob", "a@b", "x:y", "a b", "😀", "", "user=bob", "[1]", 'q"', "x:[1]:LOG:  y"]
)
dbs = st.sampled_from(["app", "b@c", "", "d:[2]:", "x y", "d:[1]:FATAL:  "])
tails = st.sampled_from(
    ["", " application_name=x", " SSL enabled (p)", " GSS (x)", " database=z", "x", "\nmore"]
)


@st.composite
def messages(draw: st.DrawFn, user: str, db: str) -> str:
    u = user if draw(st.booleans()) else draw(names)
    d = db if draw(st.booleans()) else draw(dbs)
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        return f"LOG:  connection authorized: user={u} database={d}{draw(tails)}"
    if kind == 3:
        return f"LOG:  replication connection authorized: user={u}{draw(tails)}"
    if kind == 4:
        reason = draw(st.sampled_from(REJECTIONS)).format(u=u, d=d)
        return f"{draw(st.sampled_from(['FATAL', 'LOG', 'ERROR']))}:  {reason}"
    if kind == 5:
        return f'FATAL:  password authentication failed for user "{u}"{draw(tails)}'
    if kind == 6:
        return f"LOG:  statement: select ':[1]:LOG:  connection authorized: user={u} database={d}'"
    return draw(st.text(max_size=40)) + draw(
        st.sampled_from(["", "FATAL:  ", "connection authorized: user="])
    )


@st.composite
def log_lines(draw: st.DrawFn) -> str:
    user, db = draw(names), draw(dbs)
    remote = draw(
        st.sampled_from(
            ["[local]", "10.1.2.3(5432)", "::1(1)", "fe80::1%eth0(22)", "", "a b(1)", "[local]:x(1)"]
        )
    )
    text = f"{draw(st.sampled_from(STAMPS))}:{remote}:{user}@{db}:[{draw(st.integers(1, 4))}]:"
    text += draw(messages(user, db))
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


event_times = st.sampled_from([None, WHEN, WHEN + timedelta(hours=1)])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(log_lines(), event_times), max_size=40),
    st.sampled_from([timedelta(seconds=60), timedelta(0), timedelta(seconds=-1), timedelta(hours=2)]),
    st.sampled_from([None, WHEN, WHEN + timedelta(seconds=90)]),
    st.lists(st.integers(0, 40), max_size=3),
)
def test_batch_and_reference_agree(
    events: list[Event], settle: timedelta, read_until: datetime | None, cuts: list[int]
) -> None:
    assert_same(events, settle=settle, read_until=read_until, cuts=tuple(cuts))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=10))
def test_batch_and_reference_agree_on_any_text(texts: list[str]) -> None:
    assert_same([(t, None) for t in texts])


# -- the chunk path ----------------------------------------------------------------------------------


def clean_mix(n: int, seed: int, pids: int = 60) -> list[Event]:
    """Time-ordered lines of the common shapes only, so that whole chunks take the chunk path.

    Rejections come from 0 to 80 lines after their login (past the short scan), for pids that
    are reused, for logins already settled, and with no login at all; seconds jump past the
    window now and then.
    """
    rng = random.Random(seed)
    events: list[Event] = []
    second = 0
    waiting: list[tuple[int, str, str, int]] = []  # (lines to go, user, db, pid) of rejections to come
    while len(events) < n:
        second += rng.choice([0, 0, 0, 1, 2, 59, 61]) if rng.random() < 0.3 else 0
        ts = stamp(second)
        user, db = rng.choice(USERS[:3]), rng.choice(DATABASES[:2])
        pid, remote = rng.randrange(1, pids), rng.choice(REMOTES[:5])
        r = rng.random()
        if r < 0.5:
            text = auth(user, db, rng.choice(SUFFIXES), remote, pid, ts)
            if rng.random() < 0.15:
                waiting.append((rng.randrange(0, 80), user, db, pid))
        elif r < 0.55:
            text = line(user, "", f"LOG:  replication connection authorized: user={user}", remote, pid, ts)
        elif r < 0.65:
            text = line(
                user, db, f'FATAL:  password authentication failed for user "{user}"', remote, pid, ts
            )
        elif r < 0.68:  # a rejection with no login of its pid in sight
            text = line(user, db, f'FATAL:  role "{user}" is not permitted to log in', remote, pid, ts)
        elif r < 0.75:
            text = line(
                user, db, "LOG:  statement: select 'connection authorized: user=victim'", remote, pid, ts
            )
        else:
            text = line(user, db, "LOG:  connection received: host=10.0.0.7 port=5000", remote, pid, ts)
        events.append((text, WHEN + timedelta(seconds=second)))
        still: list[tuple[int, str, str, int]] = []
        for left, u, d, p in waiting:
            if left:
                still.append((left - 1, u, d, p))
            else:
                reason = rng.choice(REJECTIONS[:4]).format(u=u, d=d)
                events.append(
                    (line(u, d, f"FATAL:  {reason}", "[local]", p, ts), WHEN + timedelta(seconds=second))
                )
        waiting = still
    return events


def count_chunk_path(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record whether each chunk took the chunk path."""
    taken: list[bool] = []
    original = LoginAggregator._feed_chunk

    def spy(self: LoginAggregator, messages: list[str]) -> bool:
        taken.append(original(self, messages))
        return taken[-1]

    monkeypatch.setattr(LoginAggregator, "_feed_chunk", spy)
    return taken


@pytest.mark.parametrize("seed", range(6))
def test_chunk_path_gives_the_reference_result(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    events = clean_mix(6000, seed)
    taken = count_chunk_path(monkeypatch)
    s = assert_same(events, cuts=(700, 701, 3000))
    assert taken and all(taken)  # every chunk took the chunk path
    assert s.logins and s.rejected and s.failed_auth
    for settle in (timedelta(0), timedelta(seconds=5), timedelta(seconds=-1), timedelta(seconds=600)):
        assert_same(events, settle=settle)
    assert_same(events, read_until=WHEN + timedelta(seconds=30))


def test_chunk_path_rejections_far_from_their_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the short scan (the pid index), across chunks, for a reused pid and a settled login."""
    filler = [line("x", "app", "LOG:  connection received: host=h port=1", pid=9, ts=stamp(1))] * 50
    events: list[Event] = [
        (auth("far", "app", pid=500, ts=stamp(0)), None),
        *((f, None) for f in filler),
        (line("far", "app", 'FATAL:  role "far" is not permitted to log in', pid=500, ts=stamp(1)), None),
        (auth("old", "app", pid=501, ts=stamp(1)), None),
        (auth("reuse", "app", pid=502, ts=stamp(1)), None),
        *((f, None) for f in filler),
        (auth("new", "app", pid=502, ts=stamp(2)), None),  # pid 502 reused: "reuse" is accepted
        *((auth("busy", "app", pid=600 + i, ts=stamp(100)), None) for i in range(1200)),  # next chunk
        (line("old", "app", 'FATAL:  role "old" is not permitted to log in', pid=501, ts=stamp(100)), None),
        (line("new", "app", 'FATAL:  role "new" is not permitted to log in', pid=502, ts=stamp(100)), None),
    ]
    taken = count_chunk_path(monkeypatch)
    s = assert_same(events)
    assert all(taken) and len(taken) >= 2
    assert s.rejected == {"far": 1}  # "old" and "new" were settled 98 s before their FATALs
    assert {"old", "reuse", "new", "busy"} <= set(s.last_login) and "far" not in s.last_login


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789-: +_T\u0662", min_size=19, max_size=19))
def test_utc_second_is_stamp_time(text: str) -> None:
    assert logparse._utc_second(text) == logparse._stamp_time(text)
    if logparse._stamp_time(text) is not None:
        assert logparse._stamp_time(text) == parse_timestamp(text + " UTC:")[0]  # type: ignore[index]


def test_chunk_path_reads_odd_events_as_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Marks inside a read line, a forged login on an event's second line, a FATAL quoting the phrase.

    Each is mixed into common lines; the chunk path still reads every chunk and credits no victim.
    """
    odd = [
        auth("alice", "app", " application_name=]:LOG:  connection authorized: user=victim database=app"),
        auth("bob", "app", " application_name=x]:FATAL:  y", pid=43),
        line("mallory", "app", "LOG:  statement: select 1;\n") + auth("victim", "app"),
        line("carol", "app", 'FATAL:  role "connection authorized: user=carol" is not permitted to log in'),
        auth("dave", "app", "\nDETAIL:  " + auth("victim", "app")),
    ]
    events = clean_mix(3000, 11)
    for i, text in enumerate(odd):
        events.insert(300 + 500 * i, (text.replace(stamp(0), events[300 + 500 * i][0][:23]), None))
    taken = count_chunk_path(monkeypatch)
    s = assert_same(events)
    assert all(taken)
    assert "victim" not in s.last_login and {"alice", "bob", "dave"} <= set(s.last_login)
