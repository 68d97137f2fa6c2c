"""Slack alerts through the real provider hook to a loopback webhook (devstack/webhooksink.py).

What the webhook receives, that a failing webhook leaves SNS (moto) and e-mail (SMTP sink) to
carry the alert, and that the webhook token (the URL path) reaches no log line and no error.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from devstack.awsfixtures import alert_topic_with_queue, drain_alerts
from devstack.motoserver import MotoServer, airflow_aws_conn, boto_client
from devstack.smtpsink import SmtpSink
from devstack.webhooksink import TOKEN, WebhookSink, refused_port, slack_webhook_conn
from inactive_users.core.alerts import SLACK_TEXT_LIMIT, Alert, compose, scrub, slack_text
from inactive_users.core.config import AlertConfig
from inactive_users.face.notify import AlertNotSent, send

HOSTILE = 'a<b> & "<!channel>"'
OUTCOMES = [
    {
        "name": "ana",
        "action": "locked",
        "reason": "inactive 100 days",
        "last_login": "2026-08-18T10:00:00+00:00",
    },
    {"name": HOSTILE, "action": "dropped", "reason": "inactive 200 days"},
]
SECRET = TOKEN.rsplit("/", 1)[1]


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _no_secret(capfd: pytest.CaptureFixture[str], *texts: str) -> None:
    """Neither the log records nor what went to stdout/stderr (Airflow's hook loggers do not
    propagate to caplog; they print) nor ``texts`` hold the token."""
    out, err = capfd.readouterr()
    for text in (*texts, out, err):
        assert TOKEN not in text and SECRET not in text


def test_the_webhook_gets_the_subject_in_bold_and_the_body_in_a_code_block(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    alert = compose("orders-prod", "r1", OUTCOMES, dry_run=False)
    assert alert is not None
    with WebhookSink() as sink:
        monkeypatch.setenv("AIRFLOW_CONN_ALERT_SLACK", json.dumps(sink.airflow_conn()))
        assert send(alert, AlertConfig(slack_conn_id="alert_slack"), aws_conn_id=None, region_name=None) == [
            "slack:alert_slack"
        ]
    [posted] = sink.received
    assert posted.path == f"/services/{TOKEN}"
    assert posted.content_type.startswith("application/json")
    assert posted.json() == {"text": f"*{alert.subject}*\n```{_escaped(alert.body)}```"}
    text = posted.json()["text"]
    assert "  - ana: last login 2026-08-18T10:00:00+00:00; inactive 100 days\n" in text
    # the role name cannot become a mention or a link: Slack reads <...> as one
    assert '  - a&lt;b&gt; &amp; "&lt;!channel&gt;": last login unknown' in text and "<!channel>" not in text
    _no_secret(capfd, caplog.text)


@pytest.mark.parametrize("failure", ["http500", "refused"])
def test_a_failing_webhook_is_logged_and_sns_and_email_still_deliver(
    failure: str,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    moto_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_ALERT_AWS", json.dumps(airflow_aws_conn(moto_server.endpoint_url)))
    sns, sqs = boto_client(moto_server.endpoint_url, "sns"), boto_client(moto_server.endpoint_url, "sqs")
    topic, queue = alert_topic_with_queue(sns, sqs, "dba", "inbox")
    alert = compose("c", "r", OUTCOMES, dry_run=False)
    assert alert is not None
    cfg = AlertConfig(sns_topic_arn=topic, slack_conn_id="alert_slack", email=("dba@example.com",))
    with WebhookSink() as hook, SmtpSink() as mail, refused_port() as closed:
        hook.fail_with(500, "rollup_error")
        conn = hook.airflow_conn() if failure == "http500" else slack_webhook_conn(f"127.0.0.1:{closed}")
        monkeypatch.setenv("AIRFLOW_CONN_ALERT_SLACK", json.dumps(conn))
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(mail.airflow_conn()))
        sent = send(alert, cfg, aws_conn_id="alert_aws", region_name="us-east-1")
        assert sent == [f"sns:{topic}", "email:dba@example.com"]
        assert len(hook.received) == (1 if failure == "http500" else 0)
        [(rcpt, _)] = mail.received
    assert rcpt == ["dba@example.com"]
    assert drain_alerts(sqs, queue) == [{"subject": alert.subject, "message": alert.body}]
    [failed] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert to slack:")]
    cause = (
        "Response body: 'rollup_error', Status Code: 500" if failure == "http500" else "Connection refused"
    )
    assert failed.startswith("alert to slack:alert_slack failed: ") and cause in failed
    _no_secret(capfd, caplog.text)


def test_every_notifier_failing_raises_naming_each_without_the_token(
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    moto_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_ALERT_AWS", json.dumps(airflow_aws_conn(moto_server.endpoint_url)))
    # a token given as the full webhook URL (the provider accepts that form too), in a refused port
    with refused_port() as closed:
        url = f"http://127.0.0.1:{closed}/services/{TOKEN}"
        monkeypatch.setenv(
            "AIRFLOW_CONN_ALERT_SLACK", json.dumps({"conn_type": "slackwebhook", "password": url})
        )
        smtp = {"conn_type": "smtp", "host": "127.0.0.1", "port": closed, "extra": {"retry_limit": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(smtp))
        cfg = AlertConfig(
            sns_topic_arn="arn:aws:sns:us-east-1:123456789012:missing",
            slack_conn_id="alert_slack",
            email=("dba@example.com",),
        )
        with pytest.raises(AlertNotSent) as raised:
            send(Alert("s", "b"), cfg, aws_conn_id="alert_aws", region_name="us-east-1")
    message = str(raised.value)
    assert message.startswith("no notifier delivered the alert: ")
    assert re.search(r"sns:arn:aws:sns:us-east-1:123456789012:missing: \w+: .*NotFound", message)
    assert "slack:alert_slack: URLError: <urlopen error [Errno 111] Connection refused>" in message
    assert "email:dba@example.com: " in message
    assert raised.value.__cause__ is None and raised.value.__context__ is None  # no original to print
    # slack_sdk logs "Going to retry the same request: POST <url>": it arrives scrubbed
    retry = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Going to retry")]
    assert retry == [f"Going to retry the same request: POST http://127.0.0.1:{closed}/services/***"]
    _no_secret(capfd, caplog.text, message)


def test_scrub_removes_webhook_urls_and_tokens() -> None:
    assert scrub("POST https://hooks.slack.com/services/T000/B000/XXXX failed") == (
        "POST https://hooks.slack.com/services/*** failed"
    )
    assert scrub("url: 'https://hooks.slack.com/workflows/T01/A02/345/abc'") == (
        "url: 'https://hooks.slack.com/workflows/***'"
    )
    assert scrub(f"Invalid URL detected: {TOKEN}") == "Invalid URL detected: ***"
    assert scrub("https://api.slack.com/messaging/webhooks#handling_errors") == (
        "https://api.slack.com/messaging/webhooks#handling_errors"
    )


def test_an_alert_too_long_for_slack_is_cut_at_a_line_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    blockers = "owns 3 objects (pg_class) in database app_" + "x" * 60
    many = [
        {
            "name": f"rôle 🙂 <{i}>",
            "action": "ready_to_delete",
            "reason": "inactive 200 days",
            "blockers": blockers,
        }
        for i in range(1000)
    ]
    alert = compose("orders-prod", "scheduled__9", many, dry_run=False)
    assert alert is not None and _utf16(f"*{alert.subject}*\n```{_escaped(alert.body)}```") > SLACK_TEXT_LIMIT
    with WebhookSink() as sink:
        monkeypatch.setenv("AIRFLOW_CONN_ALERT_SLACK", json.dumps(sink.airflow_conn()))
        send(alert, AlertConfig(slack_conn_id="alert_slack"), aws_conn_id=None, region_name=None)
    [posted] = sink.received
    text = posted.json()["text"]
    assert SLACK_TEXT_LIMIT - 200 < _utf16(text) <= SLACK_TEXT_LIMIT
    shown, note = text.split("```", 2)[1], text.split("```", 2)[2]
    lines = _escaped(alert.body).split("\n")
    kept = shown.split("\n")
    assert text.startswith(f"*{alert.subject}*\n```Cluster: orders-prod\n") and kept == lines[: len(kept)]
    assert note == (
        f"\n... {len(lines) - len(kept)} more lines not shown here (Slack takes at most 40,000 characters): "
        "the alert task's log has this alert in full, action_history every action (run_id = 'scheduled__9')."
    )


def test_slack_text_fits_short_alerts_whole_and_a_dry_run_points_to_the_plan_log() -> None:
    dry = compose("c", "r", [{"name": "x", "action": "would_lock"}], dry_run=True)
    assert dry is not None and slack_text(dry) == f"*{dry.subject}*\n```{dry.body}```"
    limit = 250  # the whole message is 346: room for the head, the note and the first lines
    cut = slack_text(dry, limit=limit)
    _, shown, note = cut.split("```")
    lines, kept = dry.body.split("\n"), shown.split("\n")
    assert 0 < len(kept) < len(lines) and kept == lines[: len(kept)] and _utf16(cut) <= limit
    assert note == (
        f"\n... {len(lines) - len(kept)} more lines not shown here (Slack takes at most 250 characters): "
        "the alert task's log has this alert in full, the plan task's log every planned role."
    )
