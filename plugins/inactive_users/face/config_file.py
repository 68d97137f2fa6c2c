"""Where the clusters' YAML is, the same in every Airflow component (the api-server's page included)."""

from __future__ import annotations

from pathlib import Path

from inactive_users.core import config
from inactive_users.face.compat import conf


def config_file() -> Path:
    """``$INACTIVE_USERS_CONFIG``, else ``inactive_users.yaml`` in Airflow's ``[core] dags_folder``."""
    return config.default_path(conf.get("core", "dags_folder"))
