"""Engine settings: one validated value object shared by the engine, the DAG factory and tests."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from inactive_users.core.policy import Exclusions, Thresholds

LOCK_METHODS = ("nologin", "connection_limit")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_$]{0,62}")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the key and the value."""


@dataclass(frozen=True)
class EngineSettings:
    state_schema: str = "inactive_users"
    lock_after_days: int | None = 90
    delete_after_days: int | None = 180
    lock_method: str = "nologin"
    dry_run: bool = False
    exclude_users: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    exempt_groups: tuple[str, ...] = ()
    include_superusers: bool = False
    max_action_ratio: float = 0.25
    override_guard: bool = False
    lookback_hours: float = 24
    overlap_minutes: float = 15
    max_log_gap_hours: float = 48
    page_size: int = 10_000
    settle_seconds: int = 60
    # FilterLogEvents is limited per account and region (5 requests/s in the strictest regions,
    # shared by every DAG): a run sends at most this many, from at most this many threads.
    logs_requests_per_second: float = 5
    logs_max_concurrency: int = 4
    # Roles that reach the lock or drop threshold within this many days are listed as upcoming
    # (null: never); their own contact (COMMENT ON ROLE ... 'contact: a@b.c') is told by e-mail
    # once, if notify_role_contacts.
    warn_before_days: int | None = 14
    notify_role_contacts: bool = False
    # A DBA approves each run's drops in Airflow (task approve_drops) before DROP ROLE runs; a role
    # due to be dropped is locked first, so it stays locked when the drops are rejected.
    approve_drops: bool = False
    # Physical WAL receivers that take no logins (WAL archivers), by application_name: the standby
    # guard does not count them as standbys whose logins would go unread.
    ignore_wal_receivers: tuple[str, ...] = ("pg_receivewal", "pg_basebackup", "barman_receive_wal")
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_schema(self.state_schema)
        for key in ("lock_after_days", "delete_after_days"):
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or value < 1):
                raise SettingsError(f"{key} must be a whole number of days >= 1 or null, got {value!r}")
        if (
            self.lock_after_days is not None
            and self.delete_after_days is not None
            and self.delete_after_days <= self.lock_after_days
        ):
            raise SettingsError(
                f"delete_after_days ({self.delete_after_days}) must be greater than "
                f"lock_after_days ({self.lock_after_days})"
            )
        if self.warn_before_days is not None and (
            not _is_int(self.warn_before_days) or self.warn_before_days < 1
        ):
            raise SettingsError(
                f"warn_before_days must be a whole number of days >= 1 or null, got {self.warn_before_days!r}"
            )
        for key in ("notify_role_contacts", "approve_drops"):
            if not isinstance(getattr(self, key), bool):
                raise SettingsError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if self.lock_method not in LOCK_METHODS:
            raise SettingsError(
                f"lock_method must be one of {', '.join(LOCK_METHODS)}, got {self.lock_method!r}"
            )
        if not isinstance(self.max_action_ratio, int | float) or not 0 < self.max_action_ratio <= 1:
            raise SettingsError(f"max_action_ratio must be in (0, 1], got {self.max_action_ratio!r}")
        for key in ("lookback_hours", "overlap_minutes", "max_log_gap_hours"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise SettingsError(f"{key} must be a positive number, got {value!r}")
        if not _is_int(self.page_size) or not 1 <= self.page_size <= 10_000:
            raise SettingsError(f"page_size must be between 1 and 10000, got {self.page_size!r}")
        rps = self.logs_requests_per_second
        if not isinstance(rps, int | float) or isinstance(rps, bool) or not 0 < rps <= 100:
            raise SettingsError(f"logs_requests_per_second must be a number in (0, 100], got {rps!r}")
        if not _is_int(self.logs_max_concurrency) or not 1 <= self.logs_max_concurrency <= 32:
            raise SettingsError(
                f"logs_max_concurrency must be a whole number from 1 to 32, got {self.logs_max_concurrency!r}"
            )
        if self.overlap_minutes * 60 < self.settle_seconds:
            raise SettingsError(
                f"overlap_minutes ({self.overlap_minutes}) must cover settle_seconds ({self.settle_seconds})"
            )
        for key in ("exclude_users", "exclude_patterns", "exempt_groups", "ignore_wal_receivers"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise SettingsError(f"{key} must be a list of strings, got {value!r}")
        self.exclusions()  # validates the regexes

    def exclusions(self, protected: tuple[str | None, ...] = ()) -> Exclusions:
        try:
            return Exclusions.build(
                users=self.exclude_users,
                patterns=self.exclude_patterns,
                exempt_groups=self.exempt_groups,
                include_superusers=self.include_superusers,
                protected=protected,
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    def thresholds(self) -> Thresholds:
        return Thresholds(
            lock_after_days=self.lock_after_days,
            delete_after_days=self.delete_after_days,
            max_action_ratio=self.max_action_ratio,
            override_guard=self.override_guard,
            warn_before_days=self.warn_before_days,
            lock_before_drop=self.approve_drops,
        )

    @property
    def lookback(self) -> timedelta:
        return timedelta(hours=self.lookback_hours)

    @property
    def overlap(self) -> timedelta:
        return timedelta(minutes=self.overlap_minutes)

    @property
    def max_log_gap(self) -> timedelta:
        return timedelta(hours=self.max_log_gap_hours)

    @property
    def settle(self) -> timedelta:
        return timedelta(seconds=self.settle_seconds)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "extra")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_schema(name: object) -> None:
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise SettingsError(
            f"state_schema must be a lower-case SQL identifier (letters, digits, _), got {name!r}"
        )
    if name == "public" or name.startswith("pg_"):
        raise SettingsError(f"state_schema must be a dedicated schema, not {name!r}")
