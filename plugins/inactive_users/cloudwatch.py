"""Read connection events from Aurora's CloudWatch Logs export (the AWS I/O shell).

Aurora writes each instance's PostgreSQL log to stream ``<instance-id>`` of log group
``/aws/rds/cluster/<cluster-id>/postgresql``. We ask CloudWatch to filter server-side so only
connection lines travel: one query for ``"connection authorized"`` and one for ``"FATAL"`` (the
rejections that follow an authorized line), merged back into time order.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from inactive_users.logparse import FILTER_FATAL, FILTER_LOGINS, LoginAggregator, LoginSummary

log = logging.getLogger(__name__)


class LogSourceError(RuntimeError):
    """The log export cannot be read; the message says what to fix."""


def log_group_name(cluster_id: str) -> str:
    return f"/aws/rds/cluster/{cluster_id}/postgresql"


def to_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class ReadStats:
    requests: int = 0
    events: int = 0
    bytes: int = 0


class CloudWatchLogins:
    """Per-instance login summaries from CloudWatch Logs, through the amazon provider's hook."""

    def __init__(
        self,
        cluster_id: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        page_size: int = 10_000,
        log_group: str | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.page_size = page_size
        self.log_group = log_group or log_group_name(cluster_id)
        self.stats = ReadStats()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
            from botocore.config import Config

            hook = AwsLogsHook(
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                # 8 attempts in all per call; a silent endpoint costs at most 8 x 30 s
                config=Config(
                    retries={"mode": "standard", "total_max_attempts": 8}, connect_timeout=10, read_timeout=30
                ),
            )
            self._client = hook.conn
        return self._client

    def read(self, instance: str, start: datetime, end: datetime, settle: timedelta) -> LoginSummary:
        """Logins on ``instance`` in [start, end], FATAL rejections already discounted."""
        logins = self._events(instance, start, end, FILTER_LOGINS)
        fatals = self._events(instance, start, end, FILTER_FATAL)
        merged = heapq.merge(logins, fatals, key=lambda e: (e[0], e[1]))
        agg = LoginAggregator(settle)
        agg.feed_many((message, from_ms(ts_ms)) for ts_ms, _kind, message in merged)
        return agg.finish(end)

    def _events(
        self, instance: str, start: datetime, end: datetime, pattern: str
    ) -> Iterator[tuple[int, int, str]]:
        """(timestamp, kind, message) for every matching event, every page to the end."""
        kind = 0 if pattern == FILTER_LOGINS else 1  # on equal timestamps a login precedes its FATAL
        kwargs: dict[str, Any] = {
            "logGroupName": self.log_group,
            "logStreamNames": [instance],
            "startTime": to_ms(start),
            "endTime": to_ms(end),
            "filterPattern": pattern,
            "limit": self.page_size,
        }
        while True:
            page = self._call(kwargs)
            self.stats.requests += 1
            for event in page.get("events", ()):
                message = event.get("message", "")
                self.stats.events += 1
                self.stats.bytes += len(message)
                yield event["timestamp"], kind, message
            token = page.get("nextToken")
            if not token or token == kwargs.get("nextToken"):
                return
            kwargs["nextToken"] = token

    def _call(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        try:
            return self.client.filter_log_events(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                if self._stream_missing(kwargs["logStreamNames"][0]):
                    return {"events": []}
                raise LogSourceError(
                    f"CloudWatch log group {self.log_group!r} not found in region "
                    f"{self.client.meta.region_name}: enable the 'postgresql' log export on cluster "
                    f"{self.cluster_id!r} (EnableCloudwatchLogsExports)"
                ) from None
            raise

    def _stream_missing(self, stream: str) -> bool:
        """True when the group exists but this instance has never written to it.

        Errors of this check itself (throttling, access denied) propagate as they are: they are not
        evidence that the log export is off, and a transient one must stay retryable.
        """
        groups = self.client.describe_log_groups(logGroupNamePrefix=self.log_group).get("logGroups", [])
        if not any(g.get("logGroupName") == self.log_group for g in groups):
            return False
        log.warning("log stream %r does not exist yet in %s; treating it as empty", stream, self.log_group)
        return True
