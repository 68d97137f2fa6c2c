"""The one error type for known set-up problems of the demo and the test suite.

Its message is one line naming the problem and the fix; the entry points (``devstack.demo`` and
the fixtures in ``tests/conftest.py``) print it instead of a traceback.  Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class SetupError(RuntimeError):
    """A known set-up problem (no PostgreSQL user, unreachable binaries, no free port, ...)."""
