"""Exactly once under faults: the real proxy kernel, a real server, and a relay between them
that aborts connections at random points (``tests/relay.py``), over both transports.

Every cell runs once and ends ``ok``; every ``input()`` gets exactly its answer; streamed lines
arrive with none lost, repeated or reordered (docs/protocol.md, "Exactly once").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from .conftest import ServerProcess
from .kernel_helpers import execute, install_kernelspec, running_kernel
from .relay import RelayThread, running_relay

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

#: About one connection in ten is cut at a random point, and then about one request, response
#: or burst of frames in ten (``per_read``), so the faults keep hitting long-lived connections.
ABORT_RATE = 0.1


@pytest.fixture(params=["auto", "polling"])
def faulty(
    request: pytest.FixtureRequest, server: ServerProcess, tmp_path: Path
) -> Iterator[tuple[BlockingKernelClient, RelayThread, str]]:
    """The proxy kernel (channel or polling) talking to the server through a faulty relay."""
    transport = request.param
    host, port = server.endpoint.removeprefix("http://").split(":")
    with running_relay(host, int(port), abort_rate=ABORT_RATE, per_read=True, seed=7) as relay:
        name = f"remote-python-faulty-{transport}"
        env = {**server.env, "BACKEND_ENDPOINT": relay.url}
        install_kernelspec(
            name, env, prefix=tmp_path, extra_argv=[f"--RemoteKernel.transport={transport}"]
        )
        opened = _channels_opened(server)
        with running_kernel(name) as (_km, kc):
            yield kc, relay, transport
        if transport == "polling":
            assert _channels_opened(server) == opened  # the channel was never used
        else:
            assert _channels_opened(server) > opened


def _channels_opened(server: ServerProcess) -> int:
    return len(re.findall(r"push channel opened", server.log()))


def test_100_cells_run_exactly_once(faulty: tuple[BlockingKernelClient, RelayThread, str]) -> None:
    kc, relay, _ = faulty
    statuses = []
    for i in range(100):
        code = f"with open('once.txt', 'a') as f:\n    f.write('{i}\\n')\n"
        reply, _outputs = execute(kc, code)
        statuses.append(reply["status"])
    assert statuses == ["ok"] * 100
    reply, outputs = execute(kc, "print(open('once.txt').read(), end='')")
    text = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
    assert text == "".join(f"{i}\n" for i in range(100))
    print(f"100 cells: {relay.connections} connections, {relay.aborted} aborted")
    assert relay.aborted >= 3, relay.aborted  # the faults really happened


def test_30_inputs_get_exactly_their_answers(
    faulty: tuple[BlockingKernelClient, RelayThread, str],
) -> None:
    kc, relay, _ = faulty
    for i in range(30):
        asked: list[str] = []

        def answer(msg: dict[str, Any], i: int = i, asked: list[str] = asked) -> None:
            asked.append(msg["content"]["prompt"])
            kc.input(f"answer-{i}")

        outputs: list[str] = []

        def collect(msg: dict[str, Any], outputs: list[str] = outputs) -> None:
            if msg["msg_type"] == "stream":
                outputs.append(msg["content"]["text"])

        reply = kc.execute_interactive(
            f"x = input('q{i}? ')\nprint(repr(x))", allow_stdin=True, stdin_hook=answer,
            output_hook=collect, timeout=60,
        )["content"]  # fmt: skip
        assert reply["status"] == "ok", reply
        assert asked == [f"q{i}? "]
        assert "".join(outputs) == f"'answer-{i}'\n"
    print(f"30 inputs: {relay.connections} connections, {relay.aborted} aborted")
    assert relay.aborted >= 2, relay.aborted


def test_3_x_10000_lines_none_lost_repeated_or_reordered(
    faulty: tuple[BlockingKernelClient, RelayThread, str],
) -> None:
    kc, relay, _ = faulty
    for run in range(3):
        reply, outputs = execute(kc, f"for i in range(10000): print({run}, i)")
        assert reply["status"] == "ok"
        text = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
        assert text == "".join(f"{run} {i}\n" for i in range(10000))
    print(f"3 x 10,000 lines: {relay.connections} connections, {relay.aborted} aborted")
    assert relay.aborted >= 1, relay.aborted


def test_a_proxy_that_blocks_websockets_falls_back_to_polling(
    server: ServerProcess, tmp_path: Path
) -> None:
    host, port = server.endpoint.removeprefix("http://").split(":")
    with running_relay(host, int(port), block_websocket=True) as relay:
        env = {**server.env, "BACKEND_ENDPOINT": relay.url}
        install_kernelspec("remote-python-nows", env, prefix=tmp_path)
        with running_kernel("remote-python-nows") as (_km, kc):
            reply, outputs = execute(kc, "import time\nfor i in range(3):\n    print(i)\n")
            assert reply["status"] == "ok"
            text = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
            assert text == "0\n1\n2\n"
        assert relay.blocked >= 1
