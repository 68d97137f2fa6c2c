"""Every Airflow name whose place or behaviour differs between the releases we support.

Supported and tested: Airflow 3.1, 3.2 and 3.3 (3.1.8, 3.2.2 and 3.3.2: ``make test`` runs the
suite on the pinned 3.3, ``make test-compat`` on 3.1 and 3.2). The rest of the package imports
Airflow's names from here and never checks a version itself; found by installing each release and
importing, as Airflow's own providers do (``airflow/providers/amazon/version_compat.py``).

Importing this module on an Airflow older than 3.1 raises :class:`AirflowVersionError`, so the DAG
file's import error (and the plugin's load error) says which version is needed, not which name is
missing. The face imports Airflow through this module, so the check runs before any other import.

The api-server's auth helpers, the HITL operator and DagBag are imported when first asked for
(``__getattr__`` below): the scheduler, DAG processor and workers load the plugin and the DAG
file too, and need none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import airflow
from packaging.version import Version

#: The oldest Airflow minor release the package runs on; older gets AirflowVersionError.
MINIMUM_AIRFLOW = (3, 1)
AIRFLOW_VERSION = Version(airflow.__version__)


class AirflowVersionError(ImportError):
    """This Airflow is older than the package supports."""


def check_airflow_version(version: str) -> None:
    """Raise :class:`AirflowVersionError` naming ``version`` and the minimum when it is too old."""
    if Version(version).release[:2] < MINIMUM_AIRFLOW:
        needed = ".".join(map(str, MINIMUM_AIRFLOW))
        raise AirflowVersionError(
            f"inactive_users needs Apache Airflow {needed} or newer; this is Airflow {version}. "
            f"Upgrade Airflow to {needed}, 3.2 or 3.3 (with its constraints file), or keep this "
            "deployment on a release of inactive_users that supports it."
        )


check_airflow_version(airflow.__version__)

#: Airflow 3.2 and later (AIRFLOW_VERSION.release, so a pre-release of 3.2.0 counts as 3.2).
AIRFLOW_V_3_2_PLUS = AIRFLOW_VERSION.release[:2] >= (3, 2)
#: Airflow 3.3 and later.
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION.release[:2] >= (3, 3)

# The same place in 3.1, 3.2 and 3.3: AirflowPlugin (external_views and fastapi_apps are plugin
# fields since 3.1) and the Task SDK's public names.
from airflow.plugins_manager import AirflowPlugin  # noqa: E402
from airflow.sdk import DAG, BaseNotifier, Param, TriggerRule, get_parsing_context, task  # noqa: E402

# AirflowFailException, AirflowSkipException: airflow.sdk.exceptions since 3.2; in 3.1 only
# airflow.exceptions has them (deprecated there since 3.3).
try:
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowFailException, AirflowSkipException  # type: ignore[no-redef]

# Airflow's configuration: airflow.sdk.conf since 3.2; airflow.configuration.conf in 3.1.
try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1
    from airflow.configuration import conf  # type: ignore[assignment]

#: The task state a HITL task (our approve_drops) waits in for its answer. Airflow 3.3 parks it in
#: ``awaiting_input`` and needs no triggerer; in 3.1 and 3.2 it is ``deferred`` to the standard
#: provider's HITLTrigger, so a triggerer must run for the answer (or the timeout) to resume it.
HITL_WAIT_STATE = "awaiting_input" if AIRFLOW_V_3_3_PLUS else "deferred"
#: ``[core] multi_team`` and ``airflow teams``: since 3.2 (3.1 has no teams, so no per-team DAG access).
MULTI_TEAM = AIRFLOW_V_3_2_PLUS

if TYPE_CHECKING:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.serialization.serialized_objects import DagSerialization

#: Imported on first use, each from the first of its places that exists (``module`` for the same
#: name there, ``module:name`` for another name).
_LAZY: dict[str, tuple[str, ...]] = {
    # the api-server's auth helpers the status page uses: the same place in 3.1-3.3
    "GetUserDep": ("airflow.api_fastapi.core_api.security",),
    "requires_access_dag": ("airflow.api_fastapi.core_api.security",),
    "get_auth_manager": ("airflow.api_fastapi.app",),
    # the HITL operators: the standard provider's, on Airflow 3.1+ (older: the provider refuses)
    "ApprovalOperator": ("airflow.providers.standard.operators.hitl",),
    # DagBag (tests and tools): airflow.dag_processing.dagbag since 3.2, airflow.models.dagbag in 3.1
    "DagBag": ("airflow.dag_processing.dagbag", "airflow.models.dagbag"),
    # what serializes a DAG as the dag-processor stores it (tests, bench): DagSerialization since
    # 3.2; in 3.1 SerializedDAG (its to_dict)
    "DagSerialization": (
        "airflow.serialization.serialized_objects",
        "airflow.serialization.serialized_objects:SerializedDAG",
    ),
}


def __getattr__(name: str) -> Any:
    places = _LAZY.get(name)
    if places is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for place in places[:-1]:
        try:
            value = _load(place, name)
        except (ImportError, AttributeError):
            continue
        break
    else:
        value = _load(places[-1], name)
    globals()[name] = value
    return value


def _load(place: str, name: str) -> Any:
    module, _, attr = place.partition(":")
    return getattr(importlib.import_module(module), attr or name)


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "DAG",
    "HITL_WAIT_STATE",
    "MINIMUM_AIRFLOW",
    "MULTI_TEAM",
    "AirflowFailException",
    "AirflowPlugin",
    "AirflowSkipException",
    "AirflowVersionError",
    "ApprovalOperator",
    "BaseNotifier",
    "DagBag",
    "DagSerialization",
    "GetUserDep",
    "Param",
    "TriggerRule",
    "check_airflow_version",
    "conf",
    "get_auth_manager",
    "get_parsing_context",
    "requires_access_dag",
    "task",
]
