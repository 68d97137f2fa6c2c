"""Airflow plugin entry point (``airflow.plugins``), so Airflow reports the package as loaded."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class InactiveUsersPlugin(AirflowPlugin):
    name = "inactive_users"
