"""The remote kernel's life cycle and failure modes, through jupyter_client and real servers.

Restart and shutdown never leak a remote session; a dead or unreachable server ends a cell with a
clear error within seconds while the kernel keeps answering; a vanished session is replaced;
a base-layer server (like a real Backend.AI manager) still gives text, images, errors and input.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from remote_kernel import protocol as p
from remote_kernel.client import RunLoopClient

from .conftest import ServerProcess, start_server
from .fakes import FakeRunLoopServer, Step
from .kernel_helpers import execute, install_kernelspec, running_kernel

pytestmark = pytest.mark.timeout(180)

TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5Erk"
    "Jggg=="
)


# -- helpers ------------------------------------------------------------------------------------
def _api(srv: ServerProcess, method: str, path: str) -> Any:
    """One signed call to the server (GET /session lists the caller's sessions)."""

    async def call() -> Any:
        async with RunLoopClient(srv.endpoint, srv.access_key, srv.secret_key) as client:
            return await client._request(method, path)

    return asyncio.run(call())


def _sessions(srv: ServerProcess) -> list[dict[str, Any]]:
    return list(_api(srv, "GET", "/session")["items"])


def _session_status(srv: ServerProcess, name: str) -> int:
    from remote_kernel.errors import SessionNotFoundError

    try:
        _api(srv, "GET", f"/session/{name}")
    except SessionNotFoundError:
        return 404
    return 200


def _wait(predicate: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def _texts(outputs: list[dict[str, Any]], name: str | None = None) -> str:
    return "".join(
        m["content"].get("text", "")
        for m in outputs
        if m["msg_type"] == "stream" and (name is None or m["content"]["name"] == name)
    )


def _reply_for(kc: BlockingKernelClient, msg_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def _wait_for_text(kc: BlockingKernelClient, msg_id: str, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id or msg["msg_type"] != "stream":
            continue  # execute_input carries the code, and with it the text
        if text in msg["content"]["text"]:
            return
    raise AssertionError(f"{text!r} never appeared")


def _kernel_info_ok(kc: BlockingKernelClient, timeout: float = 5) -> bool:
    msg_id = kc.kernel_info()
    return _reply_for(kc, msg_id, timeout)["content"]["status"] == "ok"


# -- life cycle against the extensions-on server --------------------------------------------
@pytest.fixture(scope="module")
def kernel_name(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    install_kernelspec("remote-python-lifecycle", server.env, prefix=tmp_path_factory.mktemp("s"))
    return "remote-python-lifecycle"


def test_restart_three_times_fresh_state_and_one_session(
    server: ServerProcess, kernel_name: str
) -> None:
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply, _ = execute(kc, "state = 'old'")
        assert reply["status"] == "ok"
        seen: list[str] = []
        for _ in range(3):
            (current,) = _sessions(server)
            seen.append(current["sessionName"])
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=60)
            reply, outputs = execute(kc, "print('state' in dir())")
            assert reply["status"] == "ok" and _texts(outputs) == "False\n"
            assert reply["execution_count"] == 1  # a fresh remote kernel
            sessions = _sessions(server)
            assert len(sessions) == 1, sessions
            assert sessions[0]["sessionName"] not in seen
            assert all(_session_status(server, old) == 404 for old in seen)
            execute(kc, "state = 'old'")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert _wait(lambda: _sessions(server) == [], 5), _sessions(server)


def test_shutdown_destroys_the_session(server: ServerProcess, kernel_name: str) -> None:
    with running_kernel(kernel_name) as (_km, kc):
        reply, _ = execute(kc, "1")
        assert reply["status"] == "ok"
        assert len(_sessions(server)) == 1
    assert _wait(lambda: _sessions(server) == [], 5), _sessions(server)


def test_shutdown_during_a_cell_ends_quietly(
    server: ServerProcess, kernel_name: str, tmp_path: Path
) -> None:
    """A shutdown while a cell runs (the frontend's "Shut Down Kernel"): the kernel ends within
    seconds, destroys the session, and logs no error of ours. It used to log "unexpected error
    while running a cell" with a traceback when the cell noticed its closed channel before the
    process ended: about one shutdown in four here, hence four rounds."""
    for round_ in range(4):
        stderr = tmp_path / f"kernel-{round_}.stderr"
        km = KernelManager(kernel_name=kernel_name)
        with open(stderr, "wb") as err:
            km.start_kernel(stderr=err)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            kc.execute("import time\nprint('started', flush=True)\ntime.sleep(30)")
            assert _wait(lambda: any(s["statusInfo"] == "busy" for s in _sessions(server)), 20)
            started = time.monotonic()
            km.shutdown_kernel(now=False)
            assert time.monotonic() - started < 10
        finally:
            kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        assert _wait(lambda: _sessions(server) == [], 5), _sessions(server)
        log = stderr.read_text(errors="replace")
        for bad in ("unexpected error", "Traceback", "ZMQError", "RunLoopClient is closed"):
            assert bad not in log, log


@pytest.mark.parametrize("transport", ["auto", "polling"])
def test_vanished_session_is_replaced_and_says_state_was_lost(
    server: ServerProcess, tmp_path: Path, transport: str
) -> None:
    name = f"remote-python-vanish-{transport}"
    install_kernelspec(
        name, server.env, prefix=tmp_path, extra_argv=[f"--RemoteKernel.transport={transport}"]
    )
    with running_kernel(name) as (_km, kc):
        execute(kc, "kept = 1")
        (session,) = _sessions(server)
        _api(server, "DELETE", f"/session/{session['sessionId']}")
        # the next cell runs in a new session (it never ran in the old one) and says so
        reply, outputs = execute(kc, "print('kept' in dir())")
        assert reply["status"] == "ok"
        assert _texts(outputs, "stderr").count("new remote session") == 1
        assert _texts(outputs, "stdout") == "False\n"
        (current,) = _sessions(server)
        assert current["sessionId"] != session["sessionId"]
        reply, outputs = execute(kc, "1")
        assert reply["status"] == "ok" and _texts(outputs, "stderr") == ""


def test_silent_helper_code_never_hangs(kernel_name: str) -> None:
    with running_kernel(kernel_name) as (_km, kc):
        started = time.monotonic()
        for _ in range(5):
            reply, outputs = execute(kc, "import sys; _vscode_helper = sys.version", silent=True)
            assert reply["status"] == "ok" and outputs == []
        reply, outputs = execute(kc, "_vscode_helper[:1]")
        assert outputs[0]["content"]["data"]["text/plain"] == "'3'"
        assert time.monotonic() - started < 30


def test_widget_views_pass_through_as_a_local_kernel_sends_them(kernel_name: str) -> None:
    """With comms (this server), a widget view is kept: the frontend renders the model that the
    comm messages built (tests/test_comms.py; the text form without comms is tested there too)."""
    view = {"model_id": "m1", "version_major": 2, "version_minor": 0}
    code = (
        f"view = {view!r}\n"
        "for i in range(2):\n"
        "    display({'application/vnd.jupyter.widget-view+json': view,\n"
        "             'text/plain': f'IntSlider(value={i})'}, raw=True)\n"
    )
    with running_kernel(kernel_name) as (_km, kc):
        reply, outputs = execute(kc, code)
    assert reply["status"] == "ok"
    shown = [m["content"]["data"] for m in outputs if m["msg_type"] == "display_data"]
    assert shown == [
        {"application/vnd.jupyter.widget-view+json": view, "text/plain": f"IntSlider(value={i})"}
        for i in range(2)
    ]
    assert _texts(outputs, "stderr") == ""


def test_signal_mode_interrupt(server: ServerProcess, tmp_path: Path) -> None:
    name = "remote-python-signal"
    install_kernelspec(name, server.env, prefix=tmp_path, interrupt_mode="signal")
    with running_kernel(name) as (km, kc):
        msg_id = kc.execute("import time\nprint('go', flush=True)\ntime.sleep(30)")
        _wait_for_text(kc, msg_id, "go")
        km.interrupt_kernel()
        reply = _reply_for(kc, msg_id, 15)["content"]
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert km.is_alive()
        reply, outputs = execute(kc, "print('alive')")
        assert reply["status"] == "ok" and "alive" in _texts(outputs)


# -- failures ---------------------------------------------------------------------------------
def test_killing_the_server_mid_cell_ends_it_clearly(tmp_path: Path) -> None:
    """A server that never comes back (tests/test_recovery.py: one that does)."""
    srv = start_server(tmp_path / "dying", "--ServerApp.recover_sessions=False")
    try:
        install_kernelspec(
            "remote-python-dying", srv.env, prefix=tmp_path / "spec",
            extra_argv=["--RemoteKernel.reconnect_timeout=2"],
        )  # fmt: skip
        with running_kernel("remote-python-dying") as (km, kc):
            msg_id = kc.execute("import time\nprint('start', flush=True)\ntime.sleep(60)")
            _wait_for_text(kc, msg_id, "start")
            srv.proc.kill()
            srv.proc.wait(10)
            started = time.monotonic()
            reply = _reply_for(kc, msg_id, 15)["content"]
            assert time.monotonic() - started < 10
            assert reply["status"] == "error" and reply["ename"] == "TransportError"
            assert srv.endpoint in reply["evalue"]
            assert _kernel_info_ok(kc)
            started = time.monotonic()
            reply, outputs = execute(kc, "1", timeout=30)
            assert reply["status"] == "error" and time.monotonic() - started < 10
            assert "remote-kernel serve" in outputs[-1]["content"]["evalue"]
            assert km.is_alive()
    finally:
        srv.stop()


def test_unreachable_server_gives_a_clear_error_within_seconds(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"BACKEND_ENDPOINT": f"http://127.0.0.1:{port}", "BACKEND_ACCESS_KEY": "",
           "BACKEND_SECRET_KEY": ""}  # fmt: skip
    install_kernelspec("remote-python-nowhere", env, prefix=tmp_path)
    with running_kernel("remote-python-nowhere") as (_km, kc):
        assert _kernel_info_ok(kc)
        started = time.monotonic()
        reply, outputs = execute(kc, "print(1)", timeout=30)
        assert time.monotonic() - started < 10
        assert reply["status"] == "error" and reply["ename"] == "TransportError"
        evalue = outputs[-1]["content"]["evalue"]
        assert f"127.0.0.1:{port}" in evalue and "BACKEND_ENDPOINT" in evalue
        assert _kernel_info_ok(kc)


# -- the base layer (a server that behaves like a real Backend.AI manager) -------------------
@pytest.fixture(scope="module")
def base_kernel(
    base_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    name = "remote-python-base"
    install_kernelspec(name, base_server.env, prefix=tmp_path_factory.mktemp("base"))
    with running_kernel(name) as pair:
        yield pair


def test_base_layer_text_and_counts(
    base_kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _km, kc = base_kernel
    reply, outputs = execute(kc, "print('hello')\n6*7")
    assert reply["status"] == "ok"
    assert "hello" in _texts(outputs) and "42" in _texts(outputs)
    first = reply["execution_count"]
    reply, _ = execute(kc, "1", silent=True)
    reply, _ = execute(kc, "2")
    assert reply["execution_count"] == first + 1


def test_base_layer_image_is_bare_base64(
    base_kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _km, kc = base_kernel
    code = (
        "import base64\nfrom IPython.display import Image, display\n"
        f"display(Image(data=base64.b64decode('{TINY_PNG}'), format='png'))"
    )
    reply, outputs = execute(kc, code)
    assert reply["status"] == "ok"
    (display,) = [m for m in outputs if m["msg_type"] == "display_data"]
    assert display["content"]["data"]["image/png"].replace("\n", "") == TINY_PNG


def test_base_layer_error_is_status_error_with_ename_and_one_traceback(
    base_kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _km, kc = base_kernel
    reply, outputs = execute(kc, "print('before')\n1/0")
    assert reply["status"] == "error"
    assert reply["ename"] == "ZeroDivisionError" and "division by zero" in reply["evalue"]
    assert [m for m in outputs if m["msg_type"] == "error"] == []
    assert p.strip_ansi(_texts(outputs, "stderr")).count("ZeroDivisionError") >= 1
    assert _texts(outputs, "stderr").count("Traceback") <= 1


def test_base_layer_input_prompt_shown_once(
    base_kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _km, kc = base_kernel
    answered: list[dict[str, Any]] = []

    def stdin_hook(msg: dict[str, Any]) -> None:
        answered.append(msg)
        kc.input("Bob")

    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(
        "print('asking')\nname = input('who? ')\nprint('hi', name)",
        allow_stdin=True,
        timeout=60,
        output_hook=outputs.append,
        stdin_hook=stdin_hook,
    )["content"]
    assert reply["status"] == "ok"
    assert [m["content"]["prompt"] for m in answered] == ["who? "]
    text = _texts(outputs)
    assert "asking\n" in text and "hi Bob" in text and "who?" not in text


def test_base_layer_stdin_not_allowed(
    base_kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _km, kc = base_kernel
    code = "x = input('q? ')\nprint('carried on with', repr(x))"
    reply, outputs = execute(kc, code, allow_stdin=False)
    assert reply["status"] == "error" and reply["ename"] == "StdinNotImplementedError"
    assert len([m for m in outputs if m["msg_type"] == "error"]) == 1
    assert _texts(outputs) == ""  # the remote code stopped at input(), as a local kernel's does
    reply, outputs = execute(kc, "print('next', 'x' in dir())")
    assert reply["status"] == "ok" and _texts(outputs, "stdout") == "next False\n"


# -- against the fake: unshowable records and the heartbeat ---------------------------------
@pytest.fixture
def fake_server() -> Iterator[FakeRunLoopServer]:
    loop = asyncio.new_event_loop()
    srv = FakeRunLoopServer()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(srv.__aenter__())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(srv.__aexit__())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield srv
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_unshowable_records_are_noted_once_and_heartbeat_runs(
    fake_server: FakeRunLoopServer, tmp_path: Path
) -> None:
    srv = fake_server
    srv.script(
        "weird",
        [
            Step([["log", ["INFO", "t", "x", "m1"]], [p.STDOUT, "visible\n"]], p.CONTINUED),
            Step([["log", ["INFO", "t", "x", "m2"]], ["completion", []]], p.FINISHED,
                 reply={"status": "ok", "execution_count": 1, "payload": [],
                        "user_expressions": {}}),
        ],
    )  # fmt: skip
    env = {"BACKEND_ENDPOINT": srv.endpoint, "BACKEND_ACCESS_KEY": srv.access_key,
           "BACKEND_SECRET_KEY": srv.secret_key}  # fmt: skip
    install_kernelspec(
        "remote-python-fake", env, prefix=tmp_path,
        extra_argv=["--RemoteKernel.heartbeat_interval=0.3"],
    )  # fmt: skip
    with running_kernel("remote-python-fake") as (_km, kc):
        reply, outputs = execute(kc, "weird")
        assert reply["status"] == "ok"
        assert _texts(outputs, "stdout") == "visible\n"
        notes = _texts(outputs, "stderr")
        assert notes.count("cannot show") == 1 and "completion, log" in notes
        assert "3 output(s)" in notes
        (session,) = srv.sessions.values()
        path = f"/session/{session['sessionId']}"
        assert _wait(lambda: sum(r["path"] == path and r["method"] == "GET"
                                 for r in srv.requests) >= 3, 5)  # fmt: skip


def test_base_layer_interrupt_while_waiting_for_input(
    base_kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, kc = base_kernel
    msg_id = kc.execute("x = input('wait: ')", allow_stdin=True)
    request = kc.get_stdin_msg(timeout=30)
    assert request["content"]["prompt"] == "wait: "
    km.interrupt_kernel()
    reply = _reply_for(kc, msg_id, 15)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    reply, outputs = execute(kc, "print('fine')")
    assert reply["status"] == "ok" and "fine" in _texts(outputs, "stdout")


def test_config_file_sets_the_image_and_a_failed_start_is_explained(
    server: ServerProcess, tmp_path: Path
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "jupyter_remote_kernel_config.json").write_text(
        '{"RemoteKernel": {"image": "no-such-image:1"}}'
    )
    install_kernelspec(
        "remote-python-config", {**server.env, "JUPYTER_CONFIG_DIR": str(config_dir)},
        prefix=tmp_path / "spec",
    )  # fmt: skip
    with running_kernel("remote-python-config") as (_km, kc):
        reply, outputs = execute(kc, "1")
        assert reply["status"] == "error" and reply["ename"] == "NotFoundError"
        evalue = outputs[-1]["content"]["evalue"]
        assert "no-such-image:1" in evalue and "run the cell again" in evalue
        assert _kernel_info_ok(kc)


def test_first_kernel_info_is_the_remote_kernels(kernel_name: str) -> None:
    """The very first kernel_info (what a frontend stores in the notebook) is the remote's."""
    import platform

    km = KernelManager(kernel_name=kernel_name)
    # the suite's servers have no warm pool: a kernel start may take longer than the default wait
    km.start_kernel(extra_arguments=["--RemoteKernel.kernel_info_wait=60"])
    kc = km.client()
    kc.start_channels()
    try:
        msg_id = kc.kernel_info()
        content = _reply_for(kc, msg_id, 60)["content"]
        info = content["language_info"]
        assert info["name"] == "python"
        assert info["version"] == platform.python_version()  # the server's kernels' Python
        assert info["pygments_lexer"] == "ipython3" and info["file_extension"] == ".py"
        assert content["banner"].startswith("Python ") and "remote session" in content["banner"]
        links = content["help_links"]
        assert links and all(set(link) == {"text", "url"} for link in links)
        assert "Python Reference" in [link["text"] for link in links]
        assert content["implementation"] == "remote_kernel"
        assert "debugger" not in content.get("supported_features", [])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
