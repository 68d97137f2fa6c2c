"""Runs that do not act say what stays exposed: the real DAG (dag.test) on a real cluster, its
failure alerts delivered to SNS (moto, read back through SQS), a Slack webhook sink and an SMTP sink.

One cluster, five runs: nothing to do; logins age past the thresholds; the log group disappears
(ingest refuses: the counts still come from the state table); the safety guard refuses, with the
last run that did anything four days back (the subject escalates past max_unprotected_days); a
dry run fails (nothing recorded); a run acts, and its evidence records how long nobody had.
"""

from __future__ import annotations

import json
from datetime import timedelta
from email.message import Message

import pytest

from devstack.motoserver import boto_client
from devstack.smtpsink import SmtpSink
from devstack.webhooksink import WebhookSink
from tests.dagrun import DagHarness
from tests.scenario import Scenario

pytestmark = pytest.mark.single_pg_version("the subject is the alert; the SQL is version-neutral")

BUCKET = "exposure-evidence"
AGES = {"idle_a": 100, "idle_b": 100, "idle_c": 120, "gone_d": 200}


def _html(mail: Message) -> str:
    part = next(p for p in mail.walk() if p.get_content_type() == "text/html")
    return str(part.get_payload(decode=True).decode())  # type: ignore[union-attr]


class Sinks:
    def __init__(self, h: DagHarness, hook: WebhookSink, mail: SmtpSink) -> None:
        self.h, self.hook, self.mail = h, hook, mail

    def one_alert(self) -> tuple[str, str]:
        """The one alert of the last run, as SNS, Slack and e-mail each delivered it (all the same)."""
        [sns] = self.h.messages()
        [posted] = self.hook.received
        [(rcpt, mail)] = self.mail.received
        self.hook.received.clear()
        self.mail.received.clear()
        assert rcpt == ["dba@example.com"]
        assert mail["Subject"] == sns["subject"]
        text = posted.json()["text"]
        assert text.startswith(f"*{sns['subject']}*\n```")
        for line in sns["message"].splitlines():
            escaped = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            assert escaped in text, line
            assert escaped.replace('"', "&quot;").replace("'", "&#x27;") in _html(mail), line
        return sns["subject"], sns["message"]


def test_runs_that_do_not_act_alert_their_exposure_and_escalate(
    scenario: Scenario, dag_harness: DagHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    sc, h = scenario, dag_harness
    s3 = boto_client(sc.moto.endpoint_url, "s3")
    s3.create_bucket(Bucket=BUCKET)
    for name in [*AGES, "fresh"]:
        sc.create_role(name)
    alert = {"sns_topic_arn": h.topic_arn, "slack_conn_id": "alert_slack", "email": ["dba@example.com"]}
    with WebhookSink() as hook, SmtpSink() as mail:
        monkeypatch.setenv("AIRFLOW_CONN_ALERT_SLACK", json.dumps(hook.airflow_conn()))
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(mail.airflow_conn()))
        sinks = Sinks(h, hook, mail)
        config = {"alert": alert, "evidence": {"s3_uri": f"s3://{BUCKET}/audit/"}}
        h.write_config(**config)
        assert sc.login("fresh")
        sc.ship(sc.writer)
        assert sc.login("fresh")
        sc.ship(sc.reader)

        # 1. nothing to do ------------------------------------------------------------------------
        states = h.run()
        assert states["nothing_to_do"] == "success" and states["report"] == "success", states
        assert sc.sql("SELECT outcome FROM inactive_users.run_outcome") == [("nothing_to_do",)]
        h.messages()  # (no alert: nothing happened)

        # 2. months later (seeded), the log group is gone: ingest refuses ------------------------
        for name, days in AGES.items():
            sc.set_last_login(name, days)
        group = f"/aws/rds/cluster/{sc.cluster_id}/postgresql"
        sc.logs.delete_log_group(logGroupName=group)
        states = h.run()
        assert states["ingest_logins"] == "failed" and states["lock_users"] == "upstream_failed", states
        subject, body = sinks.one_alert()
        assert subject == "[inactive_users] FAILED test-aurora: task ingest_logins"
        st = sc.statuses()
        oldest_lock = min(st[n]["last_login"] for n in AGES) + timedelta(days=90)
        oldest_drop = st["gone_d"]["last_login"] + timedelta(days=180)
        assert (
            "  4 roles past lock_after_days (90): can still log in; "
            f"the oldest past it since {oldest_lock:%Y-%m-%d}" in body
        )
        assert (
            "  1 role past delete_after_days (180): neither dropped nor flagged ReadyToDelete; "
            f"the oldest past it since {oldest_drop:%Y-%m-%d}" in body
        )
        assert "  1 run in a row has not acted (the last run that acted or had nothing to do was at " in body
        assert "  Why: LogSourceError: " in body and "  Fix: " in body
        assert sc.pg.password not in body

        # 3. the log is back, the safety guard refuses; the last run that did anything 4 days back --
        sc.ship(sc.writer)
        sc.sql(
            "UPDATE inactive_users.run_outcome SET recorded_at = recorded_at - interval '4 days' "
            "WHERE outcome = 'nothing_to_do'"
        )
        h.write_config(defaults={"max_action_ratio": 0.25}, **config)
        states = h.run()
        assert states["plan"] == "failed", states
        subject, body = sinks.one_alert()
        assert subject == "[inactive_users] UNPROTECTED 4 DAYS test-aurora: task plan failed"
        assert "  4 roles past lock_after_days (90): can still log in" in body
        assert "  2 runs in a row have not acted" in body
        assert "  ESCALATED: not acted for 4.0 days, longer than max_unprotected_days (3)" in body
        assert "  Why: SafetyGuardError: safety guard: this run would lock or delete 4 of 5" in body
        assert (
            "  Fix: check that the connection logs are complete; if the plan is right, set override_guard"
            in (body)
        )

        # 4. a dry run that fails (no log group again) records nothing: it changes nothing ---------
        sc.logs.delete_log_group(logGroupName=group)
        states = h.run({"dry_run": True})
        assert states["plan"] == "failed", states
        subject, body = sinks.one_alert()
        assert subject == "[inactive_users] UNPROTECTED 4 DAYS test-aurora: task plan failed"
        assert "  2 runs in a row have not acted" in body and "  Why: LogSourceError: " in body
        assert sc.sql("SELECT count(*) FROM inactive_users.run_outcome") == [(3,)]

        # 5. a run that acts: the subject is back to normal, the evidence says how long it was -----
        sc.ship(sc.writer)
        h.write_config(defaults={"max_action_ratio": 1.0}, **config)
        states = h.run()
        assert states["lock_users"] == "success" and states["write_evidence"] == "success", states
        subject, _ = sinks.one_alert()
        assert subject == "[inactive_users] test-aurora: 3 locked, 1 dropped"
    outcomes = sc.sql("SELECT outcome, task_id, run_id FROM inactive_users.run_outcome ORDER BY recorded_at")
    assert [o[:2] for o in outcomes] == [
        ("nothing_to_do", "nothing_to_do"),
        ("refused", "ingest_logins"),
        ("refused", "plan"),
        ("acted", "delete_users"),
    ]
    manifests = {}
    for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]:
        if o["Key"].endswith(".json"):
            doc = json.loads(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
            manifests[doc["run_id"]] = doc["unprotected_before_run"]
    first, acted = outcomes[0][2], outcomes[-1][2]
    assert manifests[first] is None  # nothing had gone unprotected before the first run
    before = manifests[acted]
    assert before["runs_not_acted"] == 2 and 4.0 <= before["days"] < 4.1, before
