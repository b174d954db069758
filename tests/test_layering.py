"""The pure core imports no I/O library, and the client side never imports the server."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("aiohttp", "zmq", "ipykernel", "jupyter_client", "tornado")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("remote_kernel.errors", HEAVY),
        ("remote_kernel.auth", HEAVY),
        ("remote_kernel.protocol", HEAVY),
        ("remote_kernel.iopub", HEAVY),
        ("remote_kernel.frames", HEAVY),
        ("remote_kernel.runloop", HEAVY),
        ("remote_kernel.credentials", HEAVY),
        ("remote_kernel.proxy.replies", HEAVY),
        ("remote_kernel.proxy.history", HEAVY),
        ("remote_kernel.server.outside", HEAVY),
        ("remote_kernel.client", ("remote_kernel.server", "ipykernel", "zmq")),
        ("remote_kernel.proxy.channel", ("remote_kernel.server", "ipykernel", "zmq")),
        ("remote_kernel.server.app", ("remote_kernel.proxy", "ipykernel")),
        # the kernel's start-up path: aiohttp (0.1 s) loads in a thread once the app starts
        ("remote_kernel.proxy.app", ("aiohttp",)),
        ("remote_kernel.proxy.early", ("aiohttp", "zmq", "ipykernel")),
    ],
)
def test_imports_flow_one_way(module: str, forbidden: tuple[str, ...]) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r} "
        f"or any(m.startswith(f + '.') or m == f for f in {forbidden!r}))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
