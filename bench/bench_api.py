"""API calls: read 1,000,000 connection-log events from the moto server through our real reader.

Puts ``BENCH_EVENTS`` synthetic Aurora events (default 1,000,000: 98.5% ``connection authorized``,
1% failed password authentications, 0.5% sessions rejected after authorization) into one log
group, dealt over ``BENCH_STREAMS`` instance streams (default 3), with PutLogEvents in batches
within the service limits (10,000 events / 1 MB). Then reads every stream with
``CloudWatchLogins.read`` exactly as the ``ingest_logins`` task does (page size 10,000; one
``"connection authorized"`` query and one ``"FATAL"`` query per instance) and reports the
FilterLogEvents requests, the bytes on the wire (HTTP bodies, counted by botocore event hooks on
the reader's own client: ``before-send`` and ``response-received``), wall time, the reader's CPU
time and events/s. It checks the result against what the generator recorded.

Baseline: the same reader with page size 10 (the AWS sample's setting). moto rescans the whole
stream for every page (``moto/logs/models.py``: it filters and sorts every event of the stream,
then looks the token up linearly), so a page costs time in proportion to the stream: about 1.6 s
on a 330,000-event stream here. 100,000 such pages would take days, so the baseline is measured
on a small group of ``BENCH_BASELINE_EVENTS`` events (default 6,000) and extrapolated: requests
exactly (the count of full pages the 1M-event streams need), bytes and time by a linear model
(per request + per event) fitted to both page sizes on that small group. The extrapolated time
is the cost of a page on a small stream, a lower bound on moto and on AWS (a network round trip).

The target (at most 100 requests per million events) sits below this reader's floor: each stream
needs its own pages, the last one partial, and one ``"FATAL"`` request, so 3 streams of 1M events
need 102. A single query for both kinds would need the OR pattern ``?"connection authorized"
?"FATAL"``, which moto reads as match-all (a probe below shows it), so the tests would stop reading
what production reads. And on real CloudWatch a page also stops at 1 MB of events, which for
Aurora's ~175-byte login lines means about 6,000 events a page whatever the limit: the bench prints
that floor too.

Environment: ``BENCH_EVENTS``, ``BENCH_STREAMS``, ``BENCH_BASELINE_EVENTS``, ``BENCH_REPEAT``
(repeats of the small-group reads, default 3; the 1M read runs once: it takes minutes on moto).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("inactive_users") is None:  # `make bench` only puts the repo root on the path
    sys.path.insert(0, str(ROOT / "plugins"))
if importlib.util.find_spec("devstack") is None:
    sys.path.insert(0, str(ROOT))
# Airflow (imported by the reader's hook) reads its home at import time: a throwaway one.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-api-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# The amazon provider logs an info line per client it builds: noise here.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from bench.synthlog import Expected, aurora_events  # noqa: E402
from devstack import shipper  # noqa: E402
from devstack.motoserver import MotoServer, airflow_aws_conn, boto_client  # noqa: E402
from inactive_users.aws.cloudwatch import CloudWatchLogins  # noqa: E402
from inactive_users.core.logparse import LoginSummary  # noqa: E402

EVENTS = int(os.environ.get("BENCH_EVENTS", "1000000"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "3"))
BASELINE_EVENTS = int(os.environ.get("BENCH_BASELINE_EVENTS", "6000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
USERS = 10_000
PAGE = 10_000
SAMPLE_PAGE = 10
MAX_PAGE_BYTES = 1_048_576  # a real FilterLogEvents page holds at most 1 MB of events as well
AWS_CONN_ID = "bench_aws"
BIG, SMALL = "bench-aurora", "bench-small"


@dataclass
class Meter:
    """Counts the HTTP requests one boto3 client sends and the body bytes both ways (event hooks)."""

    requests: int = 0
    sent: int = 0
    received: int = 0
    headers: int = 0
    page_sizes: Counter[int] = field(default_factory=Counter)

    def attach(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-send.cloudwatch-logs.FilterLogEvents", self._before_send)
        events.register("response-received.cloudwatch-logs.FilterLogEvents", self._received)

    def _before_send(self, request: Any, **_: Any) -> None:
        self.requests += 1
        body = request.body or b""
        self.sent += len(body if isinstance(body, bytes) else body.encode())
        self.headers += sum(len(k) + len(v) + 4 for k, v in request.headers.items())

    def _received(self, response_dict: Any = None, parsed_response: Any = None, **_: Any) -> None:
        if response_dict is not None:
            self.received += len(response_dict.get("body") or b"")
            self.headers += sum(len(k) + len(v) + 4 for k, v in (response_dict.get("headers") or {}).items())
        if parsed_response is not None:
            self.page_sizes[len(parsed_response.get("events", []))] += 1


@dataclass
class Read:
    page_size: int
    wall: float
    cpu: float
    meter: Meter
    summary: LoginSummary
    message_bytes: int

    @property
    def events(self) -> int:
        return self.summary.events


def read_all(cluster: str, streams: list[str], page_size: int, start: datetime, end: datetime) -> Read:
    """Every stream through a fresh reader, as ``Engine._ingest`` does, its client metered."""
    reader = CloudWatchLogins(cluster, AWS_CONN_ID, "us-east-1", page_size=page_size)
    meter = Meter()
    meter.attach(reader.client)  # builds the client (Airflow connection, hook) before timing
    total = LoginSummary()
    t0, c0 = time.perf_counter(), time.process_time()
    for stream in streams:
        total.merge(reader.read(stream, start, end, timedelta(0)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert meter.requests == reader.stats.requests, (meter.requests, reader.stats.requests)
    return Read(page_size, wall, cpu, meter, total, reader.stats.bytes)


def check(read: Read, expected: Expected, label: str) -> None:
    s = read.summary
    problems = []
    if s.events != expected.logins + expected.fatals:
        problems.append(f"events {s.events} != {expected.logins + expected.fatals}")
    if s.last_login != expected.last_login:
        problems.append(f"last logins differ ({len(s.last_login)} users vs {len(expected.last_login)})")
    if s.rejected != expected.rejected:
        problems.append(f"rejected {sum(s.rejected.values())} != {sum(expected.rejected.values())}")
    if s.failed_auth != expected.failed_auth:
        problems.append(f"failed auth {sum(s.failed_auth.values())} != {sum(expected.failed_auth.values())}")
    if problems:
        raise SystemExit(f"{label}: wrong result: " + "; ".join(problems))


def put(moto: MotoServer, cluster: str, events: dict[str, list[dict[str, Any]]]) -> tuple[float, int]:
    """Ship every stream with PutLogEvents (devstack.shipper batches within the limits)."""
    logs = boto_client(moto.endpoint_url, "logs")
    calls = 0

    def count(**_: Any) -> None:
        nonlocal calls
        calls += 1

    logs.meta.events.register("before-send.cloudwatch-logs.PutLogEvents", count)
    t0 = time.perf_counter()
    for stream, evs in events.items():
        shipper.ship(logs, cluster, stream, evs)
    return time.perf_counter() - t0, calls


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pages_needed(events: dict[str, list[dict[str, Any]]], page: int) -> int:
    """Requests the reader needs when every page but the last is full: per stream, per pattern."""
    n = 0
    for evs in events.values():
        logins = sum(1 for e in evs if "connection authorized" in e["message"])
        fatals = sum(1 for e in evs if "FATAL" in e["message"])
        n += max(1, math.ceil(logins / page)) + max(1, math.ceil(fatals / page))
    return n


def fit(reads: list[Read], value: str) -> tuple[float, float]:
    """(per request, per event) of ``value`` from reads of the same events at two page sizes."""
    a, b = reads
    ra, rb = a.meter.requests, b.meter.requests
    va, vb = _value(a, value), _value(b, value)
    per_request = (vb - va) / (rb - ra)
    per_event = (va - per_request * ra) / a.events
    return per_request, per_event


def _value(r: Read, value: str) -> float:
    return {"bytes": r.meter.sent + r.meter.received, "wall": r.wall, "cpu": r.cpu}[value]


def median_read(cluster: str, streams: list[str], page: int, start: datetime, end: datetime) -> Read:
    reads = [read_all(cluster, streams, page, start, end) for _ in range(REPEAT)]
    reads.sort(key=lambda r: r.wall)
    return reads[len(reads) // 2]


def or_pattern_probe(moto: MotoServer) -> tuple[int, int]:
    """How moto reads ``?"connection authorized" ?"FATAL"``, the one pattern that would cover both.

    Real CloudWatch reads it as either phrase. Returns (events moto returns, events that match).
    """
    logs = boto_client(moto.endpoint_url, "logs")
    t = int((datetime.now(UTC) - timedelta(minutes=1)).timestamp())
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"{stamp}:10.0.0.7(50000):alice@app:[7]:LOG:  connection authorized: user=alice database=app",
        f'{stamp}:10.0.0.7(50001):bob@app:[8]:FATAL:  password authentication failed for user "bob"',
        f"{stamp}:10.0.0.7(50000):alice@app:[7]:LOG:  disconnection: session time: 0:00:01.002 user=alice",
    ]
    shipper.ship(logs, "probe", "probe-1", [{"timestamp": t * 1000, "message": m} for m in lines])
    got = logs.filter_log_events(
        logGroupName=shipper.group_name("probe"), filterPattern='?"connection authorized" ?"FATAL"'
    )["events"]
    return len(got), 2


def main() -> None:
    streams = [f"{BIG}-instance-{i}" for i in range(1, STREAMS + 1)]
    small_streams = [f"{SMALL}-instance-{i}" for i in range(1, STREAMS + 1)]
    users = [f"user_{i}" for i in range(USERS)]
    now = datetime.now(UTC)
    end_events = now - timedelta(minutes=5)
    with MotoServer() as moto:
        os.environ["AIRFLOW_CONN_" + AWS_CONN_ID.upper()] = json.dumps(airflow_aws_conn(moto.endpoint_url))
        assert moto._proc is not None
        moto_pid = moto._proc.pid
        rss_idle = rss_mb(moto_pid)

        t0 = time.perf_counter()
        big, big_expected = aurora_events(EVENTS, users, streams, end=end_events, span=timedelta(hours=23))
        gen_s = time.perf_counter() - t0
        put_s, put_calls = put(moto, BIG, big)
        rss_loaded = rss_mb(moto_pid)
        small, small_expected = aurora_events(
            BASELINE_EVENTS, users, small_streams, end=end_events, span=timedelta(hours=23), seed=7
        )
        put(moto, SMALL, small)
        message_bytes = sum(len(e["message"].encode()) for evs in big.values() for e in evs)
        floor_pages = pages_needed(big, PAGE)
        sample_pages_1m = pages_needed(big, SAMPLE_PAGE)
        del big  # the bench process should not hold a copy while the reader runs

        print(
            f"put {EVENTS:,} events ({big_expected.logins:,} 'connection authorized', "
            f"{big_expected.fatals:,} FATAL; {message_bytes / 1e6:.1f} MB of messages) "
            f"over {STREAMS} streams: "
            f"generated in {gen_s:.1f} s, {put_calls} PutLogEvents calls in {put_s:.1f} s "
            f"({EVENTS / put_s:,.0f} events/s); moto RSS {rss_idle:.0f} -> {rss_loaded:.0f} MB"
        )

        start = end_events - timedelta(hours=24)
        ours = read_all(BIG, streams, PAGE, start, now)
        check(ours, big_expected, "page size 10,000")
        moto_peak = rss_mb(moto_pid, "VmHWM")

        small_ours = median_read(SMALL, small_streams, PAGE, start, now)
        small_base = median_read(SMALL, small_streams, SAMPLE_PAGE, start, now)
        check(small_ours, small_expected, "small group, page size 10,000")
        check(small_base, small_expected, "small group, page size 10")
        or_got, or_want = or_pattern_probe(moto)

    m = ours.meter
    per_m = 1_000_000 / ours.events
    wire = m.sent + m.received
    print()
    print(f"ours: page size {PAGE:,}, {ours.events:,} events read in {ours.wall:.1f} s (once)")
    print(
        f"  FilterLogEvents requests      {m.requests:>12,}   ({m.requests * per_m:,.1f} per million events)"
    )
    print(
        f"  page sizes returned           {dict(sorted(m.page_sizes.items(), reverse=True))}  "
        f"(moto honours limit={PAGE:,})"
    )
    print(
        f"  floor at {PAGE:,}/page           {floor_pages:>12,}   "
        f"(per stream: ceil(logins/{PAGE:,}) + ceil(FATAL/{PAGE:,}))"
    )
    print(
        f"  response bodies               {m.received / 1e6:>12.1f} MB "
        f"({m.received / ours.events:.0f} B/event)"
    )
    print(f"  request bodies                {m.sent / 1e3:>12.1f} kB")
    print(f"  HTTP headers, both ways       {m.headers / 1e3:>12.1f} kB")
    print(f"  message text (ReadStats.bytes){ours.message_bytes / 1e6:>11.1f} MB")
    print(f"  wall                          {ours.wall:>12.1f} s    {ours.events / ours.wall:,.0f} events/s")
    print(
        f"  reader CPU (this process)     {ours.cpu:>12.1f} s    {ours.events / ours.cpu:,.0f} events/s; "
        f"the rest of the wall time is moto"
    )
    print(f"  moto server peak RSS          {moto_peak:>12.0f} MB")
    page_by_bytes = math.ceil(message_bytes / MAX_PAGE_BYTES)
    print(
        f"  on real CloudWatch a page also stops at 1 MB of events: {message_bytes / 1e6:.0f} MB of "
        f"messages need at least {page_by_bytes} pages, more than the {math.ceil(EVENTS / PAGE)} "
        "the 10,000-event limit needs"
    )

    rq_bytes = fit([small_ours, small_base], "bytes")
    rq_wall = fit([small_ours, small_base], "wall")
    rq_cpu = fit([small_ours, small_base], "cpu")
    print()
    label = f"small group, {small_ours.events:,} events, median of {REPEAT}"
    print(f"{label:<44} {'requests':>9} {'bytes':>11} {'wall s':>8} {'CPU s':>7} {'events/s':>9}")
    for r in (small_ours, small_base):
        b = r.meter.sent + r.meter.received
        print(
            f"{'  page size ' + format(r.page_size, ','):<44} {r.meter.requests:>9,} {b:>11,} "
            f"{r.wall:>8.2f} {r.cpu:>7.2f} {r.events / r.wall:>9,.0f}"
        )
    print(
        f"  fitted: {rq_bytes[0]:.0f} B per request + {rq_bytes[1]:.0f} B per event; "
        f"{rq_wall[0] * 1e3:.2f} ms wall and {rq_cpu[0] * 1e3:.2f} ms reader CPU per request"
    )

    base_bytes = rq_bytes[0] * sample_pages_1m + rq_bytes[1] * ours.events
    base_wall = rq_wall[0] * sample_pages_1m + rq_wall[1] * ours.events
    print()
    print(f"per million events        {'requests':>10} {'bytes':>12} {'time':>14}")
    print(
        f"{'ours, page size 10,000':<25} {m.requests * per_m:>10,.0f} {wire * per_m / 1e6:>9.1f} MB "
        f"{ours.wall * per_m:>12.1f} s"
    )
    print(
        f"{'baseline, page size 10':<25} {sample_pages_1m * per_m:>10,.0f} "
        f"{base_bytes * per_m / 1e6:>9.1f} MB "
        f"{base_wall * per_m:>12.0f} s  (EXTRAPOLATED from {small_ours.events:,} events; requests exact)"
    )
    print(
        f"requests: {sample_pages_1m / m.requests:,.0f}x fewer than the baseline; bytes: "
        f"{base_bytes / wire:.2f}x fewer. Target at most 100 requests per million events: "
        f"{'met' if m.requests * per_m <= 100 else 'NOT met'} ({m.requests * per_m:,.1f})"
    )
    print(
        f"  why not 100: {floor_pages} is the floor for this reader: each of the {STREAMS} streams needs "
        f"ceil(logins/{PAGE:,}) pages (a partial last page each) plus one FATAL request. One query for "
        'both kinds needs an OR pattern, and moto reads ?"connection authorized" ?"FATAL" as '
        f"match-all: it returned {or_got} of 3 probe events where CloudWatch returns {or_want}, so the "
        "tests could no longer see what production reads. On real CloudWatch the 1 MB page cap above "
        f"needs at least {page_by_bytes} pages for these messages, whatever the page size."
    )
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench process peak RSS {ru:.0f} MB (generator and reader)")


if __name__ == "__main__":
    main()
