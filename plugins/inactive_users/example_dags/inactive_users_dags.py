"""Airflow DAG file: one inactive_users DAG per cluster in inactive_users.yaml.

Copy this file into Airflow's DAG folder. The YAML is read from $INACTIVE_USERS_CONFIG, else from
inactive_users.yaml at the top of Airflow's DAG folder ([core] dags_folder). Parsing reads only
the YAML; all database and AWS work happens inside the tasks.
"""

from inactive_users.face.dag_factory import build_dags

globals().update(build_dags())
