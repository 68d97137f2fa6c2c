"""Read connection events from the CloudWatch Logs export of a PostgreSQL log (the AWS I/O shell).

Aurora writes each instance's PostgreSQL log to stream ``<instance-id>`` of log group
``/aws/rds/cluster/<cluster-id>/postgresql`` (so does an RDS Multi-AZ DB cluster); an RDS DB
instance, each read replica too, to log group ``/aws/rds/instance/<instance-id>/postgresql`` in
its own region, whose streams are read all, as ``DescribeLogStreams`` lists them (their names are
not assumed); a self-managed server wherever its CloudWatch agent ships it. Each instance a
:class:`CloudWatchLogins` reads is known by its key, and its streams by ``streams``. We ask
CloudWatch to filter server-side so only
connection lines travel: one query for ``"connection authorized"`` and one for ``"FATAL"`` (the
rejections that follow an authorized line), merged back into time order.

Concurrency, within a request budget. ``FilterLogEvents`` is limited per account and region (10
requests/s in most regions, 25 in us-east-1, 5 in a few; not adjustable), and every DAG of the
fleet shares that quota with everything else in the account. So one :class:`CloudWatchLogins`
object (one task run) sends every request it makes, each attempt of each operation, through one
:class:`RateLimiter` (``requests_per_second``, a burst of one request), with at most
``max_concurrency`` of them in flight. Within that budget :meth:`CloudWatchLogins.read_many`
reads:

* every instance's two queries at once: the first page of each is read over the whole window
  (the *probe*). A quiet stream is then done in those two requests, as it was sequentially;
* the rest of a busy query (one whose probe came back with a ``nextToken``) in time *slices*
  read concurrently, once every probe is in: the remaining time is cut into equal slices sized
  from the probe's density, a little under ``slice_pages`` pages each (a slice's last page is
  partial: a request more than one long read would take), and about four per worker in all, so
  the workers stay busy to the end without spending the quota on slices nobody waits for.

Each instance's events still reach ONE :class:`LoginAggregator` in time order (the slices of a
query partition its time range, so concatenating them in order is the query's own order), and
a rejection whose FATAL falls in the slice after its login still cancels it. Pages are fetched
ahead of the aggregators only so far: at most ``max_concurrency + 2`` pages of slices and
continuations in flight or waiting (plus one probe page per query, consumed first). The
aggregation itself runs in the calling thread.

Throttling (``ThrottlingException``, ``LimitExceededException``, ``RequestLimitExceeded``, HTTP
429) is never a failure while the run has waited less than ``max_throttle_wait`` in all for it
(default :data:`MAX_THROTTLE_WAIT_SECONDS`); beyond that, :class:`LogQuotaExhausted` says which
quota is exhausted and what to change. See :meth:`CloudWatchLogins._call` for how botocore's own
retries take part.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from inactive_users.core.logparse import FILTER_FATAL, FILTER_LOGINS, LoginAggregator, LoginSummary

log = logging.getLogger(__name__)

#: A run gives up on a throttled account once it has spent this long, in all, waiting to retry
#: throttled requests (wall time during which at least one of its requests was held back).
MAX_THROTTLE_WAIT_SECONDS = 15 * 60.0
#: Error codes that mean "too many requests" (all retried as throttling, as botocore does too).
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "LimitExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
    }
)
#: botocore's attempts per call (standard mode): transient 5xx and connection errors, throttling too.
BOTOCORE_MAX_ATTEMPTS = 8
#: A busy query is cut into slices of at least this many pages (each slice adds a partial page).
SLICE_PAGES = 2
# Slices per worker, shared out among the busy queries: enough to keep every worker busy to the
# end of the read, not more (each slice costs up to one partial page, a request of the quota).
# bench/bench_api_concurrency.py: 2 -> 1.1x the requests and 3.6x faster than sequential (against
# moto), 4 -> 1.03x and 5.7x, no limit -> 1.12x and 6.5x.
_SLICES_PER_WORKER = 4
_SLICE_FILL = 0.9  # of slice_pages pages, by the probe's density: the margin of the estimate
_MAX_SLICES = 256
_BACKOFF_BASE = 2.0  # seconds; our retry n after botocore gave up waits ~ base * 2**n, jittered
_BACKOFF_CAP = 60.0
_PATTERNS = (FILTER_LOGINS, FILTER_FATAL)  # kind 0, 1: on equal timestamps a login precedes its FATAL

Event = tuple[int, int, str]  # (timestamp ms, kind, message)


class LogSourceError(RuntimeError):
    """The log export cannot be read; the message says what to fix."""


class LogQuotaExhausted(RuntimeError):
    """CloudWatch Logs kept throttling this run longer than its bound; the message says what to change.

    Not a :class:`LogSourceError`: the quota is shared, so a later try (an Airflow task retry)
    may well get through.
    """


class _Cancelled(Exception):
    """Another read of the same call failed: stop sending."""


def log_group_name(cluster_id: str) -> str:
    """Where Aurora and RDS Multi-AZ DB clusters export their PostgreSQL log (a stream per instance)."""
    return f"/aws/rds/cluster/{cluster_id}/postgresql"


def instance_log_group_name(db_instance_id: str) -> str:
    """Where an RDS for PostgreSQL DB instance (a read replica too) exports its PostgreSQL log."""
    return f"/aws/rds/instance/{db_instance_id}/postgresql"


def to_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class RateLimiter:
    """A thread-safe token bucket: ``rate`` tokens a second, at most ``burst`` saved up.

    With ``burst=1`` (the default) requests are granted at least ``1 / rate`` seconds apart, so
    no second ever sees more than ``rate`` of them, plus the one token a quiet bucket holds.
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, cancel: threading.Event | None = None) -> float:
        """Block until a token is free and take it; returns the (monotonic) time it was granted."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return now
                wait = (1.0 - self._tokens) / self.rate
            if cancel is None:
                time.sleep(wait)
            elif cancel.wait(wait):
                raise _Cancelled()


@dataclass
class ReadStats:
    """What one :class:`CloudWatchLogins` sent and received (thread-safe; read it after a call)."""

    requests: int = 0  # FilterLogEvents pages answered
    events: int = 0  # events received
    bytes: int = 0  # message characters received
    sent: int = 0  # HTTP requests sent, every operation and attempt, each through the limiter
    throttled: int = 0  # answers that were throttling (each one retried or counted in the error)
    throttle_wait: float = 0.0  # seconds during which some request was waiting because of throttling
    max_rate_seen: int = 0  # the most requests sent within any one second
    first_sent: float | None = None  # time.monotonic() of the first and the last request sent
    last_sent: float | None = None
    slices: int = 0  # time slices planned for busy queries
    peak_buffered_events: int = 0  # the most events fetched and not yet given to an aggregator
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _window: deque[float] = field(default_factory=deque, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, n in counts.items():
                setattr(self, key, getattr(self, key) + n)

    def record_sent(self, at: float) -> None:
        with self._lock:
            self.sent += 1
            if self.first_sent is None:
                self.first_sent = at
            self.last_sent = at
            window = self._window
            while window and at - window[0] >= 1.0:
                window.popleft()
            window.append(at)
            self.max_rate_seen = max(self.max_rate_seen, len(window))

    def peak(self, buffered_events: int) -> None:
        with self._lock:
            self.peak_buffered_events = max(self.peak_buffered_events, buffered_events)

    @property
    def mean_rate(self) -> float:
        """Requests per second from the first request sent to the last (0 for fewer than two)."""
        if self.first_sent is None or self.last_sent is None or self.last_sent <= self.first_sent:
            return 0.0
        return (self.sent - 1) / (self.last_sent - self.first_sent)


class _WaitClock:
    """Wall time during which at least one thread was waiting because of throttling."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = 0
        self._since = 0.0
        self._total = 0.0

    def enter(self, now: float) -> None:
        with self._lock:
            if self._waiting == 0:
                self._since = now
            self._waiting += 1

    def leave(self, now: float) -> None:
        with self._lock:
            self._waiting -= 1
            if self._waiting == 0:
                self._total += max(0.0, now - self._since)

    def total(self) -> float:
        with self._lock:
            if self._waiting:
                return self._total + max(0.0, time.monotonic() - self._since)
            return self._total


class CloudWatchLogins:
    """Per-instance login summaries from CloudWatch Logs, through the amazon provider's hook."""

    def __init__(
        self,
        cluster_id: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        page_size: int = 10_000,
        log_group: str | None = None,
        *,
        requests_per_second: float = 5,
        max_concurrency: int = 4,
        log_format: object | None = None,
        max_throttle_wait: float = MAX_THROTTLE_WAIT_SECONDS,
        slice_pages: int | None = None,
        streams: Mapping[str, Sequence[str] | None] | None = None,
        missing_hint: str | None = None,
    ) -> None:
        """``slice_pages``: the fewest pages a time slice of a busy query holds; 0 never slices.
        Default: :data:`SLICE_PAGES`, or 0 with ``max_concurrency=1`` (slices would only add
        requests then).

        ``streams``: an instance's log streams, by the key :meth:`read_many` gets it by, where they
        are not the one stream named like the key; None: every stream of the group.
        ``missing_hint``: what to do when the log group does not exist (default: enable the
        cluster's export)."""
        if not 1 <= page_size <= 10_000:
            raise ValueError(f"page_size must be between 1 and 10000, got {page_size!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency!r}")
        self.cluster_id = cluster_id
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.page_size = page_size
        self.log_group = log_group or log_group_name(cluster_id)
        self.streams = dict(streams or {})
        self.missing_hint = missing_hint or (
            f"enable the 'postgresql' log export on cluster {cluster_id!r} (EnableCloudwatchLogsExports)"
        )
        self.requests_per_second = requests_per_second
        self.max_concurrency = max_concurrency
        self.log_format = log_format
        self.max_throttle_wait = max_throttle_wait
        if slice_pages is None:
            slice_pages = SLICE_PAGES if max_concurrency > 1 else 0
        self.slice_pages = slice_pages
        self.stats = ReadStats()
        #: The time slices of the last read_many: (instance, filter pattern) -> [(start ms, end ms)]
        self.slice_plan: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._limiter = RateLimiter(requests_per_second)
        self._in_flight = threading.BoundedSemaphore(max_concurrency)
        self._cancel = threading.Event()
        self._wait_clock = _WaitClock()
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._client: Any = None
        self._group_info: dict[str, Any] | None = None

    @property
    def region(self) -> str | None:
        """The region read: the one given, else the Airflow connection's."""
        return self.region_name or self.client.meta.region_name

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
        from botocore.config import Config

        hook = AwsLogsHook(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            # 8 attempts in all per call; a silent endpoint costs at most 8 x 30 s
            config=Config(
                retries={"mode": "standard", "total_max_attempts": BOTOCORE_MAX_ATTEMPTS},
                connect_timeout=10,
                read_timeout=30,
                max_pool_connections=max(10, self.max_concurrency + 1),
            ),
        )
        client = hook.conn
        # Every attempt botocore makes (its own retries included) waits for the limiter here.
        client.meta.events.register("before-send.cloudwatch-logs", self._before_send)
        client.meta.events.register("response-received.cloudwatch-logs", self._response_received)
        return client

    # -- reading ----------------------------------------------------------------------------------

    def read(self, instance: str, start: datetime, end: datetime, settle: timedelta) -> LoginSummary:
        """Logins on ``instance`` in [start, end], FATAL rejections already discounted."""
        return self.read_many({instance: (start, end)}, settle)[instance]

    def read_many(
        self, windows: Mapping[str, tuple[datetime, datetime]], settle: timedelta
    ) -> dict[str, LoginSummary]:
        """Each instance's logins in its window [start, end], as :meth:`read` gives them, read
        concurrently within the request budget (see the module's docstring)."""
        if not windows:
            return {}
        _ = self.client  # built here, not by the first workers at once
        self.slice_plan = {}
        sent_before, throttled_before, started = self.stats.sent, self.stats.throttled, time.monotonic()
        try:
            owners = self._streams_of(windows)
            by_stream = _Reading(self, {s: windows[k] for s, k in owners.items()}, settle).run()
        finally:
            self.stats.throttle_wait = self._wait_clock.total()
        summaries: dict[str, LoginSummary] = {}
        for stream, summary in by_stream.items():  # one stream: its summary as it is
            key = owners[stream]
            if key in summaries:
                summaries[key].merge(summary)
            else:
                summaries[key] = summary
        summaries = {key: summaries.get(key) or LoginSummary() for key in windows}
        log.info(
            "read %d log streams of %s: %d requests (%d throttled and retried), at most %d in any "
            "second of a budget of %g/s, at most %d in flight; %d time slices (%.2fs)",
            len(by_stream),
            self.log_group,
            self.stats.sent - sent_before,
            self.stats.throttled - throttled_before,
            self.stats.max_rate_seen,
            self.requests_per_second,
            self.max_concurrency,
            sum(len(s) for s in self.slice_plan.values()),
            time.monotonic() - started,
        )
        return summaries

    def _streams_of(self, windows: Mapping[str, tuple[datetime, datetime]]) -> dict[str, str]:
        """Each stream to read, with the key of the instance it belongs to."""
        owners: dict[str, str] = {}
        listed: list[str] | None = None
        for key in windows:
            names = self.streams.get(key, [key])
            if names is None:
                if listed is None:
                    listed = self.list_streams()
                names = listed
                if not names:
                    log.warning("log group %s has no streams: %s wrote nothing there", self.log_group, key)
            for name in names:
                owners[name] = key
        return owners

    def list_streams(self) -> list[str]:
        """Every stream of the log group (``DescribeLogStreams``, within the request budget)."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"logGroupName": self.log_group}
        names: list[str] = []
        while True:
            try:
                page = self._call("DescribeLogStreams", lambda: self.client.describe_log_streams(**kwargs))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    raise LogSourceError(self._missing_group_message()) from None
                raise
            names += [s["logStreamName"] for s in page.get("logStreams", [])]
            token = page.get("nextToken")
            if not token or token == kwargs.get("nextToken"):
                log.info("log group %s: %d log streams %s", self.log_group, len(names), names[:20])
                return names
            kwargs["nextToken"] = token

    def retention_days(self) -> int | None:
        """The log group's retention in days (``retentionInDays``); None when events never expire."""
        group = self._group()
        if group is None:
            raise LogSourceError(self._missing_group_message())
        days = group.get("retentionInDays")
        return None if days is None else int(days)

    def _aggregator(self, settle: timedelta) -> LoginAggregator:
        if self.log_format is None:
            return LoginAggregator(settle)
        options: dict[str, Any] = {"log_format": self.log_format}
        return LoginAggregator(settle, **options)

    def _page(
        self, instance: str, kind: int, start_ms: int, end_ms: int, token: str | None
    ) -> tuple[list[Event], str | None]:
        """One FilterLogEvents page: (events in time order, nextToken or None)."""
        kwargs: dict[str, Any] = {
            "logGroupName": self.log_group,
            "logStreamNames": [instance],
            "startTime": start_ms,
            "endTime": end_ms,
            "filterPattern": _PATTERNS[kind],
            "limit": self.page_size,
        }
        if token:
            kwargs["nextToken"] = token
        page = self._filter(kwargs)
        events: list[Event] = [(e["timestamp"], kind, e.get("message", "")) for e in page.get("events", ())]
        self.stats.add(requests=1, events=len(events), bytes=sum(len(m) for _, _, m in events))
        return events, page.get("nextToken")

    def _filter(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        try:
            return self._call("FilterLogEvents", lambda: self.client.filter_log_events(**kwargs))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                if self._stream_missing(kwargs["logStreamNames"][0]):
                    return {"events": []}
                raise LogSourceError(self._missing_group_message()) from None
            raise

    def _missing_group_message(self) -> str:
        return (
            f"CloudWatch log group {self.log_group!r} not found in region "
            f"{self.client.meta.region_name}: {self.missing_hint}"
        )

    def _stream_missing(self, stream: str) -> bool:
        """True when the group exists but this instance has never written to it.

        Errors of this check itself (access denied, throttling beyond the bound) propagate as they
        are: they are not evidence that the log export is off, and a transient one must stay
        retryable.
        """
        if self._group() is None:
            return False
        log.warning("log stream %r does not exist yet in %s; treating it as empty", stream, self.log_group)
        return True

    def _group(self) -> dict[str, Any] | None:
        """The log group's DescribeLogGroups entry, or None if there is no such group (kept once found)."""
        if self._group_info is not None:
            return self._group_info
        kwargs: dict[str, Any] = {"logGroupNamePrefix": self.log_group}
        while True:
            page = self._call("DescribeLogGroups", lambda: self.client.describe_log_groups(**kwargs))
            for group in page.get("logGroups", []):
                if group.get("logGroupName") == self.log_group:
                    self._group_info = group
                    return group
            token = page.get("nextToken")
            if not token or token == kwargs.get("nextToken"):
                return None
            kwargs["nextToken"] = token

    # -- the request budget -----------------------------------------------------------------------

    def _call(self, operation: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """One API call within the budget, retried while it is throttled and the bound allows.

        Two layers retry, and they cooperate. botocore's standard mode makes up to
        :data:`BOTOCORE_MAX_ATTEMPTS` attempts per call, for transient errors and for throttling
        (with its own jittered back-off, 1 s * 2**attempt, at most 20 s); it cannot be told to
        leave throttling alone, so instead every attempt it makes passes :meth:`_before_send`:
        it waits for the run's limiter, and the time since the throttled answer counts towards
        ``max_throttle_wait`` (so a call botocore keeps retrying cannot run outside the budget:
        the hook ends it once the bound is reached). When botocore gives up on a throttled call,
        this loop waits longer (exponential, jittered) and calls again, until the bound.
        """
        from botocore.exceptions import ClientError

        attempt = 0
        try:
            while True:
                if self._cancel.is_set():
                    raise _Cancelled()
                try:
                    with self._in_flight:
                        return call()
                except ClientError as exc:
                    if not _throttled(exc.response):
                        raise
                    attempt += 1
                    self._start_wait()
                    waited = self._wait_clock.total()
                    if waited >= self.max_throttle_wait:
                        raise self._quota_error() from exc
                    span = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt)
                    delay = min(
                        span / 2 + random.uniform(0, span / 2), self.max_throttle_wait - waited + 0.05
                    )
                    log.warning(
                        "CloudWatch Logs keeps throttling %s (%d throttled answers in this run so far, "
                        "botocore's retries of this call used up): retry %d in %.1f s; %.0f s of at "
                        "most %.0f s waited for throttling",
                        operation,
                        self.stats.throttled,
                        attempt,
                        delay,
                        waited,
                        self.max_throttle_wait,
                    )
                    if self._cancel.wait(delay):
                        raise _Cancelled() from None
        finally:
            self._end_wait()

    def _before_send(self, **_: Any) -> None:
        """botocore's ``before-send`` hook (every attempt of every operation): the budget."""
        if getattr(self._tls, "throttled_at", None) is not None and (
            self._wait_clock.total() >= self.max_throttle_wait
        ):
            self._end_wait()
            raise self._quota_error()
        try:
            if self._cancel.is_set():
                raise _Cancelled()
            granted = self._limiter.acquire(self._cancel)
        except _Cancelled:
            self._end_wait()
            raise
        self._end_wait(granted)
        self.stats.record_sent(granted)
        return None  # botocore sends the request itself

    def _response_received(self, parsed_response: Any = None, response_dict: Any = None, **_: Any) -> None:
        """botocore's ``response-received`` hook (every attempt): count and time throttling."""
        status = response_dict.get("status_code") if isinstance(response_dict, dict) else None
        if _throttled(parsed_response) or status == 429:
            self.stats.add(throttled=1)
            self._start_wait()

    def _start_wait(self) -> None:
        if getattr(self._tls, "throttled_at", None) is None:
            now = time.monotonic()
            self._tls.throttled_at = now
            self._wait_clock.enter(now)

    def _end_wait(self, now: float | None = None) -> None:
        if getattr(self._tls, "throttled_at", None) is not None:
            self._tls.throttled_at = None
            self._wait_clock.leave(time.monotonic() if now is None else now)

    def _quota_error(self) -> LogQuotaExhausted:
        region = self.client.meta.region_name
        return LogQuotaExhausted(
            f"CloudWatch Logs kept throttling this run in region {region}: {self.stats.throttled} "
            f"requests were throttled, and the run waited {self._wait_clock.total():.0f} s to retry "
            f"them (the bound is {self.max_throttle_wait:.0f} s). The account's FilterLogEvents quota "
            f"in {region} is exhausted: it is shared by every DAG and everything else in the account "
            "(10 requests/s in most regions, 25 in us-east-1, 5 in a few; not adjustable). Lower "
            f"logs_requests_per_second (this run: {self.requests_per_second:g}) for the clusters in "
            "this account and region, or give their ingest tasks one Airflow pool (ingest_pool) so "
            "that fewer of them read at once."
        )


def _throttled(response: Any) -> bool:
    if not isinstance(response, dict):
        return False
    error = response.get("Error") or {}
    if error.get("Code") in THROTTLING_CODES:
        return True
    return bool(response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 429)


# -- one read_many call ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Query:
    """One FilterLogEvents query: a pattern on one stream over [start_ms, end_ms], page by page."""

    instance: str
    order: int  # the instance's place in read_many's windows
    kind: int
    start_ms: int
    end_ms: int
    probe: bool  # the query over the whole window (slices are the others)
    token: str | None = None
    started: bool = False  # its first page has been asked for
    running: bool = False  # a page is being fetched
    done: bool = False  # every page has been fetched
    unplanned: list[Event] | None = None  # a busy probe's first page, until the slices are planned
    next_token: str | None = None
    pages: deque[tuple[list[Event], bool]] = field(default_factory=deque)  # (events, in the budget)

    @property
    def priority(self) -> tuple[int, int, int, int]:
        return (0 if self.probe else 1, self.order, self.start_ms, self.kind)


class _Reading:
    """The scheduler of one ``read_many`` call: workers fetch pages, the caller aggregates them.

    Everything below is guarded by ``cond``; workers hold it only to hand a page in.
    """

    def __init__(
        self,
        source: CloudWatchLogins,
        windows: Mapping[str, tuple[datetime, datetime]],
        settle: timedelta,
    ) -> None:
        self.src = source
        self.windows = dict(windows)
        self.settle = settle
        self.cond = threading.Condition()
        self.chains: dict[tuple[str, int], list[_Query]] = {}
        self.open: list[_Query] = []
        for order, (instance, (start, end)) in enumerate(self.windows.items()):
            for kind in (0, 1):
                q = _Query(instance, order, kind, to_ms(start), to_ms(end), probe=True)
                self.chains[instance, kind] = [q]
                self.open.append(q)
        self.probes_out = len(self.open)
        self.busy: list[_Query] = []
        self.in_flight = 0
        self.buffered_pages = 0  # of slices and continuations: what the budget bounds
        self.buffered_events = 0  # every page, probes included
        self.budget = source.max_concurrency + 2
        self.wanted: _Query | None = None
        self.error: BaseException | None = None
        self.pool = ThreadPoolExecutor(source.max_concurrency, thread_name_prefix="cloudwatch-read")

    def run(self) -> dict[str, LoginSummary]:
        try:
            with self.cond:
                self._top_up()
            results: dict[str, LoginSummary] = {}
            remaining = list(self.windows)
            while remaining:
                instance = self._next_instance(remaining)
                remaining.remove(instance)
                results[instance] = self._aggregate(instance)
            return {instance: results[instance] for instance in self.windows}
        finally:
            with self.cond:
                if self.error is None and (self.in_flight or any(not q.done for q in self.open)):
                    self.error = _Cancelled()
            if self.error is not None:
                self.src._cancel.set()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.src._cancel.clear()

    # -- the caller's side: aggregation -----------------------------------------------------------

    def _next_instance(self, remaining: list[str]) -> str:
        """An instance whose events are all in first (quiet ones, so their probes free up), else the
        first one left."""
        with self.cond:
            for instance in remaining:
                chains = (self.chains[instance, 0], self.chains[instance, 1])
                if all(q.done for chain in chains for q in chain):
                    return instance
        return remaining[0]

    def _aggregate(self, instance: str) -> LoginSummary:
        agg = self.src._aggregator(self.settle)
        merged = heapq.merge(self._events(instance, 0), self._events(instance, 1), key=_order)
        agg.feed_many((message, from_ms(ts)) for ts, _kind, message in merged)
        return agg.finish(self.windows[instance][1])

    def _events(self, instance: str, kind: int) -> Iterator[Event]:
        """The query's events in time order: the probe's, then each slice's (all known once the
        probe is done)."""
        i = 0
        while True:
            with self.cond:
                chain = self.chains[instance, kind]
                if i >= len(chain):
                    return
                q = chain[i]
                got = self._wait_page(q)
            if got is None:
                i += 1
                continue
            page, in_budget = got
            yield from page
            with self.cond:
                self.buffered_pages -= in_budget
                self.buffered_events -= len(page)
                self._top_up()

    def _wait_page(self, q: _Query) -> tuple[list[Event], bool] | None:
        """q's next page (None when it has no more), fetching it now if it is not on its way."""
        while True:
            if self.error is not None:
                raise self.error
            if q.pages:
                return q.pages.popleft()
            if q.done:
                return None
            if not q.running and q.unplanned is None:
                self.wanted = q
                self._top_up()
            self.cond.wait(timeout=1.0)

    # -- the workers' side: fetching ----------------------------------------------------------------

    def _top_up(self) -> None:
        """Start fetches while workers are free, within the budget of pages ahead."""
        while self.error is None and self.in_flight < self.src.max_concurrency:
            q = self._next_query()
            if q is None:
                return
            if q is self.wanted:
                self.wanted = None
            q.running = q.started = True
            self.in_flight += 1
            self.pool.submit(self._fetch, q)

    def _next_query(self) -> _Query | None:
        wanted = self.wanted
        if wanted is not None and not (wanted.running or wanted.done or wanted.pages or wanted.unplanned):
            return wanted
        self.open = [q for q in self.open if not q.done]
        room = self.in_flight + self.buffered_pages < self.budget
        best: _Query | None = None
        for q in self.open:
            if q.running or q.unplanned is not None:
                continue
            if not room and not (q.probe and not q.started):
                continue  # probes' first pages are not held back: they decide the slices
            if best is None or q.priority < best.priority:
                best = q
        return best

    def _fetch(self, q: _Query) -> None:
        try:
            events, token = self.src._page(q.instance, q.kind, q.start_ms, q.end_ms, q.token)
        except BaseException as exc:
            with self.cond:
                self.in_flight -= 1
                q.running = False
                if self.error is None:
                    self.error = exc
                self.src._cancel.set()
                self.cond.notify_all()
            return
        with self.cond:
            self.in_flight -= 1
            q.running = False
            self._land(q, events, token)
            self._top_up()
            self.cond.notify_all()

    def _land(self, q: _Query, events: list[Event], token: str | None) -> None:
        first_of_probe = q.probe and q.token is None
        if first_of_probe:
            self.probes_out -= 1
        if first_of_probe and token and self.src.slice_pages > 0 and events:
            q.unplanned, q.next_token = events, token  # held until every probe is in
            self.buffered_events += len(events)
            self.busy.append(q)
        else:
            self._append(q, events, token)
        if self.probes_out == 0 and self.busy:
            for busy in self.busy:
                self._plan(busy)
            self.busy = []
        self.src.stats.peak(self.buffered_events)

    def _append(self, q: _Query, events: list[Event], token: str | None, counted: bool = False) -> None:
        in_budget = not (q.probe and q.token is None)  # a probe's first page is not held back
        if not token or token == q.token:
            q.done = True
        else:
            q.token = token
        if events:
            q.pages.append((events, in_budget))
            self.buffered_pages += in_budget
            if not counted:
                self.buffered_events += len(events)

    def _plan(self, q: _Query) -> None:
        """Cut the rest of a busy probe's time range into slices, or let it go on page by page."""
        events, token = q.unplanned or [], q.next_token
        q.unplanned = q.next_token = None
        last = events[-1][0]
        kept = [e for e in events if e[0] < last]  # the page holds every event before its last second
        rest_ms = q.end_ms - last + 1
        n = 1
        if kept and rest_ms > 1:
            per_ms = len(kept) / (last - kept[0][0])  # the density the page saw (not its window's)
            pages_left = per_ms * rest_ms / len(events)  # pages of the probe's size (1 MB or limit)
            share = math.ceil(_SLICES_PER_WORKER * self.src.max_concurrency / len(self.busy))
            # slices of a little under slice_pages pages, so that each takes slice_pages requests
            by_size = math.ceil(pages_left / (self.src.slice_pages * _SLICE_FILL))
            n = min(by_size, share, _MAX_SLICES, rest_ms)
        if n < 2:
            self._append(q, events, token, counted=True)  # one more slice would gain nothing
            return
        self.buffered_events -= len(events) - len(kept)
        self._append(q, kept, None, counted=True)
        bounds = [last + rest_ms * j // n for j in range(n + 1)]
        chain = self.chains[q.instance, q.kind]
        for lo, hi in itertools.pairwise(bounds):
            s = _Query(q.instance, q.order, q.kind, lo, hi - 1, probe=False)
            chain.append(s)
            self.open.append(s)
        self.src.slice_plan[q.instance, _PATTERNS[q.kind]] = [(s.start_ms, s.end_ms) for s in chain[1:]]
        self.src.stats.add(slices=n)
        log.info(
            "%s, %s: about %.0f more pages from %s; reading them in %d time slices",
            q.instance,
            _PATTERNS[q.kind],
            pages_left,
            from_ms(last).isoformat(),
            n,
        )


def _order(event: Event) -> tuple[int, int]:
    return event[0], event[1]
