"""Who is managed and what to do with them (pure: plain data in, plain data out).

The I/O shell reads ``pg_roles`` and the state table, calls these functions, and carries out the
plan; keeping the decisions here lets them be tested exhaustively without a server.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

ACTIVE = "Active"
LOCKED = "Locked"
READY_TO_DELETE = "ReadyToDelete"
STATUSES = (ACTIVE, LOCKED, READY_TO_DELETE)

#: Login roles that RDS / Aurora create for their own use: never tracked, locked or dropped,
#: whatever the configuration says. Touching one can break the cluster's management, replication
#: or failover; protecting a name that turns out to be ordinary costs nothing. Where each comes from:
CLOUD_ROLES: dict[str, str] = {
    # the instance's owner and RDS's own administration login (every RDS / Aurora PostgreSQL)
    "rdsadmin": "RDS administration role",
    # RDS's replication login for read replicas and Multi-AZ standbys
    "rdsrepladmin": "RDS replication role",
    # RDS / Aurora topology manager (Multi-AZ DB clusters, blue/green switchover); a login role,
    # not a superuser
    "rdstopmgr": "RDS topology manager role",
    # Aurora PostgreSQL write forwarding from reader instances and secondary regions (14.9+ / 15.4+)
    "rdswriteforwarduser": "Aurora write forwarding role",
    # RDS Proxy's administrative login, where a proxy manages the database (uncertain: protected)
    "rdsproxyadmin": "RDS Proxy administration role",
    # RDS's privileged group, granted to the master user
    "rds_superuser": "RDS superuser group",
    # created by the postgres_fdw set-up of some RDS versions (kept from the AWS sample's list)
    "postgres_fdw_user": "RDS postgres_fdw role",
}
ALWAYS_PROTECTED = frozenset(CLOUD_ROLES)
#: Prefixes reserved for roles of the cloud and of PostgreSQL itself: ``rds_*`` (rds_iam,
#: rds_replication, rds_password, rds_ad, ...), ``pg_*`` (PostgreSQL's predefined roles), and any
#: other name that starts with ``rds`` (RDS adds new internal logins of that form, e.g.
#: rdstopmgr and rdswriteforwarduser came later than rdsadmin).
_RESERVED_PREFIXES = ("rds_", "pg_", "rds")


@dataclass(frozen=True, slots=True)
class RoleInfo:
    """One row of ``pg_roles`` as the policy needs it."""

    oid: int
    name: str
    can_login: bool
    superuser: bool = False
    conn_limit: int = -1
    exempt_via: str | None = None  # the exempt group this role is a (direct or inherited) member of


@dataclass(frozen=True)
class Exclusions:
    users: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()
    exempt_groups: frozenset[str] = frozenset()
    include_superusers: bool = False
    protected: frozenset[str] = frozenset()  # master user, the job's own login user

    @classmethod
    def build(
        cls,
        users: Iterable[str] = (),
        patterns: Iterable[str] = (),
        exempt_groups: Iterable[str] = (),
        include_superusers: bool = False,
        protected: Iterable[str | None] = (),
    ) -> Exclusions:
        compiled = []
        for p in patterns:
            try:
                compiled.append(re.compile(p))
            except re.error as exc:
                raise ValueError(
                    f"exclude_patterns: {p!r} is not a valid regular expression: {exc}"
                ) from None
        return cls(
            users=frozenset(users),
            patterns=tuple(compiled),
            exempt_groups=frozenset(exempt_groups),
            include_superusers=include_superusers,
            protected=frozenset(p for p in protected if p),
        )


def cloud_role_reason(name: str) -> str | None:
    """Why a role belongs to RDS / Aurora or PostgreSQL itself, or None for anyone else's role."""
    if name in CLOUD_ROLES:
        return f"reserved RDS role ({CLOUD_ROLES[name]})"
    prefix = next((p for p in _RESERVED_PREFIXES if name.startswith(p)), None)
    return None if prefix is None else f"reserved name prefix {prefix!r}"


def exclusion_reason(role: RoleInfo, ex: Exclusions) -> str | None:
    """Why this role must never be acted on, or None if it may be managed."""
    name = role.name
    if name in CLOUD_ROLES:
        return cloud_role_reason(name)
    if name in ex.protected:
        return "master or job user"
    cloud = cloud_role_reason(name)
    if cloud is not None:
        return cloud
    if role.superuser and not ex.include_superusers:
        return "superuser"
    if name in ex.users:
        return "exclude_users"
    for pattern in ex.patterns:
        if pattern.fullmatch(name):
            return f"exclude_patterns {pattern.pattern!r}"
    if role.exempt_via is not None:
        return f"member of exempt group {role.exempt_via!r}"
    return None


def managed_roles(
    roles: Iterable[RoleInfo], ex: Exclusions, held: Collection[int] = frozenset()
) -> list[RoleInfo]:
    """Roles whose status we track: login roles plus roles we hold locked, minus exclusions.

    ``held`` are OIDs whose status is Locked/ReadyToDelete: after ``NOLOGIN`` they no longer look
    like login roles but must stay tracked so they can be unlocked or dropped.
    """
    return [r for r in roles if (r.can_login or r.oid in held) and exclusion_reason(r, ex) is None]


@dataclass(frozen=True, slots=True)
class UserState:
    """One row of ``user_login_status``."""

    name: str
    oid: int | None
    last_login: datetime
    status: str


@dataclass(frozen=True)
class Thresholds:
    lock_after_days: int | None = 90
    delete_after_days: int | None = 180
    max_action_ratio: float = 0.25
    override_guard: bool = False
    warn_before_days: int | None = 14  # roles reaching a threshold that soon are "upcoming"
    # Drops wait for a DBA's approval: a role due to be dropped that is not locked yet is locked
    # now too, so it is locked whatever the answer (and however long it takes).
    lock_before_drop: bool = False

    @property
    def horizon(self) -> timedelta | None:
        """How old a login can be and still change a decision (None: no threshold is set)."""
        days = [d for d in (self.lock_after_days, self.delete_after_days) if d is not None]
        return timedelta(days=max(days)) if days else None


@dataclass(frozen=True, slots=True)
class Planned:
    name: str
    oid: int
    last_login: datetime
    inactive_days: int
    status: str  # status before the action


@dataclass(frozen=True, slots=True)
class Upcoming:
    """A role that will reach the lock or drop threshold soon: someone can still log in, or ask."""

    name: str
    oid: int
    last_login: datetime
    action: str  # UPCOMING_LOCK or UPCOMING_DROP
    due: datetime  # when the threshold is reached; the first run from then on acts


UPCOMING_LOCK = "lock"
UPCOMING_DROP = "drop"


@dataclass
class Plan:
    as_of: datetime
    candidates: int
    lock: list[Planned] = field(default_factory=list)
    delete: list[Planned] = field(default_factory=list)
    kept_active_session: list[str] = field(default_factory=list)
    kept_pending_login: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    upcoming: list[Upcoming] = field(default_factory=list)  # soonest first
    guard_error: str | None = None

    def refuse(self, reason: str | None) -> None:
        """Add a reason not to act (each guard says its own; all of them are reported)."""
        if reason:
            self.guard_error = f"{self.guard_error} {reason}" if self.guard_error else reason

    @property
    def new_actions(self) -> int:
        """Roles whose access this run would newly remove (re-checks of ReadyToDelete excluded)."""
        locking = {p.oid for p in self.lock}
        return len(locking) + sum(
            1 for p in self.delete if p.status != READY_TO_DELETE and p.oid not in locking
        )


def make_plan(
    states: Iterable[UserState],
    roles: Mapping[int, RoleInfo],
    ex: Exclusions,
    thresholds: Thresholds,
    as_of: datetime,
    active_sessions: Collection[int] = frozenset(),
    pending_logins: Collection[str] = frozenset(),
) -> Plan:
    """Decide which tracked roles to lock and which to drop (or flag) at ``as_of``.

    A role is acted on only if it still exists with the tracked OID, is not excluded by any rule,
    has no session open now on any instance, and has no login still waiting to be counted
    (``pending_logins``: inside the settle window, its FATAL may not have arrived yet).
    """
    plan = Plan(as_of=as_of, candidates=0)
    for st in states:
        role = roles.get(st.oid) if st.oid is not None else None
        if role is None or role.name != st.name:
            continue  # gone or renamed since sync: the next sync reconciles it
        reason = exclusion_reason(role, ex)
        if reason is not None:
            plan.excluded[st.name] = reason
            continue
        plan.candidates += 1
        if role.oid in active_sessions:
            plan.kept_active_session.append(st.name)
            continue
        if st.name in pending_logins:
            plan.kept_pending_login.append(st.name)
            continue
        inactive = as_of - st.last_login
        item = Planned(st.name, role.oid, st.last_login, inactive.days, st.status)
        locking = False
        if _reached(inactive, thresholds.delete_after_days):
            plan.delete.append(item)
            if thresholds.lock_before_drop and st.status == ACTIVE:
                plan.lock.append(item)
            continue
        if _reached(inactive, thresholds.lock_after_days) and st.status == ACTIVE:
            plan.lock.append(item)
            locking = True
        soon = upcoming(item, thresholds, as_of, locked=locking or st.status != ACTIVE)
        if soon is not None:
            plan.upcoming.append(soon)
    plan.upcoming.sort(key=lambda u: (u.due, u.name))
    plan.guard_error = _guard(plan, thresholds)
    return plan


@dataclass(frozen=True, slots=True)
class Due:
    """When a role reaches each threshold (None: never, or for the lock: it is locked already)."""

    lock: datetime | None
    drop: datetime | None


def due(last_login: datetime, t: Thresholds, *, locked: bool) -> Due:
    """The times a role last seen at ``last_login`` reaches the lock and the drop threshold.

    ``locked``: the role is locked already, so no lock is due. The first run from a time on acts.
    """
    lock = None if locked or t.lock_after_days is None else last_login + timedelta(days=t.lock_after_days)
    drop = None if t.delete_after_days is None else last_login + timedelta(days=t.delete_after_days)
    return Due(lock, drop)


def days_until(when: datetime | None, as_of: datetime) -> int | None:
    """Whole days from ``as_of`` until ``when``, rounded up (0: reached); None stays None (never)."""
    if when is None:
        return None
    return max(0, math.ceil((when - as_of) / timedelta(days=1)))


def upcoming(item: Planned, t: Thresholds, as_of: datetime, *, locked: bool) -> Upcoming | None:
    """The next threshold ``item`` reaches within ``warn_before_days`` of ``as_of``, if any.

    ``locked``: the role is locked already (or by this run), so only its drop can be upcoming.
    A ReadyToDelete role is past both thresholds and never upcoming.
    """
    if t.warn_before_days is None or item.status == READY_TO_DELETE:
        return None
    horizon = as_of + timedelta(days=t.warn_before_days)
    when = due(item.last_login, t, locked=locked)
    for action, at in ((UPCOMING_LOCK, when.lock), (UPCOMING_DROP, when.drop)):
        if at is None:
            continue
        if at <= as_of:
            continue  # reached: acted on this run (or, for a lock, the role is locked already)
        if at <= horizon:
            return Upcoming(item.name, item.oid, item.last_login, action, at)
        return None  # the next threshold is further away than the warning window
    return None


def _reached(inactive: timedelta, days: int | None) -> bool:
    return days is not None and inactive >= timedelta(days=days)


def _guard(plan: Plan, t: Thresholds) -> str | None:
    if t.override_guard or plan.new_actions == 0:
        return None
    ratio = plan.new_actions / max(plan.candidates, 1)
    if ratio <= t.max_action_ratio:
        return None
    return (
        f"safety guard: this run would lock or delete {plan.new_actions} of {plan.candidates} "
        f"candidate roles ({ratio:.0%}), more than max_action_ratio={t.max_action_ratio:.0%}. "
        "Check that connection logs are complete; if the plan is right, re-run with the guard "
        "overridden (override_guard) or raise max_action_ratio."
    )


def retention_gap(
    instance: str,
    last_read: datetime,
    now: datetime,
    overlap: timedelta,
    retention_days: int | None,
    log_group: str,
) -> str | None:
    """Why logins between an instance's last read and now may have expired unread, or None.

    The next read starts at ``last_read - overlap``; CloudWatch keeps only ``retention_days``.
    """
    if retention_days is None:
        return None
    kept_from = now - timedelta(days=retention_days)
    if last_read - overlap >= kept_from:
        return None
    return (
        f"{instance}: last read up to {last_read.isoformat(timespec='seconds')} "
        f"({(now - last_read).total_seconds() / 86400:.1f} days ago), but log group {log_group} keeps "
        f"events for {retention_days} days, so logins before {kept_from.isoformat(timespec='seconds')} "
        "may have been deleted unread"
    )


def retention_error(gaps: Mapping[str, str]) -> str | None:
    """The guard message for recorded retention gaps, with the way out."""
    if not gaps:
        return None
    return (
        "retention guard: " + "; ".join(gaps[i] for i in sorted(gaps)) + ". A role that logged in only "
        "then would look inactive. Nothing was locked or deleted. If that is acceptable (or the roles "
        'were checked), trigger once with {"override_retention": true}; the override is recorded in '
        "action_history."
    )


def new_instance_gap(
    instance: str,
    read_from: datetime,
    now: datetime,
    retention_days: int | None,
    log_group: str,
    created: datetime | None,
) -> str | None:
    """Why logins on an instance read for the first time may have expired before the job could
    read them, or None.

    A new instance of a cluster the job has read before is read from ``read_from`` (as far back as
    a login can still change a decision); logins older than the log group's retention are gone,
    unless the instance did not exist yet then (``created``).
    """
    if retention_days is None:
        return None
    kept_from = now - timedelta(days=retention_days)
    if read_from >= kept_from or (created is not None and created >= kept_from):
        return None
    return (
        f"{instance}: read for the first time, but log group {log_group} keeps events for "
        f"{retention_days} days, so its logins before {kept_from.isoformat(timespec='seconds')} "
        f"(back to {read_from.isoformat(timespec='seconds')}, as far as a login still counts) may have "
        "been deleted unread"
    )


def instance_error(problems: Mapping[str, str]) -> str | None:
    """The guard message for instances of the topology whose logins or sessions cannot be read."""
    if not problems:
        return None
    return (
        "instance guard: "
        + "; ".join(f"{i}: {problems[i]}" for i in sorted(problems))
        + ". A role whose only logins or sessions are there would look inactive, so nothing was "
        "locked or deleted (roles and the other instances' logins were still brought up to date)."
    )


def standby_error(
    receivers: Mapping[str, tuple[str, Sequence[str]]], instances: int, ignored: Collection[str]
) -> str | None:
    """Refuse when more servers stream WAL from the instances read than the job reads.

    ``receivers``: per instance read, its server's identity and the names of its physical WAL
    receivers. In a tree of ``instances`` servers, ``instances - 1`` of them receive WAL; more
    receivers than that are standbys the configuration leaves out (an RDS replica under a config
    that lists only the primary), whose logins and sessions would never be read.
    """
    by_server: dict[str, list[str]] = {}
    where: dict[str, list[str]] = {}
    for instance, (server, names) in sorted(receivers.items()):
        by_server[server] = [n for n in names if n not in ignored]
        where.setdefault(server, []).append(instance)
    total = sum(len(names) for names in by_server.values())
    if total <= max(instances - 1, 0):
        return None
    streams = "; ".join(
        f"{' = '.join(where[server])} sends its WAL to {len(names)} ({', '.join(repr(n) for n in names)})"
        for server, names in by_server.items()
        if names
    )
    return (
        f"standby guard: {streams}: {total} physical standby(s) in all, but the job reads "
        f"{instances} instance(s), so at least {total - max(instances - 1, 0)} standby whose logins "
        "and sessions count is not read. A role used only there would look inactive, so nothing was "
        "locked or deleted. An RDS DB instance: configure db_instance_id (its read replicas are found "
        "and read); a self-managed standby: list it in instances with where its log is; a WAL "
        "receiver that takes no logins (an archiver): add its application_name to ignore_wal_receivers."
    )


def session_error(errors: Mapping[str, str]) -> str | None:
    """The guard message for instances whose open sessions could not be read."""
    if not errors:
        return None
    return (
        "session guard: open sessions could not be read on "
        + "; ".join(f"{i}: {errors[i]}" for i in sorted(errors))
        + ". A role whose only sign of life is a session there would look inactive, so nothing was "
        "locked or deleted. Fix the instance's reachability (instance_endpoints, security group, the "
        "job user's access) and re-run."
    )


@dataclass(frozen=True)
class StreamHealth:
    """What the log-gap guard knows of one instance's stream."""

    last_event: datetime | None  # the latest recognised connection event ever read
    connection_events: int | None = None  # "connection authorized" events in the last read
    unrecognised_example: str | None = None  # one of them the prefix did not match (redacted)


def log_gap_error(
    streams: Mapping[str, StreamHealth],
    as_of: datetime,
    max_gap: timedelta,
    log_line_prefix: str | None = None,
) -> str | None:
    """Refuse to act when an instance's log shows no connections for too long.

    No connection lines usually means logs are not exported or ``log_connections`` is off; lines
    that are there but in another format mean ``log_line_prefix`` is not what the job reads.
    Acting then would lock everyone.
    """
    missing, unrecognised = [], []
    for instance, health in sorted(streams.items()):
        last = health.last_event
        if last is not None and as_of - last <= max_gap:
            continue
        seen = health.connection_events or 0
        if seen and health.unrecognised_example is not None:
            unrecognised.append(
                f"{instance}: {seen} connection events read, none in the format of "
                f"log_line_prefix = {log_line_prefix!r} (for example: {health.unrecognised_example})"
            )
        elif last is None:
            missing.append(f"{instance}: no connection events found at all")
        else:
            missing.append(f"{instance}: last connection event at {last.isoformat()}")
    parts = []
    if unrecognised:
        parts.append(
            "log format guard: "
            + "; ".join(unrecognised)
            + ". Those lines do not have the prefix the server reports: check log_line_prefix in the "
            "instance's parameter group (a reader or a secondary may use another one)."
        )
    if missing:
        parts.append(
            f"log gap guard: no connection log events for more than {max_gap.total_seconds() / 3600:g} "
            "hours on "
            + "; ".join(missing)
            + ". Check that log_connections is on in the parameter group and that the cluster exports "
            "the 'postgresql' log to CloudWatch Logs."
        )
    return " ".join(parts) + " Nothing was locked or deleted." if parts else None
