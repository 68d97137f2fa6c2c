"""Provider metadata so Airflow lists this package among its providers."""

from __future__ import annotations

from typing import Any

from inactive_users import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "inactive-users",
        "name": "Inactive Users",
        "description": "Lock, drop or flag dormant PostgreSQL login roles found from connection logs.",
        "versions": [__version__],
        "plugins": [
            {"name": "inactive_users", "plugin-class": "inactive_users.face.plugin.InactiveUsersPlugin"}
        ],
    }
