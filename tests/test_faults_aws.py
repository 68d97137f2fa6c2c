"""Ingest through an unreliable AWS endpoint: moto behind :class:`devstack.faultproxy.FaultProxy`.

The log lines are real (real logins on a real cluster, shipped straight to moto); only the engine's
Airflow ``aws`` connection goes through the proxy, which throttles, answers 500/503, resets
connections and delays requests with a seeded generator.  What must hold:

* transient faults are absorbed (by botocore's standard retries, or at worst by an Airflow task
  retry) and the result is exactly the fault-free one;
* a persistent fault fails the ingest loudly and leaves every state row untouched, so the next run
  still reads the events the failed one could not.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries.standard import ExponentialBackoff

from devstack.faultproxy import FAULTS, AwsError, FaultProxy, FaultProxyError, ProxiedRequest
from devstack.motoserver import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoServer, airflow_aws_conn
from inactive_users.aws.cloudwatch import CloudWatchLogins, LogQuotaExhausted
from tests.scenario import Scenario

PAGE_SIZE = 2  # many small FilterLogEvents pages, so many requests to fault
WRITER_LOGINS = ("ann", "ben", "Hé Ünïcode")
READER_LOGINS = ("dan", "eve", "ann")
FAILED_PASSWORD = "cat"
NEVER = ("fay", "gus")
ROLES = ("ann", "ben", "cat", "dan", "eve", "fay", "gus", "Hé Ünïcode")
SEEDED_DAYS = 50
SEEDS = (1, 2, 3)
SLOW = 0.5  # seconds a "slow" fault holds a request back
ROUNDS = 3  # each login is made this many times, for more events and so more pages

_STATUS = "inactive_users.user_login_status"
_JOB_STATUS = "inactive_users.user_login_job_status"


# -- helpers ------------------------------------------------------------------------------------


def build(sc: Scenario) -> dict[str, datetime]:
    """Roles seeded 50 days back, real logins shipped to both streams; returns the seeded times."""
    for name in ROLES:
        sc.create_role(name)
    eng = sc.engine(page_size=PAGE_SIZE)
    eng.migrate()
    eng.sync_roles()
    for name in ROLES:
        sc.set_last_login(name, SEEDED_DAYS)
    for _ in range(ROUNDS):
        for name in WRITER_LOGINS:
            assert sc.login(name), name
        assert not sc.login(FAILED_PASSWORD, password="wrong")
    assert sc.ship(sc.writer) > 0
    for _ in range(ROUNDS):
        for name in READER_LOGINS:
            assert sc.login(name), name
    assert sc.ship(sc.reader) > 0
    return seeded(sc)


def seeded(sc: Scenario) -> dict[str, datetime]:
    return dict(sc.sql(f"SELECT user_name, last_login_time FROM {_STATUS}"))


def restore(sc: Scenario, times: dict[str, datetime]) -> None:
    """Back to the state before any ingest: the exact seeded times and no watermark."""
    for name, ts in times.items():
        sc.sql(f"UPDATE {_STATUS} SET last_login_time = %s WHERE user_name = %s", ts, name)
    sc.sql(f"DELETE FROM {_JOB_STATUS}")
    assert seeded(sc) == times


def watermarks(sc: Scenario) -> dict[str, datetime | None]:
    return dict(sc.sql(f"SELECT instance_name, last_event_time FROM {_JOB_STATUS}"))


def outcome(sc: Scenario) -> tuple[dict[str, dict[str, Any]], dict[str, datetime | None]]:
    return sc.statuses(), watermarks(sc)


def use_proxy(sc: Scenario, proxy: FaultProxy) -> None:
    """The engine's AWS connection now goes through the proxy (set after shipping to moto directly)."""
    sc.monkeypatch.setenv(
        "AIRFLOW_CONN_" + sc.aws_conn_id.upper(), json.dumps(airflow_aws_conn(proxy.endpoint_url))
    )


def ingest_like_airflow(sc: Scenario, instances: Sequence[str], tries: int = 3) -> list[Exception]:
    """``ingest`` as an Airflow task with ``retries=tries - 1``: a fresh engine per try.

    Returns the errors of the failed tries; raises if every try failed.
    """
    errors: list[Exception] = []
    for _ in range(tries):
        try:
            sc.engine(page_size=PAGE_SIZE).ingest(instances)
            return errors
        except (ClientError, BotoCoreError) as exc:
            errors.append(exc)
    raise AssertionError(f"ingest failed on all {tries} tries: {errors!r}")


def db_now(sc: Scenario) -> datetime:
    return sc.sql("SELECT now()")[0][0]


@pytest.fixture
def short_throttle_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scale botocore's throttling backoff (1 s * 2**attempt, capped at 20 s) down to its non-throttling
    one (50 ms * 2**attempt): 7 throttled retries would otherwise sleep ~35 s on average.  Only the
    length of the sleeps changes; which errors are retried and how often is botocore's own logic."""
    config = ExponentialBackoff._DEFAULT_BACKOFF_CONFIG
    assert "throttling_base_scale" in config, "botocore changed its backoff internals"
    monkeypatch.setitem(config, "throttling_base_scale", config["non_throttling_base_scale"])


# -- the engine through faults ------------------------------------------------------------------


@pytest.mark.single_pg_version("the faults are AWS's; PostgreSQL is only the target")
def test_transient_faults_give_exactly_the_fault_free_result(scenario: Scenario) -> None:
    sc = scenario
    instances = [sc.writer, sc.reader]
    seeds_before = build(sc)

    # Reference: the same proxy, no faults.
    with FaultProxy(sc.moto.endpoint_url, fault_rate=0.0, seed=0) as proxy:
        use_proxy(sc, proxy)
        assert ingest_like_airflow(sc, instances, tries=1) == []
        clean_stats = proxy.stats
    reference = outcome(sc)
    statuses, marks = reference
    now = db_now(sc)
    for name in {*WRITER_LOGINS, *READER_LOGINS}:
        assert abs(now - statuses[name]["last_login"]) < timedelta(minutes=5), name
    for name in (FAILED_PASSWORD, *NEVER):
        assert statuses[name]["last_login"] == seeds_before[name], name
    assert set(marks) == set(instances) and all(marks.values())
    assert clean_stats["requests"] == clean_stats["forwarded"] >= 12  # many pages
    assert set(clean_stats) == {"requests", "forwarded"}

    injected: Counter[str] = Counter()
    for seed in SEEDS:
        restore(sc, seeds_before)
        started = time.monotonic()
        with FaultProxy(
            sc.moto.endpoint_url, fault_rate=0.3, faults=FAULTS, seed=seed, slow_seconds=SLOW
        ) as proxy:
            use_proxy(sc, proxy)
            errors = ingest_like_airflow(sc, instances)
            stats = proxy.stats
        print(
            f"seed {seed}: {time.monotonic() - started:.1f}s, stats {stats}, "
            f"task retries {len(errors)} {[str(e) for e in errors]}"
        )
        assert outcome(sc) == reference, f"seed {seed}"
        assert proxy.faults_injected > 0, stats
        # every page was eventually read; a failed try re-reads from the start
        assert stats["forwarded"] >= clean_stats["forwarded"]
        injected.update({f: stats.get(f, 0) for f in FAULTS})
    assert all(injected[f] > 0 for f in FAULTS), injected

    # An outage on the reader's stream long enough to exhaust botocore's retries, while the
    # writer's reads fine: the try fails and applies nothing, not even the writer's part.  The
    # task retry (a fresh engine) meets a flaky but working endpoint and converges all the same.
    restore(sc, seeds_before)
    before = sc.snapshot()

    def reader_pages(req: ProxiedRequest) -> bool:
        return req.operation == "FilterLogEvents" and sc.reader.encode() in req.body

    with FaultProxy(
        sc.moto.endpoint_url, fault_rate=1.0, faults=("http500", "reset"), seed=9, only=reader_pages
    ) as proxy:
        use_proxy(sc, proxy)
        with pytest.raises((ClientError, BotoCoreError)) as caught:
            sc.engine(page_size=PAGE_SIZE).ingest(instances)
        outage = proxy.stats
        # The writer's stream is read concurrently with the reader's, and the reader's failure
        # stops it (cloudwatch.read_many cancels the other reads): only some of its pages went.
        assert outage["forwarded"] >= 1
        assert outage.get("http500", 0) + outage.get("reset", 0) >= 8  # one page, every attempt
        assert sc.snapshot() == before

        proxy.only = None
        proxy.fault_rate = 0.3
        proxy.faults = FAULTS
        errors = ingest_like_airflow(sc, instances, tries=2)
        print(f"outage then flaky: stats {proxy.stats}, first try {caught.value!r}, then {errors!r}")
    assert outcome(sc) == reference


@pytest.mark.single_pg_version("the faults are AWS's; PostgreSQL is only the target")
@pytest.mark.usefixtures("short_throttle_backoff")
def test_persistent_faults_fail_loudly_and_change_nothing(scenario: Scenario) -> None:
    sc = scenario
    instances = [sc.writer, sc.reader]
    build(sc)
    with FaultProxy(sc.moto.endpoint_url, fault_rate=0.0, seed=0) as proxy:
        use_proxy(sc, proxy)
        ingest_like_airflow(sc, instances, tries=1)
    # New events after the first watermark, on both instances, in a later second than any event
    # already recorded (log lines carry whole seconds).
    time.sleep(1.1)
    assert sc.login("fay")
    sc.ship(sc.writer)
    assert sc.login("gus")
    sc.ship(sc.reader)
    before = sc.snapshot()
    marks_before = watermarks(sc)

    # Server errors only: persistent throttling is retried up to a bound of minutes and then fails
    # with its own error (tests/test_cloudwatch_concurrency.py).
    with FaultProxy(sc.moto.endpoint_url, fault_rate=0.0, faults=("http503", "http500"), seed=5) as proxy:
        use_proxy(sc, proxy)
        proxy.fault_rate = 1.0  # every request fails, retries included
        with pytest.raises(ClientError) as caught:
            sc.engine(page_size=PAGE_SIZE).ingest(instances)
        stats = proxy.stats
        print(f"persistent: stats {stats}, error {caught.value}")
        code = caught.value.response["Error"]["Code"]
        assert code in ("503", "500")
        assert f"({code})" in str(caught.value)
        # the first request of a run with watermarks is the retention guard's DescribeLogGroups
        assert "DescribeLogGroups" in str(caught.value) or "FilterLogEvents" in str(caught.value)
        # The retry policy is in force: the first request was tried 8 times (cloudwatch.py's
        # total_max_attempts), then the engine gave up without reading further.
        assert stats["requests"] >= 8 and stats.get("forwarded", 0) == 0
        assert f"reached max retries: {stats['requests'] - 1})" in str(caught.value)
        assert sc.snapshot() == before  # no login applied, no watermark moved, no history

        # The fault clears: the next run reads what the failed one could not.
        proxy.fault_rate = 0.0
        ingest_like_airflow(sc, instances, tries=1)
    statuses = sc.statuses()
    now = db_now(sc)
    for name in ("fay", "gus"):
        assert abs(now - statuses[name]["last_login"]) < timedelta(minutes=5), name
    marks_after = watermarks(sc)
    for instance in instances:
        assert marks_after[instance] > marks_before[instance]  # type: ignore[operator]


@pytest.mark.single_pg_version("the faults are AWS's; PostgreSQL is only the target")
@pytest.mark.usefixtures("short_throttle_backoff")
def test_throttled_describe_log_groups_is_not_reported_as_a_missing_log_group(scenario: Scenario) -> None:
    """A new reader whose stream does not exist yet, while DescribeLogGroups is being throttled.

    moto answers FilterLogEvents on a missing stream with no events, where CloudWatch answers
    ResourceNotFoundException; an outer proxy plays that answer for the new instance's stream,
    chained to an inner one that throttles DescribeLogGroups.
    """
    sc = scenario
    new = "test-aurora-instance-3"
    sc.create_role("ann")
    eng = sc.engine(page_size=PAGE_SIZE)
    eng.migrate()
    eng.sync_roles()
    assert sc.login("ann")
    sc.ship(sc.writer)  # the log group exists
    stream_missing = AwsError(
        "stream_missing", "ResourceNotFoundException", "The specified log stream does not exist."
    )

    def describe_groups(req: ProxiedRequest) -> bool:
        return req.operation == "DescribeLogGroups"

    def new_stream(req: ProxiedRequest) -> bool:
        return req.operation == "FilterLogEvents" and new.encode() in req.body

    with (
        FaultProxy(sc.moto.endpoint_url, fault_rate=0.0, faults=["throttle"], only=describe_groups) as inner,
        FaultProxy(inner.endpoint_url, fault_rate=1.0, faults=[stream_missing], only=new_stream) as outer,
    ):
        use_proxy(sc, outer)
        # DescribeLogGroups answering: the missing stream is read as empty (the intended path).
        sc.engine(page_size=PAGE_SIZE).ingest([sc.writer, new])
        assert outer.stats["stream_missing"] == 2 and inner.stats["forwarded"] >= 2
        assert set(watermarks(sc)) == {sc.writer, new}

        # DescribeLogGroups throttled beyond botocore's retries and then beyond the run's bound on
        # waiting for throttling (2 s here, instead of minutes): the quota error, not a missing group.
        inner.fault_rate = 1.0
        eng = sc.engine(page_size=PAGE_SIZE)
        eng.logs = CloudWatchLogins(
            sc.cluster_id, sc.aws_conn_id, "us-east-1", page_size=PAGE_SIZE, max_throttle_wait=2
        )
        with pytest.raises(LogQuotaExhausted, match="requests were throttled") as caught:
            eng.ingest([sc.writer, new])
        assert "EnableCloudwatchLogsExports" not in str(caught.value)


# -- the proxy itself ---------------------------------------------------------------------------


class _Echo(http.server.BaseHTTPRequestHandler):
    """An upstream that records what reached it and answers with a fixed JSON body."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, dict(self.headers.items()), body))
        payload = b'{"ok": "\xc3\xbc"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("x-amzn-RequestId", "echo-1")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[tuple[str, list[tuple[str, str, dict[str, str], bytes]]]]:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []
    handler = type("Echo", (_Echo,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _logs_client(endpoint_url: str, attempts: int = 1) -> Any:
    """A logs client making at most ``attempts`` attempts per call (Config's ``max_attempts`` would
    count retries only: botocore turns ``max_attempts: n`` into ``n + 1`` attempts)."""
    session = boto3.session.Session(
        aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY, region_name="us-east-1"
    )
    return session.client(
        "logs",
        endpoint_url=endpoint_url,
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}, read_timeout=10),
    )


def test_proxy_forwards_signed_requests_byte_for_byte(echo: tuple[str, list[Any]]) -> None:
    upstream, seen = echo
    with FaultProxy(upstream, fault_rate=0.0) as proxy:
        sent: dict[str, Any] = {}

        def capture(request: Any, **_: Any) -> None:
            sent.update(headers=dict(request.headers.items()), body=request.body)

        client = _logs_client(proxy.endpoint_url)
        client.meta.events.register("before-send.cloudwatch-logs.FilterLogEvents", capture)
        answer = client.filter_log_events(logGroupName="/g", filterPattern='"ü" "Hé"')
        assert proxy.stats == {"requests": 1, "forwarded": 1}
    assert answer["ResponseMetadata"]["RequestId"] == "echo-1"
    ((method, path, headers, body),) = seen
    assert (method, path) == ("POST", "/")
    assert body == sent["body"]
    assert json.loads(body)["filterPattern"] == '"ü" "Hé"'
    client_headers = {
        k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in sent["headers"].items()
    }
    upstream_headers = {k.lower(): v for k, v in headers.items()}
    for key in ("authorization", "x-amz-date", "x-amz-target", "content-type", "user-agent"):
        assert upstream_headers[key] == client_headers[key], key
    assert upstream_headers["host"] == upstream.removeprefix("http://")


def test_proxy_faults_are_seeded_and_each_is_retryable(moto: MotoServer) -> None:
    logs = _logs_client(moto.endpoint_url, attempts=2)
    logs.create_log_group(logGroupName="/g")

    def run(seed: int) -> list[tuple[int, str, str]]:
        with FaultProxy(moto.endpoint_url, fault_rate=0.5, seed=seed, slow_seconds=0.05) as proxy:
            client = _logs_client(proxy.endpoint_url, attempts=10)
            for _ in range(12):
                client.describe_log_groups(logGroupNamePrefix="/g")
            return [(e.seq, e.operation, e.action) for e in proxy.events]

    first = run(42)
    assert run(42) == first  # same seed, same requests: same faults
    assert run(43) != first
    actions = Counter(a for _, _, a in first)
    assert actions["forwarded"] == 12  # each call eventually answered ("slow" ones are forwarded too)
    assert all(op == "DescribeLogGroups" for _, op, _ in first)

    # Each fault on its own, persistent, reaches the client as the error botocore reports for it.
    expected = {
        "throttle": "ThrottlingException",
        "http500": "(500)",
        "http503": "(503)",
        "reset": "Connection was closed",
    }
    for fault, text in expected.items():
        with FaultProxy(moto.endpoint_url, fault_rate=1.0, faults=[fault]) as proxy:
            with pytest.raises(
                (ClientError, BotoCoreError), match=text.replace("(", r"\(").replace(")", r"\)")
            ):
                _logs_client(proxy.endpoint_url, attempts=2).describe_log_groups()
            assert proxy.stats == {"requests": 2, fault: 2}
    gone = AwsError("gone", "ResourceNotFoundException", "The specified log group does not exist.")
    with FaultProxy(moto.endpoint_url, fault_rate=1.0, faults=[gone]) as proxy:
        with pytest.raises(ClientError) as caught:
            _logs_client(proxy.endpoint_url, attempts=3).describe_log_groups()
        assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
        assert proxy.stats == {"requests": 1, "gone": 1}  # not a retryable error: one attempt
    with FaultProxy(moto.endpoint_url, fault_rate=1.0, faults=["slow"], slow_seconds=0.3) as proxy:
        started = time.monotonic()
        _logs_client(proxy.endpoint_url).describe_log_groups()
        assert time.monotonic() - started >= 0.3
        assert proxy.stats == {"requests": 1, "slow": 1, "forwarded": 1}


def test_proxy_only_talks_to_loopback_and_validates_settings() -> None:
    for bad in ("http://example.com:80", "https://127.0.0.1:443", "http://10.0.0.1:5000", "http://127.0.0.1"):
        with pytest.raises(FaultProxyError):
            FaultProxy(bad)
    proxy = FaultProxy("http://127.0.0.1:9")
    with pytest.raises(FaultProxyError):
        proxy.fault_rate = 1.5
    with pytest.raises(FaultProxyError):
        proxy.faults = ["explode"]
    with pytest.raises(FaultProxyError):
        proxy.faults = [AwsError("forwarded", "X")]  # would be counted as a forwarded request
    with pytest.raises(FaultProxyError):
        _ = proxy.endpoint_url  # not started
    with proxy:
        assert proxy.endpoint_url.startswith("http://127.0.0.1:")
        # upstream down: a 502 from the proxy, counted, not a hang
        client = _logs_client(proxy.endpoint_url)
        with pytest.raises(ClientError, match=r"\(502\)"):
            client.describe_log_groups()
        assert proxy.stats == {"requests": 1, "upstream_error": 1}
    proxy.stop()  # idempotent
