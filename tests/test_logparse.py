"""The connection-log parser: real line shapes of PostgreSQL 11-18, spoofing, and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inactive_users.core.logparse import LoginAggregator, parse_login, parse_timestamp, split_line, summarize

T = "2026-11-26 09:54:51 UTC"
WHEN = datetime(2026, 11, 26, 9, 54, 51, tzinfo=UTC)


def line(
    user: str, db: str, message: str, *, remote: str = "10.0.0.7(5000)", pid: int = 42, ts: str = T
) -> str:
    return f"{ts}:{remote}:{user}@{db}:[{pid}]:{message}"


def auth(user: str, db: str, suffix: str = "", **kw: object) -> str:
    return line(user, db, f"LOG:  connection authorized: user={user} database={db}{suffix}", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, user, database",
    [
        (auth("alice", "app"), "alice", "app"),
        (auth("alice", "app", " application_name=psql"), "alice", "app"),
        (
            auth(
                "alice",
                "app",
                " SSL enabled (protocol=TLSv1.2, cipher=ECDHE-RSA-AES256-GCM-SHA384, bits=256)",
            ),
            "alice",
            "app",
        ),
        (  # PostgreSQL 11 still printed compression=
            auth("alice", "app", " SSL enabled (protocol=TLSv1.2, cipher=X, bits=256, compression=off)"),
            "alice",
            "app",
        ),
        (
            auth("alice", "app", " application_name=x y SSL enabled (protocol=TLSv1.3, cipher=Y, bits=256)"),
            "alice",
            "app",
        ),
        (auth("alice", "app", " GSS (authenticated=yes, encrypted=yes, principal=a@EX.COM)"), "alice", "app"),
        (auth("alice", "app", remote="[local]"), "alice", "app"),
        (auth("alice", "app", remote="::1(5432)"), "alice", "app"),
        (auth("alice", "app", remote="2001:db8::17(60000)"), "alice", "app"),
        (auth("alice", "app", remote="db-client.example.com(1234)"), "alice", "app"),
        (auth('We"ird Name 👀', "postgres"), 'We"ird Name 👀', "postgres"),
        (auth("a@b", "c"), "a@b", "c"),
        (auth("a", "b@c"), "a", "b@c"),
        (auth("x:[1]:y", "db:[2]:"), "x:[1]:y", "db:[2]:"),
        (auth("user=bob", "database=x"), "user=bob", "database=x"),
        (auth("Ünïcødé", "база"), "Ünïcødé", "база"),
        (auth("alice", "app", ts="2026-11-26 09:54:51.123 UTC"), "alice", "app"),
    ],
)
def test_genuine_logins_are_recognised(text: str, user: str, database: str) -> None:
    login = parse_login(text)
    assert login is not None
    assert (login.user, login.database, login.pid, login.replication) == (user, database, 42, False)
    assert login.ts.replace(microsecond=0) == WHEN


@pytest.mark.parametrize(
    "text, user, database",
    [
        (line("rep", "", "LOG:  replication connection authorized: user=rep"), "rep", None),
        (
            line("rep", "", "LOG:  replication connection authorized: user=rep application_name=walreceiver"),
            "rep",
            None,
        ),
        (
            line(
                "rep", "", "LOG:  replication connection authorized: user=rep SSL enabled (protocol=TLSv1.3)"
            ),
            "rep",
            None,
        ),
        (
            line("rep", "app", "LOG:  replication connection authorized: user=rep application_name=sub1"),
            "rep",
            "app",
        ),
    ],
)
def test_replication_logins(text: str, user: str, database: str | None) -> None:
    login = parse_login(text)
    assert login is not None and login.replication
    assert (login.user, login.database) == (user, database)


@pytest.mark.parametrize(
    "text",
    [
        # a logged statement quoting the phrase, with the victim's name in it
        line("mallory", "app", "LOG:  statement: select 'connection authorized: user=victim database=app'"),
        line(
            "mallory",
            "app",
            "LOG:  statement: select ':[1]:LOG:  connection authorized: user=victim database=app'",
        ),
        line(
            "mallory",
            "app",
            'ERROR:  syntax error at or near "connection authorized: user=victim database=app"',
        ),
        # the prefix user and the message user disagree
        line("mallory", "app", "LOG:  connection authorized: user=victim database=app"),
        line("alice", "app", "LOG:  connection authorized: user=alice database=other"),
        # truncated events
        line("alice", "app", "LOG:  connection authorized: user=alice datab"),
        line("alice", "app", "LOG:  connection authorized: user=ali"),
        # wrong severity, other messages
        line("alice", "app", "FATAL:  connection authorized: user=alice database=app"),
        line("alice", "app", "LOG:  connection received: host=10.0.0.7 port=5000"),
        line("alice", "app", 'LOG:  connection authenticated: identity="alice" method=scram-sha-256'),
        # another log_line_prefix
        "2026-11-26 09:54:51 UTC [42] LOG:  connection authorized: user=alice database=app",
        "LOG:  connection authorized: user=alice database=app",
        "",
        "\x00\x01garbage",
        # a continuation line of a multi-line statement forging a login is not the event's first line
        line("mallory", "app", "LOG:  statement: select 1;\n") + auth("victim", "app"),
    ],
)
def test_non_logins_are_ignored(text: str) -> None:
    assert parse_login(text) is None


def test_timestamps_in_other_zones() -> None:
    assert parse_timestamp("2026-03-08 01:59:59 +03:rest") == (
        datetime(2026, 3, 7, 22, 59, 59, tzinfo=UTC),
        24,
    )
    ts, _ = parse_timestamp("2026-03-08 01:59:59 -0530:rest")  # type: ignore[misc]
    assert ts == datetime(2026, 3, 8, 7, 29, 59, tzinfo=UTC)
    assert parse_timestamp("2026-03-08 01:59:59 EST:rest") == (None, 24)  # ambiguous abbreviation
    assert parse_timestamp("2026-02-30 01:59:59 UTC:") is None
    # an unresolvable zone falls back to the event's own timestamp
    login = parse_login(auth("alice", "app", ts="2026-11-26 04:54:51 EST"), WHEN)
    assert login is not None and login.ts == WHEN


def test_authorized_then_rejected_is_not_activity() -> None:
    lines = [
        auth("locked", "app", pid=7),
        line("locked", "app", 'FATAL:  role "locked" is not permitted to log in', pid=7),
        auth("limited", "app", pid=8),
        line("limited", "app", 'FATAL:  too many connections for role "limited"', pid=8),
        auth("noperm", "secret", pid=9),
        line("noperm", "secret", 'FATAL:  permission denied for database "secret"', pid=9),
        auth("typo", "nodb", pid=10),
        line("typo", "nodb", 'FATAL:  database "nodb" does not exist', pid=10),
        auth("alice", "app", pid=11),
        line("alice", "app", "FATAL:  terminating connection due to administrator command", pid=11),
        line("bob", "app", 'FATAL:  password authentication failed for user "bob"', pid=12),
        line("bob", "app", 'FATAL:  password authentication failed for user "bob"', pid=13),
    ]
    s = summarize(lines)
    assert s.last_login == {"alice": WHEN}
    assert s.rejected == {"locked": 1, "limited": 1, "noperm": 1, "typo": 1}
    assert s.failed_auth == {"bob": 2}


def test_rejection_of_another_user_on_the_same_pid_does_not_cancel() -> None:
    s = summarize(
        [
            auth("alice", "app", pid=7),
            line("bob", "app", 'FATAL:  role "bob" is not permitted to log in', pid=7),
        ]
    )
    assert s.last_login == {"alice": WHEN}


def test_latest_login_wins_and_memory_is_per_user() -> None:
    agg = LoginAggregator(settle=timedelta(seconds=60))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5000):
        ts = start + timedelta(seconds=i)
        stamp = ts.strftime("%Y-%m-%d %H:%M:%S UTC")
        agg.feed(auth(f"user{i % 10}", "app", ts=stamp, pid=1000 + i))
        assert len(agg._pending) <= 62  # only the settle window is held
    s = agg.finish()
    assert len(s.last_login) == 10
    assert s.last_login["user9"] == start + timedelta(seconds=4999)
    assert s.logins == 5000


def test_unsettled_logins_wait_for_the_next_run() -> None:
    end = WHEN + timedelta(seconds=30)
    s = summarize([auth("alice", "app")], read_until=end)  # default settle 60 s
    assert s.last_login == {} and s.unsettled == 1
    s = summarize([auth("alice", "app")], read_until=WHEN + timedelta(seconds=61))
    assert s.last_login == {"alice": WHEN}


def test_pid_reuse_accepts_the_earlier_session() -> None:
    later = "2026-11-26 09:55:01 UTC"
    s = summarize([auth("alice", "app", pid=5), auth("bob", "app", pid=5, ts=later)])
    assert set(s.last_login) == {"alice", "bob"}


# -- properties ------------------------------------------------------------------------------------

names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\x00"), min_size=1, max_size=20
)
plain_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\x00@"), min_size=1, max_size=20
)
remotes = st.sampled_from(["[local]", "10.1.2.3(5432)", "::1(1)", "fe80::1%eth0(22)", ""])


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_parser_never_raises(text: str) -> None:
    parse_login(text)
    split_line(text)
    agg = LoginAggregator()
    agg.feed(text)
    agg.finish()


@settings(max_examples=400, deadline=None)
@given(user=plain_names, db=names, remote=remotes, pid=st.integers(1, 4_000_000), msg=st.text(max_size=120))
def test_never_credits_anyone_but_the_prefix_user(
    user: str, db: str, remote: str, pid: int, msg: str
) -> None:
    """Whatever the message says, a login is only ever credited to the prefix's %u."""
    text = line(user, db, msg, remote=remote, pid=pid)
    login = parse_login(text)
    assert login is None or login.user == user


@settings(max_examples=300, deadline=None)
@given(user=plain_names, db=names, remote=remotes, victim=names, stmt=st.text(max_size=60))
def test_logged_statements_cannot_spoof(user: str, db: str, remote: str, victim: str, stmt: str) -> None:
    text = line(
        user, db, f"LOG:  statement: {stmt} connection authorized: user={victim} database={db}", remote=remote
    )
    assert parse_login(text) is None


@settings(max_examples=300, deadline=None)
@given(user=names, db=names, remote=remotes, pid=st.integers(1, 4_000_000))
def test_genuine_lines_round_trip(user: str, db: str, remote: str, pid: int) -> None:
    login = parse_login(auth(user, db, remote=remote, pid=pid))
    assert login is not None
    assert login.pid == pid
    # with '@' in names the split is ambiguous only where the texts are identical
    assert f"{login.user}@{login.database}" == f"{user}@{db}"
    if "@" not in user:
        assert login.user == user
