"""Provider metadata, as Airflow reads it from the ``apache_airflow_provider`` entry point.

``airflow providers list`` shows it; Airflow validates it against its provider_info schema
(tests/test_package.py does too). The package adds a plugin (the status page and its DAG tab) and
no hook, operator or notifier classes of its own (it uses the amazon, postgres, standard, slack
and smtp providers' ones).
"""

from __future__ import annotations

from typing import Any

from inactive_users import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "inactive-users",
        "name": "Inactive Users",
        "description": "Lock, drop or flag dormant PostgreSQL login roles found from connection logs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "PostgreSQL inactive login roles",
                "external-doc-url": "https://www.postgresql.org/docs/current/runtime-config-logging.html",
                "tags": ["software", "aws"],
            }
        ],
        "plugins": [
            {"name": "inactive_users", "plugin-class": "inactive_users.face.plugin.InactiveUsersPlugin"}
        ],
    }
