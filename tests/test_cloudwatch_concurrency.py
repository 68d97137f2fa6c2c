"""Concurrent reads of CloudWatch Logs within a request budget, against moto in server mode.

The reader reaches moto through an Airflow connection, via :class:`devstack.faultproxy.FaultProxy`
where a test needs what moto cannot do: throttling, latency, and a record of what was sent (when
each request arrived, how many were in flight). Nothing of ours is patched. What must hold:

* concurrent results are exactly the sequential ones, per user, over several streams and a
  busy stream read in time slices, rejections whose FATAL lies in the next slice included;
* the requests sent never exceed the budget in any second (allowing the limiter's one-token
  burst), DescribeLogGroups included, with at most ``max_concurrency`` in flight;
* throttling is retried, through the same budget, and changes nothing in the result; throttling
  that outlasts the bound fails with a message that says which quota and what to change.

No assertion here is about speed: bench/bench_api_concurrency.py measures that.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.retries.standard import ExponentialBackoff

from devstack import shipper
from devstack.faultproxy import AwsError, FaultProxy, ProxiedRequest
from devstack.motoserver import MotoServer, airflow_aws_conn, boto_client
from inactive_users.aws.cloudwatch import (
    CloudWatchLogins,
    LogQuotaExhausted,
    LogSourceError,
    RateLimiter,
    log_group_name,
)
from inactive_users.core.logparse import FILTER_LOGINS, LoginAggregator, LoginSummary

CLUSTER = "cc-test"
CONN_ID = "cc_aws"
BUSY, MEDIUM, QUIET, EMPTY = (f"{CLUSTER}-instance-{i}" for i in range(1, 5))
USERS = [f"user_{i}" for i in range(40)]
LOCKED = [f"locked_{i}" for i in range(7)]  # every login of theirs is rejected right after it
SETTLE = timedelta(seconds=60)
PAGE = 100
SECONDS = 1500  # of the busy stream's log


# -- data -----------------------------------------------------------------------------------------


def _line(ts: int, user: str, pid: int, text: str) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {
        "timestamp": ts * 1000,
        "message": f"{stamp}:10.0.0.7({40000 + pid % 20000}):{user}@app:[{pid}]:{text}",
    }


def _login(ts: int, user: str, pid: int) -> dict[str, Any]:
    return _line(ts, user, pid, f"LOG:  connection authorized: user={user} database=app")


def stream_events(first: int, seconds: int, every: int, pid: int) -> list[dict[str, Any]]:
    """Logins spread over ``seconds`` from ``first``, one second in ``every``.

    Every other such second a locked role is authorized and then rejected two seconds later
    (same pid), so any time boundary inside the range falls between some rejected login and
    its FATAL. Every fifth, a failed password.
    """
    events: list[dict[str, Any]] = []
    for s in range(0, seconds, every):
        ts = first + s
        for k in range(2):
            events.append(_login(ts, USERS[(s + k * 17) % len(USERS)], pid))
            pid += 1
        if (s // every) % 2 == 0:
            locked = LOCKED[s % len(LOCKED)]
            events.append(_login(ts, locked, pid))
            events.append(_line(ts + 2, locked, pid, f'FATAL:  role "{locked}" is not permitted to log in'))
            pid += 1
        if (s // every) % 5 == 0:
            events.append(
                _line(ts, "intruder", pid, 'FATAL:  password authentication failed for user "intruder"')
            )
            pid += 1
    return events


def reference(events: list[dict[str, Any]], end: datetime) -> LoginSummary:
    """What one aggregator makes of a stream read in one piece: each filter's events in time order,
    merged with a login before a FATAL of the same millisecond (as the reader merges them)."""
    ordered = sorted(events, key=lambda e: e["timestamp"])
    logins = [(e["timestamp"], 0, e["message"]) for e in ordered if "connection authorized" in e["message"]]
    fatals = [(e["timestamp"], 1, e["message"]) for e in ordered if "FATAL" in e["message"]]
    agg = LoginAggregator(SETTLE)
    merged = heapq.merge(logins, fatals, key=lambda e: (e[0], e[1]))
    agg.feed_many((m, datetime.fromtimestamp(ts / 1000, UTC)) for ts, _k, m in merged)
    return agg.finish(end)


@pytest.fixture
def logs_data(moto: MotoServer) -> dict[str, Any]:
    """A busy stream (many pages), a medium one, a quiet one and an empty one, shipped to moto."""
    now = int(time.time())
    first = now - SECONDS - 120
    streams = {
        BUSY: stream_events(first, SECONDS, 1, 10_000),
        MEDIUM: stream_events(first, SECONDS, 25, 500_000),
        QUIET: stream_events(first + 600, 10, 5, 900_000),
        EMPTY: [],
    }
    logs = boto_client(moto.endpoint_url, "logs")
    for stream, events in streams.items():
        shipper.ship(logs, CLUSTER, stream, events)
    end = datetime.fromtimestamp(now, UTC)
    windows = {stream: (datetime.fromtimestamp(first - 30, UTC), end) for stream in streams}
    return {
        "streams": streams,
        "windows": windows,
        "expected": {s: reference(evs, end) for s, evs in streams.items()},
        "logs": logs,
    }


def connect_through(monkeypatch: pytest.MonkeyPatch, endpoint_url: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_" + CONN_ID.upper(), json.dumps(airflow_aws_conn(endpoint_url)))


def reader(**options: Any) -> CloudWatchLogins:
    options.setdefault("page_size", PAGE)
    return CloudWatchLogins(CLUSTER, CONN_ID, "us-east-1", **options)


def assert_same(got: dict[str, LoginSummary], expected: dict[str, LoginSummary]) -> None:
    assert set(got) == set(expected)
    for stream, want in expected.items():
        have = got[stream]
        for user in set(want.last_login) | set(have.last_login):
            assert have.last_login.get(user) == want.last_login.get(user), (stream, user)
        assert have == want, stream  # every field: rejections, failures, counts, pending, last event


def max_per_second(times: list[float]) -> int:
    """The most of ``times`` within any one second (a sliding window starting at each)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cloudwatch-read")]


@pytest.fixture
def short_throttle_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's throttling back-off (1 s * 2**attempt, at most 20 s) at its non-throttling scale
    (50 ms * 2**attempt), as in test_faults_aws: which errors are retried, and how often, stays
    botocore's own logic; only the sleeps are shorter."""
    config = ExponentialBackoff._DEFAULT_BACKOFF_CONFIG
    assert "throttling_base_scale" in config, "botocore changed its backoff internals"
    monkeypatch.setitem(config, "throttling_base_scale", config["non_throttling_base_scale"])


def filter_requests(req: ProxiedRequest) -> bool:
    return req.operation == "FilterLogEvents"


# -- the limiter alone ----------------------------------------------------------------------------


def test_rate_limiter_spaces_grants_across_threads_with_a_burst_of_one() -> None:
    limiter = RateLimiter(40)
    grants: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(8):
            at = limiter.acquire()
            with lock:
                grants.append(at)

    started = time.monotonic()
    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grants.sort()
    assert len(grants) == 32
    assert grants[0] - started < 0.5  # a fresh bucket holds one token: the first goes at once
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) >= 1 / 40 - 1e-6  # never two at once: the burst is one token
    assert max_per_second(grants) <= 40 + 1
    with pytest.raises(ValueError):
        RateLimiter(0)


# -- results --------------------------------------------------------------------------------------


def test_concurrent_reads_give_exactly_the_sequential_results(
    logs_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    connect_through(monkeypatch, logs_data["logs"].meta.endpoint_url)
    windows, expected = logs_data["windows"], logs_data["expected"]

    sequential = reader(max_concurrency=1, requests_per_second=50)
    one_by_one = {s: sequential.read(s, start, end, SETTLE) for s, (start, end) in windows.items()}
    assert_same(one_by_one, expected)
    assert sequential.stats.slices == 0  # one worker: no slices, the requests of the old reader

    concurrent = reader(max_concurrency=8, requests_per_second=50)
    got = concurrent.read_many(windows, SETTLE)
    assert list(got) == list(windows)  # in the order asked
    assert_same(got, expected)
    assert got == one_by_one

    # The busy stream's logins were read in several slices, and each boundary between two of them
    # lies between a locked role's authorized line and its FATAL (the data is built that way),
    # which the one aggregator still matched: none of the locked roles is credited with a login.
    plan = concurrent.slice_plan[BUSY, FILTER_LOGINS]
    assert len(plan) >= 3 and concurrent.stats.slices >= len(plan)
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(plan))  # they tile the range
    rejected_pairs = [
        (e["timestamp"], e["timestamp"] + 2000)
        for e in logs_data["streams"][BUSY]
        if e["message"].split("@")[0].endswith(tuple(LOCKED)) and "connection authorized" in e["message"]
    ]
    for _lo, hi in plan[:-1]:
        boundary = hi + 1
        assert any(login < boundary <= fatal for login, fatal in rejected_pairs), boundary
    busy = got[BUSY]
    assert not set(LOCKED) & set(busy.last_login)
    assert sum(busy.rejected.values()) == len(rejected_pairs) > 100
    assert busy.failed_auth["intruder"] > 0 and "intruder" not in busy.last_login
    assert got[EMPTY] == LoginSummary()

    # Memory: never the whole stream ahead of the aggregator; at most the budget of pages
    # (max_concurrency + 2) of slices plus one probe page per query.
    total = sum(len(evs) for evs in logs_data["streams"].values())
    assert concurrent.stats.peak_buffered_events <= (8 + 2 + 2 * len(windows)) * PAGE < total / 2

    # A second call on the same object reads the same again (the budget and stats carry over).
    again = concurrent.read_many({BUSY: windows[BUSY]}, SETTLE)
    assert again[BUSY] == expected[BUSY]
    assert concurrent.read(QUIET, *windows[QUIET], SETTLE) == expected[QUIET]
    assert reader_threads() == []


def test_requests_sent_stay_within_the_budget(
    logs_data: dict[str, Any], moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5 requests/s, 3 in flight at most, every operation counted, as the proxy saw them arrive."""
    logs_data["logs"].put_retention_policy(logGroupName=log_group_name(CLUSTER), retentionInDays=30)
    missing = f"{CLUSTER}-instance-9"  # CloudWatch answers ResourceNotFoundException (moto does not)
    not_found = AwsError(
        "stream_missing", "ResourceNotFoundException", "The specified log stream does not exist."
    )

    def missing_stream(req: ProxiedRequest) -> bool:
        return req.operation == "FilterLogEvents" and missing.encode() in req.body

    windows = dict(logs_data["windows"])
    windows[missing] = windows[QUIET]
    with (
        FaultProxy(moto.endpoint_url, latency_seconds=0.3) as slow,
        FaultProxy(slow.endpoint_url, fault_rate=1.0, faults=[not_found], only=missing_stream) as edge,
    ):
        connect_through(monkeypatch, edge.endpoint_url)
        source = reader(page_size=250, max_concurrency=3, requests_per_second=5)
        got = source.read_many(windows, SETTLE)
        assert source.retention_days() == 30
        arrivals = [e.at for e in edge.events]
        operations = {e.operation for e in edge.events}
        in_flight = edge.max_in_flight

    assert_same({s: got[s] for s in logs_data["expected"]}, logs_data["expected"])
    assert got[missing] == LoginSummary()
    assert edge.stats["stream_missing"] == 2 and operations == {"FilterLogEvents", "DescribeLogGroups"}
    assert len(arrivals) == source.stats.sent >= 20
    # at most 5 in any second, plus the one token a quiet bucket holds
    assert max_per_second(arrivals) <= 5 + 1
    assert source.stats.max_rate_seen <= 5 + 1
    assert source.stats.mean_rate <= 5 * 1.05
    assert 2 <= in_flight <= 3  # concurrent, never beyond max_concurrency
    # retention_days is kept: asking again sends nothing
    sent = source.stats.sent
    assert source.retention_days() == 30 and source.stats.sent == sent


def test_every_stream_of_an_instance_group_is_read_within_the_budget(
    logs_data: dict[str, Any], moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An RDS instance's own log group: its streams are listed (DescribeLogStreams, through the same
    budget), each is read as a stream of its own, and the instance's summary merges them."""
    group = "/aws/rds/instance/cc-db/postgresql"
    names = {BUSY: "cc-db", MEDIUM: "cc-db.1", QUIET: "cc-db.2", EMPTY: "cc-db.3"}  # not assumed
    for stream, events in logs_data["streams"].items():
        shipper.ship(logs_data["logs"], CLUSTER, names[stream], events, log_group=group)
    expected = LoginSummary()
    for stream in (BUSY, MEDIUM, QUIET, EMPTY):
        expected.merge(logs_data["expected"][stream])
    with FaultProxy(moto.endpoint_url, latency_seconds=0.1) as proxy:
        connect_through(monkeypatch, proxy.endpoint_url)
        source = reader(log_group=group, streams={"cc-db": None}, max_concurrency=3, requests_per_second=5)
        got = source.read_many({"cc-db": logs_data["windows"][BUSY]}, SETTLE)
        arrivals = [e.at for e in proxy.events]
        operations = [e.operation for e in proxy.events]
    assert_same(got, {"cc-db": expected})
    assert operations.count("DescribeLogStreams") == 1 and len(arrivals) == source.stats.sent
    assert max_per_second(arrivals) <= 5 + 1


def test_retention_days(logs_data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    logs = logs_data["logs"]
    connect_through(monkeypatch, logs.meta.endpoint_url)
    assert reader().retention_days() is None  # never expires
    logs.put_retention_policy(logGroupName=log_group_name(CLUSTER), retentionInDays=14)
    assert reader().retention_days() == 14
    shipper.ship(logs, f"{CLUSTER}-2", "x", [])  # a group whose name starts with ours is not ours
    assert reader().retention_days() == 14
    with pytest.raises(LogSourceError, match="EnableCloudwatchLogsExports"):
        CloudWatchLogins("nope", CONN_ID, "us-east-1").retention_days()


# -- throttling -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("short_throttle_backoff")
def test_throttling_is_retried_within_the_budget_and_changes_nothing(
    logs_data: dict[str, Any],
    moto: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every FilterLogEvents throttled for 8 s (longer than botocore's own retries of a call last),
    then 40% of them: the read retries and gives exactly the unthrottled result."""
    with FaultProxy(
        moto.endpoint_url, fault_rate=1.0, faults=["throttle"], seed=3, only=filter_requests
    ) as proxy:
        connect_through(monkeypatch, proxy.endpoint_url)
        calm = threading.Timer(8.0, setattr, (proxy, "fault_rate", 0.4))
        calm.start()
        try:
            source = reader(max_concurrency=4, requests_per_second=20)
            with caplog.at_level(logging.WARNING, logger="inactive_users.aws.cloudwatch"):
                got = source.read_many(logs_data["windows"], SETTLE)
        finally:
            calm.cancel()
        stats, arrivals = proxy.stats, [e.at for e in proxy.events]
    assert_same(got, logs_data["expected"])
    assert stats["throttle"] == source.stats.throttled > 20
    assert "keeps throttling FilterLogEvents" in caplog.text  # botocore gave up: our own retry took over
    assert source.stats.throttle_wait >= 5
    # throttled attempts are requests too: all of them went through the budget
    assert len(arrivals) == source.stats.sent
    assert max_per_second(arrivals) <= 20 + 1
    assert reader_threads() == []


@pytest.mark.usefixtures("short_throttle_backoff")
def test_throttling_beyond_the_bound_fails_saying_which_quota_and_what_to_change(
    logs_data: dict[str, Any], moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(moto.endpoint_url, fault_rate=1.0, faults=["throttle"], only=filter_requests) as proxy:
        connect_through(monkeypatch, proxy.endpoint_url)
        source = reader(max_concurrency=4, requests_per_second=20, max_throttle_wait=3)
        started = time.monotonic()
        with pytest.raises(LogQuotaExhausted) as caught:
            source.read_many(logs_data["windows"], SETTLE)
        failed_after = time.monotonic() - started
        requests = proxy.stats["requests"]
        assert reader_threads() == []  # every worker stopped
        time.sleep(1.0)
        assert proxy.stats["requests"] == requests  # and nothing is sent any more
    message = str(caught.value)
    assert "FilterLogEvents quota in us-east-1 is exhausted" in message
    throttled = int(message.split(" requests were throttled")[0].rsplit(" ", 1)[1])
    assert 0 < throttled <= source.stats.throttled == requests
    assert "logs_requests_per_second" in message and "ingest_pool" in message
    assert source.stats.throttle_wait >= 3 and failed_after < 3 + 30  # the bound, not botocore's loops


@pytest.mark.usefixtures("short_throttle_backoff")
def test_throttled_describe_log_groups_is_retried_too(
    logs_data: dict[str, Any], moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def describe(req: ProxiedRequest) -> bool:
        return req.operation == "DescribeLogGroups"

    with FaultProxy(moto.endpoint_url, fault_rate=1.0, faults=["throttle"], only=describe) as proxy:
        connect_through(monkeypatch, proxy.endpoint_url)
        # throttled for longer than botocore's 8 attempts can last (< 6.4 s at this back-off scale)
        calm = threading.Timer(7.0, setattr, (proxy, "fault_rate", 0.0))
        calm.start()
        try:
            source = reader(max_throttle_wait=60)
            assert source.retention_days() is None
        finally:
            calm.cancel()
        assert proxy.stats["throttle"] == source.stats.throttled >= 8  # beyond one botocore call
        proxy.fault_rate = 1.0
        with pytest.raises(LogQuotaExhausted, match="requests were throttled"):
            reader(max_throttle_wait=1).retention_days()


def test_a_failing_stream_stops_every_other_read(
    logs_data: dict[str, Any], moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A persistent error on one stream (botocore's 8 attempts used up) fails the call; the other
    streams' workers stop at their next request instead of reading on."""

    def busy_stream(req: ProxiedRequest) -> bool:
        return req.operation == "FilterLogEvents" and BUSY.encode() in req.body

    with FaultProxy(
        moto.endpoint_url, latency_seconds=0.05, fault_rate=1.0, faults=["http500"], only=busy_stream
    ) as proxy:
        connect_through(monkeypatch, proxy.endpoint_url)
        source = reader(max_concurrency=4, requests_per_second=50)
        with pytest.raises(ClientError, match=r"\(500\).*reached max retries: 7"):
            source.read_many(logs_data["windows"], SETTLE)
        assert reader_threads() == []
        requests = proxy.stats["requests"]
        time.sleep(0.5)
        assert proxy.stats["requests"] == requests
    # the endpoint healthy again, a new reader (the next task try) reads everything
    connect_through(monkeypatch, moto.endpoint_url)
    fresh = reader(max_concurrency=4, requests_per_second=50)
    assert fresh.read_many(logs_data["windows"], SETTLE) == logs_data["expected"]


def test_validation() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        CloudWatchLogins(CLUSTER, max_concurrency=0)
    with pytest.raises(ValueError, match="page_size"):
        CloudWatchLogins(CLUSTER, page_size=10_001)
    assert CloudWatchLogins(CLUSTER, max_concurrency=1).slice_pages == 0
    assert CloudWatchLogins(CLUSTER).slice_pages == 2
    assert CloudWatchLogins(CLUSTER).read_many({}, SETTLE) == {}
