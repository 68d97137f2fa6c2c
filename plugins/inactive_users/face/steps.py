"""What each DAG task does: a thin call into the engine plus a readable task log and a small XCom.

Every function takes the cluster's config and the Airflow task context and returns JSON-safe data
(counts and role names; never log events, never connection details). Errors that a retry cannot
fix become ``AirflowFailException`` so Airflow fails fast with the message that says what to fix.

XComs live in Airflow's metadata database, so they stay small whatever the cluster's size: counts
are complete, lists of names or outcomes are samples of at most ``MAX_NAMES_IN_XCOM`` (keys ending
in ``_sample``, next to their ``_total``). The roles a run acts on travel from ``plan`` to
``lock_users`` / ``delete_users`` through the state schema (``planstore``), not XCom; the full
record of what was done is ``action_history``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from inactive_users.aws import evidencestore, topology
from inactive_users.aws.cloudwatch import LogSourceError
from inactive_users.aws.topology import ClusterView, Topology, TopologyError
from inactive_users.core import alerts, approval, evidence, exposure
from inactive_users.core.config import ClusterConfig, ConfigError, RunOptions, run_options
from inactive_users.core.logformat import LogFormat, compile_format
from inactive_users.core.policy import Plan
from inactive_users.core.settings import SettingsError
from inactive_users.engine import Engine, LogStreams, SafetyGuardError
from inactive_users.face import notify
from inactive_users.postgres import notices
from inactive_users.postgres.actions import ActionReport, Outcome
from inactive_users.postgres.instances import Connect, airflow_connector, bounded_connector
from inactive_users.postgres.migrations import LATEST as LATEST_MIGRATION
from inactive_users.postgres.state import ConcurrentRunError

log = logging.getLogger("inactive_users")

#: The task that asks a DBA to approve the drops (with approve_drops), before delete_users.
APPROVAL_TASK_ID = "approve_drops"

#: At most this many names (or outcomes) in one list of a task's XCom; counts are always complete.
MAX_NAMES_IN_XCOM = 1000


class PreflightError(RuntimeError):
    """The cluster is not set up for the job; the message says how to fix it."""


class PlanRecordError(RuntimeError):
    """The plan this run's plan task recorded in the state schema is not there as its XCom says."""


class ApprovalError(RuntimeError):
    """The drops have no approval that covers exactly the roles this run would drop."""


PERMANENT = (
    ConfigError,
    SettingsError,
    SafetyGuardError,
    LogSourceError,
    ConcurrentRunError,
    PreflightError,
    PlanRecordError,
    ApprovalError,
    TopologyError,
)


@contextmanager
def permanent_errors() -> Iterator[None]:
    """Fail without retries on errors a retry cannot fix."""
    from inactive_users.face.compat import AirflowFailException

    try:
        yield
    except PERMANENT as exc:
        log.error("%s", exc)
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def options(cluster: ClusterConfig, context: Mapping[str, Any]) -> RunOptions:
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    return run_options(cluster, conf)


def engine(
    cluster: ClusterConfig, context: Mapping[str, Any], opts: RunOptions, pre: Mapping[str, Any]
) -> Engine:
    """The run's engine, from what preflight found (``pre``: its XCom, or as much as it knows yet).

    With its ``topology`` the engine reads every instance, replica and secondary where its log and
    its sessions are; with its ``log_format``, lines in the server's own ``log_line_prefix``.
    """
    fmt = pre.get("log_format")
    log_format = compile_format(fmt["prefix"], fmt["timezone"]) if fmt else None
    topo = Topology.from_json(pre["topology"]) if pre.get("topology") else None
    primary = topo.primary if topo else None
    eng = Engine.from_airflow(
        cluster.postgres_conn_id,
        opts.settings,
        run_id=str(context["run_id"]),
        cluster_id=cluster.cluster_id,
        aws_conn_id=cluster.aws_conn_id,
        region_name=primary.region_name if primary else cluster.region_name,
        master_user=pre.get("master_user"),
        log_group=primary.log_group if primary else cluster.log_group,
        use_lease=not opts.settings.dry_run,
        log_format=log_format,
        streams=primary.streams if primary else None,
        missing_hint=(primary.missing_hint or None) if primary else None,
    )
    eng.override_retention = opts.override_retention
    if topo is not None:
        eng.sessions = _session_connectors(cluster, topo.views)
        eng.secondaries = tuple(_other_logs(cluster, opts, v, log_format) for v in topo.views[1:])
        eng.instance_problems = topo.problems()
    return eng


def _session_connectors(cluster: ClusterConfig, views: Sequence[ClusterView]) -> dict[str, Connect | None]:
    """Every instance's session reader, keyed as its watermark is."""
    found: dict[str, Connect | None] = {}
    for view in views:
        for instance in view.instances:
            endpoint = view.endpoints.get(instance)
            connect = None if endpoint is None else airflow_connector(cluster.postgres_conn_id, endpoint)
            found[view.key(instance)] = connect
    return found


def _other_logs(
    cluster: ClusterConfig, opts: RunOptions, view: ClusterView, log_format: LogFormat | None
) -> LogStreams:
    """A log group other than the target's own: a replica's, a secondary's, a standby's."""
    from inactive_users.aws.cloudwatch import CloudWatchLogins

    source = CloudWatchLogins(
        view.cluster_id,
        cluster.aws_conn_id,
        view.region_name,
        page_size=opts.settings.page_size,
        log_group=view.log_group,
        requests_per_second=opts.settings.logs_requests_per_second,
        max_concurrency=opts.settings.logs_max_concurrency,
        log_format=log_format,
        streams=view.streams,
        missing_hint=view.missing_hint or None,
    )
    created = {i: datetime.fromisoformat(when) for i, when in view.created.items()}
    return LogStreams(view.key_prefix, source, tuple(view.instances), view.label, created)


def _preflight_result(context: Mapping[str, Any]) -> dict[str, Any]:
    result = context["ti"].xcom_pull(task_ids="preflight")
    if not result:
        raise PreflightError("no result from the preflight task of this run; re-run the DAG from preflight")
    return dict(result)


def _from_preflight(
    cluster: ClusterConfig, context: Mapping[str, Any]
) -> tuple[Engine, RunOptions, list[str]]:
    """The run's engine, with its lease renewed: a run that dies holds the cluster only briefly."""
    pre = _preflight_result(context)
    opts = options(cluster, context)
    eng = engine(cluster, context, opts, pre)
    if not opts.settings.dry_run:
        eng.acquire_lease(timedelta(hours=cluster.lease_hours))
    return eng, opts, list(pre["instances"])


def _names(names: Sequence[str]) -> list[str]:
    return list(names[:MAX_NAMES_IN_XCOM])


def _rank(o: Outcome) -> int:
    return 0 if o.action == "failed" else 1 if o.action in alerts.ALERTING else 2


def _action_summary(report: ActionReport) -> dict[str, Any]:
    """Counts of every outcome, and a sample of them (failures first, then what alerts) in run order."""
    outcomes = report.outcomes
    chosen = sorted(range(len(outcomes)), key=lambda i: (_rank(outcomes[i]), i))[:MAX_NAMES_IN_XCOM]
    return {
        "total": len(outcomes),
        "counts": dict(Counter(o.action for o in outcomes)),
        "outcomes_sample": [asdict(outcomes[i]) for i in sorted(chosen)],
    }


def _plan_summary(the_plan: Plan) -> dict[str, Any]:
    lock, delete = [p.name for p in the_plan.lock], [p.name for p in the_plan.delete]
    return {
        "as_of": the_plan.as_of.isoformat(),
        "candidates": the_plan.candidates,
        "lock_total": len(lock),
        "lock_sample": _names(lock),
        "delete_total": len(delete),
        "delete_sample": _names(delete),
        "kept_active_session_total": len(the_plan.kept_active_session),
        "kept_active_session_sample": _names(the_plan.kept_active_session),
        "kept_pending_login_total": len(the_plan.kept_pending_login),
        "kept_pending_login_sample": _names(the_plan.kept_pending_login),
        "excluded": len(the_plan.excluded),
        "guard_error": the_plan.guard_error,
    }


def _merge(summaries: Iterable[Mapping[str, Any]]) -> tuple[int, dict[str, int], list[dict[str, Any]]]:
    """Total, counts per action and the samples of several tasks' action summaries."""
    total, counts, sample = 0, Counter[str](), []
    for summary in summaries:
        total += int(summary.get("total") or 0)
        counts.update(summary.get("counts") or {})
        sample += list(summary.get("outcomes_sample") or [])
    return total, dict(counts), sample


def _log_outcome(o: Mapping[str, Any], prefix: str) -> None:
    log.info("%s%r %s (%s)", prefix, o["name"], o["action"], o.get("blockers") or o.get("reason"))


# -- tasks ----------------------------------------------------------------------------------------


def preflight(cluster: ClusterConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    """Check the cluster is set up (log export, log_connections, schema) and take the run lease."""
    with permanent_errors():
        opts = options(cluster, context)
        for key, source in sorted(opts.sources.items()):
            log.info("setting %s = %r (from %s)", key, opts.value(key), source)
        topo = topology.describe(cluster)
        instances, master_user = topo.primary.instances, topo.master_user
        layout = topo.to_json()
        eng = engine(cluster, context, opts, {"master_user": master_user, "topology": layout})
        log_connections = eng.check_log_connections()
        log.info("log_connections = %s", log_connections)
        log_format = eng.check_log_format()
        log.info(
            "log_line_prefix = %r, log_timezone = %s: connection lines are read in that format%s",
            log_format.prefix,
            log_format.timezone,
            " (Aurora's default: the fast path)" if log_format.is_default else "",
        )
        if opts.settings.dry_run:
            pending = eng.pending_migrations()
            log.info(
                "dry run: state schema migrations pending %s are applied only inside the preview", pending
            )
        else:
            eng.migrate()
            eng.acquire_lease(timedelta(hours=cluster.lease_hours))
    return {
        "instances": instances,
        "kind": topo.kind,
        "instances_read": topo.instances_read(),
        "master_user": master_user,
        "topology": layout,
        "log_format": {"prefix": log_format.prefix, "timezone": log_format.timezone},
        "log_connections": log_connections,
        "dry_run": opts.settings.dry_run,
    }


def sync_roles(cluster: ClusterConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    with permanent_errors():
        eng, opts, _ = _from_preflight(cluster, context)
        if opts.settings.dry_run:
            log.info(
                "dry run: unlock and sync are previewed by the plan task inside a rolled-back transaction"
            )
            return {"dry_run": True}
        unlocked = eng.unlock(opts.unlock_users)
        result = eng.sync_roles()
    return {
        "unlock": _action_summary(unlocked),
        "tracked": result.tracked,
        "added": _names(result.added),
        "removed": _names(result.removed),
        "renamed": [list(p) for p in result.renamed[:MAX_NAMES_IN_XCOM]],
        "unlocked_externally": _names(result.unlocked_externally),
    }


def ingest_logins(cluster: ClusterConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    with permanent_errors():
        eng, opts, instances = _from_preflight(cluster, context)
        if opts.settings.dry_run:
            log.info(
                "dry run: logins are read by the plan task and applied only inside its rolled-back preview"
            )
            return {"dry_run": True}
        result = eng.ingest(instances)
    return {
        "instances": result.instances,
        "users_seen": result.users_seen,
        "rows_advanced": result.rows_advanced,
        "active_sessions": _names(result.active_sessions),
        "rejected_after_authorization": dict(list(result.rejected.items())[:MAX_NAMES_IN_XCOM]),
        "failed_authentications": sum(result.failed_auth.values()),
    }


def plan(cluster: ClusterConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    """Plan, and record the planned roles in the state schema for the action tasks (XCom: a sample)."""
    with permanent_errors():
        eng, opts, instances = _from_preflight(cluster, context)
        if opts.settings.dry_run:
            report = eng.preview(instances, as_of=opts.as_of, unlock_users=opts.unlock_users)
            assert report.plan is not None
            the_plan = report.plan
            summary = _plan_summary(the_plan)
            for o in report.unlock.outcomes + report.lock.outcomes + report.delete.outcomes:
                _log_outcome(asdict(o), "dry run: ")
            summary["preview"] = {
                "unlock": _action_summary(report.unlock),
                "lock": _action_summary(report.lock),
                "delete": _action_summary(report.delete),
            }
        else:
            the_plan = eng.plan(instances)
            if the_plan.guard_error:
                raise SafetyGuardError(the_plan.guard_error)
            eng.record_plan(the_plan)
            summary = _plan_summary(the_plan)
        summary.update(_upcoming_summary(eng, the_plan, opts))
    summary["dry_run"] = opts.settings.dry_run
    return summary


def _upcoming_summary(eng: Engine, the_plan: Plan, opts: RunOptions) -> dict[str, Any]:
    """The upcoming set for the alert (a sample, its fingerprint, what was last alerted), logged."""
    items = the_plan.upcoming
    alerted, owed = eng.upcoming_state(the_plan)
    if items:
        log.info(
            "upcoming: %d roles reach a threshold within %s days of %s:",
            len(items),
            opts.settings.warn_before_days,
            the_plan.as_of.isoformat(timespec="seconds"),
        )
        for u in items[:MAX_NAMES_IN_XCOM]:
            log.info(
                "  %r: %s on %s (last login %s)",
                u.name,
                u.action,
                u.due.isoformat(),
                u.last_login.isoformat(),
            )
        if len(items) > MAX_NAMES_IN_XCOM:
            log.info("  ... and %d more", len(items) - MAX_NAMES_IN_XCOM)
    return {
        "upcoming_total": len(items),
        "upcoming_sample": notices.as_sample(items[:MAX_NAMES_IN_XCOM]),
        "upcoming_fingerprint": notices.fingerprint(items),
        "upcoming_alerted_fingerprint": alerted,
        "warn_before_days": opts.settings.warn_before_days,
        "contact_notices": [n.as_dict() for n in owed[:MAX_NAMES_IN_XCOM]],
    }


def choose_actions(cluster: ClusterConfig, context: Mapping[str, Any]) -> list[str]:
    """The tasks to follow; with approve_drops, drops go through the approval first."""
    planned = context["ti"].xcom_pull(task_ids="plan") or {}
    delete = APPROVAL_TASK_ID if options(cluster, context).settings.approve_drops else "delete_users"
    follow = [t for t, key in (("lock_users", "lock_total"), (delete, "delete_total")) if planned.get(key)]
    log.info("following %s", follow or ["nothing_to_do"])
    return follow or ["nothing_to_do"]


def _act(cluster: ClusterConfig, context: Mapping[str, Any], which: str) -> dict[str, Any]:
    """Act on every role this run's plan recorded for ``which`` that a fresh plan still selects."""
    from inactive_users.face.compat import AirflowSkipException

    with permanent_errors():
        planned = context["ti"].xcom_pull(task_ids="plan") or {}
        if planned.get("dry_run"):
            preview = dict((planned.get("preview") or {}).get(which) or _action_summary(ActionReport()))
            for o in preview["outcomes_sample"]:
                _log_outcome(o, "dry run: ")
            if preview["total"] > len(preview["outcomes_sample"]):
                log.info(
                    "dry run: %d outcomes in all, %d listed here; the plan task's log lists every one",
                    preview["total"],
                    len(preview["outcomes_sample"]),
                )
            return {"dry_run": True, **preview}
        eng, opts, instances = _from_preflight(cluster, context)
        fresh, recorded = _still_planned(eng, instances, planned, which)
        may_drop = True
        if which == "delete" and opts.settings.approve_drops:
            decided = _approval(cluster, context)
            if decided is None:
                raise ApprovalError(
                    "approve_drops recorded no answer (was it marked successful by hand?). Nothing "
                    "was dropped; clear approve_drops to ask again."
                )
            if decided.outcome in (approval.REJECTED, approval.TIMED_OUT):
                eng.record_outcome(exposure.ACTED, "delete_users", approval.summary_line(decided))
                raise AirflowSkipException(approval.summary_line(decided))
            if decided.outcome == approval.APPROVED and decided.fingerprint != approval.fingerprint(recorded):
                raise ApprovalError(
                    f"the roles recorded for this run's drops (fingerprint {approval.fingerprint(recorded)}) "
                    f"are not those approved ({decided.fingerprint}). Nothing was dropped; re-run the DAG."
                )
            may_drop = decided.may_drop
            log.info("%s", approval.summary_line(decided))
        report = eng.lock(fresh) if which == "lock" else eng.delete(fresh, may_drop=may_drop)
        eng.record_outcome(exposure.ACTED, f"{which}_users")
    return {"dry_run": False, **_action_summary(report)}


def _still_planned(
    eng: Engine, instances: Sequence[str], planned: Mapping[str, Any], which: str
) -> tuple[Plan, set[tuple[str, int]]]:
    """A fresh plan holding only the roles this run recorded for ``which`` (and the recorded set).

    The plan is made again at action time because someone may have logged in since.
    """
    recorded = eng.recorded_plan(which)
    expected = planned.get(f"{which}_total")
    if expected is None or len(recorded) != expected:
        raise PlanRecordError(
            f"this run's plan task planned {expected} roles to {which}, but {len(recorded)} are "
            f"recorded for run {eng.run_id!r} in {eng.schema}.planned_action (a later run has "
            "replaced the plan?). This task changed nothing; re-run the DAG from preflight."
        )
    fresh = eng.plan(instances)
    if fresh.guard_error:
        raise SafetyGuardError(fresh.guard_error)
    items = [p for p in (fresh.lock if which == "lock" else fresh.delete) if (p.name, p.oid) in recorded]
    dropped_from_plan = sorted(name for name, _ in recorded - {(p.name, p.oid) for p in items})
    log.info("%s: %d roles planned, %d still qualify", which, len(recorded), len(items))
    if dropped_from_plan:
        log.info(
            "%d no longer qualifying since the plan (left alone): %s",
            len(dropped_from_plan),
            dropped_from_plan,
        )
    fresh.lock, fresh.delete = (items, []) if which == "lock" else ([], items)
    return fresh, recorded


def lock_users(cluster: ClusterConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    return _act(cluster, context, "lock")


def delete_users(cluster: ClusterConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    return _act(cluster, context, "delete")


@dataclass(frozen=True)
class Ask:
    """What approve_drops asks about: the run's drops as a fresh preview sees them."""

    asked: bool
    why_not: str = ""
    fingerprint: str | None = None
    total: int = 0
    would_drop: int = 0
    preview: list[dict[str, Any]] = field(default_factory=list)

    def as_xcom(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "why_not": self.why_not,
            "fingerprint": self.fingerprint,
            "total": self.total,
            "would_drop": self.would_drop,
        }


def drops_to_approve(cluster: ClusterConfig, context: Mapping[str, Any]) -> Ask:
    """The question for approve_drops; none in a dry run or when every role would only be flagged."""
    with permanent_errors():
        planned = context["ti"].xcom_pull(task_ids="plan") or {}
        if planned.get("dry_run"):
            return Ask(False, "dry run: nothing is dropped, so nothing to approve")
        eng, _, instances = _from_preflight(cluster, context)
        fresh, recorded = _still_planned(eng, instances, planned, "delete")
        preview = [asdict(o) for o in eng.preview_delete(fresh.delete).outcomes]
        for o in preview:
            _log_outcome(o, "to approve: ")
        n = approval.would_drop(preview)
        why_not = "" if n else f"none of the {len(preview)} roles due to be dropped would be dropped now"
        return Ask(bool(n), why_not, approval.fingerprint(recorded), len(preview), n, preview)


def _decision_note(decided: approval.Decision | None) -> tuple[str, str] | None:
    """For the alert: a short label for the subject and the decision's line (None: none was asked)."""
    if decided is None or decided.outcome == approval.NOT_ASKED:
        return None
    return decided.label, approval.summary_line(decided)


def _approval(cluster: ClusterConfig, context: Mapping[str, Any]) -> approval.Decision | None:
    """This run's decision on its drops (None: approve_drops did not decide, or is not in the DAG)."""
    ti = context["ti"]
    asked = ti.xcom_pull(task_ids=APPROVAL_TASK_ID, key="asked")
    answer = ti.xcom_pull(task_ids=APPROVAL_TASK_ID, key="answer")
    return approval.decision(answer, asked, cluster.approval_timeout_hours)


def nothing_to_do(cluster: ClusterConfig, context: Mapping[str, Any]) -> None:
    planned = context["ti"].xcom_pull(task_ids="plan") or {}
    log.info(
        "no role reached a threshold: %s candidates checked, %s kept active by an open session",
        planned.get("candidates"),
        planned.get("kept_active_session_total", 0),
    )
    if not planned.get("dry_run"):
        with permanent_errors():
            engine(cluster, context, options(cluster, context), _preflight_result(context)).record_outcome(
                exposure.NOTHING_TO_DO, "nothing_to_do"
            )


def _action_results(context: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The XCom summaries of lock_users and delete_users (empty when skipped)."""
    return [context["ti"].xcom_pull(task_ids=t) or {} for t in ("lock_users", "delete_users")]


def alert(cluster: ClusterConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    """Alert on the run's actions and its upcoming roles; tell role contacts of theirs.

    A run with no action alerts only when its upcoming set differs from the one last alerted.
    """
    from inactive_users.face.compat import AirflowSkipException

    planned = context["ti"].xcom_pull(task_ids="plan") or {}
    dry_run = bool(planned.get("dry_run"))
    _, counts, sample = _merge(_action_results(context))
    upcoming_total = int(planned.get("upcoming_total") or 0)
    fingerprint = str(planned.get("upcoming_fingerprint") or notices.fingerprint(()))
    alerted = planned.get("upcoming_alerted_fingerprint")
    unchanged = fingerprint == alerted
    decided = _approval(cluster, context)
    decision = _decision_note(decided)
    has_actions = (
        bool(alerts.alerting_outcomes(sample))
        or any(n and a in alerts.ALERTING for a, n in counts.items())
        or decision is not None
    )
    record = _UpcomingRecord(cluster, context) if not dry_run else None
    sent_notices = _notify_contacts(cluster, planned, record)
    if not has_actions and (not upcoming_total or unchanged):
        if record and not upcoming_total and alerted is not None and not unchanged:
            record.alerted(fingerprint, 0)  # the set emptied: its next appearance alerts again
        why = "nobody was locked, dropped or flagged"
        if upcoming_total:
            why += f", and the {upcoming_total} upcoming roles are those the last alert listed"
        raise AirflowSkipException(why + ": no alert")
    message = alerts.compose(
        cluster.cluster_id,
        str(context["run_id"]),
        sample,
        dry_run=dry_run,
        as_of=planned.get("as_of") if dry_run else None,
        totals=counts,
        upcoming=planned.get("upcoming_sample") or [],
        upcoming_total=upcoming_total,
        warn_before_days=planned.get("warn_before_days"),
        decision=decision,
        instances=_instances_read(context),
    )
    assert message is not None  # actions, a decision or upcoming roles, checked above
    log.info("alert:\n%s\n%s", message.subject, message.body)
    sent = notify.send(
        message, cluster.alert, aws_conn_id=cluster.aws_conn_id, region_name=cluster.region_name
    )
    log.info("alert sent to %s", sent or "no notifier (logged only)")
    if record and not unchanged:
        record.alerted(fingerprint, upcoming_total)
    return {"subject": message.subject, "sent": sent, "contact_notices": sent_notices}


def _instances_read(context: Mapping[str, Any]) -> list[str]:
    """The instances preflight found (replicas and secondaries too), as the alert names them."""
    pre = context["ti"].xcom_pull(task_ids="preflight") or {}
    return [row["instance"] for row in pre.get("instances_read") or []]


class _UpcomingRecord:
    """Writes what a real run's alert told, through the run's engine (made when first needed)."""

    def __init__(self, cluster: ClusterConfig, context: Mapping[str, Any]) -> None:
        self._args = (cluster, context)
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        if self._engine is None:
            cluster, context = self._args
            with permanent_errors():
                self._engine = engine(cluster, context, options(cluster, context), _preflight_result(context))
        return self._engine

    def alerted(self, fingerprint: str, roles: int) -> None:
        self.engine().record_upcoming_alerted(fingerprint, roles)

    def claim(self, notice: notices.ContactNotice) -> bool:
        return self.engine().claim_contact_notice(notice)

    def release(self, notice: notices.ContactNotice) -> None:
        self.engine().release_contact_notice(notice)


def _notify_contacts(
    cluster: ClusterConfig, planned: Mapping[str, Any], record: _UpcomingRecord | None
) -> int:
    """E-mail each owed contact notice once; one that fails is logged and owed again next run."""
    owed = [notices.ContactNotice.from_dict(d) for d in planned.get("contact_notices") or []]
    if not owed:
        return 0
    if record is None:
        for n in owed:
            log.info("dry run: would tell %s that %r is due for %s on %s", n.contact, n.name, n.action, n.due)
        return 0
    sent = 0
    for n in owed:
        if not record.claim(n):
            continue  # sent by an earlier try of this task or another run
        try:
            notice = alerts.compose_contact_notice(cluster.cluster_id, n.as_dict())
            notify.send_contact_notice(notice, n.contact)
        except Exception as exc:
            record.release(n)
            log.error(
                "notice to the contact of %r failed (owed again next run): %s", n.name, alerts.scrub(str(exc))
            )
            continue
        sent += 1
        log.info("told %s that %r is due for %s on %s", n.contact, n.name, n.action, n.due.isoformat())
    return sent


def write_evidence(cluster: ClusterConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    """Write the run's evidence for auditors to S3: every tracked role after the actions, and a manifest.

    Real runs only (a dry run changes nothing). A failure fails this task, and so the run, after
    its actions: they stand, and the message says that only the evidence is missing.
    """
    from inactive_users.face.compat import AirflowFailException, AirflowSkipException

    ev = cluster.evidence
    if ev is None:
        raise AirflowSkipException("evidence.s3_uri is not configured for this cluster: no evidence written")
    planned = context["ti"].xcom_pull(task_ids="plan") or {}
    if not planned:
        raise AirflowSkipException(
            "the plan task did not finish, so nothing was acted on: no evidence written"
        )
    if planned.get("dry_run"):
        raise AirflowSkipException("dry run: nothing was changed, no evidence written")
    run_id = str(context["run_id"])
    with permanent_errors():
        eng, opts, instances = _from_preflight(cluster, context)
        snap = eng.evidence_snapshot()
        before = eng.exposure(before_this_run=True).runs
    outcomes = {o["name"]: o for s in _action_results(context) for o in s.get("outcomes_sample") or []}
    rows = evidence.build_rows(
        snap.roles,
        as_of=datetime.fromisoformat(planned["as_of"]),
        thresholds=opts.settings.thresholds(),
        kept_session=set(planned.get("kept_active_session_sample") or ()),
        kept_settling=set(planned.get("kept_pending_login_sample") or ()),
        outcomes=outcomes,
    )
    body = evidence.to_csv(rows)
    logical_date = _logical_date(context)
    csv_key, manifest_key = evidence.object_keys(ev.prefix, cluster.cluster_id, logical_date.date(), run_id)
    csv_uri = f"s3://{ev.bucket}/{csv_key}"
    manifest = evidence.manifest(
        cluster_id=cluster.cluster_id,
        dag_id=cluster.dag_id,
        run_id=run_id,
        logical_date=logical_date,
        evaluated_at=datetime.fromisoformat(planned["as_of"]),
        settings=_evidence_settings(opts, instances),
        instances_read=_preflight_result(context).get("instances_read") or [],
        rows=rows,
        csv_bytes=body,
        csv_uri=csv_uri,
        job_user=snap.job_user,
        encryption=evidencestore.encryption_args(ev),
        written_at=datetime.now(UTC),
        unprotected_before=exposure.manifest_entry(before, datetime.fromisoformat(planned["as_of"])),
    )
    sha256 = hashlib.sha256(body).hexdigest()  # as the manifest records it
    try:
        evidencestore.upload(
            ev,
            [(csv_key, body, "text/csv; charset=utf-8"), (manifest_key, manifest, "application/json")],
            {"cluster-id": cluster.cluster_id, "csv-sha256": sha256},
        )
    except evidencestore.EvidenceError as exc:
        message = (
            f"{exc}. This run's actions are done and recorded in {eng.schema}.action_history "
            f"(run_id {run_id!r}); only its evidence is missing. Fix the cause, then clear this "
            "task: it rewrites this run's evidence."
        )
        log.error("%s", message)
        if exc.permanent:
            raise AirflowFailException(message) from exc
        raise evidencestore.EvidenceError(message, permanent=False) from exc
    log.info(
        "evidence written to %s (%d roles, %d bytes, sha256 %s) and s3://%s/%s",
        csv_uri,
        len(rows),
        len(body),
        sha256,
        ev.bucket,
        manifest_key,
    )
    return {
        "csv": csv_uri,
        "manifest": f"s3://{ev.bucket}/{manifest_key}",
        "roles": len(rows),
        "bytes": len(body),
        "sha256": sha256,
    }


def _logical_date(context: Mapping[str, Any]) -> datetime:
    """The run's logical date in UTC; a manual run without one (Airflow 3) uses when it was due to run."""
    dag_run = context.get("dag_run")
    for when in (
        context.get("logical_date"),
        getattr(dag_run, "run_after", None),
        getattr(dag_run, "start_date", None),
    ):
        if isinstance(when, datetime):
            return when.astimezone(UTC)
    return datetime.now(UTC)


def _evidence_settings(opts: RunOptions, instances: Sequence[str]) -> dict[str, Any]:
    """The settings the run's decisions were made with, as the manifest records them."""
    s = opts.settings
    return {
        "lock_after_days": s.lock_after_days,
        "delete_after_days": s.delete_after_days,
        "lock_method": s.lock_method,
        "warn_before_days": s.warn_before_days,
        "max_action_ratio": s.max_action_ratio,
        "override_guard": s.override_guard,
        "exclude_users": list(s.exclude_users),
        "exclude_patterns": list(s.exclude_patterns),
        "exempt_groups": list(s.exempt_groups),
        "include_superusers": s.include_superusers,
        "settle_seconds": s.settle_seconds,
        "max_log_gap_hours": s.max_log_gap_hours,
        "state_schema": s.state_schema,
        "unlock_users": list(opts.unlock_users),
        "override_retention": opts.override_retention,
        "instances": list(instances),
        "sources": dict(opts.sources),
    }


class RunHadFailures(RuntimeError):
    """Raised by ``report`` so the DAG run is marked failed; failures were already alerted."""


def report(cluster: ClusterConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    ti = context["ti"]
    run_id = str(context["run_id"])
    pre = ti.xcom_pull(task_ids="preflight") or {}
    planned = ti.xcom_pull(task_ids="plan") or {}
    sync = ti.xcom_pull(task_ids="sync_roles") or {}
    total, counts, outcomes = _merge([sync.get("unlock") or {}, *_action_results(context)])
    rows = [f"{'role':<40} {'action':<28} {'last login':<34} detail"]
    for o in outcomes:
        detail = o.get("blockers") or o.get("reason") or ""
        rows.append(f"{o['name'][:40]:<40} {o['action']:<28} {o.get('last_login') or '-'!s:<34} {detail}")
    if len(outcomes) < total:
        where = "the plan task's log" if planned.get("dry_run") else f"action_history (run_id = {run_id!r})"
        rows.append(f"... {total - len(outcomes)} more outcomes not listed here: see {where}")
    log.info(
        "run %s on %s%s: %s candidates, %d outcomes (%s)\n%s",
        run_id,
        cluster.cluster_id,
        " (DRY RUN)" if planned.get("dry_run") else "",
        planned.get("candidates", "?"),
        total,
        ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "none",
        "\n".join(rows),
    )
    decision = _decision_note(_approval(cluster, context))
    if decision:
        log.info("%s", decision[1])
    if pre and not pre.get("dry_run"):
        try:
            with permanent_errors():
                engine(cluster, context, options(cluster, context), pre).release_lease()
        except Exception as exc:  # the lease expires by itself; do not hide the run's own result
            log.warning("could not release the run lease: %s", alerts.scrub(str(exc)))
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id]).get(run_id, {})
    failed_tasks = sorted(
        t for t, s in states.items() if s in ("failed", "upstream_failed") and t != "report"
    )
    failed = counts.get("failed", 0)
    if failed_tasks or failed:
        names = [o["name"] for o in outcomes if o["action"] == "failed"]
        listed = f"{failed} {names}" if failed else "none"
        if failed > len(names):
            listed += f" (the first {len(names)} listed)"
        note = ""
        if "write_evidence" in failed_tasks:
            note = (
                "; the run's actions are done (see action_history), but its evidence was not written: "
                "see the write_evidence task log"
            )
        raise RunHadFailures(
            f"failed tasks: {failed_tasks or 'none'}; roles whose action failed: {listed}{note}"
        )
    return {"outcomes": total, "failed": 0, **({"drops_decision": decision[1]} if decision else {})}


def on_failure(cluster: ClusterConfig, context: Mapping[str, Any]) -> None:
    """Alert through the same notifiers when a task fails (never raises).

    A task before the actions failing means the run did not act: it is recorded (real runs), and
    the alert adds the exposure the state table shows.
    """
    error = context.get("exception")
    if isinstance(error, RunHadFailures):
        return  # each failed task alerted itself, and failed roles were in the run's alert
    ti = context.get("ti")
    task_id = getattr(ti, "task_id", "?")
    try:
        outcome = _outcome_of(error)
        report = _did_not_act(cluster, context, task_id, outcome, error)
        message = alerts.compose_failure(
            cluster.cluster_id,
            str(context.get("run_id")),
            task_id,
            error,
            report,
            reason=_reason(error),
            outcome=outcome,
            max_unprotected_days=cluster.max_unprotected_days,
        )
        notify.send(message, cluster.alert, aws_conn_id=cluster.aws_conn_id, region_name=cluster.region_name)
    except Exception as exc:
        log.error("failure alert could not be sent: %s", alerts.scrub(str(exc)))


def _reason(error: BaseException | None) -> str:
    """The refusal as our check said it (not the ``AirflowFailException`` that carried it), scrubbed."""
    cause = getattr(error, "__cause__", None)
    shown = cause if isinstance(cause, PERMANENT) else error
    return alerts.scrub(f"{type(shown).__name__}: {shown}" if shown is not None else "unknown")


def _outcome_of(error: BaseException | None) -> str:
    """Refused: a check or guard said no (``permanent_errors``); failed: anything else, retried out."""
    if isinstance(error, PERMANENT) or isinstance(getattr(error, "__cause__", None), PERMANENT):
        return exposure.REFUSED
    return exposure.FAILED


def _did_not_act(
    cluster: ClusterConfig,
    context: Mapping[str, Any],
    task_id: str,
    outcome: str,
    error: BaseException | None,
) -> exposure.Report | str | None:
    """For a task before the actions: record that the run did not act (a real run), then read the
    exposure; what went wrong instead, when the state table cannot be reached. None for later tasks.

    Connects with the status page's bounded connector: a cluster that is down fails fast here too.
    """
    if task_id not in exposure.PRE_ACTION_TASKS:
        return None
    try:
        try:
            settings = options(cluster, context).settings
        except ConfigError:  # a bad trigger conf: the configured settings
            settings = cluster.settings
        eng = Engine(bounded_connector(cluster.postgres_conn_id), settings, run_id=str(context.get("run_id")))
        if len(eng.pending_migrations()) == LATEST_MIGRATION:
            # never created here (a failure callback does not create it): nothing is tracked yet
            return (
                f"no state schema {settings.state_schema!r} on the cluster yet: no run has got past "
                "preflight, so no role is tracked"
            )
        if not settings.dry_run:
            eng.migrate()  # a run refused in preflight may not have migrated to run_outcome yet
            eng.record_outcome(outcome, task_id, _reason(error))
        return eng.exposure()
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        log.error("exposure for the failure alert could not be read: %s", alerts.scrub(first_line))
        return f"the state table could not be read ({type(exc).__name__}: {first_line})"
