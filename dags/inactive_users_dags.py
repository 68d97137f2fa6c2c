"""Airflow DAG file: one DAG per cluster listed in inactive_users.yaml (or INACTIVE_USERS_CONFIG).

Parsing this file only reads the YAML; all database and AWS work happens inside the tasks.
"""

from inactive_users.face.dag_factory import build_dags

globals().update(build_dags())
