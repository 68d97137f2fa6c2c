"""The job user exactly as README.md tells a DBA to create it: not a superuser."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from psycopg import sql

from tests.scenario import ROLE_PASSWORD, Scenario

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
JOB_USER = "inactive_users_job"


def readme_sql(containing: str) -> str:
    [found] = [b for b in re.findall(r"```sql\n(.*?)```", README, flags=re.S) if containing in b]
    return found.strip()


def create_job_user(sc: Scenario, managed: Iterable[str]) -> None:
    """Run the README's grants (PostgreSQL 16+: ADMIN on each managed role) and use that user."""
    for statement in readme_sql("CREATE ROLE inactive_users_job").split(";"):
        if statement.strip():
            sc.sql(statement.replace("'change-me'", sql.quote(ROLE_PASSWORD)))
    if sc.pg.binaries.version >= 16:
        template = readme_sql("WITH ADMIN TRUE")
        for role in managed:
            sc.sql(
                template.replace("GRANT app_user TO", f"GRANT {sql.Identifier(role).as_string(sc.admin)} TO")
            )
    sc.use_job_user(JOB_USER, ROLE_PASSWORD)
