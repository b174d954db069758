"""Side by side, driven the way JupyterLab drives kernels: the remote proxy kernel, a local
ipykernel and Jupyter Kernel Gateway, each behind jupyter_server's kernel REST API + WebSocket.

How to run (from a checkout, in an environment with ``pip install -e '.[bench]'``)::

    python benchmarks/side_by_side.py [--runs 30] [--rtt 0,20] [--lines 100000] [--json out.json]
        [--systems local,proxy,gateway] [--proxy-arg=--RemoteKernel.x=y ...] [--server-arg=...]

It takes about a minute on 2 cores (bounded by ``--deadline``), uses only 127.0.0.1, starts
everything it needs in temp dirs and stops all of it at the end (also on errors and Ctrl-C).
A system that fails is reported with its error; the others are still measured.

The three systems (one jupyter_server subprocess each, token auth, isolated Jupyter dirs):

* ``local``: jupyter_server starts the ``python3`` kernel (ipykernel) itself;
* ``proxy``: jupyter_server starts the remote proxy kernel, whose ``remote-kernel serve``
  (:class:`remote_kernel.demo.DemoServer`) it reaches through a relay (proxy -> server hop);
  ``--proxy-arg`` appends to the kernel's argv in kernel.json, ``--server-arg`` to the server's;
* ``gateway``: jupyter_server with ``--gateway-url`` in front of Jupyter Kernel Gateway serving
  ``python3``, the relay on the jupyter_server -> gateway hop (HTTP and WebSocket).

The relays (``tests/relay.py``, run as separate processes so that they do not share the
measuring process's GIL) add ``rtt/2`` ms each way, and one rtt before a new TCP connection
carries data (its handshake); at rtt 0 they are still in the path.

Per system and rtt, through ``/api/kernels`` and ``/api/kernels/{id}/channels`` with JSON
(protocol v5) messages as JupyterLab sends them (it asks for ``kernel_info`` when the socket
opens and sends what it queued once the reply is in). The socket uses the plain JSON framing;
JupyterLab 4 negotiates the binary ``v1.kernel.websocket.jupyter.org`` framing of the same
messages where the server offers it.

* start to first result: POST /api/kernels, open the WebSocket, kernel_info, execute ``1+1``,
  until its execute_result arrives (s); the median of ``--starts`` kernels, and the first of the
  run on its own row (the proxy's first start after its installation or an idle half hour has
  no fork server to fork from yet);
* restart to first result (with ``--restart``): POST ``/api/kernels/{id}/restart``, then on
  the same WebSocket kernel_info (asked again every 0.5 s, as JupyterLab does) until its IOPub
  status arrives, and ``1+1`` until its execute_result (s);
* trivial cell: median and p90 of ``1+1``, request sent -> execute_reply and idle received (ms),
  after 3 warm-ups;
* 100,000 lines: ``for i in range(100000): print(i)`` until reply + idle, every line checked (s);
* streamed-output lag: a cell prints ``repr(time.time())`` every 100 ms for 3 s; lag = arrival
  time - stamp (median and p90, ms);
* widgets (with ``--widgets``; needs ipywidgets): a cell that sets an ``IntSlider``'s value
  1,000 times, until reply + idle, every update checked to arrive once and in order (s); and the
  round trip of one slider update from the frontend: ``comm_msg`` sent -> the kernel's
  ``echo_update`` received (median and p90 of ``--runs``, ms).

Note: jupyter_server (tornado) leaves Nagle's algorithm on for the kernel WebSocket, so on
loopback everything a kernel sends after a cell's ``busy`` status waits for the client's delayed
ACK (about 40 ms on Linux). That floor is part of what users get and it is in the default
numbers, where it hides most of the difference between the systems in the trivial-cell time.
``--ws-nodelay`` turns Nagle off on the kernel WebSockets of jupyter_server and Kernel Gateway (a
config file patching ``KernelWebsocketHandler.open``) to show the systems without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import queue
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import aiohttp
from stats import percentile  # benchmarks/stats.py

from remote_kernel.demo import log_tail
from remote_kernel.proxy.forkserver import stop_servers

ROOT = Path(__file__).resolve().parent.parent
RELAY_SCRIPT = ROOT / "tests" / "relay.py"
PROXY_SPEC = "remote-python-side-by-side"
LOCAL_SPEC = "python3"
SYSTEMS = ("local", "proxy", "gateway")
#: ``--ws-nodelay``: a config file that turns Nagle's algorithm off on the kernel WebSockets of
#: jupyter_server and of Kernel Gateway (tornado leaves it on; see the note in the docstring).
NODELAY_PATCH = """\
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler as _Handler

_open = _Handler.open


async def _open_nodelay(self, kernel_id):
    self.set_nodelay(True)
    await _open(self, kernel_id)


_Handler.open = _open_nodelay
"""
LAG_CODE = """\
import time
for _ in range(30):
    print(repr(time.time()), flush=True)
    time.sleep(0.1)
"""


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    if not os.path.isdir("/proc"):
        return []
    children = _children_map()
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def reap(pids: list[int], grace: float) -> None:
    """Wait up to ``grace`` s for ``pids`` to end by themselves, then SIGKILL the rest."""
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL (its process group), then whatever it started and left behind."""
    if proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    reap(tree, 5.0)


def log_hint(path: Path) -> str:
    """The last error line of a log (a kernel's traceback ends up in jupyter_server's log)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        text = line.strip()
        if re.match(r"^[\w.]*(Error|Exception)\b.*:", text):
            return text[:240]
    return ""


class Child:
    """A subprocess in its own session with its output in a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        try:
            stop_process(self.proc)
        finally:
            self._log.close()


def wait_http(url: str, headers: dict[str, str], timeout: float, child: Child) -> None:
    """Poll ``url`` until it answers 200; fail early if ``child`` exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(
                f"exited with {child.proc.returncode}; its log:\n{log_tail(child.log_path, 12)}"
            )
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5):
                return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    log = log_tail(child.log_path, 12)
    raise TimeoutError(f"{url} not ready in {timeout:.0f}s ({last}); log:\n{log}")


class RelayProcess:
    """``tests/relay.py`` as a subprocess, its delay set through stdin."""

    def __init__(self, target_host: str, target_port: int, log_path: Path) -> None:
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(RELAY_SCRIPT), target_host, str(target_port), "--handshake"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self._answer(15)
        if not first.startswith("listening "):
            self.stop()
            raise RuntimeError(f"relay did not start: {first!r}")
        self.port = int(first.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put("")

    def _answer(self, timeout: float = 10) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    def command(self, text: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def set_delay(self, seconds: float) -> None:
        answer = self.command(f"delay {seconds}")
        if answer != "ok":
            raise RuntimeError(f"relay refused the delay: {answer!r}")

    def stats(self) -> dict[str, int]:
        words = self.command("stats").split()
        return dict(zip(words[::2], map(int, words[1::2]), strict=False))

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, 5)
        self._log.close()


# ---------------------------------------------------------------------------------------------
# the systems
# ---------------------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    kernel_name: str
    error: str = ""
    base_url: str = ""
    token: str = ""
    relay: RelayProcess | None = None
    children: list[Child] = field(default_factory=list)
    stoppers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def stop(self) -> None:
        # jupyter_server first (it shuts its kernels down), then what it talks to
        for child in self.children:
            with contextlib.suppress(Exception):
                child.stop()
        for stopper in reversed(self.stoppers):
            with contextlib.suppress(Exception):
                stopper()
        if self.relay is not None:
            with contextlib.suppress(Exception):
                self.relay.stop()


def jupyter_env(
    base: Path, extra: dict[str, str], jupyter_path: str, nodelay: bool = False
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER_", "BACKEND_")) and k != "IPYTHONDIR"
    }
    for name in ("config", "runtime", "data", "ipython"):
        (base / name).mkdir(parents=True, exist_ok=True)
    if nodelay:
        for app in ("jupyter_server", "jupyter_kernel_gateway"):
            (base / "config" / f"{app}_config.py").write_text(NODELAY_PATCH)
    env.update(
        {
            "JUPYTER_PLATFORM_DIRS": "1",
            "JUPYTER_CONFIG_DIR": str(base / "config"),
            "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
            "JUPYTER_DATA_DIR": str(base / "data"),
            "IPYTHONDIR": str(base / "ipython"),
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            **extra,
        }
    )
    if jupyter_path:
        env["JUPYTER_PATH"] = jupyter_path
    return env


def start_jupyter_server(
    system: System, workdir: Path, env: dict[str, str], extra_args: list[str]
) -> None:
    port = free_port()
    system.token = secrets.token_hex(16)
    root = workdir / "notebooks"
    root.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={system.token}",
        *extra_args,
    ]
    child = Child(cmd, env, workdir / "jupyter_server.log", workdir)
    system.children.insert(0, child)
    system.base_url = f"http://127.0.0.1:{port}"
    wait_http(f"{system.base_url}/api/status", system.headers, 60, child)


def setup_local(workdir: Path, nodelay: bool) -> System:
    system = System("local", LOCAL_SPEC)
    try:
        start_jupyter_server(system, workdir, jupyter_env(workdir, {}, "", nodelay), [])
    except Exception as exc:
        system.error = f"{type(exc).__name__}: {exc}"
    return system


def setup_proxy(
    workdir: Path, proxy_args: list[str], server_args: list[str], nodelay: bool
) -> System:
    from remote_kernel.demo import DemoServer
    from remote_kernel.kernelspec import install

    system = System("proxy", PROXY_SPEC)
    try:
        server = DemoServer(workdir / "server", server_args)
        server.workdir.mkdir(parents=True)

        def stop_server() -> None:
            tree = descendants(server.proc.pid) if server.proc is not None else []
            server.stop()
            reap(tree, 5.0)

        system.stoppers.append(stop_server)
        fork_servers = Path(tempfile.mkdtemp(prefix="rkfs-"))

        def stop_fork_servers() -> None:
            stop_servers(fork_servers)
            shutil.rmtree(fork_servers, ignore_errors=True)

        system.stoppers.append(stop_fork_servers)
        server.start(timeout=60)
        host, _, port = server.endpoint.removeprefix("http://").partition(":")
        system.relay = RelayProcess(host, int(port), workdir / "relay.log")
        prefix = workdir / "prefix"
        install(
            kernel_name=PROXY_SPEC,
            prefix=str(prefix),
            endpoint=system.relay.url,
            display_name="Python (remote, side by side)",
            extra_arguments=proxy_args,
        )
        env = jupyter_env(
            workdir,
            {
                "BACKEND_ENDPOINT": system.relay.url,
                "BACKEND_ACCESS_KEY": server.access_key,
                "BACKEND_SECRET_KEY": server.secret_key,
                # the proxy's fork server: this run's own, stopped with the system
                "REMOTE_KERNEL_FORKSERVER_DIR": str(fork_servers),
            },
            os.pathsep.join(
                p for p in (str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")) if p
            ),
            nodelay,
        )
        start_jupyter_server(system, workdir, env, [])
    except Exception as exc:
        system.error = f"{type(exc).__name__}: {exc}"
    return system


def setup_gateway(workdir: Path, nodelay: bool) -> System:
    system = System("gateway", LOCAL_SPEC)
    try:
        kg_dir = workdir / "kernelgateway"
        kg_dir.mkdir(parents=True)
        kg_port = free_port()
        kg_env = jupyter_env(kg_dir, {"KG_LIST_KERNELS": "True"}, "", nodelay)
        kg = Child(
            [
                sys.executable,
                "-m",
                "kernel_gateway",
                "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={kg_port}",
                "--KernelGatewayApp.port_retries=0",
            ],
            kg_env,
            kg_dir / "kernelgateway.log",
            kg_dir,
        )
        system.stoppers.append(kg.stop)
        wait_http(f"http://127.0.0.1:{kg_port}/api/kernelspecs", {}, 60, kg)
        system.relay = RelayProcess("127.0.0.1", kg_port, workdir / "relay.log")
        env = jupyter_env(workdir / "server", {}, "", nodelay)
        start_jupyter_server(system, workdir / "server", env, [f"--gateway-url={system.relay.url}"])
    except Exception as exc:
        system.error = f"{type(exc).__name__}: {exc}"
    return system


# ---------------------------------------------------------------------------------------------
# a JupyterLab-like kernel client over jupyter_server's WebSocket
# ---------------------------------------------------------------------------------------------


@dataclass
class Execution:
    msg_id: str
    sent: float  # perf_counter
    result_at: float | None = None
    reply_at: float | None = None
    idle_at: float | None = None
    reply: dict[str, Any] | None = None
    stdout: list[str] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # ms

    @property
    def done(self) -> bool:
        return self.reply_at is not None and self.idle_at is not None

    @property
    def elapsed(self) -> float:
        assert self.reply_at is not None and self.idle_at is not None
        return max(self.reply_at, self.idle_at) - self.sent


class KernelSocket:
    """JSON (v5) messages on ``/api/kernels/{id}/channels``, one request at a time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: str) -> None:
        self.ws = ws
        self.session = session
        self.stray = 0  # messages for other requests (e.g. jupyter_server's own kernel_info)

    def message(self, msg_type: str, content: dict[str, Any], channel: str) -> dict[str, Any]:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": msg_type,
                "username": "",
                "session": self.session,
                "date": datetime.now(timezone.utc).isoformat(),
                "version": "5.2",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "buffers": [],
            "channel": channel,
        }

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def receive(self, deadline: float) -> tuple[float, float, dict[str, Any]]:
        """The next JSON message: (perf_counter, wall clock, message) at arrival."""
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError("no answer from the kernel in time")
            frame = await self.ws.receive(timeout=remaining)
            arrived, wall = time.perf_counter(), time.time()
            if frame.type == aiohttp.WSMsgType.TEXT:
                return arrived, wall, json.loads(frame.data)
            if frame.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                raise ConnectionError(f"kernel WebSocket closed ({frame.type.name}: {frame.data})")

    async def kernel_info(self, timeout: float) -> dict[str, Any]:
        msg = self.message("kernel_info_request", {}, "shell")
        await self.send(msg)
        deadline = time.perf_counter() + timeout
        while True:
            _, _, reply = await self.receive(deadline)
            if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                self.stray += 1
            elif reply.get("msg_type") == "kernel_info_reply":
                return dict(reply["content"])

    async def execute(
        self,
        code: str,
        timeout: float,
        lag: bool = False,
        collect: list[dict[str, Any]] | None = None,
    ) -> Execution:
        msg = self.message(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": True,
                "stop_on_error": True,
            },
            "shell",
        )
        msg["metadata"] = {"deletedCells": [], "recordTiming": False, "cellId": str(uuid.uuid4())}
        ex = Execution(msg["header"]["msg_id"], time.perf_counter())
        await self.send(msg)
        deadline = ex.sent + timeout
        while not ex.done:
            arrived, wall, reply = await self.receive(deadline)
            if reply.get("parent_header", {}).get("msg_id") != ex.msg_id:
                self.stray += 1
                continue
            kind = reply.get("msg_type") or reply["header"]["msg_type"]
            content = reply.get("content", {})
            if collect is not None:
                collect.append(reply)
            if kind == "execute_result" and ex.result_at is None:
                ex.result_at = arrived
            elif kind == "execute_reply":
                ex.reply_at, ex.reply = arrived, content
            elif kind == "status" and content.get("execution_state") == "idle":
                ex.idle_at = arrived
            elif kind == "stream" and content.get("name") == "stdout":
                ex.stdout.append(content["text"])
                if lag:
                    for line in content["text"].splitlines():
                        with contextlib.suppress(ValueError):
                            ex.lags.append((wall - float(line)) * 1000)
        assert ex.reply is not None
        if ex.reply.get("status") != "ok":
            raise RuntimeError(
                f"cell {code[:30]!r} failed: {ex.reply.get('ename')}: {ex.reply.get('evalue')}"
            )
        return ex


WIDGET_SETUP = "import ipywidgets as _w\n_s = _w.IntSlider(max=1_000_000)\ndisplay(_s)"
WIDGET_UPDATES = 1000


async def widget_checks(kernel: KernelSocket, args: argparse.Namespace) -> dict[str, float]:
    """1,000 kernel -> frontend updates (s, all checked), and the frontend -> kernel ->
    frontend round trip of one slider update (ms)."""
    shown: list[dict[str, Any]] = []
    await kernel.execute(WIDGET_SETUP, args.cell_timeout, collect=shown)
    opened = [
        m["content"]["comm_id"]
        for m in shown
        if m.get("msg_type") == "comm_open"
        and m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"
    ]
    if len(opened) != 1:
        raise RuntimeError(f"the slider's comm_open did not arrive ({len(opened)} seen)")
    comm_id = opened[0]
    got: list[dict[str, Any]] = []
    code = f"for _i in range(1, {WIDGET_UPDATES + 1}):\n    _s.value = _i"
    updates = await kernel.execute(code, args.bulk_timeout, collect=got)
    values = [
        m["content"]["data"]["state"].get("value")
        for m in got
        if m.get("msg_type") == "comm_msg" and m["content"]["comm_id"] == comm_id
    ]
    if values != list(range(1, WIDGET_UPDATES + 1)):
        raise RuntimeError(f"widget updates wrong: {len(values)} of {WIDGET_UPDATES}, or reordered")
    trips = []
    for k in range(args.runs + 3):
        state = {"value": 10_000 + k}
        msg = kernel.message(
            "comm_msg",
            {"comm_id": comm_id, "data": {"method": "update", "state": state, "buffer_paths": []}},
            "shell",
        )
        sent = time.perf_counter()
        await kernel.send(msg)
        deadline = sent + args.cell_timeout
        echoed = idle = None
        while echoed is None or idle is None:
            arrived, _, reply = await kernel.receive(deadline)
            if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                kernel.stray += 1
                continue
            data = reply.get("content", {}).get("data", {})
            if reply.get("msg_type") == "comm_msg" and data.get("state") == state:
                echoed = arrived
            elif reply.get("msg_type") == "status" and (
                reply["content"].get("execution_state") == "idle"
            ):
                idle = arrived
        if k >= 3:  # after warm-ups
            trips.append(echoed - sent)
    return {
        "widget_updates": updates.elapsed,
        "slider_rtt": statistics.median(trips) * 1000,
        "slider_rtt_p90": percentile(trips, 0.9) * 1000,
    }


async def start_kernel(
    http: aiohttp.ClientSession, system: System, state: dict[str, Any], progress: list[str]
) -> dict[str, float]:
    """POST /api/kernels, open the channels, kernel_info, ``1+1`` until its result (seconds
    since the POST for each); what needs cleaning up goes into ``state``."""
    times: dict[str, float] = {}
    session = uuid.uuid4().hex
    progress.append("start kernel")
    t0 = time.perf_counter()
    async with http.post(
        f"{system.base_url}/api/kernels", json={"name": system.kernel_name}
    ) as resp:
        body = await resp.text()
        if resp.status >= 300:
            raise RuntimeError(f"POST /api/kernels: HTTP {resp.status}: {body[:300]}")
        state["kernel_id"] = kernel_id = json.loads(body)["id"]
    times["start_post"] = time.perf_counter() - t0
    progress.append("open channels")
    ws_url = system.base_url.replace("http://", "ws://", 1)
    state["ws"] = ws = await http.ws_connect(
        f"{ws_url}/api/kernels/{kernel_id}/channels?session_id={session}",
        max_msg_size=0,
        timeout=aiohttp.ClientWSTimeout(ws_close=10),
    )
    times["start_ws_open"] = time.perf_counter() - t0
    state["kernel"] = kernel = KernelSocket(ws, session)
    progress.append("kernel_info")
    await kernel.kernel_info(3600)  # bounded by the caller
    times["start_kernel_info"] = time.perf_counter() - t0
    progress.append("first 1+1")
    first = await kernel.execute("1+1", 3600)
    if first.result_at is None:
        raise RuntimeError("1+1 gave no execute_result")
    times["start"] = first.result_at - t0
    return times


async def fresh_start(
    http: aiohttp.ClientSession, system: System, progress: list[str]
) -> dict[str, float]:
    """One more start to first result, on a new kernel that is shut down after it."""
    state: dict[str, Any] = {}
    try:
        return await start_kernel(http, system, state, progress)
    finally:
        await close_kernel(http, system, state)


async def close_kernel(http: aiohttp.ClientSession, system: System, state: dict[str, Any]) -> None:
    """Close the WebSocket and shut the kernel down (what ``state`` holds of them)."""
    if "ws" in state:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(state["ws"].close(), 10)
    if "kernel_id" in state:
        with contextlib.suppress(Exception):
            async with http.delete(
                f"{system.base_url}/api/kernels/{state['kernel_id']}",
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                await resp.read()


async def restart_to_result(
    http: aiohttp.ClientSession, system: System, state: dict[str, Any], args: argparse.Namespace
) -> float:
    """Restart as JupyterLab does (POST .../restart, the same WebSocket), then ``1+1`` until
    its result: seconds since the POST.

    ``1+1`` is sent once a kernel_info request's IOPub status came back, not at its reply: a
    cell sent before the new kernel's IOPub subscription is made loses its output (any kernel;
    ~half of the proxy's restarts hung here otherwise, now that its cells run at once)."""
    kernel: KernelSocket = state["kernel"]
    t0 = time.perf_counter()
    async with http.post(f"{system.base_url}/api/kernels/{state['kernel_id']}/restart") as resp:
        body = await resp.text()
        if resp.status >= 300:
            raise RuntimeError(f"POST restart: HTTP {resp.status}: {body[:300]}")
    deadline = time.perf_counter() + min(args.start_timeout, 60)
    asked: set[str] = set()
    answered = False
    while not answered:  # as JupyterLab does: ask again until the new kernel answers (any ask)
        msg = kernel.message("kernel_info_request", {}, "shell")
        asked.add(msg["header"]["msg_id"])
        await kernel.send(msg)
        retry = min(time.perf_counter() + 0.5, deadline)
        while time.perf_counter() < retry:
            try:
                _, _, reply = await kernel.receive(retry)
            except TimeoutError:
                break
            if reply.get("parent_header", {}).get("msg_id") in asked and (
                reply.get("msg_type") == "status"
            ):  # its IOPub status: the reply is in (shell) and the output reaches us (IOPub)
                answered = True
                break
        if not answered and time.perf_counter() >= deadline:
            raise TimeoutError("no kernel_info reply within 60 s of the restart")
    first = await kernel.execute("1+1", args.start_timeout)
    if first.result_at is None:
        raise RuntimeError("1+1 after the restart gave no execute_result")
    return first.result_at - t0


async def measure(
    system: System, args: argparse.Namespace, progress: list[str], out: dict[str, Any]
) -> dict[str, Any]:
    """One system at one rtt, into ``out`` (what was measured stays there when a later step
    fails); ``progress[-1]`` names the step under way (for error messages)."""
    state: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=args.start_timeout)
    async with aiohttp.ClientSession(headers=system.headers, timeout=timeout) as http:
        try:
            out.update(
                await asyncio.wait_for(
                    start_kernel(http, system, state, progress), args.start_timeout
                )
            )
            kernel: KernelSocket = state["kernel"]

            progress.append("trivial cells")
            for _ in range(3):
                await kernel.execute("1+1", args.cell_timeout)
            trivial = [
                (await kernel.execute("1+1", args.cell_timeout)).elapsed for _ in range(args.runs)
            ]
            out["trivial"] = statistics.median(trivial) * 1000
            out["trivial_p90"] = percentile(trivial, 0.9) * 1000

            progress.append(f"{args.lines} lines")
            bulk = await kernel.execute(
                f"for i in range({args.lines}): print(i)", args.bulk_timeout
            )
            lines = "".join(bulk.stdout).splitlines()
            if lines != [str(i) for i in range(args.lines)]:
                raise RuntimeError(f"bulk output wrong: {len(lines)} of {args.lines} lines")
            out["bulk"] = bulk.elapsed
            out["bulk_messages"] = len(bulk.stdout)

            progress.append("stream lag")
            streamed = await kernel.execute(LAG_CODE, args.cell_timeout, lag=True)
            if len(streamed.lags) < 25:
                raise RuntimeError(f"only {len(streamed.lags)} of 30 stamps arrived")
            out["lag_median"] = statistics.median(streamed.lags)
            out["lag_p90"] = percentile(streamed.lags, 0.9)
            out["lag_n"] = len(streamed.lags)

            if args.widgets:
                progress.append("widgets")
                out.update(await widget_checks(kernel, args))

            if args.restart:
                restarts = []
                for i in range(args.starts):
                    progress.append(f"restart {i + 1}")
                    restarts.append(
                        await asyncio.wait_for(restart_to_result(http, system, state, args), 90)
                    )
                out["restart"] = statistics.median(restarts)
                out["restart_all"] = restarts
            breakdowns = [{k: v for k, v in out.items() if k.startswith("start")}]
            for i in range(1, args.starts):  # each a new kernel, shut down after its result
                progress.append(f"start {i + 1}")
                breakdowns.append(await asyncio.wait_for(fresh_start(http, system, progress), 120))
            out["start_first"] = breakdowns[0]["start"]
            out["start_all"] = breakdowns
            out["start"] = statistics.median(b["start"] for b in breakdowns)
            out["stray_messages"] = kernel.stray
            return out
        finally:
            await close_kernel(http, system, state)


async def measure_all(
    systems: dict[str, System], args: argparse.Namespace, results: dict[str, Any]
) -> None:
    for rtt in args.rtts:
        per_rtt = results.setdefault(str(rtt), {})
        for name, system in systems.items():
            if system.error:
                per_rtt[name] = {"error": f"setup: {system.error}"}
                continue
            progress: list[str] = []
            print(f"rtt {rtt:g} ms: {name} ...", end=" ", flush=True)
            t0 = time.perf_counter()
            per_rtt[name] = partial = {}
            try:
                if system.relay is not None:
                    system.relay.set_delay(rtt / 2 / 1000)
                await asyncio.wait_for(
                    measure(system, args, progress, partial), args.system_timeout
                )
                print(f"done in {time.perf_counter() - t0:.1f}s", flush=True)
            except asyncio.CancelledError:
                per_rtt[name]["error"] = f"cancelled during {progress[-1:]}"
                raise
            except Exception as exc:
                step = progress[-1] if progress else "setup"
                text = str(exc) or type(exc).__name__
                kind = "timeout" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) else ""
                error = f"{kind or type(exc).__name__} during {step}: {text}"
                hint = log_hint(system.children[0].log_path) if system.children else ""
                if hint:
                    error += f" (server log: {hint})"
                per_rtt[name]["error"] = error  # the steps before it stay measured
                print(f"FAILED ({error})", flush=True)
                if args.verbose:
                    traceback.print_exc()
            if system.relay is not None:
                with contextlib.suppress(Exception):
                    per_rtt[name]["relay"] = system.relay.stats()


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

ROWS = [
    ("start to first result (s)", "start", "{:.2f}"),
    ("  first start of the run (s)", "start_first", "{:.2f}"),
    ("restart to first result (s)", "restart", "{:.2f}"),
    ("trivial cell median (ms)", "trivial", "{:.2f}"),
    ("trivial cell p90 (ms)", "trivial_p90", "{:.2f}"),
    ("{lines} lines (s)", "bulk", "{:.2f}"),
    ("stream lag median (ms)", "lag_median", "{:.1f}"),
    ("stream lag p90 (ms)", "lag_p90", "{:.1f}"),
    ("1,000 widget updates (s)", "widget_updates", "{:.2f}"),
    ("slider rtt median (ms)", "slider_rtt", "{:.1f}"),
    ("slider rtt p90 (ms)", "slider_rtt_p90", "{:.1f}"),
]
RATIOS = [("proxy/local", "proxy", "local"), ("gateway/local", "gateway", "local"),
          ("proxy/gateway", "proxy", "gateway")]  # fmt: skip


def table(rtt: str, per_rtt: dict[str, Any], lines: int) -> str:
    def value(system: str, key: str) -> float | None:
        got = per_rtt.get(system, {}).get(key)
        return float(got) if isinstance(got, (int, float)) else None

    head = f"{f'rtt {float(rtt):g} ms':28}" + "".join(f"{s:>10}" for s in SYSTEMS)
    head += "".join(f"{label:>15}" for label, _, _ in RATIOS)
    out = [head, "-" * len(head)]
    for label, key, fmt in ROWS:
        row = f"{label.format(lines=f'{lines:,}'):28}"
        for system in SYSTEMS:
            got = value(system, key)
            row += f"{fmt.format(got) if got is not None else '-':>10}"
        for _, a, b in RATIOS:
            va, vb = value(a, key), value(b, key)
            row += f"{f'{va / vb:.2f}x' if va is not None and vb else '-':>15}"
        out.append(row)
    return "\n".join(out)


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    parts = []
    failures = []
    for rtt, per_rtt in results.items():
        parts.append(table(rtt, per_rtt, args.lines))
        for system in SYSTEMS:
            entry = per_rtt.get(system, {})
            if "error" in entry:
                failures.append(f"  {system} at rtt {float(rtt):g} ms: {entry['error']}")
        starts = []
        for system in SYSTEMS:
            entry = per_rtt.get(system, {})
            for b in entry.get("start_all", []):
                starts.append(
                    f"  {system:8} POST {b['start_post']:.2f} / ws {b['start_ws_open']:.2f}"
                    f" / kernel_info {b['start_kernel_info']:.2f} / result {b['start']:.2f}"
                )
        if starts:
            parts.append("each start (s since POST):\n" + "\n".join(starts))
    parts.append(
        "Failed:\n" + "\n".join(failures) if failures else "All systems completed at every rtt."
    )
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="trivial cells measured (30)")
    parser.add_argument(
        "--starts", type=int, default=5,
        help="kernel starts (and restarts, with --restart) measured per system and rtt; the "
        "median is reported, and the first start of the run on its own row (5)",
    )  # fmt: skip
    parser.add_argument(
        "--restart", action="store_true",
        help="also measure restart to first result (a local kernel's restart through "
        "jupyter_server sometimes never answers here: off by default)",
    )  # fmt: skip
    parser.add_argument(
        "--widgets", action="store_true",
        help="also measure widget updates and a slider's round trip (needs ipywidgets)",
    )  # fmt: skip
    parser.add_argument("--rtt", default="0,20", help="round trips to add, ms (0,20)")
    parser.add_argument("--lines", type=int, default=100_000, help="lines of the bulk cell")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="which to measure")
    parser.add_argument("--json", dest="json_path", default="", help="also write results here")
    parser.add_argument(
        "--proxy-arg",
        action="append",
        default=[],
        help="extra proxy kernel argv, e.g. --proxy-arg=--RemoteKernel.x=y (repeatable)",
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `remote-kernel serve` argument"
    )
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--cell-timeout", type=float, default=60.0)
    parser.add_argument("--bulk-timeout", type=float, default=240.0)
    parser.add_argument("--system-timeout", type=float, default=420.0, help="per system and rtt, s")
    parser.add_argument(
        "--deadline", type=float, default=1200.0, help="all measurements together, s"
    )
    parser.add_argument(
        "--ws-nodelay",
        action="store_true",
        help="turn Nagle off on the servers' kernel WebSockets (not what users get today)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.rtts = [float(x) for x in args.rtt.split(",") if x.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    return args


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist in ("remote-kernel-proxy", "jupyter_server", "jupyter_kernel_gateway", "ipykernel",
                 "jupyter_client", "aiohttp"):  # fmt: skip
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="rk-side-by-side-"))
    systems: dict[str, System] = {}
    results: dict[str, Any] = {}
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stderr: IO[str] = sys.stderr
    try:
        nagle = "; Nagle off on kernel WebSockets" if args.ws_nodelay else ""
        print(f"workdir {workdir}; rtt {args.rtt} ms; {args.runs} trivial runs{nagle}", flush=True)
        setups: dict[str, Callable[[], System]] = {
            "local": lambda: setup_local(workdir / "local", args.ws_nodelay),
            "proxy": lambda: setup_proxy(
                workdir / "proxy", args.proxy_arg, args.server_arg, args.ws_nodelay
            ),
            "gateway": lambda: setup_gateway(workdir / "gateway", args.ws_nodelay),
        }
        for name in SYSTEMS:
            if name in args.systems:
                (workdir / name).mkdir()
                t0 = time.perf_counter()
                systems[name] = setups[name]()
                state = systems[name].error or f"up in {time.perf_counter() - t0:.1f}s"
                print(f"{name}: {state}", flush=True)

        async def run() -> None:
            await asyncio.wait_for(measure_all(systems, args, results), args.deadline)

        try:
            asyncio.run(run())
        except (TimeoutError, asyncio.TimeoutError):
            print(f"\nDeadline of {args.deadline:.0f}s reached; stopping.", file=stderr)
    finally:
        print("\nstopping servers, kernels and relays ...", flush=True)
        for system in reversed(list(systems.values())):
            system.stop()
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(report(results, args))
    if args.json_path:
        payload = {
            "config": {
                "runs": args.runs,
                "rtts_ms": args.rtts,
                "lines": args.lines,
                "proxy_args": args.proxy_arg,
                "server_args": args.server_arg,
                "ws_nodelay": args.ws_nodelay,
                "cpus": os.cpu_count(),
                "versions": _versions(),
            },
            "results": results,
        }
        Path(args.json_path).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {args.json_path}")
    failed = any("error" in entry for per in results.values() for entry in per.values())
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
