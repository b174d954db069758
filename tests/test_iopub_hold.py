"""What the proxy kernel publishes before a client's IOPub is connected reaches that client
(remote_kernel/proxy/iopub_hold.py): a real proxy kernel through jupyter_client, against a local
ipykernel, which drops it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from remote_kernel.proxy.iopub_hold import HOLD_SECONDS

from .conftest import ServerProcess
from .kernel_helpers import TIMEOUT, install_kernelspec

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def spec(server: ServerProcess) -> str:
    install_kernelspec("rk-iopub-hold", server.env)
    return "rk-iopub-hold"


@contextmanager
def _shell_only(kernel_name: str) -> Iterator[BlockingKernelClient]:
    """A kernel and a client with its shell channel only (no IOPub subscriber yet)."""
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def _reply(kc: BlockingKernelClient, msg_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        msg = kc.get_shell_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg
    raise AssertionError(f"no reply to {msg_id}")


def _iopub_for(kc: BlockingKernelClient, msg_ids: set[str], quiet: float) -> list[tuple[str, Any]]:
    """(parent msg_id, msg_type) of the IOPub messages for ``msg_ids``, until ``quiet`` s pass
    without one (``iopub_welcome`` included, as ``("", "iopub_welcome")``)."""
    got: list[tuple[str, Any]] = []
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=quiet)
        except Exception:
            return got
        parent = msg["parent_header"].get("msg_id", "")
        if parent in msg_ids or msg["msg_type"] == "iopub_welcome":
            got.append((parent, msg["msg_type"]))


def _ready_then_run(kc: BlockingKernelClient) -> tuple[str, str]:
    """kernel_info until answered, then ``6 * 7``, both on shell only; their msg_ids."""
    info = kc.kernel_info()
    assert _reply(kc, info)["content"]["status"] == "ok"
    run = kc.execute("6 * 7")
    assert _reply(kc, run)["content"]["status"] == "ok"
    return info, run


def test_what_the_kernel_published_before_the_first_subscriber_reaches_it(spec: str) -> None:
    with _shell_only(spec) as kc:
        info, run = _ready_then_run(kc)
        kc.iopub_channel.start()  # the first subscriber: after the cell ran
        got = _iopub_for(kc, {info, run}, quiet=2)
        assert got == [
            ("", "iopub_welcome"),
            (info, "status"),
            (info, "status"),
            (run, "status"),
            (run, "execute_input"),
            (run, "execute_result"),
            (run, "status"),
        ]
        later = kc.execute("print('after')")  # then messages flow as usual
        assert _iopub_for(kc, {later}, quiet=2) == [
            (later, "status"),
            (later, "execute_input"),
            (later, "stream"),
            (later, "status"),
        ]


def test_a_local_ipykernel_drops_them(spec: str) -> None:
    """The behaviour the hold replaces (so the test above can tell the difference)."""
    with _shell_only("python3") as kc:
        info, run = _ready_then_run(kc)
        time.sleep(0.5)  # its idle status follows the reply
        kc.iopub_channel.start()
        assert _iopub_for(kc, {info, run}, quiet=2) == [("", "iopub_welcome")]


def test_with_no_subscriber_for_a_while_it_stops_holding(spec: str) -> None:
    with _shell_only(spec) as kc:
        info, run = _ready_then_run(kc)
        time.sleep(HOLD_SECONDS + 1)  # nobody came: what was held is sent (to nobody)
        kc.iopub_channel.start()
        assert _iopub_for(kc, {info, run}, quiet=2) == [("", "iopub_welcome")]
        later = kc.execute("print('after')")
        assert _iopub_for(kc, {later}, quiet=2) == [
            (later, "status"),
            (later, "execute_input"),
            (later, "stream"),
            (later, "status"),
        ]
