"""Install a private kernelspec for the remote kernel and start it with jupyter_client."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager, start_new_kernel

TIMEOUT = 60


#: The session's temp dir (set by conftest), for what tests leave on disk.
TEST_TMP_ENV = "REMOTE_KERNEL_TEST_TMP"


def install_kernelspec(
    name: str,
    env: Mapping[str, str],
    *,
    prefix: Path | None = None,
    extra_argv: list[str] | None = None,
    interrupt_mode: str = "message",
) -> Path:
    """Write kernel.json (``python -m remote_kernel``) into ``prefix`` and put it on JUPYTER_PATH.

    Returns the prefix's ``share/jupyter`` directory.
    """
    # under the session's temp dir (conftest), removed with it
    prefix = prefix or Path(tempfile.mkdtemp(prefix="rk-spec-", dir=os.environ.get(TEST_TMP_ENV)))
    src = prefix / "src" / name
    src.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "argv": [sys.executable, "-m", "remote_kernel", "-f", "{connection_file}",
                 *(extra_argv or [])],
        "display_name": f"Python (remote, {name})",
        "language": "python",
        "interrupt_mode": interrupt_mode,
        "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "1", **env},
        "metadata": {"remote_kernel": {"test": True}},
    }  # fmt: skip
    (src / "kernel.json").write_text(json.dumps(spec, indent=1))
    KernelSpecManager().install_kernel_spec(str(src), name, prefix=str(prefix))
    share = prefix / "share" / "jupyter"
    paths = [str(share), *filter(None, os.environ.get("JUPYTER_PATH", "").split(os.pathsep))]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(dict.fromkeys(paths))
    return share


@contextmanager
def running_kernel(
    name: str, cwd: Path | None = None
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """Start the kernel ``name`` (in ``cwd``: the notebook's folder); always shut it down
    (then kill) at the end."""
    extra = {"cwd": str(cwd)} if cwd is not None else {}
    km, kc = start_new_kernel(kernel_name=name, startup_timeout=TIMEOUT, **extra)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        try:
            km.shutdown_kernel(now=False)
        finally:
            if km.is_alive():
                km.shutdown_kernel(now=True)


def execute(
    kc: BlockingKernelClient, code: str, timeout: float = TIMEOUT, **kw: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``code``; return the reply content and the IOPub output messages of that request."""
    outputs: list[dict[str, Any]] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] not in ("status", "execute_input"):
            outputs.append(msg)

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook, **kw)
    return reply["content"], outputs
