"""Reading a Compose env file (``.env.example``) the way Compose does: ``KEY=value`` lines, quotes stripped.

Why here: ``scripts/scale.py`` starts workers with the environment docker-compose.yml gives them, and
``tests/test_compose.py`` checks that every variable the file names is one the CLI reads; both must read the
file the same way. Commented-out assignments (``# KEY=value``) are the documented optional settings, so
they are returned apart rather than dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

_ASSIGNMENT = re.compile(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_assignments(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(active, commented-out) ``KEY=value`` assignments of the env file at ``path``, values unquoted."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = _ASSIGNMENT.match(line)
        if m:
            value = m.group(3).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            (commented if m.group(1) else active)[m.group(2)] = value
    return active, commented
