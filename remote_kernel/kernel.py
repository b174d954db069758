"""``RemoteKernel``: an ipykernel ``Kernel`` that runs every cell in a remote compute session.

Each execute request becomes one run of the run-loop API (:mod:`remote_kernel.client`); every
console record becomes an IOPub message (:func:`remote_kernel.iopub.iopub_from_record`,
protocol §3). The remote session is created in the background when the kernel starts; the
first cell waits for it.

Threads (ipykernel 7, see jupyter-kernel-notes §1.5): shell handlers (``do_execute``,
``do_complete``...) run on the main thread's asyncio loop and share one ``RunLoopClient``;
``interrupt_request`` and ``do_shutdown`` run on the Control thread, with its own loop, so they
use a separate short-lived client and reach the main loop only through ``io_loop.add_callback``.

This module is the only place where :mod:`remote_kernel.errors` become an IOPub ``error`` plus
an ``execute_reply`` with status ``error`` (house style §3.4 item 6).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import zmq
from ipykernel.kernelbase import Kernel
from IPython.core.error import StdinNotImplementedError
from traitlets import Bool, Dict, Float, Int, Unicode, default

from . import protocol as p
from ._version import __version__
from .client import (
    ENV_ACCESS_KEY,
    ENV_ENDPOINT,
    ENV_SECRET_KEY,
    Credentials,
    Run,
    RunLoopClient,
    resolve_credentials,
)
from .errors import (
    ConfigurationError,
    NotFoundError,
    RemoteKernelError,
    SessionNotFoundError,
)
from .history import CellHistory
from .iopub import iopub_from_record, without_widget_views

__all__ = ["RemoteKernel"]

log = logging.getLogger(__name__)

#: Features ipykernel 7 advertises for every subclass that a proxy must not (notes §0 item 4).
_UNSUPPORTED_FEATURES = ("kernel subshells", "debugger")

_SESSION_FAILED = (
    "Could not start the remote session (image {image!r} on {endpoint}): {error}\n"
    "Fix the cause, then run the cell again: the kernel retries."
)
_SESSION_LOST = (
    "The remote session {name!r} is gone (it was destroyed, culled as idle, or the server "
    "restarted). Its state (variables, imports) was lost. Run the cell again: a new session "
    "will be started."
)
_NEW_SESSION_NOTE = (
    "[remote_kernel] Started a new remote session: the previous one was lost, and with it all "
    "earlier state (variables, imports). Re-run earlier cells if this one needs them.\n"
)
_UNSHOWN_NOTE = (
    "[remote_kernel] The remote sent {count} output(s) that Jupyter cannot show "
    "(record type(s): {types}); see the kernel log.\n"
)
_WIDGET_NOTE = (
    "[remote_kernel] {count} interactive widget(s) shown as text: widgets (ipywidgets) talk to "
    "the kernel over comms, which the run-loop API does not carry. Use their text or static "
    "forms (e.g. tqdm.tqdm instead of tqdm.notebook) in remote sessions.\n"
)
_STDIN_REFUSED = "raw_input was called, but this frontend does not support input requests."

PYTHON_LANGUAGE_INFO: dict[str, Any] = {
    "name": "python",
    "mimetype": "text/x-python",
    "file_extension": ".py",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "pygments_lexer": "ipython3",
    "nbconvert_exporter": "python",
}


@dataclass
class _Cell:
    """Everything about the cell being executed."""

    code: str
    silent: bool
    store_history: bool
    allow_stdin: bool
    interrupted: asyncio.Event
    run: Run | None = None
    detached: bool = False  # the reply went out: later output is not published
    stderr: list[str] = field(default_factory=list)
    unshown: dict[str, int] = field(default_factory=dict)
    widgets: int = 0
    stdin_refused: bool = False
    input_waiting: bool = False
    forwarded: asyncio.Event = field(default_factory=asyncio.Event)


class _InterruptedSignal(Exception):
    """The cell was interrupted before its run started (never a KeyboardInterrupt in a task)."""


class RemoteKernel(Kernel):
    """A Jupyter kernel whose cells run in a remote compute session (Backend.AI run-loop API)."""

    implementation = "remote_kernel"
    implementation_version = __version__
    banner = "Remote kernel: cells run in a remote compute session."

    # -- configuration --------
    endpoint = Unicode(
        help=f"URL of the run-loop server (Backend.AI API). Environment: {ENV_ENDPOINT}."
    ).tag(config=True)
    access_key = Unicode(
        help=f"Access key (empty: anonymous). Environment: {ENV_ACCESS_KEY}; otherwise the "
        "keypair saved by `remote-kernel install` in the user's 0600 credentials file. "
        "Never put it in kernel.json."
    ).tag(config=True)
    secret_key = Unicode(
        help=f"Secret key. Environment: {ENV_SECRET_KEY}; otherwise the user's 0600 "
        "credentials file. Never put it in kernel.json."
    ).tag(config=True)
    image = Unicode(
        help="Image (kernel environment) of the remote session. Environment: REMOTE_KERNEL_IMAGE."
    ).tag(config=True)
    resources = Dict(help="Resources requested for the session, e.g. {'cpu': 1, 'mem': '1g'}.").tag(
        config=True
    )
    environ = Dict(help="Environment variables set in the remote session.").tag(config=True)
    session_name = Unicode(
        help="Name of the remote session (default: unique per kernel process). "
        "Environment: REMOTE_KERNEL_SESSION_NAME."
    ).tag(config=True)
    startup_timeout = Float(
        120.0, help="Seconds to wait for the remote session to start (maxWaitSeconds)."
    ).tag(config=True)
    connect_timeout = Float(5.0, help="Seconds to wait for a connection to the server.").tag(
        config=True
    )
    poll_timeout = Float(
        60.0, help="Seconds to wait for one run-loop response (the server holds polls ≤ 2 s)."
    ).tag(config=True)
    retries = Int(3, help="Retries of a request after a transport error (never HTTP errors).").tag(
        config=True
    )
    interrupt_grace = Float(
        5.0,
        help="Seconds an interrupted run may take to end on its own (drained) before the cell "
        "is ended locally with KeyboardInterrupt.",
    ).tag(config=True)
    shutdown_timeout = Float(
        2.0, help="Seconds allowed to destroy the remote session at shutdown or restart."
    ).tag(config=True)
    heartbeat_interval = Float(
        30.0,
        help="Seconds between keep-alive checks of an idle session (0 disables). A session "
        "found gone is replaced on the next cell.",
    ).tag(config=True)
    use_extensions = Bool(
        True, help="Use the remote_kernel protocol extensions when the server offers them."
    ).tag(config=True)

    @default("endpoint")
    def _endpoint_default(self) -> str:
        return self._credentials().endpoint

    @default("access_key")
    def _access_key_default(self) -> str:
        return self._credentials().access_key

    @default("secret_key")
    def _secret_key_default(self) -> str:
        return self._credentials().secret_key

    @default("image")
    def _image_default(self) -> str:
        import os

        return os.environ.get("REMOTE_KERNEL_IMAGE", "python:3")

    @default("session_name")
    def _session_name_default(self) -> str:
        import os

        return os.environ.get("REMOTE_KERNEL_SESSION_NAME") or f"rk-{uuid.uuid4().hex[:16]}"

    _creds: Credentials | None = None
    _config_error: ConfigurationError | None = None

    def _credentials(self) -> Credentials:
        if self._creds is None:
            try:
                self._creds = resolve_credentials(self._trait_values.get("endpoint") or None)
            except ConfigurationError as exc:
                self._config_error = exc
                self._creds = Credentials()
        return self._creds

    # -- state --------
    def __init__(self, **kwargs: Any) -> None:
        self._creds = None
        self._config_error = None
        super().__init__(**kwargs)
        self.language_info = dict(PYTHON_LANGUAGE_INFO)
        self._next_count = 1
        self._client: RunLoopClient | None = None
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._session_task: asyncio.Task[str] | None = None
        self._session_id: str | None = None
        self._session_generation = 0
        self._session_lost = False
        self._cell: _Cell | None = None
        self._interrupt_forwarded = False
        self._drain_task: asyncio.Task[Any] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._shutting_down = False
        self._history = CellHistory()

    # ipykernel increments execution_count before do_execute; the remote decides it instead.
    @property  # type: ignore[override]
    def execution_count(self) -> int:
        return self._next_count

    @execution_count.setter
    def execution_count(self, value: int) -> None:
        pass

    @property
    def kernel_info(self) -> dict[str, Any]:
        info = super().kernel_info
        info["supported_features"] = [
            f for f in info.get("supported_features", []) if f not in _UNSUPPORTED_FEATURES
        ]
        return info

    async def create_subshell_request(self, socket: Any, ident: Any, parent: Any) -> None:
        content = {
            "status": "error",
            "ename": "NotImplementedError",
            "evalue": "remote_kernel does not support kernel subshells",
            "traceback": [],
        }
        assert self.session is not None
        self.session.send(socket, "create_subshell_reply", content, parent, ident)

    # SIGINT: keep it ignored while handlers run; do_execute installs its own loop handler.
    def pre_handler_hook(self) -> None:
        self.saved_sigint_handler = signal.getsignal(signal.SIGINT)

    def post_handler_hook(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.saved_sigint_handler)

    # -- start-up: the session is created in the background -----------------------------------
    def start(self) -> None:
        super().start()
        self.io_loop.add_callback(self._begin)

    def _begin(self) -> None:
        self._main_loop = asyncio.get_running_loop()
        self._ensure_session_task()
        if self.heartbeat_interval > 0:
            self._heartbeat_task = asyncio.ensure_future(self._heartbeat())

    def _new_client(self, **kw: Any) -> RunLoopClient:
        if self._config_error is not None:
            raise self._config_error
        settings: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "request_timeout": self.poll_timeout,
            "retries": self.retries,
            "use_extensions": self.use_extensions,
            **kw,
        }
        return RunLoopClient(self.endpoint or None, self.access_key, self.secret_key, **settings)

    def _main_client(self) -> RunLoopClient:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _ensure_session_task(self) -> asyncio.Task[str]:
        task = self._session_task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._session_task = asyncio.ensure_future(self._create_session())
        return task

    async def _create_session(self) -> str:
        client = self._main_client()
        await client.probe()
        ref = await client.create_session(
            self.image,
            self.session_name,
            resources=dict(self.resources),
            environ={str(k): str(v) for k, v in self.environ.items()},
            max_wait=self.startup_timeout,
        )
        self._session_id = ref.id
        self._session_generation += 1
        self.log.info("remote session %s (%s) on %s", ref.name, ref.id, client.endpoint)
        if self._shutting_down:
            await self._destroy(client, ref.id)
            raise RemoteKernelError("the kernel is shutting down")
        if client.has(p.FEATURE_KERNEL_INFO):
            try:
                self._adopt_kernel_info(await client.session_info(ref.id))
            except RemoteKernelError as exc:
                self.log.warning("could not read the remote kernel info: %s", exc)
        return ref.id

    def _adopt_kernel_info(self, info: dict[str, Any]) -> None:
        remote = info.get("kernelInfo")
        if not isinstance(remote, dict):
            return
        language_info = remote.get("language_info")
        if isinstance(language_info, dict) and language_info.get("name"):
            merged = dict(PYTHON_LANGUAGE_INFO) if language_info["name"] == "python" else {}
            merged.update(language_info)
            self.language_info = merged
        if isinstance(remote.get("banner"), str):
            self.banner = f"{remote['banner']}\n(remote session {self.session_name!r})"
        if isinstance(remote.get("help_links"), list):
            self.help_links = remote["help_links"]

    async def _session(self, cell: _Cell | None = None) -> str:
        """The session id; waits for the background creation (interruptibly)."""
        task = self._ensure_session_task()
        if cell is None:
            return await asyncio.wait_for(asyncio.shield(task), self.startup_timeout + 30)
        waiter = asyncio.ensure_future(cell.interrupted.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not task.done():
            raise _InterruptedSignal
        return task.result()

    def _forget_session(self) -> None:
        """The remote session vanished: the next cell creates a new one and says so."""
        self._session_id = None
        self._session_task = None
        self._session_lost = True

    async def _heartbeat(self) -> None:
        """Keep an idle session alive; notice early when it has vanished."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            sid = self._session_id
            if self._cell is not None or sid is None or self._shutting_down:
                continue
            try:
                await self._main_client().session_info(sid, timeout=10)
            except SessionNotFoundError:
                if self._session_id == sid and self._cell is None:
                    self.log.warning("remote session %s is gone", sid)
                    self._forget_session()
            except Exception as exc:  # the next cell reports real problems
                self.log.debug("heartbeat failed: %s", exc)

    # -- execute --------
    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        self._allow_stdin = allow_stdin  # the base class never sets it
        loop = asyncio.get_running_loop()
        self._main_loop = loop
        cell = _Cell(code, silent, store_history and not silent, allow_stdin, asyncio.Event())
        self._cell = cell
        self._interrupt_forwarded = False
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint, cell)
        try:
            if self._drain_task is not None and not self._drain_task.done():
                await asyncio.wait({self._drain_task}, timeout=self.interrupt_grace)
            work = asyncio.ensure_future(self._execute(cell, user_expressions or {}))
            waiter = asyncio.ensure_future(cell.interrupted.wait())
            done, _ = await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                waiter.cancel()
                return work.result()
            # Interrupted: forward it (unless the Control thread did), then drain the run.
            if cell.run is None:
                work.cancel()
                cell.forwarded.set()
                return self._error_reply(cell, "KeyboardInterrupt", "interrupted before the run")
            if not self._interrupt_forwarded:
                await self._forward_interrupt(self._main_client())
            cell.forwarded.set()
            try:
                return await asyncio.wait_for(asyncio.shield(work), self.interrupt_grace)
            except asyncio.TimeoutError:
                cell.detached = True  # keep draining in the background, never abandon the run
                self._drain_task = work
                return self._error_reply(
                    cell,
                    "KeyboardInterrupt",
                    f"interrupted; the remote run did not stop within {self.interrupt_grace:g} s "
                    "and is being drained in the background",
                )
        except RemoteKernelError as exc:
            return self._error_reply(cell, *self._describe(exc))
        except Exception as exc:  # a bug must still end the cell with a reply
            self.log.exception("unexpected error while running a cell")
            return self._error_reply(cell, type(exc).__name__, f"remote_kernel failed: {exc}")
        finally:
            if on_main:
                loop.remove_signal_handler(signal.SIGINT)
            self._cell = None

    def _on_sigint(self, cell: _Cell) -> None:
        self.log.info("SIGINT: interrupting the remote run")
        cell.interrupted.set()

    def _describe(self, exc: RemoteKernelError) -> tuple[str, str]:
        if isinstance(exc, SessionNotFoundError):
            self._forget_session()
            return "SessionLostError", _SESSION_LOST.format(name=self.session_name)
        return type(exc).__name__, str(exc)

    async def _execute(self, cell: _Cell, user_expressions: dict[str, Any]) -> dict[str, Any]:
        lost_before = self._session_lost
        try:
            session_id = await self._session(cell)
        except _InterruptedSignal:
            return self._error_reply(cell, "KeyboardInterrupt", "interrupted while starting")
        except RemoteKernelError as exc:
            message = _SESSION_FAILED.format(
                image=self.image, endpoint=self._main_client().endpoint, error=exc
            )
            return self._error_reply(cell, type(exc).__name__, message)
        except asyncio.TimeoutError:
            message = _SESSION_FAILED.format(
                image=self.image, endpoint=self.endpoint, error="timed out"
            )
            return self._error_reply(cell, "TimeoutError", message)
        if lost_before:
            self._session_lost = False
            self._publish(cell, "stream", {"name": "stderr", "text": _NEW_SESSION_NOTE})
        client = self._main_client()
        options = {
            "silent": cell.silent,
            "store_history": cell.store_history,
            "user_expressions": user_expressions,
            "allow_stdin": cell.allow_stdin,
            "stop_on_error": True,
        }
        run = client.run(session_id, cell.code, options=options)
        cell.run = run
        result = await run.start()
        while True:
            prompt = self._publish_records(cell, result)
            if result.status == p.WAITING_INPUT:
                text = await self._answer_input(cell, result, prompt)
                result = await run.send_input(text)
            elif result.terminal:
                break
            else:
                result = await run.poll()
        self._note_unshown(cell)
        return self._reply(cell, result, run)

    # -- output --------
    def _publish(self, cell: _Cell, msg_type: str, content: dict[str, Any]) -> None:
        if cell.silent or cell.detached:
            return
        self.send_response(self.iopub_socket, msg_type, content)

    def _publish_records(self, cell: _Cell, result: p.RunResult) -> str:
        """Publish a response's records; return the held-back base-layer input prompt."""
        records = list(result.console)
        prompt = ""
        base_prompt = (
            result.status == p.WAITING_INPUT
            and not (cell.run and cell.run.jupyter)
            and records
            and records[-1][0] == p.STDOUT
            and isinstance(records[-1][1], str)
        )
        if base_prompt:
            text = records.pop()[1]
            head, sep, prompt = text.rpartition("\n")
            if head or sep:
                records.append([p.STDOUT, head + sep])
        for rec in records:
            if rec[0] == p.STDERR and isinstance(rec[1], str):
                if cell.stdin_refused:
                    continue  # the traceback of our own interrupt: the cell's error is ours
                cell.stderr.append(rec[1])
            msg = iopub_from_record(rec)
            if msg is None:
                kind = str(rec[0])
                cell.unshown[kind] = cell.unshown.get(kind, 0) + 1
                self.log.warning("cannot show a remote %r record: %.200r", kind, rec[1])
                continue
            msg_type, content = msg
            if msg_type in (p.DISPLAY_DATA, p.EXECUTE_RESULT, p.UPDATE_DISPLAY_DATA):
                content, dropped = without_widget_views(content)
                cell.widgets += dropped
            self._publish(cell, msg_type, content)
        return prompt

    def _note_unshown(self, cell: _Cell) -> None:
        if cell.widgets:
            text = _WIDGET_NOTE.format(count=cell.widgets)
            self._publish(cell, "stream", {"name": "stderr", "text": text})
        if cell.unshown:
            text = _UNSHOWN_NOTE.format(
                count=sum(cell.unshown.values()), types=", ".join(sorted(cell.unshown))
            )
            self._publish(cell, "stream", {"name": "stderr", "text": text})

    # -- stdin --------
    async def _answer_input(self, cell: _Cell, result: p.RunResult, prompt: str) -> str:
        """The line for a ``waiting-input`` response; "" when interrupted or stdin is refused."""
        if cell.interrupted.is_set():
            return await self._after_interrupt(cell)
        if not cell.allow_stdin:
            # Only a base-layer server gets here (the jupyter console passes allow_stdin): the
            # remote cannot be told, so it is interrupted (its input() raises, the code stops,
            # as ipykernel's would), then given an empty line, which a Backend.AI runner still
            # waits for; the user gets the usual StdinNotImplementedError.
            cell.stdin_refused = True
            await self._forward_interrupt(self._main_client())
            return ""
        options = result.options or {}
        prompt = str(options.get("prompt", prompt))
        password = bool(options.get("is_password", False))
        request = asyncio.ensure_future(self._ainput(prompt, password))
        waiter = asyncio.ensure_future(cell.interrupted.wait())
        cell.input_waiting = True
        try:
            await asyncio.wait({request, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cell.input_waiting = False
            waiter.cancel()
        if not request.done():
            request.cancel()
            return await self._after_interrupt(cell)
        try:
            return request.result()
        except EOFError:
            return ""

    async def _after_interrupt(self, cell: _Cell) -> str:
        """Answer an interrupted prompt with "" once the remote has been told to interrupt,
        so the empty line cannot run on before the interrupt lands (never abandon the run)."""
        try:
            await asyncio.wait_for(cell.forwarded.wait(), 5)
        except asyncio.TimeoutError:
            pass
        return ""

    async def _ainput(self, prompt: str, password: bool = False) -> str:
        """An awaitable, cancellable ``input_request`` (notes §2): never blocks the loop."""
        if not self._allow_stdin:
            raise StdinNotImplementedError(_STDIN_REFUSED)
        assert self.session is not None
        parent = self.get_parent("shell")
        ident = self._get_shell_context_var(self._shell_parent_ident)
        while True:  # drop stale replies (e.g. from a stdin box left after an interrupt)
            try:
                self.stdin_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        self.session.send(
            self.stdin_socket,
            "input_request",
            {"prompt": prompt, "password": password},
            parent,
            ident=ident,
        )
        while True:
            if self.stdin_socket.poll(0):
                _, reply = self.session.recv(self.stdin_socket)
                if reply is not None:
                    value = str(reply["content"].get("value", ""))
                    if value == "\x04":
                        raise EOFError
                    return value
            await asyncio.sleep(0.02)

    # -- the reply --------
    def _reply(self, cell: _Cell, result: p.RunResult, run: Run) -> dict[str, Any]:
        reply = dict(result.reply) if isinstance(result.reply, dict) else None
        if reply is not None and reply.get("status"):
            count = reply.get("execution_count")
            if isinstance(count, int):
                self._next_count = count + 1
            else:
                reply["execution_count"] = self._advance_count(cell)
            reply.setdefault("user_expressions", {})
            reply.setdefault("payload", [])
            self._remember(cell, reply["execution_count"])
            if cell.stdin_refused:
                return self._error_reply(
                    cell, "StdinNotImplementedError", _STDIN_REFUSED, reply["execution_count"]
                )
            return reply
        count = self._advance_count(cell)
        self._remember(cell, count)
        if cell.stdin_refused:
            return self._error_reply(cell, "StdinNotImplementedError", _STDIN_REFUSED, count)
        if result.status == p.EXEC_TIMEOUT:
            return self._error_reply(
                cell, "TimeoutError", "the remote run hit its execution time limit", count
            )
        if result.exit_code not in (0, None):
            stderr = "".join(cell.stderr)
            parsed = p.ename_evalue_from_traceback(stderr)
            ename, evalue = parsed or ("RemoteError", f"exit code {result.exit_code}")
            # The traceback was already streamed as stderr: no second error output.
            return {
                "status": "error",
                "execution_count": count,
                "ename": ename,
                "evalue": evalue,
                "traceback": p.strip_ansi(stderr).splitlines() if stderr else [],
            }
        return {"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}

    def _advance_count(self, cell: _Cell) -> int:
        """Base layer: count like IPython (only stored, non-silent cells take a number)."""
        if cell.store_history:
            count = self._next_count
            self._next_count += 1
            return count
        return self._next_count - 1

    def _remember(self, cell: _Cell, count: Any) -> None:
        if cell.store_history and isinstance(count, int):
            self._history.add(self._session_generation or 1, count, cell.code)

    def _error_reply(
        self, cell: _Cell, ename: str, evalue: str, count: int | None = None
    ) -> dict[str, Any]:
        """A locally made error (transport, session, stdin): one IOPub error plus the reply."""
        if count is None:
            count = self._advance_count(cell)
        traceback = [f"\x1b[0;31m{ename}\x1b[0m: {evalue}"]
        self._publish(cell, "error", {"ename": ename, "evalue": evalue, "traceback": traceback})
        return {
            "status": "error",
            "execution_count": count,
            "ename": ename,
            "evalue": evalue,
            "traceback": traceback,
        }

    # -- interrupt (Control thread in message mode) --------
    async def interrupt_request(self, stream: Any, ident: Any, parent: Any) -> None:
        content: dict[str, Any] = {"status": "ok"}
        cell = self._cell
        if cell is not None:  # an idle interrupt (e.g. before shutdown) is a no-op
            if cell.run is not None and self._session_id:
                try:
                    async with self._new_client(api_version=self._api_version()) as client:
                        await self._forward_interrupt(client)
                except Exception as exc:
                    self.log.warning("could not forward the interrupt: %s", exc)
            # thread-safe hop to the main loop: forwarded first, so _after_interrupt never waits
            self.io_loop.add_callback(cell.forwarded.set)
            self.io_loop.add_callback(cell.interrupted.set)
        assert self.session is not None
        self.session.send(stream, "interrupt_reply", content, parent, ident=ident)

    def _api_version(self) -> str | None:
        return self._client.api_version if self._client is not None else None

    async def _forward_interrupt(self, client: RunLoopClient) -> None:
        sid = self._session_id
        if sid is None:
            return
        try:
            await asyncio.wait_for(client.interrupt(sid, timeout=3), 5)
            self._interrupt_forwarded = True
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            self.log.warning("could not forward the interrupt to %s: %s", sid, exc)

    # -- shutdown (Control thread) --------
    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        self._shutting_down = True
        loop = self._main_loop
        if self._heartbeat_task is not None and loop is not None:
            loop.call_soon_threadsafe(self._heartbeat_task.cancel)
        try:
            async with self._new_client(api_version=self._api_version(), retries=0) as client:
                await self._destroy(client, self._session_id or self.session_name)
        except Exception as exc:
            self.log.warning("could not destroy the remote session: %s", exc)
        if self._client is not None and loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._client.aclose(), loop)
            try:
                await asyncio.wait_for(asyncio.wrap_future(future), 1.0)
            except Exception:
                pass
        return {"status": "ok", "restart": restart}

    async def _destroy(self, client: RunLoopClient, session: str) -> None:
        try:
            await asyncio.wait_for(
                client.destroy_session(session, timeout=self.shutdown_timeout),
                self.shutdown_timeout,
            )
            self.log.info("destroyed remote session %s", session)
        except (NotFoundError, SessionNotFoundError):
            pass
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            self.log.warning("could not destroy remote session %s: %s", session, exc)

    # -- completion, inspection, is_complete --------
    async def _idle_session(self) -> str | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self._ensure_session_task()), 10)
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            self.log.info("no remote session for an introspection request: %s", exc)
            return None

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        cursor_pos = len(code) if cursor_pos is None else cursor_pos
        token = re.search(r"[\w.]*$", code[:cursor_pos])
        start = cursor_pos - len(token.group(0) if token else "")
        reply: dict[str, Any] = {
            "status": "ok",
            "matches": [],
            "cursor_start": start,
            "cursor_end": cursor_pos,
            "metadata": {},
        }
        sid = await self._idle_session()
        if sid is None:
            return reply
        try:
            result = await self._main_client().complete(sid, code, cursor_pos)
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            self.log.info("completion failed: %s", exc)
            return reply
        if isinstance(result.get("matches"), list):
            reply["matches"] = [str(m) for m in result["matches"]]
            reply["cursor_start"] = int(result.get("cursor_start", start))
            reply["cursor_end"] = int(result.get("cursor_end", cursor_pos))
            if isinstance(result.get("metadata"), dict):
                reply["metadata"] = result["metadata"]
        elif isinstance(result.get("suggestions"), list):
            reply["matches"] = [str(m) for m in result["suggestions"]]
        return reply

    async def do_inspect(
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        reply = {"status": "ok", "found": False, "data": {}, "metadata": {}}
        sid = await self._idle_session()
        if sid is None:
            return reply
        try:
            result = await self._main_client().inspect(sid, code, cursor_pos, detail_level)
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            self.log.info("inspection failed: %s", exc)
            return reply
        if result is None or result.get("status") != "ok":
            return reply
        return {
            "status": "ok",
            "found": bool(result.get("found")),
            "data": result.get("data") or {},
            "metadata": result.get("metadata") or {},
        }

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        sid = await self._idle_session()
        if sid is None:
            return {"status": "unknown"}
        try:
            result = await self._main_client().is_complete(sid, code)
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            self.log.info("is_complete failed: %s", exc)
            return {"status": "unknown"}
        if not result or result.get("status") not in ("complete", "incomplete", "invalid"):
            return {"status": "unknown"}
        reply = {"status": result["status"]}
        if result["status"] == "incomplete":
            reply["indent"] = str(result.get("indent", ""))
        return reply

    # -- history (local: the cells this kernel ran) --------------------------------------------
    async def do_history(
        self,
        hist_access_type: str,
        output: bool,
        raw: bool,
        session: int | None = None,
        start: int | None = None,
        stop: int | None = None,
        n: int | None = None,
        pattern: str | None = None,
        unique: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        history = self._history.query(
            hist_access_type, current=self._session_generation or 1, output=output,
            session=session, start=start, stop=stop, n=n, pattern=pattern, unique=unique,
        )  # fmt: skip
        return {"status": "ok", "history": history}
