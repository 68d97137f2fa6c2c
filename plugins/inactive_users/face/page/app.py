"""The status pages: a FastAPI app the plugin mounts under ``/inactive-users`` in the api-server:
the fleet (``/``, ``/api/clusters``, ``/clusters.csv``) and each cluster (``/clusters/<id>``).

Plugin apps get no authorization from Airflow, so every route asks Airflow's own dependencies:
``get_user`` reads the same JWT the UI and the REST API use (``Authorization: Bearer``, or the UI's
``_token`` cookie) and answers 401 without one; ``requires_access_dag`` asks the auth manager
whether that user may read the cluster's DAG (403 if not). An unknown cluster is a 404, and a
cluster that cannot be read a 503 whose text names no host, user, password or DSN.
"""

from __future__ import annotations

import logging
import secrets
from datetime import date
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from inactive_users.core import config
from inactive_users.core.alerts import scrub
from inactive_users.core.config import ClusterConfig
from inactive_users.face.compat import GetUserDep, requires_access_dag
from inactive_users.face.config_file import config_file
from inactive_users.face.page import fleet, queries, render, runs
from inactive_users.face.page.urls import URL_PREFIX, base_path
from inactive_users.postgres.instances import bounded_connector

log = logging.getLogger("inactive_users.face.page")


class ClusterUnreachable(Exception):
    """The cluster's state could not be read; the message is safe to show."""

    def __init__(self, cluster_id: str, message: str) -> None:
        super().__init__(message)
        self.cluster_id = cluster_id


def _clusters() -> list[ClusterConfig]:
    """The configured clusters, read per request: a config change shows without a restart."""
    return config.load(config_file()).clusters


def _cluster(cluster_id: str) -> ClusterConfig:
    found = next((c for c in _clusters() if c.cluster_id == cluster_id), None)
    if found is None:
        raise HTTPException(404, f"no cluster {cluster_id!r} in the inactive_users configuration")
    return found


def _authorize(request: Request, user: Any, cluster: ClusterConfig) -> ClusterConfig:
    """403 unless the auth manager lets ``user`` read the cluster's DAG (Airflow's own check)."""
    requires_access_dag("GET", param_dag_id=cluster.dag_id)(request, user)
    return cluster


def readable_cluster(cluster_id: str, request: Request, user: GetUserDep) -> ClusterConfig:
    """The user (401), then the cluster (404), then the user's access to its DAG (403)."""
    return _authorize(request, user, _cluster(cluster_id))


ReadableCluster = Annotated[ClusterConfig, Depends(readable_cluster)]


def readable_clusters(request: Request, user: GetUserDep) -> list[ClusterConfig]:
    """The configured clusters whose DAG the user may read (the same check as each cluster's page);
    the others are left out, not shown as forbidden."""
    found = []
    for cluster in _clusters():
        try:
            _authorize(request, user, cluster)
        except HTTPException as exc:
            if exc.status_code != 403:
                raise
            continue
        found.append(cluster)
    return found


ReadableClusters = Annotated[list[ClusterConfig], Depends(readable_clusters)]


def _fleet(clusters: list[ClusterConfig]) -> list[fleet.FleetRow]:
    dag_ids = [c.dag_id for c in clusters]
    return fleet.read_fleet(clusters, runs.latest_runs(dag_ids), runs.awaiting_approval(dag_ids))


def _page(body: str, nonce: str) -> HTMLResponse:
    """An HTML page whose only script and style are its own (the nonce), shown in the UI's frame."""
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    )
    return HTMLResponse(body, headers={"Content-Security-Policy": csp, "Cache-Control": "no-store"})


def _status(cluster: ClusterConfig) -> queries.ClusterStatus:
    try:
        return queries.read_status(cluster, bounded_connector(cluster.postgres_conn_id))
    except Exception as exc:  # psycopg errors, a missing Airflow connection, the IAM token call
        # The log keeps what went wrong (credentials scrubbed); the page says only that.
        log.warning("status page: cluster %s could not be read: %s", cluster.cluster_id, scrub(str(exc)))
        why = queries.why_unreadable(exc)
        raise ClusterUnreachable(
            cluster.cluster_id,
            f"Cluster {cluster.cluster_id} cannot be reached: {why}. The api-server's log says more.",
        ) from None


def _wants_html(request: Request) -> bool:
    path = request.url.path
    return "/api/" not in path and not path.endswith(".csv")


def create_app() -> FastAPI:
    app = FastAPI(title="inactive_users status page", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = str(exc.detail)
        if not _wants_html(request):
            return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)
        link = None
        if exc.status_code == 401:
            from inactive_users.face.compat import get_auth_manager

            link = ("Log in to Airflow", get_auth_manager().get_url_login(next_url=str(request.url)))
        title = {401: "Not logged in", 403: "Forbidden", 404: "Not found"}.get(exc.status_code, "Error")
        return HTMLResponse(render.error_page(title, detail, exc.status_code, link), exc.status_code)

    @app.exception_handler(ClusterUnreachable)
    async def unreachable(request: Request, exc: ClusterUnreachable) -> Response:
        if not _wants_html(request):
            return JSONResponse({"detail": str(exc), "cluster_id": exc.cluster_id}, 503)
        return HTMLResponse(render.error_page("Cluster cannot be reached", str(exc), 503), 503)

    @app.get("/api/clusters/{cluster_id}/roles")
    def roles_json(cluster: ReadableCluster) -> JSONResponse:
        s = _status(cluster)
        return JSONResponse(
            {
                "cluster_id": s.cluster_id,
                "dag_id": s.dag_id,
                "as_of": s.as_of.isoformat(),
                "lock_after_days": s.lock_after_days,
                "delete_after_days": s.delete_after_days,
                "counts": s.counts(),
                "roles": [r.as_json() for r in s.roles],
                "instances": [i.as_json() for i in s.instances],
            }
        )

    @app.get("/clusters/{cluster_id}/roles.csv")
    def roles_csv(cluster: ReadableCluster) -> Response:
        s = _status(cluster)
        name = f"inactive_users_{s.cluster_id}_{date.isoformat(s.as_of.date())}.csv"
        return Response(
            render.roles_csv(s.roles),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/clusters/{cluster_id}", response_class=HTMLResponse)
    def cluster_page(cluster: ReadableCluster) -> HTMLResponse:
        s = _status(cluster)
        nonce = secrets.token_urlsafe(16)
        base = base_path() + URL_PREFIX
        body = render.status_page(
            s,
            nonce,
            csv_url=f"{base}/clusters/{s.cluster_id}/roles.csv",
            json_url=f"{base}/api/clusters/{s.cluster_id}/roles",
        )
        return _page(body, nonce)

    @app.get("/", response_class=HTMLResponse)
    def fleet_page(clusters: ReadableClusters) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        base = base_path() + URL_PREFIX
        body = render.fleet_page(
            _fleet(clusters), nonce, csv_url=f"{base}/clusters.csv", json_url=f"{base}/api/clusters"
        )
        return _page(body, nonce)

    @app.get("/api/clusters")
    def fleet_json(clusters: ReadableClusters) -> JSONResponse:
        return JSONResponse({"clusters": [r.as_json() for r in _fleet(clusters)]})

    @app.get("/clusters.csv")
    def fleet_csv(clusters: ReadableClusters) -> Response:
        rows = _fleet(clusters)
        name = f"inactive_users_fleet_{date.today().isoformat()}.csv"
        return Response(
            render.fleet_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/dags/{dag_id}")
    def dag_tab(dag_id: str, request: Request, user: GetUserDep) -> RedirectResponse:
        """The DAG page's tab (external_views shows it on every DAG): ours lead to their cluster."""
        cluster = next((c for c in _clusters() if c.dag_id == dag_id), None)
        if cluster is None:
            raise HTTPException(
                404,
                f"DAG {dag_id!r} is not an inactive_users DAG: this tab shows the status of the "
                f"clusters in the inactive_users configuration (DAG ids starting {config.DAG_ID_PREFIX!r}).",
            )
        _authorize(request, user, cluster)
        return RedirectResponse(f"{base_path()}{URL_PREFIX}/clusters/{cluster.cluster_id}", 307)

    return app
