"""Running a benchmark's way in a fresh process: its environment, and the JSON line it prints last.

A fresh process measures what a user's process would hold (peak RSS starts at zero, nothing another way
allocated and freed first) and pays what a user's process pays (imports, loading, compiling).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]


def child_env(**variables: str | None) -> dict[str, str]:
    """This process's environment with MedSegAnyLib importable as ``medsegany`` from the checkout, and
    ``variables`` set (None: removed, e.g. ``MEDSEGANY_COMPILE=None`` for the CLI's default)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")])
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def child_json(command: list[str], env: dict[str, str], what: str) -> dict[str, Any]:
    """Run ``command`` and return the JSON object on the last line it printed; RuntimeError naming
    ``what`` with the end of its stderr when it fails."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
