"""`make ui` starts the demo's stage under a live Airflow, serves the UI, and stops it all on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` now (Linux /proc), whatever its session."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ui_serves_airflow_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INACTIVE_USERS"))}
    env["INACTIVE_USERS_UI_DIR"] = str(tmp_path / "ui")
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.ui"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 280
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.startswith("Press Ctrl-C"):
                break
            lines.append(line)
        out = "".join(lines)
        m = re.search(r"^Airflow UI: (http://127\.0\.0\.1:\d+/)$", out, flags=re.M)
        assert m, out
        url = m.group(1)
        assert "no password; every visitor is an admin" in out
        page = httpx.get(url, trust_env=False, timeout=30, follow_redirects=True)
        assert page.status_code == 200 and "<html" in page.text.lower()
        health = httpx.get(url + "api/v2/monitor/health", trust_env=False, timeout=30).json()
        assert {health[k]["status"] for k in ("scheduler", "triggerer", "dag_processor")} == {"healthy"}
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
        started = _descendants(proc.pid)
        assert len(started) >= 4  # moto and the four Airflow components at least
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            left = {pid: _cmdline(pid) for pid in _descendants(proc.pid) | {proc.pid} if _alive(pid)}
            raise AssertionError(f"still running 120 s after Ctrl-C: {left}\n{''.join(lines)}") from None
    finally:
        if proc.poll() is None:  # a failed test leaves nothing running: its descendants too
            left = _descendants(proc.pid)
            proc.kill()
            proc.wait()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped: Airflow, moto and PostgreSQL" in rest
    assert [pid for pid in started if _alive(pid)] == []
    for port in ports:  # PostgreSQL, moto and the api-server are gone
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
