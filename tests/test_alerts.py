"""Alert composition (pure) and delivery through real endpoints: SNS via moto, e-mail via an SMTP sink."""

from __future__ import annotations

import json

import pytest

from devstack.awsfixtures import alert_topic_with_queue, drain_alerts
from devstack.motoserver import MotoServer, airflow_aws_conn, boto_client
from devstack.smtpsink import SmtpSink
from inactive_users.core.alerts import SNS_MESSAGE_LIMIT, compose, compose_failure, scrub, sns_message
from inactive_users.core.config import AlertConfig
from inactive_users.face.notify import send

OUTCOMES = [
    {
        "name": "ana",
        "action": "locked",
        "reason": "inactive 100 days",
        "last_login": "2026-08-18T10:00:00+00:00",
    },
    {
        "name": "bob",
        "action": "ready_to_delete",
        "reason": "inactive 200 days",
        "last_login": "2026-05-10T10:00:00+00:00",
        "blockers": "database app2: owns table public.ledger; holds privileges on table public.orders",
    },
    {"name": "carl", "action": "still_ready_to_delete", "last_login": "2026-01-01T00:00:00+00:00"},
    {"name": "dan", "action": "skipped", "reason": "has a session open now"},
]


def test_compose_names_cluster_actions_last_logins_and_blockers() -> None:
    alert = compose("orders-prod", "scheduled__x", OUTCOMES, dry_run=False)
    assert alert is not None
    assert alert.subject == "[inactive_users] orders-prod: 1 locked, 1 ready to delete"
    assert "Cluster: orders-prod" in alert.body and "Run: scheduled__x" in alert.body
    assert "  - ana: last login 2026-08-18T10:00:00+00:00; inactive 100 days" in alert.body
    assert (
        "  - bob: last login 2026-05-10T10:00:00+00:00; inactive 200 days; blocked by: database app2: owns "
        "table public.ledger; holds privileges on table public.orders"
    ) in alert.body
    assert "carl" not in alert.body and "dan" not in alert.body and "DRY RUN" not in alert.body


def test_nothing_to_say_means_no_alert() -> None:
    assert compose("c", "r", OUTCOMES[2:], dry_run=False) is None


def test_dry_run_is_labelled() -> None:
    alert = compose(
        "c", "r", [{"name": "x", "action": "would_lock"}], dry_run=True, as_of="2027-03-01T00:00:00+00:00"
    )
    assert alert is not None and alert.subject.startswith("[inactive_users] DRY RUN c:")
    assert "DRY RUN: nothing was changed" in alert.body and "at 2027-03-01T00:00:00+00:00" in alert.body


def test_a_sample_of_outcomes_is_alerted_with_the_complete_totals() -> None:
    sample = [{"name": f"r{i}", "action": "locked", "reason": "inactive 100 days"} for i in range(3)]
    sample.append({"name": "x", "action": "failed", "reason": "42501: permission denied"})
    totals = {"locked": 5000, "failed": 1, "skipped": 7}
    alert = compose("c", "scheduled__1", sample, dry_run=False, totals=totals)
    assert alert is not None
    assert alert.subject == "[inactive_users] c: 5000 locked, 1 failed"
    assert "Locked: 5000\n  - r0: last login unknown; inactive 100 days" in alert.body
    assert "  ... and 4997 more not listed here: action_history lists them (run_id = 'scheduled__1')" in (
        alert.body
    )
    assert "FAILED (the role was left as it was): 1\n  - x:" in alert.body
    assert alert.body.count("more not listed here") == 1  # the one failure is listed
    dry = compose("c", "r", [], dry_run=True, totals={"would_drop": 2000, "skipped": 1})
    assert dry is not None and dry.subject == "[inactive_users] DRY RUN c: 2000 would drop"
    assert (
        "Would drop (DROP ROLE): 2000\n  ... and 2000 more not listed here: the plan task's log" in dry.body
    )
    assert compose("c", "r", [], dry_run=False, totals={"skipped": 3, "locked": 0}) is None


def test_subject_fits_sns_and_secrets_are_scrubbed() -> None:
    many = [
        {"name": f"r{i}", "action": a}
        for i, a in enumerate(["locked", "dropped", "failed", "ready_to_delete"] * 3)
    ]
    alert = compose("a-very-long-cluster-name-" * 3, "r", many, dry_run=False)
    assert alert is not None and len(alert.subject) <= 100 and alert.subject.isascii()
    failure = compose_failure(
        "c", "r", "preflight", RuntimeError("could not connect to postgresql://job:hunter2@db:5432/x")
    )
    assert "hunter2" not in failure.body and "postgresql://***@db:5432/x" in failure.body
    assert scrub("password=hunter2 host=db") == "password=*** host=db"


def test_sns_and_email_delivery(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    moto_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_ALERT_AWS", json.dumps(airflow_aws_conn(moto_server.endpoint_url)))
    sns, sqs = boto_client(moto_server.endpoint_url, "sns"), boto_client(moto_server.endpoint_url, "sqs")
    topic, queue = alert_topic_with_queue(sns, sqs, "dba", "inbox")
    alert = compose("orders-prod", "r1", OUTCOMES, dry_run=False)
    assert alert is not None
    with SmtpSink() as sink:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(sink.airflow_conn()))
        cfg = AlertConfig(sns_topic_arn=topic, email=("dba@example.com", "oncall@example.com"))
        sent = send(alert, cfg, aws_conn_id="alert_aws", region_name="us-east-1")
        assert sent == [f"sns:{topic}", "email:dba@example.com,oncall@example.com"]
        [(rcpt, mail)] = sink.received
    assert rcpt == ["dba@example.com", "oncall@example.com"]
    assert mail["Subject"] == alert.subject
    html = (
        next(p for p in mail.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    )
    assert "ana: last login" in html
    [delivered] = drain_alerts(sqs, queue)
    assert delivered == {"subject": alert.subject, "message": alert.body}


def test_one_notifier_failing_does_not_stop_the_others(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_ALERT_AWS", json.dumps(airflow_aws_conn(moto_server.endpoint_url)))
    alert = compose("c", "r", OUTCOMES, dry_run=False)
    assert alert is not None
    with SmtpSink() as sink:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(sink.airflow_conn()))
        cfg = AlertConfig(
            sns_topic_arn="arn:aws:sns:us-east-1:123456789012:missing", email=("dba@example.com",)
        )
        assert send(alert, cfg, aws_conn_id="alert_aws", region_name="us-east-1") == ["email:dba@example.com"]
        assert len(sink.received) == 1
    with pytest.raises(Exception, match="NotFound"):  # every configured notifier failed: the task fails
        send(
            alert,
            AlertConfig(sns_topic_arn="arn:aws:sns:us-east-1:123456789012:missing"),
            aws_conn_id="alert_aws",
            region_name="us-east-1",
        )


def test_an_alert_too_long_for_sns_is_cut_at_a_line_and_delivered(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 flagged roles, named blockers nearly filling their 2,000 characters each: 7x what SNS takes."""
    moto_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_ALERT_AWS", json.dumps(airflow_aws_conn(moto_server.endpoint_url)))
    sns, sqs = boto_client(moto_server.endpoint_url, "sns"), boto_client(moto_server.endpoint_url, "sqs")
    topic, queue = alert_topic_with_queue(sns, sqs, "dba", "inbox")
    named = "database app: owns " + ", ".join(f"table public.rapport_été_{i:04}" for i in range(60))
    many = [
        {"name": f"rôle_{i}", "action": "ready_to_delete", "reason": "inactive 200 days", "blockers": named}
        for i in range(1000)
    ]
    alert = compose("orders-prod", "scheduled__9", many, dry_run=False)
    assert alert is not None and len(alert.body.encode()) > 7 * SNS_MESSAGE_LIMIT  # about 2 MB
    assert send(alert, AlertConfig(sns_topic_arn=topic), aws_conn_id="alert_aws", region_name="us-east-1")
    [delivered] = drain_alerts(sqs, queue)
    message = delivered["message"]
    sent = json.dumps({"default": message})  # as the amazon provider's SnsHook publishes it
    assert SNS_MESSAGE_LIMIT - 3000 < len(sent.encode()) <= SNS_MESSAGE_LIMIT
    shown, note = message.rsplit("\n... ", 1)
    lines, kept = alert.body.split("\n"), shown.split("\n")
    assert 50 < len(kept) < len(lines) and kept == lines[: len(kept)]
    assert note == (
        f"{len(lines) - len(kept)} more lines not shown here (SNS takes at most 262,144 bytes): "
        "the alert task's log has this alert in full, action_history every action (run_id = 'scheduled__9')."
    )
    short = compose("c", "r", OUTCOMES, dry_run=False)
    assert short is not None and sns_message(short) == short.body  # a message that fits goes whole
