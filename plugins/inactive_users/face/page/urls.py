"""Where the status page lives (light: the plugin imports it in every Airflow component)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

URL_PREFIX = "/inactive-users"


def base_path() -> str:
    """The path of ``[api] base_url`` (Airflow served under a sub-path), without the trailing slash."""
    from inactive_users.face.compat import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


def external_views() -> list[dict[str, Any]]:
    """The fleet page in the UI's navigation, and the tab on each DAG page (the UI replaces
    ``{DAG_ID}``); the UI shows both in a frame.

    The UI offers the tab on every DAG; the page answers 404 for DAGs that are not ours.
    """
    return [
        {
            "name": "Inactive users",
            "href": f"{base_path()}{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "inactive-users-fleet",
        },
        {
            "name": "Inactive users",
            "href": f"{base_path()}{URL_PREFIX}/dags/{{DAG_ID}}",
            "destination": "dag",
            "url_route": "inactive-users",
        },
    ]
