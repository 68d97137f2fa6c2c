"""Parse: how fast we turn Aurora connection-log lines into per-user last logins, vs. the naive way.

A busy cluster writes millions of ``log_connections`` lines a day, so the parser must keep up on one
core without its memory growing with the number of lines. This generates a seeded synthetic day of
Aurora log lines in memory (70% successful logins in every message variant across 10,000 users,
30% other lines, hostile ones included) and measures, in the same run:

* ours: ``LoginAggregator().feed_lines(lines)`` then ``finish()`` (and, on a fortieth, the
  line-by-line ``feed`` that every line went through before ``feed_lines``);
* baseline: the AWS sample's way, ``user=`` from the 7th space-separated field, max time per user;
* the same events written with Aurora PostgreSQL 16+'s alternative prefix
  ``%m:%r:%u@%d:[%p]:%l:%e:%s:%v:%x:%c:%q%a`` (``alternative_lines``), read by the recogniser
  compiled from that prefix (``LoginAggregator(log_format=...)``: the general path), next to the
  default prefix's figure, with a check that both give the same result per user;

as lines/s, median of ``BENCH_REPEAT`` runs, by wall clock and by CPU time (the figure to read on a
shared machine), the ratio, and then, apart from the timing, the peak Python allocation
(tracemalloc) of one aggregator after half the lines and after all of them. It checks that on the
genuine lines the baseline credits the same users we credit on all lines.

Environment: ``BENCH_LINES`` (default 2,000,000), ``BENCH_REPEAT`` (default 5), ``BENCH_SEED``.
Run it against a version without ``feed_lines`` (on ``PYTHONPATH``) for a before/after figure.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import os
import random
import re
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("inactive_users") is None:  # `make bench` only puts the repo root on the path
    sys.path.insert(0, str(ROOT / "plugins"))

from inactive_users.core.logparse import LoginAggregator, LoginSummary  # noqa: E402

try:  # the recogniser for other prefixes (absent in versions before it)
    from inactive_users.core.logformat import AURORA_16_PREFIX, LogFormat, compile_format
except ImportError:
    AURORA_16_PREFIX = ""

try:  # the chunk path's pattern and chunk size (absent in versions before it)
    from inactive_users.core.logparse import _LINE_EVENT, _chunks

    CHUNK = _chunks.__defaults__[0]  # type: ignore[index]
except ImportError:
    _LINE_EVENT = None

LINES = int(os.environ.get("BENCH_LINES", "2000000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
SEED = int(os.environ.get("BENCH_SEED", "20261126"))
USERS = 10_000
TARGET = 1_000_000
START = datetime(2026, 11, 26, tzinfo=UTC)
DAY = 86_400
T = TypeVar("T")

HOSTS = ["10.0.0.7", "10.0.3.21", "172.31.9.4", "192.168.1.50", "app-1.internal", "::1", "2001:db8::17"]
DATABASES = ["app", "analytics", "postgres", "billing"]
APPS = ["psql", "pgAdmin 4 - DB:app", "airflow", "PostgreSQL JDBC Driver", "sub1"]
SSL = "SSL enabled (protocol=TLSv1.3, cipher={}, bits=256)"
CIPHERS = ["TLS_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
GSS = "GSS (authenticated=yes, encrypted=yes, principal=svc@EXAMPLE.COM)"

# What each generated line is, with its weight: 70 for successful logins, 30 for the rest
# ("rejected" writes an authorized line, then the FATAL that ends that session: not activity).
KINDS = {
    "login": 13.0,
    "login_app": 20.0,
    "login_ssl": 28.0,
    "login_app_ssl": 2.0,
    "login_gss": 3.5,
    "replication": 3.5,
    "password_failed": 7.0,
    "rejected": 1.5,
    "statement_quoting": 4.5,
    "received": 7.5,
    "disconnection": 9.5,
}


class Generator:
    """A seeded synthetic Aurora log in time order; the lines with a genuine login are also kept apart."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.users = [f"user{i:05d}" for i in range(USERS)]
        self.lines: list[str] = []
        self.genuine: list[str] = []

    def run(self, n: int) -> None:
        """Append ``n`` lines spread evenly over a day (one random draw per line: it is 2M lines)."""
        rng = self.rng
        kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=n)
        users, hosts = self.users, [*HOSTS, "[local]", "[local]"]
        suffixes = {  # what follows "user=U database=D" in each kind of successful login
            "login": [""],
            "login_app": [f" application_name={a}" for a in APPS],
            "login_ssl": [f" {SSL.format(c)}" for c in CIPHERS],
            "login_app_ssl": [f" application_name={a} {SSL.format(c)}" for a in APPS for c in CIPHERS],
            "login_gss": [f" {GSS}"],
        }
        lines, genuine = self.lines, self.genuine
        per_second = n / DAY
        next_second, second, stamp = 0.0, -1, ""
        for i, kind in enumerate(kinds):
            if len(lines) >= n:
                break
            if i >= next_second:
                second += 1
                next_second = (second + 1) * per_second
                stamp = (START + timedelta(seconds=second)).strftime("%Y-%m-%d %H:%M:%S UTC")
            r = rng.getrandbits(48)
            user, db, host, port = (
                users[r % USERS],
                DATABASES[(r >> 14) & 3],
                hosts[(r >> 16) % 9],
                1024 + (r >> 24) % 64512,
            )
            if host == "[local]":
                head = f"{stamp}:[local]:{user}@{db}:[{1000 + i}]:"
            else:
                head = f"{stamp}:{host}({port}):{user}@{db}:[{1000 + i}]:"
            suffix = suffixes.get(kind)
            if suffix is not None:
                line = (
                    f"{head}LOG:  connection authorized: user={user} database={db}{suffix[r % len(suffix)]}"
                )
                genuine.append(line)
            elif kind == "replication":
                line = head.replace(f"@{db}:[", "@:[", 1)  # no database: a physical replication connection
                line += f"LOG:  replication connection authorized: user={user} application_name=walreceiver"
                genuine.append(line)
            elif kind == "password_failed":
                line = f'{head}FATAL:  password authentication failed for user "{user}"'
            elif kind == "rejected":
                lines.append(f"{head}LOG:  connection authorized: user={user} database={db}")
                line = f'{head}FATAL:  role "{user}" is not permitted to log in'
            elif kind == "statement_quoting":
                quoted = f"connection authorized: user=victim{i % 97} database={db}"
                line = f"{head}LOG:  statement: select '{quoted}'"
            elif kind == "received":
                line = f"{head}LOG:  connection received: host={host} port={port}"
            else:
                line = (
                    f"{head}LOG:  disconnection: session time: 0:00:{i % 60:02d}.{port % 1000:03d} "
                    f"user={user} database={db} host={host} port={port}"
                )
            lines.append(line)


def ours(lines: Iterable[str]) -> LoginSummary:
    """Our aggregator, batch path (or, on a version without it, line by line)."""
    agg = LoginAggregator()
    if hasattr(agg, "feed_lines"):
        agg.feed_lines(lines)
    else:  # the version before the batch path, for the before/after figure
        for line in lines:
            agg.feed(line)
    return agg.finish()


_HEAD = re.compile(r"(\S+ \S+) UTC:(\[local\]|.+?\(\d+\)):(user\d+)@(\w*):\[(\d+)\]:(LOG|FATAL):  ")


def alternative_lines(lines: list[str]) -> list[str]:
    """The same events as the server writes them with ``AURORA_16_PREFIX``, in the same order.

    Per event: the time with milliseconds (the line's rank within its second: still in time order),
    the same remote, user, database and pid; the pid's line number, the SQLSTATE, the session
    start, a virtual transaction id, no transaction id, the session id; ``[unknown]`` as the
    application name on connection lines (it is set after them), ``psql`` on the others.
    """
    out: list[str] = []
    last, rank = "", 0
    numbers: dict[str, int] = {}
    for line in lines:
        m = _HEAD.match(line)
        assert m is not None, line
        stamp, remote, user, db, pid, severity = m.groups()
        rank = rank + 1 if stamp == last else 0
        last = stamp
        number = numbers[pid] = numbers.get(pid, 0) + 1
        message = line[m.end() :]
        state = "00000" if severity == "LOG" else "28P01" if "password" in message else "28000"
        app = "psql" if message.startswith(("statement", "disconnection")) else "[unknown]"
        start = int(datetime.fromisoformat(stamp + "+00:00").timestamp())
        out.append(
            f"{stamp}.{min(rank, 999):03d} UTC:{remote}:{user}@{db or '[unknown]'}:[{pid}]:{number}:{state}:"
            f"{stamp} UTC:{int(pid) % 97}/{number}:0:{start:x}.{int(pid):x}:{app}{severity}:  {message}"
        )
    return out


def ours_with(log_format: LogFormat) -> Callable[[list[str]], LoginSummary]:
    """Our aggregator reading lines of another prefix (every line through the general path)."""

    def run(lines: list[str]) -> LoginSummary:
        agg = LoginAggregator(log_format=log_format)
        agg.feed_lines(lines)
        return agg.finish()

    return run


def same_result(default: LoginSummary, other: LoginSummary) -> bool:
    """The same logins per user (to the second: the default prefix has no milliseconds) and counts."""
    seconds = {user: ts.replace(microsecond=0) for user, ts in other.last_login.items()}
    return (
        seconds == default.last_login
        and (other.rejected, other.failed_auth, other.logins)
        == (default.rejected, default.failed_auth, default.logins)
        and getattr(other, "connection_events", 0) == getattr(default, "connection_events", 0)
    )


def ours_line_by_line(lines: Iterable[str]) -> LoginSummary:
    """The general parser, one ``feed`` per line (what every line cost before the batch path)."""
    agg = LoginAggregator()
    for line in lines:
        agg.feed(line)
    return agg.finish()


def regex_floor(lines: list[str]) -> int:
    """Only the chunk path's one regex pass (joining and ``split``), without any bookkeeping.

    What the parser cannot go below while it reads lines with Python's ``re``: the figure that
    says how far the rest of the work is from the target.
    """
    found = 0
    for start in range(0, len(lines), CHUNK):
        found += len(_LINE_EVENT.split("\n".join(["", *lines[start : start + CHUNK]])))
    return found


def baseline(lines: Iterable[str]) -> dict[str, str]:
    """The AWS sample: ``user=U`` is the 7th space-separated field; the latest timestamp wins."""
    last: dict[str, str] = {}
    for line in lines:
        if "connection authorized" not in line:
            continue
        fields = line.split(" ")
        if len(fields) < 7 or not fields[6].startswith("user="):
            continue
        user = fields[6][5:]
        ts = fields[0] + " " + fields[1]
        if ts > last.get(user, ""):
            last[user] = ts
    return last


def rate(fn: Callable[[list[str]], T], lines: list[str], repeat: int) -> tuple[float, float, T]:
    """Median lines/s over ``repeat`` runs by wall clock and by CPU time, and the last result.

    Garbage collection is off while timing (it only adds noise here); CPU time (this process's)
    is the figure to read when other work shares the machine.
    """
    wall, cpu = [], []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn(lines)
        c1, t1 = time.process_time(), time.perf_counter()
        gc.enable()
        wall.append(len(lines) / (t1 - t0))
        cpu.append(len(lines) / (c1 - c0))
    return statistics.median(wall), statistics.median(cpu), result


def peaks(lines: list[str], checkpoints: list[int]) -> list[int]:
    """Peak Python allocation (tracemalloc) while our aggregator reads the lines, at each checkpoint.

    One aggregator reads them all (then settles), so the figures show whether memory grows with
    the number of lines read; the lines themselves were allocated before and are not counted.
    """
    agg = LoginAggregator()
    feed = getattr(agg, "feed_lines", None) or (lambda chunk: [agg.feed(line) for line in chunk])
    gc.collect()
    gc.disable()  # the parse makes no cycles; collections under tracemalloc only cost time
    tracemalloc.start()
    try:
        found, done = [], 0
        for n in checkpoints:
            feed(itertools.islice(lines, done, n))
            done = n
            if n == checkpoints[-1]:
                agg.finish()
            found.append(tracemalloc.get_traced_memory()[1])
        return found
    finally:
        tracemalloc.stop()
        gc.enable()


def main() -> None:
    t0 = time.perf_counter()
    gen = Generator(SEED)
    gen.run(LINES)
    lines = gen.lines
    took = time.perf_counter() - t0
    print(f"generated {len(lines):,} lines ({len(gen.genuine):,} genuine logins) in {took:.1f}s")

    ours_wall, ours_cpu, summary = rate(ours, lines, REPEAT)
    base_wall, base_cpu, naive_all = rate(baseline, lines, REPEAT)
    sample = lines[: len(lines) // 40]  # the line-by-line path is slow: a fortieth is enough
    slow_wall, slow_cpu, _ = rate(ours_line_by_line, sample, 3)
    rows = [
        ("ours: feed_lines", len(lines), ours_wall, ours_cpu),
        ("ours: feed, line by line", len(sample), slow_wall, slow_cpu),
        ("baseline: split(' ')[6]", len(lines), base_wall, base_cpu),
    ]
    if _LINE_EVENT is not None:
        floor_wall, floor_cpu, _ = rate(regex_floor, lines, REPEAT)
        rows.append(("floor: join + split only", len(lines), floor_wall, floor_cpu))
    print(f"\n{'parser':<26} {'lines':>10} {'lines/s':>11} {'CPU lines/s':>12} {'vs baseline':>12}")
    for name, n, wall, cpu in rows:
        print(f"{name:<26} {n:>10,} {wall:>11,.0f} {cpu:>12,.0f} {cpu / base_cpu:>11.2f}x")
    print(f"median of {REPEAT} runs (line by line: 3 runs on 1/40); CPU: lines per second of CPU time")
    verdict = "met" if ours_cpu >= TARGET else "NOT met"
    print(f"target: {TARGET:,} lines/s on one core (CPU time): {verdict} ({ours_cpu:,.0f})")

    alternative_ok = True
    if AURORA_16_PREFIX:
        alt = alternative_lines(lines)
        alt_wall, alt_cpu, alt_summary = rate(ours_with(compile_format(AURORA_16_PREFIX)), alt, REPEAT)
        alternative_ok = same_result(summary, alt_summary)
        print(
            f"\n{'log_line_prefix (feed_lines)':<42} {'lines/s':>11} {'CPU lines/s':>12} {'vs default':>11}"
        )
        for name, wall, cpu in [
            ("%t:%r:%u@%d:[%p]: (default)", ours_wall, ours_cpu),
            (AURORA_16_PREFIX, alt_wall, alt_cpu),
        ]:
            print(f"{name:<42} {wall:>11,.0f} {cpu:>12,.0f} {cpu / ours_cpu:>10.2f}x")
        print(
            f"same events in both prefixes: per-user last logins, rejections, failures "
            f"{'identical' if alternative_ok else 'DIFFERENT'} ({len(alt_summary.last_login):,} users)"
        )

    half = len(lines) // 2
    print("\npeak Python allocation while our aggregator reads them (tracemalloc, lines not counted):")
    for n, peak in zip((half, len(lines)), peaks(lines, [half, len(lines)]), strict=True):
        print(f"  after {n:>10,} lines: {peak / 1e6:6.2f} MB")

    # sanity: on the genuine lines the baseline credits the users we credit on all of them
    naive_genuine = baseline(gen.genuine)
    agree = set(summary.last_login) == set(naive_genuine)
    wrong = sum(1 for u, ts in naive_all.items() if u not in naive_genuine or ts > naive_genuine[u])
    print(
        f"\nusers: ours {len(summary.last_login):,} (all lines), baseline {len(naive_genuine):,} "
        f"(genuine lines only): {'agree' if agree else 'DISAGREE'}; baseline on all lines: {wrong:,} "
        "users credited a login that was rejected"
    )
    print(
        f"ours: {summary.logins:,} logins, {sum(summary.rejected.values()):,} rejected, "
        f"{sum(summary.failed_auth.values()):,} failed authentications; total {time.perf_counter() - t0:.0f}s"
    )
    if not agree:
        raise SystemExit("ours and the baseline disagree on the users of the genuine lines")
    if not alternative_ok:
        raise SystemExit("the alternative Aurora prefix gave another result than the default one")


if __name__ == "__main__":
    main()
