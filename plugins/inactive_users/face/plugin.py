"""Airflow plugin entry point (``airflow.plugins``): the status page and its tab on each DAG page."""

from __future__ import annotations

from functools import cache
from typing import Any

from inactive_users.face.compat import AirflowPlugin
from inactive_users.face.page.urls import URL_PREFIX, external_views


@cache
def _fastapi_apps() -> list[dict[str, Any]]:
    from inactive_users.face.page.app import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "inactive_users status page"}]


class _LazyFastAPIApps:
    """Built when the api-server asks: the scheduler, DAG processor and workers load plugins too,
    and importing FastAPI and Airflow's API security there would only slow them down."""

    def __get__(self, obj: object, owner: type | None = None) -> list[dict[str, Any]]:
        return _fastapi_apps()


class InactiveUsersPlugin(AirflowPlugin):
    name = "inactive_users"
    fastapi_apps = _LazyFastAPIApps()
    external_views = external_views()
