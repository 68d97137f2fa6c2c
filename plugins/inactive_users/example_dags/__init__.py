"""The DAG file to copy into your Airflow DAG folder (README: Install into your Airflow)."""
