"""Ship a real PostgreSQL server log to (moto's) CloudWatch Logs the way Aurora exports it.

Aurora PostgreSQL publishes each log entry as one CloudWatch event in the log group
``/aws/rds/cluster/<cluster>/postgresql`` and the stream named after the instance; the event
message is the whole entry, ``log_line_prefix`` included, with continuation lines (multi-line
statements, DETAIL on the next line...) joined by newlines.  The event timestamp is the entry's
time.  This module reproduces that from the file written by the logging collector.

moto 5.2.5 quirks (``moto/logs/models.py``), which match the real service here:

* ``put_log_events`` silently drops events older than 14 days or more than 2 hours in the future
  and reports them in ``rejectedLogEventsInfo`` (``tooOldLogEventEndIndex`` /
  ``tooNewLogEventStartIndex``); :func:`ship` refuses such events up front instead.
* events in one request must be in chronological order (``InvalidParameterException``).
* unlike AWS, moto does not enforce the batch limits (10,000 events, 1,048,576 bytes counting
  26 bytes of overhead per event, 24 hours span); :func:`ship` respects them anyway.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from devstack.motoserver import DEFAULT_REGION, boto_client

MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000
# The acceptance window of PutLogEvents (AWS and moto alike).
MAX_AGE = timedelta(days=14)
MAX_AHEAD = timedelta(hours=2)

AURORA_PREFIX = "%t:%r:%u@%d:[%p]:"
# Start of an entry: the %t (or %m) part of the Aurora prefix "%t:%r:%u@%d:[%p]:".
ENTRY_START = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2})(?P<frac>\.\d+)? (?P<abbr>\S+?):"
)
_STAMP_ESCAPE = re.compile(r"%-?[0-9]*([tm])")
_NUMERIC_ABBR = re.compile(r"^([+-])(\d{2})(\d{2})?(\d{2})?$")


def group_name(cluster_id: str) -> str:
    """The log group Aurora exports a cluster's PostgreSQL log to."""
    return f"/aws/rds/cluster/{cluster_id}/postgresql"


def instance_group_name(db_instance_id: str) -> str:
    """The log group RDS exports a DB instance's (or a read replica's) PostgreSQL log to."""
    return f"/aws/rds/instance/{db_instance_id}/postgresql"


def entry_start(log_line_prefix: str = AURORA_PREFIX) -> re.Pattern[str]:
    """What starts an entry under ``log_line_prefix``: its leading ``%t``/``%m`` and what follows.

    Aurora's default keeps ``ENTRY_START`` (the zone, then ``:``). Another prefix starting with
    ``%t`` or ``%m`` has its time (``%m``: with milliseconds) followed by the literal text after it
    in the prefix (``:``, `` [`` ...). A prefix that starts otherwise cannot be told from a
    continuation line by its time: ``ValueError``.
    """
    if log_line_prefix == AURORA_PREFIX:
        return ENTRY_START
    m = _STAMP_ESCAPE.match(log_line_prefix)
    if m is None:
        raise ValueError(
            f"log_line_prefix {log_line_prefix!r} does not start with %t or %m: entries cannot be "
            "told from continuation lines"
        )
    literal = ""
    rest, i = log_line_prefix[m.end() :], 0
    while i < len(rest) and (rest[i] != "%" or rest[i + 1 : i + 2] == "%"):  # up to the next escape
        literal += rest[i]
        i += 2 if rest[i] == "%" else 1
    padded = m[0] not in ("%t", "%m")
    frac = r"(?P<frac>\.\d+)" if m[1] == "m" else "(?P<frac>)"
    return re.compile(
        (r"^ *" if padded else "^")
        + r"(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2})"
        + frac
        + r" (?P<abbr>[A-Za-z]+|[+-]\d{2}(?:\d{2}){0,2})"
        + (" *" if padded else "")
        + re.escape(literal)
    )


def events_from_lines(
    lines: Iterable[str], *, tz: str = "UTC", log_line_prefix: str = AURORA_PREFIX
) -> list[dict[str, Any]]:
    """Group raw log lines into CloudWatch events ``{"timestamp": ms, "message": text}``.

    A line starting with a timestamp starts an entry; any other line continues the previous one.
    Times are local to the IANA zone ``tz`` (the server's ``log_timezone``); the printed zone
    abbreviation only disambiguates the repeated hour at the end of DST.  Continuation lines
    before the first entry (e.g. the tail of an entry cut by a read offset) are dropped.
    ``log_line_prefix`` (starting with ``%t`` or ``%m``) says how an entry starts (``entry_start``).
    """
    zone = ZoneInfo(tz)
    start = entry_start(log_line_prefix)
    events: list[dict[str, Any]] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        m = start.match(line)
        if m:
            events.append({"timestamp": _timestamp_ms(m, zone), "message": line})
        elif events:
            events[-1]["message"] += "\n" + line
    return events


def _timestamp_ms(m: re.Match[str], zone: ZoneInfo) -> int:
    naive = datetime.strptime(f"{m['date']} {m['time']}", "%Y-%m-%d %H:%M:%S")
    if m["frac"]:
        naive = naive.replace(microsecond=int(m["frac"][1:7].ljust(6, "0")))
    local = naive.replace(tzinfo=zone)
    other = local.replace(fold=1)
    ambiguous = local.utcoffset() != other.utcoffset()
    if ambiguous and _abbr_matches(other, m["abbr"]) and not _abbr_matches(local, m["abbr"]):
        local = other
    # Integer arithmetic: exact milliseconds, no float rounding.
    delta = local.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(milliseconds=1)


def _abbr_matches(dt: datetime, abbr: str) -> bool:
    """Does the abbreviation PostgreSQL printed (``EDT``, ``+03``, ``-0530``) fit ``dt``?"""
    if dt.tzname() == abbr:
        return True
    num = _NUMERIC_ABBR.match(abbr)
    if not num:
        return False
    sign = -1 if num[1] == "-" else 1
    offset = timedelta(hours=int(num[2]), minutes=int(num[3] or 0), seconds=int(num[4] or 0))
    return dt.utcoffset() == sign * offset


def ship(
    endpoint_url_or_client: Any,
    cluster_id: str,
    instance_id: str,
    events: list[dict[str, Any]],
    region: str = DEFAULT_REGION,
    log_group: str | None = None,
) -> int:
    """Put ``events`` into the cluster's group (or ``log_group``), stream ``instance_id``; returns
    how many were put.

    Creates the group and stream when missing, sorts by timestamp (stably) and splits into
    batches within the PutLogEvents limits.  Raises ``ValueError`` before sending anything if an
    event lies outside the window the service accepts, since it would otherwise drop it silently.
    """
    client = (
        boto_client(endpoint_url_or_client, "logs", region)
        if isinstance(endpoint_url_or_client, str)
        else endpoint_url_or_client
    )
    group = log_group or group_name(cluster_id)
    _create_ignoring_exists(client, client.create_log_group, logGroupName=group)
    _create_ignoring_exists(client, client.create_log_stream, logGroupName=group, logStreamName=instance_id)

    ordered = sorted(events, key=lambda e: e["timestamp"])
    _check_window(ordered)
    shipped = 0
    for batch in _batches(ordered):
        resp = client.put_log_events(
            logGroupName=group,
            logStreamName=instance_id,
            logEvents=[{"timestamp": e["timestamp"], "message": e["message"]} for e in batch],
        )
        rejected = resp.get("rejectedLogEventsInfo")
        if rejected:
            raise RuntimeError(f"CloudWatch rejected events after {shipped} were shipped: {rejected}")
        shipped += len(batch)
    return shipped


def _create_ignoring_exists(client: Any, create: Any, **kwargs: str) -> None:
    with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
        create(**kwargs)


def _check_window(events: list[dict[str, Any]]) -> None:
    if not events:
        return
    now = datetime.now(UTC)
    oldest = int((now - MAX_AGE).timestamp() * 1000)
    newest = int((now + MAX_AHEAD).timestamp() * 1000)
    bad = [e for e in events if not oldest <= e["timestamp"] <= newest]
    if bad:
        first = bad[0]
        raise ValueError(
            f"{len(bad)} event(s) outside CloudWatch's accepted window (14 days back, 2 hours ahead), "
            f"e.g. timestamp {first['timestamp']}: {first['message'][:200]!r}"
        )


def _batches(events: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for e in events:
        e_size = len(e["message"].encode("utf-8")) + EVENT_OVERHEAD_BYTES
        if batch and (
            len(batch) >= MAX_BATCH_EVENTS
            or size + e_size > MAX_BATCH_BYTES
            or e["timestamp"] - batch[0]["timestamp"] >= MAX_BATCH_SPAN_MS
        ):
            yield batch
            batch, size = [], 0
        batch.append(e)
        size += e_size
    if batch:
        yield batch


def ship_log_file(
    endpoint_url_or_client: Any,
    cluster_id: str,
    instance_id: str,
    path: str | Path,
    *,
    since_offset: int = 0,
    tz: str = "UTC",
    region: str = DEFAULT_REGION,
    log_line_prefix: str = AURORA_PREFIX,
    log_group: str | None = None,
) -> tuple[int, int]:
    """Ship the entries written to ``path`` after byte ``since_offset``; returns (shipped, new_offset).

    Only complete lines are consumed: a partly written last line stays for the next call, whose
    ``since_offset`` should be the returned offset.  The logging collector writes each entry,
    continuation lines included, in one go, so an offset never falls inside an entry in practice.
    """
    with open(path, "rb") as f:
        f.seek(since_offset)
        data = f.read()
    end = data.rfind(b"\n") + 1  # 0 when there is no complete line yet
    text = data[:end].decode("utf-8", errors="replace")
    # split("\n"), not splitlines(): a message may contain \f, \x1c, U+2028... which are not line ends.
    events = events_from_lines(text.split("\n")[:-1], tz=tz, log_line_prefix=log_line_prefix)
    shipped = ship(
        endpoint_url_or_client, cluster_id, instance_id, events, region=region, log_group=log_group
    )
    return shipped, since_offset + end
