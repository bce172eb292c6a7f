"""The chaos run (bench/chaos.py) in its short mode with a fixed seed: real processes,
faults and clock skew, checked at a real SMTP server and in the execution records. The
program exits 0 only when no fatal check found anything; its report is the evidence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_short_chaos_run_breaks_no_guarantee() -> None:
    command = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--seed", "1", "--minutes", "2"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
