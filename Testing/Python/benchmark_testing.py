"""Running a benchmark script under ``benchmarks/`` as its users do (a subprocess), for the harness tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(
    script: str, output: Path, *args: str, timeout: float = 300, env: dict | None = None
) -> dict:
    """Run ``benchmarks/<script>`` with ``args`` and ``--output output``; its JSON report. A failure shows
    the script's last stderr lines."""
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--output", str(output)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(Path(output).read_text(encoding="utf-8"))
