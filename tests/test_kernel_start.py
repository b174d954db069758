"""Start-up as a user sees it: a slow session start is announced in the first cell, a quick one
(the server's warm pool) is not; a restart gets a fresh session from the pool.

The real proxy kernel through jupyter_client against real servers: one whose kernels take
about two seconds to start (a kernelspec that sleeps first), one with its default warm pool.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .conftest import ServerProcess
from .kernel_helpers import execute, install_kernelspec, running_kernel

pytestmark = pytest.mark.timeout(120)


def stderr_text(outputs: list[dict]) -> str:
    return "".join(
        m["content"]["text"] for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    )  # fmt: skip


def test_a_slow_start_is_announced_then_timed(slow_server: ServerProcess, tmp_path: Path) -> None:
    install_kernelspec("rk-slow", slow_server.env, prefix=tmp_path,
                       extra_argv=["--RemoteKernel.image=slowpy",
                                   '--RemoteKernel.resources={"pids": 256}'])  # fmt: skip
    with running_kernel("rk-slow") as (_, kc):
        reply, outputs = execute(kc, "print(6 * 7)")
        assert reply["status"] == "ok"
        notes = stderr_text(outputs)
        assert notes.startswith(
            f"[remote_kernel] Starting a remote session on {slow_server.endpoint} "
            "(image slowpy, resources pids=256)...\n"
        ), notes
        took = re.fullmatch(r".*\n\[remote_kernel\] ready in (\d+\.\d) s\n", notes, re.S)
        assert took and 1.0 <= float(took.group(1)) < 30, notes
        assert [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"
                and m["content"]["name"] == "stdout"] == ["42\n"]  # fmt: skip
        reply, outputs = execute(kc, "print('again')")  # only the first cell waits
        assert stderr_text(outputs) == ""


def test_a_pooled_start_is_quiet_and_a_restart_is_fresh(
    pooled_server: ServerProcess, tmp_path: Path
) -> None:
    install_kernelspec("rk-pooled", pooled_server.env, prefix=tmp_path)
    with running_kernel("rk-pooled") as (km, kc):
        t0 = time.monotonic()
        reply, outputs = execute(kc, "x = 1\nprint('first')")
        assert reply["status"] == "ok" and stderr_text(outputs) == ""
        assert time.monotonic() - t0 < 1.0
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        reply, outputs = execute(kc, "print('x' in dir())")
        assert reply["status"] == "ok" and stderr_text(outputs) == ""
        assert [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"] == ["False\n"]
