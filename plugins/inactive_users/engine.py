"""The engine: each public method is one step a DAG task calls (sync, ingest, plan, lock, delete, unlock).

It wires the pure core (``logparse``, ``policy``) to the I/O shell (``state``, ``actions``,
``cloudwatch``). Each step opens its own connection, because Airflow runs tasks in separate
processes; a dry run instead does every step on one connection inside a transaction that is rolled
back, so it sees its own sync and ingest but leaves nothing behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, cast

import psycopg

from inactive_users.aws import evidencestore
from inactive_users.aws.cloudwatch import LogSourceError, log_group_name
from inactive_users.core.alerts import scrub
from inactive_users.core.exposure import Report
from inactive_users.core.logformat import LogFormat, LogFormatError, compile_format
from inactive_users.core.logparse import LoginSummary
from inactive_users.core.policy import (
    READY_TO_DELETE,
    Exclusions,
    Plan,
    Planned,
    RoleInfo,
    StreamHealth,
    cloud_role_reason,
    exclusion_reason,
    instance_error,
    log_gap_error,
    make_plan,
    managed_roles,
    new_instance_gap,
    retention_error,
    retention_gap,
    session_error,
    standby_error,
)
from inactive_users.core.settings import EngineSettings, SettingsError
from inactive_users.postgres import actions, exposure, migrations, notices, planstore, state
from inactive_users.postgres.actions import ActionReport, Outcome
from inactive_users.postgres.blockers import ConnectDatabase
from inactive_users.postgres.blockers import blockers as name_blockers
from inactive_users.postgres.instances import Connect, SessionScan, airflow_database_connector, scan_sessions

log = logging.getLogger("inactive_users")


class SafetyGuardError(RuntimeError):
    """A guard refused to act; the message says why and how to proceed."""


class LoginSource(Protocol):
    log_group: str
    #: An instance's log streams where they are not the one named like it; None: every stream.
    streams: dict[str, Sequence[str] | None]
    missing_hint: str  # what to do when the log group does not exist

    @property
    def region(self) -> str | None: ...

    def read(self, instance: str, start: datetime, end: datetime, settle: timedelta) -> LoginSummary: ...

    def read_many(
        self, windows: Mapping[str, tuple[datetime, datetime]], settle: timedelta
    ) -> dict[str, LoginSummary]: ...

    def retention_days(self) -> int | None: ...


@dataclass(frozen=True)
class LogStreams:
    """Instances whose connection log is in one log group: the target's own, or a read replica's,
    a Global Database secondary's or a self-managed standby's, in its own group and region.

    An instance's watermark is kept under its key: ``<prefix>/<instance>`` with a prefix (a
    secondary cluster's id, a replica's region), else its name.
    """

    prefix: str | None
    source: LoginSource
    instances: tuple[str, ...]
    label: str = ""  # how logs and errors name it ("read replica db-2 (eu-west-1)")
    created: Mapping[str, datetime] = field(default_factory=dict)  # instance -> creation, where known

    def key(self, instance: str) -> str:
        return instance if self.prefix is None else f"{self.prefix}/{instance}"

    def location(self, instance: str) -> state.LogLocation:
        streams = self.source.streams.get(instance, [instance])
        return state.LogLocation(
            self.source.log_group, self.source.region, None if streams is None else tuple(streams)
        )


@dataclass
class IngestResult:
    instances: dict[str, dict[str, object]] = field(default_factory=dict)
    users_seen: int = 0
    rows_advanced: int = 0
    active_sessions: list[str] = field(default_factory=list)
    failed_auth: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    pending_logins: int = 0
    first_ingest: int = 0
    retention_gaps: dict[str, str] = field(default_factory=dict)
    session_errors: dict[str, str] = field(default_factory=dict)
    stopped_reading: dict[str, str] = field(default_factory=dict)  # instance -> why


@dataclass
class RunReport:
    dry_run: bool
    sync: state.SyncResult | None = None
    ingest: IngestResult | None = None
    plan: Plan | None = None
    unlock: ActionReport = field(default_factory=ActionReport)
    lock: ActionReport = field(default_factory=ActionReport)
    delete: ActionReport = field(default_factory=ActionReport)


class Engine:
    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        settings: EngineSettings,
        *,
        run_id: str = "manual",
        master_user: str | None = None,
        logs: LoginSource | None = None,
        use_lease: bool = False,
        sessions: Mapping[str, Connect | None] | None = None,
        secondaries: Sequence[LogStreams] = (),
        override_retention: bool = False,
        log_format: LogFormat | None = None,
        connect_database: ConnectDatabase | None = None,
        instance_problems: Mapping[str, str] | None = None,
        open_source: Callable[[state.LogLocation], LoginSource] | None = None,
    ) -> None:
        self._connect = connect
        # Reaches the cluster's other databases, where the objects blocking a drop are named;
        # None: they are counted, not named.
        self.connect_database = connect_database
        self.use_lease = use_lease
        self.settings = settings
        self.run_id = run_id
        self.master_user = master_user
        self.logs = logs
        self.schema = settings.state_schema
        # Where open sessions are read: every instance of the cluster (and of its secondaries);
        # None: this engine's own connection is the only instance (one-server set-ups, tests).
        self.sessions = sessions
        self.secondaries = tuple(secondaries)
        self.override_retention = override_retention
        self.log_format = log_format  # the server's log_line_prefix, as the log sources read it
        # Instances of the topology whose logins or sessions cannot be read (preflight found why):
        # lock and drop wait, the rest of the run goes on.
        self.instance_problems = dict(instance_problems or {})
        # Opens a log where an instance that left the topology was read, for its last read.
        self.open_source = open_source

    @classmethod
    def from_airflow(
        cls,
        postgres_conn_id: str,
        settings: EngineSettings,
        *,
        run_id: str,
        cluster_id: str | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        master_user: str | None = None,
        log_group: str | None = None,
        use_lease: bool = False,
        log_format: LogFormat | None = None,
        streams: Mapping[str, Sequence[str] | None] | None = None,
        missing_hint: str | None = None,
    ) -> Engine:
        """An engine whose credentials all come from Airflow connections."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from inactive_users.aws.cloudwatch import CloudWatchLogins

        # One hook: it looks the Airflow connection up once (in a task, each lookup is a call to the
        # api-server's execution API), then each connect is a new session (and a new IAM token).
        hook = PostgresHook(postgres_conn_id=postgres_conn_id)

        def connect() -> psycopg.Connection:  # Engine.connection() makes it autocommit
            return cast(psycopg.Connection, hook.get_conn())

        def open_source(where: state.LogLocation, name: str = cluster_id or "") -> CloudWatchLogins:
            return CloudWatchLogins(
                name,
                aws_conn_id,
                where.region_name,
                page_size=settings.page_size,
                log_group=where.log_group,
                requests_per_second=settings.logs_requests_per_second,
                max_concurrency=settings.logs_max_concurrency,
                log_format=log_format,
                streams=streams,
                missing_hint=missing_hint,
            )

        logs = None
        if cluster_id is not None:
            logs = open_source(state.LogLocation(log_group or log_group_name(cluster_id), region_name, None))
        return cls(
            connect,
            settings,
            run_id=run_id,
            master_user=master_user,
            logs=logs,
            use_lease=use_lease,
            log_format=log_format,
            connect_database=airflow_database_connector(postgres_conn_id),
            open_source=lambda where: open_source(where),
        )

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        conn = self._connect()
        conn.autocommit = True
        try:
            yield conn
        finally:
            conn.close()

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        with self.connection() as conn:
            applied = migrations.migrate(conn, self.schema)
        log.info("state schema %s: applied migrations %s", self.schema, applied or "none (up to date)")
        return applied

    def pending_migrations(self) -> list[int]:
        with self.connection() as conn:
            return migrations.pending(conn, self.schema)

    @property
    def lease_run_id(self) -> str | None:
        return self.run_id if self.use_lease else None

    def acquire_lease(self, ttl: timedelta) -> None:
        with self.connection() as conn:
            state.acquire_lease(conn, self.schema, self.run_id, ttl)
        log.info("run lease taken by %s for up to %s", self.run_id, ttl)

    def release_lease(self) -> None:
        with self.connection() as conn:
            released = state.release_lease(conn, self.schema, self.run_id)
        log.info("run lease %s", "released" if released else "was not held by this run")

    def check_log_connections(self) -> str:
        """The server's ``log_connections``; raises if logins are not being logged."""
        with self.connection() as conn:
            row = conn.execute("SELECT current_setting('log_connections')").fetchone()
        value = str(row[0]) if row else ""
        tokens = {v.strip().lower() for v in value.split(",")}
        if tokens & {"on", "true", "1", "yes", "all", "authorization"}:
            return value
        raise SettingsError(
            f"log_connections is {value!r} on this server, so logins are not logged and every user "
            "would look inactive. Set log_connections = 1 (PostgreSQL 18: 'on' or a list including "
            "'authorization') in the DB cluster parameter group and reboot, then re-run."
        )

    def check_log_format(self) -> LogFormat:
        """The recogniser for the server's own ``log_line_prefix``; raises if logins cannot be read."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT current_setting('log_line_prefix'), current_setting('log_timezone')"
            ).fetchone()
        assert row is not None
        try:
            return compile_format(str(row[0]), str(row[1]))
        except LogFormatError as exc:
            raise SettingsError(str(exc)) from None

    # -- steps ----------------------------------------------------------------------------------

    def sync_roles(self) -> state.SyncResult:
        with self.connection() as conn, conn.transaction():
            return self._sync(conn)

    def ingest(self, instances: Sequence[str], now: datetime | None = None) -> IngestResult:
        with self.connection() as conn:
            return self._ingest(conn, instances, now)

    def plan(self, instances: Sequence[str] | None = None, as_of: datetime | None = None) -> Plan:
        with self.connection() as conn:
            if self.override_retention and not self.settings.dry_run:
                with conn.transaction():
                    state.take_action_lock(conn, self.schema, self.lease_run_id)
                    cleared = state.clear_retention_gaps(conn, self.schema, self.run_id)
                for gap in cleared.values():
                    log.warning("retention gap overridden (recorded in action_history): %s", gap)
            return self._plan(conn, instances, as_of)

    def record_plan(self, plan: Plan) -> dict[str, int]:
        """Keep the roles this run plans to lock and delete in the state schema, for its action tasks.

        Replaces any plan recorded earlier; refused (``ConcurrentRunError``) when a DAG run has lost
        the cluster's lease. Returns the number of roles recorded per action.
        """
        with self.connection() as conn, conn.transaction():
            state.take_action_lock(conn, self.schema, self.lease_run_id)
            counts = planstore.record(conn, self.schema, self.run_id, plan)
        log.info("plan of run %s recorded in %s.planned_action: %s", self.run_id, self.schema, counts)
        return counts

    def upcoming_state(self, plan: Plan) -> tuple[str | None, list[notices.ContactNotice]]:
        """What the last alert listed of the upcoming set, and the contact notices ``plan`` owes.

        Read only, so a dry run can tell what a real run would send.
        """
        with self.connection() as conn:
            alerted = notices.last_alerted(conn, self.schema)
            owed = (
                notices.owed(conn, self.schema, plan.upcoming) if self.settings.notify_role_contacts else []
            )
        return alerted, owed

    def record_upcoming_alerted(self, fingerprint: str, roles: int) -> None:
        with self.connection() as conn, conn.transaction():
            notices.record_alerted(conn, self.schema, fingerprint, roles, self.run_id)

    def claim_contact_notice(self, notice: notices.ContactNotice) -> bool:
        with self.connection() as conn, conn.transaction():
            return notices.claim_notice(conn, self.schema, notice, self.run_id)

    def release_contact_notice(self, notice: notices.ContactNotice) -> None:
        with self.connection() as conn, conn.transaction():
            notices.release_notice(conn, self.schema, notice, self.run_id)

    def recorded_plan(self, action: str) -> set[tuple[str, int]]:
        """The (name, OID) pairs this run's plan task recorded for ``action`` (lock or delete)."""
        with self.connection() as conn:
            return planstore.fetch(conn, self.schema, self.run_id, action)

    def evidence_snapshot(self) -> evidencestore.Snapshot:
        """The state schema after this run's actions, for its evidence (read only)."""
        with self.connection() as conn:
            exclusions = self.exclusions(conn)
            return evidencestore.snapshot(
                conn, self.schema, self.run_id, exclusions, self.settings.exempt_groups
            )

    def record_outcome(self, outcome: str, task_id: str | None = None, reason: str | None = None) -> None:
        """What this run did (``core.exposure``: acted, nothing to do, refused, failed)."""
        with self.connection() as conn:
            exposure.record_outcome(conn, self.schema, self.run_id, outcome, task_id, reason)
        log.info("run %s recorded as %s in %s.run_outcome", self.run_id, outcome, self.schema)

    def exposure(self, *, before_this_run: bool = False) -> Report:
        """Dormant roles that keep access, and the runs that have not acted (read only).

        ``before_this_run``: the record as it stood before this run (its own outcome left out).
        """
        s = self.settings
        with self.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            roles = exposure.read_roles(
                conn, self.schema, s.lock_after_days, s.delete_after_days, s.warn_before_days
            )
            runs = exposure.read_runs(conn, self.schema, self.run_id if before_this_run else None)
        return Report(roles, runs)

    def lock(self, plan: Plan) -> ActionReport:
        self._check_guard(plan)
        if self.settings.dry_run or not plan.lock:
            return _preview(plan.lock, "would_lock")
        with self.connection() as conn:
            report = actions.lock_roles(
                conn, self.schema, plan.lock, self.settings.lock_method, self.run_id, self.lease_run_id
            )
        _log_report("lock", report)
        return report

    def delete(self, plan: Plan, *, may_drop: bool = True) -> ActionReport:
        """Drop or flag the plan's roles; ``may_drop`` false: flag only (the drops were not approved)."""
        self._check_guard(plan)
        if not plan.delete:
            return ActionReport()
        with self.connection() as conn:
            if self.settings.dry_run:
                return self._preview_delete(conn, plan.delete)
            report = actions.delete_roles(
                conn,
                self.schema,
                plan.delete,
                self.settings.lock_method,
                self.run_id,
                self.lease_run_id,
                self.connect_database,
                may_drop=may_drop,
            )
        _log_report("delete", report)
        return report

    def unlock(self, names: Sequence[str]) -> ActionReport:
        if not names:
            return ActionReport()
        if self.settings.dry_run:
            return ActionReport([Outcome(n, "would_unlock") for n in names])
        with self.connection() as conn:
            report = actions.unlock_roles(conn, self.schema, list(names), self.run_id, self.lease_run_id)
        _log_report("unlock", report)
        return report

    def run(
        self,
        instances: Sequence[str],
        *,
        as_of: datetime | None = None,
        unlock_users: Sequence[str] = (),
    ) -> RunReport:
        """All steps in order; a dry run previews inside a rolled-back transaction."""
        if as_of is not None and not self.settings.dry_run:
            raise SettingsError("as_of is accepted only with dry_run: true (a preview of a future date)")
        if self.settings.dry_run:
            return self.preview(instances, as_of=as_of, unlock_users=unlock_users)
        report = RunReport(dry_run=False)
        self.migrate()
        report.unlock = self.unlock(unlock_users)
        report.sync = self.sync_roles()
        report.ingest = self.ingest(instances)
        report.plan = self.plan(instances)
        report.lock = self.lock(report.plan)
        report.delete = self.delete(report.plan)
        return report

    def preview(
        self, instances: Sequence[str], *, as_of: datetime | None = None, unlock_users: Sequence[str] = ()
    ) -> RunReport:
        """Sync, ingest and plan as a real run would, then roll every change back."""
        report = RunReport(dry_run=True)
        with self.connection() as conn, conn.transaction(force_rollback=True):
            migrations.migrate(conn, self.schema)
            report.unlock = ActionReport([Outcome(n, "would_unlock") for n in unlock_users])
            report.sync = self._sync(conn)
            report.ingest = self._ingest(conn, instances, None)
            report.plan = self._plan(conn, instances, as_of)
            report.lock = _preview(report.plan.lock, "would_lock")
            report.delete = self._preview_delete(conn, report.plan.delete)
        log.info("dry run: every change above was rolled back; nothing was changed")
        return report

    # -- internals ------------------------------------------------------------------------------

    def exclusions(self, conn: psycopg.Connection) -> Exclusions:
        session_user, current_user = state.job_user(conn)
        return self.settings.exclusions(protected=(self.master_user, session_user, current_user))

    def _sync(self, conn: psycopg.Connection) -> state.SyncResult:
        started = time.monotonic()
        state.take_action_lock(conn, self.schema, self.lease_run_id)
        roles = state.fetch_roles(conn, self.settings.exempt_groups)
        held = state.held_oids(conn, self.schema)
        exclusions = self.exclusions(conn)
        self._release_cloud_roles(conn, [roles[o] for o in sorted(held) if o in roles])
        held = state.held_oids(conn, self.schema)
        managed = managed_roles(roles.values(), exclusions, held)
        managed_oids = {r.oid for r in managed}
        tracked = managed + [
            roles[o]
            for o in sorted(held)
            if o in roles and o not in managed_oids and cloud_role_reason(roles[o].name) is None
        ]
        tracked_oids = {r.oid for r in tracked}
        excluded = {
            oid: reason
            for oid, role in roles.items()
            if oid not in tracked_oids and (reason := exclusion_reason(role, exclusions)) is not None
        }
        result = state.sync(conn, self.schema, tracked, self.run_id, excluded)
        log.info(
            "sync: %d roles in cluster, %d tracked; added %d%s, removed %d%s, renamed %d, "
            "unlocked outside the job %d%s (%.2fs)",
            len(roles),
            result.tracked,
            len(result.added),
            _names(result.added),
            len(result.removed),
            _names(result.removed),
            len(result.renamed),
            len(result.unlocked_externally),
            _names(result.unlocked_externally),
            time.monotonic() - started,
        )
        return result

    def _release_cloud_roles(self, conn: psycopg.Connection, held: Sequence[RoleInfo]) -> None:
        """Roles an older version locked that belong to RDS / Aurora: restore them, then stop tracking.

        Such a role is never ours to touch; leaving it locked could break the cluster's management.
        """
        names = [r.name for r in held if cloud_role_reason(r.name) is not None]
        if not names:
            return
        log.warning("restoring roles owned by RDS / Aurora that an earlier version locked: %s", names)
        report = actions.unlock_roles(conn, self.schema, names, self.run_id, self.lease_run_id)
        for o in report.outcomes:
            log.warning("  %r: %s (%s)", o.name, o.action, o.reason)

    def _scan_sessions(self, conn: psycopg.Connection) -> SessionScan:
        """Open sessions on every instance; with no instance map, on this connection's server."""
        if self.sessions is None:
            here = "(this connection)"
            return SessionScan(
                oids=state.active_session_oids(conn),
                read=[here],
                wal_receivers={here: state.wal_receivers(conn)},
            )
        return scan_sessions(self.sessions)

    def _ingest(
        self, conn: psycopg.Connection, instances: Sequence[str], now: datetime | None
    ) -> IngestResult:
        if self.logs is None:
            raise SettingsError("no log source configured: the engine needs a cluster_id to read logins")
        now = now or state.db_now(conn)
        marks = state.fetch_watermarks(conn, self.schema)
        sets = [LogStreams(None, self.logs, tuple(instances), "the target"), *self.secondaries]
        keys = {s.key(i) for s in sets for i in s.instances}
        # instances that left the topology (a replica removed, an instance taken out of the config)
        # are read one last time, up to now, so no login of theirs is lost
        leaving = [m for k, m in sorted(marks.items()) if k not in keys]
        total = LoginSummary()
        result = IngestResult()
        new_marks: list[state.Watermark] = []
        pending: dict[str, tuple[datetime, str]] = {}
        unreadable: dict[str, tuple[str, BaseException]] = {}
        for mark in leaving:
            last = self._last_read(mark)
            if last is None:
                why = "where its log is was not recorded (by a version before the job recorded it)"
                unreadable[_leaving(mark.instance)] = (why, LogSourceError(why))
            else:
                sets.append(last)
        for streams in sets:
            try:
                windows = self._windows(streams, marks, now, result)
                started = time.monotonic()
                summaries = streams.source.read_many(windows, self.settings.settle)
            except Exception as exc:
                if streams is sets[0]:
                    raise  # the target's own logs: the task fails (and retries) as before
                why = scrub(f"{type(exc).__name__}: {exc}")
                if all(streams.key(i) in self.instance_problems for i in streams.instances):
                    # preflight found why already: the plan refuses, naming it
                    log.warning("logs of %s could not be read (as preflight found): %s", streams.label, why)
                    continue
                unreadable[streams.label] = (why, exc)
                log.error("logs of %s could not be read: %s", streams.label, why)
                continue
            for instance, summary in summaries.items():
                name = streams.key(instance)
                total.merge(summary)
                for user, ts in summary.pending.items():
                    if user not in pending or ts > pending[user][0]:
                        pending[user] = (ts, name)
                before = marks.get(name)
                candidates = [x for x in (before.last_event if before else None, summary.last_event) if x]
                last_event = max(candidates) if candidates else None
                new_marks.append(
                    state.Watermark(
                        name,
                        now,
                        last_event,
                        None,
                        summary.connection_events,
                        summary.unrecognised_example,
                        streams.location(instance),
                    )
                )
                result.instances[name] = _read_summary(name, windows[instance][0], now, summary, last_event)
            log.info(
                "ingest: %d instance(s) of %s read in %.2fs",
                len(summaries),
                streams.label,
                time.monotonic() - started,
            )
        retired = self._retire(leaving, unreadable, result, now)
        new_marks = [m for m in new_marks if m.instance not in retired]
        sessions = self._scan_sessions(conn)
        with conn.transaction():
            state.take_action_lock(conn, self.schema, self.lease_run_id)
            result.rows_advanced = state.apply_logins(conn, self.schema, total.last_login)
            result.active_sessions = state.touch_active_sessions(conn, self.schema, sessions.oids)
            result.first_ingest = state.end_first_ingest(conn, self.schema)
            state.save_pending_logins(conn, self.schema, pending)
            state.save_watermarks(conn, self.schema, new_marks)
            state.record_retention_gaps(conn, self.schema, result.retention_gaps)
            state.retire_watermarks(conn, self.schema, self.run_id, retired)
        result.users_seen = len(total.last_login)
        result.failed_auth = dict(total.failed_auth)
        result.rejected = dict(total.rejected)
        result.pending_logins = len(pending)
        result.session_errors = sessions.errors
        log.info(
            "ingest: %d users logged in, %d last-login times moved forward, %d roles on their first "
            "ingest, %d users with open sessions (on %s), %d logins still settling (their roles are "
            "kept this run)",
            result.users_seen,
            result.rows_advanced,
            result.first_ingest,
            len(result.active_sessions),
            ", ".join(sessions.read) or "no instance",
            len(pending),
        )
        for gap in result.retention_gaps.values():
            log.warning("retention gap: %s", gap)
        self._raise_unreadable(unreadable)
        return result

    def _windows(
        self,
        streams: LogStreams,
        marks: Mapping[str, state.Watermark],
        now: datetime,
        result: IngestResult,
    ) -> dict[str, tuple[datetime, datetime]]:
        """Each instance's read window: from its watermark (minus the overlap); a new instance of a
        target read before, as far back as a login still changes a decision; on the first run, the
        lookback. Notes the retention gaps those windows open."""
        windows = {}
        reach = max(self.settings.thresholds().horizon or self.settings.lookback, self.settings.lookback)
        for instance in streams.instances:
            key = streams.key(instance)
            mark = marks.get(key)
            if mark is not None:
                windows[instance] = (mark.last_processed - self.settings.overlap, now)
                gap = retention_gap(
                    key,
                    mark.last_processed,
                    now,
                    self.settings.overlap,
                    streams.source.retention_days(),
                    streams.source.log_group,
                )
            elif marks:
                windows[instance] = (now - reach, now)
                gap = new_instance_gap(
                    key,
                    windows[instance][0],
                    now,
                    streams.source.retention_days(),
                    streams.source.log_group,
                    streams.created.get(instance),
                )
                log.info("%s is read for the first time, from %s", key, windows[instance][0].isoformat())
            else:
                windows[instance] = (now - self.settings.lookback, now)
                gap = None
            if gap is not None:
                result.retention_gaps[key] = gap
        return windows

    def _last_read(self, mark: state.Watermark) -> LogStreams | None:
        """Where an instance that left the topology was read, for its last read (keyed as it was);
        None: not known."""
        label = _leaving(mark.instance)
        if mark.location is None:
            if "/" in mark.instance or self.logs is None:
                return None
            # recorded before locations were: a bare key was that stream of the target's group
            return LogStreams(None, self.logs, (mark.instance,), label)
        if self.open_source is None:
            return None
        source = self.open_source(mark.location)
        source.streams[mark.instance] = mark.location.log_streams
        source.missing_hint = f"the log of {mark.instance}, which left the topology, is no longer there"
        return LogStreams(None, source, (mark.instance,), label)

    def _retire(
        self,
        leaving: Sequence[state.Watermark],
        unreadable: dict[str, tuple[str, BaseException]],
        result: IngestResult,
        now: datetime,
    ) -> dict[str, tuple[state.Watermark, str]]:
        """The rows of instances that left the topology and were read one last time (or may go
        unread, by the run's override_retention); one whose last read failed, or whose log has
        expired in part (found now or recorded before), stays with a retention gap that refuses
        lock and drop until it is read or overridden."""
        retired: dict[str, tuple[state.Watermark, str]] = {}
        for mark in leaving:
            failure = unreadable.pop(_leaving(mark.instance), None)
            expired = result.retention_gaps.get(mark.instance) or mark.retention_gap
            if failure is None and expired is None:
                why = f"no longer in the topology; its log was read a last time, up to {now.isoformat()}"
            elif self.override_retention:
                lost = failure[0] if failure else expired
                why = (
                    f"no longer in the topology; its log after {mark.last_processed.isoformat()} was "
                    f"not read in full ({lost}), accepted by override_retention"
                )
                result.retention_gaps.pop(mark.instance, None)
            else:
                if failure is not None:
                    result.retention_gaps[mark.instance] = (
                        f"{mark.instance}: left the topology, and its log after "
                        f"{mark.last_processed.isoformat(timespec='seconds')} could not be read "
                        f"({failure[0]})"
                    )
                continue
            retired[mark.instance] = (mark, why)
            result.stopped_reading[mark.instance] = why
            log.warning("stopped reading %s: %s", mark.instance, why)
        return retired

    @staticmethod
    def _raise_unreadable(unreadable: Mapping[str, tuple[str, BaseException]]) -> None:
        """Fail the task, after the logins read were applied, when any other log group could not be
        read: a transient error as itself (Airflow retries it), else one error naming them all."""
        if not unreadable:
            return
        for _, exc in unreadable.values():
            if not isinstance(exc, LogSourceError | SettingsError):
                raise exc
        raise LogSourceError(
            "the connection logs of "
            + "; ".join(f"{label}: {why}" for label, (why, _) in sorted(unreadable.items()))
            + " could not be read. Roles used only there would look inactive, so this run stops "
            "before planning; the logins read elsewhere were applied. Fix the log export or access "
            "to that log group (region, IAM logs:FilterLogEvents, logs:DescribeLogStreams), then re-run."
        )

    def _stream_keys(self, instances: Sequence[str]) -> list[str]:
        """Every log stream this engine reads, as its watermark is keyed."""
        return [*instances, *(s.key(i) for s in self.secondaries for i in s.instances)]

    def _plan(
        self, conn: psycopg.Connection, instances: Sequence[str] | None, as_of: datetime | None
    ) -> Plan:
        now = state.db_now(conn)
        as_of = as_of or now
        sessions = self._scan_sessions(conn)
        plan = make_plan(
            state.fetch_states(conn, self.schema),
            state.fetch_roles(conn, self.settings.exempt_groups),
            self.exclusions(conn),
            self.settings.thresholds(),
            as_of,
            sessions.oids,
            state.fetch_pending_logins(conn, self.schema),
        )
        plan.refuse(session_error(sessions.errors))
        plan.refuse(instance_error(self.instance_problems))
        if instances is not None:
            marks = state.fetch_watermarks(conn, self.schema)
            keys = self._stream_keys(instances)
            plan.refuse(standby_error(sessions.wal_receivers, len(keys), self.settings.ignore_wal_receivers))
            health = {
                k: StreamHealth(m.last_event, m.connection_events, m.unrecognised_example)
                if (m := marks.get(k))
                else StreamHealth(None)
                for k in keys
            }
            prefix = self.log_format.prefix if self.log_format else None
            plan.refuse(log_gap_error(health, now, self.settings.max_log_gap, prefix))
            # every recorded gap: an instance that left the topology unread keeps its row and gap
            gaps = {k: m.retention_gap for k, m in marks.items() if m.retention_gap is not None}
            if gaps and self.override_retention:
                log.warning("retention gaps overridden for this run (trigger conf): %s", gaps)
            else:
                plan.refuse(retention_error(gaps))
        log.info(
            "plan at %s: %d candidates; lock %d%s; delete %d%s; kept (open session) %d%s; "
            "kept (login still settling) %d%s; excluded %d",
            as_of.isoformat(),
            plan.candidates,
            len(plan.lock),
            _names([p.name for p in plan.lock]),
            len(plan.delete),
            _names([p.name for p in plan.delete]),
            len(plan.kept_active_session),
            _names(plan.kept_active_session),
            len(plan.kept_pending_login),
            _names(plan.kept_pending_login),
            len(plan.excluded),
        )
        if plan.guard_error:
            log.warning("%s", plan.guard_error)
        return plan

    def _check_guard(self, plan: Plan) -> None:
        if plan.guard_error and not self.settings.dry_run:
            raise SafetyGuardError(plan.guard_error)

    def preview_delete(self, items: Sequence[Planned]) -> ActionReport:
        """What deleting ``items`` would do now (drop, or flag ReadyToDelete), changing nothing."""
        with self.connection() as conn:
            return self._preview_delete(conn, items)

    def _preview_delete(self, conn: psycopg.Connection, items: Sequence[Planned]) -> ActionReport:
        blockers = name_blockers(conn, [i.oid for i in items], self.connect_database)
        report = ActionReport()
        for item in items:
            blocked = blockers.get(item.oid)
            if not blocked:
                action = "would_drop"
            elif item.status == READY_TO_DELETE:
                action = "still_ready_to_delete"
            else:
                action = "would_flag_ready_to_delete"
            report.outcomes.append(
                Outcome(
                    item.name,
                    action,
                    f"inactive {item.inactive_days} days",
                    item.last_login.isoformat(timespec="seconds"),
                    blocked,
                )
            )
        return report


def _preview(items: Sequence[Planned], action: str) -> ActionReport:
    return ActionReport(
        [
            Outcome(
                i.name, action, f"inactive {i.inactive_days} days", i.last_login.isoformat(timespec="seconds")
            )
            for i in items
        ]
    )


def _names(names: Sequence[str], limit: int = 20) -> str:
    """`` ['a', 'b']`` for a log line (with a leading space), or nothing for no names."""
    if not names:
        return ""
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", … {len(names) - limit} more" if len(names) > limit else ""
    return f" [{shown}{more}]"


def _log_report(step: str, report: ActionReport) -> None:
    for o in report.outcomes:
        level = logging.WARNING if o.action == "failed" else logging.INFO
        extra = f"; blocked by: {o.blockers}" if o.blockers else ""
        log.log(level, "%s: %r %s (%s)%s", step, o.name, o.action, o.reason, extra)


def _leaving(instance: str) -> str:
    """How logs and errors name an instance that left the topology."""
    return f"{instance} (left the topology)"


def _read_summary(
    name: str, start: datetime, now: datetime, summary: LoginSummary, last_event: datetime | None
) -> dict[str, object]:
    """What ingest read of one instance, for its XCom; logged."""
    log.info(
        "ingest %s: read %s .. %s, %d events, %d logins by %d users, %d rejected after "
        "authorization, %d failed authentications, %d logins still settling",
        name,
        start.isoformat(),
        now.isoformat(),
        summary.events,
        summary.logins,
        len(summary.last_login),
        sum(summary.rejected.values()),
        sum(summary.failed_auth.values()),
        summary.unsettled,
    )
    return {
        "from": start.isoformat(),
        "to": now.isoformat(),
        "events": summary.events,
        "logins": summary.logins,
        "users": len(summary.last_login),
        "rejected": sum(summary.rejected.values()),
        "failed_auth": sum(summary.failed_auth.values()),
        "unsettled": summary.unsettled,
        "last_event": last_event.isoformat() if last_event else None,
    }
