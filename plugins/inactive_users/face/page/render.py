"""The pages' HTML (Jinja templates, autoescaped), the cluster page's chart, and the CSVs for auditors."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import jinja2

from inactive_users.face.page.fleet import CSV_COLUMNS as FLEET_COLUMNS
from inactive_users.face.page.fleet import FleetRow
from inactive_users.face.page.queries import ClusterStatus, RoleRow

#: Columns of the CSV, in order (the JSON has the same keys).
CSV_COLUMNS = (
    "name",
    "status",
    "last_login",
    "days_inactive",
    "days_until_lock",
    "days_until_drop",
    "reason",
    "status_reason",
    "blockers",
    "last_action",
    "last_action_at",
    "last_action_reason",
)
#: A cell starting with one of these is a formula to a spreadsheet (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("inactive_users.face.page", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    y: float
    height: float
    label: str  # "30-39 days: 4 roles"


@dataclass(frozen=True)
class Chart:
    """Roles by days since last login, in SVG coordinates, with the thresholds marked."""

    width: int
    height: int
    bars: list[Bar]
    markers: list[tuple[float, str]]  # (x, "lock 90 d")
    axis: list[tuple[float, str]]  # ticks under the bars


def chart(status: ClusterStatus, width: int = 640, height: int = 160) -> Chart:
    days = [r.days_inactive for r in status.roles if r.days_inactive is not None]
    thresholds = [d for d in (status.lock_after_days, status.delete_after_days) if d is not None]
    top = max([*days, *thresholds, 10])
    step = max(1, math.ceil((top + 1) / 20))  # about 20 bins, whole days each
    bins = [0] * (top // step + 1)
    for d in days:
        bins[d // step] += 1
    plot_h, scale_x = height - 20, width / (len(bins) * step)
    tallest = max([*bins, 1])
    bars = []
    for i, n in enumerate(bins):
        if n:
            h = plot_h * n / tallest
            lo, hi = i * step, i * step + step - 1
            span = f"{lo} days" if step == 1 else f"{lo}-{hi} days"
            bars.append(Bar(i * step * scale_x + 1, step * scale_x - 2, plot_h - h, h, f"{span}: {n} roles"))
    markers = []
    for label, limit in (("lock", status.lock_after_days), ("drop", status.delete_after_days)):
        if limit is not None:
            markers.append((limit * scale_x, f"{label} {limit} d"))
    ticks = [(i * step * scale_x, str(i * step)) for i in range(0, len(bins), max(1, len(bins) // 5))]
    return Chart(width, height, bars, markers, ticks)


def status_page(status: ClusterStatus, nonce: str, csv_url: str, json_url: str) -> str:
    return (
        _templates()
        .get_template("cluster.html")
        .render(
            s=status,
            counts=sorted(status.counts().items()),
            chart=chart(status),
            nonce=nonce,
            csv_url=csv_url,
            json_url=json_url,
            columns=CSV_COLUMNS,
        )
    )


def error_page(title: str, message: str, status_code: int, link: tuple[str, str] | None = None) -> str:
    return (
        _templates()
        .get_template("error.html")
        .render(title=title, message=message, status_code=status_code, link=link)
    )


def safe_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: a leading formula character gets a ``'`` before it."""
    if value is None:
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """A CSV a spreadsheet opens as text: the header, then each row's ``columns``, formula-safe."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([safe_cell(row.get(c)) for c in columns])
    return out.getvalue()


def roles_csv(roles: list[RoleRow]) -> str:
    return to_csv(CSV_COLUMNS, ({c: getattr(r, c) for c in CSV_COLUMNS} for r in roles))


def fleet_csv(rows: Sequence[FleetRow]) -> str:
    return to_csv(FLEET_COLUMNS, (r.values() for r in rows))


def fleet_page(rows: Sequence[FleetRow], nonce: str, csv_url: str, json_url: str) -> str:
    kinds = sorted({r.kind for r in rows})
    return (
        _templates()
        .get_template("fleet.html")
        .render(
            rows=rows,
            kinds=kinds,
            nonce=nonce,
            csv_url=csv_url,
            json_url=json_url,
            unreachable=sum(1 for r in rows if r.state is None),
            past_lock=sum(r.state.roles.past_lock for r in rows if r.state),
            past_drop=sum(r.state.roles.past_drop for r in rows if r.state),
        )
    )
