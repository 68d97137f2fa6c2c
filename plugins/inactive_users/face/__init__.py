"""The Airflow face: DAG factory, task steps, notifiers, the plugin and its status page."""
