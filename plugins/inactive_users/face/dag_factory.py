"""Build one DAG per configured cluster.

Parse-time work is reading the YAML and creating DAG objects: no database or AWS calls, and the
Airflow hooks are imported inside tasks (psycopg, though, comes in through ``steps``). A bad cluster
entry becomes an import error that names it, while the other clusters' DAGs still load.

Airflow parses the file every few minutes and a fleet has hundreds of clusters, so the cost per DAG
matters (bench/bench_fleet_parse.py), and the dag-processor serializes every DAG on every pass. The
DAGs are built through Airflow's public API only (``DAG``, ``dag.params``, TaskFlow tasks). What is
saved is saved in our own code: the trigger form is given to the DAG once its tasks exist
(``_with_trigger_form``), each task's ``multiple_outputs`` is stated rather than inferred, each
step's signature is computed once (``_signature_once``), and the garbage collector waits
(``_gc_paused``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from os import PathLike
from types import CodeType
from typing import Any, TypeVar

from inactive_users.core import config
from inactive_users.core.config import ClusterConfig, LoadedConfig
from inactive_users.face import steps
from inactive_users.face.compat import DAG, Param, TriggerRule, get_parsing_context, task
from inactive_users.face.config_file import config_file

TASK_IDS = (
    "preflight",
    "sync_roles",
    "ingest_logins",
    "plan",
    "choose_actions",
    "lock_users",
    "delete_users",
    "nothing_to_do",
    "alert",
    "write_evidence",
    "report",
)
CONFIG_ERRORS_DAG_ID = "inactive_users__config_errors"

_Fn = TypeVar("_Fn", bound=Callable[..., Any])
_SIGNATURES: dict[CodeType, inspect.Signature] = {}


class ConfigErrorsDag(DAG):
    """Stands for the bad entries: Airflow's DagBag records its validation error as an import error."""

    config_errors: tuple[str, ...] = ()

    def validate(self) -> None:
        raise config.ConfigError(
            "invalid inactive_users cluster entries (the other clusters' DAGs are loaded): "
            + " | ".join(self.config_errors)
        )


def params_for(cluster: ClusterConfig) -> dict[str, Param]:
    """The trigger form, as new objects on every call.

    Airflow sets a Param's value when it resolves a run's conf, so no two DAGs may share one.
    """
    s = cluster.settings
    return {
        "dry_run": Param(s.dry_run, type="boolean", description="Plan and alert only; change nothing."),
        "lock_after_days": Param(
            s.lock_after_days,
            type=["integer", "null"],
            minimum=1,
            description="Lock after this many days; null: never.",
        ),
        "delete_after_days": Param(
            s.delete_after_days,
            type=["integer", "null"],
            minimum=1,
            description="Drop (or flag ReadyToDelete) after this many days; null: never.",
        ),
        "exclude_users": Param(
            list(s.exclude_users),
            type="array",
            items={"type": "string"},
            description="Roles never touched in this run (added to the configured list).",
        ),
        "unlock_users": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Unlock these roles first (restores their attributes).",
        ),
        "as_of": Param(
            None,
            type=["string", "null"],
            description="ISO-8601 evaluation time, e.g. 2027-03-01T00:00:00Z; only with dry_run: true.",
        ),
        "override_retention": Param(
            False,
            type="boolean",
            description="Act although logins may have aged out of the log group (the retention "
            "guard's refusal); recorded in action_history.",
        ),
    }


def _signature_once(fn: _Fn) -> _Fn:
    """Attach the task function's signature, computed once per step rather than ~5 times per task.

    Airflow inspects a task function's signature once per operator class and again to bind it.
    Every cluster's closure of a step has the same code and so the same signature, and
    ``inspect.signature`` returns an attached ``__signature__`` as it is.
    """
    code = fn.__code__
    if code not in _SIGNATURES:
        _SIGNATURES[code] = inspect.signature(fn)
    fn.__signature__ = _SIGNATURES[code]  # type: ignore[attr-defined]
    return fn


def build_dag(cluster: ClusterConfig) -> DAG:
    """The cluster's DAG, with the trigger form as its params.

    For a scheduled DAG Airflow validates each param's default here and raises ``ValueError``
    ("Dag '<dag id>' is not allowed to define a Schedule, ...") from the ``ParamValidationError``
    that names the param; the config's own checks reject such values first, naming the entry.
    """
    on_failure = functools.partial(steps.on_failure, cluster)
    default_args: dict[str, Any] = {
        "owner": "dba",
        "retries": cluster.retries,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": on_failure,
    }
    with DAG(
        dag_id=cluster.dag_id,
        description=f"Lock / drop dormant PostgreSQL login roles on {cluster.cluster_id}",
        schedule=cluster.schedule,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        default_args=default_args,
        tags=["inactive_users", "security", "postgres"],
        doc_md=_doc(cluster),
    ) as dag:
        # multiple_outputs is what Airflow would infer from the return annotation, with a
        # get_type_hints() call per task
        @task(task_id="preflight", multiple_outputs=True)
        @_signature_once
        def preflight(**context: Any) -> dict[str, Any]:
            return steps.preflight(cluster, context)

        @task(task_id="sync_roles", multiple_outputs=True)
        @_signature_once
        def sync_roles(**context: Any) -> dict[str, Any]:
            return steps.sync_roles(cluster, context)

        # A pool shared by the clusters of one account and region bounds how many read its
        # CloudWatch Logs quota at once; without one the task runs in Airflow's default pool.
        ingest_pool: dict[str, Any] = {"pool": cluster.ingest_pool} if cluster.ingest_pool else {}

        @task(task_id="ingest_logins", multiple_outputs=True, **ingest_pool)
        @_signature_once
        def ingest_logins(**context: Any) -> dict[str, Any]:
            return steps.ingest_logins(cluster, context)

        @task(task_id="plan", multiple_outputs=True)
        @_signature_once
        def plan(**context: Any) -> dict[str, Any]:
            return steps.plan(cluster, context)

        @task.branch(task_id="choose_actions", multiple_outputs=False)
        @_signature_once
        def choose_actions(**context: Any) -> list[str]:
            return steps.choose_actions(cluster, context)

        @task(task_id="lock_users", multiple_outputs=True)
        @_signature_once
        def lock_users(**context: Any) -> dict[str, Any]:
            return steps.lock_users(cluster, context)

        # runs after lock_users when both were chosen, alone when only it was
        @task(
            task_id="delete_users",
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
            multiple_outputs=True,
        )
        @_signature_once
        def delete_users(**context: Any) -> dict[str, Any]:
            return steps.delete_users(cluster, context)

        @task(task_id="nothing_to_do", multiple_outputs=False)
        @_signature_once
        def nothing_to_do(**context: Any) -> None:
            steps.nothing_to_do(cluster, context)

        # with approvals, a rejection skips delete_users and leaves the alert no successful upstream
        # when nothing was locked: it runs anyway, and tells who rejected
        @task(
            task_id="alert",
            trigger_rule=(
                TriggerRule.NONE_FAILED
                if cluster.settings.approve_drops
                else TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
            ),
            retries=cluster.retries,
            multiple_outputs=True,
        )
        @_signature_once
        def alert(**context: Any) -> dict[str, Any]:
            return steps.alert(cluster, context)

        # after the actions, whichever ran or failed: the evidence shows the state they left
        # (the task skips itself when the plan did not finish, in a dry run, or when unconfigured)
        @task(task_id="write_evidence", trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=True)
        @_signature_once
        def write_evidence(**context: Any) -> dict[str, Any]:
            return steps.write_evidence(cluster, context)

        @task(task_id="report", trigger_rule=TriggerRule.ALL_DONE, retries=0, multiple_outputs=True)
        @_signature_once
        def report(**context: Any) -> dict[str, Any]:
            return steps.report(cluster, context)

        branch = choose_actions()
        lock, delete, idle = lock_users(), delete_users(), nothing_to_do()
        preflight() >> sync_roles() >> ingest_logins() >> plan() >> branch
        acts = [lock, delete, idle]
        if cluster.settings.approve_drops:
            # Drops wait for a DBA (a lock does not): the branch follows approve_drops, not
            # delete_users. Its only downstream task is delete_users, the one a rejection skips.
            from inactive_users.face.approval import DropApproval

            approve = DropApproval(
                cluster=cluster, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, retries=cluster.retries
            )
            branch >> [lock, approve, idle]
            lock >> approve >> delete
        else:
            branch >> [lock, delete, idle]
            lock >> delete
        notify, evidence = alert(), write_evidence()
        acts >> notify
        acts >> evidence
        [notify, evidence] >> report()
    return _with_trigger_form(dag, cluster)


def _with_trigger_form(dag: DAG, cluster: ClusterConfig) -> DAG:
    """The DAG's params (the trigger form), given once its tasks exist, so they stay the DAG's own.

    Given to ``DAG()``, Airflow deep-copies them into every task built in the DAG's context, and
    serializing a task (the dag-processor does it for every DAG on every pass) resolves each copy
    twice, each time through ``jsonschema.validate``, which checks the schema against its
    metaschema again: 90% of a DAG's serialization (about 50 of 55 ms, 7 params x 11 tasks). A task
    gets the DAG's params at run time anyway (``process_params`` merges the DAG's, then the task's).
    The assignment runs the same converter and validator as the constructor: a scheduled DAG whose
    defaults do not validate is refused here, as it would be there.
    """
    dag.params = params_for(cluster)  # type: ignore[assignment]  # attrs makes it a ParamsDict
    return dag


def config_errors_dag(loaded: LoadedConfig) -> DAG:
    dag = ConfigErrorsDag(
        dag_id=CONFIG_ERRORS_DAG_ID,
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        description=f"Errors in {loaded.path}",
    )
    dag.config_errors = tuple(loaded.errors)
    return dag


def build_dags(path: str | PathLike[str] | None = None) -> dict[str, DAG]:
    """All DAGs of the config file (default: ``config_file()``), keyed by DAG id (for the globals)."""
    loaded = config.load(path if path is not None else config_file())
    wanted = get_parsing_context().dag_id  # set when a worker parses the file to run one task
    with _gc_paused():
        dags = {c.dag_id: build_dag(c) for c in loaded.clusters if wanted is None or c.dag_id == wanted}
    if loaded.errors:
        dags[CONFIG_ERRORS_DAG_ID] = config_errors_dag(loaded)
    return dags


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while DAGs are built.

    Each DAG allocates thousands of objects that all stay alive. With the collector on, its full
    passes walk them, and all of Airflow's objects, again and again for nothing: 10-15% of the
    time of parsing a large fleet.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _doc(cluster: ClusterConfig) -> str:
    s = cluster.settings
    return (
        f"### Inactive PostgreSQL users on `{cluster.cluster_id}`\n\n"
        f"Lock after **{s.lock_after_days}** days ({s.lock_method}), "
        f"drop after **{s.delete_after_days}** days "
        f"(ReadyToDelete when objects depend on the role); dry run: **{s.dry_run}**; "
        f"safety guard: at most {s.max_action_ratio:.0%} of candidates per run.\n\n"
        + (
            "Drops wait for a DBA: task `approve_drops` asks on the Required Actions page "
            f"(rejected after {cluster.approval_timeout_hours:g} hours without an answer).\n\n"
            if s.approve_drops
            else ""
        )
        + "Trigger with `unlock_users` to unlock roles; with `dry_run: true` and `as_of` to preview "
        "a date.\n\n"
        f"State: schema `{s.state_schema}` in the target database "
        "(`user_login_status`, `action_history`, `planned_action`)."
        + (
            f" Evidence for auditors: `{cluster.evidence.s3_uri}{cluster.cluster_id}/`."
            if cluster.evidence
            else ""
        )
    )
