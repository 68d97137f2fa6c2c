"""The ``name==version`` pins of a requirements or constraints file, for the tests that compare them."""

from __future__ import annotations

import re
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[a-z,]+\])?==([^\s;#]+)")


def pins(path: Path) -> dict[str, str]:
    """Each pinned distribution's lower-cased name and its version (extras and markers dropped)."""
    found = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            found[m.group(1).lower()] = m.group(3)
    return found
