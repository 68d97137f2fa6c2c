"""The ``approve_drops`` task: Airflow's ApprovalOperator, asking a DBA before ``DROP ROLE``.

What it asks is worked out when it runs (the roles this run would drop, from the recorded plan and
a fresh preview of their dependencies), so the question is about what the run would really do.
The DBA answers on Airflow's Required Actions page (or its REST API). Reject, or no answer within
``approval_timeout_hours`` (the default option, Reject, is then taken by the scheduler): the
operator skips ``delete_users`` and the run goes on to the alert and the report.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from inactive_users.core import approval
from inactive_users.core.alerts import Alert
from inactive_users.core.config import ClusterConfig
from inactive_users.face import notify, steps
from inactive_users.face.compat import ApprovalOperator, BaseNotifier

log = logging.getLogger("inactive_users")


class DropRequestNotifier(BaseNotifier):
    """Sends the question through the cluster's notifiers once the request is on the page."""

    def __init__(self, cluster: ClusterConfig, question: Alert) -> None:
        super().__init__()
        self.cluster = cluster
        self.question = question

    def notify(self, context: Any) -> None:
        sent = notify.send(
            self.question,
            self.cluster.alert,
            aws_conn_id=self.cluster.aws_conn_id,
            region_name=self.cluster.region_name,
        )
        log.info("approval request sent to %s", sent or "nobody (no notifier configured; see above)")


class DropApproval(ApprovalOperator):
    """Approve or reject this run's drops; nothing is asked when no role would be dropped."""

    def __init__(self, *, cluster: ClusterConfig, **kwargs: Any) -> None:
        super().__init__(
            task_id=steps.APPROVAL_TASK_ID,
            subject=f"[inactive_users] {cluster.cluster_id}: approve dropping inactive roles",
            defaults=ApprovalOperator.REJECT,  # what a timeout chooses
            response_timeout=timedelta(hours=cluster.approval_timeout_hours),
            **kwargs,
        )
        self.cluster = cluster

    def execute(self, context: Any) -> Any:
        ask = steps.drops_to_approve(self.cluster, context)
        context["ti"].xcom_push(key="asked", value=ask.as_xcom())
        if not ask.asked:
            log.info("%s: no approval asked", ask.why_not)
            return None
        cluster, hours = self.cluster, self.cluster.approval_timeout_hours
        run_id = str(context["run_id"])
        question = approval.request(cluster.cluster_id, run_id, ask.preview, ask.total, hours, None)
        self.subject, self.body = question.subject, approval.verbatim(question.body)
        self.notifiers = [
            DropRequestNotifier(
                cluster,
                approval.request(cluster.cluster_id, run_id, ask.preview, ask.total, hours, _link(context)),
            )
        ]
        log.info("asking for approval, waiting up to %g hours:\n%s\n%s", hours, self.subject, self.body)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Record the answer, then let the operator act on it.

        The answer is kept under its own XCom key because on Reject the operator does not return:
        it skips ``delete_users`` by raising, so there is no return value to read it from.
        """
        chosen = event.get("chosen_options")
        if "error" not in event and chosen and set(chosen) <= set(self.options):
            answer = {
                "chosen_options": list(chosen),
                "responded_by_user": event.get("responded_by_user"),
                "responded_at": approval.stamp(event.get("responded_at")),
                "timed_out": bool(event.get("timedout")),
            }
            context["ti"].xcom_push(key="answer", value=answer)
            asked = context["ti"].xcom_pull(task_ids=steps.APPROVAL_TASK_ID, key="asked")
            decided = approval.decision(answer, asked, self.cluster.approval_timeout_hours)
            if decided is not None:
                log.info("%s", approval.summary_line(decided))
        return super().execute_complete(context, event)


def _link(context: Any) -> str | None:
    """The Required Actions page of this task, when Airflow knows its own URL (``[api] base_url``)."""
    try:
        return ApprovalOperator.generate_link_to_ui_from_context(context=context)
    except ValueError as exc:
        log.warning("no link to the approval page in the alert: %s (set [api] base_url)", exc)
        return None
