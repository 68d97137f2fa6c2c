"""Send an alert through the notifiers a cluster configures: SNS, Slack and e-mail (Airflow hooks).

Every configured notifier is tried; the task fails only when none delivered. Errors are scrubbed
before they are logged or raised, because a notifier's error text may carry its credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from inactive_users.core.alerts import Alert, scrub, slack_text, sns_message
from inactive_users.core.config import AlertConfig

log = logging.getLogger("inactive_users")


def send(alert: Alert, cfg: AlertConfig, *, aws_conn_id: str | None, region_name: str | None) -> list[str]:
    """Send through every configured notifier; returns where it went. One notifier failing is logged
    and the others still run; if all configured notifiers fail, :class:`AlertNotSent` is raised."""
    notifiers: list[tuple[str, Callable[[], None]]] = []
    if cfg.sns_topic_arn:
        arn = cfg.sns_topic_arn
        notifiers.append((f"sns:{arn}", lambda: _send_sns(alert, arn, aws_conn_id, region_name)))
    if cfg.slack_conn_id:
        conn_id = cfg.slack_conn_id
        notifiers.append((f"slack:{conn_id}", lambda: _send_slack(alert, conn_id)))
    if cfg.email:
        notifiers.append(("email:" + ",".join(cfg.email), lambda: _send_email(alert, cfg.email)))
    if not notifiers:
        log.warning("no notifier configured (alert.sns_topic_arn / slack_conn_id / email); alert only logged")
    sent: list[str] = []
    errors: list[tuple[str, Exception]] = []
    for target, deliver in notifiers:
        try:
            deliver()
        except Exception as exc:
            log.error("alert to %s failed: %s", target, scrub(str(exc)))
            errors.append((target, exc))
        else:
            sent.append(target)
    if errors and not sent:
        raise AlertNotSent(errors)
    return sent


class AlertNotSent(RuntimeError):
    """Every configured notifier failed. The message names each one and its error, scrubbed; the
    original exceptions are not chained because their text may hold a webhook token or password."""

    def __init__(self, errors: Sequence[tuple[str, Exception]]) -> None:
        super().__init__(
            "no notifier delivered the alert: "
            + "; ".join(f"{target}: {type(exc).__name__}: {scrub(str(exc))}" for target, exc in errors)
        )


def _send_sns(alert: Alert, topic_arn: str, aws_conn_id: str | None, region_name: str | None) -> None:
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    SnsHook(aws_conn_id=aws_conn_id, region_name=region_name).publish_to_target(
        target_arn=topic_arn, message=sns_message(alert), subject=alert.subject
    )


def _send_slack(alert: Alert, conn_id: str) -> None:
    try:
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
    except ImportError as exc:
        raise RuntimeError(
            f"alert.slack_conn_id is {conn_id!r} but apache-airflow-providers-slack is not installed: "
            "install it where the tasks run, or set alert.slack_conn_id to null"
        ) from exc
    SlackWebhookHook(slack_webhook_conn_id=conn_id, logger=_slack_sdk_log()).send(text=slack_text(alert))


class _Scrub(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        return True


def _slack_sdk_log() -> logging.Logger:
    """The logger slack_sdk writes to: it logs the webhook URL (the token) when retrying, and with
    the request body at DEBUG; so INFO at most, and every line scrubbed."""
    logger = logging.getLogger("inactive_users.slack_sdk")
    if not any(isinstance(f, _Scrub) for f in logger.filters):
        logger.addFilter(_Scrub())
    logger.setLevel(logging.INFO)
    return logger


def _send_email(alert: Alert, to: Sequence[str]) -> None:
    from html import escape

    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook() as hook:
        hook.send_email_smtp(
            to=list(to), subject=alert.subject, html_content=f"<pre>{escape(alert.body)}</pre>"
        )


def send_contact_notice(alert: Alert, to: str) -> None:
    """By e-mail through Airflow's SMTP connection (the same as the alert's e-mail notifier)."""
    _send_email(alert, [to])
