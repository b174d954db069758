"""The start-up benchmarks still run (tiny sizes): a benchmark that broke unnoticed reports
nothing when it is needed (benchmarks/pool.py did, when the server stopped sharing its kernel
client). Their figures are read by people, not asserted here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(240)


def _run(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=200,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_pool_benchmark_runs() -> None:
    out = _run("benchmarks/pool.py", "--creates", "3", "--pools", "1,0")
    assert re.search(r"pool 1: total [\d.]+ s, per create p50 [\d.]+ s", out), out
    assert re.search(r"pool 0: total [\d.]+ s", out), out
    assert re.search(r"idle pooled kernel RSS \(all its processes\): [\d.]+ MB", out), out


def test_kernel_start_benchmark_runs() -> None:
    out = _run("benchmarks/kernel_start.py", "--starts", "1")
    for kind in ("local", "proxy cold", "proxy forked"):
        assert re.search(rf"  {kind} +[\d.]+ \[", out), out
    assert re.search(r"fork server +[\d.]+ / +[\d.]+ / +[\d.]+", out), out
