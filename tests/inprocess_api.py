"""Make ``dag.test()`` / ``airflow dags test`` wait for the in-process execution API to start.

Airflow 3.1 and 3.2 start that API's lifespan without waiting for it (3.3 waits for it:
``asyncio.run_coroutine_threadsafe(...).result()`` in ``InProcessExecutionAPI.transport``), so on a
busy machine a task's first call can come first, find no services (``'State' object has no
attribute 'svcs_registry'``) and fail the task. ``wait_for_lifespan()`` makes the transport wait,
as 3.3's does; where it already waits, the wait ends at once. It changes Airflow's test runner
only, never the package; this file is standalone, so a fresh venv without the checkout can run it
(tests/test_installed_wheel.py copies it there).
"""

from __future__ import annotations

import time
from typing import Any


def wait_for_lifespan(timeout: float = 60.0) -> None:
    """The API is an attrs class with slots: its cached ``transport`` is made by its ``__getattr__``
    on first use; wrap that to wait until the lifespan has registered the API's services."""
    from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI

    make = InProcessExecutionAPI.__getattr__
    if getattr(make, "waits_for_lifespan", False):
        return

    def __getattr__(self: Any, name: str) -> Any:
        value = make(self, name)
        if name == "transport":
            deadline = time.monotonic() + timeout
            while getattr(self.app.state, "svcs_registry", None) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the in-process execution API did not start within {timeout:g} s")
                time.sleep(0.01)
        return value

    __getattr__.waits_for_lifespan = True  # type: ignore[attr-defined]
    InProcessExecutionAPI.__getattr__ = __getattr__  # type: ignore[method-assign]


if __name__ == "__main__":  # python inprocess_api.py dags test <dag id>: the CLI, with the wait
    import sys

    from airflow.__main__ import main

    wait_for_lifespan()
    sys.argv = ["airflow", *sys.argv[1:]]
    main()
