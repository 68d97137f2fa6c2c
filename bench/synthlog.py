"""Synthetic Aurora connection-log events for the CloudWatch benchmarks (``bench_api``, ``bench_e2e``).

Each event is what Aurora's log export puts in CloudWatch Logs: ``{"timestamp": ms, "message": line}``
with the line in the default Aurora format (``log_line_prefix = '%t:%r:%u@%d:[%p]:'``, ``%t`` in
UTC, whole seconds) and the event time equal to the line's second, as ``devstack.shipper`` ships
real server logs. The events are spread evenly over a time span and dealt round-robin to the
instance streams. Besides successful logins in the usual variants (plain, ``application_name``,
SSL), a share of sessions ends in a FATAL line: failed password authentication (no login) and
sessions rejected right after authorization (an authorized line, then ``role ... is not permitted
to log in`` from the same pid: not a login either). What the job must conclude is recorded along
the way (``Expected``), so a benchmark can check the result and not only time it.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

HOSTS = ["10.0.0.7", "10.0.3.21", "172.31.9.4", "192.168.1.50", "app-1.internal", "2001:db8::17"]
DATABASES = ["app", "analytics", "postgres", "billing"]
SUFFIXES = [
    "",
    " application_name=psql",
    " application_name=PostgreSQL JDBC Driver",
    " SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)",
    " application_name=airflow SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)",
]


@dataclass
class Expected:
    """What reading every event must give: last accepted login per user, and the FATAL counts."""

    last_login: dict[str, datetime] = field(default_factory=dict)
    failed_auth: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    logins: int = 0  # "connection authorized" events, rejected sessions' included
    fatals: int = 0


def aurora_events(
    n: int,
    users: list[str],
    streams: list[str],
    *,
    end: datetime,
    span: timedelta,
    seed: int = 20261126,
    failed_share: float = 0.01,
    rejected_share: float = 0.005,
) -> tuple[dict[str, list[dict[str, Any]]], Expected]:
    """``n`` events in ``[end - span, end)``, per stream in time order, and what they mean.

    ``failed_share`` of the events are failed password authentications; ``rejected_share`` of the
    sessions are rejected after authorization, which takes two events (authorized, then FATAL).
    Everything else is one successful login.
    """
    rng = random.Random(seed)
    start_s = int((end - span).timestamp())
    span_s = max(1, int(span.total_seconds()))
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in streams}
    buckets = [out[s] for s in streams]
    expected = Expected()
    stamp_cache: dict[int, str] = {}
    n_users, n_streams = len(users), len(streams)
    i = 0
    while i < n:
        second = start_s + (i * span_s) // n
        stamp = stamp_cache.get(second)
        if stamp is None:
            stamp_cache.clear()
            stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            stamp_cache[second] = stamp
        r = rng.getrandbits(40)
        user = users[r % n_users]
        db = DATABASES[(r >> 20) & 3]
        host = HOSTS[(r >> 22) % len(HOSTS)]
        port = 1024 + (r >> 25) % 60000
        pid = 1000 + i
        head = f"{stamp}:{host}({port}):{user}@{db}:[{pid}]:"
        ms = second * 1000
        stream = buckets[i % n_streams]
        draw = rng.random()
        if draw < failed_share:
            stream.append(
                {
                    "timestamp": ms,
                    "message": f'{head}FATAL:  password authentication failed for user "{user}"',
                }
            )
            expected.failed_auth[user] += 1
            expected.fatals += 1
            i += 1
            continue
        stream.append(
            {
                "timestamp": ms,
                "message": f"{head}LOG:  connection authorized: user={user} database={db}"
                + SUFFIXES[(r >> 30) % len(SUFFIXES)],
            }
        )
        expected.logins += 1
        i += 1
        if draw < failed_share + rejected_share and i < n:
            stream.append(
                {"timestamp": ms, "message": f'{head}FATAL:  role "{user}" is not permitted to log in'}
            )
            expected.rejected[user] += 1
            expected.fatals += 1
            i += 1
            continue
        when = datetime.fromtimestamp(second, UTC)
        if when > expected.last_login.get(user, datetime.min.replace(tzinfo=UTC)):
            expected.last_login[user] = when
    return out, expected
