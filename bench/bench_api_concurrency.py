"""Concurrent reads: 1,000,000 events over several streams from moto, 200 ms away, within a request budget.

The same synthetic events as ``bench_api.py`` (``bench/synthlog.py``: ``BENCH_EVENTS`` events,
default 1,000,000, dealt over ``BENCH_STREAMS`` instance streams, default 3) are put into moto.
The reader then reaches moto through :class:`devstack.faultproxy.FaultProxy` with
``latency_seconds`` (``BENCH_LATENCY``, default 0.2 s) added to every request, as a distant
region would, and reads every stream with ``CloudWatchLogins.read_many`` as ``ingest_logins``
does (page size 10,000), in one run each:

* sequential: ``max_concurrency=1``, which is the reader before concurrency, request for
  request (no time slices: one worker would only pay for them);
* concurrent within a budget a real region allows: 25 requests/s (us-east-1),
  ``max_concurrency`` ``BENCH_CONCURRENCY`` (default 8);
* the defaults: 5 requests/s (the strictest regions), ``max_concurrency`` 4;
* concurrent without time slices (streams only, 25 requests/s): what concurrency alone gives
  against moto, whose cost per page grows with the events of the page's time range.

For each: wall time, the reader's CPU, moto's CPU (``/proc/<pid>/stat`` of the server process),
requests sent, the most requests that reached the proxy in any one second (its own arrival
times) next to the budget, the most in flight at once, and whether every per-user result is
identical to the sequential read's and to what the generator recorded.

moto's server is one Python process: whatever its threads, it uses at most about one core, so
its CPU time for a run is a floor for that run's wall time. The bench prints that floor.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("inactive_users") is None:  # `make bench` only puts the repo root on the path
    sys.path.insert(0, str(ROOT / "plugins"))
if importlib.util.find_spec("devstack") is None:
    sys.path.insert(0, str(ROOT))
# Airflow (imported by the reader's hook) reads its home at import time: a throwaway one.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-api-conc-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from bench.synthlog import Expected, aurora_events  # noqa: E402
from devstack import shipper  # noqa: E402
from devstack.faultproxy import FaultProxy  # noqa: E402
from devstack.motoserver import MotoServer, airflow_aws_conn, boto_client  # noqa: E402
from inactive_users.aws.cloudwatch import CloudWatchLogins  # noqa: E402
from inactive_users.core.logparse import LoginSummary  # noqa: E402

EVENTS = int(os.environ.get("BENCH_EVENTS", "1000000"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "3"))
LATENCY = float(os.environ.get("BENCH_LATENCY", "0.2"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
USERS = 10_000
PAGE = 10_000
TARGET_RATIO = 4.0
AWS_CONN_ID = "bench_aws"
CLUSTER = "bench-conc"


@dataclass
class Run:
    label: str
    budget: float
    concurrency: int
    wall: float
    cpu: float
    moto_cpu: float
    reader: CloudWatchLogins
    summaries: dict[str, LoginSummary]
    arrivals: list[float]
    in_flight: int

    @property
    def sent(self) -> int:
        return self.reader.stats.sent

    @property
    def max_per_second(self) -> int:
        return max_per_second(self.arrivals)


def max_per_second(times: list[float]) -> int:
    """The most of ``times`` within any one second (a window starting at each of them)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read(
    label: str,
    proxy: FaultProxy,
    moto_pid: int,
    windows: dict[str, tuple[datetime, datetime]],
    budget: float,
    concurrency: int,
    **options: Any,
) -> Run:
    reader = CloudWatchLogins(
        CLUSTER,
        AWS_CONN_ID,
        "us-east-1",
        page_size=PAGE,
        requests_per_second=budget,
        max_concurrency=concurrency,
        **options,
    )
    _ = reader.client  # the Airflow connection and hook, before timing
    proxy.reset_stats()
    m0, t0, c0 = cpu_seconds(moto_pid), time.perf_counter(), time.process_time()
    summaries = reader.read_many(windows, timedelta(0))
    wall, cpu, moto_cpu = time.perf_counter() - t0, time.process_time() - c0, cpu_seconds(moto_pid) - m0
    run = Run(
        label,
        budget,
        concurrency,
        wall,
        cpu,
        moto_cpu,
        reader,
        summaries,
        [e.at for e in proxy.events],
        proxy.max_in_flight,
    )
    print(
        f"  {label:<40} {wall:>7.1f} s wall, {run.sent:>4} requests, at most {run.max_per_second:>2}/s "
        f"(budget {budget:g}), {run.in_flight} in flight, moto CPU {moto_cpu:.1f} s",
        flush=True,
    )
    return run


def total(summaries: dict[str, LoginSummary]) -> LoginSummary:
    out = LoginSummary()
    for s in summaries.values():
        out.merge(s)
    return out


def matches(summary: LoginSummary, expected: Expected) -> bool:
    return (
        summary.events == expected.logins + expected.fatals
        and summary.last_login == expected.last_login
        and summary.rejected == expected.rejected
        and summary.failed_auth == expected.failed_auth
    )


def main() -> None:
    streams = [f"{CLUSTER}-instance-{i}" for i in range(1, STREAMS + 1)]
    users = [f"user_{i}" for i in range(USERS)]
    now = datetime.now(UTC)
    end_events = now - timedelta(minutes=5)
    with MotoServer() as moto:
        assert moto._proc is not None
        moto_pid = moto._proc.pid
        events, expected = aurora_events(EVENTS, users, streams, end=end_events, span=timedelta(hours=23))
        logs = boto_client(moto.endpoint_url, "logs")
        t0 = time.perf_counter()
        for stream, evs in events.items():
            shipper.ship(logs, CLUSTER, stream, evs)
        put_s = time.perf_counter() - t0
        del events
        print(
            f"put {EVENTS:,} events ({expected.logins:,} 'connection authorized', {expected.fatals:,} FATAL) "
            f"over {STREAMS} streams in {put_s:.1f} s; reads through a proxy adding {LATENCY * 1000:.0f} ms "
            f"to every request; page size {PAGE:,}",
            flush=True,
        )
        windows = {s: (end_events - timedelta(hours=24), now) for s in streams}
        with FaultProxy(moto.endpoint_url, latency_seconds=LATENCY) as proxy:
            os.environ["AIRFLOW_CONN_" + AWS_CONN_ID.upper()] = json.dumps(
                airflow_aws_conn(proxy.endpoint_url)
            )
            seq = read("sequential (max_concurrency 1)", proxy, moto_pid, windows, 25, 1)
            conc = read(f"concurrent ({CONCURRENCY}, 25 req/s)", proxy, moto_pid, windows, 25, CONCURRENCY)
            default = read("defaults (4, 5 req/s)", proxy, moto_pid, windows, 5, 4)
            streams_only = read(
                f"streams only, no slices ({CONCURRENCY}, 25/s)",
                proxy,
                moto_pid,
                windows,
                25,
                CONCURRENCY,
                slice_pages=0,
            )
    runs = [seq, conc, default, streams_only]

    print()
    print(
        f"{'run':<40} {'wall s':>7} {'ratio':>6} {'requests':>8} {'slices':>6} {'max/s':>5} {'mean/s':>6} "
        f"{'budget':>6} {'flight':>6} {'reader CPU':>10} {'moto CPU':>8} {'moto/req':>8} {'peak buf':>8}"
    )
    for r in runs:
        st = r.reader.stats
        print(
            f"{r.label:<40} {r.wall:>7.1f} {seq.wall / r.wall:>5.1f}x {r.sent:>8} {st.slices:>6} "
            f"{r.max_per_second:>5} {st.mean_rate:>6.1f} {r.budget:>6g} {r.in_flight:>6} {r.cpu:>9.1f}s "
            f"{r.moto_cpu:>7.1f}s {r.moto_cpu / r.sent * 1000:>6.0f}ms {st.peak_buffered_events:>8,}"
        )

    identical = all(r.summaries == seq.summaries for r in runs)
    exact = matches(total(seq.summaries), expected)
    within = all(
        r.max_per_second <= r.budget + 1 and r.reader.stats.max_rate_seen <= r.budget + 1 for r in runs
    )
    flight = all(r.in_flight <= r.concurrency for r in runs)
    ratio = seq.wall / conc.wall
    print()
    for r in (conc, default):
        floor = max(r.moto_cpu, r.sent / r.budget)
        print(
            f"{r.label}: {r.wall:.1f} s; floors: moto's CPU {r.moto_cpu:.1f} s (one process, at most one "
            f"core), the budget {r.sent} requests / {r.budget:g} per s = {r.sent / r.budget:.1f} s, the "
            f"reader's CPU {r.cpu:.1f} s; at {floor / r.wall:.0%} of the highest"
        )
    print(
        f"moto CPU per request: sequential {seq.moto_cpu / seq.sent * 1000:.0f} ms (each page filters its "
        f"whole time range, the rest of a stream), in slices {conc.moto_cpu / conc.sent * 1000:.0f} ms; "
        f"the sequential read is {seq.sent * LATENCY:.1f} s of added latency and {seq.moto_cpu:.1f} s of moto"
    )
    print(
        f"per-user results identical in all {len(runs)} runs: {'yes' if identical else 'NO'}; "
        f"equal to what the generator recorded: {'yes' if exact else 'NO'}"
    )
    print(
        "requests/s sent never above the budget (+1 token of burst) in any second: "
        f"{'yes' if within else 'NO'}; "
        f"in flight never above max_concurrency: {'yes' if flight else 'NO'}"
    )
    verdict = "met" if ratio >= TARGET_RATIO and identical and exact and within and flight else "NOT met"
    print(
        f"target: concurrent at least {TARGET_RATIO:g}x the sequential read at 25 req/s, same results, "
        f"within the budget: {verdict} ({ratio:.1f}x; at the default 5 req/s: {seq.wall / default.wall:.1f}x)"
    )
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench process peak RSS {ru:.0f} MB (generator and reader)")


if __name__ == "__main__":
    main()
