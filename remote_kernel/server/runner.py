"""``SessionRunner``: one compute session's Jupyter kernel, driven with jupyter_client.

The kernel is started through ``AsyncKernelManager`` (so the kernelspec's provisioner decides
where it runs). Its channels are read by :class:`~remote_kernel.server.kernel_io.KernelIO`, which
routes every message by its parent: a cell's IOPub messages become console records of its
:class:`~remote_kernel.server.runs.Run` via :mod:`remote_kernel.iopub`; what belongs to no run
(widget callbacks, late thread output, comm messages) goes to the session's
:class:`~remote_kernel.server.outside.OutsideLog`, with its parent id. Frontend comm messages
(extension ``comms``) are sent to the kernel's shell as they come, with the frontend's ids.
Cells, batch runs and the other shell requests (complete, inspect, is_complete) queue on one
lock, so runs of either kind run in order and a busy kernel is not sent requests it cannot answer.
The kernel process's own output goes to a :class:`~remote_kernel.server.kernel_log.KernelLog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

from .. import protocol as p
from ..errors import InternalServerError, InvalidAPIParamsError
from ..iopub import records_from_message
from ..protocol import ExecuteRequest
from .batch import BatchRunner
from .isolation import SessionIsolation, no_isolation
from .kernel_io import KernelGone, KernelIO, Request
from .kernel_log import KernelLog
from .kernel_streams import bound_stream_messages
from .limits import Resources
from .outside import OutsideLog
from .provisioner import AdoptedProvisioner
from .runs import Run, RunTable

log = logging.getLogger("remote_kernel.server")

#: How often a run checks that its kernel is still alive.
ALIVE_CHECK_INTERVAL = 1.0
#: Ids of forwarded frontend messages remembered per session (a repeat is not sent twice).
REMEMBER_FORWARDED = 4096
#: Shell requests (other than a cell) and the messages the proxy forwards, by Jupyter type.
_SHELL_REQUESTS = {
    "complete": "complete_request",
    "inspect": "inspect_request",
    "is_complete": "is_complete_request",
}


class SessionRunner:
    """Owns one kernel (manager + client) and the runs executed in it."""

    def __init__(
        self,
        kernel_name: str,
        work_dir: Path,
        log_path: Path,
        *,
        environ: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        max_run_bytes: int = 64 * 1024 * 1024,
        request_timeout: float = 10.0,
        kernel_manager_class: type[AsyncKernelManager] = AsyncKernelManager,
        isolation: SessionIsolation | None = None,
    ) -> None:
        self.kernel_name = kernel_name
        self.work_dir = work_dir
        self.log_path = log_path
        self.kernel_log = KernelLog(log_path)
        self.environ = dict(environ or {})
        self.start_timeout = start_timeout
        self.max_run_bytes = max_run_bytes
        self.request_timeout = request_timeout
        self.km = kernel_manager_class(kernel_name=kernel_name)
        self.isolation = isolation or no_isolation(work_dir)
        self.kc: Any = None
        self.io: KernelIO | None = None
        self.outside = OutsideLog()
        self._forwarded: dict[str, None] = {}  # ids of frontend messages sent (oldest first)
        self.kernel_info: dict[str, Any] = {}
        self.runs = RunTable()
        self.current: Run | None = None
        self.num_queries = 0
        self._shell_lock = asyncio.Lock()
        self.batch = BatchRunner(work_dir, self.env, self.isolation)
        self._background: set[asyncio.Future[None]] = set()
        self.process_info: dict[str, Any] = {}  # the kernel's pid, pgid (for recovery)
        #: Called when what recovery needs changes (a run starts or ends, a restart).
        self.on_change: Callable[[], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the kernel in the work dir with the session's environment; wait until ready."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._isolate_kernel()
        out = self.kernel_log.open()  # closed in shutdown()
        # A kernel that must outlive the server (recovery) is independent: no JPY_PARENT_PID
        independent = self.isolation.isolation.outlive_server
        for attempt in (1, 2):
            await self.km.start_kernel(
                cwd=str(self.work_dir), env=self.env(), stdout=out, stderr=out,
                independent=independent,
            )  # fmt: skip
            try:
                await self._connect()
                await self._note_process()
                return
            except InternalServerError as exc:
                # jupyter_client picks free ports before the kernel binds them; under load
                # another process can take one in between. Once, start over on new ports.
                if attempt == 2 or "Address already in use" not in str(exc):
                    raise
                log.warning("kernel %r lost a port race; starting it again", self.kernel_name)
                await self._discard_kernel()

    async def _discard_kernel(self) -> None:
        """Stop a kernel that failed to start and forget its ports and connection file."""
        await self._close_channels("the kernel did not start")
        with contextlib.suppress(Exception):  # restart=True: the ZMQ context stays usable
            await self.km.shutdown_kernel(now=True, restart=True)
        self.km.cleanup_connection_file()
        for name in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port"):
            setattr(self.km, name, 0)  # the next start picks new ones

    def _isolate_kernel(self) -> None:
        """Start the kernel through the sandbox provisioner (and over IPC sockets when the
        session has no network), unless its kernelspec names a provisioner of its own."""
        stanza = self.isolation.provisioner()
        spec = self.km.kernel_spec
        if stanza is None or spec is None:
            return
        own = (spec.metadata or {}).get("kernel_provisioner", {}).get("provisioner_name")
        if own not in (None, "local-provisioner"):
            log.warning("kernel %r uses its own provisioner %r: it is not sandboxed here",
                        self.kernel_name, own)  # fmt: skip
            return
        spec.metadata = {**(spec.metadata or {}), "kernel_provisioner": stanza}
        if self.isolation.ipc_dir is not None and not self.km.connection_file:
            self.km.transport = "ipc"
            self.km.ip = str(self.isolation.ipc_dir / "k")

    async def adopt(self, environ: dict[str, str], resources: Resources) -> None:
        """Make a pooled kernel a session's: its environment variables (set in the running
        kernel's ``os.environ``, and for its batch steps and terminals) and its limits."""
        self.isolation.set_resources(resources)
        if not environ:
            return
        language = self.kernel_info.get("language_info", {}).get("name")
        if language != "python":
            raise InternalServerError(
                f"A {language!r} kernel cannot take environment variables once started."
            )
        self.environ = dict(environ)
        code = f"import os as _rk_os; _rk_os.environ.update({environ!r}); del _rk_os"
        async with self._shell_lock:
            assert self.io is not None
            request = self.io.send("execute_request", {
                "code": code, "silent": True, "store_history": False, "user_expressions": {},
                "allow_stdin": False, "stop_on_error": True,
            })  # fmt: skip
            try:
                reply = await asyncio.wait_for(request.done(), self.request_timeout)
            except (asyncio.TimeoutError, KernelGone):
                reply = {}
        if reply.get("content", {}).get("status") != "ok":
            raise InternalServerError("Could not set the session's environment in its kernel.")

    @property
    def file_owner(self) -> tuple[int, int] | None:
        """uid and gid that files the server writes for the session get (a root server's
        sandbox user), or None: the server's own."""
        plan = self.isolation.plan
        if plan.uid is None:
            return None
        return plan.uid, plan.gid if plan.gid is not None else plan.uid

    def terminal_command(self, cmd: list[str]) -> list[str]:
        """A terminal's shell in this session's sandbox and limits (it keeps the pty as its
        controlling terminal, so no new session)."""
        return self.isolation.command(cmd, new_session=False)

    def env(self) -> dict[str, str]:
        """The session's environment (for the kernel, batch steps and terminals)."""
        return self.isolation.env(self.environ, session_env(self.environ))

    async def _connect(self) -> None:
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            await self.kc.wait_for_ready(timeout=self.start_timeout)
            reply = await self.kc.kernel_info(reply=True, timeout=self.start_timeout)
            self.kernel_info = dict(reply["content"])
        except (RuntimeError, TimeoutError, asyncio.TimeoutError) as exc:
            tail = self.logs(2000).strip()
            raise InternalServerError(
                f"The {self.kernel_name!r} kernel did not start: {exc}."
                + (f" Its last output:\n{tail}" if tail else "")
            ) from exc
        await bound_stream_messages(self.kc, self.kernel_info)  # kernel_streams.py
        self.io = KernelIO(self.kc, self._on_unrouted, self._stray_input)
        self.io.start()

    async def _close_channels(self, reason: str) -> None:
        """Stop routing (requests in flight fail) and close the kernel client's channels."""
        io, self.io = self.io, None
        if io is not None:
            await io.stop(reason)
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None

    async def restart(self) -> None:
        """Restart the kernel: state is cleared, files in the work dir stay."""
        self._end_current("The session was restarted; this run was stopped.\n")
        self.batch.signal(signal.SIGKILL)
        async with self._shell_lock:
            await self._close_channels("the session was restarted")
            await self.km.restart_kernel(now=True)
            await self._connect()
            await self._note_process()

    # -- recovery (a server that was killed starts again) -------------------------------------
    async def _note_process(self) -> None:
        prov = self.km.provisioner
        if prov is not None:
            info = await prov.get_provisioner_info()
            self.process_info = {k: info.get(k) for k in ("pid", "pgid", "ip")}
        self.changed()

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def snapshot(self) -> dict[str, Any]:
        """What a server started later needs to re-adopt this kernel (JSON; holds its key)."""
        conn = dict(self.km.get_connection_info())
        key = conn.get("key")
        if isinstance(key, bytes):
            conn["key"] = key.decode()
        run = self.current
        running = None
        if run is not None and run.status != p.FINISHED and run.msg_id is not None:
            running = {"runId": run.run_id, "msgId": run.msg_id, "jupyter": run.jupyter,
                       "comms": run.comms}  # fmt: skip
        return {
            "kernelName": self.kernel_name,
            "connection": conn,
            "connectionFile": self.km.connection_file,
            "process": self.process_info,
            "clientSession": self.km.session.session,
            "kernelInfo": self.kernel_info,
            "environ": self.environ,
            "plan": self.isolation.plan.to_json(),
            "resources": self.isolation.resources.to_json(),
            "ipcDir": str(self.isolation.ipc_dir) if self.isolation.ipc_dir else None,
            "run": running,
        }

    @classmethod
    async def recover(
        cls,
        record: dict[str, Any],
        work_dir: Path,
        log_path: Path,
        isolation: SessionIsolation,
        **options: Any,
    ) -> SessionRunner:
        """Re-adopt a kernel that an earlier server process started (it outlived that server):
        the same connection (and the same client identity, so the reply to a request sent
        before the restart still arrives), signals by pid. A cell that was running goes on as
        the same run."""
        runner = cls(
            record["kernelName"], work_dir, log_path, environ=record.get("environ") or {},
            isolation=isolation, **options,
        )  # fmt: skip
        km = runner.km
        km.load_connection_info(record["connection"])
        km.connection_file = record.get("connectionFile") or ""
        km.session.session = record["clientSession"]
        runner._isolate_kernel()  # a later restart starts the kernel the usual way
        out = runner.kernel_log.open()
        launch: dict[str, Any] = {
            "cwd": str(work_dir), "env": runner.env(), "stdout": out, "stderr": out,
            "independent": isolation.isolation.outlive_server,
        }  # fmt: skip
        km._launch_args = launch  # what km.restart_kernel starts again with
        process = record.get("process") or {}
        provisioner = AdoptedProvisioner(
            kernel_id=km.kernel_id or "", kernel_spec=km.kernel_spec, parent=km
        )
        await provisioner.load_provisioner_info({
            "kernel_id": km.kernel_id or "", "connection_info": record["connection"],
            "pid": process.get("pid"), "pgid": process.get("pgid"), "ip": process.get("ip"),
        })  # fmt: skip
        km.provisioner = provisioner
        runner.process_info = dict(process)
        runner.kernel_info = dict(record.get("kernelInfo") or {})
        runner.kc = km.client()
        runner.kc.start_channels()
        runner.io = KernelIO(runner.kc, runner._on_unrouted, runner._stray_input)
        runner.io.start()
        if record.get("run"):
            runner._resume_run(record["run"])
        return runner

    def _resume_run(self, info: dict[str, Any]) -> None:
        """The run that was going on when the server was killed: its output from now on,
        after a note that what it printed meanwhile is missing, and its reply."""
        run = Run(
            str(info["runId"]), jupyter=bool(info.get("jupyter")), max_bytes=self.max_run_bytes
        )
        run.comms = bool(info.get("comms"))
        run.msg_id = str(info["msgId"])
        run.recovering = True
        note = (
            "[remote_kernel] The server restarted while this cell ran; what the cell printed "
            "in between may be missing here.\n"
        )
        run.emit([p.record(p.STDERR, note)])
        self.runs.add(run)
        self.current = run
        run.task = asyncio.ensure_future(self._follow_resumed(run))

    async def _follow_resumed(self, run: Run) -> None:
        with _run_ends(run, "could not follow this cell"):
            async with self._shell_lock:
                assert self.io is not None and run.msg_id is not None
                request = self.io.expect(
                    run.msg_id, "execute_request",
                    on_iopub=lambda msg: self._on_iopub(run, msg),
                    on_stdin=lambda msg: self._on_stdin(run, msg),
                )  # fmt: skip
                reply = await self._until_done_or_dead(asyncio.ensure_future(request.done()))
            await self._end_run(run, reply)

    async def shutdown(self) -> None:
        """Stop the kernel and end any run (bounded; kills if the kernel does not stop)."""
        self._end_current("The session was destroyed; this run was stopped.\n")
        self.batch.signal(signal.SIGKILL)
        await self._close_channels("the session was destroyed")
        with contextlib.suppress(Exception):
            if await self.km.is_alive():
                await self.km.shutdown_kernel(now=True)
        with contextlib.suppress(Exception):
            await self.km.cleanup_resources()
        self.isolation.close()
        self.kernel_log.close()

    def _end_current(self, message: str) -> None:
        run = self.current
        if run is not None and run.status != p.FINISHED:
            run.fail("SessionEnded", message.strip())
            if run.task is not None:
                run.task.cancel()

    @property
    def busy(self) -> bool:
        """A cell is running (or waiting for input): the session is not idle."""
        return self.current is not None and self.current.status != p.FINISHED

    def logs(self, limit: int = 256 * 1024) -> str:
        """The tail of the kernel process's own output (at most ``limit`` bytes)."""
        return self.kernel_log.tail(limit)

    # -- the run loop -------------------------------------------------------------------------
    async def execute(
        self, req: ExecuteRequest, *, hold: float, coalesce: float, cursors: bool
    ) -> dict[str, Any]:
        """Answer one ``query``/``continue``/``input`` request with the run's next result."""
        if req.mode in ("query", "batch"):
            run = self.run_for(req)
        else:
            found = self.runs.get(req.run_id)
            if found is None:
                raise InvalidAPIParamsError(
                    f"No run {req.run_id!r} in this session: start it with mode 'query'."
                )
            run = found
            if req.mode == "input":
                run.give_input(req.code, req.input_seq)
        body = await run.poll(req.cursor if cursors else None, hold=hold, coalesce=coalesce)
        if not cursors:
            body["result"].pop("cursor", None)
        return body

    def run_for(self, req: ExecuteRequest) -> Run:
        """The run a ``query``/``batch`` names: a known ``runId`` is that run (a retried query
        is the same run, never a second execution); a new one starts."""
        run = self.runs.get(req.run_id)
        if run is not None:
            return run
        if self.runs.forgotten(req.run_id):
            raise InvalidAPIParamsError(
                f"Run {req.run_id!r} already ran in this session and its output is no longer "
                "kept; start a new run with a new runId."
            )
        return self._start_run(req)

    def _start_run(self, req: ExecuteRequest) -> Run:
        run_id = req.run_id or secrets.token_hex(16)
        previous = self.current
        if previous is not None and previous.status != p.FINISHED:
            # The client moved on: that run is abandoned. If it waits for input, nobody will
            # answer, so interrupt it; otherwise it finishes on its own and the new run queues.
            previous.abandoned = True
            if previous.waiting_input:
                previous.cancel_input()
                fut = asyncio.ensure_future(self._interrupt_quietly())
                self._background.add(fut)
                fut.add_done_callback(self._background.discard)
        run = Run(run_id, jupyter=req.jupyter_console, max_bytes=self.max_run_bytes)
        run.comms = run.jupyter and req.options.get("comms") is True
        self.runs.add(run)
        self.current = run
        self.num_queries += 1
        if req.mode == "batch":
            run.task = asyncio.ensure_future(self._run_batch(run, req.options))
        else:
            run.task = asyncio.ensure_future(self._run(run, req))
        return run

    async def _run(self, run: Run, req: ExecuteRequest) -> None:
        opts = req.options if run.jupyter else {}
        with _run_ends(run, "could not run this cell"):
            async with self._shell_lock:
                if run.status == p.FINISHED:  # ended while queued (restart, destroy)
                    return
                self.isolation.new_oom_kill()  # what happened before this cell is not its doing
                if self.io is None:
                    raise KernelGone("the kernel is not running")
                msg_id = opts.get("msg_id")  # the frontend's, so ids in kernel state match
                request = self.io.send(
                    "execute_request",
                    {
                        "code": req.code,
                        "silent": bool(opts.get("silent", False)),
                        "store_history": bool(opts.get("store_history", True)),
                        "user_expressions": opts.get("user_expressions") or {},
                        "allow_stdin": bool(opts.get("allow_stdin", True)),
                        "stop_on_error": bool(opts.get("stop_on_error", True)),
                    },
                    msg_id=msg_id if isinstance(msg_id, str) else None,
                    on_iopub=lambda msg: self._on_iopub(run, msg),
                    on_stdin=lambda msg: self._on_stdin(run, msg),
                )
                run.msg_id = request.msg_id
                self.changed()  # recorded: a server started after a crash follows this run
                reply = await self._until_done_or_dead(asyncio.ensure_future(request.done()))
            await self._end_run(run, reply)

    async def _end_run(self, run: Run, reply: dict[str, Any] | None) -> None:
        """Finish ``run`` with the kernel's reply (None: the kernel died under it)."""
        try:
            if reply is None:
                if self.isolation.new_oom_kill():
                    run.fail("MemoryError", self.isolation.oom_message())
                else:
                    message = "The kernel died while running this cell; it has been restarted."
                    run.fail("DeadKernelError", message)
                await self._recover_dead_kernel()
                return
            content = dict(reply.get("content", {}))
            run.finish(_exit_code(content), content)
            self.kernel_log.trim()
        finally:
            self.changed()

    async def _until_done_or_dead(self, work: asyncio.Future[Any]) -> dict[str, Any] | None:
        """The execute reply, or None when the kernel process died first."""
        while True:
            done, _ = await asyncio.wait({work}, timeout=ALIVE_CHECK_INTERVAL)
            if done:
                return work.result()  # type: ignore[no-any-return]
            if not await self.km.is_alive():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
                return None

    async def _recover_dead_kernel(self) -> None:
        with contextlib.suppress(Exception):
            async with self._shell_lock:
                await self._close_channels("the kernel died")
                await self.km.restart_kernel(now=True)
                await self._connect()
                await self._note_process()

    def _on_iopub(self, run: Run, msg: dict[str, Any]) -> None:
        records = records_from_message(msg, jupyter=run.jupyter, comms=run.comms)
        if records and not run.abandoned:
            run.emit(records)

    def _on_unrouted(self, msg: dict[str, Any]) -> None:
        """IOPub output whose parent is no run in flight: kept, with its parent, for the
        session's channel (comm messages included)."""
        records = records_from_message(msg, jupyter=True, comms=True)
        if records:
            parent = (msg.get("parent_header") or {}).get("msg_id")
            self.outside.add_records(parent if isinstance(parent, str) else None, records)

    def _stray_input(self) -> None:
        """``input()`` outside a run (a widget callback): nobody can answer; interrupt it."""
        fut = asyncio.ensure_future(self._interrupt_quietly())
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

    # -- frontend messages (extension ``comms``) -----------------------------------------------
    def forward(
        self,
        msg_id: str,
        msg_type: str,
        content: dict[str, Any],
        metadata: dict[str, Any],
        buffers: list[bytes],
    ) -> bool:
        """Send a frontend comm message or ``comm_info_request`` to the kernel's shell now,
        with the frontend's ``msg_id``. Its output, and then its end (``done``, with the reply
        of a ``comm_info_request``), go to :attr:`outside` in kernel order. Returns False for a
        repeat of an id already forwarded (a client's retry), which is not sent again.

        The end is the kernel's ``idle`` after the message, so a callback's output is all
        delivered before it. A message that the kernel handles alongside something else (a
        running cell: ipykernel 7 dispatches comms at once then, with no status) ends as soon
        as it is sent; its output still follows, with its parent.
        """
        if msg_id in self._forwarded:
            return False
        self._forwarded[msg_id] = None
        while len(self._forwarded) > REMEMBER_FORWARDED:
            del self._forwarded[next(iter(self._forwarded))]
        if self.io is None:
            self.outside.add_done(msg_id, _not_running(msg_type))
            return True
        alongside = self.busy or self.io.in_flight
        request = self.io.send(msg_type, content, msg_id=msg_id, metadata=metadata, buffers=buffers)
        if alongside and not msg_type.endswith("_request"):
            self.io.forget(request)  # its output is unrouted (outside) anyway; no idle comes
            self.outside.add_done(msg_id)
            return True
        fut = asyncio.ensure_future(self._end_forwarded(request, msg_id))
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
        return True

    async def _end_forwarded(self, request: Request, msg_id: str) -> None:
        reply: dict[str, Any] = {}
        try:
            if request.msg_type.endswith("_request"):
                msg = await asyncio.wait_for(request.reply, self.request_timeout)
                reply = dict(msg.get("content", {}))
            else:
                await request.idle
        except (asyncio.TimeoutError, KernelGone) as exc:
            if self.io is not None:
                self.io.forget(request)
            reply = _not_running(request.msg_type, str(exc) or "no answer in time")
        self.outside.add_done(msg_id, reply)

    async def _on_stdin(self, run: Run, msg: dict[str, Any]) -> None:
        if msg.get("msg_type") != "input_request":
            return
        content = msg.get("content", {})
        if run.abandoned:
            await self._interrupt_quietly()
            return
        value = await run.ask_input(str(content.get("prompt", "")), bool(content.get("password")))
        if value is not None and self.io is not None:
            self.io.answer_input(value)

    async def interrupt(self, run_id: str | None = None, interrupt_id: str | None = None) -> bool:
        """Interrupt the kernel (or a batch step's command); a run waiting for input stops
        waiting (the kernel raises KeyboardInterrupt).

        Naming the run makes it idempotent: nothing happens unless that run is the current,
        unfinished one, and an ``interrupt_id`` already acted on is not acted on again, so a
        retried interrupt never hits the next cell. Returns whether the kernel was signalled.
        """
        run = self.current
        if run_id is not None:
            if run is None or run.run_id != run_id or run.status == p.FINISHED:
                return False
            if interrupt_id is not None:
                if interrupt_id in run.interrupts:
                    return False
                run.interrupts.add(interrupt_id)
        await self._interrupt_now(run)
        return True

    async def _interrupt_now(self, run: Run | None) -> None:
        if self.batch.signal(signal.SIGINT):
            return
        await self.km.interrupt_kernel()
        if run is not None and run.status != p.FINISHED:
            run.cancel_input()

    async def _interrupt_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.km.interrupt_kernel()

    # -- batch mode (protocol §1.6) ------------------------------------------------------------
    async def _run_batch(self, run: Run, options: dict[str, Any]) -> None:
        """Queue behind the running cell (the shell lock), then clean → build → exec."""
        try:
            async with self._shell_lock:
                if run.status == p.FINISHED:  # ended while queued (restart, destroy)
                    return
                await self.batch.run(run, options)
        except asyncio.CancelledError:  # stopped while queued: the run still ends
            run.finish(1)
            raise

    # -- other shell requests -----------------------------------------------------------------
    async def _shell_request(self, method: str, **content: Any) -> dict[str, Any] | None:
        """Send one shell request and return its reply content; None if the kernel is busy."""
        try:
            await asyncio.wait_for(self._shell_lock.acquire(), self.request_timeout)
        except asyncio.TimeoutError:
            return None
        request = None
        try:
            if self.io is None:
                return None
            request = self.io.send(_SHELL_REQUESTS[method], content)
            reply = await asyncio.wait_for(request.reply, self.request_timeout)
            return dict(reply["content"])
        except (asyncio.TimeoutError, KernelGone):
            if request is not None and self.io is not None:
                self.io.forget(request)
            return None
        finally:
            self._shell_lock.release()

    async def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        content = await self._shell_request("complete", code=code, cursor_pos=cursor_pos)
        if content is None:
            content = {"status": "ok", "matches": [], "cursor_start": cursor_pos,
                       "cursor_end": cursor_pos, "metadata": {}}  # fmt: skip
        return content

    async def inspect(self, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
        content = await self._shell_request(
            "inspect", code=code, cursor_pos=cursor_pos, detail_level=detail_level
        )
        return content or {"status": "ok", "found": False, "data": {}, "metadata": {}}

    async def is_complete(self, code: str) -> dict[str, Any]:
        content = await self._shell_request("is_complete", code=code)
        return content or {"status": "unknown"}


def session_env(environ: dict[str, str]) -> dict[str, str]:
    """The server's environment, ``environ`` (a session's ``config.environ``) on top, and the
    server's Python first on PATH (so ``python`` in a shell step is the kernel's Python)."""
    env = {**os.environ, **environ}
    env.pop("JPY_PARENT_PID", None)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", os.defpath)])
    return env


@contextlib.contextmanager
def _run_ends(run: Run, what: str) -> Iterator[None]:
    """Never leave a run unfinished: cancelled (restart, destroy), its kernel gone, or a bug
    of ours, it ends with an error reply that says so."""
    try:
        yield
    except asyncio.CancelledError:
        run.finish(1, run.error_reply("SessionEnded", "The run was stopped."))
        raise
    except KernelGone as exc:  # restarted or destroyed under the run
        run.fail("SessionEnded", f"The run was stopped: {exc}.")
    except Exception as exc:
        log.exception("run %s failed", run.run_id)
        run.fail("ServerError", f"The server {what}: {type(exc).__name__}: {exc}")


def _not_running(msg_type: str, why: str = "the kernel is not running") -> dict[str, Any]:
    """The ``done`` of a forwarded message the kernel never finished."""
    return {"status": "error", "ename": "KernelGone", "evalue": f"{msg_type} not handled: {why}"}


def _exit_code(content: dict[str, Any]) -> int:
    """0 for an ``ok`` reply; the SystemExit code or 1 for an error; 1 for aborted."""
    status = content.get("status")
    if status == "ok":
        return 0
    if content.get("ename") == "SystemExit":
        try:
            return int(str(content.get("evalue", "1")).strip() or 1)
        except ValueError:
            return 1
    return 1
