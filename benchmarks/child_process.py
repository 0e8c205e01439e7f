"""Running a benchmark's way in a fresh process: its environment, and the JSON line it prints last.

A fresh process measures what a user's process would hold (peak RSS starts at zero, nothing another way
allocated and freed first) and pays what a user's process pays (imports, loading, compiling).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any


def child_env(**variables: str | None) -> dict[str, str]:
    """This process's environment with ``variables`` set (None: removed, e.g. ``MEDSEGANY_COMPILE=None``
    for the CLI's default). The child imports ``medsegany`` as this process does (the installed package,
    editable in the checkout's venv), and each script puts its own folder on ``sys.path``."""
    env = dict(os.environ)
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_child(command: list[str], env: dict[str, str], what: str) -> subprocess.CompletedProcess:
    """Run ``command`` to its end; RuntimeError naming ``what`` with the end of its stderr when it fails."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def child_json(command: list[str], env: dict[str, str], what: str) -> dict[str, Any]:
    """Run ``command`` (:func:`run_child`) and return the JSON object on the last line it printed."""
    done = run_child(command, env, what)
    return json.loads(done.stdout.strip().splitlines()[-1])
